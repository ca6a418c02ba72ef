"""The length pre-pass: every sample's token count, measured once before training with the collator's own encoding.

:func:`check_lengths` renders each sample of a `RossDataset` with the chat template and counts its tokens exactly as
`RossDataCollator` will (`collator.sample_length`: the same template, tokenizer and checks, one token per image
placeholder plus the known `image_seq_length - 1`, no pixels processed; a native VLM's `NativeVlmDataCollator` counts
each image from its size, read here from the file's header, see `train/native_collator.py`), so a sample too long for
`max_length`, or one the template cannot supervise, is found before step 1:

* ``on_bad_sample="error"``: one `ValueError` listing every such sample (id, file, length vs limit);
* ``"skip"``: they are dropped from the dataset up front (`RossDataset.drop`, counted as ``too_long`` / ``template``),
  then `max_bad_fraction` is checked again.

The lengths are cached in `<cache_dir>/lengths-<key>.json`, keyed by a hash of the data files (their contents), the
tokenizer (its serialised vocabulary and merges), the chat template, `max_length`, the collator's format and what
decides the image expansion (`collator.length_settings()`), so a second run with the same data and settings measures
nothing. The kept samples then carry exact lengths for the length-grouped samplers.

Scale: the samples still to measure are split over the ranks of the process group (every rank calls
`check_lengths`; rank r measures every world_size-th one) and, in each rank, over `num_proc` forked processes; progress
is logged every `PROGRESS_EVERY_S` seconds. The ranks then exchange their results over a gloo group of its own whose
timeout is `gather_timeout` (4 h by default), not the process group's (`ddp_timeout`, 30 min by default), so a slow
first start never kills the ranks waiting at the barrier; the reason is logged when the group is made. Every rank
ends with all the lengths; the local main process of each node writes the cache.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ross.train.records import source_identity
from ross.train.sources import BadSampleError


logger = logging.getLogger(__name__)

CACHE_VERSION = 2
# Seconds between progress lines of the pre-pass.
PROGRESS_EVERY_S = 10.0
# Samples per task handed to a measuring process.
CHUNK = 256
# Timeout of the gloo group that gathers the ranks' lengths (seconds).
GATHER_TIMEOUT_S = 4 * 3600
# Too-long samples listed one by one in the error before only their count.
MAX_LISTED = 20

__all__ = ["check_lengths", "default_cache_dir", "lengths_key", "measure"]


def _source_identity(source) -> str:
    return source_identity(source)


def _tokenizer_identity(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def lengths_key(dataset, collator) -> str:
    """The cache key: data files, tokenizer, chat template, max length, format, image expansion, image placement."""
    processor = collator.processor
    blob = json.dumps(
        {
            "version": CACHE_VERSION,
            "sources": [_source_identity(source) for source in dataset.sources],
            "image_placement": [getattr(source, "image_placement", None) for source in dataset.sources],
            "tokenizer": _tokenizer_identity(processor.tokenizer),
            "template": processor.chat_template,
            "max_length": collator.max_length,
            "format": collator.format,
            "masking": collator.masking,
            "plain_end": collator.plain_end,
            **collator.length_settings(),  # the image expansion: image_seq_length, or a native VLM's processor settings
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir(dataset) -> Path:
    """`.ross_cache/` next to the first data file when that folder is writable, else `~/.cache/ross`."""
    from ross.train.dataset import default_cache_dir as data_cache_dir

    return data_cache_dir(dataset)


# ---- the cache: per source, one length per record (-1: not measured), and the bad ones -----------------------------
def _read_cache(path: Path, dataset) -> tuple[list[np.ndarray], dict]:
    """Per source an int64 array of lengths by record (-1: unknown), and `{"s:l": [reason, detail]}`."""
    lengths = [np.full(len(source), -1, dtype=np.int64) for source in dataset.sources]
    try:
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION:
            return lengths, {}
        for k, values in enumerate(data["lengths"]):
            if len(values) == len(lengths[k]):
                lengths[k] = np.asarray(values, dtype=np.int64)
        return lengths, dict(data["bad"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return [np.full(len(source), -1, dtype=np.int64) for source in dataset.sources], {}


def _write_cache(path: Path, lengths: list[np.ndarray], bad: dict) -> None:
    """Written to a temporary file and renamed: a killed run never leaves a half-written cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            json.dump({"version": CACHE_VERSION, "lengths": [a.tolist() for a in lengths], "bad": bad}, f)
        os.replace(f.name, path)
    except OSError as error:
        logger.warning("Could not write the length cache %s (%s); the next run measures again.", path, error)


# ---- measuring --------------------------------------------------------------------------------------------------
_WORK = None  # (dataset, collator) of the forked measuring processes


def _measure_chunk(indices) -> list:
    dataset, collator = _WORK
    out = []
    for index in indices:
        try:
            # A native VLM's image token count depends on each image's size: read from the files' headers, here.
            images = dataset.image_sizes(index) if collator.counts_image_sizes else int(dataset._num_images[index])
            out.append((int(index), collator.sample_length(dataset.messages(index), images)))
        except BadSampleError as error:
            out.append((int(index), [error.reason, error.detail]))
    return out


def measure(dataset, collator, indices, num_proc: int = 1, label: str = "") -> dict:
    """`{index: length or [reason, detail]}` of the samples `indices`, measured by `collator.sample_length` in
    `num_proc` forked processes (1: here), with a progress line every `PROGRESS_EVERY_S` seconds."""
    global _WORK
    indices = [int(i) for i in indices]
    chunks = [indices[i : i + CHUNK] for i in range(0, len(indices), CHUNK)]
    results, start, last = {}, time.perf_counter(), time.perf_counter()
    _WORK = (dataset, collator)
    try:
        if num_proc > 1 and len(chunks) > 1 and "fork" in multiprocessing.get_all_start_methods():
            pool = multiprocessing.get_context("fork").Pool(num_proc)
            parts = pool.imap_unordered(_measure_chunk, chunks)
        else:
            pool, parts = None, map(_measure_chunk, chunks)
        try:
            for part in parts:
                results.update(part)
                now = time.perf_counter()
                if now - last >= PROGRESS_EVERY_S:
                    rate = len(results) / (now - start)
                    logger.warning(
                        "Length pre-pass%s: %d/%d samples measured (%.0f/s, about %.0f s left)",
                        label, len(results), len(indices), rate, (len(indices) - len(results)) / max(rate, 1e-9),
                    )  # fmt: skip
                    last = now
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    finally:
        _WORK = None
    return results


def _default_num_proc() -> int:
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(16, cpus // max(1, local_world)))


def _process_group():
    """(rank, world size) of an initialised torch process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(results: dict, world: int, timeout_s: float) -> dict:
    """Every rank's results, merged, over a gloo group with its own timeout (see the module docstring)."""
    import torch.distributed as dist

    logger.warning(
        "Length pre-pass: gathering from %d ranks over a gloo group with a %.0f s timeout, not the process group's "
        "(ddp_timeout): a rank still measuring its share must not time out the others", world, timeout_s,
    )  # fmt: skip
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    try:
        parts = [None] * world
        dist.all_gather_object(parts, results, group=group)
    finally:
        dist.destroy_process_group(group)
    merged = {}
    for part in parts:
        merged.update(part)
    return merged


def check_lengths(
    dataset, collator, cache_dir=None, num_proc: int | None = None, gather_timeout: float | None = None
) -> list[int | None]:
    """
    Measure (or read from the cache) every sample's token count and apply the collator's `max_length` and
    `on_bad_sample` before training (see the module docstring). Returns the measured length of every sample the
    dataset held on entry, in its order (None where the template cannot render it).

    On several processes every rank calls it: each measures its share, then all exchange their results.
    `num_proc`: measuring processes per rank (default: the CPUs available / local ranks, at most 16).
    `gather_timeout`: seconds the ranks may wait for each other (default `GATHER_TIMEOUT_S`).
    """
    start = time.perf_counter()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(dataset)
    path = cache_dir / f"lengths-{lengths_key(dataset, collator)}.json"
    cached, bad_cached = _read_cache(path, dataset)
    # Samples are in source order, rows ascending: one sorted key per sample finds a (source, row) by bisection.
    keys = (dataset._source_of.astype(np.int64) << 40) | dataset._local
    known = np.full(len(dataset), -1, dtype=np.int64)
    for k, lengths in enumerate(cached):
        where = dataset._source_of == k
        known[where] = lengths[dataset._local[where]]
    failures = {}  # index -> [reason, detail]
    for entry, failure in bad_cached.items():
        s, row = (int(x) for x in entry.split(":"))
        index = int(np.searchsorted(keys, (s << 40) | row))
        if index < len(keys) and keys[index] == ((s << 40) | row):
            failures[index] = failure
    known[list(failures)] = -2
    todo = np.flatnonzero(known == -1)
    rank, world = _process_group()
    mine = todo[rank::world]
    num_proc = _default_num_proc() if num_proc is None else max(1, int(num_proc))
    if len(todo):
        logger.warning(
            "Length pre-pass: %d of %d samples to measure (%d on this rank, %d process(es)); cache %s",
            len(todo), len(dataset), len(mine), num_proc, path,
        )  # fmt: skip
    results = measure(dataset, collator, mine, num_proc, label=f" (rank {rank}/{world})" if world > 1 else "")
    if world > 1:
        results = _gather(results, world, GATHER_TIMEOUT_S if gather_timeout is None else gather_timeout)
    for index, value in results.items():
        s, row = dataset.entry(index)
        if isinstance(value, list):
            bad_cached[f"{s}:{row}"], failures[index] = value, value
            known[index] = -2
        else:
            cached[s][row] = known[index] = value
    if len(todo) and int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one writer per node
        _write_cache(path, cached, bad_cached)

    lengths = known.tolist()
    bad = [(index, reason, f"{dataset.where(index)} [{reason}]: {detail}") for index, (reason, detail) in failures.items()]
    for index in np.flatnonzero(known > collator.max_length).tolist():
        bad.append((index, "too_long", f"{dataset.where(index)}: {lengths[index]} tokens > max_length {collator.max_length}"))
    for index in failures:
        lengths[index] = None
    bad.sort(key=lambda item: item[0])
    logger.info(
        "Length pre-pass: %d samples (%d measured, %d from %s) in %.1fs; %d too long or unusable.",
        len(lengths), len(todo), len(lengths) - len(todo), path, time.perf_counter() - start, len(bad),
    )
    if bad and collator.on_bad_sample == "error":
        listed = "\n  ".join(message for _, _, message in bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise ValueError(
            f"{len(bad)} sample(s) do not fit max_length {collator.max_length} or cannot be rendered (found by the "
            f"length pre-pass, before training):\n  {listed}{more}\nImage tokens are never truncated: raise "
            "model_max_length, fix or remove these samples, or set on_bad_sample: skip to leave them out."
        )
    for _, _, message in bad[:MAX_LISTED]:
        logger.warning("Skipping %s", message)
    dataset.drop([index for index, _, _ in bad], [reason for _, reason, _ in bad])  # once: indices stay valid
    keep = np.ones(len(lengths), dtype=bool)
    keep[[index for index, _, _ in bad]] = False
    dataset.set_lengths(np.maximum(known, 0)[keep])
    dataset.check_bad_fraction()
    return lengths
