"""Backend registry: automatic choice, overrides and their precedence, errors, fallback logging."""
import logging
import subprocess
import sys

import pytest
import torch

import ssm_kernels
from ssm_kernels import _dispatch
from ssm_kernels._autograd import needs_grad
from ssm_kernels._dispatch import BackendUnavailableError, Implementation

HOPPER = (9, 0)  # H100 and H200: a compute capability the dispatch table holds rules for


@pytest.fixture
def fake_op(monkeypatch):
    """causal_conv1d's registry row replaced by three fake implementations that report their name."""
    calls = {}

    def make(backend, problem=None):
        impl = Implementation("causal_conv1d", backend, "unused", "unused",
                              supports=(lambda d, t, f: problem) if problem else None)
        impl._fn = lambda: backend
        calls[backend] = impl
        return impl

    row = {"torch": make("torch"), "triton": make("triton"), "cuda": make("cuda")}
    monkeypatch.setitem(_dispatch._REGISTRY, "causal_conv1d", row)
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})
    monkeypatch.setattr(_dispatch, "backend_problem", lambda backend, device, extension=None: None)
    monkeypatch.setattr(_dispatch, "_capability", lambda device: HOPPER)
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    return row


def pick(**kwargs):
    device = kwargs.pop("device", torch.device("cuda"))
    return _dispatch.select("causal_conv1d", device, **kwargs)()


def test_cpu_tensors_choose_torch(fake_op):
    assert pick(device=torch.device("cpu")) == "torch"


def test_cuda_tensors_follow_measured_order(fake_op, monkeypatch):
    monkeypatch.setitem(_dispatch.MEASURED_ORDER[HOPPER], "causal_conv1d", [
        _dispatch.Rule(order=("triton", "cuda", "torch"), dtypes=(torch.bfloat16,), source="test"),
        _dispatch.Rule(order=("cuda", "torch"), source="test")])
    assert pick(dtype=torch.bfloat16) == "triton"
    assert pick(dtype=torch.float32) == "cuda"


def test_unmeasured_gpu_architecture_uses_the_default_order(fake_op, monkeypatch):
    monkeypatch.setitem(_dispatch.MEASURED_ORDER[HOPPER], "causal_conv1d", [
        _dispatch.Rule(order=("triton", "cuda", "torch"), source="test")])
    assert pick() == "triton"
    monkeypatch.setattr(_dispatch, "_capability", lambda device: (8, 6))
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})
    assert pick() == _dispatch.DEFAULT_ORDER.order[0] == "cuda"
    order, reason = _dispatch.automatic_order("causal_conv1d", torch.device("cuda"), torch.float32)
    assert order == _dispatch.DEFAULT_ORDER.order and "compute capability 8.6" in reason


def test_size_classes(fake_op, monkeypatch):
    monkeypatch.setitem(_dispatch.MEASURED_ORDER[HOPPER], "causal_conv1d", [
        _dispatch.Rule(order=("triton", "torch"), max_size=1000, source="small"),
        _dispatch.Rule(order=("cuda", "torch"), source="large")])
    assert pick(size=10) == "triton"
    assert pick(size=10**6) == "cuda"


def test_grad_mode_rules(fake_op, monkeypatch):
    monkeypatch.setitem(_dispatch.MEASURED_ORDER[HOPPER], "causal_conv1d", [
        _dispatch.Rule(order=("triton", "torch"), grad=True, source="training"),
        _dispatch.Rule(order=("cuda", "torch"), grad=False, source="inference")])
    assert pick(grad=True) == "triton"
    assert pick(grad=False) == "cuda"
    assert pick() == "triton"  # unknown: the first rule


@pytest.mark.parametrize("op", _dispatch.OPS)
def test_gpu_kernels_refuse_fp64_inputs(op):
    """fp64 tensors on a GPU run on the torch backend: every Triton and CUDA backend must say it cannot take
    them, or dispatch picks it and the kernel raises inside (causal_conv1d's CUDA backend once did)."""
    for backend in ("triton", "cuda"):
        impl = _dispatch._REGISTRY[op].get(backend)
        if impl is not None:
            assert impl.supports is not None, (op, backend)
            problem = impl.supports(torch.device("cuda"), torch.float64, {})
            assert problem and "fp64" in problem, (op, backend, problem)


def test_needs_grad():
    x, w = torch.randn(2), torch.randn(2, requires_grad=True)
    assert not needs_grad(x, None)
    assert needs_grad(x, w)
    with torch.no_grad():
        assert not needs_grad(x, w)


def test_real_op_passes_grad_mode(monkeypatch):
    seen = []
    real_select = _dispatch.select

    def spy(op, device, **kwargs):
        seen.append(kwargs.get("grad"))
        return real_select(op, device, **kwargs)
    monkeypatch.setattr(_dispatch, "select", spy)
    x, w = torch.randn(1, 2, 5), torch.randn(2, 4, requires_grad=True)
    ssm_kernels.causal_conv1d(x, w)
    with torch.no_grad():
        ssm_kernels.causal_conv1d(x, w)
    assert seen == [True, False]


def test_unrunnable_preference_falls_back_and_logs_once(fake_op, monkeypatch, caplog):
    fake_op["cuda"].supports = lambda d, t, f: "width 9 is too wide"
    with caplog.at_level(logging.WARNING, logger="ssm_kernels"):
        assert pick() == "triton"
        _dispatch._RESOLVED.clear()  # a fresh resolution must not log again
        assert pick() == "triton"
    messages = [r.getMessage() for r in caplog.records if "width 9" in r.getMessage()]
    assert len(messages) == 1 and "skipping the cuda backend" in messages[0]


def test_failed_load_falls_back_and_is_remembered(fake_op, monkeypatch):
    def broken():
        raise OSError("nvcc exploded")
    monkeypatch.setattr(fake_op["cuda"], "load", broken)
    monkeypatch.setattr(_dispatch, "_LOAD_FAILURES", {})
    assert pick() == "triton"
    assert "nvcc exploded" in _dispatch.explain("causal_conv1d", "cuda")[1]
    with pytest.raises(BackendUnavailableError, match="nvcc exploded"):
        pick(backend="cuda")


def test_explicit_backend_that_cannot_run_raises(fake_op):
    fake_op["triton"].supports = lambda d, t, f: "no GPU"
    with pytest.raises(BackendUnavailableError, match="backend 'triton' .*cannot run: no GPU"):
        pick(backend="triton")


def test_precedence_argument_context_env(fake_op, monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    assert pick() == "triton"
    with ssm_kernels.use_backend("torch"):
        assert pick() == "torch"
        with ssm_kernels.use_backend({"causal_conv1d": "cuda"}):
            assert pick() == "cuda"
            assert pick(backend="triton") == "triton"
        assert pick() == "torch"
    monkeypatch.setenv(_dispatch.ENV_VAR, "selective_scan=torch, causal_conv1d=cuda")
    assert pick() == "cuda"


def test_override_for_an_op_without_that_backend_chooses_automatically(fake_op, caplog):
    del fake_op["triton"]
    with ssm_kernels.use_backend("triton"), caplog.at_level(logging.WARNING, logger="ssm_kernels"):
        assert pick() == "cuda"
    assert any("does not implement" in r.getMessage() for r in caplog.records)


def test_override_that_cannot_run_raises(fake_op):
    fake_op["cuda"].supports = lambda d, t, f: "no GPU"
    with ssm_kernels.use_backend("cuda"), pytest.raises(BackendUnavailableError, match="use_backend"):
        pick()


@pytest.mark.parametrize("spec,match", [("tpu", "unknown backend 'tpu'"), ("foo=torch", "unknown op 'foo'")])
def test_bad_override_specs(spec, match, monkeypatch):
    with pytest.raises(ValueError, match=match):
        with ssm_kernels.use_backend(spec):
            pass
    monkeypatch.setenv(_dispatch.ENV_VAR, spec)
    with pytest.raises(ValueError, match=f"{_dispatch.ENV_VAR}: {match}"):
        ssm_kernels.causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 2))


def test_record_backends_counts_calls():
    with ssm_kernels.record_backends() as used:
        ssm_kernels.causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 2))
        ssm_kernels.causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 2))
    assert used == {"causal_conv1d": {"torch": 2}}


def test_available_backends_reports_reasons():
    report = ssm_kernels.available_backends()
    assert set(report) == set(_dispatch.OPS)
    assert report["causal_conv1d"]["torch"] is None
    if not torch.cuda.is_available():
        assert "CUDA tensors" in report["causal_conv1d"]["cuda"]
    with pytest.raises(ValueError, match="unknown op"):
        ssm_kernels.available_backends("nope")


def test_import_is_light():
    code = ("import sys, torch, ssm_kernels; "
            "assert 'triton' not in sys.modules, 'triton imported'; "
            "assert 'torch.utils.cpp_extension' not in sys.modules, 'cpp_extension imported'; "
            "assert not torch.cuda.is_initialized(), 'CUDA initialised'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_report_runs():
    run = subprocess.run([sys.executable, "-m", "ssm_kernels"], check=True, capture_output=True, text=True)
    out = run.stdout
    assert "torch " in out and "causal_conv1d: implemented backends: torch, triton, cuda" in out
    # the report builds nothing, so torch's extension machinery (which warns on import where there is a CUDA
    # toolkit but no GPU) stays unimported: nothing on stderr
    assert "cpp_extension" not in run.stderr and "Warning" not in run.stderr, run.stderr
    assert "cpu  float32  -> torch" in out
