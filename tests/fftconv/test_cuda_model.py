"""The CUDA fftconv's row code on the CPU (cuda_model.cpp: csrc/fftconv's headers compiled for the host, a
block of one thread or of several OS threads at barriers) through ssm_kernels/fftconv/cuda.py, against the
direct-sum reference: every output and gradient, dtypes, lengths around the transform sizes, bidirectional,
gates of another dtype, strides; and blocks of several threads against one. What the model cannot see (the
launch, warp shuffles) is for the native tests in test_fftconv.py."""
import importlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ssm_kernels import _build_lock, _cuda_ext
from ssm_kernels.fftconv import MAX_CUDA_LENGTH
from ssm_kernels.fftconv.reference import fftconv_ref
from tests.fftconv.test_fftconv import assert_block_sizes_agree, make_inputs
from tests.helpers import check_parity

cuda_backend = importlib.import_module("ssm_kernels.fftconv.cuda")
GRADS = ["u", "k", "D", "pregate", "postgate"]


@pytest.fixture(scope="module")
def model(monkeypatch_module):
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler to build the CPU model")
    from torch.utils import cpp_extension
    build_dir = _cuda_ext.cache_root() / f"fftconv-cpu-model-torch{torch.__version__}".replace("+", "_")
    with _build_lock.exclusive_build(build_dir, _cuda_ext.BUILD_WAIT_S):
        module = cpp_extension.load(
            name="fftconv_cuda_model", sources=[str(Path(__file__).with_name("cuda_model.cpp"))],
            build_directory=str(build_dir), extra_include_paths=[str(_cuda_ext.csrc_dir())],
            extra_cflags=["-O2"])
    monkeypatch_module.setattr(cuda_backend, "_kernels", lambda: module)
    monkeypatch_module.setattr(cuda_backend, "BLOCK_THREADS", 1)  # a block of one thread unless a test says
    return module


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def run(**inputs):
    return cuda_backend.fftconv_cuda(inputs["u"], inputs["k"], inputs["D"], inputs["bidirectional"],
                                     inputs["pregate"], inputs["postgate"])


def reference(**inputs):
    return fftconv_ref(**inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("length,taps", [(1, 1), (7, 5), (33, 33), (130, 64), (1025, 1025)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_reference(model, dtype, length, taps, bidirectional):
    inputs = make_inputs(3, 2, length, taps, dtype, "cpu", bidirectional=bidirectional)
    check_parity(run, reference, inputs, dtype, GRADS, bidirectional=bidirectional)


@pytest.mark.parametrize("batch,length,taps,bidirectional", [
    (1, 4095, 4095, False), (2, 4096, 300, True), (1, 8193, 8193, True), (1, MAX_CUDA_LENGTH, 1000, False)])
def test_long(model, batch, length, taps, bidirectional):
    """Up to the longest the kernel takes, through pass plans ending in radix 16, 2 and 4 (M = 4096, 8192,
    16384) and odd lengths just past a transform size."""
    inputs = make_inputs(batch, 1, length, taps, torch.float32, "cpu", bidirectional=bidirectional)
    check_parity(run, reference, inputs, torch.float32, GRADS, bidirectional=bidirectional)


@pytest.fixture
def acc_in_scratch(model):
    """The model's backward as the kernel runs it when its two buffers outgrow shared memory (M = 16384)."""
    model.set_acc_in_scratch(True)
    yield
    model.set_acc_in_scratch(False)


@pytest.mark.parametrize("length,taps,bidirectional,gates", [
    (7, 5, False, True), (130, 64, True, True), (1025, 1025, False, False), (4096, 300, True, True)])
def test_backward_with_acc_in_scratch(model, acc_in_scratch, length, taps, bidirectional, gates):
    """The kernel gradient's spectrum summed in frequency order (as in global scratch) and reordered into slot order
    for its inverse: the same gradients, with and without a postgate."""
    inputs = make_inputs(3, 2, length, taps, torch.float32, "cpu", bidirectional=bidirectional, gates=gates)
    names = [n for n in GRADS if inputs[n] is not None]
    check_parity(run, reference, inputs, torch.float32, names, bidirectional=bidirectional)


@pytest.mark.parametrize("dtype,length,bidirectional,in_scratch", [
    (torch.float32, 130, True, False), (torch.bfloat16, 1025, False, False), (torch.float32, 1025, False, True)])
def test_backward_with_the_saved_ungated_output(model, monkeypatch, dtype, length, bidirectional, in_scratch):
    """A forward that records a gradient with a postgate from SAVE_UNGATED_FROM positions on saves its output
    before the postgate, and the backward takes dpostgate from it instead of recomputing the convolution (in both
    backward schemes): every output and gradient against the reference. Asserted per call: saved exactly there
    (not without a gradient, not without a postgate, not below the length)."""
    monkeypatch.setattr(cuda_backend, "SAVE_UNGATED_FROM", length)
    saved = []
    real = model.fftconv_fwd

    class Spy:
        def __getattr__(self, name):
            return getattr(model, name)

        def fftconv_fwd(self, *args):
            saved.append(args[-2] is not None)
            return real(*args)
    monkeypatch.setattr(cuda_backend, "_kernels", lambda: Spy())
    model.set_acc_in_scratch(in_scratch)
    try:
        inputs = make_inputs(2, 3, length, length // 2, dtype, "cpu", bidirectional=bidirectional)
        check_parity(run, reference, inputs, dtype, GRADS, bidirectional=bidirectional)
        assert saved[0] and not any(saved[1:])  # check_parity's first call records the gradients
        saved.clear()
        run(**dict(inputs, bidirectional=bidirectional, u=inputs["u"].requires_grad_()))
        run(**dict(inputs, bidirectional=bidirectional, postgate=None, u=inputs["u"].requires_grad_()))
        run(**dict(inputs, bidirectional=bidirectional, u=inputs["u"][..., :-1].detach().requires_grad_(),
                   pregate=inputs["pregate"][..., :-1], postgate=inputs["postgate"][..., :-1]))
        assert saved == [True, False, False]
    finally:
        model.set_acc_in_scratch(False)


def test_v_spectrum_saved_only_for_a_gradient(model, monkeypatch):
    """A forward that autograd records writes V, the transform of v = u * pregate, (B, H, M, 2) fp32 in frequency
    order, and the backward reads it; one that it does not record (no_grad, no input requiring grad) writes none."""
    saved, given = [], []
    real_fwd, real_bwd = model.fftconv_fwd, model.fftconv_bwd

    class Spy:
        def __getattr__(self, name):
            return getattr(model, name)

        def fftconv_fwd(self, *args):
            saved.append(args[-1])
            return real_fwd(*args)

        def fftconv_bwd(self, *args):
            given.append(args[2])
            return real_bwd(*args)
    monkeypatch.setattr(cuda_backend, "_kernels", lambda: Spy())
    inputs = make_inputs(2, 3, 100, 40, torch.float32, "cpu")
    inputs["u"].requires_grad_()
    run(**dict(inputs, bidirectional=False)).sum().backward()
    v = inputs["u"].detach() * inputs["pregate"].detach()
    points = 1 << cuda_backend.log_points(100)  # M = 128: z_n = v_2n + i v_2n+1, zero-padded
    expected = torch.fft.fft(torch.complex(v[..., 0::2], v[..., 1::2]), n=points)
    assert saved[0].shape == (2, 3, points, 2) and given[0] is saved[0]
    torch.testing.assert_close(torch.view_as_complex(saved[0]), expected, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        run(**dict(inputs, bidirectional=False))
    detached = {name: t.detach() if isinstance(t, torch.Tensor) else t for name, t in inputs.items()}
    run(**dict(detached, bidirectional=False))
    assert saved[1] is None and saved[2] is None and len(given) == 1


def test_backward_makes_v_spectrum_where_the_forward_did_not(model):
    """The op called with save_v_spectrum False while autograd records it (fftconv_cuda never does): the backward
    makes V first, and every gradient is still the reference's."""
    inputs = make_inputs(2, 3, 77, 30, torch.float32, "cpu", bidirectional=True)

    def unsaved(**inputs):
        spectrum = cuda_backend.kernel_spectrum(inputs["k"].detach(), True, cuda_backend.log_points(77))
        return cuda_backend._run(inputs["u"], inputs["k"], inputs["D"], True, inputs["pregate"], inputs["postgate"],
                                 False, False, spectrum)[0]
    check_parity(unsaved, reference, inputs, torch.float32, GRADS, bidirectional=True)


@pytest.mark.parametrize("save_ungated", [False, True])
def test_opcheck_on_the_model(model, save_ungated):
    """torch.library.opcheck of the CUDA backend's custom op (schema, fakes, autograd registration, AOT dispatch)
    with the CPU model under it, the ungated output saved or not (test_custom_ops.py runs it on the GPU)."""
    from tests.test_custom_ops import fftconv_cuda_args
    torch.library.opcheck(torch.ops.ssm_kernels.fftconv_cuda_fwd.default, fftconv_cuda_args("cpu", save_ungated))


@pytest.mark.parametrize("skip,gates", [(False, False), (True, False), (False, True)])
def test_without_extras_and_strided(model, skip, gates):
    inputs = make_inputs(2, 5, 100, 37, torch.float32, "cpu", skip=skip, gates=gates, transposed=True)
    assert not inputs["u"].is_contiguous()
    names = [n for n in GRADS if inputs[n] is not None]
    check_parity(run, reference, inputs, torch.float32, names, bidirectional=False)


def test_gates_of_another_dtype(model):
    """bf16 u with fp32 gates and parameters: the kernels run fp32 copies; every gradient in its input's dtype."""
    inputs = make_inputs(2, 3, 77, 77, torch.bfloat16, "cpu")
    for name in ("k", "D", "pregate"):
        inputs[name] = inputs[name].float()
    check_parity(run, reference, inputs, torch.bfloat16, GRADS, bidirectional=False)


@pytest.mark.parametrize("threads", [4, 32])
@pytest.mark.parametrize("length,gates", [(100, True), (1000, False)])
@pytest.mark.parametrize("in_scratch", [False, True])
def test_threads_of_a_block_agree(model, monkeypatch, threads, length, gates, in_scratch):
    """Several threads per block, each taking its share of every loop and meeting the others at the barriers,
    compute what one thread computes, bitwise (dD up to the order of its block sum): the row code's barriers and
    division of work are complete (in both backward schemes: in_scratch, the acc_in_scratch fixture's)."""
    inputs = make_inputs(3, 2, length, length // 3, torch.float32, "cpu", bidirectional=True, gates=gates)
    model.set_acc_in_scratch(in_scratch)
    try:
        assert_block_sizes_agree(monkeypatch, run, inputs, (1, threads))
    finally:
        model.set_acc_in_scratch(False)


@pytest.mark.parametrize("log_m", range(1, cuda_backend.MAX_LOG_POINTS + 1))
def test_spectrum_slots(model, log_m):
    """Where the forward transform leaves frequency k: the kernels' bit-twiddling slot_of against the digit
    reversal of the pass plan written out (pass j's digit, from the low bits of k, at stride M / (R_0 ... R_j))."""
    slots = model.slots(log_m)
    k = torch.arange(1 << log_m)
    expected, low = torch.zeros_like(k), 0
    for bits in cuda_backend.pass_radix_logs(log_m):
        expected |= ((k >> low) & ((1 << bits) - 1)) << (log_m - low - bits)
        low += bits
    assert torch.equal(slots.long(), expected)
    assert torch.equal(slots.sort().values.long(), k)


def test_row_code_has_no_data_races(tmp_path):
    """race_check.cpp under ThreadSanitizer: threads of a block touch no buffer slot that another thread writes
    between the same two barriers (the exact version of test_threads_of_a_block_agree's check)."""
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        pytest.skip("no C++ compiler")
    binary = tmp_path / "race_check"
    build = subprocess.run([compiler, "-std=c++17", "-O1", "-g", "-fsanitize=thread", "-pthread",
                            f"-I{_cuda_ext.csrc_dir()}", str(Path(__file__).with_name("race_check.cpp")),
                            "-o", str(binary)], capture_output=True, text=True)
    if build.returncode != 0:
        if "sanitize" in build.stderr or "tsan" in build.stderr:
            pytest.skip(f"no ThreadSanitizer here: {build.stderr.strip().splitlines()[-1]}")
        raise AssertionError(build.stderr)
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    assert "ThreadSanitizer: data race" not in run.stderr, run.stderr[:4000]
    if run.returncode != 0 or run.stdout.count("done") != 12:
        pytest.skip(f"the ThreadSanitizer binary does not run here (rc {run.returncode}): {run.stderr[-300:]}")


def test_length_limit_matches_the_kernels():
    header = (_cuda_ext.csrc_dir() / "fftconv" / "fft_block.cuh").read_text()
    assert f"constexpr int kMaxLogPoints = {cuda_backend.MAX_LOG_POINTS};" in header
    assert MAX_CUDA_LENGTH == 1 << cuda_backend.MAX_LOG_POINTS
    assert cuda_backend.log_points(MAX_CUDA_LENGTH) == cuda_backend.MAX_LOG_POINTS
    assert [cuda_backend.log_points(n) for n in (1, 32, 33, 4096, 4097)] == [5, 5, 6, 12, 13]
