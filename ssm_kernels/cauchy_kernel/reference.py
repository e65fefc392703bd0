"""Pure-PyTorch Cauchy kernel (S4's DPLR generating function): sequential ground truth and fast path.

Shapes: v, w (H, N) complex; z (L,) complex; K (H, L) complex:
    K[h, l] = sum_n v[h, n] / (z[l] - w[h, n])

Fast path: the (H, N, c) matrix r = 1 / (z - w) for c positions of z at a time, reduced over n with a
batched matmul; the backward recomputes r chunk by chunk, so memory is O(H N c), never O(H N L):
    dv = sum_l g conj(r),  dw = conj(v) sum_l g conj(r)^2,  dz[l] = -sum_h g conj(sum_n v r^2)
(torch's convention for holomorphic functions: input grad = output grad * conj(derivative)).
"""
from __future__ import annotations

import torch

from .._utils import compute_dtype, new_output

CHUNK_ELEMENTS = 1 << 20  # complex elements of r per chunk: 8 MiB in complex64


def cauchy_kernel_ref(v, z, w):
    """Sequential ground truth: one state n at a time, in complex64 (complex128 for complex128)."""
    acc_dtype = compute_dtype(v.dtype)
    v, z, w = v.to(acc_dtype), z.to(acc_dtype), w.to(acc_dtype)
    out = torch.zeros(v.shape[0], z.shape[0], dtype=acc_dtype, device=v.device)
    for n in range(v.shape[1]):
        out = out + v[:, n, None] / (z[None, :] - w[:, n, None])
    return out


def _chunks(v: torch.Tensor, length: int):
    """Slices of positions l, each giving an (H, N, c) r of about CHUNK_ELEMENTS elements."""
    c = max(1, CHUNK_ELEMENTS // max(1, v.numel()))
    return [slice(start, min(start + c, length)) for start in range(0, length, c)]


def _inverse_distances(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """r: (H, N, c) = 1 / (z[l] - w[h, n])."""
    return (z[None, None, :] - w[:, :, None]).reciprocal_()


def _forward(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    out = new_output((v.shape[0], z.shape[0]), v.dtype, v.device)
    for part in _chunks(v, z.shape[0]):
        out[:, part] = torch.matmul(v.unsqueeze(1), _inverse_distances(z[part], w)).squeeze(1)
    return out


def _backward(grad: torch.Tensor, v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, need_z: bool):
    dv = torch.zeros_like(v)
    dw_sum = torch.zeros_like(w)
    dz = new_output(z.shape if need_z else (0,), z.dtype, z.device)  # custom ops cannot return None
    v_conj = v.conj().unsqueeze(1)  # (H, 1, N)
    for part in _chunks(v, z.shape[0]):
        r = _inverse_distances(z[part], w).conj_physical_()  # conj(r): (H, N, c)
        g = grad[:, part].unsqueeze(-1)  # (H, c, 1)
        dv += torch.matmul(r, g).squeeze(-1)
        r.mul_(r)  # conj(r)^2
        dw_sum += torch.matmul(r, g).squeeze(-1)
        if need_z:
            dz[part] = -(grad[:, part] * torch.matmul(v_conj, r).squeeze(1)).sum(0)
    return dv, v.conj() * dw_sum, dz


@torch.library.custom_op("ssm_kernels::cauchy_kernel", mutates_args=())
def _cauchy_op(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return _forward(v, z, w)


@_cauchy_op.register_fake
def _(v, z, w):
    return v.new_empty((v.shape[0], z.shape[0]))


@torch.library.custom_op("ssm_kernels::cauchy_kernel_backward", mutates_args=())
def _cauchy_backward_op(grad: torch.Tensor, v: torch.Tensor, z: torch.Tensor, w: torch.Tensor,
                        need_z: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad, v, z, w, need_z)


@_cauchy_backward_op.register_fake
def _(grad, v, z, w, need_z):
    return torch.empty_like(v), torch.empty_like(w), torch.empty_like(z) if need_z else z.new_empty(0)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _autograd_backward(ctx, grad):
    v, z, w = ctx.saved_tensors
    need_z = ctx.needs_input_grad[1]
    dv, dw, dz = _cauchy_backward_op(grad.contiguous(), v, z, w, need_z)
    return dv, dz if need_z else None, dw


_cauchy_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def cauchy_kernel_torch(v, z, w):
    """Fast torch backend (complex64 math, complex128 for complex128). Returns K (H, L) complex."""
    acc_dtype = compute_dtype(v.dtype)
    return _cauchy_op(*(t.to(acc_dtype).contiguous() for t in (v, z, w)))
