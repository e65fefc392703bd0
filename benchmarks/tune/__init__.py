"""python -m benchmarks tune OP [--quick] [--case TEXT] [--backend NAME] [--setting NAME]: sweeps of a backend's
launch settings.

An op's tuner (benchmarks/tune/<op>.py) names the backend module, the benchmark cases to time (from
benchmarks/cases/<op>.py) and the settings to try: module attributes the backend reads at each call (block
sizes, warps). Each setting is timed forward and forward+backward on the case's inputs, with the registers,
spills and shared memory of the kernels it compiled, beside the module's defaults; the winners are then
written into the module by hand.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import sys
from typing import Any, Dict, Iterator, List

import torch

from ..core import forward_backward, time_ms

_defaults_only = False  # --defaults: time each case at the module's current settings only
_backend_only = None  # --backend: sweep only this backend's settings (a tuner may sweep several)
_setting_names = None  # --setting: sweep only the settings that set one of these names (the defaults always run)


@contextlib.contextmanager
def module_settings(module, settings: Dict[str, Any]) -> Iterator[None]:
    """module's attributes set to `settings` inside the block, restored after it."""
    saved = {name: getattr(module, name) for name in settings}
    try:
        for name, value in settings.items():
            setattr(module, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def compiled_kernels(module) -> Dict[tuple, Any]:
    """{(kernel name, specialisation key): compiled kernel} of the @triton.jit functions in module's namespace
    (the backend module imports its kernels), from Triton's per-device caches; empty in the interpreter."""
    found = {}
    for name, obj in vars(module).items():
        caches = getattr(obj, "device_caches", None)
        if not isinstance(caches, dict):
            continue
        for entry in caches.values():
            for key, compiled in entry[0].items():
                found[(name, str(key))] = compiled
    return found


def describe(compiled: Dict[tuple, Any]) -> str:
    """'kernel: regs R, spills S, smem K KB; ...' (spills are what makes a kernel slow without warning)."""
    parts = []
    for (name, _), kernel in compiled.items():
        try:
            parts.append(f"{name.strip('_')}: regs {kernel.n_regs}, spills {kernel.n_spills}, "
                         f"smem {kernel.metadata.shared // 1024} KB")
        except AttributeError:  # a Triton without these fields
            parts.append(name.strip("_"))
    return "; ".join(parts)


def time_settings(variant, device: torch.device, quick: bool, modes=("fwd", "fwd+bwd")) -> Dict[str, float]:
    """{mode: median ms} of a benchmark Variant, forward without grad and forward+backward."""
    times = {}
    if "fwd" in modes:
        with torch.no_grad():
            times["fwd"] = time_ms(variant.fn, device, quick)
    if "fwd+bwd" in modes and variant.grad_inputs:
        times["fwd+bwd"] = time_ms(forward_backward(variant), device, quick)
    return times


def sweep(module, variant, device: torch.device, grid: List[Dict[str, Any]], quick: bool,
          modes=("fwd", "fwd+bwd"), label=lambda settings: settings, timer=time_settings) -> List[tuple]:
    """Times each settings dict of `grid` (and the defaults first) on the benchmark Variant; prints a line each,
    with the kernels that setting compiled, and returns [(times, settings)]. A setting that fails to compile or
    launch is printed and skipped. label(settings): what of a setting the printed line shows; timer(variant,
    device, quick, modes): {mode: ms} (default: time_settings)."""
    results = []
    if _setting_names:
        grid = [settings for settings in grid if _setting_names & set(settings)]
    for settings in [{}] + ([] if _defaults_only else grid):
        shown = label(settings) if settings else {}
        text = " ".join(f"{k}={v}" for k, v in shown.items()) or "defaults"
        before = compiled_kernels(module)
        try:
            with module_settings(module, settings):
                times = timer(variant, device, quick, modes)
        except Exception as exc:  # noqa: BLE001  (report and go on: one setting may not fit)
            print(f"  {text}: failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
            continue
        timing = "  ".join(f"{mode} {ms:8.3f} ms" for mode, ms in times.items())
        new = {key: k for key, k in compiled_kernels(module).items() if key not in before}
        print(f"  {text:50s} {timing}  [{describe(new)}]", flush=True)
        results.append((times, settings))
    for mode in modes:
        timed = [(t[mode], s) for t, s in results if mode in t]
        if timed:
            ms, settings = min(timed, key=lambda r: r[0])
            print(f"  best {mode}: {ms:.3f} ms with {label(settings) if settings else 'the defaults'}", flush=True)
    return results


def backend_variants(cases_module, device: torch.device, only, backend: str) -> Iterator[tuple]:
    """(case, its `backend` Variant) for the cases of benchmarks/cases/<op>.py worth running on `device` (GPU
    sizes on a GPU, the quick ones elsewhere) whose name contains one of `only` (all when None) and that the
    backend takes; nothing when --backend names another backend."""
    if _backend_only is not None and backend != _backend_only:
        return
    for case in cases_module.cases(quick=device.type != "cuda"):
        if device.type not in case.device_types or (only and not any(text in case.name for text in only)):
            continue
        variant = case.make(device, False).get(backend)
        if variant is not None:
            yield case, variant


def triton_variants(cases_module, device: torch.device, only) -> Iterator[tuple]:
    return backend_variants(cases_module, device, only, "triton")


def available_tuners() -> List[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", choices=available_tuners())
    parser.add_argument("--quick", action="store_true", help="a few settings around the defaults")
    parser.add_argument("--case", action="append", help="only cases whose name contains this (repeatable)")
    parser.add_argument("--defaults", action="store_true",
                        help="time the module's current settings only (with their kernels' registers and spills)")
    parser.add_argument("--backend", choices=["triton", "cuda"], help="only this backend's settings")
    parser.add_argument("--setting", action="append",
                        help="only the settings that set this module attribute, e.g. STATES_COLS (repeatable)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    global _defaults_only, _backend_only, _setting_names
    _defaults_only, _backend_only = args.defaults, args.backend
    _setting_names = set(args.setting) if args.setting else None
    tuner = importlib.import_module(f"{__name__}.{args.op}")
    device = torch.device(args.device)
    import triton
    print(f"# {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    tuner.run(device, args.quick, args.case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
