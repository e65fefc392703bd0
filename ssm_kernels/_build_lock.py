"""A lock on an extension's build directory that dies with the process holding it.

torch.utils.cpp_extension guards a build with a `lock` file created with O_EXCL, and a second process waits
for that file to disappear with no time limit. A build killed midway (a CI job cut off, Ctrl-C during the
compile) leaves the file behind, and every later load from that directory then hangs forever. Around each
load we hold an flock(2) on `<build_dir>/.ssm_build.lock`: the kernel drops it when its holder dies, and
while we hold it no process of ours can be building there, so a torch `lock` file found then is stale.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Iterator

_log = logging.getLogger("ssm_kernels")
TORCH_BATON = "lock"  # the file torch.utils.cpp_extension creates in the build directory


@contextlib.contextmanager
def exclusive_build(build_dir: Path, timeout_s: float, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the build directory for one load; raises TimeoutError after timeout_s of waiting for another
    live process's build. Without flock (Windows) only torch's own lock file guards the build."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".ssm_build.lock", "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process has been building in {build_dir} for more than "
                                       f"{timeout_s:.0f} s") from None
                time.sleep(poll_s)
        try:
            baton = build_dir / TORCH_BATON
            if baton.exists():
                _log.warning("ssm_kernels: removing the stale build lock %s (left by a build that was killed)",
                             baton)
                baton.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
