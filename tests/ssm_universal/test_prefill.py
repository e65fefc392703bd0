"""Layer prefill (a prompt's outputs and final state without stepping) at the edges the model tests do not
reach: S4's chunks (several, the last one partial), and bad states. Every architecture's prefill against its
steps: tests/ssm_universal/test_models.py::test_prefill_equals_stepping_from_any_state."""
import pytest
import torch

from ssm_kernels.testing import assert_close
from ssm_universal.layers import DSS, H3, S4D
from ssm_universal.layers.gss import GSSDSS
from ssm_universal.layers.s4 import S4

FP32 = torch.float32


def _stepped(layer, x, state):
    outputs = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        outputs.append(y_t)
    return torch.stack(outputs, 1), state


@pytest.mark.parametrize("l_max", [None, 7])
def test_s4_prefill_over_several_chunks_equals_stepping(l_max):
    layer = S4(12, d_state=8, l_max=l_max).eval()
    x = torch.randn(2, 203, 12)
    with torch.no_grad():
        _, state = _stepped(layer, x[:, :3], layer.default_state(2))
        y, prefilled = layer.prefill(x[:, 3:], state, chunk=64)  # 200 = 3 chunks of 64 and one of 8
        y_ref, state_ref = _stepped(layer, x[:, 3:], state)
    assert_close(y, y_ref, FP32, "S4 prefill outputs")
    assert_close(torch.view_as_real(prefilled), torch.view_as_real(state_ref), FP32, "S4 prefill state")


@pytest.mark.parametrize("make", [lambda: S4(8, d_state=4), lambda: S4D(8, d_state=4), lambda: DSS(8, d_state=4),
                                  lambda: H3(8, d_state=4), lambda: GSSDSS(8, 4)],
                         ids=["S4", "S4D", "DSS", "H3", "GSSDSS"])
def test_prefill_rejects_a_state_of_another_shape(make):
    layer = make()
    state = layer.default_state(3)
    wrong = tuple(s[:2] for s in state) if isinstance(state, tuple) else state[:2]
    with pytest.raises(ValueError, match="state"):
        layer.prefill(torch.randn(3, 5, 8), wrong)


def test_bidirectional_layers_have_no_prefill():
    with pytest.raises(RuntimeError, match="bidirectional"):
        S4D(8, d_state=4, bidirectional=True).prefill(torch.randn(1, 5, 8), torch.zeros(1, 8, 2, dtype=torch.complex64))
