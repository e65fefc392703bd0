"""ssm_universal.integrations.transformers: transformers' Mamba / Mamba2 / FalconMamba mixers on ssm_kernels.

Tiny random models (never downloaded); every patched result is compared with transformers' own torch path in
fp32 on the CPU: logits, every parameter gradient, greedy generation, left-padded batches; plus the patching
mechanics (instance vs class, unpatch, fallback) and that the ssm_kernels ops really run.
"""
import logging

import pytest
import torch

import ssm_kernels
from ssm_kernels.testing import assert_close

transformers = pytest.importorskip("transformers")

from ssm_universal.integrations import transformers as hf_patch  # noqa: E402

from .hf_versions import cache_kwargs, mamba2_groups  # noqa: E402

TOL = 1e-5
KINDS = ("mamba", "mamba2", "falcon_mamba")
SEQUENCE_OPS = {"mamba": ("causal_conv1d", "selective_scan"), "falcon_mamba": ("causal_conv1d", "selective_scan"),
                "mamba2": ("causal_conv1d", "ssd_chunk_scan", "gated_rmsnorm")}
STEP_OPS = ("causal_conv1d_update", "selective_state_update")


@pytest.fixture(autouse=True)
def restore_transformers():
    """No test (here or elsewhere) may see patched classes: unpatch whatever a test patched."""
    hf_patch.unpatch()
    yield
    hf_patch.unpatch()


def _mixer_class(kind):
    return hf_patch._mixer_classes()[kind]


def make_model(kind, seed=0):
    """A tiny random model of the given kind, weights perturbed away from their structured initialisation."""
    common = dict(vocab_size=100, hidden_size=64, state_size=8, num_hidden_layers=2, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)
    if kind == "mamba":
        config = transformers.MambaConfig(**common)
        cls = transformers.MambaForCausalLM
    elif kind == "falcon_mamba":
        config = transformers.FalconMambaConfig(mixer_rms_eps=1e-6, **common)
        cls = transformers.FalconMambaForCausalLM
    else:
        config = transformers.Mamba2Config(num_heads=8, head_dim=16, n_groups=mamba2_groups(2), chunk_size=8,
                                            expand=2, **common)
        cls = transformers.Mamba2ForCausalLM
    torch.manual_seed(seed)
    model = cls(config).float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _ids(batch=2, length=13, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 100, (batch, length), generator=g)


def _counts(record):
    return {op: sum(per_backend.values()) for op, per_backend in record.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_and_kernels_run(kind):
    model, ids = make_model(kind), _ids()
    with torch.no_grad():
        expected = model(ids).logits
        hf_patch.patch()
        with ssm_kernels.record_backends() as record:
            actual = model(ids).logits
    assert_close(actual, expected, torch.float32, "logits", tol=TOL)
    counts = _counts(record)
    for op in SEQUENCE_OPS[kind]:
        assert counts.get(op, 0) >= 2, f"{op} not called per layer: {counts}"  # 2 layers


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match(kind):
    model, ids = make_model(kind).train(), _ids()

    def grads():
        model.zero_grad(set_to_none=True)
        out = model(ids, labels=ids)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_ref, grads_ref = grads()
    hf_patch.patch(model)
    with ssm_kernels.record_backends() as record:
        loss, grads_new = grads()
    assert set(grads_new) == set(grads_ref)
    assert_close(loss, loss_ref, torch.float32, "loss", tol=TOL)
    for name, g in grads_ref.items():
        assert_close(grads_new[name], g, torch.float32, f"grad of {name}", tol=TOL)
    assert all(_counts(record).get(op, 0) >= 2 for op in SEQUENCE_OPS[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generate_matches(kind):
    model, prompt = make_model(kind), _ids(length=6)
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False, min_new_tokens=8)
    expected = model.generate(prompt, **kwargs)
    hf_patch.patch()
    with ssm_kernels.record_backends() as record:
        actual = model.generate(prompt, **kwargs)
    assert actual.shape == expected.shape == (2, 14)
    assert torch.equal(actual, expected), f"{actual}\n!=\n{expected}"
    counts = _counts(record)
    for op in SEQUENCE_OPS[kind] + STEP_OPS:
        assert counts.get(op, 0) >= 2, f"{op} not used during generate: {counts}"


@pytest.mark.parametrize("kind", KINDS)
def test_left_padded_batch_matches(kind):
    model, ids = make_model(kind), _ids(batch=3, length=11)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        hf_patch.patch(model)
        actual = model(ids, attention_mask=mask).logits
    assert_close(actual, expected, torch.float32, "padded logits", tol=TOL)
    # the mask matters: without it the padded row's logits differ
    with torch.no_grad():
        unmasked = model(ids).logits
    assert (unmasked[0] - expected[0]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_padded_generate_matches(kind):
    model, prompt = make_model(kind), _ids(length=6)
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0
    prompt = prompt.masked_fill(mask == 0, 0)
    kwargs = dict(attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    expected = model.generate(prompt, **kwargs)
    hf_patch.patch(model)
    assert torch.equal(model.generate(prompt, **kwargs), expected)


@pytest.mark.parametrize("cache_api", ["getters", "layers"])
@pytest.mark.parametrize("kind", KINDS)
def test_cache_continuation_equals_full_forward(kind, cache_api, monkeypatch):
    """A forward continuing a cache by several tokens (chunked prefill) equals the one-shot forward. (transformers'
    own Mamba / FalconMamba path restarts the scan there; the patched one continues it, see the module doc.)
    cache_api "layers": the states are read the way releases before the cache getters need (cache.layers[i])."""
    if cache_api == "layers":
        monkeypatch.setattr(hf_patch, "_CACHE_METHODS", ("a_getter_this_release_lacks",))
    model, ids = make_model(kind), _ids(length=13)
    hf_patch.patch(model)
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :7], use_cache=True)
        second = model(ids[:, 7:], **cache_kwargs(first), use_cache=True)
        third = model(ids[:, :1], **cache_kwargs(second), use_cache=True)  # then one decoding step
        reference = model(torch.cat([ids, ids[:, :1]], dim=1)).logits[:, -1]
    assert_close(torch.cat([first.logits, second.logits], dim=1), full, torch.float32, "chunked logits", tol=TOL)
    assert_close(third.logits[:, -1], reference, torch.float32, "step after chunks", tol=TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_patch_model_affects_only_that_instance(kind):
    patched, other = make_model(kind), make_model(kind, seed=1)
    cls = _mixer_class(kind)
    original = cls.__dict__["forward"]
    assert hf_patch.patch(patched) is patched
    assert cls.__dict__["forward"] is original
    mixers = [m for m in patched.modules() if isinstance(m, cls)]
    assert len(mixers) == 2 and all(hf_patch.is_patched(m) for m in mixers)
    assert not any(hf_patch.is_patched(m) for m in other.modules() if isinstance(m, cls))
    ids = _ids()
    with torch.no_grad(), ssm_kernels.record_backends() as record:
        other(ids)
    assert not any(_counts(record).get(op, 0) for op in SEQUENCE_OPS[kind])
    with torch.no_grad(), ssm_kernels.record_backends() as record:
        patched(ids)
    assert all(_counts(record).get(op, 0) >= 2 for op in SEQUENCE_OPS[kind])
    hf_patch.unpatch(patched)
    assert not any(hf_patch.is_patched(m) for m in mixers)
    assert all("forward" not in m.__dict__ for m in mixers)


def test_unpatch_restores_original_functions():
    classes = {kind: _mixer_class(kind) for kind in KINDS}
    originals = {kind: cls.__dict__["forward"] for kind, cls in classes.items()}
    hf_patch.patch()
    hf_patch.patch()  # twice: still one level of patching
    for kind, cls in classes.items():
        assert cls.__dict__["forward"] is not originals[kind]
        assert hf_patch.is_patched(cls)
    model = make_model("mamba")
    hf_patch.patch(model)  # instance patch on top of the class patch
    hf_patch.unpatch()
    for kind, cls in classes.items():
        assert cls.__dict__["forward"] is originals[kind], kind
        assert not hf_patch.is_patched(cls)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_unhandled_call_falls_back_to_original_and_logs(caplog):
    model = make_model("mamba2")
    mixer = model.backbone.layers[0].mixer
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        expected = mixer(x)
    hf_patch.patch()
    hf_patch._LOGGED.clear()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="ssm_universal"), \
            ssm_kernels.record_backends() as record:
        first = mixer(x, unknown_argument=torch.zeros(1))
        second = mixer(x, unknown_argument=torch.zeros(1))
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert not _counts(record), "the fallback must not run ssm_kernels ops"
    messages = [r.getMessage() for r in caplog.records if "unknown_argument" in r.getMessage()]
    assert len(messages) == 1, messages  # logged once


def test_unknown_cache_type_falls_back():
    """An object without the expected cache API (e.g. an older transformers' MambaCache) is never used."""
    model = make_model("mamba")
    mixer = model.backbone.layers[0].mixer
    hf_patch.patch()
    reason = hf_patch._unsupported("mamba", mixer, torch.randn(1, 3, 64), object(), None, {})
    assert reason is not None and "cache" in reason


def test_import_does_not_import_transformers():
    import subprocess
    import sys
    code = ("import sys, ssm_universal, ssm_universal.layers; import ssm_universal.integrations.transformers; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kind", KINDS)
def test_decoding_step_with_grad_is_differentiable(kind):
    """With gradients wanted, a cached one-token step runs on the differentiable sequence ops (the update ops
    have no autograd) and equals the no-grad step; the parameters get gradients."""
    model, ids = make_model(kind), _ids(length=9)
    hf_patch.patch(model)
    with torch.no_grad():
        prefix = model(ids[:, :8], use_cache=True)
        expected = model(ids[:, 8:], **cache_kwargs(prefix), use_cache=True).logits
        prefix = model(ids[:, :8], use_cache=True)
    with ssm_kernels.record_backends() as record:
        actual = model(ids[:, 8:], **cache_kwargs(prefix), use_cache=True).logits
    assert not any(_counts(record).get(op, 0) for op in STEP_OPS)
    assert_close(actual, expected, torch.float32, "step logits with grad", tol=TOL)
    actual.sum().backward()
    assert model.backbone.layers[0].mixer.in_proj.weight.grad is not None
