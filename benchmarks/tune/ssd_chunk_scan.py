"""The Triton ssd_chunk_scan's launch settings (ssm_kernels/ssd_chunk_scan/triton.py): the boundary states in one
kernel or two (PASSED_STATES_PROGRAMS: None keeps two kernels; one kernel where B * H times the state tiles reaches
the setting), the backward's register caps (REGISTER_CAP, REGISTER_CAP_FP32), head splits (SPLIT_PROGRAMS), the
dx kernel's rows per step, pipelining depth, columns and warps (DX_ROWS, DX_STAGES, DX_COLS, DX_WARPS), the dB / dC
kernel's warps (DBC_WARPS), the dGm kernel's (DGM_WARPS) and the forward output kernel's warps, stages and tiles
(SCAN_*), on the GPU cases of `python -m benchmarks --op ssd_chunk_scan` (the boundary states are computed by the
forward, and by the backward inside a recomputed_activations block only)."""
from __future__ import annotations

import importlib

from ..cases import ssd_chunk_scan as ssd_cases
from . import sweep, triton_variants

backend = importlib.import_module("ssm_kernels.ssd_chunk_scan.triton")


def grid(quick: bool):
    """The boundary states: two kernels always (None), one kernel from two programs per H100 SM, from eight (the
    default, 0: one kernel always). The backward's register caps (REGISTER_CAP for 16-bit inputs, default 128;
    REGISTER_CAP_FP32, default None): none, or 168 (one 8-warp program per SM, fewer spills), or 128 for fp32.
    The backward's head splits per group (SPLIT_PROGRAMS, default 264: splits until the dGm kernel's grid has
    that many programs; the dB / dC kernel has the same splits over n_jb of the n_jb (n_jb + 1) / 2 tiles).
    The dx kernel's rows per step of its loop (DX_ROWS, default 32): 64 or 16; its columns per program (DX_COLS,
    default 128): 64, by 32 or 64 rows (the previous default), and by 16 rows at 4 warps (DX_WARPS, default None:
    the backward's 8); its stages (DX_STAGES, default 2): 3. The dB / dC kernel with 16-bit inputs at the
    backward's 8 warps (DBC_WARPS None; default 4). The dGm kernel at 4 warps (DGM_WARPS, default None: the
    backward's 8). The forward's output kernel at 8 warps (SCAN_WARPS, default 4)
    and 3 stages (SCAN_STAGES, default 2); its loop in steps of 64 or 16 columns (SCAN_COLS, default 32) and 128
    rows per program at 8 warps (SCAN_ROWS, default 64); its steps left of the row block in 64 columns
    (SCAN_LEFT_COLS, default None: SCAN_COLS), also with 128 rows, and without them. Its decays left of the row
    block factored (FACTORED_DECAYS True; default False). The boundary-states kernels' tiles: whole
    128-column state tiles (STATES_COLS, default 64), also at 8 warps (STATES_WARPS, default 4), 32 or 128
    positions per step (STATES_STEP, default 64), 3 or 1 pipelining stages (STATES_STAGES, default None:
    Triton's)."""
    if quick:
        return [{"PASSED_STATES_PROGRAMS": None}]
    return ([{"PASSED_STATES_PROGRAMS": programs} for programs in (None, 264, 1056)]
            + [{"REGISTER_CAP": cap} for cap in (None, 168)]
            + [{"REGISTER_CAP_FP32": cap} for cap in (128, 168)]
            + [{"SPLIT_PROGRAMS": programs} for programs in (528, 1056, 2112)]
            + [{"DX_ROWS": rows} for rows in (64, 16)]
            + [{"DX_COLS": 64}, {"DX_COLS": 64, "DX_ROWS": 64}, {"DX_ROWS": 16, "DX_WARPS": 4}, {"DX_STAGES": 3},
               {"DBC_WARPS": None}, {"DGM_WARPS": 4}]
            + [{"SCAN_WARPS": 8}, {"SCAN_STAGES": 3}]
            + [{"SCAN_COLS": cols} for cols in (64, 16)]
            + [{"SCAN_ROWS": 128, "SCAN_WARPS": 8}]
            + [{"FACTORED_DECAYS": True}, {"FACTORED_DECAYS": True, "SCAN_LEFT_COLS": 64},
               {"FACTORED_DECAYS": True, "SCAN_ROWS": 128, "SCAN_WARPS": 8, "SCAN_LEFT_COLS": 64}]
            + [{"STATES_COLS": 128}, {"STATES_COLS": 128, "STATES_WARPS": 8}, {"STATES_WARPS": 8},
               {"STATES_STEP": 32}, {"STATES_STEP": 128}, {"STATES_STAGES": 3}, {"STATES_STAGES": 1}])


def run(device, quick: bool, only):
    settings = grid(quick)
    for case, variant in triton_variants(ssd_cases, device, only):
        print(f"{case.name}: PASSED_STATES_PROGRAMS, REGISTER_CAP*, SPLIT_PROGRAMS, DX_*, DBC_WARPS, DGM_WARPS, "
              "SCAN_*, FACTORED_DECAYS, STATES_*", flush=True)
        sweep(backend, variant, device, settings, quick)
