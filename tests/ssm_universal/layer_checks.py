"""Checks shared by the layer tests."""
import types

import torch
import torch.nn.functional as F

from ssm_kernels.testing import assert_close

FP32 = torch.float32


def param_id(value):
    """A pytest id for a parameter value: a class's name (layers, exceptions), or keyword arguments as k=v
    (objects by their type's name); None lets pytest number the other values."""
    if isinstance(value, type):
        return value.__name__
    if not isinstance(value, dict):
        return None
    plain = (bool, int, float, str, tuple, type(None))
    return ",".join(f"{k}={v if isinstance(v, plain) else type(v).__name__}" for k, v in value.items()) or "defaults"


def perturbed(module: torch.nn.Module, scale: float = 0.1, seed: int = 1) -> torch.nn.Module:
    """`module` with every parameter moved away from its init by scale * N(0, 1) noise from its own generator
    (the global RNG is left alone), so that every parameter matters (e.g. B off one, channels off a shared
    spectrum)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return module


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
    batch, length, _ = x.shape
    with torch.no_grad():
        y = layer(x)
        state = layer.default_state(batch)
        steps = []
        for t in range(length):
            y_t, new_state = layer.step(x[:, t], state)
            assert all(a is b for a, b in zip(new_state, state)), "step updates the state in place"
            steps.append(y_t)
        assert_close(torch.stack(steps, 1), y, FP32, "steps")

        forward_state = layer.default_state(batch)
        assert_close(layer(x, state=forward_state), y, FP32, "forward with state")
        for name, s, s_ref in zip(("conv_state", "ssm_state"), state, forward_state):
            assert_close(s, s_ref, FP32, f"{name} after the steps")

        state = layer.default_state(batch)
        for t in range(split):
            layer.step(x[:, t], state)
        assert_close(layer(x[:, split:], state=state), y[:, split:], FP32, "forward continuing a state")


def steps_and_forward(layer: torch.nn.Module, x: torch.Tensor, state_shape, **kwargs):
    """For layers whose step returns a new complex64 state and leaves the given one alone (S4, S4D, DSS, S4ND):
    checks that default_state is complex64 zeros of `state_shape` and that the first step leaves it zero, then
    returns (the steps token by token from it, the forward), both (B, L, d_model), without gradients. kwargs go
    to the forward and to every step. x: (B, L, d_model)."""
    batch, length, _ = x.shape
    with torch.no_grad():
        y = layer(x, **kwargs)
        state = layer.default_state(batch)
        assert state.shape == state_shape and state.dtype == torch.complex64 and not state.any()
        steps = []
        for t in range(length):
            y_t, new_state = layer.step(x[:, t], state, **kwargs)
            assert not state.any() or t > 0, "step must not modify the given state"
            steps.append(y_t)
            state = new_state
    return torch.stack(steps, 1), y


def gradients_through_steps(layer: torch.nn.Module, x: torch.Tensor, cotangent: torch.Tensor) -> dict:
    """{parameter name: gradient} of sum(steps * cotangent), the steps taken token by token from default_state
    with the returned states (autograd through the recurrence). Clears the gradients first.
    x, cotangent: (B, L, d_model)."""
    layer.zero_grad()
    state, ys = layer.default_state(x.shape[0]), []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    (torch.stack(ys, 1) * cotangent).sum().backward()
    return {name: p.grad for name, p in layer.named_parameters()}


def check_bf16_autocast(layer: torch.nn.Module, x: torch.Tensor):
    """Under CPU bf16 autocast: forward and a first step from default_state give bf16, finite outputs of the
    right shape within the bf16 tolerance of the fp32 forward, and backward gives finite gradients. Returns the
    state that step returned, for layer-specific checks. x: (B, L, d_model)."""
    batch, _, width = x.shape
    y32 = layer(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        y_t, state = layer.step(x[:, 0], layer.default_state(batch))
    assert y.dtype == torch.bfloat16 and y_t.dtype == torch.bfloat16 and y_t.shape == (batch, width)
    assert torch.isfinite(y_t).all()
    assert_close(y.float(), y32, torch.bfloat16, "bf16 autocast forward")
    assert_close(y_t.float(), y32[:, 0], torch.bfloat16, "bf16 autocast step")
    y.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    return state


def check_same_initialisation(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    """Built from the same seed, ours and the reference have the same state_dict: keys in the same order, and
    equal shapes, dtypes and values."""
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    for key, value in ref_sd.items():
        assert our_sd[key].shape == value.shape and our_sd[key].dtype == value.dtype, key
        assert torch.equal(our_sd[key], value), f"{key}: different initialisation from the same seed"


def check_reference_checkpoint_loads(ours: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor):
    """The reference's state_dict loads into ours with strict=True, and then the outputs and every parameter
    gradient (for a random cotangent) agree in fp32. An output (y, residual) must pass x through as the residual.
    Returns the reference's output y (with its graph)."""
    ours.load_state_dict(ref.state_dict(), strict=True)
    y_ref, y = ref(x), ours(x)
    if isinstance(y_ref, tuple):
        assert isinstance(y, tuple) and y[1] is x and y_ref[1] is x
        y_ref, y = y_ref[0], y[0]
    assert_close(y, y_ref, FP32, "forward")
    cotangent = torch.randn_like(y)
    (y_ref * cotangent).sum().backward()
    (y * cotangent).sum().backward()
    for (name, p_ref), p in zip(ref.named_parameters(), ours.parameters()):
        assert_close(p.grad, p_ref.grad, FP32, f"gradient of {name}")
    return y_ref


def check_prefill_and_decode_match_reference(ours: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor,
                                             prefill: int, y_ref: torch.Tensor) -> None:
    """mamba_ssm's generation protocol: a prefill of `prefill` tokens, then one token at a time through
    inference_params (layer_idx 0), gives the reference's outputs and cached (conv_state, ssm_state), and the
    outputs equal the reference's full forward y_ref. x: (B, L, d_model)."""
    params_ref = types.SimpleNamespace(seqlen_offset=0, key_value_memory_dict={})
    params = types.SimpleNamespace(seqlen_offset=0, key_value_memory_dict={})
    with torch.no_grad():
        outs_ref = [ref(x[:, :prefill], inference_params=params_ref)]
        outs = [ours(x[:, :prefill], inference_params=params)]
        for t in range(prefill, x.shape[1]):
            params_ref.seqlen_offset = params.seqlen_offset = t
            outs_ref.append(ref(x[:, t:t + 1], inference_params=params_ref))
            outs.append(ours(x[:, t:t + 1], inference_params=params))
    assert_close(torch.cat(outs, 1), torch.cat(outs_ref, 1), FP32, "prefill + decode")
    assert_close(torch.cat(outs, 1), y_ref.detach(), FP32, "prefill + decode vs forward")
    for name, s, s_ref in zip(("conv_state", "ssm_state"), params.key_value_memory_dict[0],
                              params_ref.key_value_memory_dict[0]):
        assert_close(s, s_ref, FP32, name)


def check_kernel_and_forward(layer, length: int, expected_kernel) -> torch.Tensor:
    """A kernel-convolution layer's kernel(length) against expected_kernel(layer, length) (shape (H, L), or
    (2, H, L) when bidirectional, fp32), and its forward against reference_forward with that kernel.
    Returns the kernel."""
    K = layer.kernel(length)
    assert K.shape == ((2, layer.H, length) if layer.bidirectional else (layer.H, length))
    assert K.dtype == torch.float32
    with torch.no_grad():
        expected = expected_kernel(layer, length)
        assert_close(K, expected, torch.float32, "kernel")
        x = torch.randn(2, length, layer.H)
        assert_close(layer(x), reference_forward(layer, x, expected), torch.float32, "forward")
    return K


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
