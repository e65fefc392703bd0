"""Block-size sweep of the Triton causal_conv1d on the issue-5 H100 case: x (4, 4096, 4096) bf16 contiguous
(B, D, L), width 4, bias, SiLU. One line per config: forward or forward+backward median (do_bench), the
fraction of the bandwidth floor (fwd: x in + y out; fwd+bwd: adds x, dy in, dx out; at COPY_TBPS) and the
error of y / dx against the torch backend, so the winners can be written into
ssm_kernels/causal_conv1d/triton.py (FWD_* and BWD_* constants). The causal-conv1d peer is timed in the same
run when benchmarks.peers can load it (SSM_PEERS_DIR=peers).

    SSM_PEERS_DIR=$PWD/peers python scripts/tune_causal_conv1d.py [--quick] [--bwd-only] [--length L] [--channel-last]
"""
import argparse
import importlib
import itertools
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import peers  # noqa: E402
from ssm_kernels import causal_conv1d  # noqa: E402

# the public function shadows the subpackage attribute, so import the module by name
T = importlib.import_module("ssm_kernels.causal_conv1d.triton")

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="fewer configs")
parser.add_argument("--batch", type=int, default=4)
parser.add_argument("--dim", type=int, default=4096)
parser.add_argument("--length", type=int, default=4096)
parser.add_argument("--device", default="cuda")
parser.add_argument("--bwd-only", action="store_true", help="skip the forward sweep")
parser.add_argument("--channel-last", action="store_true", help="x as (B, L, D) memory viewed as (B, D, L)")
args = parser.parse_args()

COPY_TBPS = 3.0
torch.manual_seed(0)
dev, dt, Bb, D, L, W = args.device, torch.bfloat16, args.batch, args.dim, args.length, 4
if args.channel_last:
    x = torch.randn(Bb, L, D, device=dev, dtype=dt).transpose(1, 2)
else:
    x = torch.randn(Bb, D, L, device=dev, dtype=dt)
w = torch.randn(D, W, device=dev, dtype=dt) / W ** 0.5
b = torch.randn(D, device=dev, dtype=dt)
leaves = [t.requires_grad_() for t in (x, w, b)]
g = torch.randn_like(x)
io = x.numel() * x.element_size()
floor = {"fwd": 2 * io / COPY_TBPS / 1e9, "fwd+bwd": 5 * io / COPY_TBPS / 1e9}  # ms

with torch.no_grad():
    y_ref = causal_conv1d(x.float(), w.float(), b.float(), "silu", backend="torch")
x32 = x.detach().float().requires_grad_()
dx_ref = torch.autograd.grad(causal_conv1d(x32, w.float(), b.float(), "silu", backend="torch"), x32, g.float())[0]


def rel(a, ref):
    return ((a.float() - ref).norm() / ref.norm()).item()


def ours():
    return causal_conv1d(x, w, b, "silu", backend="triton")


def line(mode, label, ms, err):
    print(f"{mode:8s} {label:60s} {ms:7.3f} ms  {floor[mode] / ms:5.1%} of floor  rel.err {err:.1e}", flush=True)


def fwd(label):
    with torch.no_grad():
        err = rel(ours(), y_ref)
        line("fwd", label, triton.testing.do_bench(ours, warmup=25, rep=100), err)


def fwd_bwd(label):
    err = rel(torch.autograd.grad(ours(), leaves, g)[0], dx_ref)
    line("fwd+bwd", label, triton.testing.do_bench(lambda: torch.autograd.grad(ours(), leaves, g), warmup=25,
                                                   rep=100), err)


peer = peers.load("causal_conv1d.causal_conv1d_interface", "causal_conv1d_fn")
if peer is not None:
    with torch.no_grad():
        line("fwd", "peer causal-conv1d", triton.testing.do_bench(lambda: peer(x, w, b, activation="silu")),
             rel(peer(x, w, b, activation="silu"), y_ref))
    line("fwd+bwd", "peer causal-conv1d",
         triton.testing.do_bench(lambda: torch.autograd.grad(peer(x, w, b, activation="silu"), leaves, g)),
         rel(torch.autograd.grad(peer(x, w, b, activation="silu"), leaves, g)[0], dx_ref))
else:
    print("peer causal-conv1d: not loadable here (set SSM_PEERS_DIR to the peers folder)", flush=True)

FWD_NAMES = ("FWD_BLOCK_L", "FWD_TILE", "FWD_NUM_WARPS", "FWD_TILES_PER_PROGRAM", "FWD_PACKED")
BWD_NAMES = ("BWD_BLOCK_L", "BWD_TILE", "BWD_NUM_WARPS", "BWD_PROGRAMS_PER_SM", "BWD_UNITS_PER_PROGRAM",
             "BWD_PACKED")
defaults = {name: getattr(T, name) for name in FWD_NAMES + BWD_NAMES + ("MAX_BLOCK_L", "CL_BLOCK_D")}
T.MAX_BLOCK_L = 4096
if args.quick:
    fwd_grid = [c + (p,) for p in (True, False) for c in [(256, 4096, 4, 1), (512, 4096, 4, 1),
                                                          (512, 8192, 8, 1), (1024, 8192, 8, 1), (256, 4096, 4, 2)]]
    # the packed backward (no scratch, more registers per position) around the per-tap path's best tiles,
    # and two per-tap baselines
    bwd_grid = [(256, 2048, 4, 4, 8, True), (512, 4096, 8, 2, 8, True), (256, 4096, 8, 2, 8, True),
                (128, 2048, 4, 4, 8, True), (1024, 4096, 8, 2, 8, True), (256, 2048, 4, 8, 8, True),
                (512, 4096, 8, 4, 8, True), (256, 4096, 4, 2, 8, True), (512, 2048, 4, 4, 8, True),
                (512, 4096, 8, 2, 8, False), (256, 2048, 4, 4, 8, False)]
else:
    fwd_grid = list(itertools.product((128, 256, 512, 1024), (4096, 8192), (4, 8), (1,), (True, False)))
    fwd_grid += [(256, 4096, 4, 2, True), (512, 4096, 8, 2, True), (256, 8192, 8, 2, True), (512, 8192, 8, 2, True)]
    bwd_grid = list(itertools.product((128, 256, 512), (2048, 4096), (4, 8), (2, 4), (8,), (True, False)))
    bwd_grid += [(256, 2048, 4, 4, 2, True), (256, 2048, 4, 4, 32, True), (256, 2048, 4, 8, 8, True),
                 (1024, 4096, 8, 2, 8, True), (1024, 4096, 8, 4, 8, True), (512, 4096, 8, 1, 8, True)]
if args.channel_last:  # channel-last tiles: CL_BLOCK_D along D, tile // CL_BLOCK_D along L
    fwd_grid = [c + (cl,) for c in fwd_grid for cl in (64, 128, 256) if c[0] == 256 and c[4]]
    # channel-last takes the per-tap backward whatever BWD_PACKED says: one value of it
    bwd_grid = [c + (cl,) for c in bwd_grid for cl in (64, 128) if c[0] == 256 and c[5]]

if args.bwd_only:
    fwd_grid = []
for config in fwd_grid:
    for name, value in zip(FWD_NAMES + ("CL_BLOCK_D",), config):
        setattr(T, name, value)
    fwd(" ".join(f"{n}={v}" for n, v in zip(FWD_NAMES + ("CL_BLOCK_D",), config)))
for name in FWD_NAMES + ("CL_BLOCK_D",):
    setattr(T, name, defaults[name])
for config in bwd_grid:
    for name, value in zip(BWD_NAMES + ("CL_BLOCK_D",), config):
        setattr(T, name, value)
    fwd_bwd(" ".join(f"{n.replace('BWD_', '')}={v}" for n, v in zip(BWD_NAMES + ("CL_BLOCK_D",), config)))
for name, value in defaults.items():
    setattr(T, name, value)
fwd("defaults")
fwd_bwd("defaults")
