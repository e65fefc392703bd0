"""Shared fixtures. On a machine without a CUDA GPU, Triton kernels run through the interpreter:
TRITON_INTERPRET=1 must be set before any @triton.jit function is defined, so it is set here, at the
start of the session, before the package's Triton modules are imported."""
import os
import zlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ssm_kernels import _dispatch  # noqa: E402
from ssm_kernels._utils import set_poison_outputs  # noqa: E402

from tests import durations  # noqa: E402
from tests.helpers import TRITON_DEVICE  # noqa: E402


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every output buffer a kernel backend allocates starts as NaN, so unwritten elements fail."""
    previous = set_poison_outputs(True)
    yield
    set_poison_outputs(previous)


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Fresh but reproducible random inputs per test (seeded from the test's name)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def deterministic_mode():
    """torch.use_deterministic_algorithms(True) inside the test (warn_only: torch ops without a deterministic
    version only warn), in which the kernels' backwards sum with torch instead of atomics."""
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(previous, warn_only=warn_only)


@pytest.fixture
def triton_device():
    """The device to run Triton kernels on; skips (with the reason) when Triton cannot run at all."""
    if not _dispatch.triton_importable():
        pytest.skip("Triton is not installed")
    if TRITON_DEVICE == "cpu" and not _dispatch.triton_interpreter_on():
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    return torch.device(TRITON_DEVICE)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run the tests marked slow on a CPU-only machine too")
    parser.addoption("--slowest-first", action="store_true",
                     help="order tests by their recorded native durations for xdist workers (tests/durations.py)")


def pytest_configure(config):
    """Under pytest-xdist each worker takes its share of the cores for torch's CPU threads (unless OMP_NUM_THREADS
    says otherwise): workers that each run one thread per core oversubscribe the cores, and ops that spin-wait
    then run many times slower."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow on a CPU: runs natively on a GPU, or here with --run-slow")
    run_slow = HAS_CUDA or config.getoption("--run-slow")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
    if config.getoption("--slowest-first"):
        workers = getattr(config, "workerinput", {}).get("workercount", 1)  # the same on every xdist worker
        items[:] = durations.slowest_first(items, [item.nodeid for item in items], durations.load(), workers)


_TEST_LOG = os.environ.get("SSM_TEST_LOG")  # a file: one line per finished test, written as it finishes


def pytest_runtest_logreport(report):
    """With SSM_TEST_LOG set, record each test's outcome, duration and failure as soon as it is known (in the
    xdist controller too), so that a run stopped by a time limit still says what failed and what was slow."""
    if not _TEST_LOG or os.environ.get("PYTEST_XDIST_WORKER") or (report.when != "call" and report.passed):
        return  # (an xdist worker's reports reach the controller, which writes them)
    line = f"{report.outcome}\t{report.when}\t{report.duration:.1f}\t{report.nodeid}"
    with open(_TEST_LOG, "a") as log:
        log.write(line + "\n")
        if report.failed:
            log.write("".join("    " + l + "\n" for l in str(report.longrepr).splitlines()[-40:]))
