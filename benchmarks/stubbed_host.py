"""python -m benchmarks stubbed-host [--op OP] [--calls N] [--json PATH]: the host time per call of an op's Python
around its kernels, on any machine, with the kernels stubbed out.

A small call on the GPU is host-bound (h100_launch_host_time.txt): its time is the Python, the torch ops and the
autograd engine around its launches. That part runs the same on a CPU, so it can be measured and cut without a
GPU: CPU tensors stand in for CUDA ones and
* the CUDA backends' extension ops (torch.ops.ssm_kernels_cuda.*) become no-op CPU ops of the same schemas,
  read from csrc/*/registration.cpp (the dispatcher's argument parsing stays; the real ops add a launch);
* Triton launches (ssm_kernels._triton_launch.launch) do the direct launch's key lookup and return (Triton's
  compiled-kernel call, about 12 us on an H100 host, stays out);
* the peers' compiled modules (mamba_ssm's selective_scan_cuda, causal-conv1d's causal_conv1d_cuda, with
  SSM_PEERS_DIR set, see benchmarks/peers.py) become Python functions allocating what theirs return (their
  allocations, done in C++ there, count here at Python's price: the peers' figures are upper bounds).
The block cases are one Mamba / Mamba2 layer, every op on one backend (SSM_KERNELS_BACKEND); their GEMMs run on the
CPU for real, at tiny sizes (--dtype float32 for it: the CPU's bf16 GEMMs are slow enough to count).
Shapes are tiny (allocations on the CPU cost what the caching allocator's do on a GPU only while small). Each
figure is the best of 5 loops of N calls, the variants taking turns. This machine's Python sets the scale: on
the H100 host the same calls took about 3 times as long; compare variants, not machines.
"""
from __future__ import annotations

import argparse
import functools
import glob
import importlib
import os
import re
import sys
import time
import types
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

from ssm_kernels import _triton_launch
from ssm_kernels._dispatch import ENV_VAR

from .core import aligned_columns

REPO = Path(__file__).resolve().parent.parent
_STUBBED = [False]


# --- stubs -------------------------------------------------------------------------------------------------
def _extension_schemas() -> List[str]:
    """Every schema csrc/*/registration.cpp defines for torch.ops.ssm_kernels_cuda (adjacent C++ literals joined)."""
    schemas = []
    for path in sorted(glob.glob(str(REPO / "csrc" / "*" / "registration.cpp"))):
        for literals in re.findall(r'm\.def\(((?:\s*"[^"]*")+)\s*\)', Path(path).read_text()):
            schemas.append("".join(re.findall(r'"([^"]*)"', literals)))
    return schemas


def _stub_extension_ops() -> None:
    lib = torch.library.Library("ssm_kernels_cuda", "DEF")
    for schema in _extension_schemas():
        lib.define(schema)
        lib.impl(schema.split("(", 1)[0], lambda *args, **kwargs: None, "CPU")
    _LIBRARIES.append(lib)


def _keyed_launch(kernel, grid, *args, **kwargs):
    """What ssm_kernels._triton_launch.launch does on a repeat launch, less the compiled kernel's call."""
    _KERNELS[0] += 1
    _triton_launch._direct.get(_triton_launch.launch_key(kernel, 0, args, kwargs))


_KERNELS = [0]  # kernels the stubs stand for that no torch op shows: Triton launches, the peers' modules' calls
_LIBRARIES: list = []  # the stub ops' torch.library.Library (it unregisters its ops when collected)


def stub() -> None:
    """Replace the kernels (see the module docstring); once per process, before any op is called."""
    if _STUBBED[0]:
        return
    _STUBBED[0] = True
    from ssm_kernels import _cuda_ext, _dispatch, _utils
    _stub_extension_ops()
    _cuda_ext.load = lambda name: None
    real_problem = _dispatch.backend_problem
    _dispatch.backend_problem = lambda backend, device, extension=None: (
        None if backend in ("cuda", "triton") else real_problem(backend, device, extension))
    _utils._sm_count = lambda index: 132
    _utils.multiprocessor_count = lambda device: 132
    _stub_peer_modules()
    _patch_backends()


def _patch_backends() -> None:
    """Import every CUDA and Triton backend, then point their launch / multiprocessor_count names at the stubs
    (modules import them by name)."""
    from ssm_kernels import _dispatch, _utils
    for implementations in _dispatch._REGISTRY.values():
        for backend, implementation in implementations.items():
            if backend in ("cuda", "triton"):
                importlib.import_module(implementation.module)
    launch = _triton_launch.launch
    for name, module in list(sys.modules.items()):
        if not name.startswith("ssm_kernels.") or module is None:
            continue
        if getattr(module, "launch", None) is launch:  # _triton_launch's own too (launch_fitting_shared_memory)
            module.launch = _keyed_launch
        if hasattr(module, "multiprocessor_count"):
            module.multiprocessor_count = _utils.multiprocessor_count


def _stub_peer_modules() -> None:
    selective_scan_cuda = types.ModuleType("selective_scan_cuda")

    def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus):
        _KERNELS[0] += 1
        batch, dim, length = u.shape
        x = torch.empty(batch, dim, -(-length // 2048), A.shape[1] * 2, dtype=torch.float32)
        out = torch.empty_like(delta)
        return (out, x) if z is None else (out, x, torch.empty_like(z))

    def scan_bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, softplus, recompute):
        _KERNELS[0] += 1
        grads = [torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A, dtype=torch.float32),
                 torch.zeros_like(B, dtype=torch.float32), torch.zeros_like(C, dtype=torch.float32),
                 None if D is None else torch.empty_like(D),
                 None if delta_bias is None else torch.empty_like(delta_bias)]
        grads[3], grads[4] = grads[3].to(B.dtype), grads[4].to(C.dtype)
        if z is not None:  # dz (into the buffer passed, if any), then the recomputed gated output
            grads.append(torch.empty_like(z) if dz is None else dz)
            if recompute:
                grads.append(torch.empty_like(z))
        return grads

    selective_scan_cuda.fwd, selective_scan_cuda.bwd = scan_fwd, scan_bwd
    causal_conv1d_cuda = types.ModuleType("causal_conv1d_cuda")

    def kernel(*args):  # called inside causal-conv1d's custom ops, which count_ops counts as the kernels
        return None

    causal_conv1d_cuda.causal_conv1d_fwd = causal_conv1d_cuda.causal_conv1d_bwd = kernel
    causal_conv1d_cuda.causal_conv1d_update = kernel
    sys.modules.setdefault("selective_scan_cuda", selective_scan_cuda)
    sys.modules.setdefault("causal_conv1d_cuda", causal_conv1d_cuda)


def _peer(module: str, attribute: str):
    if not os.environ.get("SSM_PEERS_DIR"):
        return None
    from . import peers
    peers._prepare()
    if module.startswith("mamba_ssm"):  # its interface imports a Triton layer norm it does not call here
        sys.modules.setdefault("mamba_ssm.ops.triton.layer_norm", types.SimpleNamespace(_layer_norm_fwd=None))
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception as error:  # noqa: BLE001 (the peer is then absent, as in benchmarks/peers.py)
        print(f"stubbed-host: peer {module}.{attribute} does not import: {error}", file=sys.stderr)
        return None


# --- cases -------------------------------------------------------------------------------------------------
Variants = Dict[str, Tuple[Callable, tuple]]  # label -> (the call, the leaves its forward+backward differentiates)


def _selective_scan_case(dtype) -> Tuple[str, Variants]:
    from ssm_kernels import selective_scan
    batch, dim, length, N = 1, 64, 128, 16
    u, delta, z = (torch.randn(batch, dim, length, dtype=dtype, requires_grad=True) for _ in range(3))
    A = (-torch.rand(dim, N)).requires_grad_()
    B, C = (torch.randn(batch, N, length, dtype=dtype, requires_grad=True) for _ in range(2))
    D, bias = torch.randn(dim, requires_grad=True), torch.randn(dim, requires_grad=True)
    inputs = (u, delta, A, B, C, D, z, bias)
    variants = {backend: ((lambda backend=backend: selective_scan(
        u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, backend=backend)), inputs)
        for backend in ("cuda", "triton")}
    peer = _peer("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
    if peer is not None:
        variants["peer:mamba_ssm"] = (
            lambda: peer(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True), inputs)
    return f"selective_scan B{batch} D{dim} L{length} N{N} {str(dtype)[6:]}, D, z, delta_bias, softplus", variants


def _causal_conv1d_case(dtype) -> Tuple[str, Variants]:
    from ssm_kernels import causal_conv1d
    batch, dim, length, width = 1, 64, 128, 4
    x = torch.randn(batch, dim, length, dtype=dtype, requires_grad=True)
    weight = torch.randn(dim, width, dtype=dtype, requires_grad=True)
    bias = torch.randn(dim, dtype=dtype, requires_grad=True)
    inputs = (x, weight, bias)
    variants = {backend: ((lambda backend=backend: causal_conv1d(x, weight, bias, "silu", backend=backend)), inputs)
                for backend in ("cuda", "triton")}
    peer = _peer("causal_conv1d.causal_conv1d_interface", "causal_conv1d_fn")
    if peer is not None:
        variants["peer:causal_conv1d"] = (lambda: peer(x, weight, bias, activation="silu"), inputs)
    return f"causal_conv1d B{batch} D{dim} L{length} W{width} {str(dtype)[6:]}, bias, silu", variants


def _block_case(layer: str, dtype) -> Tuple[str, Variants]:
    """One Mamba / Mamba2 layer's call, every op on one backend (the environment variable SSM_KERNELS_BACKEND, as
    a GPU user would set it), recomputing its activations as it does on a GPU; mamba_ssm's Mamba beside ours
    (its Mamba2 runs Triton kernels of its own, which no stub replaces)."""
    from ssm_universal.layers.mamba import Mamba
    from ssm_universal.layers.mamba2 import Mamba2
    batch, length, d_model = 1, 16, 16  # tiny: the CPU's GEMMs must not count
    config = (dict(d_model=d_model, d_state=16, d_conv=4, expand=2) if layer == "mamba"
              else dict(d_model=d_model, d_state=16, d_conv=4, expand=2, headdim=8, chunk_size=8))
    torch.manual_seed(0)
    block = (Mamba if layer == "mamba" else Mamba2)(**config).to(dtype)
    block.recompute_in_backward = True
    x = torch.randn(batch, length, d_model, dtype=dtype, requires_grad=True)
    inputs = (x, *block.parameters())

    def on(backend):
        def call():
            os.environ[ENV_VAR] = backend
            return block(x)
        return call

    # Mamba2's SSD and gated norm have no CUDA backend: under "cuda" they would fall back to the CPU's order here
    variants = {backend: (on(backend), inputs)
                for backend in (("cuda", "triton") if layer == "mamba" else ("triton",))}
    peer_class = _peer("mamba_ssm.modules.mamba_simple", "Mamba") if layer == "mamba" else None
    if peer_class is not None:
        peer_block = peer_class(**config).to(dtype)
        variants["peer:mamba_ssm"] = (lambda: peer_block(x), (x, *peer_block.parameters()))
    name = f"{'Mamba' if layer == 'mamba' else 'Mamba2'} block B{batch} L{length} d_model {d_model} N16"
    return f"{name} {str(dtype)[6:]}", variants


CASES = {"selective_scan": _selective_scan_case, "causal_conv1d": _causal_conv1d_case,
         "mamba_block": functools.partial(_block_case, "mamba"),
         "mamba2_block": functools.partial(_block_case, "mamba2")}


# --- timing ------------------------------------------------------------------------------------------------
def _modes(fn: Callable, inputs: tuple) -> Dict[str, Callable]:
    def forward_backward():
        y = fn()
        y = y[0] if isinstance(y, tuple) else y
        torch.autograd.grad(y, inputs, torch.ones_like(y))

    def inference():
        with torch.no_grad():
            fn()

    return {"fwd": fn, "fwd+bwd": forward_backward, "fwd no grad": inference}


def time_variants(variants: Dict[str, Callable], calls: int, repeats: int = 5) -> Dict[str, float]:
    """Microseconds per call of each variant: the best of `repeats` loops of `calls` calls, variants in turn."""
    best = {label: float("inf") for label in variants}
    for fn in variants.values():  # warm-up: first-call caches (dispatch, validation, launch keys)
        for _ in range(20):
            fn()
    for _ in range(repeats):
        for label, fn in variants.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[label] = min(best[label], (time.perf_counter() - start) / calls * 1e6)
    return best


_ALLOCATIONS = ("empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided")


def count_ops(fn: Callable) -> Tuple[List[str], int]:
    """(the torch ops of one call of fn, the GPU kernels it would launch): kernels are the stubs' (Triton
    launches, the peers' module calls) and every torch op but views, metadata and allocations (our extension
    ops included). A launch costs 5-10 us of host time on a GPU host, about 7 times this CPU's price for the
    same op, while Python costs about 3 times as much there: the times here understate launches."""
    from torch.utils._python_dispatch import TorchDispatchMode
    ops: List[str] = []
    launching: List[str] = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            ops.append(name)
            if not (func.is_view or name in _ALLOCATIONS or name in ("detach", "alias", "lift_fresh")):
                launching.append(name)
            return func(*args, **(kwargs or {}))

    stubbed = _KERNELS[0]
    with Count():
        fn()
    return ops, len(launching) + _KERNELS[0] - stubbed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks stubbed-host", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", action="append", choices=sorted(CASES), help="op(s) (default: all)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--json", type=Path, help="write results and environment here")
    parser.add_argument("--list-ops", action="store_true", help="print the torch ops of each call")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    stub()
    rows = []
    for op in args.op or sorted(CASES):
        name, variants = CASES[op](getattr(torch, args.dtype))
        timed = {(label, mode): run for label, (fn, inputs) in variants.items()
                 for mode, run in _modes(fn, inputs).items()}
        for (label, mode), us in time_variants(timed, args.calls).items():
            ops, launches = count_ops(timed[label, mode])
            rows.append({"case": name, "variant": label, "mode": mode, "host_us": round(us, 1),
                         "torch_ops": len(ops), "launches": launches, "ops": " ".join(ops)})
            if args.list_ops:
                print(f"{name} {label} {mode}: {' '.join(ops)}")
        os.environ.pop(ENV_VAR, None)
    from .__main__ import report
    peer_us = {(r["case"], r["mode"]): r["host_us"] for r in rows if r["variant"].startswith("peer:")}
    table = aligned_columns([("case", "variant", "mode", "host us", "torch ops", "launches", "peer / this")] + [
        (r["case"], r["variant"], r["mode"], f"{r['host_us']:.1f}", str(r["torch_ops"]), str(r["launches"]),
         f"{peer_us[r['case'], r['mode']] / r['host_us']:.2f}" if (r["case"], r["mode"]) in peer_us else "")
        for r in rows])
    report(torch.device("cpu"), rows, table, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
