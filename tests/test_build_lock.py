"""The extension build lock: a build killed midway must not make later loads wait forever."""
import fcntl
import logging

import pytest

from ssm_kernels import _build_lock


def test_stale_torch_lock_is_removed(tmp_path, caplog):
    baton = tmp_path / _build_lock.TORCH_BATON
    baton.touch()  # what a killed torch.utils.cpp_extension build leaves behind
    with caplog.at_level(logging.WARNING, logger="ssm_kernels"):
        with _build_lock.exclusive_build(tmp_path, timeout_s=1.0):
            assert not baton.exists()
    assert "stale build lock" in caplog.text


def test_lock_is_released_after_use(tmp_path):
    with _build_lock.exclusive_build(tmp_path, timeout_s=1.0):
        pass
    with _build_lock.exclusive_build(tmp_path, timeout_s=0.5):  # would time out if still held
        pass


def test_live_build_is_waited_for_then_times_out(tmp_path):
    with open(tmp_path / ".ssm_build.lock", "a") as other:  # another open file: flock conflicts like a process
        fcntl.flock(other, fcntl.LOCK_EX)
        baton = tmp_path / _build_lock.TORCH_BATON
        baton.touch()  # a live build's lock: must be left alone
        with pytest.raises(TimeoutError, match="building in"):
            with _build_lock.exclusive_build(tmp_path, timeout_s=0.3, poll_s=0.05):
                pass
        assert baton.exists()


def test_creates_missing_build_dir(tmp_path):
    build_dir = tmp_path / "a" / "b"
    with _build_lock.exclusive_build(build_dir, timeout_s=1.0):
        assert build_dir.is_dir()
