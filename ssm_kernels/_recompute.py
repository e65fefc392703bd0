"""Activations recomputed in the backward instead of kept: saved-tensor hooks for a block of ops.

Autograd keeps every tensor an op saves for its backward until that backward runs. In a Mamba mixer the
convolution's output and delta (each (B, D, L)) are saved by the ops that read them (x_proj's GEMM, the scan),
though both are cheap to compute again from tensors that stay saved anyway (xz and the weights; x_proj's
output). mamba_ssm's fused mixer (mamba_inner_fn, checkpoint_lvl=1) recomputes them in its backward; this
module does the same for any composition of ops, whatever backend each op runs:

    with recomputed_activations(enabled, device) as keep_out:
        u = keep_out(conv, x)   # runs conv(x) now; ops in the block that save u save the recipe instead
        y = scan(u, proj(u))    # (other saved tensors as usual)

A recipe is a function and its inputs. The tensors of the graph it reads are passed as inputs, not captured
in a closure: the recipe is kept for the backward by the saved tensors of the ops in the block, so a tensor
it held with its grad_fn would reference those ops' nodes, and a graph dropped without a backward (a forward
under grad mode whose loss is never used) would form a cycle through autograd's nodes that nothing frees.
Inputs are kept detached (requiring grad as they did); a closure holding a tensor with a grad_fn is refused.

A recipe's result must own its storage (a fresh op output, dense); every tensor an op inside the block saves
that views that storage is then saved as a token (its shape, strides and offset), and unpacked as the same
view of the recomputed tensor. The recipe runs again once per backward (its result is shared by every
token and freed after the last one is unpacked) with grad mode on, so that ops dispatch exactly as they did
in the forward (the dispatch table may order backends differently for calls autograd records).

A recipe's input may be another recipe's result (it is then held as a token and recomputed first). An op may
also declare an intermediate it saves for its own backward recomputable (`recomputable(tensor, recipe, *inputs)`
in its autograd setup): inside a block, that tensor is kept out like a keep_out result (the SSD's boundary states).

The block keeps everything (keep_out only runs the recipe) when disabled, under torch.compile (Inductor decides
what to recompute), and inside other saved-tensor hooks (activation checkpointing, offloading to the CPU):
those must see every saved tensor.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor


class _Recipes:
    """The tensors kept out of the saved tensors in one block, and their recipes."""

    def __init__(self, device_type: str) -> None:
        # autocast as in the forward (the backward runs outside the forward's autocast block)
        self._device_type = device_type
        self._autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        self.kept: List[Tensor] = []  # held until the block ends: no other tensor takes their addresses in it
        self._keys: List[Tuple[int, torch.dtype]] = []              # (storage address, dtype) per kept tensor
        self._layouts: List[Tuple[torch.Size, Tuple[int, ...]]] = []
        self._recipes: List[Tuple[Callable[..., Tensor], tuple]] = []   # (recipe, its inputs off the graph)
        self._tokens: Dict[int, int] = {}                           # kept index -> tokens not yet unpacked
        self._values: Dict[int, Tensor] = {}                        # kept index -> recomputed tensor

    def keep_out(self, recipe: Callable[..., Tensor], *inputs) -> Tensor:
        tensor = _keep(recipe, *inputs)
        self.register(tensor, recipe, inputs)
        return tensor

    def register(self, tensor: Tensor, recipe: Callable[..., Tensor], inputs: tuple) -> bool:
        """Keep `tensor` out of the saved tensors, recomputed as recipe(*inputs), where it owns its storage."""
        if not _owns_storage(tensor):
            return False
        # an input that is itself kept out is held as a token, recomputed in turn when this recipe runs
        held = tuple(self.pack(value) if self._index(value) is not None else _off_the_graph(value)
                     for value in inputs)
        self.kept.append(tensor)
        self._keys.append(_storage_key(tensor))
        self._layouts.append((tensor.shape, tensor.stride()))
        self._recipes.append((recipe, held))
        return True

    def _index(self, value) -> Optional[int]:
        """Which kept tensor's storage `value` views, if any."""
        if not self._keys or not isinstance(value, Tensor) or value.layout != torch.strided or value.is_meta:
            return None
        key = _storage_key(value)
        for index, kept in enumerate(self._keys):
            if key == kept:
                return index
        return None

    def pack(self, tensor: Tensor):
        index = self._index(tensor)
        if index is not None:
            self._tokens[index] = self._tokens.get(index, 0) + 1
            return _Token(index, tensor.shape, tensor.stride(), tensor.storage_offset())
        # detached: a saved output returned as itself would reference its own grad_fn (a cycle that keeps
        # the graph alive until the garbage collector runs, when no backward frees it)
        return tensor.detach()

    def unpack(self, packed):
        if not isinstance(packed, _Token):
            return packed
        value = self._values.get(packed.index)
        if value is None:
            value = self._values[packed.index] = self._recompute(packed.index)
        left = self._tokens.get(packed.index, 0) - 1
        self._tokens[packed.index] = left
        if left <= 0:  # the last token of this backward: a second one (retain_graph) recomputes again
            self._values.pop(packed.index, None)
        return value.as_strided(packed.shape, packed.stride, packed.offset)

    def _recompute(self, index: int) -> Tensor:
        shape, stride = self._layouts[index]
        enabled, dtype = self._autocast
        with torch.enable_grad(), torch.autocast(self._device_type, dtype=dtype, enabled=enabled):
            recipe, held = self._recipes[index]
            value = recipe(*(self.unpack(value) for value in held)).detach()
        if value.shape != shape or value.dtype != self._keys[index][1]:
            raise RuntimeError(f"a recomputed activation is {value.dtype} {tuple(value.shape)}, the forward's "
                               f"was {self._keys[index][1]} {tuple(shape)}")
        if value.stride() != stride or not _owns_storage(value):
            value = torch.empty_strided(shape, stride, dtype=value.dtype, device=value.device).copy_(value)
        return value


class _Token:
    """A saved view of a kept-out tensor: which one, and the view's geometry in its storage."""
    __slots__ = ("index", "shape", "stride", "offset")

    def __init__(self, index: int, shape: torch.Size, stride: Tuple[int, ...], offset: int) -> None:
        self.index, self.shape, self.stride, self.offset = index, shape, stride, offset


def _storage_key(tensor: Tensor) -> Tuple[int, torch.dtype]:
    """(the address where tensor's storage starts, its dtype): equal for every view of one storage in one dtype.
    From the tensor's own address and offset: untyped_storage() makes a Python object per call, and every tensor
    an op saves inside a block passes here."""
    return tensor.data_ptr() - tensor.storage_offset() * tensor.element_size(), tensor.dtype


def _owns_storage(tensor: Tensor) -> bool:
    """Whether `tensor` covers its whole storage densely from offset 0 (a fresh op output, its dimensions in
    any memory order)."""
    if not (tensor.layout == torch.strided and tensor.storage_offset() == 0
            and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()):
        return False
    expected = 1  # dense, no overlap: by increasing stride, each stride is the product of the sizes before it
    for stride, size in sorted((stride, size) for size, stride in zip(tensor.shape, tensor.stride()) if size > 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _keep(recipe: Callable[..., Tensor], *inputs) -> Tensor:
    for cell in getattr(recipe, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # a cell not yet bound
            continue
        if isinstance(value, Tensor) and value.grad_fn is not None:
            raise TypeError("keep_out: the recipe reads a tensor of the graph (one with a grad_fn) from its "
                            "closure; pass it as an input: keep_out(recipe, *inputs)")
    return recipe(*inputs)


def _off_the_graph(value):
    """An input kept for a recipe's recomputation: a tensor detached from the forward's graph (its grad_fn would
    tie the graph into a cycle with the recipe), requiring grad as the forward's did, so that ops dispatch as
    they did for a call autograd recorded."""
    if not isinstance(value, Tensor):
        return value
    return value.detach().requires_grad_(value.requires_grad)


def _hooks_free() -> bool:
    """Whether saved-tensor hooks may be pushed here and no other hooks are active."""
    autograd = torch._C._autograd
    top = getattr(autograd, "_top_saved_tensors_default_hooks", None)
    enabled = getattr(autograd, "_saved_tensors_hooks_is_enabled", None)
    try:
        return enabled() and top(False) is None
    except TypeError:  # a torch without these private functions, or with other signatures: keep everything
        return False


@contextlib.contextmanager
def recomputed_activations(enabled: bool, device: torch.device
                           ) -> Iterator[Callable[..., Tensor]]:
    """A block whose ops save tokens instead of the results of the yielded keep_out(recipe, *inputs), which
    runs recipe(*inputs) and returns its result (see the module docstring). enabled: whether to do so (e.g.
    only when autograd records the block); device: the block's tensors' (whose autocast state the recipes run
    under)."""
    if not enabled or torch.compiler.is_compiling() or not _hooks_free():
        yield _keep
        return
    recipes = _Recipes(device.type)
    _ACTIVE.blocks = getattr(_ACTIVE, "blocks", []) + [recipes]
    try:
        with torch.autograd.graph.saved_tensors_hooks(recipes.pack, recipes.unpack):
            yield recipes.keep_out
    finally:
        _ACTIVE.blocks = _ACTIVE.blocks[:-1]
        recipes.kept.clear()


def recomputable(tensor: Tensor, recipe: Callable[..., Tensor], *inputs) -> bool:
    """For an op's autograd setup, before it saves `tensor` for its backward: inside a recomputed_activations
    block, the op saves recipe(*inputs) instead, recomputed in the backward (the op's own intermediate, such as
    the SSD's boundary states). Returns whether that is so; the caller then holds no other reference to
    `tensor`'s storage past the forward (a view it returns would keep the memory)."""
    if torch.compiler.is_compiling():  # no block is open under torch.compile
        return False
    blocks = getattr(_ACTIVE, "blocks", None)
    return bool(blocks) and blocks[-1].register(tensor, recipe, inputs)


def recomputing() -> bool:
    """Whether a recomputed_activations block is open here (not under torch.compile): an op whose backward
    would read an intermediate may then recompute it there instead of keeping it (see recomputable)."""
    return not torch.compiler.is_compiling() and bool(getattr(_ACTIVE, "blocks", None))


def is_kept_out(tensor: Tensor) -> bool:
    """Whether `tensor`'s storage is kept out of the saved tensors by the innermost open block (its memory is
    freed after the block's forward unless something else holds it)."""
    if torch.compiler.is_compiling():
        return False
    blocks = getattr(_ACTIVE, "blocks", None)
    return bool(blocks) and blocks[-1]._index(tensor) is not None


_ACTIVE = threading.local()  # .blocks: the recomputed_activations blocks open in this thread, innermost last
