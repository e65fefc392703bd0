"""Compile every Triton kernel launch the test suite makes for a GPU target, without a GPU.

The Triton versions differ between machines (the GPU image has an older one), and some versions reject
kernels that others compile (layout passes that fail, shared memory over the chip's limit, compiles that
never end). Two steps find those on a CPU machine:

  record:  run pytest with the Triton interpreter and write each distinct launch (kernel, argument types,
           constexprs, num_warps / num_stages) to a pickle:
             python -m tests.triton_compile record launches.pkl -- -q tests/ssd_chunk_scan -x
  compile: compile the recorded launches for a target with whichever Triton is installed (another venv
           may hold another version), and report failures, shared memory over the limit and slow compiles
           (launches made through _triton_launch.launch_fitting_shared_memory are recorded at 3 stages and
           retry with fewer on the GPU, so an SMEM line for them says that the retry will happen):
             python -m tests.triton_compile compile launches.pkl [--arch 90] [--slow 20] [--ptx DIR]
With --ptx, each launch's PTX is written to DIR without its debug lines and labels: compiling the same
launches before and after a refactor (run from a second checkout of the old commit) and diffing the two
folders shows whether the GPU code changed at all. With --ttgir, each launch's TTGIR goes to DIR: the layouts
Triton chose (a load without known contiguity and alignment gets one element per thread) and the convert_layout
ops between them. With --sass, each launch's SASS goes to DIR and the instructions of its two largest loops are
counted by opcode (per iteration, an outer loop's count including its inner loops': what an instruction-bound
kernel spends, the numbers a change should move). --set NAME=VALUE
(repeatable) rewrites the recorded launches as a GPU run would make them: a constexpr the interpreter fixes
otherwise (--set FAST=True for the selective scan's approximate math, --set EMULATE=False for the SSD kernels'
dots, which the interpreter emulates), an argument that a test's small sizes specialised to the constexpr 1 and
that is a runtime int at real sizes (--set n_dblocks=i32).
Compiling needs a process without TRITON_INTERPRET (the interpreter replaces the kernels it would compile).
"""
from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import hashlib
import importlib
import inspect
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
SHARED_MEMORY_LIMIT = {90: 232448, 80: 166912, 89: 101376, 86: 101376}  # bytes per block, opt-in maximum

_TORCH_TO_TRITON = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int64": "i64",
                    "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}


def _arg_spec(value):
    """(type string, constexpr value or None, divisible by 16) of one runtime argument, as Triton's JIT
    specialises it: ints equal to 1 become constexprs, pointers and ints carry 16-divisibility."""
    import torch
    if isinstance(value, torch.Tensor):
        return "*" + _TORCH_TO_TRITON[str(value.dtype).replace("torch.", "")], None, value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return "i1", None, False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", 1, False
        return ("i32" if -2**31 <= value < 2**31 else "i64"), None, value % 16 == 0
    if isinstance(value, float):
        return "fp32", None, False
    if value is None:
        return "constexpr", None, False
    raise TypeError(f"unrecorded argument type {type(value)}")


@contextlib.contextmanager
def recorded_launches() -> Iterator[set]:
    """A set that receives every distinct launch made through the Triton interpreter inside the block (kernel
    module and name, argument types, constexprs, 16-divisible arguments, launch options)."""
    from triton.runtime import interpreter

    launches = set()
    original_run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        import triton.language as tl
        params = list(inspect.signature(self.fn).parameters.values())
        options = {k: kwargs.pop(k) for k in LAUNCH_OPTIONS if k in kwargs}
        bound = dict(zip((p.name for p in params), args))
        bound.update(kwargs)
        signature, constexprs, divisible = {}, {}, []
        for p in params:
            value = bound.get(p.name, p.default)
            if p.annotation is tl.constexpr or p.annotation == "tl.constexpr":
                signature[p.name], constexprs[p.name] = "constexpr", value
                continue
            kind, const, div = _arg_spec(value)
            signature[p.name] = kind
            if kind == "constexpr":
                constexprs[p.name] = const
            elif div:
                divisible.append(p.name)
        key = (self.fn.__module__, self.fn.__name__, tuple(signature.items()), tuple(sorted(constexprs.items())),
               tuple(divisible), tuple(sorted(options.items())))
        launches.add(key)
        return original_run(self, *args, grid=grid, warmup=warmup, **kwargs, **options)

    interpreter.InterpretedFunction.run = recording_run
    try:
        yield launches
    finally:
        interpreter.InterpretedFunction.run = original_run


def record(out_path: str, pytest_args: list) -> int:
    os.environ["TRITON_INTERPRET"] = "1"
    import pytest
    with recorded_launches() as launches:
        rc = pytest.main(pytest_args)
    with open(out_path, "wb") as f:
        pickle.dump(sorted(launches, key=repr), f)
    print(f"recorded {len(launches)} distinct launches into {out_path}")
    return int(rc)


def compile_launch(launch, arch: int):
    """Triton's compiled kernel of one recorded launch for sm_<arch> (raises the compiler's error), or None
    when the kernel is not reachable by name (a test's own kernel)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name, signature, constexprs, divisible, options = launch
    kernel = getattr(importlib.import_module(module), name, None)
    if kernel is None:
        return None
    signature, constexprs = dict(signature), dict(constexprs)
    index = {n: i for i, n in enumerate(kernel.arg_names)}
    attrs = {(index[n],): [["tt.divisibility", 16]] for n in divisible}
    src = ASTSource(kernel, signature, constexprs={(index[n],): v for n, v in constexprs.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options))


def _instructions(ptx: str) -> str:
    """PTX without what changes when only the source changes: locations, debug sections, labels."""
    kept = []
    for line in ptx.splitlines():
        if line.strip().startswith(".section"):
            break  # the debug sections come last
        if not (line.strip().startswith((".loc", ".file", "//")) or "L__tmp" in line):
            kept.append(line)
    return "\n".join(kept) + "\n"


def resource_usage(ptx: str, arch: int) -> str:
    """ptxas' registers and spills of a compiled kernel (`ptxas -v` on its PTX; ptxas from a CUDA toolkit)."""
    tool = shutil.which("ptxas")
    if tool is None:
        return "ptxas not on PATH"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder, "kernel.ptx")
        source.write_text(ptx)
        run = subprocess.run([tool, f"-arch=sm_{arch}a", "-v", str(source), "-o", str(Path(folder, "kernel.o"))],
                             capture_output=True, text=True)
    text = run.stdout + run.stderr
    registers = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if registers is None or spills is None:
        return text.strip().splitlines()[-1][:200] if text.strip() else "no ptxas report"
    return f"registers {registers[1]}, spill stores {spills[1]} B, spill loads {spills[2]} B"


def with_settings(launch, settings: dict):
    """The launch with NAME=VALUE settings applied: VALUE i32 / i64 makes NAME a runtime integer argument,
    anything else is a Python literal for the constexpr NAME, or for a launch option (num_warps, num_stages,
    maxnreg; None removes it) of every launch. Names the kernel does not take are skipped."""
    module, name, signature, constexprs, divisible, options = launch
    signature, constexprs, options = dict(signature), dict(constexprs), dict(options)
    for key, value in settings.items():
        if key in LAUNCH_OPTIONS:
            options[key] = ast.literal_eval(value)
            if options[key] is None:
                del options[key]
            continue
        if key not in signature:
            continue
        if value in ("i32", "i64"):
            signature[key] = value
            constexprs.pop(key, None)
        else:
            signature[key] = "constexpr"
            constexprs[key] = ast.literal_eval(value)
    return (module, name, tuple(signature.items()), tuple(sorted(constexprs.items())), divisible,
            tuple(sorted(options.items())))


def sass_of(cubin: bytes) -> str:
    """nvdisasm's SASS of a cubin (nvdisasm from PATH, else the one Triton ships)."""
    import triton
    tool = shutil.which("nvdisasm") or str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "kernel.cubin")
        path.write_bytes(cubin)
        return subprocess.run([tool, "-c", str(path)], capture_output=True, text=True, check=True).stdout


def loop_instructions(sass: str) -> list:
    """[(instructions, Counter of opcodes)] of every loop of a SASS listing (a backward branch and the
    instructions from its target to it), largest first."""
    instructions, labels, loops = [], {}, []
    for line in sass.splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        ins = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?);", line)
        if ins:
            instructions.append(re.sub(r"^@!?U?P\w+\s+", "", ins.group(1).strip()))
    for i, ins in enumerate(instructions):
        branch = re.search(r"BRA\s+(?:\S+\s+)?`?\(?(\.L_x_\d+)", ins)
        if branch and labels.get(branch.group(1), i) < i:
            body = instructions[labels[branch.group(1)]:i + 1]
            loops.append((len(body), collections.Counter(x.split()[0].split(".")[0] for x in body)))
    return sorted(loops, key=lambda loop: -loop[0])


def compile_all(path: str, arch: int, slow_s: float, ptx_dir: str = None, usage: bool = False,
                sass_dir: str = None, settings: dict = None, ttgir_dir: str = None) -> int:
    import triton

    sys.path.insert(0, str(ROOT))
    with open(path, "rb") as f:
        launches = pickle.load(f)
    limit = SHARED_MEMORY_LIMIT.get(arch)
    problems = 0
    print(f"triton {triton.__version__}, target sm_{arch}, {len(launches)} launches")
    for launch in launches:
        launch = with_settings(launch, settings or {})
        module, name, signature, constexprs, divisible, options = launch
        label = f"{name} {dict(options)} {dict(constexprs)}"
        start = time.perf_counter()
        try:
            compiled = compile_launch(launch, arch)
        except Exception as exc:  # the compiler's own message says which pass failed
            problems += 1
            print(f"FAIL  {label}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        if compiled is None:  # defined inside a function (a test's own kernel): not reachable by name
            print(f"SKIP  {module}.{name}: not a module-level kernel")
            continue
        seconds = time.perf_counter() - start
        digest = hashlib.sha1(repr((name, sorted(dict(signature).items()), sorted(dict(constexprs).items()),
                                    divisible, options)).encode()).hexdigest()[:12]
        if ptx_dir:
            Path(ptx_dir, f"{name}_{digest}.ptx").write_text(_instructions(compiled.asm["ptx"]))
        if ttgir_dir:  # the layouts Triton chose and the conversions between them (convert_layout)
            Path(ttgir_dir, f"{name}_{digest}.ttgir").write_text(compiled.asm["ttgir"])
        if sass_dir:
            sass = sass_of(compiled.asm["cubin"])
            Path(sass_dir, f"{name}_{digest}.sass").write_text(sass)
            loops = "; ".join(f"{size} ({', '.join(f'{op} {n}' for op, n in ops.most_common(8))})"
                              for size, ops in loop_instructions(sass)[:2])
            print(f"SASS  {label}: loops (instructions per iteration, largest first) {loops or 'none'}")
        shared = compiled.metadata.shared
        if usage:
            print(f"USAGE {label}: {resource_usage(compiled.asm['ptx'], arch)}, shared {shared} B")
        if limit is not None and shared > limit:
            problems += 1
            print(f"SMEM  {label}: {shared} bytes of shared memory > {limit}")
        if seconds > slow_s:
            problems += 1
            print(f"SLOW  {label}: {seconds:.0f} s to compile")
    print(f"{problems} problems in {len(launches)} launches")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out")
    rec.add_argument("pytest_args", nargs=argparse.REMAINDER)
    comp = sub.add_parser("compile")
    comp.add_argument("launches")
    comp.add_argument("--arch", type=int, default=90)
    comp.add_argument("--slow", type=float, default=20.0, help="report compiles longer than this (s)")
    comp.add_argument("--ptx", help="write each launch's PTX (debug lines removed) into this folder")
    comp.add_argument("--usage", action="store_true", help="print each launch's registers and spills (ptxas -v)")
    comp.add_argument("--sass", help="write each launch's SASS into this folder and count its loops' instructions")
    comp.add_argument("--ttgir", help="write each launch's TTGIR (layouts, convert_layout ops) into this folder")
    comp.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                      help="override a recorded constexpr (a Python literal) or make it a runtime i32 / i64")
    args = parser.parse_args()
    if args.command == "record":
        return record(args.out, [a for a in args.pytest_args if a != "--"])
    for folder in (args.ptx, args.sass, args.ttgir):
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
    settings = dict(item.split("=", 1) for item in args.set)
    return compile_all(args.launches, args.arch, args.slow, args.ptx, args.usage, args.sass, settings, args.ttgir)


if __name__ == "__main__":
    sys.exit(main())
