"""Rows of a model's recurrent state: every tensor of a default_state tree is batch-first, so a subset of the
sequences is the same rows of every tensor. For state caches shared by sequences that join and leave between
steps (state_batch_indices), and for prompts of different lengths prefilled in groups."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten


def select_rows(state: Any, rows: torch.Tensor) -> Any:
    """The state of the sequences `rows` (B',) int: a new tree of the same structure, each tensor indexed on
    its first dimension (copies)."""
    leaves, spec = tree_flatten(state)
    return tree_unflatten([leaf[rows] if torch.is_tensor(leaf) else leaf for leaf in leaves], spec)


def write_rows(state: Any, rows: torch.Tensor, values: Any) -> None:
    """state[rows] = values for every tensor of the tree, in place; values has state's structure, B' rows."""
    leaves, spec = tree_flatten(state)
    new_leaves, new_spec = tree_flatten(values)
    if new_spec != spec:
        raise ValueError("write_rows: the values differ in structure from the state")
    for leaf, new in zip(leaves, new_leaves):
        if torch.is_tensor(leaf):
            leaf[rows] = new.to(leaf.dtype)
