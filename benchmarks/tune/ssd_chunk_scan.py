"""The Triton ssd_chunk_scan's boundary states in one kernel or two (ssm_kernels/ssd_chunk_scan/triton.py,
PASSED_STATES_PROGRAMS: None keeps two kernels; one kernel where B * H times the state tiles reaches the setting),
on the GPU cases of `python -m benchmarks --op ssd_chunk_scan` (the forward and the backward both compute them:
the backward inside a recomputed_activations block only)."""
from __future__ import annotations

import importlib

from ..cases import ssd_chunk_scan as ssd_cases
from . import sweep, triton_variants

backend = importlib.import_module("ssm_kernels.ssd_chunk_scan.triton")


def grid(quick: bool):
    """Two kernels always (None), one kernel from two programs per H100 SM, from eight (the default, 0: always)."""
    return [{"PASSED_STATES_PROGRAMS": programs} for programs in ((None,) if quick else (None, 264, 1056))]


def run(device, quick: bool, only):
    settings = grid(quick)
    for case, variant in triton_variants(ssd_cases, device, only):
        print(f"{case.name}: boundary states in one kernel from PASSED_STATES_PROGRAMS programs", flush=True)
        sweep(backend, variant, device, settings, quick)
