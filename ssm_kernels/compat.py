"""mamba_ssm 2.3.2's and causal-conv1d 1.7's functions under their own names, with their signatures and return
conventions, computed by ssm_kernels' ops: code written for those packages runs after changing its imports.

    from ssm_kernels.compat import mamba_inner_fn, causal_conv1d_fn, causal_conv1d_update

    name                                    original module
    selective_scan_fn, mamba_inner_fn       mamba_ssm.ops.selective_scan_interface
    selective_state_update                  mamba_ssm.ops.triton.selective_state_update
    mamba_chunk_scan_combined,
    mamba_split_conv1d_scan_combined        mamba_ssm.ops.triton.ssd_combined
    rmsnorm_fn                              mamba_ssm.ops.triton.layernorm_gated
    causal_conv1d_fn, causal_conv1d_update  causal_conv1d (causal_conv1d_interface)

Every name but two is also `ssm_kernels.<name>`. The exceptions are our own ops at the top level:
`ssm_kernels.causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, backend=None)` (causal-conv1d's
function, with cache_seqlens and conv_state_indices, is `ssm_kernels.compat.causal_conv1d_update`), and
`ssm_kernels.selective_state_update`, which also takes dt_proj_weight (Mamba-1's dt projection fused into the
step); `ssm_kernels.compat.selective_state_update` has mamba_ssm's parameter list and calls it.

The functions compose ssm_kernels' ops (causal_conv1d, selective_scan, ssd_chunk_scan, gated_rmsnorm,
causal_conv1d_update), which pick their backend as usual (force one with `ssm_kernels.use_backend`). They run
on every device and dtype those ops take, including the CPU, and are differentiable wherever the originals are.
Where the originals assert, they raise ValueError / TypeError naming the argument. Beyond the originals:

* mamba_inner_fn: checkpoint_lvl=1 (the default, as there) recomputes the conv output and delta in the backward
  instead of keeping them (ssm_kernels._recompute, whatever backend each op runs); 0 keeps them. Gradients pass
  through the optional B / C / dt RMS norms to their inputs and weights (mamba_ssm 2.3.2's backward skips those
  norms and gives the weights no gradient).
* rmsnorm_fn: the bias is added (and gated) outside the fused norm kernel.
* causal_conv1d_fn: no memory-layout requirements (causal-conv1d's kernel wants channel-last x for
  final states and seq_idx); as there, tokens with seq_idx < 0 are padding and output 0.
* causal_conv1d_update: cache_seqlens (circular buffer) and conv_state_indices (row selection, -1 = padding)
  are handled in torch around our op and are not fused: conv_state_indices reads the selected cache rows,
  updates them and writes them back, and is checked (values in range, distinct rows), which reads it on the
  host (a device sync per call on the GPU).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ._autograd import needs_grad
from ._recompute import recomputed_activations
from ._side_by_side import split
from ._utils import COMPLEX_DTYPES, INDEX_DTYPES, REAL_DTYPES, ArgCheck, PassedChecks, compute_dtype
from .causal_conv1d import causal_conv1d
from .causal_conv1d._common import check_conv_inputs
from .causal_conv1d_update import causal_conv1d_update as _causal_conv1d_update_op
from .gated_rmsnorm import gated_rmsnorm
from .gated_rmsnorm._common import check_norm_inputs
from .selective_scan import selective_scan, selective_scan_fn
from .selective_scan._common import check_bc
from .selective_state_update import selective_state_update as _selective_state_update_op
from .ssd_chunk_scan import mamba_chunk_scan_combined, ssd_chunk_scan

PARAM_DTYPES = (torch.float32, torch.float64)
ACTIVATIONS = (None, "silu", "swish")
DEFAULT_DT_LIMIT = (0.0, float("inf"))


# --- shared checks and pieces ------------------------------------------------------------------------------
def _flag(check: ArgCheck, name: str, value) -> bool:
    if not isinstance(value, bool):
        check.fail(f"{name} must be a bool, got {type(value).__name__}", TypeError)
    return value


def _positive(check: ArgCheck, name: str, value) -> float:
    if check.finite(name, value) <= 0:
        check.fail(f"{name} must be > 0, got {value}")
    return float(value)


def _autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype when autocast is on for `device` (mamba_ssm then casts its projection weights)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def _same_dtype(check: ArgCheck, names_and_tensors, dtype: torch.dtype, why: str) -> None:
    for name, t in names_and_tensors:
        if t is not None and t.dtype != dtype:
            check.fail(f"{name} must have {why}'s dtype {str(dtype).replace('torch.', '')} (outside autocast), "
                       f"got {str(t.dtype).replace('torch.', '')}", TypeError)


def _recomputes_on(device: torch.device) -> bool:
    """Whether mamba_split_conv1d_scan_combined recomputes activations in its backward on `device` (as mamba_ssm
    does, on GPUs; on a CPU memory is rarely short and the extra calls' host time is not hidden)."""
    return device.type == "cuda"


def _zero_padding(y: torch.Tensor, seq_idx: Optional[torch.Tensor]) -> torch.Tensor:
    """causal-conv1d's padding tokens: y (B, D, L) is 0 wherever seq_idx (B, L) < 0."""
    if seq_idx is None:
        return y
    return torch.where((seq_idx >= 0).unsqueeze(1), y, y.new_zeros(()))


# --- mamba_ssm.ops.selective_scan_interface ----------------------------------------------------------------
def _projected_bc(cols: torch.Tensor, bias, rms_weight, eps: float, complex_A: bool) -> torch.Tensor:
    """B or C from x_proj's output columns (B, L, d_state): (B, N, L), or for complex A (B, N, 2L) real with
    the (re, im) pair of every step interleaved, the layout mamba_ssm hands its scan."""
    if bias is not None:
        cols = cols + bias.to(cols.dtype)
    if rms_weight is not None:
        cols = gated_rmsnorm(cols, rms_weight, eps=eps)
    if not complex_A:
        return cols.transpose(1, 2)
    batch, length, d_state = cols.shape
    pairs = cols.unflatten(-1, (d_state // 2, 2)).permute(0, 2, 1, 3)  # (B, N, L, 2)
    return pairs.reshape(batch, d_state // 2, 2 * length)


def _normalised_given(X: torch.Tensor, rms_weight, eps: float) -> torch.Tensor:
    """A variable B / C passed in, RMS-normalised over its state axis N (the one before L)."""
    return gated_rmsnorm(X.transpose(-1, -2), rms_weight, eps=eps).transpose(-1, -2)


def _conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return causal_conv1d(x, weight, bias, activation="silu")


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                   out_proj_weight, out_proj_bias,
                   A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
                   C_proj_bias=None, delta_softplus=True, checkpoint_lvl=1, b_rms_weight=None, c_rms_weight=None,
                   dt_rms_weight=None, b_c_dt_rms_eps=1e-6):
    """mamba_ssm's mamba_inner_fn: the whole Mamba-1 mixer after in_proj (conv, x_proj, dt_proj, scan, out_proj).

        x, z = xz split along channels;  x = silu(causal_conv1d(x, conv1d_weight, conv1d_bias))
        x_dbl = x @ x_proj_weight.T = [dt_low | B | C]   (columns R, d_state, d_state; C the last d_state)
        delta = dt_low @ delta_proj_weight.T   (then RMSNorm(dt_rms_weight) when given)
        B = x_dbl's B columns + B_proj_bias (then RMSNorm(b_rms_weight)) when B is None; C likewise
        y = selective_scan(x, delta, A, B, C, D, z, delta_bias, delta_softplus);  out = y @ out_proj_weight.T + bias
    d_state is N for real A and 2N for complex A (x_proj's columns then hold (re, im) pairs).

    Args:
        xz: (B, 2D, L) fp32 / fp16 / bf16 (fp64): x and z stacked along channels.
        conv1d_weight: (D, 1, W) (nn.Conv1d's depthwise weight); conv1d_bias: (D,) or None.
        x_proj_weight: (E, D), E >= R + d_state per projected B / C (normally R + 2 d_state).
        delta_proj_weight: (D, R), R the rank of dt.
        out_proj_weight: (O, D); out_proj_bias: (O,) or None.
        A: (D, N) fp32 (fp64), or complex64 (complex128).
        B, C: None (taken from x_proj), or given as for selective_scan: (D, N), (B, N, L), (B, G, N, L).
        D, delta_bias: (D,) fp32 (fp64) or None.
        B_proj_bias, C_proj_bias: (d_state,) or None, added to the projected B / C.
        delta_softplus: softplus(delta + delta_bias) as the step size.
        checkpoint_lvl: 1 recomputes the conv output and delta in the backward; 0 keeps them (more memory).
        b_rms_weight, c_rms_weight: (N,) or None: RMS-normalise a variable B / C over N (real A only).
        dt_rms_weight: (D,) or None: RMS-normalise delta over D. b_c_dt_rms_eps: their eps, > 0.
    Returns:
        out: (B, L, O) (autocast's dtype under autocast, else xz's).
    Example:
        >>> import torch, ssm_kernels
        >>> xz, conv_w = torch.randn(2, 32, 10), torch.randn(16, 1, 4)
        >>> x_proj_w, dt_proj_w, out_proj_w = torch.randn(2 + 2 * 8, 16), torch.randn(16, 2), torch.randn(12, 16)
        >>> A = -torch.rand(16, 8)
        >>> ssm_kernels.mamba_inner_fn(xz, conv_w, None, x_proj_w, dt_proj_w, out_proj_w, None, A).shape
        torch.Size([2, 10, 12])
    """
    check = ArgCheck("mamba_inner_fn")
    check.tensor("xz", xz, ("B", "2D", "L"), dtypes=REAL_DTYPES)
    if xz.shape[1] % 2:
        check.fail(f"xz must have shape (B, 2D, L) (x and z stacked), got an odd channel count: {tuple(xz.shape)}")
    check.dims["D"] = xz.shape[1] // 2
    check.tensor("conv1d_weight", conv1d_weight, ("D", 1, "W"), dtypes=REAL_DTYPES)
    check.integer("conv1d_weight.shape[2] (the width W)", check.dims["W"], minimum=1)
    check.tensor("conv1d_bias", conv1d_bias, ("D",), dtypes=REAL_DTYPES, optional=True)
    check.tensor("A", A, ("D", "N"), dtypes=PARAM_DTYPES + COMPLEX_DTYPES)
    complex_A = A.is_complex()
    d_state = check.dims["N"] * (2 if complex_A else 1)
    check.tensor("delta_proj_weight", delta_proj_weight, ("D", "R"), dtypes=REAL_DTYPES)
    check.tensor("x_proj_weight", x_proj_weight, ("E", "D"), dtypes=REAL_DTYPES)
    rank, rows = check.dims["R"], check.dims["E"]
    projected = (B is None) + (C is None)
    if rows < rank + projected * d_state:
        check.fail(f"x_proj_weight must have at least R + {projected} * d_state = {rank + projected * d_state} rows "
                   f"(dt rank R = {rank}, d_state = {d_state}), got {tuple(x_proj_weight.shape)}")
    check.tensor("out_proj_weight", out_proj_weight, ("O", "D"), dtypes=REAL_DTYPES)
    check.tensor("out_proj_bias", out_proj_bias, ("O",), dtypes=REAL_DTYPES, optional=True)
    for name, X, proj_bias in (("B", B, B_proj_bias), ("C", C, C_proj_bias)):
        if X is None:
            check.tensor(f"{name}_proj_bias", proj_bias, (d_state,), dtypes=REAL_DTYPES, optional=True)
            continue
        check_bc(check, name, X, complex_A)
        if proj_bias is not None:
            check.fail(f"{name}_proj_bias is added to the {name} projected by x_proj ({name}=None), "
                       f"but {name} was passed")
    check.tensor("D", D, ("D",), dtypes=PARAM_DTYPES, optional=True)
    check.tensor("delta_bias", delta_bias, ("D",), dtypes=PARAM_DTYPES, optional=True)
    _flag(check, "delta_softplus", delta_softplus)
    if isinstance(checkpoint_lvl, bool) or checkpoint_lvl not in (0, 1):
        check.fail(f"checkpoint_lvl must be 0 or 1, got {checkpoint_lvl!r}")
    for name, weight, X, what in (("b_rms_weight", b_rms_weight, B, "B"), ("c_rms_weight", c_rms_weight, C, "C")):
        if weight is None:
            continue
        if complex_A:
            check.fail(f"{name} normalises a real {what}: it needs a real A, got {A.dtype}")
        if X is not None and X.dim() == 2:
            check.fail(f"{name} normalises a variable {what}, but the given {what} is fixed (D, N)")
        check.tensor(name, weight, ("N",), dtypes=REAL_DTYPES)
    check.tensor("dt_rms_weight", dt_rms_weight, ("D",), dtypes=REAL_DTYPES, optional=True)
    eps = 0.0
    if any(w is not None for w in (b_rms_weight, c_rms_weight, dt_rms_weight)):
        eps = _positive(check, "b_c_dt_rms_eps", b_c_dt_rms_eps)

    cast = _autocast_dtype(xz.device)
    if cast is not None:  # as mamba_ssm: the projection weights in autocast's dtype
        x_proj_weight, delta_proj_weight = x_proj_weight.to(cast), delta_proj_weight.to(cast)
        out_proj_weight = out_proj_weight.to(cast)
        out_proj_bias = None if out_proj_bias is None else out_proj_bias.to(cast)
    else:
        _same_dtype(check, (("x_proj_weight", x_proj_weight), ("delta_proj_weight", delta_proj_weight),
                            ("out_proj_weight", out_proj_weight), ("out_proj_bias", out_proj_bias)), xz.dtype, "xz")

    conv_in, z = xz.chunk(2, dim=1)
    conv_weight = conv1d_weight[:, 0]

    def projected_delta(x_dbl, delta_proj_weight, dt_rms_weight):  # (B, L, D)
        delta = F.linear(x_dbl[..., :rank], delta_proj_weight)
        return delta if dt_rms_weight is None else gated_rmsnorm(delta, dt_rms_weight, eps=eps)

    # checkpoint_lvl=1: the conv output and delta are recomputed in the backward instead of kept
    recompute = checkpoint_lvl == 1 and needs_grad(xz, conv1d_weight, x_proj_weight, delta_proj_weight)
    with recomputed_activations(recompute, xz.device) as keep_out:
        x = keep_out(_conv_silu, conv_in, conv_weight, conv1d_bias)  # (B, D, L)
        x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # (B, L, E)
        delta = keep_out(projected_delta, x_dbl, delta_proj_weight, dt_rms_weight)
        if B is None:
            B = _projected_bc(x_dbl[..., rank:rank + d_state], B_proj_bias, b_rms_weight, eps, complex_A)
        elif b_rms_weight is not None:
            B = _normalised_given(B, b_rms_weight, eps)
        if C is None:
            C = _projected_bc(x_dbl[..., rows - d_state:], C_proj_bias, c_rms_weight, eps, complex_A)
        elif c_rms_weight is not None:
            C = _normalised_given(C, c_rms_weight, eps)
        y = selective_scan(x, delta.transpose(1, 2), A, B, C, D=D, z=z, delta_bias=delta_bias,
                           delta_softplus=delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


# --- mamba_ssm.ops.triton.ssd_combined ---------------------------------------------------------------------
def _check_dt_limit(check: ArgCheck, dt_limit) -> None:
    if not isinstance(dt_limit, (tuple, list)) or len(dt_limit) != 2:
        check.fail(f"dt_limit must be a pair (min, max), got {dt_limit!r}", TypeError)
    low, high = dt_limit
    check.finite("dt_limit[0]", low)
    if isinstance(high, bool) or not isinstance(high, (int, float)):
        check.fail(f"dt_limit[1] must be a real number, got {type(high).__name__}", TypeError)
    if math.isnan(high) or high < low:
        check.fail(f"dt_limit must have min <= max (max may be inf), got {tuple(dt_limit)}")


def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                                     initial_states=None, seq_idx=None, dt_limit=(0.0, float("inf")),
                                     return_final_states=False, activation="silu", rmsnorm_weight=None,
                                     rmsnorm_eps=1e-6, outproj_weight=None, outproj_bias=None, headdim=None,
                                     ngroups=1, norm_before_gate=True):
    """mamba_ssm's mamba_split_conv1d_scan_combined: the Mamba-2 mixer after in_proj, in one call.

        zxbcdt = [zx0 (2 d_nonssm) | z (dim) | xBC (dim + 2 G N) | dt (H)] along its last axis, dim = H P
        xBC = act(causal_conv1d(xBC, conv1d_weight, conv1d_bias, seq_idx)) = [x | B | C]
        y = ssd_chunk_scan(x, dt, A, B, C, D, z (unless rmsnorm_weight), dt_bias, softplus, dt_limit,
                           initial_states, seq_idx)
        y = RMSNorm(y, rmsnorm_weight, gate z, groups of dim / G, norm_before_gate)   when rmsnorm_weight
        out = [silu(zx0[:d_nonssm]) * zx0[d_nonssm:] | y] @ outproj_weight.T + outproj_bias   (when given)

    Args:
        zxbcdt: (B, L, 2 d_nonssm + 2 dim + 2 G N + H), d_nonssm >= 0.
        conv1d_weight: (dim + 2 G N, W); conv1d_bias: (dim + 2 G N,) or None.
        dt_bias: (H,). A: (H,). D: (H,) (headdim then required) or (H, P).
        chunk_size: chunk length >= 1 (does not change the result).
        initial_states: (B, H, P, N) or None. seq_idx: (B, L) int32 / int64 or None (negative = padding).
        dt_limit: (min, max) clamp of the step size. return_final_states: also return the (B, H, P, N) state.
        activation: None, "silu" or "swish", after the conv.
        rmsnorm_weight: (dim,) or None; rmsnorm_eps > 0.
        outproj_weight: (O, d_nonssm + dim) or None; outproj_bias: (O,) or None (needs outproj_weight).
        headdim: P, required when D is (H,). ngroups: G, dividing H. norm_before_gate: see gated_rmsnorm.
    Returns:
        out (B, L, O), or (B, L, d_nonssm + dim) without outproj_weight; (out, final_states) with
        return_final_states (final_states fp32, differentiable).
    Example:
        >>> import torch, ssm_kernels
        >>> H, P, N, W = 4, 8, 16, 4
        >>> zxbcdt = torch.randn(2, 24, 2 * H * P + 2 * N + H)
        >>> conv_w, dt_bias, A, D = torch.randn(H * P + 2 * N, W), torch.randn(H), -torch.rand(H), torch.randn(H)
        >>> out, final = ssm_kernels.mamba_split_conv1d_scan_combined(
        ...     zxbcdt, conv_w, None, dt_bias, A, D, 8, headdim=P, return_final_states=True)
        >>> out.shape, final.shape
        (torch.Size([2, 24, 32]), torch.Size([2, 4, 8, 16]))
    """
    check = ArgCheck("mamba_split_conv1d_scan_combined")
    check.tensor("zxbcdt", zxbcdt, ("B", "L", "F"), dtypes=REAL_DTYPES)
    check.tensor("D", D, dtypes=REAL_DTYPES)
    if D.dim() == 1:
        if headdim is None:
            check.fail("headdim is required when D has shape (nheads,)")
        headdim = check.integer("headdim", headdim, minimum=1)
    elif D.dim() == 2:
        if headdim is not None and headdim != D.shape[1]:
            check.fail(f"headdim = {headdim} disagrees with D's shape (nheads, headdim) = {tuple(D.shape)}")
        headdim = D.shape[1]
    else:
        check.fail(f"D must have shape (nheads,) or (nheads, headdim), got {tuple(D.shape)}")
    nheads = check.integer("D.shape[0] (nheads)", D.shape[0], minimum=1)
    ngroups = check.integer("ngroups", ngroups, minimum=1)
    if nheads % ngroups:
        check.fail(f"ngroups must divide nheads = {nheads}, got {ngroups}")
    dim = nheads * headdim
    check.tensor("conv1d_weight", conv1d_weight, ("C", "W"), dtypes=REAL_DTYPES)
    check.integer("conv1d_weight.shape[1] (the width W)", check.dims["W"], minimum=1)
    conv_dim = check.dims["C"]
    if conv_dim <= dim or (conv_dim - dim) % (2 * ngroups):
        check.fail(f"conv1d_weight must have shape (dim + 2 * ngroups * dstate, W) with dim = nheads * headdim = "
                   f"{dim}, ngroups = {ngroups}, dstate >= 1, got {tuple(conv1d_weight.shape)}")
    dstate = (conv_dim - dim) // (2 * ngroups)
    rest = check.dims["F"] - 2 * dim - 2 * ngroups * dstate - nheads
    if rest < 0 or rest % 2:
        check.fail(f"zxbcdt must have shape (B, L, 2 * d_nonssm + 2 * dim + 2 * ngroups * dstate + nheads) = "
                   f"(B, L, 2 * d_nonssm + {2 * dim + 2 * ngroups * dstate + nheads}), d_nonssm >= 0, "
                   f"got {tuple(zxbcdt.shape)}")
    d_nonssm = rest // 2
    check.tensor("conv1d_bias", conv1d_bias, ("C",), dtypes=REAL_DTYPES, optional=True)
    check.tensor("dt_bias", dt_bias, (nheads,), dtypes=REAL_DTYPES)
    check.tensor("A", A, (nheads,), dtypes=REAL_DTYPES)
    chunk_size = check.integer("chunk_size", chunk_size, minimum=1)
    check.tensor("initial_states", initial_states, ("B", nheads, headdim, dstate), dtypes=REAL_DTYPES,
                 optional=True)
    check.tensor("seq_idx", seq_idx, ("B", "L"), dtypes=INDEX_DTYPES, optional=True)
    _check_dt_limit(check, dt_limit)
    _flag(check, "return_final_states", return_final_states)
    check.choice("activation", activation, ACTIVATIONS)
    check.tensor("rmsnorm_weight", rmsnorm_weight, (dim,), dtypes=REAL_DTYPES, optional=True)
    if rmsnorm_weight is not None:
        rmsnorm_eps = _positive(check, "rmsnorm_eps", rmsnorm_eps)
    check.tensor("outproj_weight", outproj_weight, ("O", d_nonssm + dim), dtypes=REAL_DTYPES, optional=True)
    if outproj_bias is not None and outproj_weight is None:
        check.fail("outproj_bias needs outproj_weight (the output projection)")
    check.tensor("outproj_bias", outproj_bias, ("O",), dtypes=REAL_DTYPES, optional=True)
    _flag(check, "norm_before_gate", norm_before_gate)
    cast = _autocast_dtype(zxbcdt.device) if outproj_weight is not None else None
    if outproj_weight is not None and cast is None:
        _same_dtype(check, (("outproj_weight", outproj_weight), ("outproj_bias", outproj_bias)), zxbcdt.dtype,
                    "zxbcdt")

    def padded_conv(xBC, weight, bias):  # (B, conv_dim, L), padding tokens zero
        return _zero_padding(causal_conv1d(xBC, weight, bias, activation=activation, seq_idx=seq_idx), seq_idx)

    def mixed(y, z, zx0, rmsnorm_weight):  # the scan's output (B, L, dim) -> out_proj's input
        out = y
        if rmsnorm_weight is not None:
            out = gated_rmsnorm(out, rmsnorm_weight, z, eps=rmsnorm_eps, group_size=dim // ngroups,
                                norm_before_gate=norm_before_gate)
        if d_nonssm > 0:
            gate0, value0 = zx0.chunk(2, dim=-1)
            acc = compute_dtype(zx0.dtype)
            out = torch.cat([(F.silu(gate0.to(acc)) * value0.to(acc)).to(out.dtype), out], dim=-1)
        if cast is not None:  # as mamba_ssm: the projection in autocast's dtype
            out = out.to(cast)
        return out

    # As mamba_ssm's backward, on a GPU: the conv output, the SSD's boundary states and out_proj's input are
    # recomputed in the backward instead of kept
    recompute = _recomputes_on(zxbcdt.device) and needs_grad(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, initial_states,
                                              rmsnorm_weight, outproj_weight, outproj_bias)
    zx0, z, xBC, dt = torch.split(zxbcdt, [2 * d_nonssm, dim, conv_dim, nheads], dim=-1)
    with recomputed_activations(recompute, zxbcdt.device) as keep_out:
        xBC = keep_out(padded_conv, xBC.transpose(1, 2), conv1d_weight, conv1d_bias).transpose(1, 2)
        x, B, C = split(xBC, [dim, ngroups * dstate, ngroups * dstate])  # gradients passed on in one buffer
        x = x.unflatten(-1, (nheads, headdim))
        B, C = B.unflatten(-1, (ngroups, dstate)), C.unflatten(-1, (ngroups, dstate))
        gate = z.unflatten(-1, (nheads, headdim)) if rmsnorm_weight is None else None
        y, final_states = ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=D, z=gate, dt_bias=dt_bias,
                                         dt_softplus=True, dt_limit=tuple(dt_limit), initial_states=initial_states,
                                         seq_idx=seq_idx, return_final_states=True)
        if outproj_weight is None:
            return_value = mixed(y.flatten(-2), z, zx0, rmsnorm_weight)  # (B, L, d_nonssm + dim)
        elif recompute and rmsnorm_weight is not None and d_nonssm == 0:
            # the norm and out_proj in one op that keeps no norm output (its backward writes it again)
            return_value = gated_rmsnorm(y.flatten(-2), rmsnorm_weight, z, eps=rmsnorm_eps,
                                         group_size=dim // ngroups, norm_before_gate=norm_before_gate,
                                         linear_weight=outproj_weight, linear_bias=outproj_bias)
        else:
            out = keep_out(mixed, y.flatten(-2), z, zx0, rmsnorm_weight)
            if cast is not None:
                outproj_weight = outproj_weight.to(cast)
                outproj_bias = None if outproj_bias is None else outproj_bias.to(cast)
            return_value = F.linear(out, outproj_weight, outproj_bias)
    return (return_value, final_states) if return_final_states else return_value


# --- mamba_ssm.ops.triton.layernorm_gated ------------------------------------------------------------------
def rmsnorm_fn(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    """mamba_ssm's gated RMSNorm with a bias (layernorm_gated.rmsnorm_fn), on gated_rmsnorm.

        norm_before_gate=True:  y = (rmsnorm(x) * weight + bias) * silu(z)
        norm_before_gate=False: y = rmsnorm(x * silu(z)) * weight + bias
    rmsnorm over groups of group_size channels (all D when None); without z, y = rmsnorm(x) * weight + bias.

    Args:
        x: (..., D) fp32 / fp16 / bf16 (fp64). z: x's shape, or None.
        weight: (D,). bias: (D,) or None (a required argument, as in mamba_ssm).
        eps: > 0. group_size: a divisor of D, or None. norm_before_gate: see above.
    Returns:
        y: (..., D) in x's dtype; differentiable in x, weight, bias and z.
    Example:
        >>> import torch, ssm_kernels
        >>> x, z = torch.randn(4, 64), torch.randn(4, 64)
        >>> ssm_kernels.rmsnorm_fn(x, torch.ones(64), torch.zeros(64), z=z, group_size=16).shape
        torch.Size([4, 64])
    """
    check = ArgCheck("rmsnorm_fn")
    check_norm_inputs(check, x, weight, z, eps, group_size, norm_before_gate)
    check.tensor("bias", bias, ("D",), dtypes=REAL_DTYPES, optional=True)

    y = gated_rmsnorm(x, weight, z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate)
    if bias is None:
        return y
    acc = compute_dtype(x.dtype)
    shift = bias.to(acc)
    if z is not None and norm_before_gate:  # (n w + b) silu(z) = gated_rmsnorm(x, w, z) + b silu(z)
        shift = shift * F.silu(z.to(acc))
    return (y.to(acc) + shift).to(x.dtype)


# --- causal_conv1d -----------------------------------------------------------------------------------------
def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """causal-conv1d's causal_conv1d_fn, on causal_conv1d.

        y[b, d, t] = act(bias[d] + sum_k weight[d, k] x[b, d, t - W + 1 + k]),
    x at negative positions from initial_states (zeros without), terms across a change of seq_idx dropped,
    and y = 0 where seq_idx < 0 (padding tokens).

    Args:
        x: (B, D, L) fp32 / fp16 / bf16 (fp64); any layout.
        weight: (D, W); bias: (D,) or None.
        seq_idx: (B, L) int32 / int64 or None; not with return_final_states.
        initial_states: (B, D, W - 1), x's dtype, or None.
        return_final_states: also return the (B, D, W - 1) last inputs.
        final_states_out: (B, D, W - 1) tensor the final states are written into (and returned), or None.
        activation: None, "silu" or "swish".
    Returns:
        y (B, D, L) in x's dtype, or (y, final_states) with return_final_states; differentiable in x, weight,
        bias and initial_states, also through final_states.
    Example:
        >>> import torch, ssm_kernels
        >>> x, weight = torch.randn(2, 16, 64), torch.randn(16, 4)
        >>> y, final = ssm_kernels.causal_conv1d_fn(x, weight, activation="silu", return_final_states=True)
        >>> y.shape, final.shape
        (torch.Size([2, 16, 64]), torch.Size([2, 16, 3]))
    """
    check = ArgCheck("causal_conv1d_fn")
    width = check_conv_inputs(check, x, weight, bias, seq_idx, initial_states)
    _flag(check, "return_final_states", return_final_states)
    if seq_idx is not None and return_final_states:
        check.fail("return_final_states must be False with seq_idx (causal-conv1d returns no final states then)")
    if return_final_states:
        check.tensor("final_states_out", final_states_out, ("B", "D", width - 1), dtypes=(x.dtype,), optional=True)
    check.choice("activation", activation, ACTIVATIONS)

    result = causal_conv1d(x, weight, bias, activation=activation, seq_idx=seq_idx, initial_states=initial_states,
                           return_final_states=return_final_states)
    if not return_final_states:
        return _zero_padding(result, seq_idx)
    y, final_states = result
    if final_states_out is not None:
        final_states = final_states_out.copy_(final_states)
    return y, final_states


_UPDATE_PASSED = PassedChecks()  # causal_conv1d_update runs once per decoded token: see PassedChecks


def _validate_update(x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices):
    check = ArgCheck("compat.causal_conv1d_update")
    if isinstance(x, torch.Tensor) and x.dim() not in (2, 3):
        check.fail(f"x must have shape (B, D) or (B, D, T), got {tuple(x.shape)}")
    single = isinstance(x, torch.Tensor) and x.dim() == 2
    check.tensor("x", x, ("B", "D") if single else ("B", "D", "T"), dtypes=REAL_DTYPES)
    state_rows = "B" if conv_state_indices is None else "Bc"
    check.tensor("conv_state", conv_state, (state_rows, "D", "S"), dtypes=(x.dtype,))
    check.tensor("weight", weight, ("D", "W"), dtypes=REAL_DTYPES)
    width = check.integer("weight.shape[1] (the width W)", check.dims["W"], minimum=1)
    check.integer("conv_state.shape[2] (the state length S)", check.dims["S"],
                  minimum=max(width - 1, 1 if cache_seqlens is not None else 0))
    check.tensor("bias", bias, ("D",), dtypes=REAL_DTYPES, optional=True)
    check.choice("activation", activation, ACTIVATIONS)
    check.tensor("cache_seqlens", cache_seqlens, ("B",), dtypes=INDEX_DTYPES, optional=True)
    check.tensor("conv_state_indices", conv_state_indices, ("B",), dtypes=INDEX_DTYPES, optional=True)


def _check_state_rows(conv_state_indices: torch.Tensor, rows: int) -> None:
    """Values of conv_state_indices: below the cache's row count, the non-negative ones distinct."""
    if torch.compiler.is_compiling():
        return
    values = [v for v in conv_state_indices.tolist() if v >= 0]
    if any(v >= rows for v in values):
        raise ValueError(f"compat.causal_conv1d_update: conv_state_indices must be < conv_state.shape[0] = {rows} "
                         f"(negative = padding), got {max(values)}")
    if len(set(values)) != len(values):
        raise ValueError("compat.causal_conv1d_update: conv_state_indices must not repeat a cache row "
                         "(each row is updated by one batch entry)")


def _circular_update(x, state, weight, bias, activation, cache_seqlens):
    """x (B, D, T) against state (B, D, S) used as a ring buffer whose next write position is cache_seqlens % S:
    the window before x is the W - 1 entries preceding that position; x is then written from it on."""
    batch, dim, steps = x.shape
    state_len, width = state.shape[-1], weight.shape[1]
    start = cache_seqlens.to(torch.long)[:, None]
    offsets = torch.arange(1 - width, 0, device=x.device)
    read = torch.remainder(start + offsets, state_len)  # (B, W - 1), oldest first
    window = state.gather(2, read[:, None, :].expand(batch, dim, width - 1))
    y = _causal_conv1d_update_op(x, window, weight, bias, activation)  # window is scratch
    kept = min(steps, state_len)  # with T > S only the last S tokens stay
    if kept:
        write = torch.remainder(start + torch.arange(steps - kept, steps, device=x.device), state_len)
        state.scatter_(2, write[:, None, :].expand(batch, dim, kept), x[..., steps - kept:])
    return y


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None, backend=None):
    """mamba_ssm's selective_state_update (its parameters, in its order): one decoding step, `state` updated
    in place; shapes, dtypes and the return value as ssm_kernels.selective_state_update, which computes it
    (backend: ours, trailing)."""
    return _selective_state_update_op(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                      state_batch_indices=state_batch_indices, backend=backend)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """causal-conv1d's causal_conv1d_update: new tokens against a conv state cache, updated in place.

    Without cache_seqlens, conv_state holds the last S inputs, oldest first, and is shifted left by T with x
    appended (ssm_kernels.causal_conv1d_update, fused). With cache_seqlens it is a circular buffer: the window
    before x is the W - 1 entries before position cache_seqlens % S, and x is written from that position on
    (the caller advances cache_seqlens). With conv_state_indices, batch entry b uses cache row
    conv_state_indices[b]; a negative index marks padding (output 0, no state touched). Those two are
    computed in torch around the fused op (not fused).

    Args:
        x: (B, D) or (B, D, T) fp32 / fp16 / bf16 (fp64).
        conv_state: (B, D, S), or (Bc, D, S) with conv_state_indices; S >= W - 1 (>= 1 with cache_seqlens);
            x's dtype; any strides.
        weight: (D, W); bias: (D,) or None. activation: None, "silu" or "swish".
        cache_seqlens: (B,) int32 / int64 or None: write positions, taken modulo S.
        conv_state_indices: (B,) int32 / int64 or None: distinct cache rows in [0, Bc), or negative (padding).
    Returns:
        y: x's shape and dtype (an "update" function: not differentiable through conv_state).
    Example:
        >>> import torch
        >>> from ssm_kernels.compat import causal_conv1d_update
        >>> conv_state, weight = torch.zeros(4, 16, 8), torch.randn(16, 4)
        >>> x, rows = torch.randn(2, 16), torch.tensor([3, -1], dtype=torch.int32)
        >>> cache_seqlens = torch.tensor([5, 0], dtype=torch.int32)
        >>> causal_conv1d_update(x, conv_state, weight, activation="silu", cache_seqlens=cache_seqlens,
        ...                      conv_state_indices=rows).shape
        torch.Size([2, 16])
    """
    key = _UPDATE_PASSED.key((x, conv_state, weight, bias, cache_seqlens, conv_state_indices), activation)
    if not _UPDATE_PASSED.known(key):
        _validate_update(x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices)
        _UPDATE_PASSED.remember(key)
    if cache_seqlens is None and conv_state_indices is None:
        return _causal_conv1d_update_op(x, conv_state, weight, bias, activation)
    single = x.dim() == 2
    x3 = x.unsqueeze(-1) if single else x
    if conv_state_indices is None:
        y = _circular_update(x3, conv_state, weight, bias, activation, cache_seqlens)
    else:
        _check_state_rows(conv_state_indices, conv_state.shape[0])
        valid = conv_state_indices >= 0
        rows = conv_state_indices[valid].to(torch.long)
        y = x3.new_zeros(x3.shape)
        if rows.numel():
            state = conv_state.index_select(0, rows)  # (B', D, S), updated below and written back
            if cache_seqlens is None:
                y_rows = _causal_conv1d_update_op(x3[valid], state, weight, bias, activation)
            else:
                y_rows = _circular_update(x3[valid], state, weight, bias, activation, cache_seqlens[valid])
            conv_state.index_copy_(0, rows, state)
            y[valid] = y_rows
    return y.squeeze(-1) if single else y


__all__ = [
    "selective_scan_fn", "mamba_inner_fn", "selective_state_update", "mamba_chunk_scan_combined",
    "mamba_split_conv1d_scan_combined", "rmsnorm_fn", "causal_conv1d_fn", "causal_conv1d_update",
]
