"""Peer packages for side-by-side timing, imported only when present.

Install them normally, or fetch them with ../shared/tools/peer_packages.sh DEST (a git-ignored folder such
as ./peers) and set SSM_PEERS_DIR=DEST: DEST/site joins sys.path, and mamba_ssm / causal_conv1d are
imported from DEST/mamba and DEST/cconv without running their package __init__ (which would load CUDA
extensions that may not be built).
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Callable, Optional

_PREPARED = [False]


def _prepare() -> None:
    if _PREPARED[0]:
        return
    _PREPARED[0] = True
    root = os.environ.get("SSM_PEERS_DIR")
    if not root:
        return
    site = os.path.join(root, "site")
    if os.path.isdir(site) and site not in sys.path:
        sys.path.append(site)
    for package, folder in (("mamba_ssm", "mamba"), ("causal_conv1d", "cconv")):
        path = os.path.join(root, folder, package)
        if os.path.isdir(path) and package not in sys.modules:
            shell = types.ModuleType(package)
            shell.__path__ = [path]
            sys.modules[package] = shell


def load(module: str, attribute: str) -> Optional[Callable]:
    """`module.attribute` if it imports here, else None."""
    _prepare()
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception:  # a missing package or an unbuilt extension: the peer is simply absent
        return None
