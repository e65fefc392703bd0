"""causal_conv1d: depthwise causal 1-D convolution (the short conv of Mamba / Mamba-2 / H3)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch
from .._autograd import needs_grad
from .._utils import ArgCheck, PassedChecks
from .._context_parallel import reject
from ._common import check_conv_inputs, final_states
from .context_parallel import causal_conv1d_context_parallel

ACTIVATIONS = (None, "silu", "swish")  # "swish" is mamba_ssm's alias of "silu"
CUDA_MAX_WIDTH = 8


def _kernel_supports(device, dtype, features) -> Optional[str]:
    """The Triton and the CUDA kernels: widths up to CUDA_MAX_WIDTH, fp32 / fp16 / bf16 inputs."""
    if features.get("wide"):
        return f"the kernels support widths up to {CUDA_MAX_WIDTH}"
    return _dispatch.kernel_dtype_supports(device, dtype, features)


_dispatch.register("causal_conv1d", "torch", "ssm_kernels.causal_conv1d.pytorch", "causal_conv1d_torch")
_dispatch.register("causal_conv1d", "triton", "ssm_kernels.causal_conv1d.triton", "causal_conv1d_triton",
                   supports=_kernel_supports)
_dispatch.register("causal_conv1d", "cuda", "ssm_kernels.causal_conv1d.cuda", "causal_conv1d_cuda",
                   supports=_kernel_supports, extension="causal_conv1d")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  activation: Optional[str] = None, seq_idx: Optional[torch.Tensor] = None,
                  initial_states: Optional[torch.Tensor] = None, return_final_states: bool = False,
                  backend: Optional[str] = None, cp_group=None):
    """Depthwise causal convolution over the last axis, optionally followed by SiLU.

    y[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - W + 1 + k]), with x at negative positions
    taken from initial_states (zeros without it), and terms across a sequence boundary of seq_idx dropped.

    Args:
        x: (B, D, L) fp32 / fp16 / bf16 (fp64 on the torch backend); any strides.
        weight: (D, W), W >= 1 (the CUDA backend takes W <= 8).
        bias: (D,) or None.
        activation: None, "silu" (or its alias "swish").
        seq_idx: (B, L) int32/int64 sequence index of every token of packed sequences, or None.
        initial_states: (B, D, W-1), x's dtype: the inputs preceding x (they continue the first sequence).
        return_final_states: also return the (B, D, W-1) state that continues the last sequence.
        cp_group: a torch.distributed process group over which the sequence is split, or None: each rank passes
            its contiguous shard of x (ranks in order, each >= W-1 positions), the same weight, bias and
            initial_states, and gets its shard of y and the whole sequence's final states (the W-1 inputs
            before each shard are all-gathered; not with seq_idx).
        backend: None (automatic), "torch", "triton" or "cuda".
    Returns:
        y: (B, D, L) in x's dtype, or (y, final_states) with return_final_states.
    Example:
        >>> import torch, ssm_kernels
        >>> x, weight, bias = torch.randn(2, 16, 64), torch.randn(16, 4), torch.randn(16)
        >>> y, state = ssm_kernels.causal_conv1d(x, weight, bias, activation="silu", return_final_states=True)
        >>> y.shape, state.shape
        (torch.Size([2, 16, 64]), torch.Size([2, 16, 3]))
    """
    key = _PASSED.key((x, weight, bias, seq_idx, initial_states), activation)
    if not _PASSED.known(key):
        check = ArgCheck("causal_conv1d")
        check_conv_inputs(check, x, weight, bias, seq_idx, initial_states)
        check.choice("activation", activation, ACTIVATIONS)
        _PASSED.remember(key)
    width = weight.shape[1]
    activation = "silu" if activation in ("silu", "swish") else None
    if cp_group is not None:
        reject("causal_conv1d", seq_idx=seq_idx)
        y, final = causal_conv1d_context_parallel(causal_conv1d, x, weight, bias, activation, initial_states, cp_group,
                                                  backend)
        return (y, final) if return_final_states else y

    if x.shape[-1] == 0:
        y = x.clone()  # nothing to convolve; keeps y connected to the graph like any other output
    else:
        # size: B * D * L, the numel of x
        fn = _dispatch.select("causal_conv1d", x.device, backend=backend, dtype=x.dtype, size=x.numel(),
                              grad=needs_grad(x, weight, bias, initial_states), wide=width > CUDA_MAX_WIDTH)
        y = fn(x, weight, bias, activation, seq_idx, initial_states)
    if return_final_states:
        return y, final_states(x, initial_states, seq_idx, width)
    return y


_PASSED = PassedChecks()  # a model calls it once per layer and step with the same signature: see PassedChecks


__all__ = ["causal_conv1d"]
