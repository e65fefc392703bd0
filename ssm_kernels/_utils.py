"""Helpers shared by every op: argument validation and output allocation.

Validation raises TypeError for a wrong kind or dtype and ValueError for a wrong shape or value, and the
message always names the op, the argument and the expected shape with the sizes already known, e.g.
``causal_conv1d: weight must have shape (D, W) = (64, W), got (32, 4)``.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REAL_DTYPES = FLOAT_DTYPES + (torch.float64,)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)
INDEX_DTYPES = (torch.int32, torch.int64)

Dim = Union[str, int]


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


class ArgCheck:
    """Validates the tensor arguments of one op call.

    Named dimensions ("B", "D", "L", ...) are bound by the first tensor that uses them and checked against
    every later one; all tensors must share the device of the first one checked.

        check = ArgCheck("causal_conv1d")
        check.tensor("x", x, ("B", "D", "L"))
        check.tensor("weight", weight, ("D", "W"))
        W = check.dims["W"]
    """

    def __init__(self, op: str):
        self.op = op
        self.dims: dict = {}
        self.device: Optional[torch.device] = None
        self._device_owner = ""

    def fail(self, message: str, exc: type = ValueError):
        raise exc(f"{self.op}: {message}")

    def _expected(self, shape: Sequence[Dim]) -> str:
        comma = "," if len(shape) == 1 else ""
        names = ", ".join(str(d) for d in shape) + comma
        sizes = ", ".join(str(self.dims.get(d, d)) if isinstance(d, str) else str(d) for d in shape) + comma
        return f"({names})" if names == sizes else f"({names}) = ({sizes})"

    def tensor(self, name: str, t, shape: Optional[Sequence[Dim]] = None, *,
               dtypes: Sequence[torch.dtype] = FLOAT_DTYPES, optional: bool = False):
        """Check `t` and return it (None passes only when optional)."""
        if t is None:
            if optional:
                return None
            self.fail(f"{name} is required", TypeError)
        if not isinstance(t, torch.Tensor):
            self.fail(f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
        if dtypes is not None and t.dtype not in dtypes:
            self.fail(f"{name} must have dtype in ({_dtype_names(dtypes)}), got {_dtype_names([t.dtype])}",
                      TypeError)
        if shape is not None:
            self._check_shape(name, t, shape)
        if self.device is None:
            self.device, self._device_owner = t.device, name
        elif t.device != self.device:
            self.fail(f"{name} is on {t.device} but {self._device_owner} is on {self.device}; "
                      "all tensors must be on one device")
        return t

    def _check_shape(self, name: str, t: torch.Tensor, shape: Sequence[Dim]):
        # the message is built only on failure: this runs on every call of every op (decoding steps included)
        sizes = t.shape
        if len(sizes) != len(shape):
            self.fail(f"{name} must have shape {self._expected(shape)}, got {tuple(sizes)}")
        dims, bound = self.dims, []
        for dim, size in zip(shape, sizes):
            if isinstance(dim, str):  # (not dim.__class__ is str: Dynamo in torch 2.11 traces that as False)
                want = dims.get(dim)
                if want is None:
                    dims[dim] = want = size
                    bound.append(dim)
            else:
                want = dim
            if want != size:
                for dim in bound:  # the message names the sizes bound before this tensor
                    del dims[dim]
                self.fail(f"{name} must have shape {self._expected(shape)}, got {tuple(sizes)}")

    def cu_seqlens(self, cu_seqlens: torch.Tensor, length: int, batch: int, allow_empty: bool) -> int:
        """Check packed-sequence boundaries (S + 1,) int: batch size 1, S >= 1 sequences, from 0 to L,
        increasing (non-decreasing when sequences of length 0 are allowed). Returns S. Reading the values
        syncs with the device, so those checks run in eager calls only, not while torch.compile traces."""
        self.tensor("cu_seqlens", cu_seqlens, ("S + 1",), dtypes=INDEX_DTYPES)
        if batch != 1:
            self.fail(f"cu_seqlens packs sequences along L and needs batch size B = 1, got B = {batch}")
        sequences = self.integer("the number of sequences in cu_seqlens", cu_seqlens.shape[0] - 1, minimum=1)
        self.dims["S"] = sequences
        if torch.compiler.is_compiling():
            return sequences
        bounds = cu_seqlens.tolist()
        if bounds[0] != 0 or bounds[-1] != length:
            self.fail(f"cu_seqlens must start at 0 and end at L = {length}, got {bounds[0]} ... {bounds[-1]}")
        if allow_empty and any(b < a for a, b in zip(bounds, bounds[1:])):
            self.fail("cu_seqlens must be non-decreasing (cumulative sequence lengths)")
        if not allow_empty and any(b <= a for a, b in zip(bounds, bounds[1:])):
            self.fail("cu_seqlens must be strictly increasing (sequences of length 0 are not allowed)")
        return sequences

    def choice(self, name: str, value, choices: Sequence):
        if value not in choices:
            self.fail(f"{name} must be one of {list(choices)}, got {value!r}")
        return value

    def integer(self, name: str, value, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
        """value as an int (any integral type but bool: numpy integers from configs too)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            self.fail(f"{name} must be an int, got {type(value).__name__}", TypeError)
        value = int(value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            lo = "-inf" if minimum is None else minimum
            hi = "inf" if maximum is None else maximum
            self.fail(f"{name} must be in [{lo}, {hi}], got {value}")
        return value

    def finite(self, name: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"{name} must be a real number, got {type(value).__name__}", TypeError)
        if not -math.inf < value < math.inf:  # (not math.isfinite: torch.compile(dynamic=True) traces floats symbolically)
            self.fail(f"{name} must be finite, got {value}")
        return float(value)


class PassedChecks:
    """Argument signatures that passed an op's validation, for ops called once per decoded token.

    A validation depends only on the arguments' kinds, shapes, dtypes and devices (and the plain values
    passed in `extras`), so a signature that passed once passes again: `known` skips the ArgCheck calls,
    which cost several microseconds per step. Failing signatures are never remembered; nothing is
    remembered while torch.compile traces (it sees the full validation).

        key = PASSED.key((x, state, weight), activation)
        if not PASSED.known(key):
            validate(...)            # raises on bad input
            PASSED.remember(key)
    """

    def __init__(self, limit: int = 1024):
        self._seen: set = set()
        self._limit = limit

    @staticmethod
    def key(tensors: Sequence, *extras):
        """The signature, or None (validate every time) for a non-tensor argument or an unhashable extra."""
        if torch.compiler.is_compiling():
            return None
        try:
            sig = tuple(None if t is None else (t.shape, t.dtype, t.device) for t in tensors)
            hash(extras)
        except (AttributeError, TypeError):
            return None
        return sig + tuple((type(e), e) for e in extras)

    def known(self, key) -> bool:
        return key is not None and key in self._seen

    def remember(self, key) -> None:
        if key is not None and len(self._seen) < self._limit:
            self._seen.add(key)


INT32_OFFSET_LIMIT = 2**31  # kernels that index with 32-bit offsets need every element offset below this


def index_extent(t: Optional[torch.Tensor]) -> int:
    """1 + the largest element offset t's view reaches from its first element (0 for None or empty)."""
    if t is None or t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def beyond_int32_offsets(*extents: int) -> bool:
    """True when an extent (an index_extent or a buffer's element count) passes 32-bit offsets."""
    return any(extent >= INT32_OFFSET_LIMIT for extent in extents)  # (torch.compile traces no max(default=))


def contiguous_outputs(outputs):
    """A custom op's outputs made contiguous, as its fake declares them: torch.compile's generated code checks
    the strides an op returns against its fake, and the math often ends in permuted or sliced views."""
    if isinstance(outputs, torch.Tensor):
        return outputs.contiguous()
    return type(outputs)(t.contiguous() for t in outputs)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessor_count(device: torch.device) -> int:
    """The SM count of a CUDA device, cached: torch.cuda.get_device_properties costs tens of microseconds of
    host time a call, a real share of a small op's launch."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints. Host code uses this and next_power_of_2 rather than triton's: those go through
    Triton's constexpr-function wrapper, about 2.5 us a call, and an op's launch computes a handful."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n; 0 for n = 0, as triton.next_power_of_2."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def segments_for(blocks: int, units: int, programs: int) -> Tuple[int, int]:
    """Cut each of `units` rows of `blocks` blocks into segments of whole blocks, until about `programs` programs
    exist (a kernel that reduces along the row then writes one partial sum per segment): (blocks per segment,
    segments)."""
    per_segment = cdiv(blocks, max(1, min(blocks, programs // max(1, units))))
    return per_segment, cdiv(blocks, per_segment)


def sum_segments(partials: torch.Tensor) -> torch.Tensor:
    """(H, SEGMENTS, ...) partial sums written by segments_for's programs -> (H, ...): their sum, or a view
    when one segment covers the row (no kernel launch)."""
    return partials.squeeze(1) if partials.shape[1] == 1 else partials.sum(1)


def in_dtype(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """t converted to dtype; t itself where it is already in it (or None). Tensor.to costs about a microsecond
    of host time even when it returns t, and a small call's host time is the sum of a few dozen such."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def sum_over(t: torch.Tensor, axis: int) -> torch.Tensor:
    """t summed over `axis`; where that axis has one element, that element as a view (no kernel launch: a
    batch-1 call's backward is host-bound, and every launch is host time)."""
    return t.select(axis, 0) if t.shape[axis] == 1 else t.sum(axis)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype math runs in: fp32 (complex64) for fp32 and lower, fp64 (complex128) for fp64 inputs."""
    if dtype.is_complex:
        return torch.complex128 if dtype == torch.complex128 else torch.complex64
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- output allocation -----------------------------------------------------------------------------------
# Tests switch poisoning on so that every output a kernel backend allocates starts as NaN (integers as -1):
# an element the kernel forgets to write then fails the comparison instead of passing by luck.
_POISON_OUTPUTS = [False]


def set_poison_outputs(enabled: bool) -> bool:
    """Turn NaN-poisoning of kernel outputs on or off; returns the previous setting."""
    previous = _POISON_OUTPUTS[0]
    _POISON_OUTPUTS[0] = bool(enabled)
    return previous


def is_dense(t: torch.Tensor) -> bool:
    """Whether t's elements fill a block of memory without gaps or overlaps, in any order of its axes (a
    permuted contiguous tensor, or a slice of one along its slowest axis)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda pair: pair[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def new_output_like(t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """An output buffer shaped like t, in t's memory order where t is dense (is_dense: an input's gradient then
    lies like the input, e.g. in the (C, B, L) order of a channels-first GEMM's output), else contiguous;
    NaN-filled while poisoning is on, like new_output."""
    dtype = t.dtype if dtype is None else dtype
    if not is_dense(t):
        return new_output(t.shape, dtype, t.device)
    order = sorted(range(t.dim()), key=lambda axis: -t.stride(axis))  # slowest axis first
    out = new_output([t.shape[axis] for axis in order], dtype, t.device)
    return out.permute([order.index(axis) for axis in range(t.dim())])


def new_output(shape: Sequence[int], dtype: torch.dtype, device) -> torch.Tensor:
    """Allocate an output buffer that a kernel fully overwrites (NaN-filled while poisoning is on)."""
    if not _POISON_OUTPUTS[0]:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    fill = float("nan") if (dtype.is_floating_point or dtype.is_complex) else -1
    return torch.full(tuple(shape), fill, dtype=dtype, device=device)
