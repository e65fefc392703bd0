"""Triton backend of selective_state_update: one kernel per decoding step, the state updated in place.

Canonical (Mamba-2) shapes: state (Bc, H, P, N), x / dt / z (B, H, P), A (H, P, N), B / C (B, G, N),
D / dt_bias (H, P). The Mamba-1 form (state (Bc, D, N), x (B, D), B / C (B, N) or (B, G, N), ...) runs
as P = 1 by inserting stride-0 axes in the launcher: no views, which cost microseconds per decoding step.
Grid (cdiv(H * P, BLOCK_R), B): a program takes BLOCK_R rows r = h * P + p (rows of several heads when
P is small, as in the Mamba-1 form) times all N state entries, with N the contiguous axis of the state.
Per row it loads x, dt, z, D, dt_bias once (or, in the Mamba-1 form with dt_proj_weight, computes dt as the dot
product of the low-rank dt input with the row's weight row: the dt projection's GEMM fused into the step);
B / C come from the row's group h // (H / G). The state tile is
read once and written once, in its own dtype, with fp32 math in registers; row b of the batch uses cache
row state_batch_indices[b]. Any strides (A expanded from (H,) with stride 0 costs no extra traffic).

Sizes and strides are compile-time constants: a decoding step is launch-bound, and Triton's launcher spends
about half a microsecond per runtime argument (H100 host, Triton 3.6), so only the 12 pointers stay runtime
arguments. A model's decoding loop has one set of strides (they do not depend on the batch size), hence one
compilation; a new stride pattern compiles once more.

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

from .._triton_launch import launch
from .._triton_math import softplus
from .._utils import cdiv, new_output, next_power_of_2


# --- kernel --------------------------------------------------------------------------------------------
@triton.jit
def _projected_dt(dt_ptr, w_ptr, b, h, r_mask, s_tb: tl.constexpr, s_tk: tl.constexpr, s_wr: tl.constexpr,
                  s_wk: tl.constexpr, RANK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """dt of the rows h (BLOCK_R,): the low-rank input dt[b, :RANK] times dt_proj_weight[h, :RANK], fp32."""
    dt = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in tl.static_range(0, RANK, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < RANK
        v = tl.load(dt_ptr + b * s_tb + k * s_tk, mask=k_mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + h[:, None] * s_wr + k[None, :] * s_wk, mask=r_mask[:, None] & k_mask[None, :],
                    other=0.0).to(tl.float32)
        dt += tl.sum(w * v[None, :], axis=1)
    return dt


@triton.jit
def _step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, sbi_ptr, w_ptr, out_ptr,
                 P: tl.constexpr, N: tl.constexpr, R: tl.constexpr, heads_per_group_b: tl.constexpr,
                 heads_per_group_c: tl.constexpr,
                 s_sb: tl.constexpr, s_sh: tl.constexpr, s_sp: tl.constexpr, s_sn: tl.constexpr,
                 s_xb: tl.constexpr, s_xh: tl.constexpr, s_xp: tl.constexpr,
                 s_tb: tl.constexpr, s_th: tl.constexpr, s_tp: tl.constexpr,
                 s_ah: tl.constexpr, s_ap: tl.constexpr, s_an: tl.constexpr,
                 s_bb: tl.constexpr, s_bg: tl.constexpr, s_bn: tl.constexpr,
                 s_cb: tl.constexpr, s_cg: tl.constexpr, s_cn: tl.constexpr, s_dh: tl.constexpr, s_dp: tl.constexpr,
                 s_zb: tl.constexpr, s_zh: tl.constexpr, s_zp: tl.constexpr, s_eh: tl.constexpr, s_ep: tl.constexpr,
                 s_ob: tl.constexpr, s_oh: tl.constexpr, s_op: tl.constexpr,
                 s_tk: tl.constexpr, s_wr: tl.constexpr, s_wk: tl.constexpr, RANK: tl.constexpr,
                 HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                 HAS_INDICES: tl.constexpr, HAS_DT_PROJ: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
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
    if HAS_DT_PROJ:  # the Mamba-1 form (P = 1): the dt projection of the row's channel, fused
        dt = _projected_dt(dt_ptr, w_ptr, b, h, r_mask, s_tb, s_tk, s_wr, s_wk, RANK, BLOCK_R, BLOCK_K)
    else:
        dt = tl.load(dt_ptr + b * s_tb + h * s_th + p * s_tp, mask=r_mask, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dtb_ptr + h * s_eh + p * s_ep, mask=r_mask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt, False)
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
# state entries per program, warps: the B=64 sweep of python -m benchmarks decode (benchmarks/results/
# h100_decode_probe.txt: within run-to-run noise of 1024 / 2 warps; evict_first on the state load did not help)
TILE, WARPS = 2048, 4


@functools.lru_cache(maxsize=None)
def _config(rows: int, dstate: int) -> Tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_N, row blocks, num_warps): tiles of about TILE state entries (cached)."""
    block_n = next_power_of_2(dstate)
    block_r = max(1, min(next_power_of_2(rows), TILE // block_n))
    tile = block_r * block_n
    return block_r, block_n, cdiv(rows, block_r), WARPS if tile <= TILE else 2 * WARPS


def _p_strides(t: Optional[Tensor], at: int, default: Tuple[int, ...]) -> Tuple[int, ...]:
    """t's strides with a stride-0 head-dim axis inserted at `at` (the Mamba-1 form as P = 1, no views)."""
    if t is None:
        return default
    st = t.stride()
    return st[:at] + (0,) + st[at:]


# the dt projection's rank is read in slices of at most this many columns (registers: BLOCK_R x BLOCK_K)
DT_PROJ_BLOCK_K = 16


def _launch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, dt_proj_weight) -> Tensor:
    """Either form (see the public function): the Mamba-1 one runs as P = 1 through strides."""
    out = new_output(x.shape, x.dtype, x.device)
    rank, proj_strides = 0, (0, 0, 0)
    if dt_proj_weight is not None:  # dt (B, R): its batch stride in the dt slot, its column stride apart
        rank = dt_proj_weight.shape[1]
        proj_strides = (dt.stride(1), *dt_proj_weight.stride())
    if state.dim() == 4:
        batch, heads, headdim = x.shape
        strides = (*state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(),
                   *((0, 0) if D is None else D.stride()), *((0, 0, 0) if z is None else z.stride()),
                   *((0, 0) if dt_bias is None else dt_bias.stride()), *out.stride())
    else:
        (batch, heads), headdim = x.shape, 1
        strides = (*_p_strides(state, 2, ()), *_p_strides(x, 2, ()),
                   *(_p_strides(dt, 2, ()) if dt_proj_weight is None else (dt.stride(0), 0, 0)),
                   *_p_strides(A, 1, ()), *(_p_strides(B, 1, ()) if B.dim() == 2 else B.stride()),
                   *(_p_strides(C, 1, ()) if C.dim() == 2 else C.stride()), *_p_strides(D, 1, (0, 0)),
                   *_p_strides(z, 2, (0, 0, 0)), *_p_strides(dt_bias, 1, (0, 0)), *_p_strides(out, 2, ()))
    groups_b = B.shape[1] if B.dim() == 3 else 1
    groups_c = C.shape[1] if C.dim() == 3 else 1
    dstate = state.shape[-1]
    rows = heads * headdim
    block_r, block_n, row_blocks, warps = _config(rows, dstate)
    launch(
        _step_kernel, (row_blocks, batch),
        state, x, dt, A, B, C, x if D is None else D, x if z is None else z, x if dt_bias is None else dt_bias,
        x if state_batch_indices is None else state_batch_indices, x if dt_proj_weight is None else dt_proj_weight,
        out, headdim, dstate, rows, heads // groups_b, heads // groups_c, *strides, *proj_strides, rank,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        HAS_INDICES=state_batch_indices is not None, HAS_DT_PROJ=dt_proj_weight is not None, BLOCK_R=block_r,
        BLOCK_N=block_n, BLOCK_K=min(DT_PROJ_BLOCK_K, next_power_of_2(max(rank, 1))), num_warps=warps)
    return out


# --- torch.compile wiring (no autograd: an "update" op) -----------------------------------------------
@torch.library.custom_op("ssm_kernels::selective_state_update_triton", mutates_args=("state",))
def _step_op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             z: Optional[Tensor], dt_bias: Optional[Tensor], dt_softplus: bool,
             state_batch_indices: Optional[Tensor], dt_proj_weight: Optional[Tensor]) -> Tensor:
    return _launch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, dt_proj_weight)


@_step_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, dt_proj_weight):
    return x.new_empty(x.shape)


# --- backend function ----------------------------------------------------------------------------------
def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                  state_batch_indices=None, dt_proj_weight=None):
    """Triton backend of ssm_kernels.selective_state_update, either form (validated)."""
    if torch.compiler.is_compiling():
        return _step_op(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, dt_proj_weight)
    return _launch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, dt_proj_weight)
