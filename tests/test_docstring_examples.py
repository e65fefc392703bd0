"""Every public op's docstring example runs and prints what it says (doctest, CPU tensors)."""
import doctest

import pytest

import ssm_kernels
from ssm_kernels import _dispatch


@pytest.mark.parametrize("op", _dispatch.OPS)
def test_docstring_example(op):
    fn = getattr(ssm_kernels, op)
    tests = doctest.DocTestFinder().find(fn, op, globs={})
    assert tests and tests[0].examples, f"{op}'s docstring has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
