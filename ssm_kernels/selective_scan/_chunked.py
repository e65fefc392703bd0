"""Chunked selective scan: the engine of the torch backend (pytorch.py), with a backward that recomputes per
chunk.

Inputs are already in the compute dtype and layout (see _common): u, dt (Bt, D, L) real with dt = Δ;
A (D, N) real or complex; B, C grouped (Bb, G, N, Lb); initial_state (Bt, D, N), or (S, D, N) with
cu_seqlens (S + 1,) and Bt == 1. Outputs y = C . h (2 Re for complex A) (Bt, D, L) and the final state.

Inside a chunk of T positions, with S_t = sum_{r <= t} Δ_r A (from the chunk start) and any shift m:
    h_t = exp(S_t - m) * (sum_{s <= t} exp(m - S_s) Δ_s u_s B_s  +  exp(m) h_start)
which is exact in exact arithmetic and takes two cumsums and a few elementwise passes over a
(Bt, D, T, N) tile instead of T sequential steps. The exps stay finite because chunks are cut so that
the decay |Σ Δ A| inside a chunk (after its first step) never exceeds DECAY_BUDGET and m sits in the
middle of the chunk's range of S: every exponent is bounded by the budget. A single huge step just starts
a chunk of its own (its decay only multiplies the carried state, where exp(S_t) may underflow to 0 as the
sequential recurrence's product does).

No (Bt, D, L, N) tensor is ever built: the forward keeps the state at every CHUNK-th position
("checkpoints", (Bt, D, ceil(L / CHUNK), N)); the backward walks the chunks in reverse, recomputes each
chunk's states from its checkpoint and carries the adjoint of the state across chunks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor

from .._utils import new_output
from ._common import sequence_bounds

# most positions per chunk, and the spacing of the checkpointed states. Small: Mamba's decays (|Δ A| ~ 2 per
# step at Δ = 0.1, N = 16) cut chunks at ~17 steps anyway, and every extra budget cut inside a checkpoint
# segment costs the backward a recomputation of that sub-chunk's states; the checkpoints themselves are
# only L / CHUNK states (1/16 of the (B, D, L, N) tensor pscan materialises several times).
CHUNK = 16
# most |Σ Δ A| inside a chunk. Overflow would allow ~170; the bound is set by precision: fp32 rounds the
# exponent S - m (up to half the budget) to ~eps * |S - m|, which becomes relative error in every decay.
DECAY_BUDGET = {False: 32.0, True: 16.0}  # real A, complex A (whose phase also counts)


@dataclass(frozen=True)
class Chunk:
    start: int
    end: int
    first_of: int  # sequence starting at `start` (the state restarts from its initial state), or -1
    last_of: int  # sequence ending at `end` (its final state is the chunk's last state), or -1


def plan_chunks(dt: Tensor, A: Tensor, bounds: List[int]) -> List[Chunk]:
    """Cut [0, L) into chunks: at multiples of CHUNK, at sequence starts, and where the worst decay of any
    (batch, channel, state) inside the chunk would pass DECAY_BUDGET."""
    length = dt.shape[-1]
    if length == 0:
        return []
    worst = (dt.abs().amax(0) * A.abs().amax(1)[:, None]).amax(0).tolist()  # (L,)
    starts = {bounds[s]: s for s in range(len(bounds) - 1) if bounds[s + 1] > bounds[s]}
    ends = {bounds[s + 1]: s for s in range(len(bounds) - 1) if bounds[s + 1] > bounds[s]}
    budget = DECAY_BUDGET[A.is_complex()]
    chunks, start, decay = [], 0, 0.0
    for t in range(1, length + 1):
        decay += worst[t] if t < length else 0.0
        if t == length or t % CHUNK == 0 or t in starts or decay > budget:
            chunks.append(Chunk(start, t, starts.get(start, -1), ends.get(t, -1)))
            start, decay = t, 0.0
    return chunks


def _conj(x: Tensor) -> Tensor:
    return x.conj() if x.is_complex() else x


def _real(x: Tensor) -> Tensor:
    return x.real if x.is_complex() else x


def _cumsum0_(x: Tensor) -> Tensor:
    """In-place cumulative sum over the leading (time) axis; row by row beats torch.cumsum on the CPU here."""
    for t in range(1, x.shape[0]):
        x[t].add_(x[t - 1])
    return x


def _reverse_cumsum0_(x: Tensor) -> Tensor:
    for t in range(x.shape[0] - 2, -1, -1):
        x[t].add_(x[t + 1])
    return x


class _Inputs:
    """The scan inputs in time-major layout, cut into chunks, with reusable (T, Bt, D, N) work buffers.

    u, dt: (L, Bt, D); B, C: (Lb, Bb, G, N); a tile of B or C is its rows of one chunk, (T or 1, Bb, G, N),
    where channel d of the (Bt, D) rows reads group d // (D / G).
    """

    def __init__(self, u, dt, A, B, C, initial_state, cu_seqlens):
        self.batch, self.dim, self.length = u.shape
        self.dstate = A.shape[1]
        self.A = A
        self.u, self.dt = u.permute(2, 0, 1).contiguous(), dt.permute(2, 0, 1).contiguous()
        self.dtu = self.dt * self.u
        self.B, self.C = B.permute(3, 0, 1, 2).contiguous(), C.permute(3, 0, 1, 2).contiguous()
        self.init = initial_state
        self.varlen = cu_seqlens is not None
        self.bounds = sequence_bounds(cu_seqlens, self.length)
        self.chunks = plan_chunks(dt, A, self.bounds)
        self._buffers: dict = {}

    @property
    def num_sequences(self) -> int:
        return len(self.bounds) - 1

    def start_state(self, s: int) -> Optional[Tensor]:
        """(Bt, D, N) state sequence s starts from; None means zeros."""
        if self.init is None:
            return None
        return self.init[s:s + 1] if self.varlen else self.init

    def zeros_state(self) -> Tensor:
        return torch.zeros(self.batch, self.dim, self.dstate, dtype=self.A.dtype, device=self.A.device)

    def buffer(self, name: str, c: Chunk) -> Tensor:
        """A (T, Bt, D, N) work buffer for chunk c (a view of one CHUNK-long allocation per name)."""
        if name not in self._buffers:
            rows = min(CHUNK, self.length)
            self._buffers[name] = torch.empty(rows, self.batch, self.dim, self.dstate, dtype=self.A.dtype,
                                              device=self.A.device)
        return self._buffers[name][:c.end - c.start]

    @staticmethod
    def tile(X: Tensor, c: Chunk) -> Tensor:
        return X[c.start:c.end] if X.shape[0] > 1 else X

    def _grouped(self, t: Tensor, groups: int) -> Tensor:
        """(T, Bt, D, ...) -> (T, Bt, G, D / G, ...)"""
        return t.unflatten(2, (groups, self.dim // groups))

    def spread(self, w: Tensor, X: Tensor, out: Tensor) -> Tensor:
        """out[t, b, d, n] = w[t, b, d] * X[t, b, group(d), n]: (T, Bt, D, N)."""
        g = X.shape[2]
        torch.mul(self._grouped(w, g)[..., None], X[:, :, :, None], out=self._grouped(out, g))
        return out

    def contract_state(self, M: Tensor, X: Tensor, work: Tensor) -> Tensor:
        """sum_n M[t, b, d, n] X[t, b, group(d), n]: (T, Bt, D). Overwrites `work`."""
        g = X.shape[2]
        product = torch.mul(self._grouped(M, g), X[:, :, :, None], out=self._grouped(work, g))
        return product.sum(-1).flatten(2)

    def contract_channels(self, w: Tensor, M: Tensor, X: Tensor) -> Tensor:
        """The gradient of a tile X from sum_{b, d} w[t, b, d] M[t, b, d, n] (the adjoint of spread)."""
        g = X.shape[2]
        wg, Mg = self._grouped(w.to(M.dtype), g), self._grouped(M, g)
        if X.shape[0] == M.shape[0] and X.shape[1] == M.shape[1]:
            return torch.matmul(wg.unsqueeze(-2), Mg).squeeze(-2)  # batched (1 x D/G) @ (D/G x N)
        part = (wg[..., None] * Mg).sum(3)
        if X.shape[1] == 1:
            part = part.sum(1, keepdim=True)
        if X.shape[0] == 1:
            part = part.sum(0, keepdim=True)
        return part

    def chunk_states(self, c: Chunk, h0: Optional[Tensor]):
        """States h (T, Bt, D, N) of chunk c from the state h0 (Bt, D, N) before it (None: zeros), with
        x_t = Δ_t u_t B_t, the factor e = exp(S - m) and m, all reused by the backward."""
        e = torch.mul(self.dt[c.start:c.end, :, :, None], self.A, out=self.buffer("e", c))
        S = _cumsum0_(e)
        m = (S[0] + S[-1]) * 0.5
        e = S.sub_(m).exp_()
        x = self.spread(self.dtu[c.start:c.end], self.tile(self.B, c), self.buffer("x", c))
        h = _cumsum0_(torch.reciprocal(e, out=self.buffer("h", c)).mul_(x))
        if h0 is not None:
            h.add_(torch.exp(m) * h0)
        return h.mul_(e), x, e, m

    def chunk_output(self, h: Tensor, c: Chunk, work: Tensor) -> Tensor:
        """y (T, Bt, D) = C . h (2 Re for complex states)."""
        y = self.contract_state(h, self.tile(self.C, c), work)
        return 2 * y.real if y.is_complex() else y


def _forward(inp: _Inputs):
    y = new_output((inp.length, inp.batch, inp.dim), inp.u.dtype, inp.u.device)
    checkpoints = torch.zeros(inp.batch, inp.dim, math.ceil(inp.length / CHUNK), inp.dstate,
                              dtype=inp.A.dtype, device=inp.A.device)
    finals = [inp.start_state(s) for s in range(inp.num_sequences)]  # empty sequences keep theirs
    h = None
    for c in inp.chunks:
        if c.first_of >= 0:
            h = inp.start_state(c.first_of)
        if c.start % CHUNK == 0 and h is not None:
            checkpoints[:, :, c.start // CHUNK] = h
        states, x, _, _ = inp.chunk_states(c, h)
        y[c.start:c.end] = inp.chunk_output(states, c, x)
        h = states[-1].clone()
        if c.last_of >= 0:
            finals[c.last_of] = h
    final = torch.cat([inp.zeros_state() if f is None else f for f in finals], dim=0)
    return y.permute(1, 2, 0).contiguous(), final, checkpoints


def _chunk_backward(inp: _Inputs, c: Chunk, h0: Optional[Tensor], gy: Tensor, g_end: Optional[Tensor],
                    grads: dict) -> Tensor:
    """Accumulate the gradients of chunk c into `grads`; return the adjoint of the state before it."""
    sl = slice(c.start, c.end)
    u, dt = inp.u[sl], inp.dt[sl]
    h, x, e, m = inp.chunk_states(c, h0)
    Ct, Bt = inp.tile(inp.C, c), inp.tile(inp.B, c)
    gy = gy[sl] * (2 if h.is_complex() else 1)
    grads["C"].append((c, _conj(inp.contract_channels(gy, h, Ct))))
    # adjoint of every state: lam_s = sum_{t >= s} exp(S_t - S_s)^* gh_t, factored like the forward
    gh = inp.spread(gy, _conj(Ct), inp.buffer("g", c))
    if g_end is not None:
        gh[-1] += g_end
    q = _reverse_cumsum0_(gh.mul_(_conj(e)))
    g_h0 = _conj(torch.exp(m)) * q[0]
    lam = q.div_(_conj(e))
    # h_t = exp(Δ_t A) h_{t-1} + x_t: d/d(Δ_t A) is exp(Δ_t A) h_{t-1} = h_t - x_t
    g_dA = torch.mul(_conj(h.sub_(x)), lam, out=x)
    work = h
    grads["A"] += torch.mul(dt[..., None], g_dA, out=work).sum((0, 1))
    g_dt = _real(torch.mul(g_dA, _conj(inp.A), out=work).sum(-1))
    g_xu = _real(inp.contract_state(lam, _conj(Bt), work))  # d/d(Δ_t u_t) of x_t, summed over the state
    grads["dt"][sl] = g_dt + u * g_xu
    grads["u"][sl] = dt * g_xu
    grads["B"].append((c, inp.contract_channels(inp.dtu[sl], lam, Bt)))
    return g_h0


def _assemble(parts, X: Tensor) -> Tensor:
    """Per-chunk gradients of the time-major X (Lb, Bb, G, N), returned in the (Bb, G, N, Lb) layout."""
    g = torch.zeros_like(X)
    for c, part in parts:
        if X.shape[0] > 1:
            g[c.start:c.end] += part
        else:
            g += part
    return g.permute(1, 2, 3, 0).contiguous()


def _backward(inp: _Inputs, gy: Tensor, g_final: Tensor, checkpoints: Tensor):
    grads = {"u": torch.zeros_like(inp.u), "dt": torch.zeros_like(inp.dt), "A": torch.zeros_like(inp.A),
             "B": [], "C": []}
    gy = gy.permute(2, 0, 1).contiguous()
    rows = inp.batch
    g_init = torch.zeros(rows * inp.num_sequences if inp.varlen else rows, inp.dim, inp.dstate,
                         dtype=inp.A.dtype, device=inp.A.device)
    g_seq = (lambda s: g_final[s * rows:(s + 1) * rows]) if inp.varlen else (lambda s: g_final)
    init_slot = (lambda s: g_init[s * rows:(s + 1) * rows]) if inp.varlen else (lambda s: g_init)
    for s in range(inp.num_sequences):
        if inp.bounds[s + 1] == inp.bounds[s]:
            init_slot(s).add_(g_seq(s))  # an empty sequence's final state is its initial state
    segments: dict = {}
    for c in inp.chunks:
        segments.setdefault(c.start // CHUNK, []).append(c)
    g_carry = None
    for k in sorted(segments, reverse=True):
        chunks = segments[k]
        h = checkpoints[:, :, k]
        starts = []
        for i, c in enumerate(chunks):  # recompute where the adaptive sub-chunks of this segment start
            if i > 0 and c.first_of >= 0:
                h = inp.start_state(c.first_of)
            starts.append(h)
            if i + 1 < len(chunks):
                h = inp.chunk_states(c, h)[0][-1].clone()
        for c, h0 in zip(reversed(chunks), reversed(starts)):
            g_end = g_seq(c.last_of) if c.last_of >= 0 else g_carry
            g_h0 = _chunk_backward(inp, c, h0, gy, g_end, grads)
            if c.first_of >= 0:
                init_slot(c.first_of).add_(g_h0)
                g_carry = None
            else:
                g_carry = g_h0
    to_bdl = lambda t: t.permute(1, 2, 0).contiguous()  # noqa: E731
    return (to_bdl(grads["u"]), to_bdl(grads["dt"]), grads["A"], _assemble(grads["B"], inp.B),
            _assemble(grads["C"], inp.C), g_init)
