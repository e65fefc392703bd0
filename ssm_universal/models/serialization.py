"""Saving and loading state dicts without pickle: the safetensors format, and torch.save files read with
weights_only=True.

The safetensors format (https://github.com/huggingface/safetensors) is written and read here directly, so
there is no extra dependency: 8 bytes little-endian header length N, N bytes of JSON
{"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...},
then the raw little-endian tensor bytes. Files interoperate with the safetensors package (tested where it
is installed). Tensors that share memory (tied embeddings) are written once; the others are recorded as
aliases in the metadata and restored on load, as safetensors' save_model/load_model do.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, Optional, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
_NAMES = {name: dtype for dtype, name in _DTYPES.items()}
_ALIASES_KEY = "ssm_universal.aliases"
_MAX_HEADER = 100 * 2 ** 20


def save_safetensors(tensors: Dict[str, torch.Tensor], path: PathLike,
                     metadata: Optional[Dict[str, str]] = None) -> None:
    """Write a dict of tensors (any device, strides) to a .safetensors file."""
    aliases, storage_owner, entries, blobs, offset = {}, {}, {}, [], 0
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"save_safetensors: {name} is a {type(tensor).__name__}, not a tensor")
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"save_safetensors: {name} has dtype {tensor.dtype}, which safetensors does not "
                            f"store (complex tensors: save torch.view_as_real(t))")
        key = _same_tensor_key(tensor)
        if key in storage_owner:
            aliases[name] = storage_owner[key]
            continue
        storage_owner[key] = name
        data = tensor.detach().to("cpu").contiguous()
        raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
        entries[name] = {"dtype": _DTYPES[data.dtype], "shape": list(data.shape),
                         "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    if aliases:
        meta[_ALIASES_KEY] = json.dumps(aliases)
    header = {"__metadata__": meta, **entries} if meta else entries
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for raw in blobs:
            f.write(raw)


def _same_tensor_key(t: torch.Tensor):
    """Two entries are the same tensor when they view the same memory in the same way."""
    return (t.device, t.untyped_storage().data_ptr() if t.numel() else id(t), t.storage_offset(),
            tuple(t.shape), t.stride(), t.dtype)


def read_safetensors_metadata(path: PathLike) -> Dict[str, str]:
    return _read_header(path)[0].get("__metadata__", {})


def load_safetensors(path: PathLike, device: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """Read a .safetensors file into a dict of tensors on `device` (no code runs: data only)."""
    header, data_start = _read_header(path)
    meta = header.pop("__metadata__", {})
    with open(path, "rb") as f:
        f.seek(data_start)
        data = f.read()
    tensors = {}
    for name, entry in header.items():
        if entry.get("dtype") not in _NAMES:
            raise ValueError(f"load_safetensors: {path}: tensor {name} has unsupported dtype {entry.get('dtype')}")
        begin, end = entry["data_offsets"]
        dtype, shape = _NAMES[entry["dtype"]], entry["shape"]
        count = 1
        for size in shape:
            count *= size
        if not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
            raise ValueError(f"load_safetensors: {path}: tensor {name} has offsets {entry['data_offsets']} that "
                             f"do not match its shape {shape} and dtype, or lie outside the file")
        raw = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.uint8) if end > begin \
            else torch.empty(0, dtype=torch.uint8)
        tensors[name] = raw.view(dtype).reshape(shape).to(device)
    for name, target in json.loads(meta.get(_ALIASES_KEY, "{}")).items():
        tensors[name] = tensors[target]
    return tensors


def _read_header(path: PathLike):
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (size,) = struct.unpack("<Q", prefix)
        if size > _MAX_HEADER:
            raise ValueError(f"{path}: safetensors header of {size} bytes is implausibly large")
        header = json.loads(f.read(size).decode())
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    return header, 8 + size


def save_state_dict(module_or_state: Union[torch.nn.Module, Dict[str, torch.Tensor]], path: PathLike,
                    metadata: Optional[Dict[str, str]] = None) -> None:
    """Save a state dict: safetensors for a path ending in .safetensors, else torch.save (tensors only).

    For a module with a `config` dict (create_model, SSMLanguageModel), safetensors files also carry it as
    JSON metadata "config" (read_safetensors_metadata); torch.save files hold the plain state dict."""
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    config = getattr(module_or_state, "config", None)
    meta = dict(metadata or {})
    if config:
        meta.setdefault("config", json.dumps(config))
    if str(path).endswith(".safetensors"):
        save_safetensors(state, path, meta)
    else:
        torch.save(dict(state), path)


def load_state_dict(path: PathLike, device: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """Load a state dict saved by save_state_dict (or any safetensors / torch.save state-dict file) without
    unpickling code: safetensors are parsed as data, torch files are read with weights_only=True."""
    if str(path).endswith(".safetensors"):
        return load_safetensors(path, device)
    return torch.load(path, map_location=device, weights_only=True)
