"""What the Mamba-style blocks (Mamba, Mamba2, Mamba2Sequential, and GatedMLP with and without an SSM branch) do
the same way, checked once for each block that has it: shapes/grads, bf16 autocast with a decoding step, bad
constructor arguments. Each block's own math and its reference comparisons are in its test_<layer>.py."""
import pytest
import torch

from ssm_universal.layers.gated_mlp import GatedMLP
from ssm_universal.layers.mamba import Mamba
from ssm_universal.layers.mamba2 import Mamba2
from ssm_universal.layers.mamba2_sequential import Mamba2Sequential
from tests.ssm_universal.layer_checks import check_bf16_autocast, check_shapes_and_grads, param_id


@pytest.mark.parametrize("cls, kwargs", [
    (Mamba, dict(d_model=32, d_state=8)),
    (Mamba2, dict(d_model=16, d_state=8, headdim=8, d_ssm=24, ngroups=3, bias=True, chunk_size=8)),
], ids=param_id)
def test_forward_backward_shapes_and_finite_grads(cls, kwargs):
    torch.manual_seed(0)
    check_shapes_and_grads(cls(**kwargs), torch.randn(2, 17, kwargs["d_model"]))


@pytest.mark.parametrize("cls, kwargs", [  # width 32 (Mamba*) or 16 (GatedMLP)
    (Mamba, dict(d_model=32, d_state=8)),
    (Mamba2, dict(d_model=32, d_state=8, headdim=8, chunk_size=8)),
    (Mamba2Sequential, dict(d_model=32, d_state=8, headdim=8, chunk_size=8)),
    (GatedMLP, dict(in_features=16, multiple_of=16)),
    (GatedMLP, dict(in_features=16, multiple_of=16, ssm="mamba2_sequential",
                    ssm_kwargs=dict(d_state=4, headdim=8, chunk_size=8))),
], ids=param_id)
def test_bf16_autocast(cls, kwargs):
    """See check_bf16_autocast: the decoding step runs from default_state's fp32 cache."""
    torch.manual_seed(0)
    check_bf16_autocast(cls(**kwargs), torch.randn(2, 17, kwargs.get("d_model", kwargs.get("in_features"))))


BAD_ARGUMENTS = {  # class: (the valid arguments the bad ones replace, [(bad arguments, error)])
    Mamba: (dict(d_model=16, d_state=4), [
        (dict(d_model=0), ValueError),
        (dict(d_state=2.5), TypeError),
        (dict(d_conv=0), ValueError),
        (dict(expand=1.3), ValueError),           # expand * d_model not an integer
        (dict(expand=-2), ValueError),
        (dict(dt_rank=0), ValueError),
        (dict(dt_rank="full"), TypeError),
        (dict(dt_min=0.2), ValueError),           # > dt_max
        (dict(dt_init_floor=0.0), ValueError),
        (dict(dt_init="xavier"), ValueError),
        (dict(dt_scale=float("nan")), ValueError),
        (dict(layer_idx=-1), ValueError),
        (dict(mixer_rms_eps=0.0), ValueError),
    ]),
    Mamba2: (dict(d_model=16, d_state=4, headdim=8), [
        (dict(process_group=object()), ValueError),
        (dict(headdim=5), ValueError),            # does not divide d_ssm = 32
        (dict(ngroups=3), ValueError),            # does not divide nheads = 4
        (dict(d_ssm=40), ValueError),             # > d_inner = 32
        (dict(d_model=0), ValueError),
        (dict(d_state=2.5), TypeError),
        (dict(A_init_range=(0, 4)), ValueError),
        (dict(dt_min=0.2), ValueError),           # > dt_max
        (dict(dt_limit=(0.1, 0.01)), ValueError),
        (dict(dt_limit=0.1), TypeError),
        (dict(chunk_size=0), ValueError),
        (dict(expand=1.3), ValueError),           # expand * d_model not an integer
    ]),
    Mamba2Sequential: (dict(d_model=16, d_state=4, headdim=8), [
        (dict(headdim=5), ValueError),            # does not divide d_inner = 32
        (dict(ngroups=3), ValueError),            # does not divide nheads = 4
        (dict(d_model=0), ValueError),
        (dict(d_state=2.5), TypeError),
        (dict(A_init_range=(0, 4)), ValueError),
        (dict(dt_min=0.2), ValueError),           # > dt_max
        (dict(dt_init_floor=0.0), ValueError),
        (dict(dt_limit=(0.1, 0.01)), ValueError),
        (dict(dt_limit=0.1), TypeError),
        (dict(chunk_size=0), ValueError),
        (dict(expand=1.3), ValueError),           # expand * d_model not an integer
        (dict(conv_init=-1.0), ValueError),
        (dict(layer_idx=-1), ValueError),
    ]),
    GatedMLP: (dict(in_features=8), [
        (dict(in_features=0), ValueError),
        (dict(hidden_features=2.5), TypeError),
        (dict(multiple_of=0), ValueError),
        (dict(activation="tanhh"), ValueError),
        (dict(activation=3), TypeError),
        (dict(bias1="yes"), TypeError),
        (dict(ssm="s6"), ValueError),
        (dict(ssm=3), TypeError),
        (dict(ssm=Mamba(4)), ValueError),                 # width 4 != in_features 8
        (dict(ssm_kwargs=dict(d_state=4)), ValueError),   # without a named ssm
    ]),
}


@pytest.mark.parametrize("cls, kwargs, error", [(cls, kwargs, error) for cls, (_, cases) in BAD_ARGUMENTS.items()
                                                for kwargs, error in cases], ids=param_id)
def test_bad_arguments(cls, kwargs, error):
    valid = BAD_ARGUMENTS[cls][0]
    with pytest.raises(error, match=cls.__name__):
        cls(**{**valid, **kwargs})


@pytest.mark.parametrize("cls, kwargs", [
    (Mamba, dict(d_model=16, d_state=4, layer_idx=0)),
    (Mamba2, dict(d_model=16, d_state=4, headdim=8, chunk_size=8, layer_idx=0)),
    (Mamba2Sequential, dict(d_model=16, d_state=4, headdim=8, chunk_size=8, layer_idx=0)),
], ids=param_id)
def test_state_and_inference_params_are_exclusive(cls, kwargs):
    """One call continues one state: state= and mamba_ssm's inference_params together are refused."""
    layer = cls(**kwargs)

    class Params:  # mamba_ssm's InferenceParams, the fields the layers read
        key_value_memory_dict, seqlen_offset = {}, 0
    with pytest.raises(ValueError, match="either state= or inference_params"):
        layer(torch.randn(2, 5, 16), inference_params=Params(), state=layer.default_state(2))
