"""The length pre-pass: every sample's token count, measured once before training with the collator's own encoding.

:func:`check_lengths` renders each sample of a `RossDataset` with the chat template and counts its tokens exactly as
`RossDataCollator` will (`collator.sample_length`, stand-in images: the image token count does not depend on the
pixels), so a sample too long for `max_length`, or one the template cannot supervise, is found before step 1:

* ``on_bad_sample="error"``: one `ValueError` listing every such sample (id, file, length vs limit);
* ``"skip"``: they are dropped from the dataset up front (`RossDataset.drop`, counted as ``too_long`` / ``template``),
  then `max_bad_fraction` is checked again.

The lengths are cached in `<cache_dir>/lengths-<key>.json`, keyed by a hash of the data files (their contents), the
tokenizer (its serialised vocabulary and merges), the chat template, `max_length` and the collator's format, so a
second run with the same data and settings measures nothing. The kept samples then carry exact lengths for the
length-grouped samplers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from ross.train.sources import BadSampleError


logger = logging.getLogger(__name__)

CACHE_VERSION = 1
# Too-long samples listed one by one in the error before only their count.
MAX_LISTED = 20

__all__ = ["check_lengths", "default_cache_dir", "lengths_key"]


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_identity(source) -> str:
    dataset = getattr(source, "dataset", None)
    if dataset is not None:  # an HF dataset: its fingerprint changes with its content
        return f"datasets:{getattr(dataset, '_fingerprint', None) or source.path}"
    return f"{os.path.abspath(source.path)}:{_file_digest(source.path)}"


def _tokenizer_identity(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def lengths_key(dataset, collator) -> str:
    """The cache key: data files, tokenizer, chat template, max length, format, image tokens, image placement."""
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
            "image_seq_length": processor.image_seq_length,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir(dataset) -> Path:
    """`.ross_cache/` next to the first data file when that folder is writable, else `~/.cache/ross`."""
    first = getattr(dataset.sources[0], "path", None)
    if first and os.path.isfile(first) and os.access(os.path.dirname(os.path.abspath(first)), os.W_OK):
        return Path(os.path.dirname(os.path.abspath(first))) / ".ross_cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ross"


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())["samples"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_cache(path: Path, samples: dict) -> None:
    """Written to a temporary file and renamed: a killed run never leaves a half-written cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            json.dump({"version": CACHE_VERSION, "samples": samples}, f)
        os.replace(f.name, path)
    except OSError as error:
        logger.warning("Could not write the length cache %s (%s); the next run measures again.", path, error)


def check_lengths(dataset, collator, cache_dir=None) -> list[int | None]:
    """
    Measure (or read from the cache) every sample's token count and apply the collator's `max_length` and
    `on_bad_sample` before training (see the module docstring). Returns the measured length of every sample the
    dataset held on entry, in its order (None where the template cannot render it).
    """
    start = time.perf_counter()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(dataset)
    path = cache_dir / f"lengths-{lengths_key(dataset, collator)}.json"
    cached = _read_cache(path)
    samples, measured = dict(cached), 0
    lengths, bad = [], []  # bad: (index, reason, message)
    for index, (source_index, local) in enumerate(dataset._entries):
        entry = f"{source_index}:{local}"
        if entry not in samples:
            sample = dataset._samples[index]
            try:
                samples[entry] = [collator.sample_length(copy.deepcopy(sample.messages), sample.num_images), None]
            except BadSampleError as error:
                samples[entry] = [None, error.reason, error.detail]
            measured += 1
        length, reason, *detail = samples[entry]
        lengths.append(length)
        source = dataset.sources[source_index]
        where = f"id={source.sample_id(local)!r} ({source.locations[local]})"
        if reason is not None:
            bad.append((index, reason, f"{where} [{reason}]: {detail[0] if detail else ''}"))
        elif length > collator.max_length:
            bad.append((index, "too_long", f"{where}: {length} tokens > max_length {collator.max_length}"))
    if measured:
        _write_cache(path, samples)
    logger.info(
        "Length pre-pass: %d samples (%d measured, %d from %s) in %.1fs; %d too long or unusable.",
        len(lengths), measured, len(lengths) - measured, path, time.perf_counter() - start, len(bad),
    )
    if bad and collator.on_bad_sample == "error":
        listed = "\n  ".join(message for _, _, message in bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise ValueError(
            f"{len(bad)} sample(s) do not fit max_length {collator.max_length} or cannot be rendered (found by the "
            f"length pre-pass, before training):\n  {listed}{more}\nImage tokens are never truncated: raise "
            "model_max_length, fix or remove these samples, or set on_bad_sample: skip to leave them out."
        )
    for reason in ("too_long", "template", "image_count_mismatch"):
        indices = [index for index, r, _ in bad if r == reason]
        for _, r, message in bad[:MAX_LISTED]:
            if r == reason:
                logger.warning("Skipping %s", message)
        dataset.drop(indices, reason)
    dropped = {index for index, _, _ in bad}
    dataset.set_lengths([length for index, length in enumerate(lengths) if index not in dropped])
    dataset.check_bad_fraction()
    return lengths
