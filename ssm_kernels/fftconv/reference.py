"""Sequential ground truth of the long convolution (the direct sum).

Shapes: u, pregate, postgate (B, H, L); k (H, Lk), or (2, H, Lk) when bidirectional; D (H,).
Definition, with v = u * pregate (v = u without it):
    y_t = sum_{0 <= t-s < Lk} k0[t-s] v_s                       (causal part, k0 = k or k[0])
        + sum_{1 <= s-t <= Lk} k1[s-t-1] v_s                     (bidirectional only, k1 = k[1])
        + D v_t,      then y *= postgate.
The anti-causal part is the convention of state-spaces/s4 (FFTConv / S4 layers), which builds
cat(k0, zeros, k1.flip(-1)) and convolves circularly: k1[0] weighs the next input v_{t+1}, k1[j] weighs
v_{t+1+j}, and when Lk == L the last tap k1[L-1] never meets an input.
"""
from __future__ import annotations

import torch

from ._common import finish, gated_input, math_dtype


def fftconv_ref(u, k, D=None, bidirectional=False, pregate=None, postgate=None):
    """Sequential ground truth: the direct sum, one output position at a time. Returns y (B, H, L)."""
    dtype = math_dtype(u, k, D, pregate, postgate)
    v = gated_input(u, pregate, dtype)
    k0, k1 = (k[0], k[1]) if bidirectional else (k, None)
    k0 = k0.to(dtype)
    length, taps = v.shape[-1], k0.shape[-1]
    outputs = []
    for t in range(length):
        n = min(t + 1, taps)  # inputs v_t, v_{t-1}, ..., v_{t-n+1}
        acc = (k0[:, :n].flip(-1) * v[..., t - n + 1:t + 1]).sum(-1)
        if k1 is not None:
            m = min(length - 1 - t, taps)  # inputs v_{t+1}, ..., v_{t+m}
            acc = acc + (k1[:, :m].to(dtype) * v[..., t + 1:t + 1 + m]).sum(-1)
        outputs.append(acc)
    y = torch.stack(outputs, dim=-1) if outputs else v.clone()
    return finish(y, v, D, postgate, u.dtype)
