"""Argument validation for layers and user code built on ssm_kernels, the same checks the ops run.

ArgCheck validates the arguments of one call: TypeError for a wrong kind or dtype, ValueError for a wrong shape
or value, and the message names the caller, the argument and what was expected, e.g.
``Mamba2Sequential: d_state must be an int, got float``:

    check = ArgCheck("MyLayer")
    check.integer("d_state", d_state, minimum=1)
    check.tensor("x", x, ("B", "L", "D"))

compute_dtype(dtype) is the dtype the ops compute in for inputs of `dtype` (fp32 / complex64 up to 32 bits,
fp64 / complex128 for 64-bit inputs), for layers that keep their own math in the same precision.
"""
from ._utils import ArgCheck, compute_dtype

__all__ = ["ArgCheck", "compute_dtype"]
