"""Training samples from LLaVA / messages JSON(L) files or HF `datasets`: samples parsed once into an on-disk store,
images decoded at fetch, bad samples raised or skipped.

:func:`load_training_dataset` opens the sources (`train/sources.py`) and their parsed-records stores
(`train/records.py`: every record parsed once per data file and settings, by forked processes, then opened by every
process); :class:`RossDataset` keeps numpy arrays per sample and reads a sample's messages from the store (one
positioned read) and its images from disk in `__getitem__`, i.e. in the dataloader workers. Items are::

    {"id": str, "source": "file:line" (JSONL, 1-based) | "file:#index" (JSON array or HF dataset, 0-based),
     "messages": [{"role": "system"|"user"|"assistant", "content": [{"type": "image"} | {"type": "text", ...}]}],
     "images": [PIL.Image in RGB, in the order of the {"type": "image"} items]}

(a creation sample, `condition="queries"`: one `{"type": "query"}` item in an assistant turn instead of image items,
and its one image is the target; see `train/sources.py`.)

Bad data (``on_bad_sample="error"`` raises ``ValueError`` naming the sample id and its file; ``"skip"`` logs, counts
and drops the sample; nothing else is lost):

* at load time (the sample is left out of the dataset): ``invalid_record`` (malformed record, unknown role),
  ``no_assistant_turn``, ``image_count_mismatch`` (``<image>`` placeholders != images, or one in an answer),
  ``missing_image`` (file does not exist);
* before training, by the length pre-pass (`train/lengths.py`, :meth:`RossDataset.drop`): ``too_long`` and
  ``template``, found with the collator's own encoding (error mode: one error listing every such sample);
* in ``__getitem__``: ``corrupt_image`` (cannot be decoded: corrupt, truncated) and ``missing_image`` (deleted since
  load). The item is ``None`` and the collator drops it, so the batch is one sample shorter and no other sample is
  trained twice; the sample is remembered as bad and never loaded again;
* in the collator (`train/collator.py`): ``too_long`` and ``template`` (only when the pre-pass did not run).

``max_bad_fraction`` (skip mode): when more than this share of the records is bad (all reasons together, at load, in
the pre-pass or at fetch), the run stops with an error giving the counts by reason and the file(s): a wrong
`image_folder` or a broken copy of the data is never trained on silently.

Counts: ``dataset.skipped`` (load-time and pre-pass skips plus unique samples found bad in ``__getitem__``, kept in
shared memory so that dataloader workers report back) and ``collator.skipped``; :func:`skipped_summary` merges them for
the end-of-training summary. Counts are per process group rank.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ross.train.records import BATCH, open_records
from ross.train.sources import SKIP_REASONS, BadSampleError, open_source, row_sample_id


logger = logging.getLogger(__name__)

ON_BAD_SAMPLE = ("error", "skip")
# Cheap length estimate: characters per text token (byte-level BPE on English averages about 4).
CHARS_PER_TOKEN = 4
# Load-time skips logged one by one before only the total is logged.
MAX_LOGGED_SKIPS = 20
# Default share of bad records above which a skip-mode run stops.
MAX_BAD_FRACTION = 0.05

__all__ = ["MAX_BAD_FRACTION", "RossDataset", "load_training_dataset", "check_on_bad_sample", "skipped_summary"]


def check_on_bad_sample(value: str) -> str:
    if value not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {value!r}")
    return value


def skipped_summary(*objects) -> dict[str, int]:
    """Merge the `skipped` counts of datasets and collators, e.g. `skipped_summary(dataset, collator)`."""
    total = Counter()
    for obj in objects:
        total.update(obj.skipped)
    return dict(total)


class RossDataset(Dataset):
    """Samples from one or more sources; see the module docstring for the item format and bad-sample handling.

    Build it with :func:`load_training_dataset`. `lengths` / `modality_lengths` are cheap estimates
    (``ceil(text characters / 4) + num_images * image_seq_length``; negative for text-only samples in
    `modality_lengths`, as in LLaVA) for the samplers of `train/samplers.py`; `transformers.Trainer`'s own
    `group_by_length` only reads a length column of a `datasets.Dataset`, so pass `dataset.lengths` to a sampler.

    Memory: the parsed records live in each source's store on disk (`train/records.py`), a sample's row read with
    one `pread` at fetch; the dataset holds numpy arrays only (source and position, image count, text characters,
    exact length per kept sample, and per record its row's offset), so neither a rank nor its forked dataloader
    workers hold a Python object per record, nor map the rows. Images are never held, only their paths (JSON) or the
    dataset's memory-mapped `images` column.
    """

    def __init__(
        self, sources, source_of, local, num_images, text_chars, on_bad_sample, image_seq_length, load_skips,
        max_bad_fraction: float = MAX_BAD_FRACTION,
    ):  # fmt: skip
        self.sources = sources
        self.num_records = sum(len(source) for source in sources)
        self.max_bad_fraction = float(max_bad_fraction)
        self._exact_lengths = None  # set by the length pre-pass (`drop` / `set_lengths`)
        self._source_of = np.asarray(source_of, dtype=np.int32)  # per kept sample: its source ...
        self._local = np.asarray(local, dtype=np.int64)  # ... and its row there
        self._num_images = np.asarray(num_images, dtype=np.int32)
        self._text_chars = np.asarray(text_chars, dtype=np.int64)
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        self.image_seq_length = image_seq_length
        self._load_skips = Counter(load_skips)
        # Per sample: 0 = fine, k = SKIP_REASONS[k - 1] found in __getitem__. Shared memory, so that dataloader
        # workers (fork or spawn) report back to the main process; counting samples (not events) avoids double
        # counts across workers and epochs.
        self._bad = torch.zeros(len(self._local), dtype=torch.int8).share_memory_()

    def __len__(self) -> int:
        return len(self._local)

    def entry(self, index: int) -> tuple[int, int]:
        """`(source index, row in that source)` of sample `index`."""
        return int(self._source_of[index]), int(self._local[index])

    def messages(self, index: int) -> list[dict]:
        """The parsed messages of sample `index` (a fresh copy, read from the source's store)."""
        source_index, local = self.entry(index)
        return self.sources[source_index].row(local)["messages"]

    def where(self, index: int) -> str:
        """`id=... (file:line)` of sample `index`, for messages."""
        source_index, local = self.entry(index)
        source = self.sources[source_index]
        return f"id={source.sample_id(local)!r} ({source.locations[local]})"

    def image_sizes(self, index: int) -> list[tuple[int, int]]:
        """`(height, width)` of each image of sample `index` as `load` gives it (upright), from the files' headers only
        (the native VLM length pre-pass); raises `BadSampleError` naming id and file for a missing or unreadable one."""
        source_index, local = self.entry(index)
        source = self.sources[source_index]
        row = source.row(local)
        try:
            return source.image_sizes(local, row)
        except BadSampleError as error:
            raise error.located(row_sample_id(row), row["location"]) from error

    def load(self, index: int) -> dict:
        """Load sample `index`; raises `BadSampleError` (naming id and file) whatever `on_bad_sample` says."""
        source_index, local = self.entry(index)
        source = self.sources[source_index]
        # Read from the store at every fetch (one positioned read): a caller editing its item never changes later
        # epochs.
        row = source.row(local)
        sample_id, location = row_sample_id(row), row["location"]
        try:
            images = source.load_images(local, row)
        except BadSampleError as error:
            raise error.located(sample_id, location) from error
        return {"id": sample_id, "messages": row["messages"], "images": images, "source": location}

    def __getitem__(self, index: int) -> dict:
        if self.on_bad_sample == "error":
            return self.load(index)
        if self._bad[index] != 0:
            return None
        try:
            return self.load(index)
        except BadSampleError as error:
            self._bad[index] = SKIP_REASONS.index(error.reason) + 1
            logger.warning("Skipping %s (dropped from its batch).", error)
            self.check_bad_fraction(first=error)
            return None

    def check_bad_fraction(self, first: BadSampleError | None = None) -> None:
        """Raise when more than `max_bad_fraction` of the records are bad (skip mode), naming the counts by reason."""
        counts = self.skipped
        bad = sum(counts.values())
        if self.on_bad_sample != "skip" or bad <= self.max_bad_fraction * self.num_records:
            return
        raise ValueError(
            too_many_bad_message(bad, self.num_records, counts, [s.path for s in self.sources], self.max_bad_fraction)
            + (f" Latest: {first}" if first is not None else "")
        )

    def drop(self, indices, reason) -> None:
        """Leave samples out before training (the length pre-pass), counted under `reason` (one for all, or one per
        index); call before any worker."""
        indices = [int(i) for i in indices]
        reasons = [reason] * len(indices) if isinstance(reason, str) else list(reason)
        drop = np.unique(np.asarray(indices, dtype=np.int64))
        if not len(drop):
            return
        keep = np.ones(len(self), dtype=bool)
        keep[drop] = False
        self._source_of, self._local = self._source_of[keep], self._local[keep]
        self._num_images, self._text_chars = self._num_images[keep], self._text_chars[keep]
        if self._exact_lengths is not None:
            self._exact_lengths = self._exact_lengths[keep]
        self._bad = self._bad[torch.from_numpy(keep)].clone().share_memory_()
        self._load_skips.update(dict(zip(indices, reasons)).values())

    def set_lengths(self, lengths) -> None:
        """Exact token counts per sample (from the length pre-pass), used by `lengths` instead of the estimate."""
        if len(lengths) != len(self):
            raise ValueError(f"{len(lengths)} lengths for {len(self)} samples")
        self._exact_lengths = np.asarray(lengths, dtype=np.int64)

    @property
    def skipped(self) -> dict[str, int]:
        """Samples left out at load time plus samples found bad in `__getitem__` (any worker), by reason."""
        counts = Counter(self._load_skips)
        for code, count in enumerate(torch.bincount(self._bad.long(), minlength=len(SKIP_REASONS) + 1).tolist()):
            if code and count:
                counts[SKIP_REASONS[code - 1]] += count
        return dict(counts)

    @property
    def num_images(self) -> list[int]:
        return self._num_images.tolist()

    @property
    def lengths(self) -> list[int]:
        """Tokens per sample: exact after the length pre-pass, else estimated as text + images * image_seq_length."""
        if self._exact_lengths is not None:
            return self._exact_lengths.tolist()
        if self.image_seq_length is None:
            raise ValueError("lengths need image_seq_length: pass image_seq_length=processor.image_seq_length")
        text = np.maximum(1, -(-self._text_chars // CHARS_PER_TOKEN))  # ceil
        return (text + self._num_images.astype(np.int64) * self.image_seq_length).tolist()

    @property
    def modality_lengths(self) -> list[int]:
        """`lengths`, negated for text-only samples (LLaVA's convention)."""
        return [length if n > 0 else -length for length, n in zip(self.lengths, self._num_images.tolist())]


def load_training_dataset(
    data_path,
    image_folder=None,
    format: str = "auto",
    on_bad_sample: str = "error",
    image_seq_length: int | None = None,
    split: str = "train",
    check_image_files: bool = True,
    image_placement: str = "front",
    max_bad_fraction: float = MAX_BAD_FRACTION,
    cache_dir=None,
    num_proc: int | None = None,
) -> RossDataset:
    """
    Load training samples lazily from one or several sources, checking at once what is cheap to check.

    Args:
        data_path: a path or a list of paths (mixed in order, indices are global). Each is a LLaVA-format JSON / JSONL
            file (`{"id", "image": path | [paths], "conversations": [{"from", "value"}]}`), a messages-format JSON /
            JSONL file (`{"id", "messages", "images": [paths]}`), a `datasets.Dataset` (or a folder written by
            `save_to_disk`), a parquet / arrow / csv file, or a dataset id for `datasets.load_dataset` (those need a
            `messages` column and optionally `images`).
        image_folder: folder that relative image paths are resolved against (one for all sources or one per source);
            default: the folder of the JSON file.
        format: `"auto"`, `"llava"` or `"messages"` for JSON files (auto: from the first record's keys).
        on_bad_sample: `"error"` (raise `ValueError` naming the sample id and file) or `"skip"` (log and count).
        image_seq_length: image tokens per image, for `lengths` (`processor.image_seq_length`).
        split: split to take from a `DatasetDict` / `load_dataset`.
        check_image_files: check at load time that every image file exists (one `stat` per image).
        image_placement: `"front"` (default, the authors' `preprocess_multimodal`): a turn's single `<image>` is moved
            to its start as `"<image>\\n" + text.strip()`, so the visual outputs (causal) never see the question;
            `"inplace"` keeps it where the data puts it. Turns with several images always keep them in place.
        max_bad_fraction: with `on_bad_sample="skip"`, stop (`ValueError` with the counts by reason and the files)
            when more than this share of the records is bad.
        cache_dir: where the parsed records are stored (`records-<key>.arrow`, `train/records.py`); default:
            `default_cache_dir` (`.ross_cache/` next to the first data file, else `~/.cache/ross`). On several
            processes, let one build it first (`main_process_first`), the others then open it.
        num_proc: processes parsing a source on its first load (default: the CPUs available, at most 32).
    """
    check_on_bad_sample(on_bad_sample)
    if image_placement not in ("front", "inplace"):
        raise ValueError(f"image_placement must be 'front' or 'inplace', got {image_placement!r}")
    if format not in ("auto", "llava", "messages"):
        raise ValueError(f"format must be 'auto', 'llava' or 'messages', got {format!r}")
    paths = list(data_path) if isinstance(data_path, (list, tuple)) else [data_path]
    folders = list(image_folder) if isinstance(image_folder, (list, tuple)) else [image_folder] * len(paths)
    if len(folders) != len(paths):
        raise ValueError(f"got {len(folders)} image folders for {len(paths)} data paths")

    sources, skips = [], Counter()
    source_of, local, num_images, text_chars = [], [], [], []
    for source_index, (path, folder) in enumerate(zip(paths, folders)):
        folder = None if folder is None else os.fspath(folder)
        if folder is not None and not os.path.isdir(folder):
            raise FileNotFoundError(
                f"image_folder {folder} does not exist (the image paths of {path} are resolved against it)"
            )
        source = open_source(path, folder, format, split, source_index, image_placement)
        store_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(source)
        records, rows, missing = open_records(source, check_image_files, store_dir, num_proc)
        source.attach(records, rows)
        sources.append(source)
        table = records.data
        for start in range(0, len(records), BATCH):
            chunk = table.slice(start, BATCH)
            reasons, details = chunk.column("reason").to_pylist(), chunk.column("detail").to_pylist()
            for offset, reason in enumerate(reasons):
                row = start + offset
                if reason is None and row in missing:
                    reason, details[offset] = "missing_image", missing[row]
                if reason is not None:
                    error = BadSampleError(reason, details[offset], source.sample_id(row), source.locations[row])
                    _skip_or_raise(error, on_bad_sample, skips)
            good = np.array([r is None for r in reasons], dtype=bool)
            for row in missing:
                if start <= row < start + len(reasons):
                    good[row - start] = False
            source_of.append(np.full(int(good.sum()), source_index, dtype=np.int32))
            local.append(np.arange(start, start + len(reasons), dtype=np.int64)[good])
            num_images.append(chunk.column("num_images").to_numpy()[good])
            text_chars.append(chunk.column("text_chars").to_numpy()[good])
    if skips:
        logger.warning("Left out %d sample(s) at load time: %s", sum(skips.values()), dict(skips))
    if not sum(len(part) for part in local):
        raise ValueError(f"no usable sample in {paths}" + (f": {dict(skips)}" if skips else ""))
    dataset = RossDataset(
        sources, *(np.concatenate(parts) for parts in (source_of, local, num_images, text_chars)),
        on_bad_sample, image_seq_length, skips, max_bad_fraction,
    )  # fmt: skip
    dataset.check_bad_fraction()
    return dataset


def default_cache_dir(source_or_dataset) -> Path:
    """`.ross_cache/` next to the (first) data file when that folder is writable, else `~/.cache/ross`."""
    sources = getattr(source_or_dataset, "sources", None)
    first = getattr(sources[0] if sources else source_or_dataset, "path", None)
    if isinstance(first, str) and os.path.isfile(first) and os.access(os.path.dirname(os.path.abspath(first)), os.W_OK):
        return Path(os.path.dirname(os.path.abspath(first))) / ".ross_cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ross"


def too_many_bad_message(bad: int, total: int, counts: dict, files, max_bad_fraction: float) -> str:
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(counts.items()))
    return (
        f"{bad} of {total} samples are bad ({reasons}) in {', '.join(map(str, files))}: more than "
        f"max_bad_fraction={max_bad_fraction:g} of the data. Check data_path / image_folder, or raise "
        "max_bad_fraction to train on the rest."
    )


def _skip_or_raise(error: BadSampleError, on_bad_sample: str, skips: Counter) -> None:
    if on_bad_sample == "error":
        raise error
    skips[error.reason] += 1
    if sum(skips.values()) <= MAX_LOGGED_SKIPS:
        logger.warning("Skipping %s", error)
