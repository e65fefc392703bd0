"""Step constants: what a layer's recurrent step derives from its parameters alone (Mamba's A = -exp(A_log), a
diagonal SSM's discretised dA, dB, C), computed once per generate call instead of once per token.

In a decoding step those are small kernels that do the same work every token (a bf16 Mamba LM at batch 1 on
the H200: a cast, an exp and a negation per layer beside the step's own 8 kernels). A layer that has such
constants inherits StepConstants, defines step_constants(), and its step reads them through
constants_for_step(): inside `FrozenStepConstants(model)` that returns the values computed when the block was
entered (or last refreshed), elsewhere it computes them, so a step with gradients (training through the
recurrence) always sees, and differentiates, the current parameters.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn


class StepConstants:
    """Mixin for layers whose step uses parameter-derived constants (see the module docstring)."""

    _frozen_step_constants: Optional[Tuple] = None

    def step_constants(self) -> Tuple:
        """The constants, computed from the current parameters (a tuple of tensors and plain values)."""
        raise NotImplementedError(f"{type(self).__name__} must define step_constants()")

    def constants_for_step(self) -> Tuple:
        """The frozen constants inside FrozenStepConstants, else step_constants()."""
        frozen = self._frozen_step_constants
        return self.step_constants() if frozen is None else frozen

    def constants_for_forward(self) -> Tuple:
        """For a parallel forward: the frozen constants where a step would use them and no gradient is being
        recorded (a prompt's prefill inside generate), else step_constants() (training differentiates them)."""
        frozen = self._frozen_step_constants
        return self.step_constants() if frozen is None or torch.is_grad_enabled() else frozen


class FrozenStepConstants:
    """`with FrozenStepConstants(model):` every StepConstants layer of `model` steps with constants computed
    once, on the first entry (without gradients: for decoding). The tensors keep their storage across entries,
    so a CUDA graph captured inside reads them; refresh() rewrites them in place from the current parameters
    (GraphedStep does so whenever it starts a sequence)."""

    def __init__(self, model: nn.Module):
        self.layers: List[StepConstants] = [m for m in model.modules() if isinstance(m, StepConstants)]
        self.values: Optional[List[Tuple]] = None

    def refresh(self) -> None:
        """Recompute every layer's constants from its parameters, into the same tensors."""
        with torch.no_grad():
            fresh = [layer.step_constants() for layer in self.layers]
            if self.values is None:
                self.values = fresh
                return
            for old, new in zip(self.values, fresh):
                for old_value, new_value in zip(old, new):
                    if isinstance(old_value, torch.Tensor):
                        old_value.copy_(new_value)

    def __enter__(self) -> "FrozenStepConstants":
        if self.values is None:
            self.refresh()
        self._outer = [layer._frozen_step_constants for layer in self.layers]  # an enclosing block's, if any
        for layer, values in zip(self.layers, self.values):
            layer._frozen_step_constants = values
        return self

    def __exit__(self, *exc) -> None:
        for layer, outer in zip(self.layers, self._outer):
            layer._frozen_step_constants = outer


class MambaStepConstants(StepConstants):
    """The Mamba layers' step constants: (A = -exp(A_log) in fp32,)."""

    def step_constants(self) -> Tuple[torch.Tensor]:
        return (-torch.exp(self.A_log.float()),)
