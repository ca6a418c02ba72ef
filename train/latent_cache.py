"""An opt-in cache of the frozen teacher's outputs: encode every training image once, reuse it every epoch and run.

The reference recipe re-encodes every image with the teacher (e.g. the FLUX VAE) at every step. The teacher is
frozen and its input is a deterministic function of the image and the preprocessing, so its output *distribution* per
image can be computed once:

* `teacher.encode_distribution(pixel_values) -> (mean, std)`, each `(num_images, N, C)` fp32 (`std` is None for a
  deterministic target: `latent_sample="mode"`, pixel and feature teachers). Only `mean` (and `std` if any) are stored.
* Every step the visual loss draws `mean + std * eps` (`modeling_ross.teacher.sample_targets`), exactly as the teacher's
  `forward` does, so the objective is unchanged: a fresh posterior sample per step, not one frozen sample.

Layout (`datasets` Arrow files, memory-mapped when read)::

    <cache_dir>/<settings_key>/settings.json           what the key was computed from (readable)
    <cache_dir>/<settings_key>/shard-00000/ ...         `Dataset.save_to_disk` folders: key, mean[, std]

Keys:
* **image key**: a content hash (blake2b-128) of the decoded RGB image (mode, size, pixel bytes): the dataset items
  carry decoded images, whatever the source (JSON + files, `datasets` with embedded images). Robust to moved or
  renamed files; costs one hash per image per step in the collator (~3 ms for a 640x480 image) and, for a rebuild,
  decoding every image again (no teacher call for images already cached).
* **settings key**: a hash of everything that changes the target: the image processor (class, size, mean / std,
  resample, ...) and `image_aspect_ratio`; the teacher (class, its plain attributes: grid, fold, image size,
  `latent_sample`, tower mean / std, patch size ...; the inner model's config; a fingerprint of its weights and
  dtype); the storage dtype and the cache format. Change any of them and a new folder is used.

Native VLMs (`RossForPreTraining`, `adapter` given): the target of an image is the teacher's
`encode_grid_distribution` of the image the VLM saw (`adapter.images_seen`) on that image's token grid
(`adapter.image_grids`), exactly what `RossForPreTraining.teacher_targets` computes without a cache. The grid of a
Qwen-VL image depends on its size and the processor's min / max pixels, so the entry key is `image key` +
`-{rows}x{cols}` (+ `-{view}` where the adapter names one, `adapter.image_views`: LLaVA-OneVision pads the images of
a multi-image sample to squares) (`grid_image_key`); the token count varies per entry (`Array2D((None, C))`), and the
settings add the adapter (class, model type, the normalisation it undoes); the processor's settings (min / max
pixels, patch and merge size, ...) are already in them. The collator attaches one `{"mean", "std"}` per image in
placeholder order (`LatentCache.grid_targets_for`).

Use:
* training: `latent_cache_dir: PATH` (+ `build_latent_cache: true` to fill it first, on the main process) in the run
  config of `train/sft.py`; the collator attaches `teacher_targets` and the model skips the teacher.
* by hand: `python -m ross.train.latent_cache --model CONFIG.yaml|CHECKPOINT --data DATA.json --out DIR`.

Distributed training: with the cache the teacher is never called, on any rank (a batch without images uses a zero
dummy target instead of the teacher on a grey image). That is consistent across ranks because every rank reads the same
run config; mixing cached and uncached ranks would hang under DeepSpeed ZeRO-3 (the teacher's partitioned parameters
are gathered by a collective on forward) and is not possible through `sft.py`.

A batch image missing from the cache raises `LatentCacheMiss` naming the sample, the image and the cache folder: there
is no silent fallback to the teacher mid-run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path


if __package__ in (None, ""):  # `python train/latent_cache.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoProcessor

from modeling_ross import RossForConditionalGeneration
from modeling_ross.modeling_ross_pretraining import HEAD_FOLDER, RossForPreTraining
from ross.eval.generation import ModelPathError, model_path_problem
from ross.train.build import build_model_and_processor, load_native_processor, native_vlm_type, prepare_tiny_run
from ross.train.command_line import run_cli
from ross.train.config import load_config, resolve_path
from ross.train.dataset import load_training_dataset


logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SHARD_PREFIX = "shard-"
STORAGE_DTYPES = ("float32", "float16")

__all__ = [
    "LatentCache",
    "LatentCacheMiss",
    "build_latent_cache",
    "cache_settings",
    "grid_image_key",
    "image_key",
    "settings_key",
    "teacher_fingerprint",
]


class LatentCacheMiss(LookupError):
    """An image of a batch is not in the latent cache."""


# ----------------------------------------------------------------------------- keys
def image_key(image) -> str:
    """Content identity of a decoded image: blake2b-128 over its mode, size and pixel bytes (hex)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def grid_image_key(image, grid: tuple[int, int], view: str = "") -> str:
    """Key of a native VLM's entry: the image's content key and its token grid, `"<image_key>-{rows}x{cols}"`, and
    the adapter's view name when it has one (`-square`: LLaVA-OneVision's view of an image in a multi-image sample)."""
    rows, cols = grid
    return f"{image_key(image)}-{rows}x{cols}" + (f"-{view}" if view else "")


def teacher_fingerprint(teacher: torch.nn.Module) -> str:
    """blake2b of every tensor of the teacher's state dict (name, dtype, shape, bytes): other weights, other key."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(teacher.state_dict().items()):
        if tensor.device.type == "meta":
            raise ValueError(f"The teacher's {name} is on the meta device: load its weights before using the cache.")
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def _plain(value):
    """JSON-able scalars / lists / dicts, else None (the value is then left out of the settings)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return items if all(i is not None or v is None for i, v in zip(items, value)) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return None


def _config_dict(module) -> dict | None:
    config = getattr(module, "config", None)
    if config is None:
        return None
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    volatile = ("transformers_version", "diffusers_version")
    return {k: _plain(v) for k, v in values.items() if not k.startswith("_") and k not in volatile}


def cache_settings(teacher: torch.nn.Module, processor, dtype: str = "float32", adapter=None) -> dict:
    """Everything the cached targets depend on (see the module docstring), as a JSON-able dict. `adapter`: a native
    VLM's (`RossForPreTraining.adapter`); its entries are then keyed by image and grid."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    attributes = {
        name: _plain(value)
        for name, value in sorted(vars(teacher).items())
        if not name.startswith("_") and name != "training" and _plain(value) is not None
    }
    inner = next((getattr(teacher, name) for name in ("vae", "model") if hasattr(teacher, name)), None)
    image_processor = processor.image_processor
    processor_values = {k: _plain(v) for k, v in image_processor.to_dict().items() if not k.startswith("_")}
    processor_values.pop("processor_class", None)
    settings = {
        "format_version": FORMAT_VERSION,
        "storage_dtype": dtype,
        "teacher_class": type(teacher).__name__,
        "teacher_attributes": attributes,
        "teacher_config": _config_dict(inner) if inner is not None else None,
        "teacher_weights": teacher_fingerprint(teacher),
        "num_channels": int(teacher.num_channels),
        "image_processor_class": type(image_processor).__name__,
        "image_processor": processor_values,
        "image_aspect_ratio": getattr(processor, "image_aspect_ratio", None),
    }
    if adapter is not None:  # absent for LLaVA-style caches, so their keys (and folders) are unchanged
        settings["native_vlm"] = {
            "adapter": type(adapter).__name__,
            "model_type": adapter.config.model_type,
            "image_mean": adapter.image_mean.flatten().tolist(),
            "image_std": adapter.image_std.flatten().tolist(),
        }
    return settings


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- reading
class LatentCache:
    """Read-only view of one settings folder `<cache_dir>/<settings_key>`: image key -> `(mean, std)` tokens.

    The shards are memory-mapped Arrow files; the object pickles cheaply into dataloader workers. A native VLM's cache
    (`per_image_grid`) is keyed by image and grid and its entries have their own token counts.
    """

    def __init__(self, directory: str | os.PathLike):
        # `datasets` is the optional `train` extra: `image_key` and the settings helpers work without it.
        import datasets

        self.directory = Path(directory)
        settings_file = self.directory / "settings.json"
        if not settings_file.is_file():
            raise FileNotFoundError(f"{self.directory} is not a latent cache folder (no settings.json).")
        self.settings = json.loads(settings_file.read_text())
        self.shards = sorted(p for p in self.directory.iterdir() if p.is_dir() and p.name.startswith(SHARD_PREFIX))
        parts = [datasets.load_from_disk(str(p)) for p in self.shards]
        self._dataset = datasets.concatenate_datasets(parts) if parts else None
        keys = self._dataset.data.column("key").to_pylist() if parts else []
        self._rows = {}
        for row, key in enumerate(keys):
            self._rows.setdefault(key, row)
        self.stochastic = bool(parts) and "std" in self._dataset.column_names
        self.per_image_grid = "native_vlm" in self.settings
        self.build_stats: dict | None = None
        self._arrays = None

    @classmethod
    def open(cls, cache_dir, teacher, processor, dtype: str = "float32", adapter=None) -> "LatentCache":
        """The cache of `cache_dir` for these teacher / preprocessing settings (and native VLM `adapter`); a clear
        error if it was not built."""
        settings = cache_settings(teacher, processor, dtype, adapter)
        directory = Path(cache_dir) / settings_key(settings)
        if not (directory / "settings.json").is_file():
            others = sorted(p.name for p in Path(cache_dir).glob("*/settings.json")) if Path(cache_dir).is_dir() else []
            raise FileNotFoundError(
                f"No latent cache for these teacher / preprocessing settings in {cache_dir} (expected {directory}; "
                f"found {len(others)} cache(s) built with other settings). Build it with `build_latent_cache: true` "
                "or `python -m ross.train.latent_cache`."
            )
        return cls(directory)

    @property
    def keys(self) -> list[str]:
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    @property
    def num_tokens_channels(self) -> tuple[int, int] | None:
        if self._dataset is None:
            return None
        return tuple(self._dataset.features["mean"].shape)

    def _read(self, keys: Sequence[str]) -> dict:
        """The rows of `keys` (which must exist), as numpy: `(len(keys), N, C)` arrays, or per-row `(N_i, C)` arrays
        when the token counts differ (a native VLM's cache)."""
        if self._arrays is None:
            columns = ["mean", "std"] if self.stochastic else ["mean"]
            self._arrays = self._dataset.with_format("numpy", columns=columns)
        return self._arrays[[self._rows[key] for key in keys]]

    def lookup(self, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(mean, std)` fp32 tensors `(len(keys), N, C)` (std None for a deterministic target). Keys must exist."""
        rows = self._read(keys)
        mean = torch.from_numpy(np.ascontiguousarray(rows["mean"], dtype=np.float32))
        std = torch.from_numpy(np.ascontiguousarray(rows["std"], dtype=np.float32)) if self.stochastic else None
        return mean, std

    def lookup_each(self, keys: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        """One `{"mean", "std"}` (fp32 `(N_i, C)` each; no `std` for a deterministic target) per key, which must exist;
        the entries may have different token counts."""
        if not keys:
            return []
        rows = self._read(keys)
        columns = ["mean", "std"] if self.stochastic else ["mean"]
        return [
            {name: torch.from_numpy(np.ascontiguousarray(rows[name][i], dtype=np.float32)) for name in columns}
            for i in range(len(keys))
        ]

    def _key_or_miss(self, key: str, feature: dict, index: int, image) -> str:
        if key not in self._rows:
            filename = getattr(image, "filename", "") or "decoded image"
            raise LatentCacheMiss(
                f"image {index} ({filename}) of sample id={feature.get('id')!r} ({feature.get('source')}) is "
                f"not in the latent cache {self.directory} (key {key}, {len(self)} images cached). Rebuild "
                "the cache for this data (`build_latent_cache: true` or `python -m ross.train.latent_cache`)."
            )
        return key

    def empty_targets(self) -> dict[str, torch.Tensor] | list:
        """`teacher_targets` of a batch without images: empty `(0, N, C)` tensors, or for a native VLM's cache an
        empty list (one entry per image). Either way the model skips the teacher."""
        if self.per_image_grid:
            return []
        empty = torch.zeros(0, *(self.num_tokens_channels or (0, 0)))
        return {"mean": empty, "std": empty.clone()} if self.stochastic else {"mean": empty}

    def targets_for(self, features: Iterable[dict]) -> dict[str, torch.Tensor]:
        """`teacher_targets` for a batch: the cached `mean` (and `std`) of every image of `features` in row-major order
        (sample 0's images, then sample 1's, ...: the order of the collator's `pixel_values`). A batch without images
        gets empty `(0, N, C)` tensors, so the model still knows to skip the teacher (see the module docstring)."""
        if self.per_image_grid:
            raise ValueError(f"{self.directory} is keyed by image and grid (native VLM): use grid_targets_for.")
        keys = [
            self._key_or_miss(image_key(image), feature, index, image)
            for feature in features
            for index, image in enumerate(feature.get("images") or [])
        ]
        if not keys:
            return self.empty_targets()
        mean, std = self.lookup(keys)
        return {"mean": mean} if std is None else {"mean": mean, "std": std}

    def grid_targets_for(
        self, features: Iterable[dict], grids: Sequence[tuple[int, int]], views: Sequence[str] | None = None
    ) -> list[dict]:
        """A native VLM's `teacher_targets` (`RossForPreTraining.forward`): one `{"mean", "std"}` `(rows * cols, C)`
        per image of `features` (sample 0's images, then sample 1's, ...: placeholder order), looked up by image,
        `grids[i]`, the grid the VLM's processor gave image i in this batch, and `views[i]` (`adapter.image_views`).
        An empty list for a batch without images (the model then skips the teacher)."""
        images = [(f, index, image) for f in features for index, image in enumerate(f.get("images") or [])]
        if len(images) != len(grids):
            raise ValueError(
                f"The batch has {len(images)} images but the processor's inputs give {len(grids)} grids: the latent "
                "cache needs one grid per image (e.g. no pan-and-scan crops)."
            )
        views = [""] * len(grids) if views is None else views
        keys = [
            self._key_or_miss(grid_image_key(image, grid, view), feature, index, image)
            for (feature, index, image), grid, view in zip(images, grids, views)
        ]
        return self.lookup_each(keys)


# ----------------------------------------------------------------------------- building
class _Prepare:
    """Dataloader collate: `(key, what to encode, or None if already cached)` for every image of the items.

    What to encode: the collator's `pixel_values` `(1, 3, H, W)`; with a native VLM's `adapter`, the image the VLM
    sees and its grid, `((3, H, W) in [0, 1], (rows, cols))`. Those come from the VLM's image processor called on the
    sample's images as the collator calls it (`images=[sample images]`), since a view can depend on the sample
    (LLaVA-OneVision's multi-image samples); the grid and view are part of the key, so they are computed also for a
    cached image."""

    def __init__(self, processor, known: frozenset, adapter=None):
        self.processor, self.known, self.adapter = processor, known, adapter

    def __call__(self, items):
        out = []
        for item in items:
            if item is None:  # a sample found bad at fetch (skip mode): nothing to encode
                continue
            images = item.get("images") or []
            if self.adapter is not None:
                out.extend(self._prepare_sample(images) if images else [])
            else:
                out.extend(self._prepare_fixed(image) for image in images)
        return out

    def _prepare_fixed(self, image):
        key = image_key(image)
        if key in self.known:
            return key, None
        return key, self.processor(images=[image], return_tensors="pt")["pixel_values"]

    def _prepare_sample(self, images):
        inputs = self.processor.image_processor(images=[images], return_tensors="pt")
        grids, views = self.adapter.image_grids(inputs), self.adapter.image_views(inputs)
        if len(grids) != len(images):
            raise ValueError(
                f"{getattr(images[0], 'filename', '') or 'a sample'}: the VLM's image processor made {len(grids)} "
                f"images of {len(images)} (e.g. pan-and-scan crops); the latent cache needs one grid per image."
            )
        keys = [grid_image_key(image, grid, view) for image, grid, view in zip(images, grids, views)]
        if all(key in self.known for key in keys):
            return [(key, None) for key in keys]
        seen = self.adapter.images_seen(inputs)
        return [(key, None if key in self.known else (s, grid)) for key, s, grid in zip(keys, seen, grids)]


def _write_shard(directory: Path, keys, means, stds, dtype: str, per_image_grid: bool = False) -> None:
    """`means` / `stds`: one `(N, C)` array per key (`stds` empty for a deterministic target). A native VLM's cache
    (`per_image_grid`) stores `(None, C)` arrays: each entry has its own token count."""
    # `datasets` is the optional `train` extra (see `LatentCache.__init__`).
    import datasets

    if per_image_grid:
        shape = (None, means[0].shape[-1])
        mean, std = [m.astype(dtype) for m in means], [s.astype(dtype) for s in stds]
    else:
        mean, std = np.stack(means).astype(dtype), np.stack(stds).astype(dtype) if stds else None
        shape = mean.shape[1:]
    features = {"key": datasets.Value("string"), "mean": datasets.Array2D(shape, dtype)}
    columns = {"key": keys, "mean": mean}
    if stds:
        features["std"] = datasets.Array2D(shape, dtype)
        columns["std"] = std
    shard = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    index = len([p for p in directory.iterdir() if p.name.startswith(SHARD_PREFIX)])
    temporary = directory / f".tmp-{uuid.uuid4().hex}"
    shard.save_to_disk(str(temporary))
    temporary.rename(directory / f"{SHARD_PREFIX}{index:05d}-{uuid.uuid4().hex[:8]}")  # atomic: no half shard


def _settings_folder(cache_dir, settings: dict) -> Path:
    """`<cache_dir>/<settings_key>`, created with its `settings.json` (written atomically) if new."""
    directory = Path(cache_dir) / settings_key(settings)
    directory.mkdir(parents=True, exist_ok=True)
    settings_file = directory / "settings.json"
    if not settings_file.is_file():
        temporary = directory / f".settings-{uuid.uuid4().hex}.json"
        temporary.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        temporary.rename(settings_file)
    return directory


class _ShardEncoder:
    """Encodes pending images with the teacher `batch_size` at a time and writes a shard every `shard_size` images
    (so memory stays bounded); `finish` encodes and writes what is left. `per_image_grid`: a native VLM's images,
    each encoded on its own grid (`_encode_on_grids`)."""

    def __init__(
        self, teacher, device, directory: Path, batch_size: int, shard_size: int, dtype: str, per_image_grid: bool
    ):
        self.teacher, self.device, self.directory = teacher, device, directory
        self.batch_size, self.shard_size, self.dtype = batch_size, shard_size, dtype
        self.per_image_grid = per_image_grid
        self.pending_keys, self.pending_pixels = [], []
        self.shard_keys, self.means, self.stds = [], [], []
        self.encoded = 0

    def add(self, key: str, pixel_values) -> None:
        """`pixel_values`: `(1, 3, H, W)`, the collator's preprocessing of one image; for a native VLM the pair
        `(image seen (3, H, W) in [0, 1], grid)`."""
        self.pending_keys.append(key)
        self.pending_pixels.append(pixel_values)
        if len(self.pending_keys) >= self.batch_size:
            self._encode_pending()
            if len(self.shard_keys) >= self.shard_size:
                self._write()

    def finish(self) -> None:
        self._encode_pending()
        self._write()

    def _encode_pending(self) -> None:
        if not self.pending_keys:
            return
        if self.per_image_grid:
            means, stds = _encode_on_grids(self.teacher, self.pending_pixels, self.device)
        else:
            mean, std = self.teacher.encode_distribution(torch.cat(self.pending_pixels).to(self.device))
            means, stds = list(mean.float().cpu().numpy()), None if std is None else list(std.float().cpu().numpy())
        self.shard_keys.extend(self.pending_keys)
        self.means.extend(means)
        if stds is not None:
            self.stds.extend(stds)
        self.encoded += len(self.pending_keys)
        self.pending_keys, self.pending_pixels = [], []

    def _write(self) -> None:
        if self.shard_keys:
            _write_shard(self.directory, self.shard_keys, self.means, self.stds, self.dtype, self.per_image_grid)
            self.shard_keys, self.means, self.stds = [], [], []


def _encode_on_grids(teacher, pending, device) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """A native VLM's targets: `teacher.encode_grid_distribution` of each `(image seen, grid)` of `pending` (one call
    per grid, its images stacked: equal grids are equal sizes), as `RossForPreTraining.teacher_targets` computes them.
    Returns per image `(rows * cols, C)` fp32 means and stds (None for a deterministic target), in `pending`'s order."""
    by_grid: dict[tuple[int, int], list[int]] = {}
    for index, (_, grid) in enumerate(pending):
        by_grid.setdefault(tuple(grid), []).append(index)
    means, stds = [None] * len(pending), [None] * len(pending)
    for grid, indices in by_grid.items():
        images = torch.stack([pending[i][0] for i in indices]).to(device)
        mean, std = teacher.encode_grid_distribution(images, grid)
        for row, i in enumerate(indices):
            means[i] = mean[row].float().cpu().numpy()
            stds[i] = None if std is None else std[row].float().cpu().numpy()
    return means, None if stds[0] is None else stds


def _encode_missing(loader, known: frozenset, encoder: _ShardEncoder) -> dict:
    """Feed every image not cached yet (each unique key once) to `encoder`; returns the counts of `build_stats`."""
    stats = {"images": 0, "unique": 0, "encoded": 0, "reused": 0}
    seen = set()
    for prepared in tqdm(loader, desc="latent cache", unit="batch", total=len(loader)):
        for key, pixel_values in prepared:
            stats["images"] += 1
            if key in seen:
                continue
            seen.add(key)
            if key in known:
                stats["reused"] += 1
            else:
                encoder.add(key, pixel_values)
    encoder.finish()
    stats["unique"], stats["encoded"] = len(seen), encoder.encoded
    return stats


def build_latent_cache(
    teacher: torch.nn.Module,
    processor,
    dataset,
    cache_dir: str | os.PathLike,
    batch_size: int = 16,
    num_workers: int = 0,
    dtype: str = "float32",
    shard_size: int = 1024,
    device: str | torch.device | None = None,
    adapter=None,
) -> LatentCache:
    """
    Encode every image of `dataset` (items with `"images"`: PIL images, as `ross.train.dataset.RossDataset` yields) that is
    not cached yet, and return the cache. Images already cached (same content, same settings) are not re-encoded;
    a fully cached dataset calls the teacher zero times. Preprocessing is the collator's (`processor(images=...)`).
    With a native VLM's `adapter`, each image is keyed by content and grid and encoded on its grid (module docstring).

    Args:
        teacher: the model's frozen teacher (`model.teacher`), weights loaded.
        processor: the run's `RossProcessor` (its `image_aspect_ratio` matters).
        cache_dir: parent folder; the cache lives in `<cache_dir>/<settings_key>`.
        batch_size: images per teacher call (also items per dataloader batch).
        num_workers: dataloader workers decoding / hashing / preprocessing images.
        dtype: storage dtype, `"float32"` (exact) or `"float16"` (half the disk, rounded targets).
        shard_size: images per Arrow shard (bounds the memory held before writing).
        device: where the teacher runs (default: where its parameters are); moved back afterwards.
        adapter: a native VLM's (`RossForPreTraining.adapter`), whose processor `processor` is.
    Returns:
        The `LatentCache`, with `build_stats` = `{"images", "unique", "encoded", "reused", "seconds"}`.
    """
    start = time.perf_counter()
    directory = _settings_folder(cache_dir, cache_settings(teacher, processor, dtype, adapter))
    known = frozenset(LatentCache(directory).keys)
    parameter = next(teacher.parameters(), None)
    home = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device) if device is not None else home
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_Prepare(processor, known, adapter)
    )
    teacher.to(device)
    try:
        encoder = _ShardEncoder(teacher, device, directory, batch_size, shard_size, dtype, adapter is not None)
        stats = _encode_missing(loader, known, encoder)
    finally:
        teacher.to(home)
    stats["seconds"] = round(time.perf_counter() - start, 3)
    cache = LatentCache(directory)
    cache.build_stats = stats
    logger.info("Latent cache %s: %s", directory, stats)
    return cache


# ----------------------------------------------------------------------------- CLI
def _load_model_and_processor(model: str, output_dir: str | None):
    """A run config (YAML, as `train/sft.py` takes) or a ROSS checkpoint folder (LLaVA-style, or a native VLM's with
    `ross_head/`) -> (model, processor, run_config)."""
    if model.endswith((".yaml", ".yml")):
        overrides = {"output_dir": output_dir} if output_dir else {}
        run_config, _ = load_config(model, overrides)
        if run_config.prepare_tiny is not None:
            prepare_tiny_run(run_config)
        built, processor = build_model_and_processor(run_config)
        return built, processor, run_config
    problem = model_path_problem(model)
    if problem is not None:
        raise ModelPathError(f"--model: {problem}")
    if native_vlm_type(model):
        if not (Path(model) / HEAD_FOLDER / "config.json").is_file():  # the teacher to encode with is the head's
            raise ModelPathError(
                f"--model: {model} is a plain {native_vlm_type(model)} folder without {HEAD_FOLDER}/config.json (the "
                "ROSS head, whose teacher the cache is built with): pass a run config or a ROSS checkpoint"
            )
        return RossForPreTraining.from_pretrained(model), load_native_processor(model), None
    built = RossForConditionalGeneration.from_pretrained(model, load_objective=True)
    return built, AutoProcessor.from_pretrained(model, trust_remote_code=True), None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a run config YAML (as train/sft.py) or a ROSS checkpoint")
    parser.add_argument("--data", nargs="*", help="data files (default: the run config's data_path)")
    parser.add_argument("--image_folder", default=None, help="default: the run config's image_folder")
    parser.add_argument("--out", default=None, help="cache folder (default: the run config's latent_cache_dir)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=STORAGE_DTYPES)
    parser.add_argument("--shard_size", type=int, default=1024)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--output_dir", default=None, help="only to satisfy a run config without output_dir")
    args = parser.parse_args(argv)

    model, processor, run_config = _load_model_and_processor(args.model, args.output_dir)
    if model.teacher is None:
        raise ValueError("This model has no teacher (objective 'none'): nothing to cache.")
    data = args.data or (run_config.data_path if run_config is not None else None)
    out = args.out or (getattr(run_config, "latent_cache_dir", None) if run_config is not None else None)
    if not data or not out:
        parser.error("--data and --out are needed (or a run config with data_path and latent_cache_dir)")
    folder = args.image_folder or (run_config.image_folder if run_config is not None else None)
    dataset = load_training_dataset(
        [resolve_path(path) for path in (data if isinstance(data, list) else [data])],
        image_folder=resolve_path(folder),
        on_bad_sample=run_config.on_bad_sample if run_config is not None else "error",
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cache = build_latent_cache(
        model.teacher, processor, dataset, out, batch_size=args.batch_size, num_workers=args.num_workers,
        dtype=args.dtype, shard_size=args.shard_size, device=device, adapter=getattr(model, "adapter", None),
    )
    report = {"cache": str(cache.directory), "cached_images": len(cache), **cache.build_stats}
    print("[ross] latent cache: " + json.dumps(report), flush=True)
    return report


def cli(argv: list[str] | None = None) -> int:
    """`main` for the command line: bad input (model path, data file, sample) is one `error: ...` line, status 2."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
