"""cp_group: ops over a sequence split across gloo processes equal the single-process call: outputs, final
states and every gradient (sharded inputs: this rank's slice; replicated ones: the sum over ranks)."""
import pytest
import torch

import ssm_kernels
from ssm_kernels.testing import assert_close

from .ranks import bounds, run_ranks, summed

F64 = torch.float64


def _check_op(rank, world, call, inputs, sharded, length_dims, final_index=None):
    """call(**inputs, cp_group=...) on this rank's shards against call(**inputs) on the whole sequence.
    sharded: names of inputs split along their length dim (length_dims[name]); the others are replicated.
    final_index: position of the final state in call's outputs (its cotangent is given on rank 0 only)."""
    import torch.distributed as dist
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)
              and v.is_floating_point() or isinstance(v, torch.Tensor) and v.is_complex()}
    full_in = dict(inputs, **leaves)
    full = call(**full_in)
    full = full if isinstance(full, tuple) else (full,)
    gen = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(o.shape, generator=gen, dtype=o.real.dtype).to(o.dtype) for o in full]
    loss = sum((o * c.conj()).real.sum() for o, c in zip(full, cotangents))
    full_grads = torch.autograd.grad(loss, list(leaves.values()))

    out_dim = length_dims["out"]
    length = full[0].shape[out_dim]
    start, end = bounds(length, world, rank)
    local_leaves = {}
    for name, value in leaves.items():
        if name in sharded:
            value = value.detach().narrow(length_dims[name], start, end - start).clone()
        local_leaves[name] = value.detach().clone().requires_grad_()
    outs = call(**dict(inputs, **local_leaves), cp_group=dist.group.WORLD)
    outs = outs if isinstance(outs, tuple) else (outs,)
    local_loss = 0
    for i, (o, c) in enumerate(zip(outs, cotangents)):
        if i == 0:
            c = c.narrow(out_dim, start, end - start)
            assert_close(o, full[0].narrow(out_dim, start, end - start), F64, f"rank {rank} output")
        elif i == final_index:
            assert_close(o, full[i], F64, f"rank {rank} final state")
            if rank != 0:
                c = torch.zeros_like(c)
        local_loss = local_loss + (o * c.conj()).real.sum()
    grads = torch.autograd.grad(local_loss, list(local_leaves.values()))
    for (name, g), full_g in zip(zip(local_leaves, grads), full_grads):
        if name in sharded:
            assert_close(g, full_g.narrow(length_dims[name], start, end - start), F64, f"rank {rank} d{name}")
        else:
            assert_close(summed(g), full_g, F64, f"rank {rank} d{name} summed over ranks")


def _linear_scan_cases(rank, world):
    torch.manual_seed(0)
    for complex_scan in (False, True):
        for reverse in (False, True):
            for gate_dims in (3, 2, 1):
                shape = (2, 3, 23)
                dtype = torch.complex128 if complex_scan else F64
                gate_shape = {3: shape, 2: shape[1:], 1: shape[1:2]}[gate_dims]
                gates = (0.5 + 0.5 * torch.rand(gate_shape, dtype=F64)).to(dtype)
                inputs = dict(gates=gates, tokens=torch.randn(shape, dtype=dtype),
                              initial_state=torch.randn(2, 3, dtype=dtype), reverse=reverse, return_final_state=True)
                sharded = ["tokens"] + (["gates"] if gate_dims >= 2 else [])
                _check_op(rank, world, ssm_kernels.linear_scan, inputs, sharded,
                          {"out": -1, "tokens": -1, "gates": -1}, final_index=1)


def _selective_scan_cases(rank, world):
    torch.manual_seed(1)
    batch, dim, n, length = 2, 4, 3, 21
    for complex_A in (False, True):
        A = -torch.rand(dim, n, dtype=F64) - 0.5
        if complex_A:
            A = torch.complex(A, torch.randn(dim, n, dtype=F64))
        bc_dtype = A.dtype
        inputs = dict(u=torch.randn(batch, dim, length, dtype=F64), delta=torch.randn(batch, dim, length, dtype=F64),
                      A=A, B=torch.randn(batch, n, length, dtype=bc_dtype), C=torch.randn(batch, n, length, dtype=bc_dtype),
                      D=torch.randn(dim, dtype=F64), z=torch.randn(batch, dim, length, dtype=F64),
                      delta_bias=torch.randn(dim, dtype=F64), delta_softplus=True,
                      initial_state=torch.randn(batch, dim, n, dtype=bc_dtype), return_final_state=True)
        _check_op(rank, world, ssm_kernels.selective_scan, inputs, ["u", "delta", "B", "C", "z"],
                  {"out": -1, "u": -1, "delta": -1, "B": -1, "C": -1, "z": -1}, final_index=1)


def _ssd_cases(rank, world):
    torch.manual_seed(2)
    batch, length, heads, p, groups, n = 2, 19, 4, 3, 2, 5
    inputs = dict(x=torch.randn(batch, length, heads, p, dtype=F64), dt=torch.randn(batch, length, heads, dtype=F64),
                  A=-torch.rand(heads, dtype=F64), B=torch.randn(batch, length, groups, n, dtype=F64),
                  C=torch.randn(batch, length, groups, n, dtype=F64), chunk_size=4, D=torch.randn(heads, dtype=F64),
                  z=torch.randn(batch, length, heads, p, dtype=F64), dt_bias=torch.randn(heads, dtype=F64),
                  dt_softplus=True, dt_limit=(0.01, 2.0), initial_states=torch.randn(batch, heads, p, n, dtype=F64),
                  return_final_states=True)
    _check_op(rank, world, ssm_kernels.ssd_chunk_scan, inputs, ["x", "dt", "B", "C", "z"],
              {"out": 1, "x": 1, "dt": 1, "B": 1, "C": 1, "z": 1}, final_index=1)


def _causal_conv1d_cases(rank, world):
    torch.manual_seed(3)
    for width, initial in ((4, True), (4, False), (2, True), (1, False)):
        inputs = dict(x=torch.randn(2, 5, 17, dtype=F64), weight=torch.randn(5, width, dtype=F64),
                      bias=torch.randn(5, dtype=F64), activation="silu",
                      initial_states=torch.randn(2, 5, width - 1, dtype=F64) if initial else None,
                      return_final_states=True)
        _check_op(rank, world, ssm_kernels.causal_conv1d, inputs, ["x"], {"out": -1, "x": -1}, final_index=1)


def _bad_inputs(rank, world):
    """Ranks that disagree, or a shard too short for the convolution: the same ValueError on every rank (no rank
    left waiting in a collective), after which the group still works."""
    import torch.distributed as dist
    group = dist.group.WORLD
    channels = 3 + (rank == world - 1)
    with pytest.raises(ValueError, match="disagree on the device, shapes or dtypes"):
        ssm_kernels.linear_scan(torch.rand(2, channels, 8), torch.randn(2, channels, 8), cp_group=group)
    length = 2 if rank == 0 else 8
    with pytest.raises(ValueError, match=r"at least 3 position\(s\); shard lengths by rank: \[2, 8"):
        ssm_kernels.causal_conv1d(torch.randn(1, 2, length), torch.randn(2, 4), cp_group=group)
    x = ssm_kernels.linear_scan(torch.rand(1, 2, 5), torch.randn(1, 2, 5), cp_group=group)
    assert x.shape == (1, 2, 5)


def _model_cases(rank, world):
    """create_model stacks with cp_group: outputs, input gradients (sharded) and parameter gradients (summed).
    fp64 models, fp32 tolerance: the layers run their scans in fp32 (A = -exp(A_log.float()), complex64 S5)."""
    import torch.distributed as dist
    import ssm_universal as su
    for architecture, options in (("mamba", {}), ("mamba2", dict(headdim=8, chunk_size=4)), ("s5", {}),
                                  ("s5", dict(bidirectional=True)), ("s4d", {})):
        torch.manual_seed(4)
        model = su.create_model(architecture, d_model=16, d_state=4, n_layer=2, conv_kernel_size=3,
                                **options).double()
        x = torch.randn(2, 22, 16, dtype=F64, requires_grad=True)
        cotangent = torch.randn(2, 22, 16, dtype=F64)
        params = list(model.parameters())
        full = model(x)
        full_grads = torch.autograd.grad((full * cotangent).sum(), [x] + params)
        start, end = bounds(22, world, rank)
        su.set_context_parallel(model, dist.group.WORLD)
        x_shard = x.detach()[:, start:end].clone().requires_grad_()
        out = model(x_shard)
        name = f"rank {rank} {architecture} {options}"
        assert_close(out, full[:, start:end], torch.float32, f"{name} output")
        grads = torch.autograd.grad((out * cotangent[:, start:end]).sum(), [x_shard] + params)
        assert_close(grads[0], full_grads[0][:, start:end], torch.float32, f"{name} dx")
        for (pname, _), g, full_g in zip(model.named_parameters(), grads[1:], full_grads[1:]):
            assert_close(summed(g), full_g, torch.float32, f"{name} d{pname} summed over ranks")
        su.set_context_parallel(model, None)


def _all_ops(rank, world):
    _bad_inputs(rank, world)
    _linear_scan_cases(rank, world)
    _selective_scan_cases(rank, world)
    _ssd_cases(rank, world)
    _causal_conv1d_cases(rank, world)
    _model_cases(rank, world)


@pytest.mark.parametrize("world", [2, 4])
def test_ops_match_single_process(world):
    run_ranks(world, _all_ops)


def test_arguments_without_a_process_group():
    """Errors that need no other rank: cp_group of the wrong type, torch.distributed not initialised, and the
    packed-sequence arguments that have no context-parallel form."""
    import torch.distributed as dist
    x = torch.randn(1, 2, 8)
    if not dist.is_initialized():
        with pytest.raises(ValueError, match="needs torch.distributed initialised"):
            ssm_kernels.linear_scan(torch.rand(1, 2, 8), x, cp_group=object())
    with pytest.raises(ValueError, match="cu_seqlens cannot be combined with cp_group"):
        ssm_kernels.linear_scan(torch.rand(1, 2, 8), x, cu_seqlens=torch.tensor([0, 8]), cp_group=object())
    with pytest.raises(ValueError, match="seq_idx cannot be combined with cp_group"):
        ssm_kernels.causal_conv1d(x, torch.randn(2, 4), seq_idx=torch.zeros(1, 8, dtype=torch.int32), cp_group=object())


def test_group_type_checked():
    run_ranks(2, _wrong_group_type)


def _wrong_group_type(rank, world):
    with pytest.raises(TypeError, match="cp_group must be a torch.distributed ProcessGroup, got str"):
        ssm_kernels.linear_scan(torch.rand(1, 2, 8), torch.randn(1, 2, 8), cp_group="world")
