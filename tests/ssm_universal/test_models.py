"""create_model for every architecture, the language model and generation, save/load."""
import json
import math

import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_map

from ssm_kernels.testing import assert_close
from ssm_universal.models import (ARCHITECTURES, SSMLanguageModel, create_model, load_safetensors,
                                  load_state_dict, save_safetensors, save_state_dict)
from ssm_universal.layers._step_constants import FrozenStepConstants
from ssm_universal.models.cuda_graph import GraphedStep
from ssm_universal.models.language_model import sample
from ssm_universal.models.serialization import read_safetensors_metadata
from tests.ssm_universal.layer_checks import check_shapes_and_grads

FP32 = torch.float32
SMALL = dict(d_model=16, d_state=8, n_layer=2)
# (architecture, block_type, extra create_model arguments for tiny sizes)
CONFIGS = [(name, None, {}) for name in ARCHITECTURES if name != "mamba2"] + [
    ("mamba2", "parallel", {}), ("mamba2", "sequential", {})]


def _ids(configs):
    return [f"{a}-{b}" if b else a for a, b, _ in configs]


def _stepped(model, x):
    state = model.default_state(x.shape[0])
    outputs = []
    for t in range(x.shape[1]):
        y_t, state = model.step(x[:, t], state)
        outputs.append(y_t)
    return torch.stack(outputs, 1)


@pytest.mark.parametrize("architecture,block_type,extra", CONFIGS, ids=_ids(CONFIGS))
def test_every_architecture_forward_backward_and_step(architecture, block_type, extra):
    model = create_model(architecture, block_type=block_type, **SMALL, **extra)
    x = torch.randn(2, 11, 16)
    check_shapes_and_grads(model, x, architecture)
    model.eval()
    with torch.no_grad():
        assert_close(_stepped(model, x), model(x), FP32, f"{architecture} steps")


@pytest.mark.parametrize("architecture,block_type,extra", CONFIGS, ids=_ids(CONFIGS))
def test_conv_gate_and_dropout_options(architecture, block_type, extra):
    model = create_model(architecture, block_type=block_type, conv_kernel_size=3, dropout=0.1, norm="layernorm",
                         **SMALL, **extra)
    assert all(block.conv_gate is not None for block in model.layers)
    x = torch.randn(2, 9, 16)
    model.train()
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(first, model(x)), "dropout is active in training"
    model.eval()
    with torch.no_grad():
        y = model(x)
        assert_close(_stepped(model, x), y, FP32, f"{architecture} steps with the conv gate")
        # causal: changing the last input leaves every earlier output unchanged
        x2 = x.clone()
        x2[:, -1] += 1.0
        assert_close(model(x2)[:, :-1], y[:, :-1], FP32, "causal")


def _leaves(state):
    return [torch.view_as_real(t) if t.is_complex() else t for t in tree_flatten(state)[0] if torch.is_tensor(t)]


PREFILL_CONFIGS = CONFIGS + [("s4d", None, dict(l_max=5)), ("dss", None, dict(version="softmax", l_max=16)),
                             ("h3", None, dict(head_dim=4, l_max=3))]


@pytest.mark.parametrize("architecture,block_type,extra", PREFILL_CONFIGS, ids=_ids(PREFILL_CONFIGS))
def test_prefill_equals_stepping_from_any_state(architecture, block_type, extra):
    """model.prefill over a prompt, from the state some steps left, gives the outputs and the state that
    stepping through the prompt gives (each layer's parallel form where it has one; l_max does not truncate)."""
    model = create_model(architecture, block_type=block_type, conv_kernel_size=3, **SMALL, **extra).eval()
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        state = model.default_state(2)
        for t in range(4):
            _, state = model.step(x[:, t], state)
        copy = tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, state)
        y, prefilled = model.prefill(x[:, 4:], copy)
        stepped = []
        for t in range(4, 13):
            y_t, state = model.step(x[:, t], state)
            stepped.append(y_t)
    assert_close(y, torch.stack(stepped, 1), FP32, f"{architecture} prefill outputs")
    for i, (a, b) in enumerate(zip(_leaves(prefilled), _leaves(state), strict=True)):
        assert_close(a, b, FP32, f"{architecture} prefill state leaf {i}")


@pytest.mark.parametrize("architecture,block_type,extra", CONFIGS, ids=_ids(CONFIGS))
def test_generate_with_prefill_equals_token_by_token(architecture, block_type, extra):
    lm = _lm(architecture, block_type=block_type, conv_kernel_size=3, **extra)
    ids = torch.randint(0, 37, (3, 7))
    out = lm.generate(ids, max_length=15, top_k=1)
    assert torch.equal(out, lm.generate(ids, max_length=15, top_k=1, prefill=False))
    assert torch.equal(lm.generate(ids[:, :1], max_length=2, top_k=1),
                       lm.generate(ids[:, :1], max_length=2, top_k=1, prefill=False))
    with pytest.raises(TypeError, match="prefill"):
        lm.generate(ids, max_length=9, prefill=1)


def test_readme_examples_run():
    x = torch.randn(1, 5, 256)
    for kwargs in (dict(architecture="mamba2", block_type="sequential", d_model=256, d_state=16, n_layer=4),
                   dict(architecture="h3", d_model=256, d_state=64, n_layer=4)):
        model = create_model(**kwargs)
        assert model(x).shape == x.shape
        assert len(model.layers) == kwargs["n_layer"]
    model = create_model(architecture="mamba2", block_type="parallel", d_model=512, d_state=32, n_layer=6,
                         d_conv=8, expand_factor=4, conv_kernel_size=7, dropout=0.1)
    mixer = model.layers[0].mixer
    assert (mixer.d_inner, mixer.d_state, mixer.d_conv) == (2048, 32, 8)
    assert model.layers[0].conv_gate.weight.shape == (512, 7) and model.layers[0].dropout.p == 0.1
    assert model(torch.randn(1, 5, 512)).shape == (1, 5, 512)


def test_layer_options_reach_the_layer():
    model = create_model("s4d", init="diag-inv", **SMALL)
    assert model.layers[0].mixer.init == "diag-inv"
    model = create_model("mamba2", headdim=4, **SMALL)
    assert model.layers[1].mixer.headdim == 4 and model.layers[1].mixer.layer_idx == 1


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(architecture="transformer"), ValueError, "architecture"),
    (dict(architecture="mamba", block_type="parallel"), ValueError, "block_type"),
    (dict(architecture="mamba2", block_type="diagonal"), ValueError, "block_type"),
    (dict(architecture="s4d", n_layer=0), ValueError, "n_layer"),
    (dict(architecture="s4d", d_model=2.5), TypeError, "d_model"),
    (dict(architecture="s4d", dropout=1.0), ValueError, "dropout"),
    (dict(architecture="s4d", conv_kernel_size=0), ValueError, "conv_kernel_size"),
    (dict(architecture="s4d", norm="batchnorm"), ValueError, "norm"),
])
def test_create_model_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        create_model(**kwargs)


def test_bf16_autocast():
    model = create_model("mamba", **SMALL)
    x = torch.randn(2, 7, 16)
    y32 = model(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert_close(y.float(), y32, torch.bfloat16, "bf16 autocast")
    y.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- language model ---------------------------------------------------------------------------------------
def _lm(architecture="mamba", **kwargs):
    torch.manual_seed(0)
    return SSMLanguageModel(37, architecture, d_model=16, n_layer=2, d_state=8, **kwargs)


@pytest.mark.parametrize("architecture,block_type,extra", CONFIGS, ids=_ids(CONFIGS))
def test_language_model_on_every_architecture(architecture, block_type, extra):
    lm = _lm(architecture, block_type=block_type, **extra)
    ids = torch.randint(0, 37, (2, 9))
    logits, loss = lm(ids, labels=ids)
    assert logits.shape == (2, 9, 37)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 37), ids[:, 1:].reshape(-1))
    assert_close(loss, expected, FP32, "loss")
    loss.backward()
    assert lm.embedding.weight.grad is not None and torch.isfinite(lm.embedding.weight.grad).all()
    out = lm.generate(ids[:, :3], max_length=6, top_k=1)
    assert out.shape == (2, 6) and torch.equal(out[:, :3], ids[:, :3])


def test_loss_ignores_minus_100_and_ties_embeddings():
    lm = _lm()
    assert lm.lm_head.weight is lm.embedding.weight
    ids = torch.randint(0, 37, (2, 8))
    labels = ids.clone()
    labels[:, 5:] = -100
    logits, loss = lm(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, 37), ids[:, 1:5].reshape(-1))
    assert_close(loss, expected, FP32, "masked loss")
    untied = _lm(tie_embeddings=False, pad_vocab_size_multiple=8)
    assert untied.lm_head.weight is not untied.embedding.weight and untied.embedding.weight.shape[0] == 40


@pytest.mark.parametrize("architecture", ["mamba", "s4d", "h3"])
def test_greedy_generate_equals_repeated_full_forwards(architecture):
    lm = _lm(architecture).eval()
    ids = torch.randint(0, 37, (3, 4))
    out = lm.generate(ids, max_length=12, top_k=1)
    expected = ids
    with torch.no_grad():
        while expected.shape[1] < 12:
            nxt = lm(expected)[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, nxt], 1)
    assert torch.equal(out, expected)
    assert torch.equal(lm.generate(ids, max_length=12, temperature=0.0), expected)


def test_generate_state_is_constant_size_and_mode_restored():
    lm = _lm("mamba2").train()
    sizes = []
    for length in (3, 20):
        state = lm.default_state(2)
        for t in range(length):
            _, state = lm.step(torch.randint(0, 37, (2,)), state)
        sizes.append(sum(t.numel() for t in _tensors(state)))
    assert sizes[0] == sizes[1]
    lm.generate(torch.randint(0, 37, (2, 3)), max_length=5)
    assert lm.training


def test_generate_runs_in_eval_mode_and_restores_each_modules_mode():
    """Dropout is off inside generate whatever the modes, and a mixed set of modes comes back as it was."""
    lm = _lm("mamba", dropout=0.5)
    ids = torch.randint(0, 37, (2, 4))
    expected = lm.eval().generate(ids, max_length=9, top_k=1)
    lm.train()
    lm.backbone.layers[1].eval()
    modes = [m.training for m in lm.modules()]
    assert torch.equal(lm.generate(ids, max_length=9, top_k=1), expected)
    assert [m.training for m in lm.modules()] == modes


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    if tree is None:
        return []
    return [t for item in tree for t in _tensors(item)]


def test_generate_eos_and_seeded_sampling():
    lm = _lm()
    ids = torch.randint(0, 37, (2, 2))
    a = lm.generate(ids, max_length=10, top_p=0.9, generator=torch.Generator().manual_seed(3))
    b = lm.generate(ids, max_length=10, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    greedy = lm.generate(ids, max_length=10, top_k=1)
    eos = int(greedy[0, 2])
    out = lm.generate(ids, max_length=10, top_k=1, eos_token_id=eos)
    assert (out[0, 2:] == eos).all()


def test_sample_top_k_and_top_p_restrict_the_support():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])  # not sorted, so that the top-p mask must be unsorted
    logits = probs.log().repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)

    def support(**kwargs):
        counts = torch.bincount(sample(logits, generator=gen, **kwargs), minlength=4)
        return set(torch.nonzero(counts).flatten().tolist()), counts / 4000

    kept, freq = support(top_k=2)
    assert kept == {1, 3} and abs(freq[1] - 0.5 / 0.8) < 0.03
    assert support(top_p=0.75)[0] == {1, 3}, "0.5 + 0.3 reaches top_p: the rest is dropped"
    assert support(top_p=0.85)[0] == {0, 1, 3}
    assert support(top_p=0.4)[0] == {1}, "the top token always stays"
    kept, freq = support(temperature=0.5)
    assert kept == {0, 1, 2, 3} and abs(freq[1] - 0.25 / (probs ** 2).sum()) < 0.03


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(max_length=2), ValueError, "max_length"),
    (dict(max_length=5, temperature=-1.0), ValueError, "temperature"),
    (dict(max_length=5, top_k=0), ValueError, "top_k"),
    (dict(max_length=5, top_p=0.0), ValueError, "top_p"),
    (dict(max_length=5, top_p=float("nan")), ValueError, "top_p"),
    (dict(max_length=5, cuda_graph=True), ValueError, "cuda_graph=True needs CUDA tensors"),
])
def test_generate_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        _lm().generate(torch.randint(0, 37, (1, 3)), **kwargs)
    with pytest.raises(TypeError, match="input_ids"):
        _lm().generate(torch.randn(1, 3), max_length=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("architecture,block_type,extra", CONFIGS, ids=_ids(CONFIGS))
def test_cuda_graph_generate_equals_eager(architecture, block_type, extra):
    """Greedy decoding replayed from one CUDA graph per step gives the eager tokens, twice in a row (the
    state buffers are reset between generations), at a second batch size, after a token-by-token prompt and
    after left-padded prompts of different lengths (each group's prefilled state loaded into the graph)."""
    torch.manual_seed(0)
    lm = _lm(architecture, block_type=block_type, **extra).cuda()
    for batch in (2, 3):
        ids = torch.randint(0, 37, (batch, 4), device="cuda")
        eager = lm.generate(ids, max_length=12, top_k=1)
        assert torch.equal(lm.generate(ids, max_length=12, top_k=1, cuda_graph=True), eager)
        assert torch.equal(lm.generate(ids, max_length=12, top_k=1, cuda_graph=True), eager)
        assert torch.equal(lm.generate(ids, max_length=12, top_k=1, cuda_graph=True, prefill=False),
                           lm.generate(ids, max_length=12, top_k=1, prefill=False))
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]], device="cuda")
    assert torch.equal(lm.generate(ids, max_length=12, top_k=1, cuda_graph=True, attention_mask=mask),
                       lm.generate(ids, max_length=12, top_k=1, attention_mask=mask))


STEP_CONSTANT_CONFIGS = [("mamba", None), ("mamba2", "parallel"), ("mamba2", "sequential"), ("s4d", None),
                         ("dss", None), ("h3", None)]
STEP_CONSTANT_IDS = _ids([config + ({},) for config in STEP_CONSTANT_CONFIGS])


def _perturb(model, scale=0.1):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("architecture,block_type", STEP_CONSTANT_CONFIGS, ids=STEP_CONSTANT_IDS)
def test_frozen_step_constants_are_computed_once_and_refreshed_in_place(architecture, block_type):
    lm = _lm(architecture, block_type=block_type).eval()
    tokens = torch.randint(0, 37, (2,))

    def step():  # two tokens: the first starts from a zero state, where A plays no part
        state = lm.default_state(2)
        return lm.step(tokens, lm.step(tokens, state)[1])[0]
    expected = step()
    frozen = FrozenStepConstants(lm)
    assert frozen.layers, "the architecture's layers have step constants"
    with torch.no_grad(), frozen:
        assert torch.equal(step(), expected)
    tensors = [t for values in frozen.values for t in values if isinstance(t, torch.Tensor)]
    storage = [t.data_ptr() for t in tensors]
    _perturb(lm)
    current = step()
    with torch.no_grad(), frozen:
        stale = step()  # the constants of the old parameters, the other parameters' new values
    assert not torch.allclose(stale, current)
    frozen.refresh()
    with torch.no_grad(), frozen:
        assert torch.equal(step(), current)
    assert [t.data_ptr() for t in tensors] == storage  # in place: a CUDA graph captured on them sees the update
    assert all(layer._frozen_step_constants is None for layer in frozen.layers)


@pytest.mark.parametrize("block_type", [None, "parallel"], ids=["mamba", "mamba2"])
def test_forward_uses_frozen_constants_only_without_gradients(block_type):
    """A prefill inside FrozenStepConstants reuses the frozen A; a forward that records gradients computes it
    (and A_log gets its gradient) even there."""
    lm = _lm("mamba" if block_type is None else "mamba2", block_type=block_type).eval()
    tokens = torch.randint(0, 37, (2, 9))
    frozen = FrozenStepConstants(lm)
    with torch.no_grad(), frozen:
        pass  # computed on entry
    _perturb(lm)
    with torch.no_grad():
        current = lm.prefill(tokens, lm.default_state(2))[0]
    with torch.no_grad(), frozen:
        stale = lm.prefill(tokens, lm.default_state(2))[0]
    assert not torch.allclose(stale, current)
    with torch.no_grad():
        expected = lm(tokens)
    with frozen:
        logits = lm(tokens)
        logits.square().sum().backward()
    assert torch.allclose(logits, expected, rtol=1e-5, atol=1e-6)
    assert all(layer.A_log.grad is not None and layer.A_log.grad.abs().sum() > 0 for layer in frozen.layers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("architecture,block_type", STEP_CONSTANT_CONFIGS, ids=STEP_CONSTANT_IDS)
def test_cuda_graph_sees_parameter_updates_after_reset(architecture, block_type):
    lm = _lm(architecture, block_type=block_type).cuda().eval()
    tokens = torch.randint(0, 37, (2,), device="cuda")
    graphed = GraphedStep(lm, 2, "cuda")
    graphed(tokens)
    before = graphed(tokens).clone()  # the second token: A acts on a non-zero state
    _perturb(lm)
    graphed.reset()
    with torch.no_grad():
        state = lm.default_state(2, device="cuda")
        expected = lm.step(tokens, lm.step(tokens, state)[1])[0]
    graphed(tokens)
    after = graphed(tokens)
    assert_close(after, expected, torch.float32, "logits replayed after the update")
    assert not torch.allclose(after, before)


# --- save / load ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_and_load_language_model(tmp_path, suffix):
    lm = _lm("s4d").eval()
    path = tmp_path / f"model{suffix}"
    save_state_dict(lm, path)
    state = load_state_dict(path)
    fresh = _lm("s4d").eval()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    fresh.load_state_dict(state, strict=True)
    ids = torch.randint(0, 37, (2, 6))
    assert torch.equal(fresh(ids), lm(ids))
    assert fresh.lm_head.weight is fresh.embedding.weight
    if suffix == ".safetensors":
        config = json.loads(read_safetensors_metadata(path)["config"])
        rebuilt = SSMLanguageModel(**config)
        rebuilt.load_state_dict(load_state_dict(path), strict=True)
        assert torch.equal(rebuilt.eval()(ids), lm(ids))


def test_safetensors_dtypes_aliases_and_views(tmp_path):
    base = torch.randn(4, 6)
    tensors = {"f32": base, "bf16": torch.randn(3).bfloat16(), "f16": torch.randn(2, 2).half(),
               "f64": torch.randn(5).double(), "i64": torch.arange(7), "u8": torch.arange(4, dtype=torch.uint8),
               "bool": torch.tensor([True, False]), "empty": torch.empty(0, 3), "strided": base.t()[1:],
               "alias": base}
    path = tmp_path / "t.safetensors"
    save_safetensors(tensors, path, metadata={"k": "v"})
    loaded = load_safetensors(path)
    assert set(loaded) == set(tensors) and read_safetensors_metadata(path)["k"] == "v"
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
    assert loaded["alias"] is loaded["f32"]
    with pytest.raises(TypeError, match="complex"):
        save_safetensors({"c": torch.randn(2, dtype=torch.complex64)}, tmp_path / "c.safetensors")


def test_safetensors_interoperates_with_the_reference_package(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5).bfloat16(), "c": torch.arange(3)}
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    save_safetensors(tensors, ours, metadata={"m": "1"})
    for name, t in safetensors_torch.load_file(str(ours)).items():
        assert torch.equal(t, tensors[name])
    safetensors_torch.save_file(tensors, str(theirs), metadata={"m": "2"})
    for name, t in load_safetensors(theirs).items():
        assert torch.equal(t, tensors[name])


def test_corrupt_safetensors_and_pickles_are_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_safetensors({"a": torch.randn(4)}, path)
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(raw[:-4]))  # truncated data
    with pytest.raises(ValueError, match="offsets"):
        load_safetensors(path)

    class Exploit:
        def __reduce__(self):
            return (math.factorial, (5,))
    pickled = tmp_path / "evil.pt"
    torch.save({"w": torch.randn(2), "x": Exploit()}, pickled)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_state_dict(pickled)


@pytest.mark.parametrize("low,high", [("mamba", "s4d"), ("s5", "mamba2")])
def test_hiss_architecture(low, high):
    model = create_model("hiss", low_level=low, high_level=high, chunk_size=4, **SMALL)
    assert model.config["low_level"] == low and model.low_level.config["n_layer"] == 2
    x = torch.randn(2, 12, 16)
    y = model(x)
    assert y.shape == (2, 3, 16)
    y.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        state, outputs = model.default_state(2), []
        for t in range(12):
            y_t, state = model.step(x[:, t], state)
            if y_t is not None:
                outputs.append(y_t)
        assert_close(torch.stack(outputs, 1), model(x), FP32, "hiss steps")
    with pytest.raises(ValueError, match="hiss"):
        create_model("hiss", low_level="hiss", **SMALL)
    with pytest.raises(ValueError, match="chunk rate"):
        SSMLanguageModel(11, "hiss", d_model=16, n_layer=1)


@pytest.mark.parametrize("architecture", ["mamba", "mamba2", "s4d", "h3"])
@pytest.mark.parametrize("prefill", [True, False])
def test_generate_left_padded_prompts_equal_each_prompt_alone(architecture, prefill):
    lm = _lm(architecture, conv_kernel_size=3)
    lengths = [5, 2, 5, 1]
    ids = torch.randint(0, 37, (4, 5))
    mask = torch.stack([torch.arange(5) >= 5 - n for n in lengths])
    ids = ids.masked_fill(~mask, 0)  # the padding's value is never read
    out = lm.generate(ids, max_length=11, top_k=1, attention_mask=mask, prefill=prefill)
    assert torch.equal(out[:, :5], ids)
    for i, n in enumerate(lengths):
        alone = lm.generate(ids[i:i + 1, 5 - n:], max_length=11 - (5 - n), top_k=1, prefill=prefill)
        assert torch.equal(out[i:i + 1, 5 - n:], alone), f"row {i} (prompt of {n})"
    padded_otherwise = ids.masked_fill(~mask, 7)
    assert torch.equal(lm.generate(padded_otherwise, max_length=11, top_k=1, attention_mask=mask.long())[:, 5:],
                       out[:, 5:])


@pytest.mark.parametrize("mask, message", [
    (torch.tensor([[1, 1, 0], [1, 1, 1]]), "left padding"),
    (torch.tensor([[0, 0, 0], [1, 1, 1]]), "left padding"),
    (torch.tensor([[0, 2, 1], [1, 1, 1]]), "only 0 and 1"),
    (torch.ones(2, 4, dtype=torch.long), "shape"),
    (torch.ones(2, 3), "attention_mask")])
def test_generate_rejects_bad_attention_masks(mask, message):
    with pytest.raises(ValueError if message != "attention_mask" else (TypeError, ValueError), match=message):
        _lm().generate(torch.randint(0, 37, (2, 3)), max_length=5, attention_mask=mask)


@pytest.mark.parametrize("architecture", ["mamba", "mamba2", "s5", "h3"])
def test_step_with_state_batch_indices_continues_rows_of_a_cache(architecture):
    """Two sequences in a cache of 5 rows, joining at different times, equal each stepped alone; the other
    rows stay as they were."""
    lm = _lm(architecture).eval()
    a, b = torch.randint(0, 37, (6,)), torch.randint(0, 37, (4,))
    with torch.no_grad():
        cache = lm.default_state(5)
        untouched = [t.clone() for t in _tensors(cache)]
        logits_a, logits_b = [], []
        for t in range(6):
            if t < 2:  # only a
                out, cache = lm.step(a[t:t + 1], cache, state_batch_indices=torch.tensor([3]))
                logits_a.append(out[0])
            else:  # b joins in row 0, first in the batch
                out, cache = lm.step(torch.stack([b[t - 2], a[t]]), cache, state_batch_indices=torch.tensor([0, 3]))
                logits_b.append(out[0])
                logits_a.append(out[1])
        for tokens, logits in ((a, logits_a), (b, logits_b)):
            state = lm.default_state(1)
            for t, token in enumerate(tokens):
                expected, state = lm.step(token[None], state)
                assert_close(logits[t], expected[0], FP32, f"{architecture} step {t}")
    for row in (1, 2, 4):
        for now, before in zip(_tensors(cache), untouched):
            assert torch.equal(now[row], before[row])


def test_step_rejects_bad_state_batch_indices():
    lm = _lm()
    cache, tokens = lm.default_state(3), torch.randint(0, 37, (2,))
    for rows, message in ((torch.tensor([0, 3]), r"\[0, 3\)"), (torch.tensor([1, 1]), "distinct"),
                          (torch.tensor([0]), "one entry per token"), (torch.tensor([0.0, 1.0]), "state_batch_indices")):
        with pytest.raises((TypeError, ValueError), match=message):
            lm.step(tokens, cache, state_batch_indices=rows)
