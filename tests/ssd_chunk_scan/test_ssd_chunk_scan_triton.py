"""Triton backward of ssd_chunk_scan: chunk and block edges, ngroups with several heads per program, D per
head-dim, active dt_limit clamps, varlen states (sequences ending on chunk edges, several per chunk, loss on
them alone), and bitwise reproducibility under torch.use_deterministic_algorithms. Each checks every gradient
against the sequential fp32 reference (tests/helpers.check_parity)."""
import math

import pytest
import torch

from ssm_kernels.ssd_chunk_scan import ssd_chunk_scan
from tests.helpers import backend_device, check_parity
from tests.ssd_chunk_scan.test_ssd_chunk_scan import grads_of, make_inputs, random_seq_idx, reference


def triton_scan(**kw):
    return ssd_chunk_scan(**kw, backend="triton")


@pytest.mark.parametrize("length,chunk_size", [
    (64, 64),    # one full chunk, one row block
    (128, 64),   # two full chunks
    (129, 64),   # one step into a third chunk
    (96, 80),    # chunk of one full and one partial row block (64 + 16)
    (20, 300),   # chunk longer than the sequence
    (33, 1),     # one step per chunk
])
def test_chunk_edges(length, chunk_size):
    device = backend_device("triton")
    inputs = make_inputs(1, length, 2, 8, 1, 6, torch.float32, device)
    check_parity(triton_scan, reference, inputs, torch.float32, grads_of(inputs), chunk_size=chunk_size,
                 dt_softplus=True, return_final_states=True)


@pytest.mark.parametrize("split", [(1, 4), (2, 2), None])
def test_ngroups_heads_per_program(monkeypatch, split):
    """8 heads in 2 groups: dB / dC sum the 4 heads of a group, looped inside one program (split (1, 4)), over
    two programs with partials summed by torch (2, 2), or as the launch heuristic picks (None)."""
    from ssm_kernels.ssd_chunk_scan import triton as backend
    if split is not None:
        monkeypatch.setattr(backend, "_split_heads", lambda hpg, programs: split)
    device = backend_device("triton")
    inputs = make_inputs(2, 45, 8, 8, 2, 6, torch.float32, device, D_shape="HP")
    check_parity(triton_scan, reference, inputs, torch.float32, grads_of(inputs), chunk_size=16,
                 dt_softplus=True, return_final_states=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dt_limit_clamps_both_sides(dtype):
    """dt' clamped below and above on a good share of the steps: the gradient of dt / dt_bias passes only
    where the clamp is inactive; D per head-dim."""
    device = backend_device("triton")
    inputs = make_inputs(2, 40, 4, 8, 2, 6, dtype, device, D_shape="HP")
    check_parity(triton_scan, reference, inputs, dtype, grads_of(inputs), chunk_size=16, dt_softplus=True,
                 dt_limit=(0.05, 0.15), return_final_states=True)


def test_no_softplus_no_bias_no_z():
    device = backend_device("triton")
    inputs = make_inputs(1, 50, 4, 12, 4, 10, torch.float32, device, D_shape=None, z=False, init=False)
    del inputs["dt_bias"]
    inputs["dt"] = inputs["dt"].abs() * 0.3
    check_parity(triton_scan, reference, inputs, torch.float32, grads_of(inputs), chunk_size=32,
                 return_final_states=True)


@pytest.mark.parametrize("loss_on", ["all", "varlen"])
def test_varlen_chunk_edges(loss_on):
    """Sequences ending on the last row of a chunk (15, 31), several ending in one chunk (32..47: 33, 36, 40),
    a one-step sequence, and the last sequence ending inside a chunk; with seq_idx boundaries too. "varlen":
    the loss sees only the varlen states (so every gradient flows through them alone)."""
    device = backend_device("triton")
    length = 57
    inputs = make_inputs(1, length, 4, 8, 2, 6, torch.float32, device)
    inputs["cu_seqlens"] = torch.tensor([0, 16, 32, 34, 37, 41, 42, length], dtype=torch.int32, device=device)
    inputs["seq_idx"] = random_seq_idx(1, length, device)
    kw = dict(chunk_size=16, dt_softplus=True, return_final_states=True, return_varlen_states=True)
    if loss_on == "varlen":
        def only_varlen(fn):
            return lambda **a: fn(**a, **kw)[2]
        grads = ["x", "dt", "A", "B", "dt_bias", "initial_states"]  # varlen states do not see C, D, z
        check_parity(only_varlen(triton_scan), only_varlen(reference), inputs, torch.float32, grads)
    else:
        check_parity(triton_scan, reference, inputs, torch.float32, grads_of(inputs), **kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_long_chunk(dtype):
    """Two row blocks per chunk, headdim / d_state not powers of two, in fp16 / bf16."""
    device = backend_device("triton")
    inputs = make_inputs(1, 150, 2, 12, 1, 20, dtype, device, D_shape="H")
    check_parity(triton_scan, reference, inputs, dtype, grads_of(inputs), chunk_size=128, dt_softplus=True,
                 dt_limit=(0.0, 0.3), return_final_states=True)


def test_backward_bitwise_deterministic():
    """Under torch.use_deterministic_algorithms(True) two backward passes (varlen, seq_idx, ngroups, every
    gradient) are bitwise equal: partial sums are written per program and reduced by torch, no atomics."""
    device = backend_device("triton")
    inputs = make_inputs(1, 40, 4, 8, 2, 6, torch.bfloat16, device, D_shape="HP")
    cu = torch.tensor([0, 9, 16, 40], dtype=torch.int64, device=device)
    seq_idx = random_seq_idx(1, 40, device)
    names = grads_of(inputs)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            leaves = {k: (v.detach().requires_grad_(k in names) if v is not None else None)
                      for k, v in inputs.items()}
            out, final, varlen = triton_scan(**leaves, chunk_size=16, dt_softplus=True, seq_idx=seq_idx,
                                             cu_seqlens=cu, return_final_states=True, return_varlen_states=True)
            gen = torch.Generator(device=device).manual_seed(3)
            loss = sum((o.float() * torch.randn(o.shape, generator=gen, device=device)).sum()
                       for o in (out, final, varlen))
            runs.append(torch.autograd.grad(loss, [leaves[n] for n in names]))
    finally:
        torch.use_deterministic_algorithms(previous)
    for name, a, b in zip(names, *runs):
        assert torch.isfinite(a.float()).all(), f"gradient of {name} is not finite"
        assert torch.equal(a, b), f"gradient of {name} differs between two runs"


def test_dt_limit_math_inf_default():
    """The default dt_limit (0, inf) leaves dt' unclamped above (math.inf reaches the kernels as a float)."""
    device = backend_device("triton")
    inputs = make_inputs(1, 24, 2, 8, 1, 6, torch.float32, device)
    inputs["dt"] = inputs["dt"] + 3.0  # large dt': softplus near linear
    check_parity(triton_scan, reference, inputs, torch.float32, grads_of(inputs), chunk_size=8,
                 dt_softplus=True, dt_limit=(0.0, math.inf), return_final_states=True)


def _states_case(options, device, dtype=torch.float32):
    """(inputs, kwargs) of a call whose boundary states matter: "plain", "seq_idx_final_state" (segments, the
    initial and the final state), "one_chunk" (10 steps, the final state) or "varlen" (cu_seqlens and the varlen
    states; batch 1)."""
    torch.manual_seed(0)
    inputs = make_inputs(2, 45, 4, 8, 2, 8, dtype, device, D_shape="HP")
    kwargs = dict(chunk_size=16, dt_softplus=True)
    if options == "seq_idx_final_state":
        kwargs.update(seq_idx=random_seq_idx(2, 45, device), return_final_states=True)
    elif options == "one_chunk":  # the whole sequence in one chunk: its final state is the only one passed
        inputs = make_inputs(2, 10, 4, 8, 2, 8, dtype, device, D_shape="HP")
        kwargs.update(return_final_states=True)
    elif options == "varlen":
        inputs = {k: (v[:1] if k != "A" and v is not None and v.dim() > 1 and v.shape[0] == 2 else v)
                  for k, v in inputs.items()}
        inputs["initial_states"] = None
        kwargs.update(cu_seqlens=torch.tensor([0, 7, 30, 45], device=device), return_varlen_states=True)
    return inputs, kwargs


def _run_mode(inputs, kwargs, mode):
    """Outputs (and, unless mode is "no_grad", the gradients of every input for fixed cotangents; inside a
    recompute block for "recompute_block"), detached."""
    from ssm_kernels import _recompute
    names = grads_of(inputs) if mode != "no_grad" else []
    leaves = {k: (v.detach().clone().requires_grad_() if k in names else v) for k, v in inputs.items()}
    device = inputs["x"].device
    with torch.set_grad_enabled(mode != "no_grad"), \
            _recompute.recomputed_activations(mode == "recompute_block", device):
        outs = triton_scan(**leaves, **kwargs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    if not names:
        return list(outs)
    cotangents = [torch.linspace(-1, 1, o.numel(), device=device).view_as(o).to(o.dtype) for o in outs]
    return [o.detach() for o in outs] + list(torch.autograd.grad(outs, [leaves[k] for k in names], cotangents))


@pytest.mark.parametrize("options,dtype,chunk", [("plain", torch.float32, 32), ("plain", torch.bfloat16, 40),
                                                 ("seq_idx_final_state", torch.float32, 40),
                                                 ("varlen", torch.float32, 32)])
def test_boundary_states_in_one_kernel_or_two_bitwise_equal(monkeypatch, options, dtype, chunk):
    """The chunk states and their passing in one kernel (grids of at least PASSED_STATES_PROGRAMS programs) or in
    two give the same bits: outputs, final and varlen states, every gradient (the backward recomputes nothing
    here, but reads the boundary states). Chunks in 16-position steps: two per 32-long chunk, three per 40-long
    one (the last one partial)."""
    import importlib
    module = importlib.import_module("ssm_kernels.ssd_chunk_scan.triton")
    fused = module._chunk_states_passed_kernel
    launches = []

    class Counted:
        def __getitem__(self, grid):
            launches.append(grid)
            return fused[grid]
    monkeypatch.setattr(module, "_chunk_states_passed_kernel", Counted())
    inputs, kwargs = _states_case(options, backend_device("triton"), dtype)
    kwargs["chunk_size"] = chunk
    monkeypatch.setattr(module, "STATES_STEP", 16)
    runs = []
    for threshold in (0, None):
        monkeypatch.setattr(module, "PASSED_STATES_PROGRAMS", threshold)
        launches.clear()
        runs.append(_run_mode(inputs, kwargs, "grad"))
        assert bool(launches) == (threshold == 0)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("options", ["seq_idx_final_state", "varlen"])
def test_dx_column_blocks_wider_than_the_shared_tiles(monkeypatch, options):
    """The dx kernel on column blocks of its own width (DX_COLS) beside the 16-wide tiles of the other kernels,
    rows in steps of 16 (the fewest a tensor-core dot takes): against the reference at every gradient, with
    segments, initial, final and varlen states (the log-decay gradient sums the dx kernel's per-block rows by its
    own block count)."""
    import importlib
    module = importlib.import_module("ssm_kernels.ssd_chunk_scan.triton")
    inputs, kwargs = _states_case(options, backend_device("triton"))
    kwargs["chunk_size"] = 32
    monkeypatch.setattr(module, "DX_COLS", 32)
    monkeypatch.setattr(module, "DX_ROWS", 16)
    monkeypatch.setattr(module, "_block_t", lambda T: min(module._pow2(T), 16))
    check_parity(triton_scan, reference, inputs, torch.float32, grads_of(inputs), **kwargs)


@pytest.mark.parametrize("rows,cols", [(32, 16), (16, 16)])
def test_output_kernel_rows_and_column_steps(monkeypatch, rows, cols):
    """The forward's output kernel with its own row blocks (SCAN_ROWS) and column steps (SCAN_COLS) on 32-long
    chunks, over 16-wide shared tiles of cb (32 rows: its diagonal tiles take in cb tiles above the shared
    diagonal): against the reference, forward and every gradient, with segments and states."""
    import importlib
    module = importlib.import_module("ssm_kernels.ssd_chunk_scan.triton")
    inputs, kwargs = _states_case("seq_idx_final_state", backend_device("triton"))
    kwargs["chunk_size"] = 32
    monkeypatch.setattr(module, "SCAN_ROWS", rows)
    monkeypatch.setattr(module, "SCAN_COLS", cols)
    monkeypatch.setattr(module, "_block_t", lambda T: min(module._pow2(T), 16))
    check_parity(triton_scan, reference, inputs, torch.float32, grads_of(inputs), **kwargs)


@pytest.mark.parametrize("options", ["plain", "seq_idx_final_state", "varlen"])
def test_boundary_states_recomputed_inside_a_recompute_block(options):
    """Inside a recomputed_activations block the op keeps no boundary states (B, nc + 1, H, P, N) for its
    backward: it recomputes them there from its inputs, and every output and gradient is bitwise the same."""
    import gc
    import importlib
    import weakref
    from ssm_kernels import _recompute
    device = backend_device("triton")
    inputs, kwargs = _states_case(options, device)
    names = grads_of(inputs)
    runs, states = [], []
    real = _recompute.recomputable

    def spy(tensor, recipe, *args):
        declared = real(tensor, recipe, *args)
        states.append((declared, weakref.ref(tensor.untyped_storage())))
        return declared
    for recompute in (False, True):
        leaves = {k: (v.detach().clone().requires_grad_() if k in names else v) for k, v in inputs.items()}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(importlib.import_module("ssm_kernels.ssd_chunk_scan.triton"), "recomputable", spy)
            with _recompute.recomputed_activations(recompute, device):
                outs = triton_scan(**leaves, **kwargs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        assert states[-1][0] == recompute
        if recompute:  # nothing holds the boundary states between the forward and the backward
            gc.collect()  # (the Triton interpreter's argument copies form cycles that hold storages)
            assert states[-1][1]() is None
        cotangents = [torch.linspace(-1, 1, o.numel(), device=device).view_as(o) for o in outs]
        grads = torch.autograd.grad(outs, [leaves[k] for k in names], cotangents)
        runs.append([o.detach() for o in outs] + list(grads))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("final_state_used", [False, True])
def test_outputs_without_a_gradient_reach_the_backward_as_none(monkeypatch, final_state_used):
    """The boundary states reach the backward's kernels only when the final state reached the loss: no zeros
    of (B, nc + 1, H, P, N) are made and read otherwise (nor of the pre-gate output)."""
    import importlib
    module = importlib.import_module("ssm_kernels.ssd_chunk_scan.triton")
    seen = []
    real = module._backward_launch

    def spy(dout, dstates, *args):
        seen.append(dstates)
        return real(dout, dstates, *args)
    monkeypatch.setattr(module, "_backward_launch", spy)
    device = backend_device("triton")
    inputs = make_inputs(1, 40, 2, 8, 1, 8, torch.float32, device)
    leaves = {k: (v.requires_grad_() if k in grads_of(inputs) else v) for k, v in inputs.items()}
    out, final = triton_scan(**leaves, chunk_size=16, return_final_states=True)
    loss = out.square().sum() + (final.sum() if final_state_used else 0)
    loss.backward()
    assert len(seen) == 1 and (seen[0] is not None) == final_state_used


@pytest.mark.parametrize("init", [False, True])
def test_initial_state_gradient_only_with_initial_states(monkeypatch, init):
    """The backward returns the initial states' gradient (B, H, P, N) only when there are initial states: no
    copy of it out of the boundary states' gradients otherwise."""
    import importlib
    module = importlib.import_module("ssm_kernels.ssd_chunk_scan.triton")
    returned = []
    real = module._backward_launch

    def spy(*args):
        grads = real(*args)
        returned.append(grads[7])
        return grads
    monkeypatch.setattr(module, "_backward_launch", spy)
    inputs = make_inputs(1, 40, 2, 8, 1, 8, torch.float32, backend_device("triton"), init=init)
    leaves = {k: (v.requires_grad_() if k in grads_of(inputs) else v) for k, v in inputs.items()}
    triton_scan(**leaves, chunk_size=16).square().sum().backward()
    assert len(returned) == 1 and (returned[0] is not None) == init
    if init:
        assert leaves["initial_states"].grad.shape == leaves["initial_states"].shape


@pytest.mark.parametrize("dtype,gate,splits", [(torch.float32, False, None), (torch.bfloat16, False, None),
                                               (torch.float32, False, (1, 4)), (torch.float32, True, None)])
def test_gradients_of_side_by_side_inputs_in_one_buffer(monkeypatch, dtype, gate, splits):
    """x, B and C as consecutive channel slices of one xBC (B, L, channels), split by ssm_kernels' split as the
    Mamba2 block does: every gradient matches the reference's; without z, xBC's gradient is the one buffer the
    backward wrote dx, dB and dC into (no concatenation), dB / dC from one split or summed over two; with z (its
    gradient shares dx's layout) the three are concatenated instead."""
    import importlib
    from ssm_kernels import _side_by_side
    module = importlib.import_module("ssm_kernels.ssd_chunk_scan.triton")
    if splits is not None:
        monkeypatch.setattr(module, "_split_heads", lambda hpg, programs: splits)
    buffers = []
    real = module.gradient_buffers

    def spy(*args):
        views = real(*args)
        buffers.append(views)
        return views
    monkeypatch.setattr(module, "gradient_buffers", spy)
    device = backend_device("triton")
    batch, length, heads, headdim, groups, dstate = 2, 45, 8, 8, 2, 6
    inputs = make_inputs(batch, length, heads, headdim, groups, dstate, dtype, device, z=gate)
    del inputs["x"], inputs["B"], inputs["C"]
    inputs["xBC"] = torch.randn(batch, length, heads * headdim + 2 * groups * dstate, device=device).to(dtype)
    sizes = [heads * headdim, groups * dstate, groups * dstate]

    def parts(xBC, split):
        x, B, C = split(xBC, sizes)
        return dict(x=x.unflatten(-1, (heads, headdim)), B=B.unflatten(-1, (groups, dstate)),
                    C=C.unflatten(-1, (groups, dstate)))
    check_parity(lambda xBC, **kw: triton_scan(**parts(xBC, _side_by_side.split), **kw),
                 lambda xBC, **kw: reference(**parts(xBC, lambda t, s: torch.split(t, s, -1)), **kw),
                 inputs, dtype, ["xBC"] + grads_of(inputs), chunk_size=16, dt_softplus=True)
    assert bool(buffers) != gate and all(views is not None for views in buffers)

    xBC = inputs["xBC"].detach().requires_grad_()
    out = triton_scan(**parts(xBC, _side_by_side.split), **{k: v for k, v in inputs.items() if k != "xBC"},
                      chunk_size=16, dt_softplus=True)
    grad, = torch.autograd.grad(out, xBC, torch.randn_like(out))
    assert (bool(buffers) and grad.data_ptr() == buffers[-1][0].data_ptr()) == (not gate)


@pytest.mark.parametrize("dtype,options,mode", [
    (torch.bfloat16, "plain", "no_grad"),
    (torch.bfloat16, "seq_idx_final_state", "no_grad"),
    (torch.bfloat16, "seq_idx_final_state", "recompute_block"),
    (torch.bfloat16, "one_chunk", "recompute_block"),
    (torch.float16, "plain", "recompute_block"),
    (torch.bfloat16, "plain", "grad"),             # the backward reads the forward's states: fp32
    (torch.bfloat16, "varlen", "recompute_block"),  # the varlen states read them: fp32
    (torch.float32, "seq_idx_final_state", "no_grad"),
])
def test_states_in_the_input_dtype_give_the_same_bits(monkeypatch, dtype, options, mode):
    """Where nothing but the output kernel reads the states entering the chunks (no gradient, or one taken inside
    a recompute block, whose backward recomputes them in fp32; no varlen states) and that kernel rounds them to the
    16-bit input dtype for its product anyway, the forward keeps them in that dtype: every output (the final state
    in fp32 included) and gradient has the same bits as with fp32 states. Elsewhere (fp32 inputs, varlen states,
    a gradient without a recompute block) the states stay fp32."""
    import importlib
    module = importlib.import_module("ssm_kernels.ssd_chunk_scan.triton")
    inputs, kwargs = _states_case(options, backend_device("triton"), dtype)
    taken = []
    real_launch = module._states_launch

    def spy(*args, lean=False):
        taken.append(lean)
        return real_launch(*args, lean=lean)
    monkeypatch.setattr(module, "_states_launch", spy)
    lean = _run_mode(inputs, kwargs, mode)
    expected_lean = dtype != torch.float32 and options != "varlen" and mode != "grad"
    assert taken[0] == expected_lean
    monkeypatch.setattr(module, "_lean_states", lambda *args, **kw: False)
    taken.clear()
    fp32 = _run_mode(inputs, kwargs, mode)
    assert not any(taken)
    for a, b in zip(lean, fp32):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,dt_limit,seq_idx,factored", [
    (torch.float32, (0.02, 0.4), False, True),
    (torch.float16, (0.0, math.inf), False, True),
    (torch.float32, (-0.1, math.inf), False, False),  # dt' may be negative: cs need not be monotone
    (torch.float32, (0.0, math.inf), True, False),    # segments: decays are cut inside a chunk
])
def test_factored_decays(monkeypatch, dtype, dt_limit, seq_idx, factored):
    """Where cs is monotone in each chunk (dt' >= 0, no segments), the output kernel's column steps left of its
    row block take the decays factored through the block's first row (one exp per row and per column): on
    61-long chunks in 16-row blocks with 16-column steps, so that most steps are left of the block, heads of fast
    and of slow decay (fp32; fp16 with decays of Mamba-2's range, whose gradients the operand rounding leaves well
    inside the tolerance: bf16's reach 80-100% of it here with and without the factored path, and fp16 takes
    bf16's kernel code), initial and final states: against the reference, forward and every gradient. Asserted
    per launch: the factored path is taken exactly where it may be."""
    import importlib
    module = importlib.import_module("ssm_kernels.ssd_chunk_scan.triton")
    device = backend_device("triton")
    torch.manual_seed(0)
    inputs = make_inputs(1, 150, 4, 16, 2, 16, dtype, device, D_shape="HP")
    inputs["A"] = torch.tensor([-8.0, -1.0, -0.1, -0.01] if dtype == torch.float32 else [-8.0, -2.0, -1.0, -0.5],
                               device=device)
    kwargs = dict(chunk_size=61, dt_softplus=True, dt_limit=dt_limit, return_final_states=True)
    if seq_idx:
        kwargs["seq_idx"] = random_seq_idx(1, 150, device)
    for name, value in dict(FACTORED_DECAYS=True, SCAN_ROWS=16, SCAN_COLS=16, SCAN_LEFT_COLS=16).items():
        monkeypatch.setattr(module, name, value)
    monkeypatch.setattr(module, "_block_t", lambda T: min(module._pow2(T), 16))
    taken = {}
    real_launch = module.launch_fitting_shared_memory

    def spy(kernel, grid, *args, **options):
        if "FACTORED" in options:
            taken[kernel.__name__] = options["FACTORED"]
        return real_launch(kernel, grid, *args, **options)
    monkeypatch.setattr(module, "launch_fitting_shared_memory", spy)
    check_parity(triton_scan, reference, inputs, dtype, grads_of(inputs), **kwargs)
    assert taken == {"_chunk_scan_kernel": factored}


@pytest.mark.parametrize("one_kernel", [True, False])
@pytest.mark.parametrize("cols,step", [(16, 16), (64, 32)])
def test_boundary_states_tiles(monkeypatch, one_kernel, cols, step):
    """The boundary-states kernels with their own state tiles (STATES_COLS: three 16-column tiles of d_state 40,
    or one of 64) and steps over a chunk (STATES_STEP: four of 16 in a 61-long chunk, or two of 32), in one kernel
    or two (PASSED_STATES_PROGRAMS None), with segments, the initial and the final state: against the reference,
    forward and every gradient."""
    import importlib
    module = importlib.import_module("ssm_kernels.ssd_chunk_scan.triton")
    monkeypatch.setattr(module, "STATES_COLS", cols)
    monkeypatch.setattr(module, "STATES_STEP", step)
    monkeypatch.setattr(module, "PASSED_STATES_PROGRAMS", 0 if one_kernel else None)
    device = backend_device("triton")
    torch.manual_seed(0)
    inputs = make_inputs(2, 130, 4, 8, 2, 40, torch.float32, device, D_shape="HP")
    check_parity(triton_scan, reference, inputs, torch.float32, grads_of(inputs), chunk_size=61, dt_softplus=True,
                 seq_idx=random_seq_idx(2, 130, device), return_final_states=True)
