"""One module per op: `cases(quick: bool) -> list[benchmarks.core.Case]`."""
