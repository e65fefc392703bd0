"""Peer packages for side-by-side timing, imported only when present.

Install them normally, or fetch them with ../shared/tools/peer_packages.sh DEST (a git-ignored folder such
as ./peers) and set SSM_PEERS_DIR=DEST: DEST/site joins sys.path, and mamba_ssm / causal_conv1d are
imported from DEST/mamba and DEST/cconv without running their package __init__ (which would load CUDA
extensions that may not be built).

Their CUDA extensions (mamba_ssm's selective_scan_cuda, causal-conv1d's causal_conv1d_cuda) are linked on
first use from objects compiled ahead of time into DEST/objs (benchmarks/build_peer_objects.sh cross-compiles
the kernels for sm_90 on any machine with nvcc and the GPU machine's torch headers), so only the small
binding file is compiled on the GPU machine. Only the instantiations the benchmarks use are prebuilt (bf16 /
fp32, real A): the library is loaded with lazy symbol binding, so the others are simply never called.
"""
from __future__ import annotations

import glob
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
    _link_prebuilt(root, "selective_scan_cuda", os.path.join(root, "mamba", "csrc", "selective_scan",
                                                             "selective_scan.cpp"), "ss_")
    _link_prebuilt(root, "causal_conv1d_cuda", os.path.join(root, "cconv", "csrc", "causal_conv1d.cpp"), "cc_")
    _fill_causal_conv1d_shell()


def _fill_causal_conv1d_shell() -> None:
    """Give the causal_conv1d shell package what its __init__ would export (causal_conv1d_fn / _update): mamba_ssm's
    modules import those names from it and take their slow, unfused paths (torch's conv1d, no mamba_inner_fn)
    when the import fails. Only where its CUDA extension loaded (on a CPU the peers run those slow paths)."""
    shell = sys.modules.get("causal_conv1d")
    if shell is None or "causal_conv1d_cuda" not in sys.modules or hasattr(shell, "causal_conv1d_fn"):
        return
    try:
        interface = importlib.import_module("causal_conv1d.causal_conv1d_interface")
    except Exception as error:
        print(f"peers: causal_conv1d does not import: {error}", file=sys.stderr)
        return
    shell.causal_conv1d_fn = interface.causal_conv1d_fn
    shell.causal_conv1d_update = interface.causal_conv1d_update


def _link_prebuilt(root: str, module: str, binding: str, prefix: str) -> None:
    """Build `module` from its binding .cpp and the prebuilt DEST/objs/<prefix>*.o; register it in sys.modules."""
    objs = sorted(glob.glob(os.path.join(root, "objs", prefix + "*.o")))
    if module in sys.modules or not objs or not os.path.exists(binding):
        return
    import torch
    if not torch.cuda.is_available():
        return
    from torch.utils import cpp_extension
    build = os.path.join(os.environ.get("SSM_KERNELS_CACHE", os.path.expanduser("~/.cache/ssm_kernels")),
                         "peers", module)
    os.makedirs(build, exist_ok=True)
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_LAZY | os.RTLD_GLOBAL)  # instantiations that were not prebuilt stay unbound
    try:
        sys.modules[module] = cpp_extension.load(
            name=module, sources=[binding], extra_ldflags=objs, build_directory=build, with_cuda=True,
            extra_include_paths=[os.path.dirname(binding)], extra_cflags=["-O3"], verbose=False)
    except Exception as error:  # the peer is then absent, as when it is not installed
        print(f"peers: could not link {module}: {error}", file=sys.stderr)
    finally:
        sys.setdlopenflags(flags)


def load(module: str, attribute: str) -> Optional[Callable]:
    """`module.attribute` if it imports here, else None."""
    _prepare()
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception:  # a missing package or an unbuilt extension: the peer is simply absent
        return None
