"""selective_scan, Triton backend: block-size edge cases (several chunks per sequence, several channels per
program, partial channel blocks, forward and backward channel blocks that differ), checkpoint spacing, the
block table and determinism. Parity is against the sequential fp32 reference, as in test_selective_scan.py.

The default chunk (BLOCK_L = 256) is longer than the interpreter-sized sequences of the main suite, so the
tests here shrink the module's block constants (the launcher reads them at call time) to walk many chunks.
"""
import importlib

import pytest
import torch
import triton
import triton.language as tl

from ssm_kernels.selective_scan import selective_scan
from ssm_kernels.selective_scan._triton_bwd import _scan_runs_reverse
from ssm_kernels.testing import assert_close
from tests.helpers import backend_device, check_parity
from tests.selective_scan.test_selective_scan import ALL_GRADS, make_inputs, real_outputs, reference, run

# the public function shadows the subpackage attribute, so import the module by name
T = importlib.import_module("ssm_kernels.selective_scan.triton")


@pytest.fixture
def small_blocks(monkeypatch):
    """Chunks of 16 positions, 4 channels per forward program, 8 per backward program."""
    monkeypatch.setattr(T, "BLOCK_L", 16)
    monkeypatch.setattr(T, "FWD_BLOCK_D", 4)
    monkeypatch.setattr(T, "BWD_BLOCK_D", 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bc,length", [("variable", 47), ("grouped", 32), ("fixed", 33), ("variable", 1)])
def test_triton_many_chunks(small_blocks, dtype, bc, length):
    """L a multiple of the chunk and not, 10 channels (partial forward and backward channel blocks)."""
    inputs = make_inputs(2, 10, length, 5, dtype, backend_device("triton"), bc=bc, groups=2)
    check_parity(run("triton"), reference, inputs, dtype, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)


@pytest.mark.parametrize("bc,interleaved", [("variable", True), ("grouped", False), ("fixed", False)])
def test_triton_many_chunks_complex_A(small_blocks, bc, interleaved):
    inputs = make_inputs(2, 6, 37, 3, torch.float32, backend_device("triton"), bc=bc, complex_A=True,
                         interleaved=interleaved)
    check_parity(real_outputs(run("triton")), real_outputs(reference), inputs, torch.float32, ALL_GRADS,
                 delta_softplus=True, return_final_state=True)


@pytest.mark.parametrize("fwd_d,bwd_d", [(8, 2), (1, 16)])
def test_triton_forward_and_backward_channel_blocks_differ(monkeypatch, fwd_d, bwd_d):
    """The backward reads the forward's checkpoints with another channel block (same spacing)."""
    monkeypatch.setattr(T, "BLOCK_L", 8)
    monkeypatch.setattr(T, "FWD_BLOCK_D", fwd_d)
    monkeypatch.setattr(T, "BWD_BLOCK_D", bwd_d)
    inputs = make_inputs(1, 12, 30, 4, torch.float32, backend_device("triton"), bc="grouped", groups=3)
    check_parity(run("triton"), reference, inputs, torch.float32, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)


@pytest.mark.parametrize("complex_A", [False, True])
def test_triton_varlen_across_chunks(small_blocks, complex_A):
    """Packed sequences that start on, end on and span chunk boundaries, and empty ones."""
    device = backend_device("triton")
    cu_seqlens = torch.tensor([0, 16, 16, 17, 40, 48, 50], device=device)
    inputs = make_inputs(1, 6, 50, 3, torch.float32, device, complex_A=complex_A, interleaved=True)
    inputs["initial_state"] = torch.randn(6, 6, 3, device=device, dtype=inputs["A"].dtype)
    check_parity(real_outputs(run("triton")), real_outputs(reference), inputs, torch.float32, ALL_GRADS,
                 delta_softplus=True, return_final_state=True, cu_seqlens=cu_seqlens)


def test_triton_large_state_short_chunks(monkeypatch):
    """N = 130 (BLOCK_N 256): the tile budget shortens the chunk, so L = 20 walks several chunks."""
    monkeypatch.setattr(T, "TILE_BUDGET", 2048)  # the default gives 32-position chunks for N 256
    block_d, block_n, block_l, _ = T._blocks(2, 2, 130, 20, [], backward=False, cplx=False)
    assert block_n == 256 and block_l == 8 and block_n * block_l <= T.TILE_BUDGET
    inputs = make_inputs(2, 2, 20, 130, torch.float32, backend_device("triton"))
    check_parity(run("triton"), reference, inputs, torch.float32, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)


def test_triton_optional_inputs_absent_many_chunks(small_blocks):
    device = backend_device("triton")
    inputs = make_inputs(2, 5, 35, 4, torch.float32, device, init=False)
    for k in ("D", "z", "delta_bias", "initial_state"):
        inputs[k] = None
    inputs["delta"] = inputs["delta"].abs() * 0.3
    check_parity(run("triton"), reference, dict(inputs, B=make_inputs(2, 5, 35, 4, torch.float32, device,
                                                                         bc="fixed")["B"]),
                 torch.float32, ["u", "delta", "A", "B", "C"])


def test_triton_block_table():
    """BLOCK_L does not depend on the direction; large N and complex A shorten it; BLOCK_D divides the
    channels per group."""
    for N, cplx in ((16, False), (16, True), (64, False), (256, False), (256, True)):
        fwd = T._blocks(4, 4096, N, 4096, [], backward=False, cplx=cplx)
        bwd = T._blocks(4, 4096, N, 4096, [], backward=True, cplx=cplx)
        assert fwd[2] == bwd[2] and fwd[1] * fwd[2] <= T.TILE_BUDGET // (2 if cplx else 1)
        assert fwd[:2] == (T.FWD_BLOCK_D, triton.next_power_of_2(N)) and bwd[0] == T.BWD_BLOCK_D
    assert T._blocks(4, 4096, 16, 4096, [], False, False)[2] == T.BLOCK_L
    assert T._blocks(4, 4096, 16, 5, [], False, False)[2] == 8
    assert T._blocks(4, 24, 16, 100, [12, 24], True, False)[0] == 4
    assert T._blocks(4, 3, 16, 100, [], False, False)[0] <= 4


def test_triton_small_grids_shrink_channel_blocks(monkeypatch):
    """A grid of fewer than MIN_PROGRAMS programs gets fewer channels per program (down to one), forward and
    backward, and stays exact: the backward reads checkpoints that a forward with other blocks wrote."""
    monkeypatch.setattr(T, "MIN_PROGRAMS", 1024)
    assert T._blocks(1, 2048, 16, 1024, [], False, False)[0] == 2  # a batch-1 prompt: 1024 programs
    assert T._blocks(1, 2048, 16, 1024, [], True, False)[0] == 2
    assert T._blocks(4, 4096, 16, 4096, [], False, False)[0] == T.FWD_BLOCK_D  # already 1024 programs
    assert T._blocks(1, 24, 16, 100, [24], True, False)[0] == 1
    # one long sequence: the backward's (1, D / BLOCK_D, N, L) fp32 partials of a variable B / C stop the shrink
    # at 512 MiB each (here at 16 channels: 128 blocks x 16 x 65536 x 4 B); fixed B / C have none
    assert T._blocks(1, 2048, 16, 65536, [2048], True, False)[0] == 16
    assert T._blocks(1, 2048, 16, 65536, [2048], True, True)[0] == 32  # complex partials are twice as large
    assert T._blocks(1, 2048, 16, 65536, [], True, False)[0] == 2
    assert T._blocks(1, 2048, 16, 65536, [2048], False, False)[0] == 2  # the forward has no partials
    assert T._blocks(8, 2048, 16, 5120, [2048], True, False)[0] == 16  # the measured cases keep their blocks
    assert T._blocks(4, 4096, 16, 4096, [4096], True, False)[0] == 16
    monkeypatch.setattr(T, "MIN_PROGRAMS", 6)  # 2 rows x 3 programs of 4 channels (the last one partial)
    monkeypatch.setattr(T, "BLOCK_L", 8)
    assert T._blocks(2, 10, 4, 29, [], False, False)[0] == T._blocks(2, 10, 4, 29, [], True, False)[0] == 4
    inputs = make_inputs(2, 10, 29, 4, torch.float32, backend_device("triton"))
    check_parity(run("triton"), reference, inputs, torch.float32, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)


def test_triton_checkpoint_spacing(monkeypatch):
    """The forward saves the state entering every chunk of BLOCK_L positions, (B, ceil(L / BLOCK_L), D, N)
    fp32, never (B, D, L, N); inference saves none."""
    monkeypatch.setattr(T, "BLOCK_L", 16)
    device = backend_device("triton")
    inputs = make_inputs(2, 4, 40, 3, torch.float32, device)
    for name in ("u", "delta", "initial_state"):
        inputs[name].requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        selective_scan(**inputs, delta_softplus=True, backend="triton")
    ckpts = [t for t in saved if t.dtype == torch.float32 and t.dim() == 4 and t.shape[1:] == (3, 4, 3)]
    assert len(ckpts) == 1 and ckpts[0].shape[0] == 2
    assert max(t.numel() for t in saved) < 2 * 4 * 40 * 3
    with torch.no_grad():
        _, _, ckpt = torch.ops.ssm_kernels.selective_scan_triton_fwd(
            inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], None, None, None, True,
            None, None, False)
    assert ckpt.numel() == 0


def test_triton_backward_is_deterministic(small_blocks, deterministic_mode):
    inputs = make_inputs(2, 8, 40, 4, torch.float32, backend_device("triton"), bc="grouped")
    leaves = [v.requires_grad_() for v in inputs.values()]
    grads = []
    for _ in range(2):
        y, state = selective_scan(**inputs, delta_softplus=True, return_final_state=True, backend="triton")
        grads.append(torch.autograd.grad((y.square().sum() + state.sum()), leaves))
    for g1, g2 in zip(*grads):
        assert torch.equal(g1, g2)


@pytest.mark.parametrize("bc", ["variable", "grouped"])
def test_triton_dB_dC_atomic_equals_deterministic(small_blocks, monkeypatch, bc):
    """dB / dC added with atomics into (B, groups, N, L) (the default) equal the deterministic mode's
    (B, channel blocks, N, L) partials summed by torch."""
    inputs = make_inputs(2, 16, 40, 4, torch.float32, backend_device("triton"), bc=bc, groups=2)
    leaves = [v.requires_grad_() for v in inputs.values()]
    buffers = []
    make_buffer = T._bc_grad_buffer

    def recorded(*args):
        buffers.append(make_buffer(*args))
        return buffers[-1]

    monkeypatch.setattr(T, "_bc_grad_buffer", recorded)
    grads = {}
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        try:
            y, state = selective_scan(**inputs, delta_softplus=True, return_final_state=True, backend="triton")
            grads[deterministic] = torch.autograd.grad((y.square().sum() + state.sum()), leaves)
        finally:
            torch.use_deterministic_algorithms(False)
    groups = 1 if bc == "variable" else 2
    assert [b.shape for b in buffers] == [(2, groups, 4, 40)] * 2 + [(2, 2, 4, 40)] * 2  # blocks of 8
    for name, atomic, partials in zip(inputs, grads[False], grads[True]):
        assert_close(atomic, partials, torch.float32, f"d{name}")


def test_triton_register_caps(small_blocks, monkeypatch):
    """The kernels launched with register caps (the tuner's FWD_MAXNREG / BWD_MAXNREG; spills on the GPU)."""
    monkeypatch.setattr(T, "FWD_MAXNREG", 128)
    monkeypatch.setattr(T, "BWD_MAXNREG", 96)
    inputs = make_inputs(2, 10, 47, 5, torch.float32, backend_device("triton"), bc="grouped", groups=2)
    check_parity(run("triton"), reference, inputs, torch.float32, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)


def test_triton_split_with_state_equals_whole_many_chunks(small_blocks):
    device = backend_device("triton")
    inputs = make_inputs(1, 6, 45, 4, torch.float32, device, init=False)
    kw = dict(A=inputs["A"], D=inputs["D"], delta_bias=inputs["delta_bias"], delta_softplus=True,
              return_final_state=True, backend="triton")
    seq = ("u", "delta", "B", "C", "z")
    whole, whole_state = selective_scan(**{k: inputs[k] for k in seq}, **kw)
    first, state = selective_scan(**{k: inputs[k][..., :20] for k in seq}, **kw)
    second, second_state = selective_scan(**{k: inputs[k][..., 20:] for k in seq}, initial_state=state, **kw)
    assert_close(torch.cat([first, second], -1), whole, torch.float32, "split output")
    assert_close(second_state, whole_state, torch.float32, "final state")


@triton.jit
def _reverse_run_scan_kernel(alpha_ptr, cy_ptr, g_ptr, out_ptr, RUN: tl.constexpr, RUNS: tl.constexpr,
                             BLOCK_N: tl.constexpr, FAST: tl.constexpr):
    r = tl.arange(0, RUN)[:, None, None]
    j = tl.arange(0, RUNS)[None, :, None]
    n = tl.arange(0, BLOCK_N)[None, None, :]
    at = (j * RUN + r) * BLOCK_N + n  # (RUN, runs, BLOCK_N) tiles of a (positions, BLOCK_N) array
    G = _scan_runs_reverse(tl.load(alpha_ptr + at), tl.load(cy_ptr + at), tl.load(g_ptr + tl.arange(0, BLOCK_N)),
                           FAST)
    tl.store(out_ptr + at, G)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("run_len,runs", [(8, 8), (4, 16), (2, 1)])
def test_reverse_run_scan(fast, run_len, runs):
    """The backward's adjoint scan G_p = cy_p + alpha_p G_(p+1) over one chunk, both of its forms: the native
    one (FAST: runs flipped in registers, their totals flipped with gathers, forward scans; GPU runs of the
    backward take only this one) and the reverse scans the interpreter runs, against a sequential loop."""
    device = backend_device("triton")
    gen = torch.Generator().manual_seed(3)
    positions, n = run_len * runs, 16
    alpha = torch.rand(positions, n, generator=gen)
    cy = torch.randn(positions, n, generator=gen)
    g_after = torch.randn(n, generator=gen)
    expected = torch.empty(positions, n)
    g = g_after
    for p in reversed(range(positions)):
        g = cy[p] + alpha[p] * g
        expected[p] = g
    out = torch.empty(positions, n, device=device)
    _reverse_run_scan_kernel[(1,)](alpha.to(device), cy.to(device), g_after.to(device), out, RUN=run_len,
                                   RUNS=runs, BLOCK_N=n, FAST=fast, num_warps=1)
    assert_close(out.cpu(), expected, torch.float32, "G")


def test_triton_dz_lies_like_z():
    """dz comes back in z's memory order where z is dense with L contiguous (the Mamba block's z: a channel slice
    of in_proj's (2D, B, L)-ordered output, whose backward reads it in place), equal to the reference's."""
    dev = backend_device("triton")
    inputs = make_inputs(2, 6, 21, 4, torch.float32, dev, init=False)
    gemm_out = torch.randn(12, 2, 21, device=dev).transpose(0, 1).requires_grad_()  # (B, 2D, L), (2D, B, L) memory
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items() if k not in ("z", "initial_state")}
    z = gemm_out[:, 6:]
    seen = []
    z.register_hook(seen.append)
    y = selective_scan(**leaves, z=z, delta_softplus=True, backend="triton")
    cotangent = torch.randn_like(y)
    y.backward(cotangent)
    assert seen[0].stride() == z.stride()
    ref_z = z.detach().clone().requires_grad_()
    ref = reference(**{k: v.detach() for k, v in leaves.items()}, z=ref_z, delta_softplus=True)
    ref.backward(cotangent)
    assert_close(seen[0], ref_z.grad, torch.float32, "dz")


@pytest.mark.parametrize("complex_A", [False, True])
def test_triton_output_lies_like_u(complex_A):
    """The output comes in u's memory order where u is dense with L contiguous (the Mamba block's u: the conv
    output in in_proj's (D, B, L) order, so out_proj's weight gradient reads y as one (D, B L) matrix), else
    contiguous; equal to the reference either way, gradients included."""
    dev = backend_device("triton")
    inputs = make_inputs(2, 6, 21, 4, torch.float32, dev, complex_A=complex_A, init=False)
    for u in (torch.randn(6, 2, 21, device=dev).transpose(0, 1),  # (B, D, L) view of (D, B, L) memory
              torch.randn(2, 21, 6, device=dev).transpose(1, 2)):  # L not contiguous: a contiguous output
        leaves = {k: v.detach().requires_grad_() for k, v in inputs.items() if k not in ("u", "initial_state")}
        u = u.requires_grad_()
        y = selective_scan(u=u, **leaves, delta_softplus=True, backend="triton")
        assert y.stride() == (u.stride() if u.stride(2) == 1 else (6 * 21, 21, 1))
        cotangent = torch.randn_like(y)
        grads = torch.autograd.grad(y, [u] + list(leaves.values()), cotangent)
        ref_leaves = {k: v.detach().requires_grad_() for k, v in leaves.items()}
        ref_u = u.detach().requires_grad_()
        ref = reference(u=ref_u, **ref_leaves, delta_softplus=True)
        ref_grads = torch.autograd.grad(ref, [ref_u] + list(ref_leaves.values()), cotangent)
        assert_close(y, ref, torch.float32, "y")
        for name, a, b in zip(["u"] + list(leaves), grads, ref_grads):
            assert_close(a, b, torch.float32, f"d{name}")
