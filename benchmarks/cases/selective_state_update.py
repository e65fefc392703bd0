"""selective_state_update: one decoding step, in place. The Mamba-1 form B=1 D=4096 N=16
(launch-bound: the time is the whole call, Python validation and dispatch included) and the Mamba-2 form
(B, 64, 64, 128) fp32 state at B=1 and B=64 (bandwidth-bound: the state is read and written once).
"peer:mamba_ssm": mamba_ssm 2.3.2's Triton selective_state_update (imports without a build)."""
from __future__ import annotations

import torch

from ssm_kernels import _dispatch
from ssm_kernels.selective_state_update import selective_state_update

from .. import peers
from ..core import Case, Variant


def _inputs(batch, heads, headdim, dstate, dtype, device):
    """Mamba-1 form when heads is None: state (B, D, N) with D = headdim; else Mamba-2 (B, H, P, N)."""
    lead = (batch, headdim) if heads is None else (batch, heads, headdim)
    channels = (headdim,) if heads is None else (heads, headdim)
    if heads is None:
        A = -torch.rand(headdim, dstate, device=device)
        BC = (batch, dstate)
    else:  # one A per head, one group: as mamba_ssm's Mamba2 step passes them
        A = -torch.rand(heads, device=device)[:, None, None].expand(heads, headdim, dstate)
        BC = (batch, 1, dstate)
    return dict(state=torch.randn(*lead, dstate, device=device, dtype=torch.float32),
                x=torch.randn(*lead, device=device, dtype=dtype), dt=torch.randn(*lead, device=device, dtype=dtype),
                A=A, B=torch.randn(*BC, device=device, dtype=dtype), C=torch.randn(*BC, device=device, dtype=dtype),
                D=torch.randn(*channels, device=device), z=torch.randn(*lead, device=device, dtype=dtype),
                dt_bias=torch.randn(*channels, device=device))


def _case(batch, heads, headdim, dstate, dtype, device_types=("cpu", "cuda")) -> Case:
    def make(device, with_peers):
        p = _inputs(batch, heads, headdim, dstate, dtype, device)
        variants = {}
        for backend in _dispatch.implemented_backends("selective_state_update"):
            if _dispatch.backend_problem(backend, device) is None:
                variants[backend] = Variant(lambda backend=backend: selective_state_update(
                    **p, dt_softplus=True, backend=backend))
        peer = peers.load("mamba_ssm.ops.triton.selective_state_update", "selective_state_update") \
            if with_peers and device.type == "cuda" else None
        if peer is not None:
            variants["peer:mamba_ssm"] = Variant(lambda: peer(**p, dt_softplus=True))
        return variants

    channels = headdim * (heads or 1)
    state_bytes = batch * channels * dstate * 4
    form = f"D{headdim}" if heads is None else f"H{heads} P{headdim}"
    return Case("selective_state_update", f"B{batch} {form} N{dstate} {str(dtype).replace('torch.', '')}", make,
                bytes_fwd=2 * state_bytes + 4 * batch * channels * dtype.itemsize, device_types=device_types,
                dtype=dtype, dispatch_size=batch * channels * dstate)


def cases(quick: bool):
    if quick:
        return [_case(2, None, 256, 16, torch.float32)]
    return [_case(1, None, 4096, 16, torch.bfloat16), _case(1, 64, 64, 128, torch.bfloat16),
            _case(64, 64, 64, 128, torch.bfloat16, device_types=("cuda",))]
