"""launch_fitting_shared_memory: fewer pipelining stages where a compiled kernel needs more shared memory
than the GPU has, remembered per kernel and constexprs."""
import pytest

triton = pytest.importorskip("triton")
from triton.runtime.errors import OutOfResources  # noqa: E402

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
