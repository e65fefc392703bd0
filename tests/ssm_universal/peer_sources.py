"""mamba_ssm's Python modules imported from the peer sources in <repo>/peers (no build, no CUDA): a bare
`mamba_ssm` package over the sources (its __init__ would import the CUDA extension and Mamba-3) and stub modules
for what the tests replace, with sys.modules restored afterwards so that other tests importing the real
packages are not affected."""
from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

PEER_MAMBA = Path(__file__).resolve().parents[2] / "peers" / "mamba" / "mamba_ssm"


@contextlib.contextmanager
def peer_mamba_ssm(stubs: Dict[str, Optional[types.ModuleType]], roots: Sequence[str]) -> Iterator[None]:
    """Inside the block, `mamba_ssm` is the peer sources' package and `stubs` replace their modules (None makes
    an import of that name raise ImportError); afterwards every module under `roots` (top-level names, with
    mamba_ssm) is what it was before."""
    roots = {"mamba_ssm", *roots}
    ours = lambda name: name.split(".")[0] in roots  # noqa: E731
    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    package = types.ModuleType("mamba_ssm")
    package.__path__ = [str(PEER_MAMBA)]
    try:
        sys.modules.update({"mamba_ssm": package, **stubs})
        yield
    finally:
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)
