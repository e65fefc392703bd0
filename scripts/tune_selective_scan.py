"""Block-size sweep of the Triton selective scan on the issue-5 H100 case: u, delta, z (4, 4096, 4096) bf16,
A (4096, 16), B, C (4, 16, 4096), D, delta_bias, softplus. Prints one line per config (forward without grad,
then forward+backward), then the winners to write into ssm_kernels/selective_scan/triton.py (FWD_BLOCK_D,
FWD_WARPS, BWD_BLOCK_D, BWD_WARPS, BLOCK_L). The forward and the backward share BLOCK_L (the checkpoint
spacing), so the forward+backward sweep runs for the two best forward BLOCK_L, each with its best forward.

    python scripts/tune_selective_scan.py            # full sweep (24 forward, 18 forward+backward configs)
    python scripts/tune_selective_scan.py --quick    # a few configs around the defaults
"""
import argparse
import importlib

import torch
import triton

from ssm_kernels import selective_scan

# the public function shadows the subpackage attribute, so import the module by name
T = importlib.import_module("ssm_kernels.selective_scan.triton")

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--fp32", action="store_true", help="also time fp32 inputs with the winners")
args = parser.parse_args()

torch.manual_seed(0)
dev, Bb, D, L, N = "cuda", 4, 4096, 4096, 16


def make(dt):
    u, z = (torch.randn(Bb, D, L, device=dev).to(dt) for _ in range(2))
    delta = (torch.randn(Bb, D, L, device=dev) * 0.5 - 1).to(dt)
    A = -torch.arange(1, N + 1, device=dev).float().repeat(D, 1)
    B, C = (torch.randn(Bb, N, L, device=dev).to(dt) for _ in range(2))
    Dp = torch.randn(D, device=dev)
    bias = torch.rand(D, device=dev) - 1.5
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, Dp, z, bias)]
    return leaves, torch.randn_like(u)


leaves, g = make(torch.bfloat16)


def f(ls=None):
    u, delta, A, B, C, Dp, z, bias = ls or leaves
    return selective_scan(u, delta, A, B, C, D=Dp, z=z, delta_bias=bias, delta_softplus=True, backend="triton")


def bench_fwd():
    with torch.no_grad():
        return triton.testing.do_bench(f)


def bench_fwd_bwd(ls=None, cot=None):
    ls, cot = ls or leaves, cot if cot is not None else g
    return triton.testing.do_bench(lambda: torch.autograd.grad(f(ls), ls, cot))


def setc(**kw):
    for k, v in kw.items():
        setattr(T, k, v)


def per_thread(bl, w):  # tile elements per thread (N 16): ~16-32 keeps the kernels free of spills
    return 16 * bl // (32 * w)


if args.quick:  # around the defaults
    fwd_grid = [(64, 1, 16), (64, 2, 16), (128, 2, 16), (128, 4, 16), (256, 4, 16)]
    bwd_grid = [(1, 32), (2, 32), (4, 32), (2, 64)]
else:
    fwd_grid = [(bl, w, bd) for bl in (32, 64, 128, 256, 512) for w in (1, 2, 4, 8) for bd in (8, 16, 32)
                if 16 <= per_thread(bl, w) <= 32]
    bwd_grid = [(w, bd) for w in (1, 2, 4, 8) for bd in (16, 32, 64)]

print(f"device {torch.cuda.get_device_name()}, triton {triton.__version__}, torch {torch.__version__}")
best_fwd = {}
for bl, w, bd in fwd_grid:
    setc(BLOCK_L=bl, FWD_WARPS=w, FWD_BLOCK_D=bd)
    try:
        ms = bench_fwd()
    except Exception as e:  # noqa: BLE001 (a config that does not compile / fit is reported and skipped)
        print(f"fwd      BLOCK_L={bl:4d} FWD_WARPS={w} FWD_BLOCK_D={bd:2d}: failed ({type(e).__name__}: {e})"[:200])
        continue
    print(f"fwd      BLOCK_L={bl:4d} FWD_WARPS={w} FWD_BLOCK_D={bd:2d}: {ms:.3f} ms", flush=True)
    if bl not in best_fwd or ms < best_fwd[bl][0]:
        best_fwd[bl] = (ms, w, bd)

results = []
# the backward sweep runs for the two chunk lengths with the fastest forwards (compiles are the slow part)
for bl in sorted(best_fwd, key=lambda k: best_fwd[k][0])[:2]:
    _, fw, fbd = best_fwd[bl]
    for w, bd in bwd_grid:
        if not 8 <= per_thread(bl, w) <= 32:
            continue
        setc(BLOCK_L=bl, FWD_WARPS=fw, FWD_BLOCK_D=fbd, BWD_WARPS=w, BWD_BLOCK_D=bd)
        try:
            ms = bench_fwd_bwd()
        except Exception as e:  # noqa: BLE001
            print(f"fwd+bwd  BLOCK_L={bl:4d} BWD_WARPS={w} BWD_BLOCK_D={bd:2d}: failed ({type(e).__name__}: {e})"[:200])
            continue
        print(f"fwd+bwd  BLOCK_L={bl:4d} (FWD_WARPS={fw} FWD_BLOCK_D={fbd}) BWD_WARPS={w} BWD_BLOCK_D={bd:2d}: "
              f"{ms:.3f} ms", flush=True)
        results.append((ms, bl, fw, fbd, w, bd))

if results:
    ms, bl, fw, fbd, w, bd = min(results)
    print(f"best fwd+bwd {ms:.3f} ms: BLOCK_L={bl} FWD_WARPS={fw} FWD_BLOCK_D={fbd} BWD_WARPS={w} BWD_BLOCK_D={bd}; "
          f"its forward {best_fwd[bl][0]:.3f} ms")
    bl_f = min(best_fwd, key=lambda k: best_fwd[k][0])
    print(f"best fwd {best_fwd[bl_f][0]:.3f} ms: BLOCK_L={bl_f} FWD_WARPS={best_fwd[bl_f][1]} "
          f"FWD_BLOCK_D={best_fwd[bl_f][2]}")
    if args.fp32:
        setc(BLOCK_L=bl, FWD_WARPS=fw, FWD_BLOCK_D=fbd, BWD_WARPS=w, BWD_BLOCK_D=bd)
        ls32, g32 = make(torch.float32)
        with torch.no_grad():
            ms_f = triton.testing.do_bench(lambda: f(ls32))
        print(f"fp32 with the best fwd+bwd config: fwd {ms_f:.3f} ms, fwd+bwd {bench_fwd_bwd(ls32, g32):.3f} ms")
