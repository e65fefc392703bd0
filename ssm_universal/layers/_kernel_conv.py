"""What layers that convolve with an SSM kernel (S4D, DSS) share: the forward (kernel -> fftconv with the D
skip -> activation -> tied dropout -> output transform), the same transform for one recurrent step, and the
prefill (a prompt's outputs and final state from the modal recurrence in closed form)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_kernels import fftconv

from ._modal_state import modal_prefill
from ._step_constants import StepConstants


class KernelConvLayer(nn.Module):
    """Subclasses set H, l_max, transposed, bidirectional, D, activation, dropout, output_linear and define
    kernel(length) -> (H, length), or (2, H, length) when bidirectional."""

    context_parallel = False  # FFT convolutions: no cp_group form (ssm_universal.context_parallel)
    cp_group = None  # set by ssm_universal.set_context_parallel where a subclass allows it

    def _register_ssm(self, name: str, tensor: torch.Tensor, lr: Optional[float]):
        """An SSM parameter with state-spaces' optimizer hints (`_optim`: no weight decay, its own lr);
        lr == 0 makes it a fixed buffer."""
        if lr == 0.0:
            self.register_buffer(name, tensor)
            return
        self.register_parameter(name, nn.Parameter(tensor))
        optim = {"weight_decay": 0.0}
        if lr is not None:
            optim["lr"] = lr
        getattr(self, name)._optim = optim

    @property
    def math_dtype(self) -> torch.dtype:
        """What the SSM's discretisation, kernel and recurrence compute in: float64 in a float64 layer, else
        float32 (never lower, under bf16 / fp16 weights or autocast)."""
        return torch.float64 if self.D.dtype == torch.float64 else torch.float32

    @property
    def state_dtype(self) -> torch.dtype:
        """The complex dtype of a diagonal recurrence's state: complex128 in a float64 layer, else complex64."""
        return torch.complex128 if self.math_dtype == torch.float64 else torch.complex64

    def _channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, d_model), or (B, d_model, L) if transposed -> (B, d_model, L), after checking its shape."""
        if x.dim() != 3 or x.shape[1 if self.transposed else 2] != self.H:
            layout = "(B, d_model, L)" if self.transposed else "(B, L, d_model)"
            raise ValueError(f"{type(self).__name__}: x must have shape {layout} with d_model = {self.H}, "
                             f"got {tuple(x.shape)}")
        return x if self.transposed else x.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, d_model), or (B, d_model, L) if transposed -> y of the same shape and x's dtype
        (the autocast dtype under autocast)."""
        u = self._channels_first(x)  # (B, H, L)
        length = u.shape[-1]
        if length == 0:
            return x.clone()
        if self.cp_group is not None:
            if not self.context_parallel:
                raise ValueError(f"{type(self).__name__}: this layer cannot split the sequence across ranks "
                                 "(cp_group); see ssm_universal.context_parallel")
            y = self.conv_context_parallel(u)
        else:
            k = self.kernel(length if self.l_max is None else min(length, self.l_max))
            y = fftconv(u, k, D=self.D, bidirectional=self.bidirectional)
        y = self.output_linear(self.dropout(self.activation(y)))
        return y if self.transposed else y.transpose(1, 2)

    def conv_context_parallel(self, u: torch.Tensor) -> torch.Tensor:
        """The convolution with the D skip of this rank's shard u (B, H, L_r) of a sequence split across
        self.cp_group: subclasses whose context_parallel is True define it."""
        raise ValueError(f"{type(self).__name__}: this layer cannot split the sequence across ranks (cp_group)")

    def prefill_output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The convolution's y (B, H, L) float32 -> the layer's output for input x (layout and dtype of x):
        activation, dropout and output transform, after y is rounded to x's dtype as `step` rounds it."""
        y = self.output_linear(self.dropout(self.activation(y.to(x.dtype))))
        return y if self.transposed else y.transpose(1, 2)

    def _check_steppable(self):
        self._check_causal()

    def _check_causal(self):
        if self.bidirectional:
            raise RuntimeError(f"{type(self).__name__}: a bidirectional layer has no recurrent step (its output "
                               "depends on future inputs); build it with bidirectional=False for step-by-step "
                               "inference")

    def output_step(self, y: torch.Tensor) -> torch.Tensor:
        """The forward's activation, dropout and output transform (pointwise Conv1d + GLU) for one step:
        y (B, H) -> (B, H)."""
        y = self.dropout(self.activation(y).unsqueeze(-1)).squeeze(-1)
        conv = self.output_linear[0]
        return F.glu(F.linear(y, conv.weight.squeeze(-1), conv.bias), dim=-1)


class ModalKernelConvLayer(StepConstants, KernelConvLayer):
    """A KernelConvLayer whose step runs a diagonal recurrence (S4D, DSS): subclasses define modal_recurrence()
    -> (log dA, dB, C): h = dA h + dB u, y = Re(sum_n C_n h_n) + D u, which gives the prefill in closed form."""

    def step_constants(self):
        """(dA, dB, C, D) of the recurrence, from the parameters alone (ssm_universal.layers._step_constants)."""
        log_dA, dB, C = self.modal_recurrence()
        return torch.exp(log_dA), dB, C, self.D.to(self.math_dtype)

    def _modal_step(self, x_t: torch.Tensor, state: torch.Tensor):
        """The recurrence for one token x_t (B, H) from state (B, H, N) -> (the layer's output (B, H) in x_t's
        dtype, the new state); the callers check their arguments."""
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            dA, dB, C, D = self.constants_for_step()
            u = x_t.to(self.math_dtype)
            state = dA * state + dB * u.unsqueeze(-1)
            y = (C * state).sum(-1).real + D * u
        return self.output_step(y.to(x_t.dtype)), state

    def prefill(self, x: torch.Tensor, state: torch.Tensor):
        """x (B, L, d_model) (or (B, d_model, L) if transposed) and the state before it (from default_state or
        step) -> (y as `step` gives it position by position, the state after the last position), without
        stepping: a convolution with the untruncated kernel plus the response to the entering state (the
        recurrence has no l_max). The given state is not modified."""
        self._check_steppable()
        u = self._channels_first(x)
        if state.shape != (u.shape[0],) + self.default_state(1, device="meta").shape[1:]:
            raise ValueError(f"{type(self).__name__}.prefill: state must have the shape of default_state"
                             f"({u.shape[0]}), got {tuple(state.shape)}")
        with torch.autocast(device_type=u.device.type, enabled=False):
            log_dA, dB, C = self.modal_recurrence()
            y, state = modal_prefill(u, log_dA, dB, C, self.D.to(self.math_dtype), state)
        return self.prefill_output(y, x), state
