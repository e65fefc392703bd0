"""HiPPO-LegS and its normal plus low-rank (NPLR) form, as state-spaces/s4 builds them (models/s4/s4.py:
transition("legs"), rank_correction("legs"), nplr). Everything in float64 / complex128.

    A[n, k] = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k), 0 (n < k);  B[n] = sqrt(2n+1);  P[n] = sqrt(n+1/2).

A + P P^T = -1/2 I + (skew-symmetric) is normal, so with its unitary eigenvectors V_full (N, N):
    A = V_full (diag(Lambda_full) - (V_full^* P)(V_full^* P)^*) V_full^*.
A is real, so eigenvalues and eigenvectors come in conjugate pairs: only N/2 of them are kept,
V_full = [V, conj(V)], Lambda_full = [Lambda, conj(Lambda)], and V_full^* P = [V^* P, conj(V^* P)].
"""
from __future__ import annotations

from typing import Tuple

import torch


def hippo_legs(N: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A (N, N), B (N,), P (N,)) float64: the HiPPO-LegS transition, its input vector and the rank-1 term
    P with A + P P^T normal."""
    q = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * q + 1)
    A = -torch.tril(r[:, None] * r[None, :], -1) - torch.diag(q + 1)
    return A, r.clone(), torch.sqrt(q + 0.5)


def nplr_legs(N: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Lambda (N/2,), P (N/2,), B (N/2,), V (N, N/2)) complex128 with A = V_full (diag(Lambda_full)
    - P_full P_full^*) V_full^* and B = V_full B_full (module docstring); the kept half of each conjugate pair
    is the one with negative imaginary part (state-spaces/s4's choice), sorted by increasing imaginary part.
    N must be even (odd N has a zero eigenvalue with no conjugate partner)."""
    if N < 2 or N % 2:
        raise ValueError(f"nplr_legs: N must be even and >= 2, got {N}")
    A, B, P = hippo_legs(N)
    normal = A + P[:, None] * P[None, :]
    # -1/2 I plus skew-symmetric: the real part of every eigenvalue is -1/2 and -i (skew part) is Hermitian,
    # so eigh gives orthonormal eigenvectors and exactly paired imaginary parts
    real = torch.diagonal(normal).mean()
    imag, V = torch.linalg.eigh(-1j * (normal - real * torch.eye(N, dtype=torch.float64)).to(torch.complex128))
    order = torch.argsort(imag)[: N // 2]
    Lambda = torch.complex(real.expand(N // 2).clone(), imag[order])
    V = V[:, order]
    Vh = V.conj().transpose(0, 1)
    return Lambda, Vh @ P.to(torch.complex128), Vh @ B.to(torch.complex128), V


__all__ = ["hippo_legs", "nplr_legs"]
