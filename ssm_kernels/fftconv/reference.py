"""Pure-PyTorch long convolution: the direct-sum ground truth and the FFT torch backend.

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

from typing import Optional

import torch

from .._utils import compute_dtype


def math_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """fp64 when any input is fp64, else fp32."""
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return compute_dtype(torch.float64 if wide else torch.float32)


def _gated(u, pregate, dtype):
    v = u.to(dtype)
    return v if pregate is None else v * pregate.to(dtype)


def _finish(y, v, D, postgate, out_dtype):
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * v
    if postgate is not None:
        y = y * postgate.to(y.dtype)
    return y.to(out_dtype)


def fftconv_ref(u, k, D=None, bidirectional=False, pregate=None, postgate=None):
    """Sequential ground truth: the direct sum, one output position at a time. Returns y (B, H, L)."""
    dtype = math_dtype(u, k, D, pregate, postgate)
    v = _gated(u, pregate, dtype)
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
    return _finish(y, v, D, postgate, u.dtype)


def fft_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: lengths pocketfft / cuFFT transform fastest."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def fftconv_torch(u, k, D=None, bidirectional=False, pregate=None, postgate=None):
    """Fast torch backend: one rfft convolution of length >= L + Lk (no wrap-around reaches the outputs),
    autograd through torch.fft. Returns y (B, H, L) in u's dtype."""
    dtype = math_dtype(u, k, D, pregate, postgate)
    v = _gated(u, pregate, dtype)
    length, taps = v.shape[-1], k.shape[-1]
    if bidirectional:
        n = fft_length(length + taps)
        # circular layout: k0 at lags 0..Lk-1, k1 at lags -1..-Lk (indices n-1..n-Lk)
        kernel = torch.cat([k[0].to(dtype), k.new_zeros(k.shape[1], n - 2 * taps, dtype=dtype),
                            k[1].to(dtype).flip(-1)], dim=-1)
    else:
        n = fft_length(length + taps - 1)
        kernel = k.to(dtype)
    spectrum = torch.fft.rfft(v, n=n) * torch.fft.rfft(kernel, n=n)
    y = torch.fft.irfft(spectrum, n=n)[..., :length]
    return _finish(y, v, D, postgate, u.dtype)
