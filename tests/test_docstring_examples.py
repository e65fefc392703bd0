"""Every public op's docstring example runs and prints what it says (doctest, CPU tensors), and so do those of
the backend controls and of the mamba_ssm-named entry points."""
import doctest

import pytest

import ssm_kernels
from ssm_kernels import _dispatch


@pytest.mark.parametrize("op", _dispatch.OPS + ("available_backends", "record_backends", "use_backend",
                                                "selective_scan_fn", "mamba_chunk_scan_combined"))
def test_docstring_example(op):
    fn = getattr(ssm_kernels, op)
    tests = doctest.DocTestFinder().find(fn, op, globs={})
    assert tests and tests[0].examples, f"{op}'s docstring has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
