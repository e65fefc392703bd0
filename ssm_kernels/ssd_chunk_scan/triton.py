"""Triton backend of ssd_chunk_scan: the chunked SSD forward in four kernels (+ one for varlen states);
the backward is the torch backend's chunked backward (_chunked.backward through the ssd_chunk_scan_bwd
custom op) fed with the boundary states this forward computed, plus hand-written gradients of the dt
preprocessing, D and the z gate. A Triton backward is not written yet.

Forward (kernels in _triton_fwd.py), chunks of T = chunk_size positions, nc = cdiv(L, T):
1. _dt_cumsum_kernel, grid (nc, B, cdiv(H, BLOCK_H)): dt' = clamp(softplus?(dt + dt_bias)) and the in-chunk
   cumulative log-decay cs (fp64, so that cs_i - cs_j keeps its digits when both are large) into
   (B, H, nc*T) buffers; g[b, h, c] = exp(cs_{T-1}) masked by sequence boundaries.
2. _chunk_state_kernel, grid (nc, B*H, P/N tiles): S_c = x^T diag(decay * dt') B with tl.dot (fp32 acc),
   written into slot c + 1 of the (B, nc + 1, H, P, N) fp32 boundary-states buffer.
3. _state_passing_kernel, grid (B*H, cdiv(P*N, BLOCK)): states[c + 1] = g_c states[c] + S_c in place,
   states[0] = initial state; states[nc] is the final state.
4. _chunk_scan_kernel, grid (nc * T/BLOCK_M, B*H, P tiles): per row block, C states[c]^T scaled by exp(cs_i)
   plus the causal intra-chunk (C B^T * decay * dt') x over column blocks up to the diagonal (both tl.dot),
   then + D x and * silu(z) fused; writes out (x's dtype) and, when z has a gradient to take, the pre-gate
   value (y + D x) for dz.
5. _varlen_state_kernel (cu_seqlens only), grid (S, H, P/N tiles): the state at each sequence's last step.
Matmul operands are in the input dtype (bf16 / fp16 tensor cores) or fp32 with input_precision="ieee" for
fp32 inputs (tf32 would miss the fp32 tolerance); accumulation is fp32 throughout.

Stored for backward: the inputs, the segment ids, the (B, nc + 1, H, P, N) fp32 boundary states and the
pre-gate output (only with z). Every gradient (x, dt, A, B, C, D, z, dt_bias, initial_states, through the
final and varlen states) comes from the torch backward, which recomputes the chunk products from the
boundary states (cu_seqlens included).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from .._utils import new_output
from . import _ops
from ._triton_fwd import (_chunk_scan_kernel, _chunk_state_kernel, _dt_cumsum_kernel, _state_passing_kernel,
                          _varlen_state_kernel)
from .reference import segment_ids


# --- launchers -----------------------------------------------------------------------------------------
def _dot_config(dtype: torch.dtype, headdim: int, dstate: int):
    """(operand dtype of tl.dot, input_precision): the input dtype on tensor cores, exact fp32 for fp32.

    Measured on the H100 with Triton 3.6 (scripts/gpu_parity.py, device runs 2-4): fp16 / bf16 operands
    give wrong outputs and illegal memory accesses when neither headdim nor d_state is a power of two
    (P 24 with N 40 failed; P 32 with N 40 and P 24 with N 64 were right). Those shapes take the exact fp32
    dot instead: correct, slower, and at least as accurate."""
    import triton.language as tl
    odd = headdim & (headdim - 1) and dstate & (dstate - 1)
    if dtype == torch.float32 or odd:
        return tl.float32, "ieee"
    return (tl.bfloat16 if dtype == torch.bfloat16 else tl.float16), "tf32"


def _pow2(n: int, low: int = 16) -> int:
    return max(low, triton.next_power_of_2(n))


def _forward_launch(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, T, dt_softplus, dt_lo, dt_hi,
                    store_pre):
    batch, length, heads, headdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    nc = triton.cdiv(length, T)
    lp = nc * T
    dev = x.device
    dtp = torch.empty((batch, heads, lp), dtype=torch.float32, device=dev)
    cs = torch.empty((batch, heads, lp), dtype=torch.float64, device=dev)
    g = torch.empty((batch, heads, max(nc, 1)), dtype=torch.float32, device=dev)
    states = new_output((batch, nc + 1, heads, headdim, dstate), torch.float32, dev)
    out = new_output(x.shape, x.dtype, dev)
    pre = new_output(x.shape, x.dtype, dev) if store_pre else x.new_empty(0)
    sequences = 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    varlen = new_output((sequences, heads, headdim, dstate), torch.float32, dev)
    dot_dtype, precision = _dot_config(x.dtype, headdim, dstate)
    emulate = dev.type == "cpu" and x.dtype == torch.bfloat16  # the interpreter's bf16 tl.dot is broken
    has_seg = seg is not None
    seg_arg = seg if has_seg else dtp
    seg_strides = seg.stride() if has_seg else (0, 0)
    st_strides = states.stride()
    hpg = heads // groups

    if nc > 0:
        block_t = triton.next_power_of_2(T)
        block_h = max(1, min(triton.next_power_of_2(heads), 4096 // block_t))
        _dt_cumsum_kernel[(nc, batch, triton.cdiv(heads, block_h))](
            dt, A, dt if dt_bias is None else dt_bias, seg_arg, dtp, cs, g,
            length, heads, T, nc, lp, dt_lo, dt_hi, *dt.stride(), *seg_strides,
            HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_SEG=has_seg,
            BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4)
        block_p = min(_pow2(headdim), 64)
        block_n = min(_pow2(dstate), 64)
        block_k = min(_pow2(T), 64)
        _chunk_state_kernel[(nc, batch * heads, triton.cdiv(headdim, block_p) * triton.cdiv(dstate, block_n))](
            x, B, dtp, cs, seg_arg, states, length, heads, hpg, headdim, dstate, T, lp,
            *x.stride(), *B.stride(), *seg_strides, *st_strides,
            HAS_SEG=has_seg, DOT_DTYPE=dot_dtype, PRECISION=precision, EMULATE=emulate,
            BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    block = min(triton.next_power_of_2(headdim * dstate), 1024)
    init_strides = initial_states.stride() if initial_states is not None else (0, 0, 0, 0)
    _state_passing_kernel[(batch * heads, triton.cdiv(headdim * dstate, block))](
        states, states if initial_states is None else initial_states, g, heads, headdim * dstate, nc,
        *init_strides, dstate, *st_strides, HAS_INIT=initial_states is not None, BLOCK=block, num_warps=4)
    if nc > 0:
        block_m = min(_pow2(T), 64)
        block_p = min(_pow2(headdim), 64)
        block_n = _pow2(dstate)
        D_strides = (0, 0) if D is None else ((D.stride(0), 0) if D.dim() == 1 else D.stride())
        z_strides = z.stride() if z is not None else (0, 0, 0, 0)
        _chunk_scan_kernel[(nc * triton.cdiv(T, block_m), batch * heads, triton.cdiv(headdim, block_p))](
            x, x if z is None else z, B, C, x if D is None else D, dtp, cs, seg_arg, states, out,
            pre if store_pre else out,
            length, heads, hpg, headdim, dstate, T, lp, *x.stride(), *z_strides, *B.stride(), *C.stride(),
            *D_strides, *seg_strides, *st_strides, *out.stride(),
            HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
            STORE_PRE=store_pre, HAS_SEG=has_seg, DOT_DTYPE=dot_dtype, PRECISION=precision, EMULATE=emulate,
            BLOCK_M=block_m, BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=block_m, num_warps=4)
    if sequences > 0:
        block_p = min(_pow2(headdim), 64)
        block_n = min(_pow2(dstate), 64)
        block_k = min(_pow2(T), 64)
        _varlen_state_kernel[(sequences, heads, triton.cdiv(headdim, block_p) * triton.cdiv(dstate, block_n))](
            x, B, dtp, cs, seg_arg, states, cu_seqlens, varlen, length, heads, hpg, headdim, dstate, T, lp,
            *x.stride()[1:], *B.stride()[1:], seg_strides[1], *st_strides[1:], *varlen.stride(),
            HAS_SEG=has_seg, DOT_DTYPE=dot_dtype, PRECISION=precision, EMULATE=emulate,
            BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return out, pre, states, varlen


# --- autograd wiring -----------------------------------------------------------------------------------
@torch.library.custom_op("ssm_kernels::ssd_chunk_scan_triton", mutates_args=())
def _forward(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
             dt_bias: Optional[Tensor], initial_states: Optional[Tensor], seg: Optional[Tensor],
             cu_seqlens: Optional[Tensor], chunk_size: int, dt_softplus: bool, dt_lo: float, dt_hi: float,
             store_pre: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(out (B, L, H, P) x's dtype, pre-gate output (or empty), boundary states (B, nc + 1, H, P, N) fp32,
    varlen states (S, H, P, N) fp32)."""
    return _forward_launch(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, chunk_size,
                           dt_softplus, dt_lo, dt_hi, store_pre)


@_forward.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, chunk_size, dt_softplus, dt_lo, dt_hi,
      store_pre):
    batch, length, heads, headdim = x.shape
    nc = -(-length // chunk_size)
    sequences = 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (x.new_empty(x.shape), x.new_empty(x.shape) if store_pre else x.new_empty(0),
            x.new_empty((batch, nc + 1, heads, headdim, B.shape[-1]), dtype=torch.float32),
            x.new_empty((sequences, heads, headdim, B.shape[-1]), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    (x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, chunk_size, dt_softplus, dt_lo, dt_hi,
     store_pre) = inputs
    _, pre, states, _ = output
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, pre, states)
    ctx.args = (chunk_size, dt_softplus, dt_lo, dt_hi, store_pre)
    ctx.mark_non_differentiable(pre)


def _autograd_backward(ctx, dout, dpre, dstates, dvarlen):
    x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, pre, states = ctx.saved_tensors
    chunk_size, dt_softplus, dt_lo, dt_hi, store_pre = ctx.args
    f32 = torch.float32
    # dt' = clamp(softplus?(dt + dt_bias)), recomputed
    raw = dt.to(f32) + (dt_bias.to(f32) if dt_bias is not None else 0.0)
    soft = F.softplus(raw) if dt_softplus else raw
    dtp = soft.clamp(min=dt_lo, max=dt_hi)
    g = torch.zeros(x.shape, dtype=f32, device=x.device) if dout is None else dout.to(f32)
    dz = None
    if z is not None:
        if not store_pre:
            raise RuntimeError("ssd_chunk_scan (triton): backward through z needs the forward's pre-gate output; "
                               "the forward ran without a gradient to take")
        zf = z.to(f32)
        sig = torch.sigmoid(zf)
        dz = (g * pre.to(f32) * sig * (1 + zf * (1 - sig))).to(z.dtype)
        g = g * zf * sig
    dD = None
    xf = x.to(f32)
    dx_skip = None
    if D is not None:
        Df = D.to(f32)
        dD = (g * xf).sum((0, 1))
        dD = (dD.sum(-1) if D.dim() == 1 else dD).to(D.dtype)
        dx_skip = g * (Df[:, None] if D.dim() == 1 else Df)
    if x.shape[1] == 0:
        dx, ddtp = torch.zeros_like(xf), torch.zeros_like(dtp)
        dA, dB, dC = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
        dinit = dstates[:, 0] if dstates is not None else torch.zeros_like(states[:, 0])
    else:
        dx, ddtp, dA, dB, dC, dinit = _ops.ssd_chunk_scan_bwd(
            g, dstates, dvarlen if cu_seqlens is not None else None, xf, dtp, A.to(f32), B.to(f32), C.to(f32),
            None if initial_states is None else initial_states.to(f32), seg, cu_seqlens, states, chunk_size)
    if dx_skip is not None:
        dx = dx + dx_skip
    # back through the clamp (torch's rule: the gradient passes where lo <= v <= hi) and softplus
    ddt = ddtp * ((soft >= dt_lo) & (soft <= dt_hi)).to(f32)
    if dt_softplus:
        ddt = ddt * torch.where(raw > 20.0, torch.ones_like(raw), torch.sigmoid(raw))
    ddt_bias = ddt.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None
    dinit = dinit.to(initial_states.dtype) if initial_states is not None else None
    return (dx.to(x.dtype), ddt.to(dt.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dD, dz, ddt_bias,
            dinit, None, None, None, None, None, None, None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


# --- backend function (supports: the lambda registered in __init__.py rejects fp64) ------------------
def ssd_chunk_scan_triton(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                          dt_limit=(0.0, math.inf), initial_states=None, seq_idx=None, cu_seqlens=None):
    """Triton backend of ssm_kernels.ssd_chunk_scan (arguments already validated).
    Returns (out, final_states, varlen_states or None), states fp32."""
    batch, length = x.shape[:2]
    seg = segment_ids(seq_idx, cu_seqlens, batch, length, x.device)
    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    store_pre = z is not None and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    out, _, states, varlen = _forward(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens,
                                      int(chunk_size), bool(dt_softplus), float(dt_limit[0]), float(dt_limit[1]),
                                      store_pre)
    return out, states[:, -1], (varlen if cu_seqlens is not None else None)
