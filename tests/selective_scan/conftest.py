import importlib

import pytest


@pytest.fixture(autouse=True)
def full_channel_blocks(monkeypatch):
    """The Triton launcher shrinks its channel blocks when the grid is small (MIN_PROGRAMS), which would give
    every test-sized input one channel per program; the suite keeps the configured blocks (several channels
    per program, partial blocks) unless a test sets MIN_PROGRAMS itself."""
    monkeypatch.setattr(importlib.import_module("ssm_kernels.selective_scan.triton"), "MIN_PROGRAMS", 1)
