"""The top-level API of ssm_universal: every layer and model class importable from the package, lazily."""
import subprocess
import sys

import torch

import ssm_universal
import ssm_universal.context_parallel
import ssm_universal.layers
import ssm_universal.models

PUBLIC_MODULES = (ssm_universal.layers, ssm_universal.models, ssm_universal.context_parallel)


def test_every_public_name_is_exported_at_the_top_level():
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            assert getattr(ssm_universal, name) is getattr(module, name), name
    assert set().union(*(module.__all__ for module in PUBLIC_MODULES)) == set(ssm_universal.__all__)


def test_create_model_from_the_top_level():
    model = ssm_universal.create_model("mamba", d_model=32, n_layer=1)
    assert isinstance(model, ssm_universal.SSMModel)
    lm = ssm_universal.SSMLanguageModel(vocab_size=50, architecture="mamba", d_model=32, n_layer=1)
    assert lm(torch.randint(0, 50, (1, 5))).shape == (1, 5, 50)


def test_import_is_lazy_and_leaves_cuda_alone():
    code = ("import sys, torch, ssm_universal as su; "
            "assert 'ssm_universal.layers' not in sys.modules and 'ssm_kernels' not in sys.modules; "
            "su.Mamba2; assert 'ssm_universal.layers' in sys.modules; "
            "assert not torch.cuda.is_initialized(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_unknown_name_raises_attribute_error():
    try:
        ssm_universal.NotALayer
    except AttributeError as error:
        assert "NotALayer" in str(error)
    else:
        raise AssertionError("no AttributeError")
