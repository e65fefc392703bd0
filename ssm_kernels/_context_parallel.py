"""Context parallelism: one sequence split across the ranks of a torch.distributed group, in rank order.

Each op called with cp_group= runs on this rank's contiguous shard of the sequence and returns this rank's shard
of the single-process result. What crosses ranks is O(state), never O(sequence):
  * the scans (linear_scan, selective_scan, ssd_chunk_scan) are linear recurrences h' = decay * h + x. Every rank
    scans its shard from a zero state (its summary: the decay product over the shard and the final state),
    the summaries are all-gathered, each rank composes the ones before it with the initial state into the state
    entering its shard, and scans again from it; the composition of all of them is the final state.
  * causal_conv1d needs the W - 1 inputs before its shard: the tails of the shards are all-gathered.
`exchange` is that one all_gather in the forward and one all_reduce in the backward (the gradient of each
rank's summary is summed over the ranks that used it). Every rank must run the backward, as under DDP.

Gradients of replicated inputs (parameters such as A, D, biases and weights, and the initial state, which every
rank passes whole) come back as this rank's contribution: their sum over the group is the single-process
gradient (DDP / FSDP over the group sum them). A returned final state is the same on every rank; its gradient is
the sum of the cotangents the ranks give it.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

_MAX_DIMS = 6
_DTYPE_CODES = {dtype: code for code, dtype in enumerate(
    (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128))}


def group_position(group, op: str) -> Tuple[int, int]:
    """(rank in the group, group size); TypeError / ValueError when `group` is not a usable process group."""
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(f"{op}: cp_group needs torch.distributed initialised (init_process_group)")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"{op}: cp_group must be a torch.distributed ProcessGroup, got {type(group).__name__}")
    return dist.get_rank(group), dist.get_world_size(group)


def reject(op: str, **arguments) -> None:
    """ValueError for arguments given (not None) that have no context-parallel form."""
    given = [name for name, value in arguments.items() if value is not None]
    if given:
        raise ValueError(f"{op}: {', '.join(given)} cannot be combined with cp_group (a packed batch of sequences "
                         f"is not split along its length)")


def _metadata(tensors: Sequence[torch.Tensor], extra: Sequence[int]) -> torch.Tensor:
    row = [0 if tensors[0].device.type == "cpu" else 1, len(tensors)]
    for t in tensors:
        dims = list(t.shape) + [-1] * (_MAX_DIMS - t.dim())
        row += [_DTYPE_CODES[t.dtype], t.dim()] + dims
    return torch.tensor(row + list(extra), dtype=torch.int64)


def check_agreement(group, op: str, tensors: Sequence[torch.Tensor], names: Sequence[str],
                    extra: Sequence[int] = ()) -> torch.Tensor:
    """All-gather the devices, shapes and dtypes of `tensors` (and the ints `extra`) and raise the same
    ValueError on every rank where the ranks disagree (so no rank is left waiting in a collective).
    Returns the (world, len(extra)) gathered extras."""
    import torch.distributed as dist
    mine = _metadata(tensors, extra)
    device = tensors[0].device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    gathered = [torch.empty_like(mine, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine.to(device), group=group)
    rows = torch.stack([g.cpu() for g in gathered])
    if not bool((rows[:, :-len(extra) or None] == rows[0, :-len(extra) or None]).all()):
        described = [_describe(row, names) for row in rows]
        raise ValueError(f"{op}: the ranks of cp_group disagree on the device, shapes or dtypes of {list(names)} "
                         f"(everything but the sequence length must match): "
                         + "; ".join(f"rank {r}: {d}" for r, d in enumerate(described)))
    return rows[:, rows.shape[1] - len(extra):]


def _describe(row: torch.Tensor, names: Sequence[str]) -> str:
    values = row.tolist()
    parts, i = ["cpu" if values[0] == 0 else "cuda"], 2
    codes = {code: dtype for dtype, code in _DTYPE_CODES.items()}
    for name in names:
        dtype, ndim = codes.get(values[i], "?"), values[i + 1]
        parts.append(f"{name} {tuple(values[i + 2:i + 2 + ndim])} {str(dtype).replace('torch.', '')}")
        i += 2 + _MAX_DIMS
    return ", ".join(parts)


def check_shard_lengths(group, op: str, tensors: Sequence[torch.Tensor], names: Sequence[str], length: int,
                        minimum: int = 1) -> None:
    """check_agreement, and every rank's shard at least `minimum` positions long (the same error on every rank)."""
    lengths = check_agreement(group, op, tensors, names, extra=[length])[:, 0].tolist()
    short = [r for r, n in enumerate(lengths) if n < minimum]
    if short:
        raise ValueError(f"{op}: with cp_group every rank's shard must hold at least {minimum} position(s); "
                         f"shard lengths by rank: {lengths}")


def _pack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One fp64 buffer holding every tensor (complex ones as (re, im) pairs): exact for every float dtype; one
    collective carries them all."""
    return torch.cat([(torch.view_as_real(t) if t.is_complex() else t).reshape(-1).to(torch.float64)
                      for t in tensors])


def _unpack(buffer: torch.Tensor, like: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The tensors of _pack(like-shaped tensors) back, with a leading axis for the buffer's leading axis."""
    out, offset = [], 0
    lead = buffer.shape[:-1]
    for t in like:
        n = t.numel() * (2 if t.is_complex() else 1)
        part = buffer[..., offset:offset + n]
        offset += n
        if t.is_complex():
            real = part.reshape(*lead, *t.shape, 2).to(t.real.dtype)
            out.append(torch.view_as_complex(real.contiguous()))
        else:
            out.append(part.reshape(*lead, *t.shape).to(t.dtype))
    return out


def _all_gather(group, buffer: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist
    gathered = [torch.empty_like(buffer) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, buffer.contiguous(), group=group)
    return torch.stack(gathered)


class _Exchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, group, combine, has_initial, initial, *local):
        rank = group_position(group, "cp_group")[0]
        stacked = _unpack(_all_gather(group, _pack(local)), local)
        ctx.group, ctx.combine, ctx.rank, ctx.has_initial = group, combine, rank, has_initial
        ctx.save_for_backward(initial if has_initial else None, *stacked)
        with torch.no_grad():
            return combine(rank, initial if has_initial else None, *stacked)

    @staticmethod
    def backward(ctx, *grads):
        import torch.distributed as dist
        initial, *stacked = ctx.saved_tensors
        leaves = [s.detach().requires_grad_() for s in stacked]
        start = initial.detach().requires_grad_() if initial is not None else None
        with torch.enable_grad():
            outputs = ctx.combine(ctx.rank, start, *leaves)
            pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
            wrt = leaves + ([start] if start is not None else [])
            found = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True) \
                if pairs else [None] * len(wrt)
        found = [torch.zeros_like(w) if f is None else f for f, w in zip(found, wrt)]
        # (world, n): row k holds this rank's part of the gradient of rank k's summaries; summed over the ranks
        rows = torch.cat([(torch.view_as_real(f) if f.is_complex() else f).reshape(f.shape[0], -1).to(torch.float64)
                          for f in found[:len(leaves)]], dim=1)
        dist.all_reduce(rows, group=ctx.group)
        mine = [g[ctx.rank] for g in _unpack(rows, [s[0] for s in stacked])]
        d_initial = found[-1] if start is not None else None
        return (None, None, None, d_initial, *mine)


def exchange(group, combine: Callable, initial: Optional[torch.Tensor], *local: torch.Tensor):
    """combine(rank, initial, *stacked), stacked[i] = every rank's local[i] along a new leading (world) axis:
    differentiable in `initial` and in every `local` (see the module docstring). combine must be a torch
    function of its tensor arguments (it is re-run under autograd in the backward)."""
    dummy = local[0].new_zeros(())
    return _Exchange.apply(group, combine, initial is not None, initial if initial is not None else dummy, *local)


def compose_states(reverse: bool) -> Callable:
    """combine for the scans: (state entering this rank's shard, final state of the whole sequence), from the
    ranks' (decay, final) summaries, h' = decay * h + final, in rank order (reverse: from the last rank).
    The state entering the first shard is the initial state, zeros without one."""
    def combine(rank, initial, decays, finals):
        world = decays.shape[0]
        state = initial.to(finals.dtype) if initial is not None else torch.zeros_like(finals[0])
        entering = state
        for k in (reversed(range(world)) if reverse else range(world)):
            if k == rank:
                entering = state
            state = decays[k] * state + finals[k]
        return entering, state
    return combine
