"""Triton backend of ssd_chunk_scan: the chunked SSD forward in five kernels (+ one for varlen states) and
the backward in five kernels plus small torch reductions; dt preprocessing, D and the z gate are folded in.

Forward (kernels in _triton_fwd.py), chunks of T = chunk_size positions, nc = cdiv(L, T):
1. _dt_cumsum_kernel, grid (nc, B, cdiv(H, BLOCK_H)): dt' = clamp(softplus?(dt + dt_bias)) and the in-chunk
   cumulative log-decay cs (fp64, so that cs_i - cs_j keeps its digits when both are large) into
   (B, H, nc*T) buffers; g[b, h, c] = exp(cs_{T-1}) masked by sequence boundaries.
2. _chunk_state_kernel, grid (nc, B*H, P/N tiles): S_c = x^T diag(decay * dt') B with tl.dot (fp32 acc),
   written into slot c + 1 of the (B, nc + 1, H, P, N) fp32 boundary-states buffer.
3. _state_passing_kernel, grid (B*H, cdiv(P*N, BLOCK)): states[c + 1] = g_c states[c] + S_c in place,
   states[0] = initial state; states[nc] is the final state.
   Where B*H and the state tiles alone give PASSED_STATES_PROGRAMS programs (when set), the
   _chunk_states_passed_kernel does 2 and 3 in one pass over the chunks, grid (P/N tiles, B*H): the S_c are never
   written and read back.
4. _chunk_cb_kernel, grid (nc * T/BLOCK_T, B*G): cb = C B^T per chunk and group (fp32, (B, nc, G, T, T),
   blocks at and below the diagonal), once for all the group's heads.
5. _chunk_scan_kernel, grid (nc * T/SCAN_ROWS, B*H, P tiles): per row block, C states[c]^T scaled by exp(cs_i)
   plus the causal intra-chunk (cb * decay * dt') x over column steps up to the diagonal (both tl.dot),
   then + D x and * silu(z) fused; writes out (x's dtype) and, when z has a gradient to take, the pre-gate
   value (y + D x) for dz.
6. _varlen_state_kernel (cu_seqlens only), grid (S, H, P/N tiles): the state at each sequence's last step.
Matmul operands are in the input dtype (bf16 / fp16 tensor cores), or fp32 as three tf32 products for fp32
inputs (_dot_config); accumulation is fp32 throughout.

Stored for backward: the inputs, the segment ids, the (B, nc + 1, H, P, N) fp32 boundary states and the
pre-gate output (only with z). dt' / cs / g and cb are recomputed by their kernels. Where no backward reads the
forward's boundary states (no gradient, or one taken inside a recomputed_activations block) and the output
kernel's product rounds them to the 16-bit input dtype anyway, the forward keeps the states entering its chunks
in that dtype (half their bytes, the same output bits) and the final state in fp32 (_lean_states); the backward
of such a forward recomputes the boundary states in fp32.

Backward (kernels in _triton_bwd.py, notation there; BLOCK_T = min(64, T) rows / columns per block):
1. _bwd_state_kernel, grid (B*H, P/N tiles of 64): reverse state passing, sequential over chunks, with the
   chunk's (dy q)^T C on tensor cores: dHP[c] (the gradient on the state entering chunk c; dHP[0] is the
   initial states' gradient) into a (B, nc + 1, H, P, N) fp32 buffer; partials of dg_c g_c.
2. _bwd_dx_kernel, grid (nc * T/DX_COLS, B*H), per head and column block (cb from _chunk_cb_kernel, run
   again): du from the intra-chunk (cb * decay)^T dy, the state term B dHP[c+1]^T and the varlen terms; writes
   dx (x's dtype), dz, du . x and the column sums of the state and varlen terms of dss (the gradient on
   cs_i - cs_j), dD partials.
3. _bwd_dgm_kernel, grid (nc * n_pairs, B*G, splits), per group and tile at or below a chunk's diagonal (n_pairs
   = n_jb (n_jb + 1) / 2 of them, n_jb = T/BLOCK_T; every program does the same work), looping the heads of a
   split: dGm = sum_h (dy x^T dt') * decay (fp32, (splits, B, G, nc, T, T)) and the row and column sums of the
   intra-chunk dss = dGm_h * cb per head.
4. _bwd_dbc_kernel, grid (nc * T/BLOCK_T, B*G, splits), per group and block of a chunk: the dB partials of its
   columns (dGm^T C + the state and varlen terms) and the dC partials of its rows (dGm B + q dy states).
Then torch: dB, dC = sums over the splits; dcs = row sums - column sums (fp64); da = its reverse cumsum per
chunk; ddt' = da A + du . x; dA = sum da dt'; dD = sum of partials; the dt_limit / softplus / dt_bias chain.
All partial sums are written per program and reduced by torch: no atomics, bitwise reproducible.
Where one rounding of an fp32 operand to bf16 / fp16 would show in the reduced gradients (dA, ddt_bias), the
dot splits it into high and low parts (_dot_split: two or three tensor-core dots).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._autograd import define_custom_op, needs_grad
from .._recompute import is_kept_out, recomputable, recomputing
from .._side_by_side import gradient_buffers
from .._triton_launch import fast_math, launch, launch_fitting_shared_memory
from .._utils import cdiv, new_output, next_power_of_2
from . import SPLIT_PROGRAMS
from ._triton_bwd import _bwd_dbc_kernel, _bwd_dgm_kernel, _bwd_dt_kernel, _bwd_dx_kernel, _bwd_state_kernel
from ._triton_fwd import (_chunk_cb_kernel, _chunk_scan_kernel, _chunk_state_kernel, _chunk_states_passed_kernel,
                          _dt_cumsum_kernel, _state_passing_kernel, _varlen_state_kernel)
from ._common import segment_ids


# The boundary states in one kernel (parallel over B * H and state tiles, sequential over chunks) where that grid
# has at least this many programs; below it, two kernels (the first parallel over chunks too); None: two kernels
# always (both give the same bits, tested). 0, one kernel always: on an H100 it took the forward of every GPU case
# of `python -m benchmarks tune ssd_chunk_scan` 3-17% less time than two (large case 0.767 -> 0.687 ms), even
# the smallest grid (B1 H16 P64 N64 fp32: 0.244 -> 0.203 ms).
PASSED_STATES_PROGRAMS: Optional[int] = 0

# Tiles of the forward's boundary-states kernels (_chunk_states_passed_kernel, _chunk_state_kernel): the state's
# columns per program (STATES_COLS, a power of two from 16, at most d_state: whole-N tiles read x once per head
# instead of once per N tile, with half the programs to hide the chunk loop's latency), positions per step of
# the loop over a chunk (STATES_STEP, a power of two from 16), warps, and pipelining stages (None: Triton's
# default). At the defaults (the kernels' fixed tiles until these settings) the one-kernel path took 175 us of
# the large case's 533 us forward (H100, h100_ssd_chunk_scan_factored_decays.txt); the tuner sweeps the others.
STATES_COLS = 64
STATES_STEP = 64
STATES_WARPS = 4
STATES_STAGES: Optional[int] = None

# 128 registers per thread let two 8-warp programs of the backward's dx and dGm kernels share an SM (65536
# registers), hiding each other's latency; each alone took about 180 and ran one per SM. On an H100 at
# B4 L4096 H64 P64 N128 bf16: dx 1282 -> 983 us, dGm 700 -> 508 us, for 116 and 28 bytes of spills, the same
# bits (capping the dB / dC kernel too spilled 708 bytes and was slower). fp32 inputs, whose tiles need more
# registers, keep ptxas's choice until timed (`python -m benchmarks tune ssd_chunk_scan` sweeps both).
REGISTER_CAP: Optional[int] = 128
REGISTER_CAP_FP32: Optional[int] = None

# Rows per step of the dx kernel's loop over a column block's rows (a power of two from 16; at most its columns),
# its columns per program (a power of two from 16; at most the chunk), its warps (None: the backward's, 8 for full
# (64, 128) state tiles) and its pipelining depth. 128 columns halve its programs, each with a larger state product
# before the loop, at the cost of more masked rows on the diagonal. Natively (H100, B4 L4096 H64 P64 N128 bf16, the
# tuner in benchmarks/results/h100_ssd_chunk_scan_launch_settings.txt): forward+backward 2.900 ms at 64 columns by
# 64 rows, 2.588 at 128 by 32 (2.618 by 64; 2.692 by 16 at 4 warps; 64 by 64 at 4 warps 2.652). Offline (Triton
# 3.6, sm_90): at 8 warps capped at 128 registers 128 by 32 spills 20 B, 64 by 64 28 B.
DX_ROWS = 32
DX_COLS = 128
DX_WARPS: Optional[int] = None
DX_STAGES = 2

# Warps and pipelining depth of the forward's output kernel (_chunk_scan_kernel). Offline (Triton 3.6, sm_90, B4
# L4096 H64 P64 N128 bf16): 4 warps at 3 stages 166 registers and 98 KB of shared memory (two programs per SM);
# 8 warps 121 registers (two); 2 stages 74 KB (4 warps: three programs per SM). Natively (H100, same case): 2
# stages 0.653 ms forward against 0.688 at 3, 0.939 at 4; 8 warps 0.789.
SCAN_WARPS = 4
SCAN_STAGES = 2
# Rows per program of the forward's output kernel and columns per step of its loop over the rows' past (powers of
# two from 16; at most the chunk): 128 rows halve its programs, each with a larger entering-state product; 32
# columns per step fit four 4-warp programs per SM. Offline (Triton 3.6, sm_90, the case above, 2 stages): 64 x 64
# 129 registers and 74 KB; 64 x 32 124 and 53 KB; 128 x 32 at 8 warps 124 and 82 KB; 128 x 64 at 8 warps 137 and
# 115 KB; none spill. Natively (H100, same case): forward 0.656 ms at 64 x 64, 0.571 at 64 x 32, 0.623 at 128 x 32.
SCAN_ROWS = 64
SCAN_COLS = 32
# Columns per step of the output kernel's steps left of its row block where those take factored decays (None:
# SCAN_COLS; a power of two from 16, at most SCAN_ROWS): without the per-element exp and mask a step holds fewer
# live tiles, so it may take wider ones (at 64 the large case's forward was slower natively: 0.590 ms against 0.547).
SCAN_LEFT_COLS: Optional[int] = None

# Where dt' >= 0 (dt_limit's low end >= 0, the default and mamba_ssm's) and there is no seq_idx, cs is monotone
# in a chunk and a decay between positions i > j factors through any f between them: exp(cs_i - cs_j) =
# exp(cs_i - cs_f) exp(cs_f - cs_j), each factor between 1 and the product. The output kernel then takes one exp
# per row and one per column instead of one per element, and no causal mask, in its steps left of the row block
# (offline, Triton 3.6 sm_90: 21% fewer instructions per chunk, benchmarks/results/
# sm90_ssd_chunk_scan_factored_decays.txt). The dx kernel's rows below its column block, factored the same way,
# ran slower on an H100 (two accumulating loops: spills and shared memory) and take the decays per element.
# Natively (H100, benchmarks/results/h100_ssd_chunk_scan_factored_decays.txt) the output kernel is no faster for
# it at B4 L4096 H64 P64 N128 (348 us against 338: not issue-bound there), the forward of B8 L2048 H32 P64 N64
# 8% faster (0.255 ms against 0.276): off by default, for Mamba-2's usual d_state 128.
FACTORED_DECAYS = False

# Warps of the dB / dC kernel with 16-bit inputs (None: the backward's 8, or 4 for small state tiles). At 8
# warps it takes 255 registers and runs one program per SM, with no warp ready to issue 80% of the cycles (ncu);
# at 4 the same H100 case ran it in 368 us instead of 724 (forward+backward 3.503 -> 3.185 ms; gradients within
# 7.7e-6 of 8 warps').
DBC_WARPS: Optional[int] = 4


# Warps of the dGm kernel (None: the backward's, 8 for full (64, 128) state tiles, which it does not hold). At 8
# warps each warpgroup forms the whole dy operand of its (64, 64) product: offline (Triton 3.6, sm_90) 10.5k
# instructions per head and tile against 6.5k at 4 warps, yet natively (H100, B4 L4096 H64 P64 N128 bf16)
# forward+backward 2.512 ms at 8 warps, 2.559 at 4 (benchmarks/results/
# h100_ssd_chunk_scan_dgm_transposed_and_constexpr_dims.txt): instruction issue does not bound it.
DGM_WARPS: Optional[int] = None


# --- launchers -----------------------------------------------------------------------------------------
def _dot_config(dtype: torch.dtype, headdim: int, dstate: int):
    """(operand dtype of tl.dot, input_precision): the input dtype on tensor cores; fp32 as three tf32
    tensor-core products ("tf32x3": each operand split into a tf32 value and its tf32 remainder, about fp32's
    precision; one tf32 product would miss the fp32 tolerance, and the exact FMA dot ran the issue's large
    case 130x slower than bf16 on an H100, its (64, 128) fp32 operand tiles spilling).

    Measured on the H100 with Triton 3.6 (the native parity sweep, tests/native): fp16 / bf16 operands
    give wrong outputs and illegal memory accesses when neither headdim nor d_state is a power of two
    (P 24 with N 40 failed; P 32 with N 40 and P 24 with N 64 were right). Those shapes take the exact fp32
    dot instead, off the tensor cores: correct, slower, and at least as accurate."""
    import triton.language as tl
    if headdim & (headdim - 1) and dstate & (dstate - 1):
        return tl.float32, "ieee"
    if dtype == torch.float32:
        return tl.float32, "tf32x3"
    return (tl.bfloat16 if dtype == torch.bfloat16 else tl.float16), "tf32"


def _pow2(n: int, low: int = 16) -> int:
    return max(low, next_power_of_2(n))


def _block_t(T: int) -> int:
    """Rows (and columns) of a chunk per block in the chunk scan and the backward: the tiles of cb they share."""
    return min(_pow2(T), 64)


def _cb_launch(x, B, C, T, reader_block):
    """cb (B, nc, G, T, T) fp32: C_i . B_j of every chunk and group, _block_t(T) blocks at and below the diagonal;
    the heads of a group read it instead of each forming it again. The rest is unwritten, or zeros where the
    reader's rows or columns per block (reader_block) span more than one of those blocks: its tiles on the
    diagonal then take in unwritten ones, which its decay mask zeroes (an unwritten NaN times 0 would not)."""
    batch, length, groups, dstate = B.shape
    nc = cdiv(length, T)
    shape = (batch, nc, groups, T, T)
    cb = (torch.zeros(shape, dtype=torch.float32, device=B.device) if reader_block > _block_t(T)
          else new_output(shape, torch.float32, B.device))
    if nc > 0:
        dot_dtype, precision = _dot_config(x.dtype, x.shape[-1], dstate)
        block_t = _block_t(T)
        launch(
            _chunk_cb_kernel, (nc * cdiv(T, block_t), batch * groups),
            B, C, cb, length, groups, dstate, T, nc, *B.stride(), *C.stride(),
            DOT_DTYPE=dot_dtype, PRECISION=precision, EMULATE=_emulate(x),
            BLOCK_T=block_t, BLOCK_N=_pow2(dstate), num_warps=4)
    return cb


def _register_cap(x, warps: int) -> Optional[int]:
    """The registers per thread the backward's dx and dGm kernels may use at 8 warps: REGISTER_CAP with 16-bit
    inputs, REGISTER_CAP_FP32 with fp32 inputs (None: ptxas's own choice)."""
    if warps != 8:
        return None
    return REGISTER_CAP if x.element_size() == 2 else REGISTER_CAP_FP32


def _factored(seg: Optional[Tensor], dt_lo: float) -> bool:
    """Whether the output kernel takes the decays left of its row blocks factored (FACTORED_DECAYS): cs is monotone
    in each chunk (dt' >= dt_lo >= 0) and no segment boundary lies inside one."""
    return FACTORED_DECAYS and seg is None and dt_lo >= 0


def _emulate(x) -> bool:
    """The CPU interpreter's bf16 tl.dot is broken: emulate it (_triton_fwd._dot)."""
    return x.device.type == "cpu" and x.dtype == torch.bfloat16


def _dt_launch(dt, A, dt_bias, seg, heads, T, nc, dt_softplus, dt_lo, dt_hi):
    """dt' (B, H, nc*T) fp32, cs (B, H, nc*T) fp64 and g (B, H, max(nc, 1)) fp32 from _dt_cumsum_kernel
    (the forward's step 1; the backward recomputes them rather than storing them)."""
    batch, length = dt.shape[:2]
    lp = nc * T
    dev = dt.device
    dtp = torch.empty((batch, heads, lp), dtype=torch.float32, device=dev)
    cs = torch.empty((batch, heads, lp), dtype=torch.float64, device=dev)
    g = torch.empty((batch, heads, max(nc, 1)), dtype=torch.float32, device=dev)
    if nc > 0:
        block_t = next_power_of_2(T)
        block_h = max(1, min(next_power_of_2(heads), 4096 // block_t))
        # No more warps than the tile has groups of 32 elements: Triton 3.6's layout passes fail on the fp64
        # cumsum of a (block_t, block_h) tile of 32 or 64 elements spread over 4 warps.
        warps = max(1, min(4, block_t * block_h // 32))
        launch(
            _dt_cumsum_kernel, (nc, batch, cdiv(heads, block_h)),
            dt, A, dt if dt_bias is None else dt_bias, dtp if seg is None else seg, dtp, cs, g,
            length, heads, T, nc, lp, dt_lo, dt_hi, *dt.stride(), *(seg.stride() if seg is not None else (0, 0)),
            HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_SEG=seg is not None,
            BLOCK_T=block_t, BLOCK_H=block_h, num_warps=warps)
    return dtp, cs, g


def _states_tiles(headdim: int, dstate: int) -> Tuple[int, int, int]:
    """(BLOCK_P, BLOCK_N, tiles) of the boundary-states kernels' (P, N) state tiles (STATES_COLS)."""
    block_p = min(_pow2(headdim), 64)
    block_n = min(_pow2(dstate), STATES_COLS)
    return block_p, block_n, cdiv(headdim, block_p) * cdiv(dstate, block_n)


def _states_in_one_kernel(x: Tensor, dstate: int) -> bool:
    """Whether the boundary states are formed in one kernel: its grid, without the chunks, has at least
    PASSED_STATES_PROGRAMS programs (when set), and there is a chunk."""
    batch, length, heads, headdim = x.shape
    tiles = _states_tiles(headdim, dstate)[2]
    return (length > 0 and PASSED_STATES_PROGRAMS is not None
            and batch * heads * tiles >= PASSED_STATES_PROGRAMS)


def _lean_states(x: Tensor, dstate: int, cu_seqlens: Optional[Tensor], backward_reads: bool) -> bool:
    """Whether the forward may keep the states entering its chunks in x's dtype (bf16 / fp16) instead of fp32:
    where its output kernel rounds them to that dtype anyway for its tensor-core product (so the output has the
    same bits), nothing else reads them (no backward that reads the forward's states, no varlen states), and
    they are formed in one kernel (which also writes the final state in fp32). Half the bytes of the states'
    write and read: 2 x 71 MB at B4 L4096 H64 P64 N128, chunk 256."""
    import triton.language as tl
    return (x.element_size() == 2 and _dot_config(x.dtype, x.shape[-1], dstate)[0] != tl.float32
            and cu_seqlens is None and not backward_reads and _states_in_one_kernel(x, dstate))


def _states_launch(x, B, dtp, cs, g, initial_states, seg, T, lean: bool = False):
    """The boundary states (B, nc + 1, H, P, N) fp32 (the state entering each chunk, then the final one): each
    chunk's own state, then the pass that carries them across chunks; in one kernel where _states_in_one_kernel.
    lean (one kernel only): (entering (B, nc, H, P, N) in x's dtype, final (B, 1, H, P, N) fp32) instead."""
    batch, length, heads, headdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    nc = cdiv(length, T)
    lp = nc * T
    if lean:
        entering = new_output((batch, nc, heads, headdim, dstate), x.dtype, x.device)
        final = new_output((batch, 1, heads, headdim, dstate), torch.float32, x.device)
    else:
        states = new_output((batch, nc + 1, heads, headdim, dstate), torch.float32, x.device)
        entering, final = states[:, :nc], states[:, nc:]
    dot_dtype, precision = _dot_config(x.dtype, headdim, dstate)
    has_seg, has_init = seg is not None, initial_states is not None
    st_strides = entering.stride()
    init_strides = initial_states.stride() if has_init else (0, 0, 0, 0)
    block_p, block_n, tiles = _states_tiles(headdim, dstate)
    inputs = (x, B, dtp, cs, seg if has_seg else dtp)
    sizes = (length, heads, heads // groups, headdim, dstate, T, lp)
    input_strides = (*x.stride(), *B.stride(), *(seg.stride() if has_seg else (0, 0)))
    options = dict(HAS_SEG=has_seg, DOT_DTYPE=dot_dtype, PRECISION=precision, EMULATE=_emulate(x),
                   BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=min(_pow2(T), STATES_STEP), num_warps=STATES_WARPS,
                   **({} if STATES_STAGES is None else dict(num_stages=STATES_STAGES)))
    if _states_in_one_kernel(x, dstate):
        launch(
            _chunk_states_passed_kernel, (tiles, batch * heads),
            *inputs, g, initial_states if has_init else final, entering, final, *sizes, nc, *input_strides,
            *init_strides, *st_strides, final.stride(0), *final.stride()[2:], HAS_INIT=has_init,
            **options)
        return (entering, final) if lean else states
    if lean:
        raise ValueError("lean boundary states need the one-kernel path (_lean_states)")
    if nc > 0:
        launch(_chunk_state_kernel, (nc, batch * heads, tiles),
               *inputs, states, *sizes, *input_strides, *st_strides, **options)
    block = min(next_power_of_2(headdim * dstate), 1024)
    launch(
        _state_passing_kernel, (batch * heads, cdiv(headdim * dstate, block)),
        states, initial_states if has_init else states, g, heads, headdim * dstate, nc,
        *init_strides, dstate, *st_strides, HAS_INIT=has_init, BLOCK=block, num_warps=4)
    return states


def _boundary_states(x, dt, A, B, dt_bias, initial_states, seg, T, dt_softplus, dt_lo, dt_hi):
    """The forward's boundary states from its inputs, as the backward recomputes them where they were not kept
    (inside a recomputed_activations block: (B, nc + 1, H, P, N) fp32 less per call)."""
    nc = cdiv(x.shape[1], T)
    dtp, cs, g = _dt_launch(dt, A, dt_bias, seg, x.shape[2], T, nc, dt_softplus, dt_lo, dt_hi)
    return _states_launch(x, B, dtp, cs, g, initial_states, seg, T)


def _forward_launch(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, T, dt_softplus, dt_lo, dt_hi,
                    store_pre, lean=False):
    batch, length, heads, headdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    nc = cdiv(length, T)
    lp = nc * T
    dev = x.device
    dtp, cs, g = _dt_launch(dt, A, dt_bias, seg, heads, T, nc, dt_softplus, dt_lo, dt_hi)
    if lean:  # the entering states in x's dtype for the output kernel alone; the op returns the final one
        states, returned = _states_launch(x, B, dtp, cs, g, initial_states, seg, T, lean=True)
    else:
        states = returned = _states_launch(x, B, dtp, cs, g, initial_states, seg, T)
    out = new_output(x.shape, x.dtype, dev)
    pre = new_output(x.shape, x.dtype, dev) if store_pre else x.new_empty(0)
    sequences = 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    varlen = new_output((sequences, heads, headdim, dstate), torch.float32, dev)
    dot_dtype, precision = _dot_config(x.dtype, headdim, dstate)
    emulate = _emulate(x)
    has_seg = seg is not None
    seg_arg = seg if has_seg else dtp
    seg_strides = seg.stride() if has_seg else (0, 0)
    st_strides = states.stride()
    hpg = heads // groups
    if nc > 0:
        block_m = min(_pow2(T), SCAN_ROWS)
        cb = _cb_launch(x, B, C, T, block_m)
        block_p = min(_pow2(headdim), 64)
        block_n = _pow2(dstate)
        D_strides = (0, 0) if D is None else ((D.stride(0), 0) if D.dim() == 1 else D.stride())
        z_strides = z.stride() if z is not None else (0, 0, 0, 0)
        grid = (nc * cdiv(T, block_m), batch * heads, cdiv(headdim, block_p))
        launch_fitting_shared_memory(_chunk_scan_kernel, grid,
            x, x if z is None else z, cb, C, x if D is None else D, dtp, cs, seg_arg, states, out,
            pre if store_pre else out,
            length, heads, groups, hpg, headdim, dstate, T, nc, lp, *x.stride(), *z_strides, *C.stride(),
            *D_strides, *seg_strides, *st_strides, *out.stride(),
            HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
            STORE_PRE=store_pre, HAS_SEG=has_seg, DOT_DTYPE=dot_dtype, PRECISION=precision, EMULATE=emulate,
            FAST=fast_math(x), FACTORED=_factored(seg, dt_lo), BLOCK_M=block_m, BLOCK_K=min(block_m, SCAN_COLS),
            BLOCK_KL=min(block_m, SCAN_LEFT_COLS or SCAN_COLS), BLOCK_P=block_p, BLOCK_N=block_n,
            num_warps=SCAN_WARPS, num_stages=SCAN_STAGES)
    if sequences > 0:
        block_p = min(_pow2(headdim), 64)
        block_n = min(_pow2(dstate), 64)
        block_k = min(_pow2(T), 64)
        launch(
            _varlen_state_kernel, (sequences, heads, cdiv(headdim, block_p) * cdiv(dstate, block_n)),
            x, B, dtp, cs, seg_arg, states, cu_seqlens, varlen, length, heads, hpg, headdim, dstate, T, lp,
            *x.stride()[1:], *B.stride()[1:], seg_strides[1], *st_strides[1:], *varlen.stride(),
            HAS_SEG=has_seg, DOT_DTYPE=dot_dtype, PRECISION=precision, EMULATE=emulate,
            BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return out, pre, returned, varlen


def _split_heads(hpg: int, programs: int) -> Tuple[int, int]:
    """(splits, heads per split) for the per-group kernels 3 and 4, which loop over the heads of a group:
    enough splits that the grid has about SPLIT_PROGRAMS programs (two per H100 SM), each split writing its own
    fp32 partial of dB / dC (summed by torch)."""
    splits = min(hpg, max(1, cdiv(SPLIT_PROGRAMS, max(programs, 1))))
    per_split = cdiv(hpg, splits)
    return cdiv(hpg, per_split), per_split


def _backward_launch(dout, dstates, dvarlen, x, dt, A, B, C, D, z, dt_bias, seg, cu_seqlens, pre, states,
                     T, dt_softplus, dt_lo, dt_hi, need_dinit, side_by_side=False):
    """Gradients (dx, ddt, dA, dB, dC, dD, dz, dinit, ddt_bias): ddt in dt's dtype and layout (B, L, H) contiguous,
    dA, dB, dC, dD, dinit, ddt_bias fp32 (dD / dz / ddt_bias None without D / z / dt_bias). Requires L > 0.
    side_by_side: where x, B and C are consecutive channel slices of one tensor (the Mamba2 block's conv output)
    and there is no z, dx, dB and dC are written side by side into one buffer laid out like it (dB, dC then in
    their inputs' dtype), which the block's split passes on without concatenating them."""
    batch, length, heads, headdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    hpg = heads // groups
    nc = cdiv(length, T)
    lp = nc * T
    bh_count = batch * heads
    dev = x.device
    f32, f64 = torch.float32, torch.float64
    dtp, cs, g = _dt_launch(dt, A, dt_bias, seg, heads, T, nc, dt_softplus, dt_lo, dt_hi)
    dot_dtype, precision = _dot_config(x.dtype, headdim, dstate)
    emulate = _emulate(x)
    has_seg = seg is not None
    seg_arg = seg if has_seg else dtp
    seg_strides = seg.stride() if has_seg else (0, 0)
    has_z = z is not None
    z_arg = z if has_z else x
    z_strides = z.stride() if has_z else (0, 0, 0, 0)
    has_dv = dvarlen is not None and cu_seqlens is not None
    if has_dv:
        ends = cu_seqlens[1:].to(torch.int64) - 1
        # the sequences ending in chunk c are vlo[c] .. vlo[c + 1] - 1 (ends are strictly increasing)
        vlo = torch.searchsorted(ends, torch.arange(nc + 1, device=dev, dtype=torch.int64) * T).to(torch.int32)
        dv_arg, cu_arg, dv_strides = dvarlen, cu_seqlens, dvarlen.stride()
    else:
        vlo, dv_arg, cu_arg, dv_strides = dtp, dtp, dtp, (0, 0, 0, 0)
    st_strides = states.stride()
    common = dict(DOT_DTYPE=dot_dtype, PRECISION=precision, EMULATE=emulate)

    # 1. reverse state passing: dHP (B, nc + 1, H, P, N) and <dHP[c + 1], hp_{c + 1}> per tile
    dhp = new_output(states.shape, f32, dev)
    assert dhp.stride() == st_strides
    block_p = min(_pow2(headdim), 64)
    block_n = min(_pow2(dstate), 64)
    n_tiles = cdiv(headdim, block_p) * cdiv(dstate, block_n)
    part = new_output((bh_count, n_tiles, nc), f32, dev)
    vq = new_output((dvarlen.shape[0], heads, n_tiles), f32, dev) if has_dv else part
    has_dst = dstates is not None
    launch(
        _bwd_state_kernel, (bh_count, n_tiles),
        dout, z_arg, C, cs, g, seg_arg, states, dstates if has_dst else states, dv_arg, vlo, cu_arg, dhp, part, vq,
        length, heads, hpg, headdim, dstate, T, lp, nc, n_tiles,
        *dout.stride(), *z_strides, *C.stride(), *seg_strides, *st_strides,
        *(dstates.stride() if has_dst else (0,) * 5), *dv_strides,
        HAS_Z=has_z, HAS_SEG=has_seg, HAS_DST=has_dst, HAS_DV=has_dv, **common,
        BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=min(_pow2(T), 64), num_warps=4)

    # 2. per head and column block: dx, dz, du . x, column sums of the state / varlen terms of dss, dD partials
    dx_cols = min(_pow2(T), DX_COLS)
    cb = _cb_launch(x, B, C, T, dx_cols)
    block_t = _block_t(T)
    n_jb = cdiv(T, block_t)
    block_p = _pow2(headdim)
    block_n = _pow2(dstate)
    warps = 8 if block_p * block_n >= 8192 else 4  # full (P, N) state tiles in registers: more warps share them
    into = gradient_buffers((x, B, C), 2) if side_by_side and not has_z else None
    dx = into[0] if into else new_output(x.shape, x.dtype, dev)
    dz = new_output(x.shape, z.dtype, dev) if has_z else dx
    if has_z:
        assert pre.stride() == dx.stride() == dz.stride()
    dux = new_output((bh_count, lp), f32, dev)
    col = new_output((bh_count, lp), f64, dev)
    dx_jb = cdiv(T, dx_cols)
    dD_part = new_output((nc * dx_jb, bh_count, block_p), f32, dev) if D is not None else dux
    srow = new_output((bh_count, dx_jb, nc), f64, dev)
    vrow = torch.zeros((dvarlen.shape[0], heads, dx_jb), dtype=f64, device=dev) if has_dv else srow  # skipped: 0
    D_strides = (0, 0) if D is None else ((D.stride(0), 0) if D.dim() == 1 else D.stride())
    launch_fitting_shared_memory(_bwd_dx_kernel, (nc * dx_jb, bh_count),
        x, dout, z_arg, pre if has_z else x, B, cb, x if D is None else D, dtp, cs, seg_arg, dhp, dv_arg, vlo,
        cu_arg, dx, dz, dux, col, dD_part, srow, vrow,
        length, heads, groups, hpg, headdim, dstate, T, nc, lp, bh_count,
        *x.stride(), *dout.stride(), *z_strides, *B.stride(), *D_strides, *seg_strides,
        *st_strides, *dv_strides, *dx.stride(),
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=has_z, HAS_SEG=has_seg,
        HAS_DV=has_dv, **common, FAST=fast_math(x), BLOCK_T=dx_cols, BLOCK_I=min(dx_cols, DX_ROWS),
        BLOCK_P=block_p, BLOCK_N=block_n, num_warps=DX_WARPS or warps, maxnreg=_register_cap(x, DX_WARPS or warps),
        num_stages=DX_STAGES)

    # 3. per group and tile at or below the diagonal, over the heads of a split: dGm, row and column sums of dss
    n_pairs = n_jb * (n_jb + 1) // 2
    split_dy = has_z or dout.dtype != x.dtype  # dy has digits beyond x's dtype: dout * silu(z), or another dtype
    splits, per_split = _split_heads(hpg, nc * n_pairs * batch * groups)
    dgm = torch.empty((splits, batch, groups, nc, T, T), dtype=f32, device=dev)  # blocks at/below the diagonal
    rowp = new_output((bh_count, n_jb + 1, lp), f64, dev)  # blocks above the diagonal: never written nor read
    colp = new_output((bh_count, n_jb, lp), f64, dev)
    launch_fitting_shared_memory(_bwd_dgm_kernel, (nc * n_pairs, batch * groups, splits),
        x, dout, z_arg, cb, dtp, cs, seg_arg, dgm, rowp, colp,
        length, heads, groups, hpg, per_split, headdim, T, lp, nc, batch,
        *x.stride(), *dout.stride(), *z_strides, *seg_strides,
        HAS_Z=has_z, HAS_SEG=has_seg, SPLIT_DY=split_dy, **common, FAST=fast_math(x), BLOCK_T=block_t, BLOCK_P=block_p,
        num_warps=DGM_WARPS or warps, maxnreg=_register_cap(x, DGM_WARPS or warps))

    # 4. per group and block: dB partials (its columns) and dC partials (its rows)
    dB_part = new_output((splits, batch, length, groups, dstate), f32, dev)
    dC_part = new_output((splits, batch, length, groups, dstate), f32, dev)
    launch_fitting_shared_memory(_bwd_dbc_kernel, (nc * n_jb, batch * groups, splits),
        x, dout, z_arg, B, C, dtp, cs, seg_arg, states, dhp, dv_arg, vlo, cu_arg, dgm, rowp, dB_part, dC_part,
        length, heads, groups, hpg, per_split, headdim, dstate, T, lp, nc, batch,
        *x.stride(), *dout.stride(), *z_strides, *B.stride(), *C.stride(), *seg_strides, *st_strides, *dv_strides,
        HAS_Z=has_z, HAS_SEG=has_seg, HAS_DV=has_dv, SPLIT_DY=split_dy, **common, BLOCK_T=block_t, BLOCK_P=block_p,
        BLOCK_N=block_n, num_warps=DBC_WARPS if DBC_WARPS and x.element_size() == 2 else warps)

    # 5. the log-decay gradient dcs (row sums - column sums of dss, + the state and varlen rows) in fp64, its
    # reverse cumsum da within each chunk, ddt' = da A + du . x, and back through the clamp and the softplus to dt
    # and dt_bias; dA's and ddt_bias's partials per chunk and head
    extra = dux
    if has_dv:  # one sequence ends per position: no clash
        extra = torch.zeros((bh_count, lp), dtype=f64, device=dev)  # batch 1: rows are heads
        extra[:, ends] = (vrow.sum(-1) + vq.sum(-1, dtype=f64)).t()
    ddt = new_output(dt.shape, dt.dtype, dev)
    dA_part = new_output((bh_count, nc), f64, dev)
    dbias_part = new_output((bh_count, nc), f32, dev)
    launch(
        _bwd_dt_kernel, (nc, bh_count),
        rowp, colp, col, part, srow, extra, dux, dtp, A, dt, dt if dt_bias is None else dt_bias, ddt, dA_part,
        dbias_part, length, heads, T, lp, nc, n_tiles, dx_jb, dt_lo, dt_hi, A.stride(0), *dt.stride(),
        *ddt.stride(), HAS_EXTRA=has_dv, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, BLOCK_T=block_t,
        T_PAD=_pow2(T), NT_PAD=_pow2(n_tiles), SJB_PAD=_pow2(dx_jb), num_warps=4)
    dA = dA_part.view(batch, heads, nc).sum((0, 2)).to(f32)
    ddt_bias = None if dt_bias is None else dbias_part.view(batch, heads, nc).sum((0, 2))
    dD = None
    if D is not None:
        dD = dD_part[..., :headdim].sum(0).view(batch, heads, headdim).sum(0)
        dD = dD.sum(-1) if D.dim() == 1 else dD
    dinit = dhp[:, 0].contiguous() if need_dinit else None
    dB, dC = (_sum_splits(dB_part, into[1] if into else None), _sum_splits(dC_part, into[2] if into else None))
    return dx, ddt, dA, dB, dC, dD, dz if has_z else None, dinit, ddt_bias


def _sum_splits(part: Tensor, out: Optional[Tensor]) -> Tensor:
    """The sum of per-split partials part (splits, ...) fp32, or that sum written into out (its dtype)."""
    if out is None:
        return part.sum(0)
    return out.copy_(part[0] if part.shape[0] == 1 else part.sum(0))


# --- autograd wiring -----------------------------------------------------------------------------------
def _forward(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
             dt_bias: Optional[Tensor], initial_states: Optional[Tensor], seg: Optional[Tensor],
             cu_seqlens: Optional[Tensor], chunk_size: int, dt_softplus: bool, dt_lo: float, dt_hi: float,
             store_pre: bool, lean: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(out (B, L, H, P) x's dtype, pre-gate output (or empty), boundary states (B, nc + 1, H, P, N) fp32 (lean:
    only the final one, (B, 1, H, P, N); see _lean_states), varlen states (S, H, P, N) fp32)."""
    return _forward_launch(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, chunk_size,
                           dt_softplus, dt_lo, dt_hi, store_pre, lean)


def _forward_fake(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, chunk_size, dt_softplus, dt_lo,
                  dt_hi, store_pre, lean):
    batch, length, heads, headdim = x.shape
    nc = cdiv(length, chunk_size)
    sequences = 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (x.new_empty(x.shape), x.new_empty(x.shape) if store_pre else x.new_empty(0),
            x.new_empty((batch, 1 if lean else nc + 1, heads, headdim, B.shape[-1]), dtype=torch.float32),
            x.new_empty((sequences, heads, headdim, B.shape[-1]), dtype=torch.float32))


def _backward(dout: Tensor, dstates: Optional[Tensor], dvarlen: Optional[Tensor], x: Tensor, dt: Tensor, A: Tensor,
              B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
              initial_states: Optional[Tensor], seg: Optional[Tensor], cu_seqlens: Optional[Tensor], pre: Tensor,
              states: Tensor, chunk_size: int, dt_softplus: bool, dt_lo: float, dt_hi: float, need_dinit: bool,
              side_by_side: bool = False
              ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx x's dtype, ddt dt's dtype, dA, dB, dC, dD (D's shape, or empty), dz (z's dtype, or empty), dinit
    (B, H, P, N), or empty without need_dinit, ddt_bias (H,) or empty), all but dx, ddt and dz fp32. L > 0.
    side_by_side (eager calls only: the op's outputs may not alias each other): see _backward_launch.
    states: the forward's boundary states, or an empty placeholder where a lean forward (_lean_states) kept none:
    they are formed again here (fp32), and dstates, the final state's (B, 1, H, P, N) gradient then, becomes the
    last of theirs (as autograd's select backward gives it where the forward returns them all)."""
    if states.dim() != 5:
        states = _boundary_states(x, dt, A, B, dt_bias, initial_states, seg, chunk_size, dt_softplus, dt_lo, dt_hi)
        if dstates is not None:
            final_grad, dstates = dstates, dstates.new_zeros(states.shape)
            dstates[:, -1:] = final_grad
    dx, ddt, dA, dB, dC, dD, dz, dinit, ddt_bias = _backward_launch(
        dout, dstates, dvarlen, x, dt, A, B, C, D, z, dt_bias, seg, cu_seqlens, pre, states, chunk_size, dt_softplus,
        dt_lo, dt_hi, need_dinit, side_by_side)

    def empty(dtype=torch.float32):  # one per absent gradient: a custom op's outputs may not alias each other
        return x.new_empty(0, dtype=dtype)
    return (dx, ddt, dA, dB, dC, empty() if dD is None else dD, empty(x.dtype) if dz is None else dz,
            empty() if dinit is None else dinit, empty() if ddt_bias is None else ddt_bias)


def _backward_fake(dout, dstates, dvarlen, x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, pre, states,
                   chunk_size, dt_softplus, dt_lo, dt_hi, need_dinit, side_by_side=False):
    f32 = torch.float32
    batch, length, heads, headdim = x.shape
    return (x.new_empty(x.shape), dt.new_empty(dt.shape), x.new_empty(A.shape, dtype=f32),
            x.new_empty(B.shape, dtype=f32), x.new_empty(C.shape, dtype=f32),
            x.new_empty(0 if D is None else D.shape, dtype=f32), x.new_empty(0) if z is None else z.new_empty(z.shape),
            x.new_empty((batch, heads, headdim, B.shape[-1]) if need_dinit else 0, dtype=f32),
            x.new_empty(0 if dt_bias is None else dt_bias.shape, dtype=f32))


def _setup_context(ctx, inputs, output):
    (x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, chunk_size, dt_softplus, dt_lo, dt_hi,
     store_pre, lean) = inputs
    _, pre, states, _ = output
    # inside a recomputed_activations block the backward recomputes the boundary states from the inputs; a lean
    # forward (which returned the final state alone) saves none of them: its backward op forms them all again
    if lean:
        states = states.new_empty(0)
    else:
        recomputable(states, _boundary_states, x, dt, A, B, dt_bias, initial_states, seg, chunk_size, dt_softplus,
                     dt_lo, dt_hi)
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, pre, states)
    ctx.args = (chunk_size, dt_softplus, dt_lo, dt_hi, store_pre)
    ctx.mark_non_differentiable(pre)


def _gradients(backward_op, ctx, dout, dpre, dstates, dvarlen):
    x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, pre, states = ctx.saved_tensors
    chunk_size, dt_softplus, dt_lo, dt_hi, store_pre = ctx.args
    if z is not None and not store_pre:
        raise RuntimeError("ssd_chunk_scan (triton): backward through z needs the forward's pre-gate output; "
                           "the forward ran without a gradient to take")
    if dout is None:
        dout = torch.zeros_like(x)
    if x.shape[1] == 0:
        dx, ddt = torch.zeros_like(x), torch.zeros_like(dt)
        dA, dB, dC = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
        dD = None if D is None else torch.zeros_like(D)
        dz = None if z is None else torch.zeros_like(z)
        dinit = dstates[:, 0] if dstates is not None else torch.zeros_like(states[:, 0])
        ddt_bias = None if dt_bias is None else torch.zeros_like(dt_bias)
    else:
        dx, ddt, dA, dB, dC, dD, dz, dinit, ddt_bias = backward_op(
            dout, dstates, dvarlen if cu_seqlens is not None else None, x, dt, A, B, C, D, z, dt_bias,
            initial_states, seg, cu_seqlens, pre if z is not None else x, states, chunk_size, dt_softplus, dt_lo,
            dt_hi, initial_states is not None, backward_op is _backward)
        dD = None if D is None else dD
        dz = None if z is None else dz
        ddt_bias = None if dt_bias is None else ddt_bias
    dinit = dinit.to(initial_states.dtype) if initial_states is not None else None
    return (dx, ddt, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            None if dD is None else dD.to(D.dtype), dz, None if ddt_bias is None else ddt_bias.to(dt_bias.dtype),
            dinit, None, None, None, None, None, None, None, None)


# Outputs that reach no loss (the boundary states, unless the final state is used; the pre-gate output, which
# only the backward reads) arrive as None: materialised, they were zeros of (B, nc + 1, H, P, N) fp32 and
# (B, L, H, P) that the backward's first kernel then read.
_run = define_custom_op("ssd_chunk_scan_triton", _forward, _forward_fake, _backward, _backward_fake, _setup_context,
                        _gradients, materialize_grads=False)


# --- backend function (supports: the lambda registered in __init__.py rejects fp64) ------------------
def ssd_chunk_scan_triton(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                          dt_limit=(0.0, math.inf), initial_states=None, seq_idx=None, cu_seqlens=None):
    """Triton backend of ssm_kernels.ssd_chunk_scan (arguments already validated).
    Returns (out, final_states, varlen_states or None), states fp32."""
    batch, length = x.shape[:2]
    seg = segment_ids(seq_idx, cu_seqlens, batch, length, x.device)
    grad = needs_grad(x, dt, A, B, C, D, z, dt_bias, initial_states)
    store_pre = z is not None and grad
    lean = _lean_states(x, B.shape[-1], cu_seqlens, backward_reads=grad and not recomputing())
    out, _, states, varlen = _run(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens,
                                  int(chunk_size), bool(dt_softplus), float(dt_limit[0]), float(dt_limit[1]),
                                  store_pre, lean)
    final = states[:, -1]
    if is_kept_out(states):  # a view would keep every boundary state in memory
        final = final.clone()
    return out, final, (varlen if cu_seqlens is not None else None)
