"""The SSD chunked matrix form (Mamba-2) of the scan and its hand-written backward; tensors in, tensors out.

Inputs are already in the compute dtype: x (Bz, L, H, P); dt (Bz, L, H) after bias / softplus / clamp;
A (H,); B, C (Bz, L, G, N); initial_states (Bz, H, P, N) or None; seg (Bz, L) int64 segment ids that are
equal exactly when no sequence boundary lies between two positions (None: one sequence per row).

Per batch row, head and chunk of T positions (i, j are positions inside the chunk):
    a_j = dt_j A                  u_j = dt_j x_j (P,)
    cs_i = a_0 + ... + a_i (in fp64)     ss[i, j] = cs_i - cs_j = a_{j+1} + ... + a_i   for i >= j
    M[i, j] = exp(ss[i, j]) [j <= i] [seg_i == seg_j]       decay from step j to step i
    q_i = exp(a_0 + ... + a_i) [seg_i == segment of hp_c]    decay of the entering state hp_c to step i
    g_c = exp(a_0 + ... + a_{T-1}) [no boundary in chunk c]
    y_i = sum_j M[i, j] (C_i . B_j) u_j + q_i hp_c C_i
    hp_{c+1} = g_c hp_c + sum_j M[T-1, j] u_j B_j^T       (hp_0: initial state; hp_nc: final state)
The state at the last step e = cT + i of a packed sequence (its varlen state) is
    q_i hp_c + sum_j M[i, j] u_j B_j^T.
Nothing of size (Bz, L, H, P, N) is formed: the largest intermediates are (Bz, H, L/T, T, T) and the
chunk-boundary states (Bz, L/T + 1, H, P, N).

Internal layout: heads as (Bz, G, R, nc, T, ...) with H = G * R, groups as (Bz, G, 1, nc, T, ...), so that
every per-head product with B or C is a broadcasting batched matmul.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._utils import cdiv

# Varlen states gather one chunk of x per sequence; sequences are processed in blocks of about this
# many elements of gathered x so that many short sequences do not allocate (S, T, H, P) at once.
_VARLEN_BLOCK_ELEMENTS = 1 << 22
_MIN_LOG_DECAY = -60.0


@dataclass
class _Chunked:
    x: Tensor  # (Bz, G, R, nc, T, P)
    dt: Tensor  # (Bz, G, R, nc, T)
    B: Tensor  # (Bz, G, 1, nc, T, N)
    C: Tensor  # (Bz, G, 1, nc, T, N)
    A: Tensor  # (1, G, R, 1, 1)
    M: Tensor  # (Bz, G, R, nc, T, T)
    q: Tensor  # (Bz, G, R, nc, T)
    g: Tensor  # (Bz, G, R, nc)
    u: Tensor  # (Bz, G, R, nc, T, P)
    length: int
    T: int


def _pad_length(t: Tensor, padded: int) -> Tensor:
    """Zero-pad dim 1 (L) of t to `padded`."""
    extra = padded - t.shape[1]
    if extra == 0:
        return t
    return torch.cat([t, t.new_zeros((t.shape[0], extra) + tuple(t.shape[2:]))], dim=1)


def _heads(t: Tensor, groups: int, T: int) -> Tensor:
    """(Bz, Lp, H, *rest) -> (Bz, G, R, nc, T, *rest)."""
    bz, lp, h = t.shape[:3]
    rest = tuple(t.shape[3:])
    t = t.reshape((bz, lp // T, T, groups, h // groups) + rest)
    return t.permute((0, 3, 4, 1, 2) + tuple(range(5, 5 + len(rest)))).contiguous()


def _unheads(t: Tensor, length: int) -> Tensor:
    """(Bz, G, R, nc, T, *rest) -> (Bz, L, H, *rest)."""
    bz, g, r, nc, T = t.shape[:5]
    rest = tuple(t.shape[5:])
    t = t.permute((0, 3, 4, 1, 2) + tuple(range(5, 5 + len(rest))))
    return t.reshape((bz, nc * T, g * r) + rest)[:, :length]


def _states_to_heads(s: Tensor, groups: int) -> Tensor:
    """(Bz, K, H, P, N) -> (Bz, G, R, K, P, N)."""
    bz, k, h, p, n = s.shape
    return s.reshape(bz, k, groups, h // groups, p, n).permute(0, 2, 3, 1, 4, 5)


def _states_from_heads(s: Tensor) -> Tensor:
    """(Bz, G, R, K, P, N) -> (Bz, K, H, P, N)."""
    bz, g, r, k, p, n = s.shape
    return s.permute(0, 3, 1, 2, 4, 5).reshape(bz, k, g * r, p, n)


def _segment_masks(seg: Optional[Tensor], bz: int, nc: int, T: int, device) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Masks of the decays: same (Bz|1, 1, 1, nc|1, T, T) for M, q_mask (Bz, 1, 1, nc, T), g_mask (Bz, 1, 1, nc)."""
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    if seg is None:
        return causal, None, None
    # padded steps continue the last sequence, so the final state passes through them unchanged
    seg = torch.cat([seg, seg[:, -1:].expand(-1, nc * T - seg.shape[1])], dim=1).reshape(bz, nc, T)
    same = (seg[..., :, None] == seg[..., None, :]) & causal
    entering = torch.cat([seg[:, :1, 0], seg[:, :-1, -1]], dim=1)  # segment of the state entering chunk c
    q_mask = seg == entering[..., None]
    g_mask = seg[..., -1] == entering
    return same[:, None, None], q_mask[:, None, None], g_mask[:, None, None]


def _prepare(x, dt, A, B, C, seg, T) -> _Chunked:
    bz, length, h, _ = x.shape
    groups = B.shape[2]
    nc = cdiv(length, T)
    padded = nc * T
    xc = _heads(_pad_length(x, padded), groups, T)
    dtc = _heads(_pad_length(dt, padded), groups, T)
    Bc = _heads(_pad_length(B, padded), groups, T)  # groups as heads with R = 1
    Cc = _heads(_pad_length(C, padded), groups, T)
    A = A.reshape(1, groups, h // groups, 1, 1)
    same, q_mask, g_mask = _segment_masks(seg, bz, nc, T, x.device)

    a = dtc * A
    # ss[i, j] = cs_i - cs_j from a cumsum in fp64: in the working dtype the difference of two large
    # cumsums would lose the digits of a small ss, where exp(ss) matters most
    cs_wide = a.to(torch.float64).cumsum(-1)
    ss = cs_wide[..., :, None] - cs_wide[..., None, :]
    # decays below e^-60 (far under any dtype's resolution) are set to exactly 0: it keeps exp out of its
    # slow subnormal path, which costs several times the whole rest of the forward
    ss = ss.masked_fill_(~same | (ss < _MIN_LOG_DECAY), -math.inf)
    M = ss.to(a.dtype).exp_()
    cs = cs_wide.to(a.dtype)
    q = cs.exp()
    g = cs[..., -1].exp()
    if q_mask is not None:
        q = q * q_mask
        g = g * g_mask
    u = xc * dtc.unsqueeze(-1)
    return _Chunked(xc, dtc, Bc, Cc, A, M, q, g, u, length, T)


def _varlen_blocks(cu_seqlens: Tensor, T: int, per_sequence: int):
    """Yield (sequence slice, chunk index, row index) of the last step of each sequence, in blocks."""
    ends = cu_seqlens[1:].to(torch.int64) - 1
    size = max(1, _VARLEN_BLOCK_ELEMENTS // max(1, per_sequence))
    for start in range(0, ends.shape[0], size):
        e = ends[start:start + size]
        yield slice(start, start + e.shape[0]), torch.div(e, T, rounding_mode="floor"), e % T


def forward(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_states: Optional[Tensor],
            seg: Optional[Tensor], cu_seqlens: Optional[Tensor], T: int) -> Tuple[Tensor, Tensor, Tensor]:
    """y (Bz, L, H, P) without D and z; boundary states (Bz, nc + 1, H, P, N); varlen states (S, H, P, N)."""
    bz, length, h, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    ch = _prepare(x, dt, A, B, C, seg, T)
    W = ch.M * (ch.C @ ch.B.transpose(-1, -2))
    y = W @ ch.u
    chunk_states = (ch.u * ch.M[..., -1, :, None]).transpose(-1, -2) @ ch.B  # (Bz, G, R, nc, P, N)

    hp = x.new_zeros(bz, groups, h // groups, p, n) if initial_states is None else \
        _states_to_heads(initial_states[:, None], groups)[:, :, :, 0]
    boundary = [hp]
    for c in range(chunk_states.shape[3]):
        hp = ch.g[..., c, None, None] * hp + chunk_states[:, :, :, c]
        boundary.append(hp)
    states = torch.stack(boundary, dim=3)  # (Bz, G, R, nc + 1, P, N)
    y = y + (ch.C @ states[:, :, :, :-1].transpose(-1, -2)) * ch.q[..., None]

    varlen = x.new_zeros(0 if cu_seqlens is None else cu_seqlens.shape[0] - 1, h, p, n)
    if cu_seqlens is not None:
        for rows, c, i in _varlen_blocks(cu_seqlens, T, T * h * p):
            w = ch.M[0][:, :, c, i]  # (G, R, s, T)
            v = (ch.u[0][:, :, c] * w[..., None]).transpose(-1, -2) @ ch.B[0][:, :, c]
            v = v + ch.q[0][:, :, c, i][..., None, None] * states[0][:, :, c]
            varlen[rows] = v.permute(2, 0, 1, 3, 4).reshape(-1, h, p, n)
    return _unheads(y, length), _states_from_heads(states).clone(), varlen


def backward(dy: Optional[Tensor], dstates: Optional[Tensor], dvarlen: Optional[Tensor], x: Tensor, dt: Tensor,
             A: Tensor, B: Tensor, C: Tensor, initial_states: Optional[Tensor], seg: Optional[Tensor],
             cu_seqlens: Optional[Tensor], states: Tensor, T: int) -> Tuple[Tensor, ...]:
    """Gradients (dx, ddt, dA, dB, dC, dinitial_states) of forward's outputs, recomputing the chunk products.

    dy: (Bz, L, H, P); dstates: (Bz, nc + 1, H, P, N) on the boundary states; dvarlen: (S, H, P, N); any
    may be None (zero). `states` are forward's boundary states.
    """
    bz, length, h, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    ch = _prepare(x, dt, A, B, C, seg, T)
    nc = ch.M.shape[3]
    hp = _states_to_heads(states, groups)  # (Bz, G, R, nc + 1, P, N)
    entering = hp[:, :, :, :-1]
    Gm = ch.C @ ch.B.transpose(-1, -2)  # (Bz, G, 1, nc, T, T)
    dyc = _heads(_pad_length(dy, nc * T), groups, T) if dy is not None else torch.zeros_like(ch.u)

    # y_i = sum_j M[i, j] Gm[i, j] u_j + q_i hp_c C_i
    W = ch.M * Gm
    dW = dyc @ ch.u.transpose(-1, -2)
    du = W.transpose(-1, -2) @ dyc
    dss = dW * W  # gradient on ss, through M = exp(ss)
    dGm = (dW * ch.M).sum(2, keepdim=True)
    dC = dGm @ ch.B + ((dyc * ch.q[..., None]) @ entering).sum(2, keepdim=True)
    dB = dGm.transpose(-1, -2) @ ch.C
    dq = (dyc * (ch.C @ entering.transpose(-1, -2))).sum(-1)
    dH = (dyc * ch.q[..., None]).transpose(-1, -2) @ ch.C  # gradient on hp_c from y, (Bz, G, R, nc, P, N)
    dH = torch.cat([dH, dH.new_zeros(dH.shape[:3] + (1,) + dH.shape[4:])], dim=3)
    if dstates is not None:
        dH = dH + _states_to_heads(dstates, groups)

    if dvarlen is not None and cu_seqlens is not None:
        for rows, c, i in _varlen_blocks(cu_seqlens, T, T * h * p):
            dv = dvarlen[rows].reshape(-1, groups, h // groups, p, n).permute(1, 2, 0, 3, 4)  # (G, R, s, P, N)
            w = ch.M[0][:, :, c, i]
            uu = ch.u[0][:, :, c]
            K = ch.B[0][:, :, c] @ dv.transpose(-1, -2)  # (G, R, s, T, P)
            dH[0].index_add_(2, c, dv * ch.q[0][:, :, c, i][..., None, None])
            dq[0][:, :, c, i] += (dv * hp[0][:, :, c]).sum((-1, -2))  # one sequence ends per step: no clash
            du[0].index_add_(2, c, K * w[..., None])
            dB[0].index_add_(2, c, ((uu @ dv) * w[..., None]).sum(1, keepdim=True))
            dss[0][:, :, c, i] += (uu * K).sum(-1) * w

    # hp_{c+1} = g_c hp_c + S_c, S_c = sum_j M[T-1, j] u_j B_j^T, in reverse
    for c in range(nc - 1, -1, -1):
        dH[:, :, :, c] += ch.g[..., c, None, None] * dH[:, :, :, c + 1]
    dS = dH[:, :, :, 1:]
    dg = (dS * entering).sum((-1, -2))
    K = ch.B @ dS.transpose(-1, -2)  # (Bz, G, R, nc, T, P)
    r = ch.M[..., -1, :, None]
    du = du + K * r
    dB = dB + ((ch.u @ dS) * r).sum(2, keepdim=True)
    dss[..., -1, :] += (ch.u * K).sum(-1) * ch.M[..., -1, :]

    # back to the log-decays a through ss[i, j] = cs_i - cs_j, q = exp(cs) [..] and g = exp(cs_{T-1}) [..]
    dss.diagonal(dim1=-2, dim2=-1).zero_()  # ss[i, i] = 0 whatever a is; kept, it would only add rounding
    # da_k = sum of dss[i, j] over i >= k > j, as the difference of larger sums: accumulated in fp64
    wide = torch.float64
    dcs = dss.sum(-1, dtype=wide) - dss.sum(-2, dtype=wide) + (dq * ch.q).to(wide)
    dcs[..., -1] += (dg * ch.g).to(wide)
    da = dcs.flip(-1).cumsum(-1).flip(-1).to(dss.dtype)

    ddt = da * ch.A + (du * ch.x).sum(-1)
    dA = (da * ch.dt).sum((0, 3, 4)).reshape(h)
    dx = du * ch.dt[..., None]
    dinit = _states_from_heads(dH[:, :, :, :1])[:, 0]
    return (_unheads(dx, length), _unheads(ddt, length), dA, _unheads(dB, length),
            _unheads(dC, length), dinit.clone())
