"""The generated dispatch table: up to date with benchmarks/results, every rule runnable and cited."""
import json

import pytest
import torch

from benchmarks import dispatch_table
from ssm_kernels import _dispatch, _dispatch_table


def test_table_is_what_the_results_give():
    assert dispatch_table.main(["--check"]) == 0, "run python -m benchmarks.dispatch_table"


@pytest.mark.parametrize("capability", sorted(_dispatch_table.MEASURED))
def test_every_rule_names_implemented_backends_and_existing_results(capability):
    for op, rules in _dispatch_table.MEASURED[capability].items():
        assert op in _dispatch.OPS
        for rule in rules:
            assert set(rule["order"]) <= set(_dispatch.implemented_backends(op)), (op, rule["order"])
            assert isinstance(getattr(torch, rule["dtype"]), torch.dtype)
            for name in rule["results"]:
                env = json.loads((dispatch_table.RESULTS_DIR / name).read_text())["environment"]
                assert tuple(env["compute_capability"]) == capability and env["commit"] in rule["commit"]


def _result(case, size, variant, mode, ms, dtype="float32"):
    return dict(op="causal_conv1d", case=case, variant=variant, mode=mode, ms=ms, dtype=dtype, dispatch_size=size)


def _generated_rules(tmp_path, results):
    """The causal_conv1d rules the generator writes from `results` in one results file (GPU "G", commit abc)."""
    path = tmp_path / "gpu_causal_conv1d.json"
    path.write_text(json.dumps({"environment": {"compute_capability": [8, 0], "gpu": "G", "commit": "abc"},
                                "results": results}))
    namespace = {}
    exec(dispatch_table.generate([path]), namespace)
    return namespace["MEASURED"][(8, 0)]["causal_conv1d"]


def test_generation_rules(tmp_path):
    """Size classes split at the geometric middle; forward and training orders split only where they differ;
    peers and references are ignored; unmeasured implemented backends come last."""
    results = [
        _result("small", 2 ** 20, "cuda", "fwd", 1.0), _result("small", 2 ** 20, "torch", "fwd", 2.0),
        _result("small", 2 ** 20, "cuda", "fwd+bwd", 3.0), _result("small", 2 ** 20, "torch", "fwd+bwd", 2.0),
        _result("small", 2 ** 20, "peer:causal_conv1d", "fwd", 0.1),
        _result("large", 2 ** 26, "triton", "fwd", 1.0), _result("large", 2 ** 26, "cuda", "fwd", 2.0),
        _result("large", 2 ** 26, "triton", "fwd+bwd", 1.0), _result("large", 2 ** 26, "cuda", "fwd+bwd", 2.0),
    ]
    rules = _generated_rules(tmp_path, results)
    assert [(r["order"], r["max_size"], r["grad"]) for r in rules] == [
        (("torch", "cuda", "triton"), 2 ** 23, True),
        (("cuda", "torch", "triton"), 2 ** 23, False),
        (("triton", "cuda", "torch"), None, None),
    ]
    assert rules[0]["source"] == "G small: fwd+bwd torch 2.000 ms, cuda 3.000"
    assert rules[0]["results"] == ["gpu_causal_conv1d.json"] and rules[0]["commit"] == ["abc"]


def test_cases_of_one_size_count_as_one(tmp_path):
    """Two cases with the same dispatch size: one rule from their summed times (a backend missing from one of
    them is unmeasured there), instead of the second governing sizes above its own."""
    results = [
        _result("wide", 2 ** 21, "triton", "fwd", 0.06), _result("wide", 2 ** 21, "cuda", "fwd", 0.35),
        _result("long", 2 ** 21, "triton", "fwd", 0.18), _result("long", 2 ** 21, "cuda", "fwd", 0.16),
        _result("long", 2 ** 21, "torch", "fwd", 9.0),
        _result("large", 2 ** 26, "triton", "fwd", 1.0), _result("large", 2 ** 26, "cuda", "fwd", 2.0),
    ]
    rules = _generated_rules(tmp_path, results)
    assert [(r["order"], r["max_size"]) for r in rules] == [(("triton", "cuda", "torch"), None)]
    assert rules[0]["source"].startswith("G wide + long: fwd summed triton 0.240 ms, cuda 0.510; G large: ")


def _write_results(path, commit, date, results, gpu="G"):
    env = {"compute_capability": [8, 0], "gpu": gpu, "commit": commit}
    if date:
        env["date"] = date
    path.write_text(json.dumps({"environment": env, "results": results}))
    return path


def test_a_later_run_of_one_backend_replaces_its_times_and_is_cited(tmp_path):
    """A second results file (read after the first, by name) that re-times one backend: the rule orders by its
    times and cites both files and both commits."""
    big = 2 ** 26
    first = _write_results(tmp_path / "a_backends.json", "abc", None,
                           [_result("big", big, "triton", "fwd", 3.0), _result("big", big, "cuda", "fwd", 2.0)])
    later = _write_results(tmp_path / "b_triton_again.json", "def", None,
                           [_result("big", big, "triton", "fwd", 1.0), _result("big", big, "peer:x", "fwd", 0.5)])

    namespace = {}
    exec(dispatch_table.generate([later, first]), namespace)
    (rule,) = namespace["MEASURED"][(8, 0)]["causal_conv1d"]
    assert rule["order"][:2] == ("triton", "cuda") and "triton 1.000 ms, cuda 2.000" in rule["source"]
    assert rule["results"] == ["a_backends.json", "b_triton_again.json"] and rule["commit"] == ["abc", "def"]


def test_a_case_timed_on_two_gpus_of_one_capability_names_both(tmp_path):
    """One backend re-timed on another GPU of the same compute capability (an H100 run after H200 runs): the
    rule's source names both GPUs rather than the first file's alone."""
    big = 2 ** 26
    first = _write_results(tmp_path / "a.json", "abc", None,
                           [_result("big", big, "triton", "fwd", 3.0), _result("big", big, "cuda", "fwd", 2.0)],
                           gpu="NVIDIA H200")
    later = _write_results(tmp_path / "b.json", "def", None, [_result("big", big, "triton", "fwd", 1.0)],
                           gpu="NVIDIA H100 80GB HBM3")
    namespace = {}
    exec(dispatch_table.generate([first, later]), namespace)
    (rule,) = namespace["MEASURED"][(8, 0)]["causal_conv1d"]
    assert rule["source"].startswith("NVIDIA H100 80GB HBM3 / NVIDIA H200 big: fwd triton 1.000 ms, cuda 2.000")


def test_dated_results_are_read_by_date_after_undated_ones(tmp_path):
    """The run recorded later wins whatever its file is called; files without a date count as the oldest."""
    def timing(ms):
        return [_result("big", 2 ** 26, "triton", "fwd", ms), _result("big", 2 ** 26, "cuda", "fwd", 2.0)]

    newest = _write_results(tmp_path / "a_newest.json", "c", "2026-12-05T05:00Z", timing(1.0))
    dated = _write_results(tmp_path / "b_dated.json", "b", "2026-12-04T05:00Z", timing(3.0))
    undated = _write_results(tmp_path / "c_undated.json", "a", None, timing(4.0))
    namespace = {}
    exec(dispatch_table.generate([undated, dated, newest]), namespace)
    (rule,) = namespace["MEASURED"][(8, 0)]["causal_conv1d"]
    assert rule["order"][:2] == ("triton", "cuda") and "triton 1.000 ms, cuda 2.000" in rule["source"]
