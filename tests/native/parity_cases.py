"""The cases of the native parity sweep (tests/native/test_parity.py): for an op and a dtype, (name, inputs,
gradients to check, keyword arguments) on fresh random inputs built by the op's own test module, at lengths
around block and chunk edges (EDGE_LENGTHS, the SSD ones crossed with chunk sizes 1, 16, 64 and 256),
alternately with non-contiguous inputs, plus 2047, 4096 and 65536 (the longest with a narrow channel count so
that the sequential reference stays affordable), packed sequences and states. Inputs are built as the
generator advances, so a sweep holds one case's tensors at a time."""
from __future__ import annotations

from typing import Iterator

import torch

from ssm_kernels import causal_conv1d, gated_rmsnorm, selective_scan, ssd_chunk_scan

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EDGE_LENGTHS = (1, 2, 63, 64, 65, 4095)
QUICK_EDGE_LENGTHS = (1, 2, 65)


def selective_scan_cases(dtype, device, quick) -> Iterator[tuple]:
    from tests.selective_scan.test_selective_scan import ALL_GRADS, make_inputs
    states = dict(delta_softplus=True, return_final_state=True)
    for length in (1, 63, 2047) if quick else (1, 63, 2047, 4096):
        yield f"L{length} D32 N16 variable", make_inputs(2, 32, length, 16, dtype, device), ALL_GRADS, states
    for i, length in enumerate(QUICK_EDGE_LENGTHS if quick else EDGE_LENGTHS):
        layout = "transposed" if i % 2 else "contiguous"
        yield (f"L{length} D24 N16 variable {layout}",
               make_inputs(2, 24, length, 16, dtype, device, transposed=i % 2 == 1), ALL_GRADS, states)
    yield "L2047 D32 N16 grouped G2", make_inputs(2, 32, 2047, 16, dtype, device, bc="grouped"), ALL_GRADS, states
    yield "L2047 D16 N64 fixed", make_inputs(2, 16, 2047, 64, dtype, device, bc="fixed"), ALL_GRADS, states
    yield ("L1025 D16 N16 complex A interleaved B/C",
           make_inputs(2, 16, 1025, 16, dtype, device, complex_A=True, interleaved=True), ALL_GRADS,
           dict(states, _complex=True))
    yield "L4096 D16 N256 variable", make_inputs(1, 16, 4096, 256, dtype, device), ALL_GRADS, states
    if not quick and dtype != torch.float16:  # the sequential reference takes about a minute at this length
        yield "L65536 D4 N16 variable", make_inputs(1, 4, 65536, 16, dtype, device), ALL_GRADS, states
    if dtype == torch.float32:
        inputs = make_inputs(1, 16, 2047, 16, torch.float32, device)
        inputs["initial_state"] = torch.randn(4, 16, 16, device=device)
        yield ("L2047 cu_seqlens (4 sequences, one empty)", inputs, ALL_GRADS,
               dict(states, cu_seqlens=torch.tensor([0, 1, 700, 700, 2047], device=device, dtype=torch.int32)))


def _run_selective_scan(backend, kwargs):
    from tests.selective_scan.test_selective_scan import real_outputs, reference
    fn = lambda **kw: selective_scan(**kw, backend=backend)  # noqa: E731
    return (real_outputs(fn), real_outputs(reference)) if kwargs.pop("_complex", False) else (fn, reference)


def causal_conv1d_cases(dtype, device, quick) -> Iterator[tuple]:
    from tests.causal_conv1d.test_causal_conv1d import make_inputs
    with_states = ["x", "weight", "bias", "initial_states"]
    silu = dict(activation="silu", return_final_states=True)
    for length in (1, 63, 2047, 4096) if quick else (1, 63, 2047, 4096, 65536):
        dim = 64 if length < 65536 else 16
        yield f"L{length} D{dim} W4 silu states", make_inputs(2, dim, length, 4, dtype, device, init=True), \
            with_states, silu
    for i, length in enumerate(QUICK_EDGE_LENGTHS if quick else EDGE_LENGTHS):
        layout = "channel-last" if i % 2 else "channel-first"
        yield (f"L{length} D40 W4 silu states {layout}",
               make_inputs(2, 40, length, 4, dtype, device, init=True, transposed=i % 2 == 1), with_states, silu)
    yield ("L2047 D48 W3 seq_idx channel-last", make_inputs(2, 48, 2047, 3, dtype, device, seq=True, transposed=True),
           ["x", "weight", "bias"], dict(activation="silu"))
    yield ("L1000 D40 W8 no act", make_inputs(2, 40, 1000, 8, dtype, device, init=True), with_states,
           dict(activation=None, return_final_states=True))


def _run_causal_conv1d(backend, kwargs):
    from tests.causal_conv1d.test_causal_conv1d import reference
    return (lambda **kw: causal_conv1d(**kw, backend=backend)), reference


def gated_rmsnorm_cases(dtype, device, quick) -> Iterator[tuple]:
    from tests.gated_rmsnorm.test_gated_rmsnorm import make_inputs
    for group, before in ((None, True), (64, False), (512, True)):
        yield (f"(4, 2047, 1024) group {group} norm_before_gate={before}", make_inputs((4, 2047, 1024), dtype, device),
               ["x", "weight", "z"], dict(eps=1e-5, group_size=group, norm_before_gate=before))


def _run_gated_rmsnorm(backend, kwargs):
    from ssm_kernels.gated_rmsnorm.reference import gated_rmsnorm_ref
    return (lambda **kw: gated_rmsnorm(**kw, backend=backend)), gated_rmsnorm_ref


def ssd_chunk_scan_cases(dtype, device, quick) -> Iterator[tuple]:
    from tests.ssd_chunk_scan.test_ssd_chunk_scan import grads_of, make_inputs, random_seq_idx
    for length in (1, 63, 2047) if quick else (1, 63, 2047, 4096):
        inputs = make_inputs(2, length, 4, 64, 2, 128, dtype, device)
        yield (f"L{length} H4 P64 N128 G2 chunk256", inputs, grads_of(inputs),
               dict(chunk_size=256, dt_softplus=True, return_final_states=True))
    inputs = make_inputs(2, 1000, 4, 24, 1, 40, dtype, device, D_shape="HP")
    inputs["seq_idx"] = random_seq_idx(2, 1000, device)
    yield ("L1000 P24 N40 D(H,P) seq_idx dt_limit chunk64", inputs, grads_of(inputs),
           dict(chunk_size=64, dt_softplus=True, dt_limit=(0.01, 0.2), return_final_states=True))
    # every chunk size the GPU must compile (1 to 256) at the lengths around chunk edges, alternating
    # contiguous / non-contiguous inputs and plain / packed (cu_seqlens, varlen states) sequences
    lengths = QUICK_EDGE_LENGTHS if quick else EDGE_LENGTHS
    for i, (length, chunk) in enumerate((l, c) for l in lengths for c in (1, 16, 64, 256)):
        packed = i % 2 == 1 and length > 2
        inputs = make_inputs(1 if packed else 2, length, 4, 16, 2, 16, dtype, device, transposed=i % 2 == 0)
        kwargs = dict(chunk_size=chunk, dt_softplus=True, return_final_states=True)
        if packed:
            kwargs.update(cu_seqlens=torch.tensor([0, 1, length // 2, length], device=device),
                          return_varlen_states=True)
        layout = "transposed" if i % 2 == 0 else "contiguous"
        yield (f"L{length} chunk{chunk} H4 P16 N16 {layout}{' varlen' if packed else ''}", inputs, grads_of(inputs),
               kwargs)
    if not quick:
        inputs = make_inputs(1, 65536, 2, 16, 1, 16, dtype, device)
        yield ("L65536 chunk256 H2 P16 N16", inputs, grads_of(inputs),
               dict(chunk_size=256, dt_softplus=True, return_final_states=True))
    if dtype == torch.float32:
        inputs = make_inputs(1, 2047, 4, 32, 2, 64, torch.float32, device)
        inputs["initial_states"] = None
        yield ("L2047 cu_seqlens varlen states", inputs, grads_of(inputs),
               dict(chunk_size=128, dt_softplus=True, cu_seqlens=torch.tensor([0, 5, 900, 2047], device=device),
                    return_varlen_states=True))


def _run_ssd_chunk_scan(backend, kwargs):
    from tests.ssd_chunk_scan.test_ssd_chunk_scan import reference
    return (lambda **kw: ssd_chunk_scan(**kw, backend=backend)), reference


# op: (cases(dtype, device, quick), run(backend, kwargs) -> (fn, reference); run may take keys out of kwargs)
OPS = {
    "selective_scan": (selective_scan_cases, _run_selective_scan),
    "causal_conv1d": (causal_conv1d_cases, _run_causal_conv1d),
    "gated_rmsnorm": (gated_rmsnorm_cases, _run_gated_rmsnorm),
    "ssd_chunk_scan": (ssd_chunk_scan_cases, _run_ssd_chunk_scan),
}
