"""Triton backend of selective_state_update: one kernel per decoding step, the state updated in place.

Canonical (Mamba-2) shapes as the public function passes them (the Mamba-1 form arrives as P = 1):
state (Bc, H, P, N), x / dt / z (B, H, P), A (H, P, N), B / C (B, G, N), D / dt_bias (H, P).
Grid (cdiv(H * P, BLOCK_R), B): a program takes BLOCK_R rows r = h * P + p (rows of several heads when
P is small, as in the Mamba-1 form) times all N state entries, with N the contiguous axis of the state.
Per row it loads x, dt, z, D, dt_bias once; B / C come from the row's group h // (H / G). The state tile is
read once and written once, in its own dtype, with fp32 math in registers; row b of the batch uses cache
row state_batch_indices[b]. Any strides (A expanded from (H,) with stride 0 costs no extra traffic).

Eager calls launch the kernel directly (one launch; the output is the only allocation); under
torch.compile the same launcher runs inside a torch.library custom op that declares the in-place state.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._utils import new_output


# --- kernel --------------------------------------------------------------------------------------------
@triton.jit
def _step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, sbi_ptr, out_ptr,
                 P, N, R, heads_per_group_b, heads_per_group_c,
                 s_sb, s_sh, s_sp, s_sn, s_xb, s_xh, s_xp, s_tb, s_th, s_tp, s_ah, s_ap, s_an,
                 s_bb, s_bg, s_bn, s_cb, s_cg, s_cn, s_dh, s_dp, s_zb, s_zh, s_zp, s_eh, s_ep,
                 s_ob, s_oh, s_op,
                 HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                 HAS_INDICES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = r < R
    h = r // P
    p = r - h * P
    n = tl.arange(0, BLOCK_N)[None, :]
    mask = r_mask[:, None] & (n < N)
    row = b
    if HAS_INDICES:
        row = tl.load(sbi_ptr + b).to(tl.int64)

    x = tl.load(x_ptr + b * s_xb + h * s_xh + p * s_xp, mask=r_mask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_tb + h * s_th + p * s_tp, mask=r_mask, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dtb_ptr + h * s_eh + p * s_ep, mask=r_mask, other=0.0).to(tl.float32)
    if SOFTPLUS:  # torch's softplus (threshold 20), log1p(e) accurate for small e
        e = tl.exp(tl.minimum(dt, 20.0))
        u = 1.0 + e
        log1p = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
        dt = tl.where(dt > 20.0, dt, log1p)
    A = tl.load(A_ptr + h[:, None] * s_ah + p[:, None] * s_ap + n * s_an, mask=mask, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * s_bb + (h // heads_per_group_b)[:, None] * s_bg + n * s_bn, mask=mask,
                 other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_cb + (h // heads_per_group_c)[:, None] * s_cg + n * s_cn, mask=mask,
                 other=0.0).to(tl.float32)
    state_ptrs = state_ptr + row * s_sb + h[:, None] * s_sh + p[:, None] * s_sp + n * s_sn
    s = tl.load(state_ptrs, mask=mask, other=0.0).to(tl.float32)
    s = tl.exp(dt[:, None] * A) * s + (dt * x)[:, None] * Bv
    tl.store(state_ptrs, s.to(state_ptr.dtype.element_ty), mask=mask)
    out = tl.sum(s * Cv, axis=1)
    if HAS_D:
        out += x * tl.load(D_ptr + h * s_dh + p * s_dp, mask=r_mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + b * s_zb + h * s_zh + p * s_zp, mask=r_mask, other=0.0).to(tl.float32)
        out *= z / (1.0 + tl.exp(-z))
    tl.store(out_ptr + b * s_ob + h * s_oh + p * s_op, out.to(out_ptr.dtype.element_ty), mask=r_mask)


# --- launcher ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _config(rows: int, dstate: int) -> Tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_N, row blocks, num_warps): tiles of about 2048 state entries (cached)."""
    block_n = triton.next_power_of_2(dstate)
    block_r = max(1, min(triton.next_power_of_2(rows), 2048 // block_n))
    tile = block_r * block_n
    return block_r, block_n, triton.cdiv(rows, block_r), 4 if tile <= 2048 else 8


def _launch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices) -> Tensor:
    batch, heads, headdim = x.shape
    dstate = state.shape[3]
    rows = heads * headdim
    block_r, block_n, row_blocks, warps = _config(rows, dstate)
    out = new_output((batch, heads, headdim), x.dtype, x.device)
    _step_kernel[(row_blocks, batch)](
        state, x, dt, A, B, C, x if D is None else D, x if z is None else z, x if dt_bias is None else dt_bias,
        x if state_batch_indices is None else state_batch_indices, out,
        headdim, dstate, rows, heads // B.shape[1], heads // C.shape[1],
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(),
        *((0, 0) if D is None else D.stride()), *((0, 0, 0) if z is None else z.stride()),
        *((0, 0) if dt_bias is None else dt_bias.stride()), *out.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        HAS_INDICES=state_batch_indices is not None, BLOCK_R=block_r, BLOCK_N=block_n, num_warps=warps)
    return out


# --- torch.compile wiring (no autograd: an "update" op) -----------------------------------------------
@torch.library.custom_op("ssm_kernels::selective_state_update_triton", mutates_args=("state",))
def _step_op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             z: Optional[Tensor], dt_bias: Optional[Tensor], dt_softplus: bool,
             state_batch_indices: Optional[Tensor]) -> Tensor:
    return _launch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)


@_step_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    return x.new_empty(x.shape)


# --- backend function ----------------------------------------------------------------------------------
def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                  state_batch_indices=None):
    """Triton backend of ssm_kernels.selective_state_update in the canonical shapes (validated)."""
    if torch.compiler.is_compiling():
        return _step_op(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    return _launch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
