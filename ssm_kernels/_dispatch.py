"""Backend registry and selection for every op.

Backends: "torch" (pure PyTorch, any device), "triton" (Triton kernels: CUDA GPUs of compute capability
8.0 or newer, or the CPU through the Triton interpreter when TRITON_INTERPRET=1), "cuda" (the csrc/ CUDA
C++ extension, built on first use), "cpp" (the csrc/cpu C++ kernels for CPU tensors, built on first use).

Which backend runs a call, first rule that applies:
1. `backend=` passed to the op: that backend or a BackendUnavailableError saying why it cannot run.
2. `with use_backend(...)` (innermost first), then the environment variable SSM_KERNELS_BACKEND. Both take
   a backend name for every op, or per-op choices ("selective_scan=cuda,causal_conv1d=triton"). An op
   that has no implementation in that backend chooses automatically (logged once); an op that has one
   that cannot run for the given tensors raises.
3. Automatic: CPU tensors -> CPU_ORDER ("cpp" where the op has it and it builds, else "torch"); CUDA
   tensors -> the first runnable backend of the order that MEASURED_ORDER gives for the GPU's architecture
   (compute capability), the op, the dtype, the op's size measure and whether autograd records the call
   (generated from benchmarks/results into _dispatch_table.py by `python -m benchmarks.dispatch_table`); a GPU
   of an unmeasured architecture, and every case without a rule, uses DEFAULT_ORDER. A preferred backend that
   cannot run is skipped and the reason logged once.

Nothing here imports Triton or initialises CUDA at import time.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import _dispatch_table

logger = logging.getLogger("ssm_kernels")

BACKENDS = ("torch", "triton", "cuda", "cpp")
ENV_VAR = "SSM_KERNELS_BACKEND"

# Every public op of DESIGN.md §3, in its order. An op lists only the backends that are implemented.
OPS = (
    "selective_scan", "selective_state_update", "ssd_chunk_scan", "linear_scan", "fftconv",
    "causal_conv1d", "causal_conv1d_update", "gated_rmsnorm", "vandermonde_kernel", "cauchy_kernel",
)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the op for these inputs."""


@dataclass(frozen=True)
class Rule:
    """Backend preference for CUDA tensors of one op, for a dtype set, a size class and a grad mode."""
    order: Tuple[str, ...]
    dtypes: Optional[Tuple[torch.dtype, ...]] = None  # None: every dtype
    max_size: Optional[int] = None  # problem size (op-defined, e.g. numel of the main input); None: any
    grad: Optional[bool] = None  # True: calls autograd records (training), False: calls it does not; None: both
    source: str = "placeholder: not yet benchmarked"

    def matches(self, dtype, size: Optional[int], grad: Optional[bool]) -> bool:
        return ((self.dtypes is None or dtype in self.dtypes)
                and (self.max_size is None or size is None or size <= self.max_size)
                and (self.grad is None or grad is None or self.grad == grad))


# Ops or cases without a rule, and every op on a GPU of an unmeasured architecture, use DEFAULT_ORDER.
DEFAULT_ORDER = Rule(order=("cuda", "triton", "torch"), source="default order: not benchmarked for this case")
CPU_ORDER = ("cpp", "torch")  # the C++ kernels exist where they beat every PyTorch formulation on a CPU


def _measured_rules(measured: dict) -> Dict[Tuple[int, int], Dict[str, List[Rule]]]:
    """Rule objects from the generated table's plain data (_dispatch_table.MEASURED)."""
    return {capability: {op: [Rule(order=tuple(r["order"]),
                                   dtypes=None if r["dtype"] is None else (getattr(torch, r["dtype"]),),
                                   max_size=r["max_size"], grad=r["grad"],
                                   source=f"{r['source']} ({', '.join(r['results'])} at {', '.join(r['commit'])})")
                              for r in rules] for op, rules in ops.items()}
            for capability, ops in measured.items()}


# Per GPU architecture (compute capability), the rules of each op in order: generated from
# benchmarks/results/ by `python -m benchmarks.dispatch_table` into _dispatch_table.py.
MEASURED_ORDER: Dict[Tuple[int, int], Dict[str, List[Rule]]] = _measured_rules(_dispatch_table.MEASURED)

# A backend-specific constraint: (device, dtype, features) -> None when supported, else the reason.
Supports = Callable[[torch.device, Optional[torch.dtype], dict], Optional[str]]


def kernel_dtype_supports(device: torch.device, dtype: Optional[torch.dtype], features: dict) -> Optional[str]:
    """The constraint every Triton and CUDA backend shares: fp32 / fp16 / bf16 inputs (fp64 runs on torch).
    Ops with more constraints check this first, then their own."""
    if dtype == torch.float64:
        return "the GPU kernels take fp32 / fp16 / bf16 inputs, got float64 (fp64 runs on the torch backend)"
    return None


def triton_int32_supports(device: torch.device, dtype: Optional[torch.dtype], features: dict) -> Optional[str]:
    """kernel_dtype_supports, for Triton backends whose kernels index with 32-bit offsets: the op passes the
    feature beyond_int32=True when a tensor it or its kernels touch reaches 2**31 elements."""
    problem = kernel_dtype_supports(device, dtype, features)
    if problem is None and features.get("beyond_int32"):
        return ("its kernels index with 32-bit offsets and a tensor of this call reaches 2**31 elements "
                "(the torch backend has no such limit)")
    return problem


def complex64_triton_supports(device: torch.device, dtype: Optional[torch.dtype], features: dict) -> Optional[str]:
    """triton_int32_supports, for Triton backends of complex ops that compute in complex64 (complex128 runs on
    the torch backend)."""
    if dtype == torch.complex128:
        return "its kernels compute in complex64; complex128 inputs run on the torch backend"
    return triton_int32_supports(device, dtype, features)


@dataclass
class Implementation:
    op: str
    backend: str
    module: str
    function: str
    supports: Optional[Supports] = None
    extension: Optional[str] = None  # csrc/<extension> that must be built first ("cuda" backend)
    _fn: Optional[Callable] = field(default=None, repr=False)

    def load(self) -> Callable:
        if self._fn is None:
            if self.extension is not None:
                from . import _cuda_ext
                _cuda_ext.load(self.extension)
            self._fn = getattr(importlib.import_module(self.module), self.function)
        return self._fn


_REGISTRY: Dict[str, Dict[str, Implementation]] = {op: {} for op in OPS}


def register(op: str, backend: str, module: str, function: str, *, supports: Optional[Supports] = None,
             extension: Optional[str] = None) -> None:
    """Declare that `module.function` implements `op` for `backend` (imported on first use)."""
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {list(OPS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends are {list(BACKENDS)}")
    _REGISTRY[op][backend] = Implementation(op, backend, module, function, supports, extension)
    _RESOLVED.clear()


def implemented_backends(op: str) -> Tuple[str, ...]:
    return tuple(b for b in BACKENDS if b in _REGISTRY[op])


# --- can a backend run here? ------------------------------------------------------------------------------
_CAPABILITY: Dict[int, Tuple[int, int]] = {}
_LOAD_FAILURES: Dict[Tuple[str, str], str] = {}  # (op, backend) -> why loading it failed


def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _capability(device: torch.device) -> Tuple[int, int]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY:
        _CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return _CAPABILITY[index]


def backend_problem(backend: str, device: torch.device, extension: Optional[str] = None) -> Optional[str]:
    """None when `backend` can run on `device` in this environment, else the reason it cannot."""
    if backend == "torch":
        return None
    if backend == "triton":
        if not triton_importable():
            return "Triton is not installed"
        if device.type == "cuda":
            if torch.version.hip is None and _capability(device) < (8, 0):
                return f"Triton kernels need compute capability 8.0+, GPU has {_capability(device)}"
            return None
        if device.type == "cpu" and triton_interpreter_on():
            return None
        return f"Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1 for CPU tensors), got {device.type} tensors"
    if backend == "cpp":
        if device.type != "cpu":
            return f"the C++ CPU kernels take CPU tensors, got {device.type} tensors"
        from . import _cpu_ext
        return _cpu_ext.problem()
    if backend == "cuda":
        if device.type != "cuda" or torch.version.cuda is None:
            return f"the CUDA extension needs CUDA tensors and a CUDA build of torch, got {device.type} tensors"
        from . import _cuda_ext
        return _cuda_ext.problem(extension)
    raise ValueError(f"unknown backend {backend!r}; backends are {list(BACKENDS)}")


def _implementation_problem(impl: Implementation, device: torch.device, dtype, features: dict) -> Optional[str]:
    problem = _LOAD_FAILURES.get((impl.op, impl.backend))
    if problem is None:
        problem = backend_problem(impl.backend, device, impl.extension)
    if problem is None and impl.supports is not None:
        problem = impl.supports(device, dtype, features)
    return problem


# --- overrides --------------------------------------------------------------------------------------------
_OVERRIDES: List[Dict[str, str]] = []  # innermost last; "*" is the every-op entry


def _parse_override(spec, source: str) -> Dict[str, str]:
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if part:
                op, _, backend = part.rpartition("=")
                items.append((op.strip() or "*", backend.strip()))
    parsed = {}
    for op, backend in items:
        if backend not in BACKENDS:
            raise ValueError(f"{source}: unknown backend {backend!r}; backends are {list(BACKENDS)}")
        if op != "*" and op not in _REGISTRY:
            raise ValueError(f"{source}: unknown op {op!r}; ops are {list(OPS)}")
        parsed[op] = backend
    return parsed


@contextlib.contextmanager
def use_backend(spec):
    """Prefer a backend inside the block: `use_backend("triton")` or `use_backend({"fftconv": "torch"})`.

    Example:
        >>> import torch, ssm_kernels
        >>> with ssm_kernels.use_backend({"fftconv": "torch"}), ssm_kernels.record_backends() as used:
        ...     y = ssm_kernels.fftconv(torch.randn(1, 2, 8), torch.randn(2, 8))
        >>> used
        {'fftconv': {'torch': 1}}
    """
    _OVERRIDES.append(_parse_override(spec, "use_backend"))
    try:
        yield
    finally:
        _OVERRIDES.pop()


def _override_for(op: str) -> Tuple[Optional[str], str]:
    for spec in reversed(_OVERRIDES):
        if op in spec or "*" in spec:
            return spec.get(op, spec.get("*")), "use_backend()"
    env = os.environ.get(ENV_VAR)
    if env:
        spec = _parse_override(env, ENV_VAR)
        if op in spec or "*" in spec:
            return spec.get(op, spec.get("*")), ENV_VAR
    return None, ""


# --- selection ---------------------------------------------------------------------------------------------
_LOGGED: set = set()
_RECORDERS: List[Dict[str, Dict[str, int]]] = []


def _log_once(message: str) -> None:
    if torch.compiler.is_compiling() or message in _LOGGED:
        return
    _LOGGED.add(message)
    logger.warning(message)


def automatic_order(op: str, device: torch.device, dtype=None, size: Optional[int] = None,
                    grad: Optional[bool] = None) -> Tuple[Tuple[str, ...], str]:
    """The preference order for automatic choice, and where it comes from."""
    if device.type == "cpu":
        if "cpp" in _REGISTRY[op]:
            return CPU_ORDER, "CPU tensors: the C++ CPU kernels where they build, else the torch backend"
        return CPU_ORDER, "CPU tensors use the torch backend"
    if device.type != "cuda":
        return ("torch",), f"{device.type} tensors use the torch backend"
    capability = _capability(device)
    rules = MEASURED_ORDER.get(capability)
    if rules is None:
        return DEFAULT_ORDER.order, (f"default order: no measurements for compute capability "
                                     f"{capability[0]}.{capability[1]}")
    for rule in rules.get(op, []):
        if rule.matches(dtype, size, grad):
            return rule.order, rule.source
    return DEFAULT_ORDER.order, DEFAULT_ORDER.source


def _load(impl: Implementation, explicit: bool) -> Optional[Callable]:
    try:
        return impl.load()
    except Exception as error:  # a failed CUDA build or a broken Triton install
        reason = f"loading its {impl.backend} backend failed: {_tail(str(error))}"
        _LOAD_FAILURES[(impl.op, impl.backend)] = reason
        if explicit:
            raise BackendUnavailableError(f"{impl.op}: {reason}") from error
        return None


def _tail(text: str, limit: int = 1500) -> str:
    """The end of a long message (a failed build's log ends with the error)."""
    return text if len(text) <= limit else "..." + text[-limit:]


def explain(op: str, device, dtype=None, size: Optional[int] = None, grad: Optional[bool] = None,
            **features) -> Tuple[str, str]:
    """(backend, reason) that automatic selection would pick, without loading anything."""
    device = torch.device(device)
    order, source = automatic_order(op, device, dtype, size, grad)
    skipped = []
    for backend in order:
        impl = _REGISTRY[op].get(backend)
        if impl is None:
            continue
        problem = _implementation_problem(impl, device, dtype, features)
        if problem is None:
            reason = source if not skipped else f"{source}; skipped " + "; ".join(skipped)
            return backend, reason
        skipped.append(f"{backend} ({problem})")
    return "none", "no backend can run: " + ("; ".join(skipped) or "no implementation yet")


def select(op: str, device: torch.device, *, backend: Optional[str] = None, dtype=None,
           size: Optional[int] = None, grad: Optional[bool] = None, **features) -> Callable:
    """Return the implementation of `op` to call for tensors on `device` (see the module docstring).
    `size` is the op's size measure for the dispatch table's size classes (each op says which at its call),
    `grad` whether autograd records the call (_autograd.needs_grad(); None for ops without a backward).
    `features` are booleans that the backends' `supports` checks read (e.g. wide=width > 8).

    Overrides are read here, in code torch.compile traces (so a compiled graph is guarded on them); the
    checks, imports, CUDA builds and logging run in _resolve, which Dynamo calls without tracing.
    """
    # decoding steps call this every token: outside use_backend() / recording / tracing, the whole answer is
    # cached per arguments (in _RESOLVED, which register() and the tests clear)
    fast = not _OVERRIDES and not _RECORDERS and not torch.compiler.is_compiling()
    if fast:
        key = (op, device, backend, dtype, size, grad, os.environ.get(ENV_VAR), tuple(features.items()))
        fn = _RESOLVED.get(key)
        if fn is not None:
            return fn
    source = "backend="
    if backend is None:
        backend, source = _override_for(op)
    if torch.compiler.is_compiling():
        # with dynamic shapes a feature computed from sizes is symbolic: the choice specialises on it (a guard)
        features = {name: True if value else False for name, value in features.items()}
    order, _ = automatic_order(op, device, dtype, size, grad)
    chosen = _resolve(op, device.type, device.index, dtype, order, backend, source, tuple(sorted(features.items())))
    impl = _REGISTRY[op][chosen]
    if _RECORDERS and not torch.compiler.is_compiling():
        for record in _RECORDERS:
            counts = record.setdefault(op, {})
            counts[chosen] = counts.get(chosen, 0) + 1
    if fast and len(_RESOLVED) < _MAX_CACHED:
        _RESOLVED[key] = impl._fn
    return impl._fn


_RESOLVED: Dict[tuple, object] = {}  # _resolve's answers (arguments -> backend) and select()'s (-> function)
_MAX_CACHED = 4096  # select() answers cached per (op, device, dtype, size, ...): sizes vary in training


def _resolve(op: str, device_type: str, device_index: Optional[int], dtype, order: Tuple[str, ...],
             backend: Optional[str], source: str, features: tuple) -> str:
    """The backend to run, its implementation loaded (cached per arguments); raises
    BackendUnavailableError for requests that cannot be met."""
    key = (op, device_type, device_index, dtype, order, backend, source, features)
    chosen = _RESOLVED.get(key)
    if chosen is None:
        chosen = _RESOLVED[key] = _resolve_uncached(op, torch.device(device_type, device_index), dtype, order,
                                                    backend, source, dict(features))
    return chosen


def _resolve_uncached(op: str, device: torch.device, dtype, order: Tuple[str, ...], backend: Optional[str],
                      source: str, features: dict) -> str:
    impls = _REGISTRY[op]
    if backend is not None and source != "backend=" and backend not in impls:
        _log_once(f"{op}: {source} asks for {backend!r}, which {op} does not implement "
                  f"(it has {list(impls)}); choosing automatically")
        backend = None
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"{op}: unknown backend {backend!r}; backends are {list(BACKENDS)}")
        impl = impls.get(backend)
        if impl is None:
            raise BackendUnavailableError(f"{op}: no {backend!r} backend; implemented: {list(impls)}")
        problem = _implementation_problem(impl, device, dtype, features)
        if problem is not None:
            raise BackendUnavailableError(f"{op}: backend {backend!r} (from {source}) cannot run: {problem}")
        _load(impl, explicit=True)
        return backend

    for name in order:
        impl = impls.get(name)
        if impl is None:
            continue
        problem = _implementation_problem(impl, device, dtype, features)
        if problem is None and _load(impl, explicit=False) is not None:
            return name
        problem = problem or _LOAD_FAILURES[(op, name)]
        _log_once(f"{op}: skipping the {name} backend for {device.type} tensors: {problem}")
    raise BackendUnavailableError(f"{op}: no backend can run on {device.type} tensors "
                                  f"(implemented: {list(impls)})")


# torch.compile calls these at trace time instead of tracing them (what torch.compiler.assume_constant_result
# does; set directly because calling that helper imports Dynamo, too heavy for `import ssm_kernels`). Traced,
# _capability's cache fill would fail the guard Dynamo had just made on the cache (torch 2.11: "Guard failed on
# the same frame it was created").
_resolve._dynamo_marked_constant = True
_capability._dynamo_marked_constant = True


@contextlib.contextmanager
def record_backends():
    """Collect which backend each op call used: yields {op: {backend: calls}}.

    Example:
        >>> import torch, ssm_kernels
        >>> with ssm_kernels.record_backends() as used:
        ...     y = ssm_kernels.linear_scan(torch.rand(1, 2, 8), torch.randn(1, 2, 8))
        >>> list(used)
        ['linear_scan']
    """
    record: Dict[str, Dict[str, int]] = {}
    _RECORDERS.append(record)
    try:
        yield record
    finally:
        _RECORDERS.remove(record)


def available_backends(op: Optional[str] = None) -> dict:
    """What can run here. For one op: {backend: None or the reason it cannot run}, for CUDA tensors on
    the current GPU if there is one, else for CPU tensors. Without `op`: that mapping for every op.

    Example:
        >>> import ssm_kernels
        >>> ssm_kernels.available_backends("fftconv")["torch"] is None   # torch runs everywhere
        True
    """
    if op is None:
        return {name: available_backends(name) for name in OPS}
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {list(OPS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {b: _implementation_problem(impl, device, None, {}) for b, impl in _REGISTRY[op].items()}


def ensure_registered() -> None:
    """Import every op package so that its register() calls have run."""
    for op in OPS:
        if importlib.util.find_spec(f"ssm_kernels.{op}") is not None:
            importlib.import_module(f"ssm_kernels.{op}")
