"""Gated MLP of the H3 / Hyena era models (flash_attn.modules.mlp.GatedMlp, mamba_ssm.modules.mlp.GatedMLP), with
an optional SSM branch that gates in parallel with the MLP branch.

    value, gate = fc1(x).chunk(2)                          (B, L, hidden_features) each
    h = value * activation(gate)
    with an SSM branch:  h = h * ssm_proj(ssm(x))          the SSM runs on x, beside fc1 ("parallel gating")
    y = fc2(h)                                             (B, L, out_features)

Without an SSM branch the parameters (fc1, fc2), their shapes and the math are flash-attn's GatedMlp (its GLU
and SwiGLU special cases compute the same value * activation(gate)), so its state_dicts load with strict=True;
mamba_ssm's GatedMLP is the same module with activation=F.silu, bias=False, multiple_of=128.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_kernels.validation import ArgCheck

from ._prefill import prefill
from .dss import DSS
from .h3 import H3
from .mamba import Mamba
from .mamba2 import Mamba2
from .mamba2_sequential import Mamba2Sequential
from .s4 import S4
from .s4d import S4D
from .s5 import S5

ACTIVATIONS = {"sigmoid": F.sigmoid, "silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu}
SSM_LAYERS = {"s4": S4, "s4d": S4D, "dss": DSS, "s5": S5, "h3": H3, "mamba": Mamba, "mamba2": Mamba2,
              "mamba2_sequential": Mamba2Sequential}


class GatedMLP(nn.Module):
    """x (B, L, in_features) (or any (..., in_features) without an SSM branch) -> (B, L, out_features).

    Args (flash-attn GatedMlp's, in its order and with its defaults):
        in_features, out_features (default in_features).
        hidden_features: default int(8 * in_features / 3); always rounded up to a multiple of multiple_of.
        activation: applied to the gate: a callable, or "sigmoid" (GLU), "silu"/"swish" (SwiGLU), "gelu", "relu".
        bias1, bias2: biases of fc1 and fc2. bias: mamba_ssm GatedMLP's single flag; when given, it sets both.
        multiple_of: see hidden_features.
        return_residual: forward returns (y, x), as flash-attn's (for fused post-norm residuals).
        ssm: None; an SSM layer instance mapping (B, L, in_features) to (B, L, in_features) (any layer of
            ssm_universal.layers); or its name, one of SSM_LAYERS, built as SSM_LAYERS[name](in_features,
            **ssm_kwargs). Its output, projected by ssm_proj (Linear(in_features, hidden_features, bias=bias1)),
            multiplies the gated hidden activations before fc2.
        ssm_kwargs: constructor arguments of a named SSM layer (device / dtype are not forwarded to it, since
            not every layer takes them: put them here where it does, or move the module with .to()).
        layer_idx: stored (the index of the layer in a model).

    Parameters: fc1 (2 hidden_features, in_features), fc2 (out_features, hidden_features); with an SSM branch
    also ssm.* (the layer's own) and ssm_proj (hidden_features, in_features).
    Recurrent state: None without an SSM branch (the MLP is position-wise), else the SSM layer's state.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 activation: Union[Callable, str] = F.sigmoid, bias1: bool = True, bias2: bool = True,
                 multiple_of: int = 256, return_residual: bool = False, ssm: Union[None, str, nn.Module] = None,
                 ssm_kwargs: Optional[dict] = None, bias: Optional[bool] = None, layer_idx: Optional[int] = None,
                 device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        check = ArgCheck("GatedMLP")
        check.integer("in_features", in_features, minimum=1)
        if hidden_features is not None:
            check.integer("hidden_features", hidden_features, minimum=1)
        if out_features is not None:
            check.integer("out_features", out_features, minimum=1)
        check.integer("multiple_of", multiple_of, minimum=1)
        if layer_idx is not None:
            check.integer("layer_idx", layer_idx, minimum=0)
        if isinstance(activation, str):
            activation = ACTIVATIONS[check.choice("activation", activation, list(ACTIVATIONS))]
        elif not callable(activation):
            check.fail(f"activation must be a callable or a name in {list(ACTIVATIONS)}, got {activation!r}",
                       TypeError)
        if bias is not None:
            bias1 = bias2 = bias
        for name, value in (("bias1", bias1), ("bias2", bias2), ("bias", bias), ("return_residual", return_residual)):
            if value is not None and not isinstance(value, bool):
                check.fail(f"{name} must be a bool, got {type(value).__name__}", TypeError)

        out_features = in_features if out_features is None else out_features
        hidden_features = int(8 * in_features / 3) if hidden_features is None else hidden_features
        hidden_features = (hidden_features + multiple_of - 1) // multiple_of * multiple_of
        self.in_features, self.hidden_features, self.out_features = in_features, hidden_features, out_features
        self.return_residual = return_residual
        self.layer_idx = layer_idx
        self.fc1 = nn.Linear(in_features, 2 * hidden_features, bias=bias1, **factory_kwargs)
        self.activation = activation
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias2, **factory_kwargs)

        self.ssm = self._build_ssm(check, ssm, ssm_kwargs, in_features)
        if self.ssm is not None:
            self.ssm_proj = nn.Linear(in_features, hidden_features, bias=bias1, **factory_kwargs)

    @staticmethod
    def _build_ssm(check: ArgCheck, ssm, ssm_kwargs, in_features) -> Optional[nn.Module]:
        if ssm_kwargs is not None and not isinstance(ssm, str):
            check.fail("ssm_kwargs is only used with an SSM layer given by name (ssm='s4d', ...)")
        if ssm is None:
            return None
        if isinstance(ssm, str):
            return SSM_LAYERS[check.choice("ssm", ssm, list(SSM_LAYERS))](in_features, **(ssm_kwargs or {}))
        if not isinstance(ssm, nn.Module):
            check.fail(f"ssm must be None, a layer name in {list(SSM_LAYERS)} or an nn.Module, "
                       f"got {type(ssm).__name__}", TypeError)
        width = getattr(ssm, "d_model", in_features)
        if width != in_features:
            check.fail(f"ssm must map (B, L, in_features) to itself: its d_model is {width}, "
                       f"in_features is {in_features}")
        return ssm

    def _mlp(self, x: torch.Tensor, s: Optional[torch.Tensor]) -> torch.Tensor:
        """x (..., in_features), s: the SSM branch's output (..., in_features) or None -> (..., out_features)."""
        value, gate = self.fc1(x).chunk(2, dim=-1)
        h = value * self.activation(gate)
        if s is not None:
            h = h * self.ssm_proj(s)
        return self.fc2(h)

    def forward(self, x: torch.Tensor):
        """x: (B, L, in_features) -> y (B, L, out_features), or (y, x) with return_residual."""
        if x.shape[-1:] != (self.in_features,) or (self.ssm is not None and x.dim() != 3):
            layout = "(B, L, in_features)" if self.ssm is not None else "(..., in_features)"
            raise ValueError(f"GatedMLP: x must have shape {layout} with in_features = {self.in_features}, "
                             f"got {tuple(x.shape)}")
        y = self._mlp(x, None if self.ssm is None else self.ssm(x))
        return (y, x) if self.return_residual else y

    def default_state(self, batch_size: int, device=None, dtype=None):
        """None without an SSM branch, else the SSM layer's default_state(batch_size, device, dtype)."""
        return None if self.ssm is None else self.ssm.default_state(batch_size, device=device, dtype=dtype)

    def prefill(self, x: torch.Tensor, state):
        """A prompt x (B, L, in_features) from `state` -> (y as forward gives it ((y, x) with return_residual),
        the state after the last token): the SSM layer's own prefill (ssm_universal.layers._prefill)."""
        if self.ssm is None:
            return self(x), state
        s, state = prefill(self.ssm, x, state)
        y = self._mlp(x, s)
        return ((y, x) if self.return_residual else y), state

    def step(self, x_t: torch.Tensor, state):
        """One token: x_t (B, in_features), state from default_state -> (y_t, new state), y_t as forward gives
        it for one position ((y_t, x_t) with return_residual). The SSM layer steps its state as it does
        (in place for Mamba / Mamba2 / Mamba2Sequential, a new state for the others)."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.in_features:
            raise ValueError(f"GatedMLP.step: x_t must have shape (B, in_features) = (B, {self.in_features}), "
                             f"got {tuple(x_t.shape)}")
        s = None
        if self.ssm is not None:
            s, state = self.ssm.step(x_t, state)
        y = self._mlp(x_t, s)
        return ((y, x_t) if self.return_residual else y), state


__all__ = ["GatedMLP", "SSM_LAYERS"]
