"""A language model's decoding step captured in one CUDA graph (mamba_ssm's generate(cg=True)).

Eager decoding launches every layer's kernels from Python each token, and on the H100 host one launch costs
about 14 us (python -m benchmarks decode: torch.add in a loop), more than the step's GPU work at batch 1.
Replaying a captured graph launches the whole step at once: the selective_state_update step then costs
2.0 us and causal_conv1d_update 1.5 us (benchmarks/results/h100_decode_probe.txt).
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten

from ..layers._step_constants import FrozenStepConstants


class GraphedStep:
    """model.step(token_ids (B,), state) -> logits (B, V), replayed from a CUDA graph.

    The token and the recurrent state live in static buffers. One replay runs the step and copies the new
    state back into the state buffers, both inside the graph, so the next replay continues from it.
    Parameters are read in place, and what the layers' steps derive from parameters alone (their step
    constants, ssm_universal.layers._step_constants) is recomputed by reset() and load_state(), which start
    every generation: optimizer steps between generations are seen. Re-create the object after replacing
    parameter tensors (e.g. load_state_dict with assign=True) or moving the model.
    """

    def __init__(self, model, batch_size: int, device, warmup: int = 2):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"GraphedStep: CUDA graphs need a CUDA device, got {device}")
        self.batch_size = batch_size
        self.token = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.state = model.default_state(batch_size, device=device)
        leaves, spec = tree_flatten(self.state)
        self._spec = spec
        self._tensor_at = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        self._leaves = [leaves[i] for i in self._tensor_at]  # other leaves (None, sizes) stay as they are
        self._initial = [t.clone() for t in self._leaves]
        self.constants = FrozenStepConstants(model)  # the graph reads these tensors; refreshed in place
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), self.constants:  # first calls (kernel compiles, lazy inits) off the graph
            for _ in range(warmup):
                model.step(self.token, self.state)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), self.constants:
            self.logits, new_state = model.step(self.token, self.state)
            new_all, new_spec = tree_flatten(new_state)
            new_leaves = [new_all[i] for i in self._tensor_at] if new_spec == spec else []
            same_kinds = new_spec == spec and [isinstance(n, torch.Tensor) for n in new_all] == \
                [isinstance(o, torch.Tensor) for o in leaves]
            if not same_kinds or any(n.shape != s.shape for n, s in zip(new_leaves, self._leaves)):
                raise RuntimeError("GraphedStep: the step's new state differs in structure or shapes from "
                                   "default_state; it cannot be written back into static buffers")
            for old, new in zip(self._leaves, new_leaves):
                if new is not old:
                    old.copy_(new)
        self.reset()

    def reset(self) -> None:
        """Back to the model's default (initial) state, with step constants from the current parameters."""
        self.constants.refresh()
        for leaf, init in zip(self._leaves, self._initial):
            leaf.copy_(init)

    def load_state(self, state) -> None:
        """Continue from `state` (the structure of model.default_state, e.g. after a prefill): copied into the
        graph's state buffers."""
        leaves, spec = tree_flatten(state)
        tensors = [leaves[i] for i in self._tensor_at] if spec == self._spec else []
        if len(tensors) != len(self._leaves) or any(not isinstance(t, torch.Tensor) or t.shape != b.shape
                                                    for t, b in zip(tensors, self._leaves)):
            raise ValueError("GraphedStep.load_state: the state differs in structure or shapes from default_state")
        self.constants.refresh()
        for buffer, tensor in zip(self._leaves, tensors):
            if tensor is not buffer:
                buffer.copy_(tensor)

    def __call__(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Advance by one token per sequence; returns the logits (a static buffer, overwritten next call)."""
        self.token.copy_(token_ids)
        self.graph.replay()
        return self.logits
