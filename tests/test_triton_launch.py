"""launch: repeat launches straight to the compiled kernel where the key matches Triton's specialisation;
launch_fitting_shared_memory: fewer pipelining stages where a compiled kernel needs more shared memory than the GPU
has, remembered per kernel and constexprs."""
import pytest

triton = pytest.importorskip("triton")
import torch  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from ssm_kernels import _triton_launch  # noqa: E402


class FakeKernel:
    """kernel[grid](*args, num_stages=s, **kw) that needs `fits` stages or fewer, recording every try."""

    def __init__(self, fits):
        self.fits, self.tries = fits, []

    def __getitem__(self, grid):
        def launch(*args, num_stages, **kwargs):
            self.tries.append(num_stages)
            if num_stages > self.fits:
                raise OutOfResources(100 * num_stages, 100 * self.fits, "shared memory")
            return (grid, args, num_stages, kwargs)
        return launch


def test_default_stages_when_they_fit(monkeypatch):
    monkeypatch.setattr(_triton_launch, "_fitting_stages", {})
    kernel = FakeKernel(fits=3)
    assert _triton_launch.launch_fitting_shared_memory(kernel, (2,), "a", BLOCK=64, num_warps=4) == \
        ((2,), ("a",), 3, dict(BLOCK=64, num_warps=4))
    assert kernel.tries == [3]


def test_fewer_stages_remembered_per_constexprs(monkeypatch):
    monkeypatch.setattr(_triton_launch, "_fitting_stages", {})
    kernel = FakeKernel(fits=1)
    assert _triton_launch.launch_fitting_shared_memory(kernel, (1,), BLOCK=128)[2] == 1
    assert _triton_launch.launch_fitting_shared_memory(kernel, (1,), BLOCK=128)[2] == 1
    assert kernel.tries == [3, 2, 1, 1]  # the second call starts where the first one fitted
    kernel.fits = 3
    assert _triton_launch.launch_fitting_shared_memory(kernel, (1,), BLOCK=32)[2] == 3  # other tiles: default


def test_given_stages_are_the_most_tried(monkeypatch):
    """num_stages=2: launched at 2 where it fits, at fewer where not, and remembered apart from the default's."""
    monkeypatch.setattr(_triton_launch, "_fitting_stages", {})
    kernel = FakeKernel(fits=3)
    assert _triton_launch.launch_fitting_shared_memory(kernel, (1,), BLOCK=64, num_stages=2)[2] == 2
    assert _triton_launch.launch_fitting_shared_memory(kernel, (1,), BLOCK=64)[2] == 3
    kernel.fits = 1
    assert _triton_launch.launch_fitting_shared_memory(kernel, (1,), BLOCK=32, num_stages=2)[2] == 1
    assert kernel.tries == [2, 3, 2, 1]


def test_nothing_fits_raises(monkeypatch):
    monkeypatch.setattr(_triton_launch, "_fitting_stages", {})
    with pytest.raises(OutOfResources):
        _triton_launch.launch_fitting_shared_memory(FakeKernel(fits=0), (1,), BLOCK=1024)


# --- launch: repeat launches straight to the compiled kernel ---------------------------------------------------
class FakeCompiled:
    """A compiled kernel: run(grid x, y, z, stream, function, packed_metadata, metadata, hooks..., *args)."""
    function, packed_metadata = "function", "packed"

    def __init__(self):
        self.runs = []

    def run(self, *launch_args):
        self.runs.append(launch_args)


class FakeJIT(JITFunction):
    """A JITFunction whose kernel[grid] records the slow launches and returns one compiled kernel; its binder
    binds (a, b, c=7, BLOCK constexpr) as Triton's does: every parameter in signature order."""

    def __init__(self):  # no triton.jit: nothing to parse
        self.slow, self.compiled = [], FakeCompiled()
        self.pre_run_hooks, self.used_global_vals = [], {}

        def binder(a, b, c=7, BLOCK=None, **options):
            return dict(a=a, b=b, c=c, BLOCK=BLOCK), [], options
        self.device_caches = {0: (None, None, None, None, binder)}

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.slow.append((grid, args, kwargs))
            return self.compiled
        return run


@pytest.fixture
def direct(monkeypatch):
    """launch with the direct path on (its Triton version checked natively) on a CPU-only machine."""
    monkeypatch.setattr(_triton_launch, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(_triton_launch, "_direct", {})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 1234, raising=False)
    return _triton_launch.launch


def test_repeat_launch_goes_to_the_compiled_kernel(direct):
    kernel, x = FakeJIT(), torch.zeros(8)
    assert direct(kernel, (3, 2), x, 5, BLOCK=64, num_warps=4) is kernel.compiled
    assert direct(kernel, (3, 2), x, 5, BLOCK=64, num_warps=4) is kernel.compiled
    assert kernel.slow == [((3, 2), (x, 5), dict(BLOCK=64, num_warps=4))]
    # every bound argument after *args (the default c, the constexpr) in signature order, no metadata or hooks
    assert kernel.compiled.runs == [(3, 2, 1, 1234, "function", "packed", None, None, None, x, 5, 7, 64)]


def test_every_specialisation_change_takes_the_slow_launch(direct):
    """Another int value, a bool for an int, a tensor of another alignment or dtype, other constexprs or
    options: Triton may compile another kernel, so each is a first launch of its own."""
    kernel, buffer = FakeJIT(), torch.zeros(64)
    calls = [((buffer, 16), dict(BLOCK=64)), ((buffer, 1), dict(BLOCK=64)), ((buffer, True), dict(BLOCK=64)),
             ((buffer[1:], 16), dict(BLOCK=64)), ((buffer.double(), 16), dict(BLOCK=64)),
             ((buffer, 16), dict(BLOCK=32)), ((buffer, 16), dict(BLOCK=64, num_warps=8))]
    for args, kwargs in calls:
        direct(kernel, (1,), *args, **kwargs)
    assert len(kernel.slow) == len(calls) and kernel.compiled.runs == []
    for args, kwargs in calls:
        direct(kernel, (1,), *args, **kwargs)
    assert len(kernel.slow) == len(calls) and len(kernel.compiled.runs) == len(calls)
    direct(kernel, (1,), buffer, 16.0, BLOCK=64)  # not the int 16's kernel (16.0 == 16 as a key)
    assert len(kernel.slow) == len(calls) + 1
    direct(kernel, (1,), buffer, 2.5, BLOCK=64)  # floats: keyed by type (Triton does not specialise them)
    assert len(kernel.slow) == len(calls) + 1


def test_slow_launch_for_what_it_cannot_key(direct, monkeypatch):
    """Tensors as kwargs, unknown argument types, callable grids, launch hooks (profilers) and changed globals
    always take kernel[grid]."""
    from triton import knobs
    kernel, x = FakeJIT(), torch.zeros(8)
    for _ in range(2):
        direct(kernel, (1,), x, 1, c=x, BLOCK=64)
        direct(kernel, (1,), x, [1], BLOCK=64)
        direct(kernel, lambda meta: (1,), x, 1, BLOCK=64)
    assert len(kernel.slow) == 6 and kernel.compiled.runs == []
    direct(kernel, (1,), x, 1, BLOCK=64)
    hook = knobs.runtime.launch_enter_hook
    if hasattr(hook, "calls"):
        monkeypatch.setattr(hook, "calls", [print])
    else:
        monkeypatch.setattr(knobs.runtime, "launch_enter_hook", print)
    direct(kernel, (1,), x, 1, BLOCK=64)
    assert len(kernel.slow) == 8
    monkeypatch.undo()


def test_changed_global_takes_the_slow_launch(direct):
    kernel, x = FakeJIT(), torch.zeros(8)
    scope = {"LIMIT": 4}
    kernel.used_global_vals = {("LIMIT", 0): (4, scope)}
    direct(kernel, (1,), x, 1, BLOCK=64)
    direct(kernel, (1,), x, 1, BLOCK=64)
    scope["LIMIT"] = 5
    direct(kernel, (1,), x, 1, BLOCK=64)
    assert len(kernel.slow) == 2 and len(kernel.compiled.runs) == 1


def test_direct_cache_is_bounded(direct, monkeypatch):
    monkeypatch.setattr(_triton_launch, "DIRECT_CACHE_SIZE", 3)
    kernel, x = FakeJIT(), torch.zeros(8)
    for n in range(5):
        direct(kernel, (1,), x, n, BLOCK=64)
    assert len(_triton_launch._direct) == 2  # cleared when the fourth came
