"""fftconv: the FFT path against the direct-sum reference, s4's bidirectional convention, validation."""
import pytest
import torch
import torch.nn.functional as F

from ssm_kernels import _dispatch
from ssm_kernels.fftconv import fftconv
from ssm_kernels.fftconv.pytorch import fft_length
from ssm_kernels.fftconv.reference import fftconv_ref
from ssm_kernels.testing import assert_close
from tests.helpers import backend_device, check_parity

BACKENDS = list(_dispatch.implemented_backends("fftconv"))


def make_inputs(batch, heads, length, taps, dtype, device, *, bidirectional=False, skip=True, gates=True,
                transposed=False):
    if transposed:
        u = torch.randn(batch, length, heads, device=device).to(dtype).transpose(1, 2)
    else:
        u = torch.randn(batch, heads, length, device=device).to(dtype)
    kshape = (2, heads, taps) if bidirectional else (heads, taps)
    return {
        "u": u,
        "k": (torch.randn(kshape, device=device) / taps ** 0.5).to(dtype),
        "D": torch.randn(heads, device=device).to(dtype) if skip else None,
        "pregate": torch.randn(batch, heads, length, device=device).to(dtype) if gates else None,
        "postgate": torch.randn(batch, heads, length, device=device).to(dtype) if gates else None,
    }


def run(backend):
    return lambda **kw: fftconv(**kw, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("length,taps", [(1, 1), (7, 7), (63, 20), (130, 130), (1025, 64)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_reference(backend, dtype, length, taps, bidirectional):
    inputs = make_inputs(2, 6, length, taps, dtype, backend_device(backend), bidirectional=bidirectional)
    check_parity(run(backend), fftconv_ref, inputs, dtype, ["u", "k", "D", "pregate", "postgate"],
                 bidirectional=bidirectional)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch,length,taps,bidirectional,dtype", [
    (3, 1000, 333, False, torch.bfloat16), (1, 4095, 4095, False, torch.bfloat16),
    (3, 2049, 1000, True, torch.bfloat16), (1, 2047, 2047, False, torch.float32), (2, 2048, 9, True, torch.float16)])
def test_long_odd_lengths(backend, batch, length, taps, bidirectional, dtype):
    """Lengths just past a power of two and up to the Triton kernel's longest per dtype, odd batch (a lone
    last row)."""
    inputs = make_inputs(batch, 2, length, taps, dtype, backend_device(backend), bidirectional=bidirectional)
    check_parity(run(backend), fftconv_ref, inputs, dtype, ["u", "k", "D", "pregate", "postgate"],
                 bidirectional=bidirectional)


@pytest.mark.parametrize("length,taps,bidirectional,dtype", [
    (8193, 8193, True, torch.bfloat16), (16384, 5000, False, torch.float32), (12000, 12000, True, torch.float16)])
def test_cuda_longest(length, taps, bidirectional, dtype):
    """The CUDA kernel's longest sequences (from L 8193 the backward sums the kernel gradient's spectrum in a global
    scratch slot), against the torch backend in fp64 (itself checked against the direct sum above; the direct sum at
    these lengths takes minutes)."""
    inputs = make_inputs(1, 3, length, taps, dtype, backend_device("cuda"), bidirectional=bidirectional)

    def torch_fp64(**kw):
        kw = {name: t.double() if isinstance(t, torch.Tensor) else t for name, t in kw.items()}
        return fftconv(**kw, backend="torch")

    check_parity(run("cuda"), torch_fp64, inputs, dtype, ["u", "k", "D", "pregate", "postgate"],
                 bidirectional=bidirectional)


@pytest.mark.parametrize("length,bidirectional,dtype", [(1000, False, torch.bfloat16), (4095, True, torch.float32)])
def test_cuda_backward_with_the_saved_ungated_output(monkeypatch, length, bidirectional, dtype):
    """The CUDA forward saving its output before the postgate at every length (SAVE_UNGATED_FROM 1) and the
    backward reading it: against the direct sum, every gradient (tests/fftconv/test_cuda_model.py checks the
    same row code on the CPU; this, the launch)."""
    import importlib
    monkeypatch.setattr(importlib.import_module("ssm_kernels.fftconv.cuda"), "SAVE_UNGATED_FROM", 1)
    inputs = make_inputs(2, 3, length, length // 3, dtype, backend_device("cuda"), bidirectional=bidirectional)
    check_parity(run("cuda"), fftconv_ref, inputs, dtype, ["u", "k", "D", "pregate", "postgate"],
                 bidirectional=bidirectional)


def assert_block_sizes_agree(monkeypatch, run, inputs, thread_counts):
    """run(**inputs, bidirectional=True) with the CUDA backend's BLOCK_THREADS at each count: y and every
    gradient bitwise equal to the first count's (dD up to the order of its block sum). Every thread count
    computes each value with the same operations, so a difference is a race between a block's threads."""
    import importlib
    cuda_backend = importlib.import_module("ssm_kernels.fftconv.cuda")
    names = [n for n in ("u", "k", "D", "pregate", "postgate") if inputs[n] is not None]
    grad = torch.randn_like(inputs["u"])
    results = []
    for threads in thread_counts:
        monkeypatch.setattr(cuda_backend, "BLOCK_THREADS", threads)
        leaves = {n: t if t is None else t.detach().requires_grad_(n in names) for n, t in inputs.items()}
        y = run(**leaves, bidirectional=True)
        results.append([y, *torch.autograd.grad(y, [leaves[n] for n in names], grad)])
    for threads, other in zip(thread_counts[1:], results[1:]):
        for name, first, this in zip(["y"] + names, results[0], other):
            if name == "D":
                assert_close(this, first, torch.float32)
            else:
                assert torch.equal(first, this), f"{name}: {threads} threads differ from {thread_counts[0]}"


@pytest.mark.parametrize("length", [100, 4096, 9000])
def test_cuda_threads_agree(monkeypatch, length):
    """Block sizes and a repeated call agree bitwise on the GPU: the native race check (the CPU model's threads
    run at barriers, not in the GPU's memory model)."""
    inputs = make_inputs(3, 4, length, length // 2, torch.bfloat16, backend_device("cuda"), bidirectional=True)
    assert_block_sizes_agree(monkeypatch, run("cuda"), inputs, (32, 128, 512, 512))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_length_limit(dtype):
    """The automatic choice runs longer sequences on torch; asking Triton for one says why it cannot."""
    from ssm_kernels.fftconv import MAX_TRITON_LENGTH
    longest = MAX_TRITON_LENGTH[dtype]
    u = torch.randn(1, 2, longest + 1, device=backend_device("triton")).to(dtype)
    with pytest.raises(RuntimeError, match=f"L <= {longest}"):
        fftconv(u, torch.randn(2, 3, device=u.device), backend="triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_no_extras(backend):
    inputs = make_inputs(2, 8, 257, 100, torch.float32, backend_device(backend), skip=False, gates=False,
                         transposed=True)
    assert not inputs["u"].is_contiguous()
    check_parity(run(backend), fftconv_ref, inputs, torch.float32, ["u", "k"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_precision_parameters(backend):
    """fp32 kernel and skip with bf16 activations: y stays bf16, k and D get fp32 gradients."""
    inputs = make_inputs(2, 6, 63, 63, torch.bfloat16, backend_device(backend))
    inputs["k"], inputs["D"] = inputs["k"].float(), inputs["D"].float()
    assert fftconv(**inputs).dtype == torch.bfloat16
    check_parity(run(backend), fftconv_ref, inputs, torch.bfloat16, ["u", "k", "D", "pregate", "postgate"])


def test_bidirectional_follows_s4():
    """state-spaces/s4: k = pad(k0, (0, L)) + pad(k1.flip(-1), (L, 0)), circular FFT convolution of size 2L."""
    length = 33
    u, k = torch.randn(2, 4, length, dtype=torch.float64), torch.randn(2, 4, length, dtype=torch.float64)
    kk = F.pad(k[0], (0, length)) + F.pad(k[1].flip(-1), (length, 0))
    s4 = torch.fft.irfft(torch.fft.rfft(u, n=2 * length) * torch.fft.rfft(kk, n=2 * length), n=2 * length)
    assert_close(fftconv(u, k, bidirectional=True), s4[..., :length], torch.float64)


def test_short_kernel_equals_zero_padded():
    u, k = torch.randn(2, 4, 50), torch.randn(2, 4, 9)
    assert_close(fftconv(u, k, bidirectional=True), fftconv(u, F.pad(k, (0, 41)), bidirectional=True),
                 torch.float32)
    assert_close(fftconv(u, k[0]), fftconv(u, F.pad(k[0], (0, 41))), torch.float32)


def test_fft_length():
    assert [fft_length(n) for n in (1, 2, 7, 13, 2049, 4096)] == [1, 2, 8, 15, 2160, 4096]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradcheck(bidirectional):
    inputs = make_inputs(2, 3, 9, 5, torch.float64, "cpu", bidirectional=bidirectional)
    names = ["u", "k", "D", "pregate", "postgate"]
    args = [inputs[n].requires_grad_() for n in names]
    assert torch.autograd.gradcheck(lambda u, k, d, p, q: fftconv(u, k, d, bidirectional, p, q), args)


def test_empty_sequence():
    u = torch.randn(2, 3, 0, requires_grad=True)
    assert fftconv(u, torch.randn(3, 4)).shape == (2, 3, 0)


def test_compile_fullgraph():
    inputs = make_inputs(2, 4, 40, 40, torch.float32, "cpu", bidirectional=True)
    fn = torch.compile(lambda u, k, d, p, q: fftconv(u, k, d, True, p, q), fullgraph=True, backend="aot_eager")
    args = [inputs[n] for n in ("u", "k", "D", "pregate", "postgate")]
    assert_close(fn(*args), fftconv_ref(*args[:3], True, *args[3:]), torch.float32)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(u=torch.randn(2, 8)), ValueError, r"u must have shape \(B, H, L\)"),
    (dict(k=torch.randn(8, 17)), ValueError, r"kernel length Lk\) must be in \[1, 16\], got 17"),
    (dict(k=torch.randn(8, 0)), ValueError, r"kernel length Lk\) must be in \[1, 16\], got 0"),
    (dict(k=torch.randn(7, 16)), ValueError, r"k must have shape \(H, Lk\) = \(8, Lk\)"),
    (dict(k=torch.randn(8, 16), bidirectional=True), ValueError, r"k must have shape \(2, H, Lk\) = \(2, 8, Lk\)"),
    (dict(D=torch.randn(9)), ValueError, r"D must have shape \(H,\) = \(8,\)"),
    (dict(pregate=torch.randn(2, 8, 15)), ValueError, r"pregate must have shape \(B, H, L\) = \(2, 8, 16\)"),
    (dict(postgate=torch.randn(1, 8, 16)), ValueError, r"postgate must have shape \(B, H, L\) = \(2, 8, 16\)"),
    (dict(u=torch.randn(2, 8, 16, dtype=torch.complex64)), TypeError, "u must have dtype"),
    (dict(k=[1.0]), TypeError, "k must be a torch.Tensor"),
    (dict(backend="cpp"), RuntimeError, "no 'cpp' backend"),
])
def test_validation(kwargs, error, match):
    args = dict(u=torch.randn(2, 8, 16), k=torch.randn(8, 16))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fftconv(**args)
