"""Checks shared by the layer tests."""
import torch


def check_shapes_and_grads(layer: torch.nn.Module, x: torch.Tensor, label: str = "") -> None:
    """forward keeps x's shape and dtype; backward gives x and every parameter a finite, non-zero gradient."""
    x = x.detach().requires_grad_()
    y = layer(x)
    assert y.shape == x.shape and y.dtype == x.dtype, label
    y.square().sum().backward()
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all(), label
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, f"{label} {name}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{label} {name}: gradient {p.grad}"
