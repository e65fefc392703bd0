"""SSMLanguageModel.from_pretrained / save_pretrained against transformers' Mamba, Mamba2 and FalconMamba.

Tiny models with random weights (nothing is downloaded): transformers writes them (safetensors, sharded
safetensors, .bin, sharded .bin), ours loads them and gives transformers' logits (fp32, CPU, relative error
below 1e-5) and its greedy tokens; ours writes the transformers format and transformers loads it back with
the same logits. mamba_ssm's MambaLMHeadModel files are written by hand from the same weights under
mamba_ssm's names. Transformers runs its pure-PyTorch path (no mamba_ssm / causal-conv1d needed).
"""
import json
import os

import pytest
import torch

from ssm_kernels.testing import assert_close
from ssm_universal.models import SSMLanguageModel, load_safetensors, save_safetensors

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")

from .hf_versions import mamba2_groups  # noqa: E402

FP32 = torch.float32
TOL = 1e-5
VOCAB = 100
KINDS = ("mamba", "falcon_mamba", "mamba2")


def _hf_model(kind: str, vocab_size: int = VOCAB, **overrides):
    """A tiny transformers CausalLM of `kind` in eval mode, every parameter perturbed away from its init."""
    common = dict(hidden_size=64, num_hidden_layers=2, vocab_size=vocab_size, state_size=8, eos_token_id=None)
    if kind == "mamba":
        config, cls = transformers.MambaConfig(**common, **overrides), transformers.MambaForCausalLM
    elif kind == "falcon_mamba":
        config = transformers.FalconMambaConfig(**common, mixer_rms_eps=1e-3, tie_word_embeddings=False,
                                                **overrides)
        cls = transformers.FalconMambaForCausalLM
    else:
        options = dict(num_heads=8, head_dim=16, n_groups=2, chunk_size=8, layer_norm_epsilon=1e-6)
        options = dict(options, **overrides)
        options["n_groups"] = mamba2_groups(options["n_groups"])
        config = transformers.Mamba2Config(**common, **options)
        cls = transformers.Mamba2ForCausalLM
    model = cls(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _our_logits(model, ids):
    with torch.no_grad():
        return model(ids)


def _check_same_model(ours, hf, ids, new_tokens: int = 6):
    """Same logits, and the same greedy continuation of ids[:, :4] (new_tokens steps)."""
    assert_close(_our_logits(ours, ids), _hf_logits(hf, ids), FP32, "logits", tol=TOL)
    prompt = ids[:, :4]
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                           do_sample=False)
    assert torch.equal(ours.generate(prompt, max_length=4 + new_tokens, top_k=1), expected)


def _write_config(directory, config: dict):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)


def _write_bin_shards(directory, state: dict, shards: int):
    """pytorch_model.bin, or `shards` files + pytorch_model.bin.index.json, as transformers 4 wrote them."""
    if shards == 1:
        torch.save(state, os.path.join(directory, "pytorch_model.bin"))
        return
    names, weight_map = sorted(state), {}
    for k in range(shards):
        part = names[k::shards]
        file = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        torch.save({n: state[n] for n in part}, os.path.join(directory, file))
        weight_map.update({n: file for n in part})
    with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def _save_hf(model, directory, storage: str):
    """transformers' files for `model` in `storage`: safetensors, sharded, bin or sharded_bin."""
    if storage == "safetensors":
        model.save_pretrained(directory)
    elif storage == "sharded":
        model.save_pretrained(directory, max_shard_size="20KB")
        shards = [f for f in os.listdir(directory) if f.endswith(".safetensors")]
        assert os.path.exists(os.path.join(directory, "model.safetensors.index.json")) and len(shards) > 1
    else:
        model.config.save_pretrained(directory)
        _write_bin_shards(directory, {k: v.clone() for k, v in model.state_dict().items()},
                          shards=1 if storage == "bin" else 3)


@pytest.mark.parametrize("storage", ["safetensors", "sharded", "bin", "sharded_bin"])
@pytest.mark.parametrize("kind", KINDS)
def test_transformers_checkpoint_gives_transformers_logits_and_tokens(tmp_path, kind, storage):
    hf = _hf_model(kind)
    _save_hf(hf, tmp_path, storage)
    ours = SSMLanguageModel.from_pretrained(tmp_path)
    assert not ours.training
    assert ours.config["architecture"] == ("mamba2" if kind == "mamba2" else "mamba")
    assert (ours.lm_head.weight is ours.embedding.weight) == hf.config.tie_word_embeddings
    _check_same_model(ours, hf, torch.randint(0, VOCAB, (2, 21)))


@pytest.mark.parametrize("kind,options", [
    ("mamba", dict(use_bias=True, use_conv_bias=False, time_step_rank=6, expand=3, conv_kernel=3,
                   layer_norm_epsilon=1e-3)),
    ("mamba2", dict(use_bias=True, use_conv_bias=False, time_step_limit=[0.05, 0.2], conv_kernel=2, n_groups=4,
                    tie_word_embeddings=True)),
], ids=["mamba", "mamba2"])
def test_config_options_carry_over_both_ways(tmp_path, kind, options):
    hf = _hf_model(kind, **options)
    hf.save_pretrained(tmp_path / "source")
    ours = SSMLanguageModel.from_pretrained(tmp_path / "source")
    ids = torch.randint(0, VOCAB, (2, 19))
    assert_close(_our_logits(ours, ids), _hf_logits(hf, ids), FP32, "logits", tol=TOL)
    ours.save_pretrained(tmp_path / "saved")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    for name in options:  # hf's own values (n_groups may have been lowered to what transformers computes alike)
        assert getattr(back.config, name) == getattr(hf.config, name), name
    assert_close(_hf_logits(back, ids), _hf_logits(hf, ids), FP32, "logits after save_pretrained", tol=TOL)


def _mamba_ssm_files(hf, directory, config: dict):
    """mamba_ssm's MambaLMHeadModel files from a transformers model's weights (its names, torch.save)."""
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone() for k, v in hf.state_dict().items()}
    _write_config(directory, config)
    _write_bin_shards(directory, state, shards=1)


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_mamba_ssm_checkpoint_gives_the_same_logits(tmp_path, layer):
    # vocab_size 97 padded to a multiple of 8: the embedding has 104 rows, as mamba_ssm pads it
    if layer == "Mamba1":
        hf = _hf_model("mamba", vocab_size=104)
        ssm_cfg = {"d_state": 8, "d_conv": 4, "expand": 2}
    else:
        hf = _hf_model("mamba2", vocab_size=104, tie_word_embeddings=True, layer_norm_epsilon=1e-5)
        ssm_cfg = {"layer": "Mamba2", "d_state": 8, "headdim": 16, "ngroups": mamba2_groups(2), "chunk_size": 8}
    _mamba_ssm_files(hf, tmp_path, dict(d_model=64, d_intermediate=0, n_layer=2, vocab_size=97, ssm_cfg=ssm_cfg,
                                        attn_layer_idx=[], attn_cfg={}, rms_norm=True, residual_in_fp32=True,
                                        fused_add_norm=True, pad_vocab_size_multiple=8, tie_embeddings=True))
    ours = SSMLanguageModel.from_pretrained(tmp_path)
    assert ours.vocab_size == 97 and ours.embedding.weight.shape[0] == 104
    ids = torch.randint(0, 97, (2, 19))
    assert_close(_our_logits(ours, ids), _hf_logits(hf, ids), FP32, "logits", tol=TOL)


def test_mamba_ssm_checkpoint_with_layernorm_and_untied_head(tmp_path):
    reference = SSMLanguageModel(50, "mamba", d_model=32, n_layer=2, d_state=4, norm="layernorm",
                                 tie_embeddings=False).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(0.1 * torch.randn_like(param))
    state = {("backbone.embedding.weight" if k == "embedding.weight" else k): v
             for k, v in reference.state_dict().items()}
    assert "backbone.layers.1.norm.bias" in state and "lm_head.weight" in state
    _write_config(tmp_path, dict(d_model=32, n_layer=2, vocab_size=50, ssm_cfg={"d_state": 4}, rms_norm=False,
                                 pad_vocab_size_multiple=1, tie_embeddings=False))
    _write_bin_shards(tmp_path, state, shards=1)
    ours = SSMLanguageModel.from_pretrained(tmp_path)
    ids = torch.randint(0, 50, (2, 9))
    assert torch.equal(_our_logits(ours, ids), _our_logits(reference, ids))


@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_loads_in_transformers_with_the_same_logits(tmp_path, kind):
    if kind == "falcon_mamba":  # a FalconMamba model exists here only as loaded from its checkpoint
        _hf_model(kind).save_pretrained(tmp_path / "source")
        ours = SSMLanguageModel.from_pretrained(tmp_path / "source")
    else:
        extra = dict(headdim=16, ngroups=mamba2_groups(2), chunk_size=8) if kind == "mamba2" else {}
        ours = SSMLanguageModel(VOCAB, kind, d_model=64, n_layer=2, d_state=8, **extra).eval()
        with torch.no_grad():
            for param in ours.parameters():
                param.add_(0.1 * torch.randn_like(param))
    ours.save_pretrained(tmp_path / "saved")
    with open(tmp_path / "saved" / "config.json") as f:
        assert json.load(f)["model_type"] == kind
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert type(hf).__name__ == {"mamba": "MambaForCausalLM", "falcon_mamba": "FalconMambaForCausalLM",
                                 "mamba2": "Mamba2ForCausalLM"}[kind]
    _check_same_model(ours, hf, torch.randint(0, VOCAB, (2, 17)))
    again = SSMLanguageModel.from_pretrained(tmp_path / "saved")
    ids = torch.randint(0, VOCAB, (1, 9))
    assert torch.equal(_our_logits(again, ids), _our_logits(ours, ids))


def test_device_and_dtype_arguments(tmp_path):
    _hf_model("mamba2").save_pretrained(tmp_path)
    fp32 = SSMLanguageModel.from_pretrained(tmp_path)
    bf16 = SSMLanguageModel.from_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    mixer = bf16.backbone.layers[0].mixer
    assert bf16.embedding.weight.dtype == mixer.in_proj.weight.dtype == torch.bfloat16
    assert mixer.A_log.dtype == mixer.D.dtype == mixer.dt_bias.dtype == torch.float32  # kept fp32
    assert mixer.D._no_weight_decay  # the layer's Parameter attributes survive loading
    ids = torch.randint(0, VOCAB, (2, 11))
    assert_close(_our_logits(bf16, ids).float(), _our_logits(fp32, ids), torch.bfloat16, "bf16 logits", tol=3e-2)
    with pytest.raises(TypeError, match="dtype"):
        SSMLanguageModel.from_pretrained(tmp_path, dtype="bfloat16")


def _mutated_checkpoint(tmp_path, mutate):
    """A transformers Mamba checkpoint whose safetensors tensors went through mutate(dict)."""
    _hf_model("mamba").save_pretrained(tmp_path)
    path = os.path.join(tmp_path, "model.safetensors")
    tensors = load_safetensors(path)
    mutate(tensors)
    save_safetensors(tensors, path, metadata={"format": "pt"})
    return tmp_path


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.update({"backbone.layers.0.mixer.extra_weight": torch.zeros(3)}),
     r"unknown keys: backbone\.layers\.0\.mixer\.extra_weight"),
    (lambda t: t.pop("backbone.layers.1.mixer.dt_proj.bias"),
     r"missing keys: backbone\.layers\.1\.mixer\.dt_proj\.bias"),
    (lambda t: t.pop("backbone.embeddings.weight"), r"missing keys: backbone\.embeddings\.weight"),
    (lambda t: t.update({"backbone.layers.0.mixer.A_log": torch.zeros(128, 5)}),
     r"shape mismatches: backbone\.layers\.0\.mixer\.A_log \(128, 5\) \(the model's: \(128, 8\)\)"),
], ids=["unknown", "missing", "missing-embedding", "shape"])
def test_weights_that_do_not_fit_are_named(tmp_path, mutate, message):
    with pytest.raises(ValueError, match=message):
        SSMLanguageModel.from_pretrained(_mutated_checkpoint(tmp_path, mutate))


@pytest.mark.parametrize("edit,message", [
    ({"model_type": "jamba"}, r"model_type 'jamba' is not supported"),
    ({"hidden_act": "gelu"}, r"'hidden_act' = 'gelu' cannot be represented"),
    ({"expand": 1.5}, r"'expand' = 1.5 cannot be represented"),
    ({"state_size": "eight"}, r"'state_size' must be int/float"),
], ids=["model_type", "hidden_act", "expand", "state_size"])
def test_unsupported_transformers_config_is_named(tmp_path, edit, message):
    _hf_model("mamba").save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    _write_config(tmp_path, dict(config, **edit))
    with pytest.raises(ValueError, match=message):
        SSMLanguageModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("edit,message", [
    ({"d_intermediate": 128}, r"'d_intermediate' = 128"),
    ({"attn_layer_idx": [1]}, r"'attn_layer_idx'"),
    ({"ssm_cfg": {"layer": "Mamba3"}}, r"ssm_cfg field 'layer' = 'Mamba3'"),
    ({"ssm_cfg": {"d_state": 8, "bogus": 1}}, r"ssm_cfg has fields \['bogus'\]"),
], ids=["d_intermediate", "attention", "layer", "unknown-ssm_cfg"])
def test_unsupported_mamba_ssm_config_is_named(tmp_path, edit, message):
    _write_config(tmp_path, dict(dict(d_model=64, n_layer=2, vocab_size=100, ssm_cfg={"d_state": 8}), **edit))
    with pytest.raises(ValueError, match=message):
        SSMLanguageModel.from_pretrained(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        SSMLanguageModel.from_pretrained(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="config.json"):
        SSMLanguageModel.from_pretrained(tmp_path)
    _hf_model("mamba").config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SSMLanguageModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("kwargs,message", [
    (dict(architecture="s4d"), r"architecture 's4d' has no transformers format.*mamba, mamba2"),
    (dict(architecture="mamba2", block_type="sequential", headdim=16), r"block_type 'sequential'"),
    (dict(architecture="mamba", norm="layernorm"), r"norm 'layernorm'"),
    (dict(architecture="mamba", conv_kernel_size=3), r"conv_kernel_size"),
    (dict(architecture="mamba2", headdim=16, D_has_hdim=True), r"D_has_hdim"),
], ids=["s4d", "mamba2-sequential", "layernorm", "conv-gate", "D_has_hdim"])
def test_save_pretrained_refuses_what_transformers_cannot_represent(tmp_path, kwargs, message):
    model = SSMLanguageModel(VOCAB, d_model=32, n_layer=1, d_state=4, **kwargs)
    with pytest.raises(ValueError, match=message):
        model.save_pretrained(tmp_path)
    assert not os.path.exists(tmp_path / "config.json")
