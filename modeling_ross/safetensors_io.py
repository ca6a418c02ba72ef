"""Streaming safetensors I/O, shared by the converter (`convert_official`), the LLaVA export (`export_llava`) and Hub
publishing (`ross.model_cards.publish`).

- `weight_files(folder)`: a checkpoint folder's safetensors files (index order, or the single file).
- `read_headers(files)`: every tensor's file, shape and dtype, from the headers only (nothing is loaded).
- `write_shards(folder, tensors, max_shard_size)`: plan output shards from sizes alone with huggingface_hub's
  `split_state_dict_into_shards_factory` (the planner transformers uses), then write them one at a time with
  `safetensors.torch.save_file`, reading each source tensor only when its shard is written. Peak memory is one output
  shard, whatever the model size; the names and the index are those `save_pretrained` writes.

Not a remote-code file: nothing in `modeling_ross.py` imports it, so `save_pretrained` does not copy it.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import split_state_dict_into_shards_factory
from huggingface_hub.serialization._base import parse_size_to_int
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm


WEIGHTS_PATTERN = "model{suffix}.safetensors"
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "U16": torch.uint16, "U32": torch.uint32,
    "U64": torch.uint64, "BOOL": torch.bool,
}  # fmt: skip


class SafetensorsError(ValueError):
    """A weights folder or file that cannot be read as expected; the message names the file."""


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor is stored, read from a safetensors header."""

    file: str
    key: str
    shape: tuple
    dtype: torch.dtype

    def load(self) -> torch.Tensor:
        with safe_open(self.file, "pt") as handle:
            return handle.get_tensor(self.key)


@dataclass(frozen=True)
class OutputTensor:
    """One tensor to write: `target` name, read from `source`, turned by `convert` into `shape` / `dtype`."""

    target: str
    source: TensorInfo
    shape: tuple
    dtype: torch.dtype
    convert: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def parse_size(size: int | str) -> int:
    """`"5GB"` -> 5_000_000_000 (huggingface_hub's rule: KB/MB/GB are powers of 10, KiB/MiB/GiB of 2)."""
    return size if isinstance(size, int) else parse_size_to_int(size)


def weight_files(folder: Path, weights_name: str = "model.safetensors", any_name: bool = False) -> list[Path]:
    """The safetensors files of `folder`: those its index lists (each must exist), else `weights_name`, else (with
    `any_name`) every `*.safetensors` file. Raises `SafetensorsError` saying what was looked for (and naming pickle
    weights, which are never read)."""
    folder = Path(folder)
    index = folder / weights_name.replace(".safetensors", ".safetensors.index.json")
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as error:
            raise SafetensorsError(f"{index}: unreadable index ({error})") from error
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise SafetensorsError(f"{index} lists shard(s) that are not in the folder: {missing}")
        return files
    if (folder / weights_name).is_file():
        return [folder / weights_name]
    found = sorted(folder.glob("*.safetensors")) if any_name else []
    if found:
        return found
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    raise SafetensorsError(
        f"{folder}: no safetensors weights ({weights_name} or {index.name})"
        + (f"; found pickle weights {pickles}: re-save them with save_pretrained (safetensors)" if pickles else "")
    )


def read_headers(files: Iterable[Path]) -> OrderedDict[str, TensorInfo]:
    """key -> `TensorInfo`, in file then header order, reading only the headers. A key in two files is an error."""
    headers: OrderedDict[str, TensorInfo] = OrderedDict()
    duplicates = []
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                if key in headers:
                    duplicates.append(key)
                tensor_slice = handle.get_slice(key)
                dtype = SAFETENSORS_DTYPES.get(tensor_slice.get_dtype())
                if dtype is None:
                    raise SafetensorsError(f"{file}: tensor {key} has unsupported dtype {tensor_slice.get_dtype()}")
                headers[key] = TensorInfo(str(file), key, tuple(tensor_slice.get_shape()), dtype)
    if duplicates:
        raise SafetensorsError(f"Keys present in several shards: {duplicates}")
    return headers


def write_shards(
    folder: Path, tensors: list[OutputTensor], max_shard_size: int | str = "5GB", progress: str | None = None
) -> list[str]:
    """Write `tensors` (in their order) as `model.safetensors` or `model-0000i-of-0000n.safetensors` shards of at most
    `max_shard_size` bytes (a larger single tensor gets a shard of its own) plus `model.safetensors.index.json`.
    Returns the shard file names (the index is written when there are several). `progress`: a label for a tqdm bar
    over the tensors, on stderr (None: no bar)."""
    folder = Path(folder)
    bar = tqdm(total=len(tensors), desc=progress, unit="tensor", disable=progress is None)
    by_target = {tensor.target: tensor for tensor in tensors}
    if len(by_target) != len(tensors):
        raise SafetensorsError("Two output tensors have the same name.")
    plan = split_state_dict_into_shards_factory(
        by_target, get_storage_size=lambda tensor: tensor.nbytes, filename_pattern=WEIGHTS_PATTERN,
        max_shard_size=parse_size(max_shard_size),
    )  # fmt: skip
    for filename, targets in plan.filename_to_tensors.items():
        shard = {}
        by_file: dict[str, list[OutputTensor]] = {}
        for target in targets:
            by_file.setdefault(by_target[target].source.file, []).append(by_target[target])
        for file, group in by_file.items():
            with safe_open(file, "pt") as handle:
                for tensor in group:
                    value = handle.get_tensor(tensor.source.key)
                    value = tensor.convert(value) if tensor.convert is not None else value
                    if tuple(value.shape) != tuple(tensor.shape) or value.dtype != tensor.dtype:
                        raise SafetensorsError(
                            f"{tensor.target}: planned {tensor.shape} {tensor.dtype}, got {tuple(value.shape)} "
                            f"{value.dtype}"
                        )
                    shard[tensor.target] = value.contiguous()
                    bar.update(1)
        save_file(dict(sorted(shard.items())), str(folder / filename), metadata={"format": "pt"})
        del shard
    bar.close()
    if plan.is_sharded:
        index = {"metadata": plan.metadata, "weight_map": dict(sorted(plan.tensor_to_filename.items()))}
        (folder / WEIGHTS_PATTERN.format(suffix="").replace(".safetensors", ".safetensors.index.json")).write_text(
            json.dumps(index, indent=2) + "\n"
        )
    return list(plan.filename_to_tensors)


__all__ = [
    "OutputTensor",
    "SafetensorsError",
    "TensorInfo",
    "parse_size",
    "read_headers",
    "weight_files",
    "write_shards",
]
