"""The C++ CPU backend of linear_scan ("cpp"): csrc/cpu's sequential loop per row at memory speed (built on
first use, ssm_kernels._cpu_ext), behind the custom ops ssm_kernels::linear_scan_cpp_{fwd,bwd}. The default for
CPU tensors where it builds: no pure-PyTorch formulation of the scan reaches memory speed on a CPU.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _cpu_ext
from ._common import define_scan_ops, engine_functions

if not _cpu_ext.load():
    raise RuntimeError(f"the C++ CPU kernels cannot be used here: {_cpu_ext.problem()}")


def _in_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x converted to dtype without materialising its broadcast (stride-0) dims; conjugate views resolved."""
    if x.dtype == dtype and not x.is_conj():
        return x
    compact = x
    for axis, stride in enumerate(x.stride()):
        if stride == 0:
            compact = compact.narrow(axis, 0, 1)
    return compact.resolve_conj().to(dtype).expand(x.shape)


def scan_into(out: torch.Tensor, gates: torch.Tensor, tokens: torch.Tensor,
              initial_state: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    """_common.ScanInto on CPU tensors, by torch.ops.ssm_kernels_cpu.linear_scan_into."""
    if out.numel() == 0:
        return out
    conj_gates = gates.is_conj()
    torch.ops.ssm_kernels_cpu.linear_scan_into(
        out, _in_dtype(gates.conj() if conj_gates else gates, out.dtype), _in_dtype(tokens, out.dtype),
        initial_state, reverse, conj_gates)
    return out


linear_scan_cpp = define_scan_ops("cpp", *engine_functions(scan_into))
