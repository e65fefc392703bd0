"""The torch backend of the long convolution (the CPU default): one real FFT convolution, autograd through
torch.fft. Shapes and the definition: reference.py."""
from __future__ import annotations

import torch

from ._common import finish, gated_input, math_dtype


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
    v = gated_input(u, pregate, dtype)
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
    return finish(y, v, D, postgate, u.dtype)
