"""Training data for ROSS: lazy sources, an assistant-only-loss collator, and length / modality samplers.

Three pieces, one concern each:

* :func:`load_training_dataset` -> :class:`RossDataset`, a torch ``Dataset`` over LLaVA JSON/JSONL files and HF
  ``datasets`` with ``messages`` / ``images`` columns. Records (or row indices) are kept in memory; images are opened
  and decoded only in ``__getitem__``, i.e. in the dataloader workers. Items are::

      {"id": str, "source": "file:line" (JSONL, 1-based) | "file:#index" (JSON array or HF dataset, 0-based),
       "messages": [{"role": "system"|"user"|"assistant", "content": [{"type": "image"} | {"type": "text", ...}]}],
       "images": [PIL.Image in RGB, in the order of the {"type": "image"} items]}

* :class:`RossDataCollator` renders the chat template, expands every image to ``image_seq_length`` image tokens and
  supervises only the assistant answers (each answer's end-of-turn token included). Nothing is ever truncated: a
  sample longer than ``max_length`` is an error or a counted skip.

* :class:`LengthGroupedSampler` and :class:`ModalityLengthGroupedSampler`, deterministic given ``seed`` and the epoch.

Bad data (``on_bad_sample="error"`` raises ``ValueError`` naming the sample id and its file; ``"skip"`` logs, counts
and drops the sample; nothing else is lost):

* at load time (the sample is left out of the dataset): ``invalid_record`` (malformed record, unknown role),
  ``no_assistant_turn``, ``image_count_mismatch`` (``<image>`` placeholders != images, or one in an answer),
  ``missing_image`` (file does not exist);
* in ``__getitem__`` (the dataset returns the next valid index instead, ``i+1``, ``i+2``, ... wrapping around, so a
  batch keeps its size and one neighbour appears twice that epoch): ``corrupt_image`` (cannot be decoded: corrupt,
  truncated) and ``missing_image`` (deleted since load);
* in the collator (dropped from the batch, which gets smaller): ``too_long`` (longer than ``max_length`` after image
  expansion; never truncated) and ``template`` (the rendering supervises nothing / cannot be masked).

Counts: ``dataset.skipped`` (load-time skips plus unique samples found bad in ``__getitem__``, kept in shared memory so
that dataloader workers report back) and ``collator.skipped`` (events: a too-long sample is counted each epoch it is
drawn). :func:`skipped_summary` merges them for the end-of-training summary. Counts are per process group rank.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from modeling_ross.processing_ross import to_rgb


logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
# Cheap length estimate: characters per text token (byte-level BPE on English averages about 4).
CHARS_PER_TOKEN = 4

LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
MESSAGE_ROLES = ("system", "user", "assistant")
SKIP_REASONS = (
    "invalid_record",
    "no_assistant_turn",
    "image_count_mismatch",
    "missing_image",
    "corrupt_image",
    "too_long",
    "template",
)
_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")

__all__ = [
    "IGNORE_INDEX",
    "SKIP_REASONS",
    "BadSampleError",
    "RossDataset",
    "load_training_dataset",
    "llava_to_messages",
    "RossDataCollator",
    "LengthGroupedSampler",
    "ModalityLengthGroupedSampler",
    "length_grouped_indices",
    "modality_length_grouped_indices",
    "skipped_summary",
]


class BadSampleError(ValueError):
    """A sample that cannot be trained on. The message names the sample id and its file (`source`)."""

    def __init__(self, reason: str, detail: str, sample_id=None, source=None):
        self.reason, self.detail, self.sample_id, self.source = reason, detail, sample_id, source
        super().__init__(f"bad sample id={sample_id!r} ({source}) [{reason}]: {detail}")

    def located(self, sample_id, source) -> "BadSampleError":
        return BadSampleError(self.reason, self.detail, sample_id, source)


def _check_on_bad_sample(value: str) -> str:
    if value not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {value!r}")
    return value


# ----------------------------------------------------------------------------- conversation conversion
def _content_items(content, image_placement: str = "inplace") -> list[dict]:
    """A string (with `<image>` placeholders) or a list of items/strings -> a list of image/text items.

    A newline right after a placeholder belongs to the placeholder (the template renders an image item as
    `<image>\\n`); all other text is kept verbatim, empty pieces are dropped. With `image_placement="front"` a
    message holding exactly one image gets it at its start, followed by its stripped text: for a string exactly the
    authors' `preprocess_multimodal` (`"<image>\\n" + value.replace("<image>", "").strip()`). Several images stay
    where they are (interleaved turns).
    """
    if content is None:
        return []
    if isinstance(content, str):
        if image_placement == "front" and content.count(IMAGE_PLACEHOLDER) == 1:
            content = IMAGE_PLACEHOLDER + "\n" + content.replace(IMAGE_PLACEHOLDER, "").strip()
        items = []
        for k, piece in enumerate(content.split(IMAGE_PLACEHOLDER)):
            if k > 0:
                items.append({"type": "image"})
                piece = piece[1:] if piece.startswith("\n") else piece
            if piece:
                items.append({"type": "text", "text": piece})
        return items
    if not isinstance(content, (list, tuple)):
        raise BadSampleError(
            "invalid_record", f"message content must be a string or a list, got {type(content).__name__}"
        )
    items = []
    for item in content:
        if isinstance(item, str):
            items += _content_items(item)
        elif isinstance(item, Mapping) and item.get("type") == "image":
            items.append({"type": "image"})
        elif isinstance(item, Mapping) and item.get("type") == "text" and isinstance(item.get("text"), str):
            items += _content_items(item["text"])  # a placeholder inside a text item is an image too
        else:
            raise BadSampleError("invalid_record", f"unsupported content item {item!r}")
    if image_placement == "front" and sum(item["type"] == "image" for item in items) == 1:
        text = "".join(item["text"] for item in items if item["type"] == "text").strip()
        items = [{"type": "image"}] + ([{"type": "text", "text": text}] if text else [])
    return items


def llava_to_messages(conversations, image_placement: str = "front") -> list[dict]:
    """LLaVA `conversations` ([{"from": "human"|"gpt"|"system", "value": str}]) -> HF chat messages.

    `image_placement`: `"front"` (the authors) or `"inplace"`, see `_content_items`."""
    if not isinstance(conversations, list) or not conversations:
        raise BadSampleError("invalid_record", "'conversations' must be a non-empty list")
    messages = []
    for k, turn in enumerate(conversations):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str):
            raise BadSampleError("invalid_record", f"turn {k} must be a dict with a string 'value'")
        role = LLAVA_ROLES.get(turn.get("from"))
        if role is None:
            raise BadSampleError("invalid_record", f"turn {k} has unknown 'from' {turn.get('from')!r}")
        messages.append({"role": role, "content": _content_items(turn["value"], image_placement)})
    return messages


def _normalize_messages(messages, image_placement: str = "front") -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadSampleError("invalid_record", "'messages' must be a non-empty list")
    out = []
    for k, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in MESSAGE_ROLES:
            raise BadSampleError("invalid_record", f"message {k} must have a role in {MESSAGE_ROLES}")
        out.append({"role": message["role"], "content": _content_items(message.get("content"), image_placement)})
    return out


def _finalize_messages(messages: list[dict], num_images: int) -> list[dict]:
    """Check the conversation against its images; with no placeholder at all, put the images first (as LLaVA does)."""
    if not any(m["role"] == "assistant" for m in messages):
        raise BadSampleError("no_assistant_turn", "the conversation has no assistant turn, nothing to supervise")
    for m in messages:
        if m["role"] == "assistant" and any(item["type"] == "image" for item in m["content"]):
            raise BadSampleError("image_count_mismatch", "an assistant turn contains an <image> placeholder")
    placeholders = sum(item["type"] == "image" for m in messages for item in m["content"])
    if placeholders == 0 and num_images > 0:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise BadSampleError("image_count_mismatch", f"{num_images} image(s) but no user turn to put them in")
        first_user["content"] = [{"type": "image"} for _ in range(num_images)] + first_user["content"]
    elif placeholders != num_images:
        raise BadSampleError(
            "image_count_mismatch", f"{placeholders} <image> placeholder(s) but {num_images} image(s)"
        )
    return messages


def _text_chars(messages: list[dict]) -> int:
    return sum(len(item["text"]) for m in messages for item in m["content"] if item["type"] == "text")


def _decode_image(image, sample_path: str | None = None) -> Image.Image:
    """Open (path) or take (PIL) an image and decode it fully, so corrupt or truncated files fail here."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.exists(path):
            raise BadSampleError("missing_image", f"image file {path} does not exist")
        try:
            with Image.open(path) as opened:
                opened.load()
                return to_rgb(opened)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
            raise BadSampleError("corrupt_image", f"cannot decode image file {path}: {error}") from error
    if isinstance(image, Mapping) and ("bytes" in image or "path" in image):  # datasets Image(decode=False)
        if image.get("bytes") is not None:
            import io

            image = Image.open(io.BytesIO(image["bytes"]))
        else:
            return _decode_image(image["path"])
    if not isinstance(image, Image.Image):
        raise BadSampleError("invalid_record", f"unsupported image value of type {type(image).__name__}")
    try:
        image.load()
        return to_rgb(image)
    except Exception as error:
        raise BadSampleError("corrupt_image", f"cannot decode image: {error}") from error


# ----------------------------------------------------------------------------- sources
class _JsonSource:
    """Records of one LLaVA-format or messages-format JSON / JSONL file, kept in memory."""

    def __init__(self, path: str, image_folder: str | None, format: str, image_placement: str = "front"):
        self.path = path
        self.image_placement = image_placement
        self.image_folder = image_folder if image_folder is not None else os.path.dirname(os.path.abspath(path))
        self.records, self.locations = [], []
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                for line_number, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            self.records.append(json.loads(line))
                        except json.JSONDecodeError as error:
                            raise ValueError(f"{path}:{line_number}: invalid JSON: {error}") from error
                        self.locations.append(f"{path}:{line_number}")
            else:
                data = json.load(f)
                if not isinstance(data, list):
                    raise ValueError(f"{path}: expected a JSON array of samples, got {type(data).__name__}")
                self.records = data
                self.locations = [f"{path}:#{index}" for index in range(len(data))]
        if format == "auto":
            first = next((r for r in self.records if isinstance(r, Mapping)), {})
            format = "messages" if "messages" in first and "conversations" not in first else "llava"
        self.format = format

    def __len__(self):
        return len(self.records)

    def sample_id(self, index: int) -> str:
        record = self.records[index]
        if isinstance(record, Mapping) and record.get("id") is not None:
            return str(record["id"])
        return self.locations[index]

    def _image_refs(self, record) -> list[str]:
        key = "images" if self.format == "messages" else "image"
        value = record.get(key, record.get("images" if key == "image" else "image"))
        if value is None:
            return []
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BadSampleError("invalid_record", f"'{key}' must be a path or a list of paths")
        return [v if os.path.isabs(v) else os.path.join(self.image_folder, v) for v in values]

    def _messages(self, record) -> list[dict]:
        if not isinstance(record, Mapping):
            raise BadSampleError("invalid_record", f"a sample must be a JSON object, got {type(record).__name__}")
        if self.format == "llava":
            if "conversations" not in record:
                raise BadSampleError("invalid_record", "missing 'conversations'")
            return llava_to_messages(record["conversations"], self.image_placement)
        if "messages" not in record:
            raise BadSampleError("invalid_record", "missing 'messages'")
        return _normalize_messages(record["messages"], self.image_placement)

    def check(self, index: int, check_files: bool) -> tuple[int, int]:
        """Load-time checks; returns (number of images, text characters)."""
        record = self.records[index]
        messages = self._messages(record)
        refs = self._image_refs(record)
        messages = _finalize_messages(messages, len(refs))
        if check_files:
            for ref in refs:
                if not os.path.isfile(ref):
                    raise BadSampleError("missing_image", f"image file {ref} does not exist")
        return len(refs), _text_chars(messages)

    def load(self, index: int) -> tuple[list[dict], list[Image.Image]]:
        record = self.records[index]
        refs = self._image_refs(record)
        messages = _finalize_messages(self._messages(record), len(refs))
        return messages, [_decode_image(ref) for ref in refs]


class _HFSource:
    """A `datasets.Dataset` with a `messages` column and an optional `images` column (PIL images or paths)."""

    def __init__(self, dataset, name: str, image_folder: str | None, image_placement: str = "front"):
        self.image_placement = image_placement
        if "messages" not in dataset.column_names:
            raise ValueError(f"{name}: a datasets source needs a 'messages' column, has {dataset.column_names}")
        self.dataset, self.path, self.image_folder = dataset, name, image_folder
        self.has_images = "images" in dataset.column_names
        self.locations = _LazyLocations(name)
        self.ids = [str(i) for i in dataset.select_columns(["id"])["id"]] if "id" in dataset.column_names else None

    def __len__(self):
        return len(self.dataset)

    def sample_id(self, index: int) -> str:
        return self.ids[index] if self.ids is not None else f"{self.path}:#{index}"

    def _resolve(self, image):
        if isinstance(image, str) and not os.path.isabs(image) and self.image_folder is not None:
            return os.path.join(self.image_folder, image)
        return image

    def check_all(self, check_files: bool, chunk: int = 1000):
        """Yield (index, (num_images, chars) or BadSampleError), reading `images` as Arrow list lengths (no decoding,
        no copy of the image bytes into Python)."""
        import pyarrow.compute as pc

        messages_only = self.dataset.select_columns(["messages"])
        images_arrow = self.dataset.select_columns(["images"]).with_format("arrow") if self.has_images else None
        inner = getattr(self.dataset.features.get("images"), "feature", None)
        paths_to_check = check_files and getattr(inner, "dtype", None) == "string"
        for start in range(0, len(messages_only), chunk):
            batch = messages_only[start : start + chunk]["messages"]
            counts, paths = [0] * len(batch), None
            if images_arrow is not None:
                column = images_arrow[start : start + chunk]["images"]
                counts = pc.fill_null(pc.list_value_length(column), 0).to_pylist()
                paths = column.to_pylist() if paths_to_check else None
            for offset, messages in enumerate(batch):
                try:
                    messages = _normalize_messages(messages, self.image_placement)
                    messages = _finalize_messages(messages, counts[offset])
                    for ref in (paths[offset] or []) if paths is not None else []:
                        if not os.path.isfile(self._resolve(ref)):
                            raise BadSampleError("missing_image", f"image file {self._resolve(ref)} does not exist")
                    yield start + offset, (counts[offset], _text_chars(messages))
                except BadSampleError as error:
                    yield start + offset, error

    def load(self, index: int) -> tuple[list[dict], list[Image.Image]]:
        row = self.dataset[index]
        images = (row.get("images") or []) if self.has_images else []
        messages = _finalize_messages(_normalize_messages(row["messages"], self.image_placement), len(images))
        return messages, [_decode_image(self._resolve(image)) for image in images]


class _LazyLocations:
    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, index: int) -> str:
        return f"{self.name}:#{index}"


def _open_source(path, image_folder, format: str, split: str, position: int, image_placement: str = "front"):
    """One entry of `data_path` -> a source object."""
    import datasets

    if isinstance(path, datasets.Dataset):
        return _HFSource(path, f"datasets.Dataset[{position}]", image_folder, image_placement)
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    if suffix in (".json", ".jsonl", ".parquet", ".arrow", ".csv") and not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    if os.path.isfile(path) and suffix in (".json", ".jsonl"):
        return _JsonSource(path, image_folder, format, image_placement)
    if format == "llava":
        raise ValueError(f"{path}: format='llava' needs a .json or .jsonl file")
    if os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json", "dataset_info.json")
    ):
        dataset = datasets.load_from_disk(path)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[split]
    elif os.path.isfile(path) and suffix in (".parquet", ".arrow", ".csv"):
        builder = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}[suffix]
        dataset = datasets.load_dataset(builder, data_files=path, split=split)
    elif os.path.exists(path) or "/" in path:
        dataset = datasets.load_dataset(path, split=split)  # a local dataset folder or a Hub dataset id
    else:
        raise FileNotFoundError(f"data path {path} does not exist")
    return _HFSource(dataset, path, image_folder, image_placement)


# ----------------------------------------------------------------------------- dataset
class RossDataset(Dataset):
    """Samples from one or more sources; see the module docstring for the item format and bad-sample handling.

    Build it with :func:`load_training_dataset`. `lengths` / `modality_lengths` are cheap estimates
    (``ceil(text characters / 4) + num_images * image_seq_length``; negative for text-only samples in
    `modality_lengths`, as in LLaVA) for the samplers below; `transformers.Trainer`'s own `group_by_length` only reads a
    length column of a `datasets.Dataset`, so pass `dataset.lengths` to a sampler yourself.
    """

    def __init__(self, sources, entries, num_images, text_chars, on_bad_sample, image_seq_length, load_skips):
        self.sources = sources
        self._entries = entries  # (source index, local index) per kept sample
        self._num_images = num_images
        self._text_chars = text_chars
        self.on_bad_sample = _check_on_bad_sample(on_bad_sample)
        self.image_seq_length = image_seq_length
        self._load_skips = Counter(load_skips)
        # Per sample: 0 = fine, k = SKIP_REASONS[k - 1] found in __getitem__. Shared memory, so that dataloader
        # workers (fork or spawn) report back to the main process; counting samples (not events) avoids double
        # counts across workers and epochs.
        self._bad = torch.zeros(len(entries), dtype=torch.int8).share_memory_()

    def __len__(self) -> int:
        return len(self._entries)

    def _locate(self, index: int) -> tuple[str, str]:
        source_index, local = self._entries[index]
        source = self.sources[source_index]
        return source.sample_id(local), source.locations[local]

    def load(self, index: int) -> dict:
        """Load sample `index`; raises `BadSampleError` (naming id and file) whatever `on_bad_sample` says."""
        source_index, local = self._entries[index]
        source = self.sources[source_index]
        sample_id, location = source.sample_id(local), source.locations[local]
        try:
            messages, images = source.load(local)
        except BadSampleError as error:
            raise error.located(sample_id, location) from error
        return {"id": sample_id, "messages": messages, "images": images, "source": location}

    def __getitem__(self, index: int) -> dict:
        if self.on_bad_sample == "error":
            return self.load(index)
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            if self._bad[candidate] != 0:
                continue
            try:
                return self.load(candidate)
            except BadSampleError as error:
                self._bad[candidate] = SKIP_REASONS.index(error.reason) + 1
                logger.warning("Skipping %s; using the next sample instead.", error)
        raise RuntimeError("every sample of the dataset failed to load; see the warnings above")

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
        return list(self._num_images)

    @property
    def lengths(self) -> list[int]:
        """Estimated tokens per sample: text + images * image_seq_length."""
        if self.image_seq_length is None:
            raise ValueError("lengths need image_seq_length: pass image_seq_length=processor.image_seq_length")
        return [
            max(1, math.ceil(chars / CHARS_PER_TOKEN)) + n * self.image_seq_length
            for n, chars in zip(self._num_images, self._text_chars)
        ]

    @property
    def modality_lengths(self) -> list[int]:
        """`lengths`, negated for text-only samples (LLaVA's convention)."""
        return [length if n > 0 else -length for length, n in zip(self.lengths, self._num_images)]


def load_training_dataset(
    data_path,
    image_folder=None,
    format: str = "auto",
    on_bad_sample: str = "error",
    image_seq_length: int | None = None,
    split: str = "train",
    check_image_files: bool = True,
    image_placement: str = "front",
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
    """
    _check_on_bad_sample(on_bad_sample)
    if image_placement not in ("front", "inplace"):
        raise ValueError(f"image_placement must be 'front' or 'inplace', got {image_placement!r}")
    if format not in ("auto", "llava", "messages"):
        raise ValueError(f"format must be 'auto', 'llava' or 'messages', got {format!r}")
    paths = list(data_path) if isinstance(data_path, (list, tuple)) else [data_path]
    folders = list(image_folder) if isinstance(image_folder, (list, tuple)) else [image_folder] * len(paths)
    if len(folders) != len(paths):
        raise ValueError(f"got {len(folders)} image folders for {len(paths)} data paths")

    sources, entries, num_images, text_chars, skips = [], [], [], [], Counter()

    def keep_or_skip(source_index, source, local, result):
        if isinstance(result, BadSampleError):
            error = result.located(source.sample_id(local), source.locations[local])
            if on_bad_sample == "error":
                raise error
            skips[error.reason] += 1
            if sum(skips.values()) <= 20:
                logger.warning("Skipping %s", error)
            return
        entries.append((source_index, local))
        num_images.append(result[0])
        text_chars.append(result[1])

    for source_index, (path, folder) in enumerate(zip(paths, folders)):
        source = _open_source(
            path, None if folder is None else os.fspath(folder), format, split, source_index, image_placement
        )
        sources.append(source)
        if isinstance(source, _HFSource):
            for local, result in source.check_all(check_image_files):
                keep_or_skip(source_index, source, local, result)
        else:
            for local in range(len(source)):
                try:
                    result = source.check(local, check_image_files)
                except BadSampleError as error:
                    result = error
                keep_or_skip(source_index, source, local, result)
    if skips:
        logger.warning("Left out %d sample(s) at load time: %s", sum(skips.values()), dict(skips))
    if not entries:
        raise ValueError(f"no usable sample in {paths}")
    return RossDataset(sources, entries, num_images, text_chars, on_bad_sample, image_seq_length, skips)


# ----------------------------------------------------------------------------- collator
class _EventCounter:
    """Counts per reason in shared memory, one row per dataloader worker (no lost updates between workers)."""

    ROWS = 65

    def __init__(self):
        self._counts = torch.zeros(self.ROWS, len(SKIP_REASONS), dtype=torch.int64).share_memory_()

    def add(self, reason: str):
        info = torch.utils.data.get_worker_info()
        row = 0 if info is None else 1 + info.id % (self.ROWS - 1)
        self._counts[row, SKIP_REASONS.index(reason)] += 1

    def as_dict(self) -> dict[str, int]:
        totals = self._counts.sum(0).tolist()
        return {reason: count for reason, count in zip(SKIP_REASONS, totals) if count}


class RossDataCollator:
    r"""
    Turn :class:`RossDataset` items into a right-padded training batch with assistant-only labels.

    Output: `input_ids`, `attention_mask`, `labels` (`(batch, longest)`), and `pixel_values`
    (`(total images, 3, H, W)`, images in row-major order: sample 0's images, then sample 1's, ...) when the batch has
    at least one image. Text-only samples stay in the batch. Labels are -100 on the system prompt, user turns, role
    headers, image tokens and padding; each assistant answer and its end-of-turn token (`<|im_end|>` in the
    Vicuna-style template) are supervised.

    Masking (`format="chat"`):
      * if the chat template has `{% generation %}` markers, `processor.apply_chat_template(...,
        return_assistant_tokens_mask=True)` gives the assistant tokens;
      * otherwise (fallback) the answer spans are found by rendering prefixes: for the k-th message (an assistant
        one) the span runs from the end of `render(messages[:k], add_generation_prompt=True)` (the part it shares
        with `render(messages[:k+1])`) to the end of `render(messages[:k+1])`, which must be a prefix of the full
        rendering (a `ValueError` says so when a template rewrites earlier turns). Tokens overlapping a span are
        supervised. `masking="prefix"` forces the fallback.

    With `latent_cache` (a `train.latent_cache.LatentCache`), every batch also gets `teacher_targets`:
    `{"mean", "std"}` of each kept sample's images in `pixel_values` order, looked up by image content; an image
    missing from the cache raises `LatentCacheMiss` (never skipped, never a silent fallback to the teacher).

    `format="plain"` (stage 1, LLaVA's `plain` template): the text is the image tokens followed directly by the
    caption (the single assistant turn) and `plain_end` (default: the tokenizer's EOS token); no system prompt, no
    roles; the user's words are dropped; only the caption and `plain_end` are supervised.

    Never truncates. A sample longer than `max_length` after image expansion (or whose rendering supervises nothing)
    raises `ValueError` naming its id and file, or with `on_bad_sample="skip"` is dropped from the batch, logged and
    counted in `skipped` (shared by dataloader workers). A batch left with no sample raises `ValueError`.
    """

    def __init__(
        self,
        processor,
        max_length: int,
        format: str = "chat",
        on_bad_sample: str = "error",
        masking: str = "auto",
        plain_end: str | None = None,
        pad_to_multiple_of: int | None = None,
        latent_cache=None,
    ):
        if format not in ("chat", "plain"):
            raise ValueError(f"format must be 'chat' or 'plain', got {format!r}")
        if masking not in ("auto", "generation", "prefix"):
            raise ValueError(f"masking must be 'auto', 'generation' or 'prefix', got {masking!r}")
        has_markers = bool(_GENERATION_MARKER.search(processor.chat_template or ""))
        if masking == "generation" and not has_markers:
            raise ValueError("masking='generation' needs {% generation %} markers in the chat template")
        self.processor = processor
        self.max_length = int(max_length)
        self.format = format
        self.on_bad_sample = _check_on_bad_sample(on_bad_sample)
        self.masking = ("generation" if has_markers else "prefix") if masking == "auto" else masking
        self.plain_end = processor.tokenizer.eos_token if plain_end is None else plain_end
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_token_id = processor.tokenizer.pad_token_id
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token")
        self.image_token_id = processor.image_token_id
        self._skips = _EventCounter()
        # Optional `train.latent_cache.LatentCache`: adds `teacher_targets` to every batch (see `__call__`).
        self.latent_cache = latent_cache

    @property
    def skipped(self) -> dict[str, int]:
        """Samples dropped by the collator, by reason (events: a sample drawn in two epochs counts twice)."""
        return self._skips.as_dict()

    # -- encoding one sample
    def _tokenize_with_spans(self, text: str, spans: list[tuple[int, int]], images) -> tuple[dict, torch.Tensor]:
        """Tokenize `text` (placeholders expanded by the processor) and mark the tokens overlapping `spans`,
        character spans of the unexpanded text."""
        out = self.processor(
            text=[text],
            images=[images] if images else None,
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
            return_tensors="pt",
        )
        replacements = (out.get("text_replacement_offsets") or [[]])[0]
        ends = [r["span"][1] for r in replacements]
        gained = [0]
        for r in replacements:
            gained.append(r["new_span"][1] - r["span"][1])
        offsets = out["offset_mapping"][0].tolist()
        mask = torch.zeros(len(offsets), dtype=torch.bool)
        for start, end in spans:
            start, end = (c + gained[bisect.bisect_right(ends, c)] for c in (start, end))
            for position, (token_start, token_end) in enumerate(offsets):
                if token_start < end and token_end > start:
                    mask[position] = True
        return out, mask

    def _render(self, messages, **kwargs) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, **kwargs)

    def _prefix_spans(self, messages) -> tuple[str, list[tuple[int, int]]]:
        full = self._render(messages)
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(messages[:k], add_generation_prompt=True) if k else ""
            upto = self._render(messages[: k + 1])
            if not full.startswith(upto):
                raise BadSampleError(
                    "template",
                    "the chat template renders earlier turns differently once later turns are added; prefix masking "
                    "cannot locate the answers; add {% generation %} markers to the template",
                )
            start = len(os.path.commonprefix([prompt, upto]))
            spans.append((start, len(upto)))
        return full, spans

    def _encode(self, feature) -> dict:
        messages, images = feature["messages"], feature["images"]
        if self.format == "plain":
            answers = [m for m in messages if m["role"] == "assistant"]
            if len(answers) != 1:
                raise BadSampleError("template", f"plain format needs exactly one caption turn, got {len(answers)}")
            caption = "".join(item["text"] for item in answers[0]["content"] if item["type"] == "text")
            prefix = self.processor.image_token * len(images)
            text = prefix + caption + self.plain_end
            out, mask = self._tokenize_with_spans(text, [(len(prefix), len(text))], images)
        elif self.masking == "generation":
            kwargs = {"images": [images]} if images else {}
            out = self.processor.apply_chat_template(
                [messages],
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                return_tensors="pt",
                processor_kwargs=kwargs,
            )
            mask = out["assistant_masks"][0].bool()
        else:
            text, spans = self._prefix_spans(messages)
            out, mask = self._tokenize_with_spans(text, spans, images)
        input_ids = out["input_ids"][0]
        is_image = input_ids == self.image_token_id
        expected = len(images) * self.processor.image_seq_length
        if int(is_image.sum()) != expected:  # e.g. a literal image token inside the text
            raise BadSampleError(
                "image_count_mismatch", f"{int(is_image.sum())} image tokens in the text, expected {expected}"
            )
        labels = input_ids.masked_fill(~mask | is_image, IGNORE_INDEX)
        if not (labels != IGNORE_INDEX).any():
            raise BadSampleError("template", "the rendered conversation supervises no token")
        if len(input_ids) > self.max_length:
            raise BadSampleError(
                "too_long",
                f"{len(input_ids)} tokens ({expected} of them image tokens) > max_length {self.max_length}; "
                "image tokens are never truncated, raise max_length or drop the sample",
            )
        return {"input_ids": input_ids, "labels": labels, "pixel_values": out.get("pixel_values") if images else None}

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        encoded, kept = [], []
        for feature in features:
            try:
                encoded.append(self._encode(feature))
                kept.append(feature)
            except BadSampleError as error:
                error = error.located(feature.get("id"), feature.get("source"))
                if self.on_bad_sample == "error":
                    raise error from None
                self._skips.add(error.reason)
                logger.warning("Dropping %s", error)
            except Exception as error:  # not a known data problem: never skipped, but say which sample
                raise ValueError(
                    f"could not encode sample id={feature.get('id')!r} ({feature.get('source')}): {error}"
                ) from error
        if not encoded:
            raise ValueError(f"every sample of this batch was dropped ({len(features)} samples); see the warnings")
        longest = max(len(e["input_ids"]) for e in encoded)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(encoded), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        labels = torch.full((len(encoded), longest), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(encoded):  # right padding
            n = len(e["input_ids"])
            input_ids[row, :n] = e["input_ids"]
            attention_mask[row, :n] = 1
            labels[row, :n] = e["labels"]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        pixel_values = [e["pixel_values"] for e in encoded if e["pixel_values"] is not None]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values, dim=0)
        # ---- latent cache (train/latent_cache.py): cached teacher (mean, std) per image, in pixel_values order;
        # also (empty) for a batch without images, so every rank skips the teacher. A miss raises LatentCacheMiss.
        if self.latent_cache is not None:
            batch["teacher_targets"] = self.latent_cache.targets_for(kept)
        return batch


def skipped_summary(*objects) -> dict[str, int]:
    """Merge the `skipped` counts of datasets and collators, e.g. `skipped_summary(dataset, collator)`."""
    total = Counter()
    for obj in objects:
        total.update(obj.skipped)
    return dict(total)


# ----------------------------------------------------------------------------- samplers
def _megabatches(indices: list[int], lengths: Sequence[int], batch_size: int, mega_batch_mult: int) -> list[list[int]]:
    size = mega_batch_mult * batch_size
    return [sorted(indices[i : i + size], key=lambda j: -abs(lengths[j])) for i in range(0, len(indices), size)]


def _default_mult(n: int, batch_size: int) -> int:
    return max(1, min(n // (batch_size * 4), 50))


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, mega_batch_mult: int | None = None
) -> list[int]:
    """A permutation of `range(len(lengths))`: shuffled, cut into mega-batches of `mega_batch_mult * batch_size`,
    each sorted longest first; the mega-batch holding the longest sample goes first (out-of-memory shows at once)."""
    if not lengths:
        return []
    mult = mega_batch_mult or _default_mult(len(lengths), batch_size)
    megabatches = _megabatches(torch.randperm(len(lengths), generator=generator).tolist(), lengths, batch_size, mult)
    longest = max(range(len(megabatches)), key=lambda k: abs(lengths[megabatches[k][0]]))
    megabatches[0], megabatches[longest] = megabatches[longest], megabatches[0]
    return [i for megabatch in megabatches for i in megabatch]


def modality_length_grouped_indices(
    modality_lengths: Sequence[int], batch_size: int, generator: torch.Generator, mega_batch_mult: int | None = None
) -> list[int]:
    """A permutation of `range(len(modality_lengths))` whose consecutive chunks of `batch_size` are all-image
    (length > 0) or all-text (length < 0) samples, length-grouped within each modality, chunks in random order.
    Only the tail can mix: the leftover image samples then the leftover text samples (fewer than `batch_size` each)
    come last, so at most one batch per epoch mixes modalities (and a final partial batch is the last one)."""
    batches, tails = [], []
    for keep in (lambda length: length > 0, lambda length: length < 0):
        subset = [i for i, length in enumerate(modality_lengths) if keep(length)]
        if not subset:
            continue
        order = length_grouped_indices([modality_lengths[i] for i in subset], batch_size, generator, mega_batch_mult)
        order = [subset[i] for i in order]
        full = len(order) // batch_size * batch_size
        batches += [order[i : i + batch_size] for i in range(0, full, batch_size)]
        tails += order[full:]
    if any(length == 0 for length in modality_lengths):
        raise ValueError("modality lengths must be non-zero (positive: with images, negative: text-only)")
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [i for k in permutation for i in batches[k]] + tails


class _SeededSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_mult: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int):
        """Reshuffle per epoch (called by accelerate's dataloader wrapper and by hand in custom loops)."""
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + self.epoch)

    def __len__(self) -> int:
        return len(self.lengths)


class LengthGroupedSampler(_SeededSampler):
    """Batches of similar estimated length (`dataset.lengths`), like transformers' `LengthGroupedSampler` but
    deterministic given `seed` and `set_epoch`. `batch_size`: the per-device batch size of the dataloader (batches
    are consecutive chunks of the order, which accelerate deals out to the ranks whole)."""

    def __iter__(self) -> Iterator[int]:
        return iter(length_grouped_indices(self.lengths, self.batch_size, self._generator(), self.mega_batch_mult))


class ModalityLengthGroupedSampler(_SeededSampler):
    """Batches of only image samples or only text samples (`dataset.modality_lengths`), length-grouped within each
    modality, as LLaVA's `group_by_modality_length`.

    Trade-off with ROSS: an all-text batch has no image, so the visual loss has nothing to reconstruct; the model still
    runs the denoiser on a dummy input at zero weight (needed so every rank runs the same modules under DDP / ZeRO-3).
    Those steps cost a denoiser pass and carry no reconstruction signal, and the visual-loss curve gets gaps; in
    exchange image and text samples are not padded to each other's lengths. Mixed batches (plain
    `LengthGroupedSampler`) give every step some reconstruction signal.
    """

    def __iter__(self) -> Iterator[int]:
        return iter(
            modality_length_grouped_indices(self.lengths, self.batch_size, self._generator(), self.mega_batch_mult)
        )
