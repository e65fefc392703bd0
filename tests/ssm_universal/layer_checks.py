"""Checks shared by the layer tests."""
import torch
import torch.nn.functional as F


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


def check_in_place_steps_equal_forward(layer: torch.nn.Module, x: torch.Tensor, split: int) -> None:
    """For layers whose step updates the state in place and whose forward takes `state=` (Mamba, Mamba2):
    stepping token by token equals the forward; forward(state=) leaves the state the steps leave; a forward
    continuing from a stepped state equals the rest of the forward. x: (B, L, d_model)."""
    from ssm_kernels.testing import assert_close

    fp32 = torch.float32
    batch, length, _ = x.shape
    with torch.no_grad():
        y = layer(x)
        state = layer.default_state(batch)
        steps = []
        for t in range(length):
            y_t, new_state = layer.step(x[:, t], state)
            assert all(a is b for a, b in zip(new_state, state)), "step updates the state in place"
            steps.append(y_t)
        assert_close(torch.stack(steps, 1), y, fp32, "steps")

        forward_state = layer.default_state(batch)
        assert_close(layer(x, state=forward_state), y, fp32, "forward with state")
        for name, s, s_ref in zip(("conv_state", "ssm_state"), state, forward_state):
            assert_close(s, s_ref, fp32, f"{name} after the steps")

        state = layer.default_state(batch)
        for t in range(split):
            layer.step(x[:, t], state)
        assert_close(layer(x[:, split:], state=state), y[:, split:], fp32, "forward continuing a state")


def check_bf16_autocast_with_complex_state(layer: torch.nn.Module, x: torch.Tensor) -> None:
    """Under CPU bf16 autocast: forward and a first step from default_state are bf16 and within the bf16
    tolerance of the fp32 forward, the complex64 state stays complex64, and backward gives finite grads."""
    from ssm_kernels.testing import assert_close

    batch, _, width = x.shape
    y32 = layer(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        y_t, state = layer.step(x[:, 0], layer.default_state(batch))
    assert y.dtype == torch.bfloat16 and state.dtype == torch.complex64 and y_t.shape == (batch, width)
    assert_close(y.float(), y32, torch.bfloat16, "bf16 autocast forward")
    assert_close(y_t.float(), y32[:, 0], torch.bfloat16, "bf16 autocast step")
    y.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def reference_forward(layer, x: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """A kernel-convolution layer's (S4, S4D) math written out in fp64: direct causal (and anti-causal) sums
    with the kernel K (H, L) ((2, H, L) when bidirectional), D skip, GELU, Conv1d(H, 2H, 1) + GLU.
    x: (B, L, H)."""
    u = x.double().transpose(1, 2)  # (B, H, L)
    length = u.shape[-1]
    k0, k1 = (K[0], K[1]) if layer.bidirectional else (K, None)
    y = layer.D.double()[:, None] * u
    for lag in range(min(length, k0.shape[-1])):
        y[..., lag:] += k0[:, lag][:, None] * u[..., :length - lag]
        if k1 is not None and lag + 1 < length:
            y[..., :length - lag - 1] += k1[:, lag][:, None] * u[..., lag + 1:]
    conv = layer.output_linear[0]
    y = F.glu(F.conv1d(F.gelu(y), conv.weight.double(), conv.bias.double()), dim=-2)
    return y.transpose(1, 2)
