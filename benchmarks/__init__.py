"""Benchmarks: `python -m benchmarks --op OP [--quick] [--peers] [--json PATH]` (see benchmarks/core.py)."""
