"""Triton backends whose kernels index with 32-bit offsets refuse calls that reach 2**31 elements:
an explicit request says why, automatic dispatch falls back to the torch backend."""
import importlib

import pytest
import torch

from ssm_kernels import _dispatch, _utils, gated_rmsnorm, ssd_chunk_scan
from ssm_kernels._dispatch import BackendUnavailableError

ssd_package = importlib.import_module("ssm_kernels.ssd_chunk_scan")  # the package: its name is also the function


def test_index_extent_follows_strides():
    t = torch.empty(4, 6)
    assert _utils.index_extent(t) == 24
    assert _utils.index_extent(t[:, ::2]) == 1 + 3 * 6 + 2 * 2  # last element reached: offset 22
    assert _utils.index_extent(t.t()) == 24
    assert _utils.index_extent(torch.empty(3, 1).expand(3, 1000)) == 3  # stride 0 reaches nothing new
    assert _utils.index_extent(None) == 0 and _utils.index_extent(torch.empty(0, 5)) == 0
    assert not _utils.beyond_int32_offsets(2**31 - 1, 5)
    assert _utils.beyond_int32_offsets(2**31)


def _ssd_meta(batch, length, heads, headdim, groups, dstate):
    meta = dict(device="meta")
    return (torch.empty(batch, length, heads, headdim, **meta), torch.empty(batch, length, heads, **meta),
            torch.empty(batch, length, groups, dstate, **meta), torch.empty(batch, length, groups, dstate, **meta))


@pytest.mark.parametrize("shape, beyond", [
    ((8, 65536, 64, 64, 1, 128), True),  # x alone has 2**31 elements
    ((4, 65536, 64, 64, 1, 128), False),  # 2**30: every buffer below 2**31
    ((1, 4096, 8, 64, 1, 2**19), True),  # the chunk states (B, nc + 1, H, P, N) pass 2**31
])
def test_ssd_bound(shape, beyond):
    x, dt, B, C = _ssd_meta(*shape)
    assert ssd_package._beyond_int32(x, dt, B, C, None, None, None, 256) is beyond


def test_supports_names_the_limit():
    problem = _dispatch.triton_int32_supports(torch.device("cuda"), torch.bfloat16, {"beyond_int32": True})
    assert "32-bit offsets" in problem
    assert _dispatch.triton_int32_supports(torch.device("cuda"), torch.bfloat16, {"beyond_int32": False}) is None


@pytest.mark.parametrize("op", ["ssd_chunk_scan", "gated_rmsnorm"])
def test_automatic_choice_falls_back_to_torch(op, monkeypatch):
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})
    monkeypatch.setattr(_dispatch, "backend_problem", lambda backend, device, extension=None: None)
    monkeypatch.setattr(_dispatch, "_capability", lambda device: (9, 0))  # where triton is measured first
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    row = _dispatch._REGISTRY[op]
    cuda = torch.device("cuda")
    assert _dispatch.select(op, cuda, dtype=torch.bfloat16, size=1, beyond_int32=False) is row["triton"].load()
    assert _dispatch.select(op, cuda, dtype=torch.bfloat16, size=1, beyond_int32=True) is row["torch"].load()


def test_explicit_triton_request_says_why(monkeypatch, triton_device):
    """A small limit stands in for 2**31 so that real calls cross it."""
    monkeypatch.setattr(_utils, "INT32_OFFSET_LIMIT", 100)
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})
    x, weight = torch.randn(2, 8, 16, device=triton_device), torch.ones(16, device=triton_device)  # 256 elements
    with pytest.raises(BackendUnavailableError, match="32-bit offsets"):
        gated_rmsnorm(x, weight, backend="triton")
    torch.testing.assert_close(gated_rmsnorm(x, weight), gated_rmsnorm(x, weight, backend="torch"))
    xs, dt, B, C = (torch.randn(1, 16, 2, 4, device=triton_device), torch.rand(1, 16, 2, device=triton_device),
                    torch.randn(1, 16, 1, 4, device=triton_device), torch.randn(1, 16, 1, 4, device=triton_device))
    with pytest.raises(BackendUnavailableError, match="32-bit offsets"):
        ssd_chunk_scan(xs, dt, -torch.rand(2, device=triton_device), B, C, 8, backend="triton")
