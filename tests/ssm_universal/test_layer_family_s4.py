"""What every layer of the S4 family (S4, S4D, DSS, S4ND) does the same way, checked once for each layer that has
it: a bidirectional layer uses future inputs, the transposed layout, lr registration of the SSM parameters,
dropout tied over the sequence, step gradients == forward gradients, shapes/grads, bf16 autocast, bad arguments
and bad inputs. Each layer's own math is checked in its test_<layer>.py."""
import math

import pytest
import torch

from ssm_kernels.testing import assert_close
from ssm_universal.layers.dss import DSS
from ssm_universal.layers.h3 import H3
from ssm_universal.layers.s4 import S4
from ssm_universal.layers.s4d import S4D
from ssm_universal.layers.s4nd import S4ND
from tests.ssm_universal.layer_checks import (check_bf16_autocast, check_shapes_and_grads, gradients_through_steps,
                                              param_id, perturbed)

FP32 = torch.float32


# the output matrix (C; W for DSS) of a bidirectional layer with H = 4, d_state = 8: (2, H, modes, 2), complex as pairs
BIDIRECTIONAL = [(S4, "C", (2, 4, 4, 2)), (S4D, "C", (2, 4, 4, 2)), (DSS, "W", (2, 4, 8, 2))]


@pytest.mark.parametrize("cls, output, output_shape", BIDIRECTIONAL, ids=param_id)
def test_bidirectional_uses_future_inputs(cls, output, output_shape):
    torch.manual_seed(0)
    bi = cls(4, d_state=8, bidirectional=True)
    causal = cls(4, d_state=8)
    assert getattr(bi, output).shape == output_shape and bi.kernel(10).shape == (2, 4, 10)
    x = torch.randn(1, 16, 4, requires_grad=True)
    t0 = 7
    for layer, future in ((bi, True), (causal, False)):
        x.grad = None
        layer(x)[0, t0].sum().backward()
        past, later = x.grad[0, :t0 + 1].abs().sum(), x.grad[0, t0 + 1:].abs().sum()
        assert past > 0 and (later > 1e-2 * past if future else later < 1e-6 * past)  # FFT rounding leaks
    # with the anti-causal output matrix zeroed, the bidirectional layer is the causal layer with the same parameters
    causal.load_state_dict({**bi.state_dict(), output: getattr(bi, output)[0].detach()})
    with torch.no_grad():
        assert (bi(x) - causal(x)).abs().max() > 1e-3
        getattr(bi, output)[1].zero_()
        assert_close(bi(x), causal(x), FP32, f"bidirectional with {output}[1] = 0")
    with pytest.raises(RuntimeError, match="bidirectional"):
        bi.step(x[:, 0].detach(), torch.zeros(1, 4, 4, dtype=torch.complex64))
    with pytest.raises(RuntimeError, match="bidirectional"):
        bi.default_state(1)


@pytest.mark.parametrize("cls", [S4, S4D, DSS], ids=param_id)
def test_transposed_layout(cls):
    torch.manual_seed(0)
    layer = cls(5, d_state=4)
    x = torch.randn(2, 11, 5)
    y = layer(x)
    layer.transposed = True
    yt = layer(x.transpose(1, 2).contiguous())
    assert yt.shape == (2, 5, 11)
    assert_close(yt.transpose(1, 2), y, FP32, "transposed")
    with pytest.raises(ValueError, match="d_model"):
        layer(x)


# the SSM parameters lr registers, and one of them checked for its default optimizer hint
LR = [(S4, {"log_dt", "A_real_log", "A_imag", "P", "B"}, "P"), (S4D, {"log_dt", "A_real_log", "A_imag", "B"}, "log_dt")]


@pytest.mark.parametrize("cls, ssm, default_checked", LR, ids=param_id)
def test_lr_registration(cls, ssm, default_checked):
    frozen = cls(4, d_state=4, lr=0.0)
    assert set(dict(frozen.named_buffers())) == ssm
    assert {n for n, _ in frozen.named_parameters()} == {"C", "D", "output_linear.0.weight", "output_linear.0.bias"}
    tuned = cls(4, d_state=4, lr=1e-3)
    for name in ssm:
        assert getattr(tuned, name)._optim == {"weight_decay": 0.0, "lr": 1e-3}
    assert getattr(cls(4, d_state=4), default_checked)._optim == {"weight_decay": 0.0}
    assert not hasattr(tuned.C, "_optim")
    frozen(torch.randn(1, 5, 4)).sum().backward()  # buffers take no gradient; the rest trains
    assert frozen.C.grad is not None


@pytest.mark.parametrize("cls", [S4, S4D], ids=param_id)
def test_dropout_is_tied_over_the_sequence(cls):
    torch.manual_seed(0)
    layer = cls(8, d_state=4, dropout=0.5)
    seen = []
    layer.output_linear.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.randn(4, 12, 8)
    layer.train()
    y1, y2 = layer(x), layer(x)
    assert not torch.equal(y1, y2)
    dropped = seen[0] == 0
    assert dropped.any() and (dropped.all(-1) == dropped.any(-1)).all(), "whole (batch, channel) rows dropped"
    layer.eval()
    reference = cls(8, d_state=4)
    reference.load_state_dict(layer.state_dict())
    assert torch.equal(layer(x), reference(x))


@pytest.mark.parametrize("cls, kwargs", [(S4D, dict()), (DSS, dict(version="softmax", lambda_init="randn", l_max=9)),
                                         (H3, dict(head_dim=2))], ids=param_id)
def test_step_gradients_equal_forward_gradients(cls, kwargs):
    # in fp64: the softmax kernel is normalised over its length, so its log_dt gradient is a small difference
    # of large terms, and in fp32 both paths are ~1.5e-5 (relative) from the fp64 value, each on its own side
    torch.manual_seed(0)
    layer = perturbed(cls(4, d_state=6, **kwargs)).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    cotangent = torch.randn(2, 9, 4, dtype=torch.float64)
    (layer(x) * cotangent).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    for name, grad in gradients_through_steps(layer, x, cotangent).items():
        assert_close(grad, grads[name], torch.float64, f"gradient of {name} through the steps")


S4ND_DT = dict(dt_min=0.05, dt_max=0.5)
SHAPES_AND_GRADS = (  # (class, kwargs, x shape (B, *spatial, d_model)); every layer with d_state=6
    [(S4, kwargs, (2, 17, 8)) for kwargs in (dict(), dict(l_max=12), dict(bidirectional=True, l_max=24),
                                             dict(bidirectional=True, dropout=0.1))]
    + [(S4D, kwargs, (2, 17, 8)) for kwargs in (dict(), dict(bidirectional=True, discretization="bilinear",
                                                             init="diag-legs"))]
    + [(DSS, kwargs, (2, 17, 8)) for kwargs in (
        dict(), dict(version="softmax", lambda_init="randn", bidirectional=True, sep_dt_re_im=True),
        dict(dropout=0.2, bidirectional=True))]
    + [(S4ND, dict(dim=len(shape) - 2, **S4ND_DT, **kwargs), shape) for kwargs, shape in (
        (dict(bidirectional=False), (2, 13, 4)), (dict(bandlimit=0.5), (2, 13, 4)), (dict(l_max=4), (2, 7, 6, 4)),
        (dict(bidirectional=(True, False), init="diag-inv"), (2, 7, 6, 4)), (dict(bandlimit=0.5), (1, 4, 5, 3, 4)))]
)


@pytest.mark.parametrize("cls, kwargs, shape", SHAPES_AND_GRADS, ids=param_id)
def test_forward_backward_shapes_and_finite_grads(cls, kwargs, shape):
    torch.manual_seed(0)
    check_shapes_and_grads(cls(shape[-1], d_state=6, **kwargs), torch.randn(*shape), f"{cls.__name__} {kwargs}")


BF16 = [(S4, dict(l_max=None)), (S4, dict(l_max=32)), (S4D, dict()), (DSS, dict(version="exp", l_max=17)),
        (DSS, dict(version="softmax", l_max=17)), (S4ND, dict(dim=1, bidirectional=False))]


@pytest.mark.parametrize("cls, kwargs", BF16, ids=param_id)
def test_bf16_autocast(cls, kwargs):
    """See check_bf16_autocast; the recurrent state stays complex64."""
    torch.manual_seed(0)
    state = check_bf16_autocast(cls(16, d_state=8, **kwargs), torch.randn(2, 17, 16))
    assert state.dtype == torch.complex64


BAD_ARGUMENTS = {  # with d_model=4
    S4: [(dict(d_model=0), ValueError), (dict(d_model=4.0), TypeError), (dict(d_state=7), ValueError),
         (dict(d_state=0), ValueError), (dict(l_max=0), ValueError), (dict(l_max=3.5), TypeError),
         (dict(dt_min=0.0), ValueError), (dict(dt_min=0.2, dt_max=0.1), ValueError),
         (dict(dt_max=math.inf), ValueError), (dict(bidirectional=1), TypeError), (dict(transposed="no"), TypeError),
         (dict(dropout=1.0), ValueError), (dict(lr=-1.0), ValueError)],
    S4D: [(dict(d_model=0), ValueError), (dict(d_model=4.0), TypeError), (dict(d_state=7), ValueError),
          (dict(d_state=0), ValueError), (dict(l_max=0), ValueError), (dict(init="legs"), ValueError),
          (dict(discretization="euler"), ValueError), (dict(dt_min=0.0), ValueError),
          (dict(dt_min=0.2, dt_max=0.1), ValueError), (dict(dt_max=math.inf), ValueError),
          (dict(bidirectional=1), TypeError), (dict(transposed="no"), TypeError), (dict(dropout=1.0), ValueError),
          (dict(lr=-1.0), ValueError)],
    DSS: [(dict(d_model=0), ValueError), (dict(d_model=4.0), TypeError), (dict(d_state=0), ValueError),
          (dict(l_max=0), ValueError), (dict(version="clip"), ValueError), (dict(lambda_init="legs"), ValueError),
          (dict(lambda_init="randn"), ValueError), (dict(dt_min=0.0), ValueError),
          (dict(dt_min=0.2, dt_max=0.1), ValueError), (dict(dt_max=math.inf), ValueError),
          (dict(epsilon=0.0), ValueError), (dict(bidirectional=1), TypeError), (dict(transposed="no"), TypeError),
          (dict(sep_dt_re_im=None), TypeError), (dict(dropout=1.0), ValueError)],
    S4ND: [(dict(d_model=0), ValueError), (dict(d_model=4.0), TypeError), (dict(d_state=7), ValueError),
           (dict(dim=4), ValueError), (dict(dim=None), ValueError), (dict(dim=2, l_max=(4, 4, 4)), ValueError),
           (dict(l_max=0), ValueError), (dict(l_max=(4, 2.5)), TypeError), (dict(bidirectional=1), TypeError),
           (dict(bidirectional=(True,)), ValueError), (dict(bandlimit=0.0), ValueError),
           (dict(bandlimit=math.nan), ValueError), (dict(init="legs"), ValueError), (dict(dt_min=0.0), ValueError),
           (dict(dt_min=0.2, dt_max=0.1), ValueError), (dict(dropout=1.0), ValueError),
           (dict(transposed=1), TypeError)],
}


@pytest.mark.parametrize("cls, kwargs, error", [(cls, kwargs, error) for cls, cases in BAD_ARGUMENTS.items()
                                                for kwargs, error in cases], ids=param_id)
def test_bad_arguments(cls, kwargs, error):
    with pytest.raises(error, match=cls.__name__):
        cls(**{"d_model": 4, **kwargs})


@pytest.mark.parametrize("cls, kwargs", [(S4, dict()), (S4D, dict()), (DSS, dict()), (H3, dict(head_dim=2)),
                                         (S4ND, dict(dim=1, bidirectional=False))], ids=param_id)
def test_bad_inputs(cls, kwargs):
    layer = cls(4, d_state=4, **kwargs)
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="x_t"):
        layer.step(torch.randn(2, 5), layer.default_state(2))
    with pytest.raises(ValueError, match="state"):
        layer.step(torch.randn(2, 4), layer.default_state(3))
