"""Where training samples come from: LLaVA / messages JSON(L) files and HF `datasets`, each record parsed once.

A source reads its records at load and parses each one exactly once (`parse_all`) into a :class:`ParsedSample`:
HF chat messages, checked against the record's images::

    [{"role": "system"|"user"|"assistant", "content": [{"type": "image"} | {"type": "text", "text": str}]}]

with one `{"type": "image"}` per image, in image order. The raw records are not kept.

A *creation* sample (caption -> image, the text-to-image data of the generative variant,
`objective_config.condition="queries"`) holds one `{"type": "query"}` item in an assistant turn instead: the image the
assistant creates, which the processor expands to the learnable queries. Its one image is the target, never shown to
the LLM, so it has no `<image>` placeholder. In LLaVA JSON the gpt turn is the placeholder `"<query>"`, in messages
format the item (or the same placeholder in a string)::

    {"id": "c1", "image": "cat.png", "conversations": [
        {"from": "human", "value": "Create an image of: a cat on a mat."}, {"from": "gpt", "value": "<query>"}]}
    {"id": "c1", "images": ["cat.png"], "messages": [
        {"role": "user", "content": "Create an image of: a cat on a mat."},
        {"role": "assistant", "content": [{"type": "query"}]}]}

At fetch time a source only reads the sample's images (`load_images`), decoded, turned upright (EXIF) and converted to RGB by :func:`decode_image`
(`upright_rgb`, the rule every ROSS path shares; the processor then sees upright RGB and changes nothing). The images
a record lists in `depth_images` (0-based positions in its images, e.g. `[1]` for SpatialBot's `[rgb, depth]`) are
depth maps, turned into 3 channels by the depth rule `depth_to_rgb` instead.

Errors are :class:`BadSampleError` with a reason from `SKIP_REASONS`; the dataset adds the sample id and file.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from modeling_ross.processing_ross import EXIF_ORIENTATION, depth_to_rgb, upright_rgb


logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
QUERY_PLACEHOLDER = "<query>"
_PLACEHOLDERS = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(QUERY_PLACEHOLDER)})")
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
MESSAGE_ROLES = ("system", "user", "assistant")
# Every reason a sample can be bad for; the first four are found at load, the corrupt / missing image at fetch, the
# last two in the collator.
SKIP_REASONS = (
    "invalid_record",
    "no_assistant_turn",
    "image_count_mismatch",
    "missing_image",
    "corrupt_image",
    "too_long",
    "template",
)
_DATASET_FOLDER_MARKERS = ("state.json", "dataset_dict.json", "dataset_info.json")

__all__ = [
    "SKIP_REASONS",
    "BadSampleError",
    "DataFileError",
    "drop_leading_gpt_turn",
    "ParsedSample",
    "JsonSource",
    "HFSource",
    "open_source",
    "llava_to_messages",
    "decode_image",
    "image_size",
    "is_creation",
    "row_sample_id",
]


class BadSampleError(ValueError):
    """A sample that cannot be trained on. The message names the sample id and its file (`source`)."""

    def __init__(self, reason: str, detail: str | None = None, sample_id=None, source=None):
        if detail is None:  # re-raised by a DataLoader worker as `BadSampleError(text)`: keep the original message
            lines = str(reason).strip().splitlines() or [""]
            self.reason, self.detail, self.sample_id, self.source = None, None, None, None
            super().__init__(lines[-1].split("BadSampleError: ", 1)[-1])
            return
        self.reason, self.detail, self.sample_id, self.source = reason, detail, sample_id, source
        super().__init__(f"bad sample id={sample_id!r} ({source}) [{reason}]: {detail}")

    def located(self, sample_id, source) -> "BadSampleError":
        return BadSampleError(self.reason, self.detail, sample_id, source)


class DataFileError(ValueError):
    """A data file that cannot be read as JSON / JSONL: the message names the file, line and column, in one line."""


@dataclass
class ParsedSample:
    """One record after parsing: `messages` in the format above (checked against the images) and `num_images`."""

    messages: list[dict]
    num_images: int


# ----------------------------------------------------------------------------- record -> messages
def _content_items(content, image_placement: str = "inplace") -> list[dict]:
    """A string (with `<image>` / `<query>` placeholders) or a list of items/strings -> a list of image/query/text
    items.

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
        items, after_image = [], False
        for piece in _PLACEHOLDERS.split(content):  # text, placeholder, text, ...
            if piece == IMAGE_PLACEHOLDER:
                items.append({"type": "image"})
            elif piece == QUERY_PLACEHOLDER:
                items.append({"type": "query"})
            else:
                piece = piece[1:] if after_image and piece.startswith("\n") else piece
                if piece:
                    items.append({"type": "text", "text": piece})
            after_image = piece == IMAGE_PLACEHOLDER
        return items
    if not isinstance(content, (list, tuple)):
        raise BadSampleError(
            "invalid_record", f"message content must be a string or a list, got {type(content).__name__}"
        )
    items = []
    for item in content:
        if isinstance(item, str):
            items += _content_items(item)
        elif isinstance(item, Mapping) and item.get("type") in ("image", "query"):
            items.append({"type": item["type"]})
        elif isinstance(item, Mapping) and item.get("type") == "text" and isinstance(item.get("text"), str):
            items += _content_items(item["text"])  # a placeholder inside a text item is an image too
        else:
            raise BadSampleError("invalid_record", f"unsupported content item {item!r}")
    has_query = any(item["type"] == "query" for item in items)  # kept for `_check_creation` to refuse
    if image_placement == "front" and sum(item["type"] == "image" for item in items) == 1 and not has_query:
        text = "".join(item["text"] for item in items if item["type"] == "text").strip()
        items = [{"type": "image"}] + ([{"type": "text", "text": text}] if text else [])
    return items


DROPPED_LEADING_GPT_TURN = "dropped_leading_gpt_turn"


def drop_leading_gpt_turn(conversations) -> tuple[list, bool]:
    """The authors' rule for a LLaVA record whose first turn is not the human's (llava/train/train.py,
    `preprocess_*`: `if roles[source[0]["from"]] != conv.roles[0]: source = source[1:]`): that turn is dropped, so an
    answer is never trained before the image and the question it answers. Returns `(conversations, dropped)`.

    A second non-human turn before any human one is refused (`BadSampleError`): the authors' role assertion fails on
    it; a record that is only a gpt turn has nothing left to supervise. A leading `system` turn is kept (our template
    renders it as the system prompt).
    """
    def role(turn):
        return LLAVA_ROLES.get(turn.get("from")) if isinstance(turn, Mapping) else None

    if not isinstance(conversations, list) or not conversations or role(conversations[0]) != "assistant":
        return conversations, False
    rest = conversations[1:]
    if not rest:
        raise BadSampleError("no_assistant_turn", "the only turn is a gpt turn, which is dropped as the authors' "
                             "preprocessing drops a leading non-human turn: nothing is left to supervise")
    if role(rest[0]) == "assistant":
        raise BadSampleError("invalid_record", "turns 0 and 1 are both gpt turns before any human turn (the authors "
                             "drop one leading non-human turn; two would train answers before their question)")
    return rest, True


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


def is_creation(messages: list[dict]) -> bool:
    """Whether parsed messages are a creation sample (a `{"type": "query"}` item: its image is the target)."""
    return any(item["type"] == "query" for m in messages for item in m["content"])


def _check_creation(messages: list[dict], num_images: int) -> None:
    """A creation sample: one query item, in an assistant turn, no `<image>` placeholder, one (target) image."""
    roles = [m["role"] for m in messages for item in m["content"] if item["type"] == "query"]
    if roles != ["assistant"]:
        where = ", ".join(f"a {role} turn" for role in roles)
        raise BadSampleError(
            "invalid_record",
            f"a creation sample needs exactly one {QUERY_PLACEHOLDER} placeholder, in an assistant turn (the image it "
            f"creates); found {len(roles)}: in {where}",
        )
    placeholders = sum(item["type"] == "image" for m in messages for item in m["content"])
    if placeholders:
        raise BadSampleError(
            "invalid_record",
            f"a creation sample ({QUERY_PLACEHOLDER}) has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s): its image "
            "is the target the queries reconstruct, not an input; write comprehension turns as separate samples",
        )
    if num_images != 1:
        raise BadSampleError(
            "image_count_mismatch", f"a creation sample needs exactly one (target) image, got {num_images}"
        )


def _check_against_images(messages: list[dict], num_images: int) -> ParsedSample:
    """Check the conversation against its images; with no placeholder at all, put the images first (as LLaVA does).
    A creation sample is checked by `_check_creation` instead."""
    if not any(m["role"] == "assistant" for m in messages):
        raise BadSampleError("no_assistant_turn", "the conversation has no assistant turn, nothing to supervise")
    if is_creation(messages):
        _check_creation(messages, num_images)
        return ParsedSample(messages, num_images)
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
    return ParsedSample(messages, num_images)


def _check_files_exist(paths) -> None:
    for path in paths:
        if not os.path.isfile(path):
            raise BadSampleError("missing_image", f"image file {path} does not exist")


# ----------------------------------------------------------------------------- image decoding
def decode_image(image, depth: bool = False) -> Image.Image:
    """Open (path, `datasets` `{"bytes", "path"}` dict) or take (PIL) an image, decode it fully (so corrupt or
    truncated files fail here, in the dataloader worker) and turn it upright (EXIF) in RGB (`upright_rgb`; a depth map
    with `depth=True`: `depth_to_rgb`)."""
    rule = depth_to_rgb if depth else upright_rgb

    def decode(opened: Image.Image) -> Image.Image:
        opened.load()
        return rule(opened)

    return _read_image(image, decode, "decode")


def _read_image(image, read, doing: str):
    """`read(PIL image)` of an image given as `decode_image` and `image_size` take it: a path, a `datasets`
    `{"bytes", "path"}` dict (`Image(decode=False)`) or a PIL image. A missing file, an unsupported value, or `read`
    failing (`doing`: what it does, for the message) is a `BadSampleError` naming the file."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.exists(path):
            raise BadSampleError("missing_image", f"image file {path} does not exist")
        try:
            with Image.open(path) as opened:
                return read(opened)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
            raise BadSampleError("corrupt_image", f"cannot {doing} image file {path}: {error}") from error
    if isinstance(image, Mapping) and ("bytes" in image or "path" in image):
        if image.get("bytes") is None:
            return _read_image(image["path"], read, doing)
        try:
            with Image.open(io.BytesIO(image["bytes"])) as opened:
                return read(opened)
        except Exception as error:
            raise BadSampleError("corrupt_image", f"cannot {doing} image: {error}") from error
    if not isinstance(image, Image.Image):
        raise BadSampleError("invalid_record", f"unsupported image value of type {type(image).__name__}")
    try:
        return read(image)
    except Exception as error:
        raise BadSampleError("corrupt_image", f"cannot {doing} image: {error}") from error


# EXIF orientations that `ImageOps.exif_transpose` turns by 90 degrees (transpose, rotate 270, transverse, rotate 90).
_SIDEWAYS = (5, 6, 7, 8)


def image_size(image) -> tuple[int, int]:
    """`(height, width)` of an image as `decode_image` will give it (EXIF orientation applied, which both of its rules
    do), read from the file's header without decoding its pixels (PIL opens lazily). Takes what `decode_image` takes;
    a missing or unreadable file is a `BadSampleError` as there (a file whose pixels are truncated is found at
    fetch)."""
    return _read_image(image, _upright_size, "read the header of")


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    if _orientation(image) in _SIDEWAYS:
        return width, height
    return height, width


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation `upright_rgb` applies. A PNG's eXIf chunk may follow the pixel data, and PIL's `getexif`
    then decodes the whole image to reach it; the chunk headers are walked instead (PIL's `ChunkStream`), seeking
    past the data."""
    if image.format != "PNG" or "exif" in image.info or getattr(image, "fp", None) is None:
        return image.getexif().get(EXIF_ORIENTATION, 1)
    fp = image.fp
    fp.seek(8)  # after the signature
    stream = PngImagePlugin.ChunkStream(fp)
    while True:
        cid, position, length = stream.read()
        if cid == b"eXIf":
            exif = Image.Exif()
            exif.load(fp.read(length))
            return exif.get(EXIF_ORIENTATION, 1)
        if cid == b"IEND":
            return 1
        fp.seek(position + length + 4)  # the chunk's data and CRC


# ----------------------------------------------------------------------------- sources
class JsonSource:
    """One LLaVA-format or messages-format JSON / JSONL file. `parse_all` reads and parses it once; the dataset then
    stores the parsed rows (`train/records.py`) and `attach`es them, after which the source reads ids, locations
    (`file:line`, 1-based, for JSONL; `file:#index`, 0-based, for a JSON array) and image paths from that store's
    rows."""

    def __init__(self, path: str, image_folder: str | None, format: str, image_placement: str = "front"):
        self.path = path
        self.image_placement = image_placement
        self.image_folder = image_folder if image_folder is not None else os.path.dirname(os.path.abspath(path))
        self.requested_format = format
        self.format = None if format == "auto" else format
        self._records = self._raw_locations = None
        self.records = self.rows = None  # the parsed store (load-time table, rows read at fetch), once attached
        self.locations = _StoreColumn(self, "location")
        self._row = {}
        self.changes: Counter = Counter()  # records changed at parse, by rule (for the run summary)

    def _read(self) -> None:
        if self._records is not None:
            return
        self._records, self._raw_locations = _read_json_records(self.path)
        if self.format is None:
            first = next((r for r in self._records if isinstance(r, Mapping)), {})
            self.format = "messages" if "messages" in first and "conversations" not in first else "llava"

    def attach(self, records, rows) -> None:
        """Read everything from the parsed store from now on (the raw records are gone). The good records that a
        parse rule changed are counted from the store (the parse may have run in another process, or in an earlier
        run), for the run summary, and said once."""
        self.records, self.rows, self._records, self._raw_locations, self._row = records, rows, None, None, {}
        table = records.data
        rules = zip(table.column("reason").to_pylist(), table.column("changed").to_pylist())
        self.changes = Counter(rule for reason, changed in rules if reason is None for rule in changed or ())
        if self.changes[DROPPED_LEADING_GPT_TURN]:
            logger.warning(
                "%s: %d record(s) start with a gpt turn; it was dropped, as the authors' preprocessing does "
                "(counted in the run summary's 'changed').", self.path, self.changes[DROPPED_LEADING_GPT_TURN],
            )

    def __len__(self):
        if self.records is not None:
            return len(self.records)
        self._read()
        return len(self._raw_locations)

    def sample_id(self, index: int) -> str:
        if self.records is None:
            return self._row_id(index) or self._raw_locations[index]
        return row_sample_id(self.rows[index])

    def row(self, index: int) -> dict:
        """The stored row of record `index` (messages, id, location, images, depth; `train/records.py`)."""
        return self.rows[index]

    def _row_id(self, index: int):
        record = self._records[index]
        return str(record["id"]) if isinstance(record, Mapping) and record.get("id") is not None else None

    def row_extras(self, index: int) -> dict:
        """The stored columns of record `index` besides its messages (right after `parse_all` yielded it)."""
        images, depth, changed = self._row.pop(index, ([], (), []))
        return {"id": self._row_id(index), "location": self._raw_locations[index], "images": images,
                "depth": list(depth), "changed": changed}  # fmt: skip

    def _image_refs(self, record) -> list[str]:
        key = "images" if self.format == "messages" else "image"
        value = record.get(key, record.get("images" if key == "image" else "image"))
        if value is None:
            return []
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BadSampleError("invalid_record", f"'{key}' must be a path or a list of paths")
        return [v if os.path.isabs(v) else os.path.join(self.image_folder, v) for v in values]

    def _messages(self, record) -> tuple[list[dict], list[str]]:
        """The record's messages, and the rules that changed it (see `drop_leading_gpt_turn`)."""
        if self.format == "llava":
            if "conversations" not in record:
                raise BadSampleError("invalid_record", "missing 'conversations'")
            conversations, dropped = drop_leading_gpt_turn(record["conversations"])
            changes = [DROPPED_LEADING_GPT_TURN] if dropped else []
            return llava_to_messages(conversations, self.image_placement), changes
        if "messages" not in record:
            raise BadSampleError("invalid_record", "missing 'messages'")
        return _normalize_messages(record["messages"], self.image_placement), []

    def _parse(self, index: int, check_files: bool) -> ParsedSample:
        record = self._records[index]
        if not isinstance(record, Mapping):
            raise BadSampleError("invalid_record", f"a sample must be a JSON object, got {type(record).__name__}")
        paths = self._image_refs(record)
        messages, changes = self._messages(record)
        parsed = _check_against_images(messages, len(paths))
        depth = _depth_positions(record.get("depth_images"), len(paths))
        if check_files:
            _check_files_exist(paths)
        self._row[index] = (paths, depth, changes)
        self.changes.update(changes)
        return parsed

    def parse_all(
        self, check_files: bool, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, ParsedSample | BadSampleError]]:
        """Yield `(index, ParsedSample or BadSampleError)` for records `start..stop` (default: all; each raw record
        is released once parsed)."""
        self._read()
        for index in range(start, len(self._raw_locations) if stop is None else stop):
            try:
                yield index, self._parse(index, check_files)
            except BadSampleError as error:
                yield index, error
            if index > start:
                self._records[index - 1] = None

    def load_images(self, index: int, row: dict | None = None) -> list[Image.Image]:
        """The images of record `index` (`row`: its stored row, when the caller has read it already)."""
        row = self.rows[index] if row is None else row
        depth = row["depth"] or ()
        return [decode_image(path, k in depth) for k, path in enumerate(row["images"] or [])]

    def image_sizes(self, index: int, row: dict | None = None) -> list[tuple[int, int]]:
        """`(height, width)` of each image of record `index` as `load_images` gives it, from the files' headers."""
        row = self.rows[index] if row is None else row
        return [image_size(path) for path in row["images"] or []]


def row_sample_id(row: dict) -> str:
    """A stored row's sample id: its record's id, else its location (`file:line` / `file:#index`)."""
    return row["id"] if row["id"] is not None else row["location"]


class _StoreColumn:
    """`source.locations[i]`: one field of the attached store's rows (or the raw read before it)."""

    def __init__(self, source, name: str):
        self.source, self.name = source, name

    def __getitem__(self, index: int) -> str:
        if self.source.records is None:
            self.source._read()
            return self.source._raw_locations[index]
        return self.source.rows[index][self.name]

    def __len__(self) -> int:
        return len(self.source)


def _depth_positions(value, num_images: int) -> tuple[int, ...]:
    """A record's `depth_images` -> the positions of its depth maps, checked against its image count."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(type(k) is int and 0 <= k < num_images for k in value):
        raise BadSampleError(
            "invalid_record", f"'depth_images' must be a list of image positions in 0..{num_images - 1}, got {value!r}"
        )
    return tuple(value)


def _read_json_records(path: str) -> tuple[list, list[str]]:
    """The records of a JSON array or a JSONL file, and where each one is (`file:line` / `file:#index`). A file that
    is empty, not UTF-8, or not valid JSON (e.g. truncated) is a one-line `DataFileError` naming file, line and
    column."""
    records, locations = [], []
    if path.endswith(".jsonl"):
        with open(path, "rb") as f:
            for line_number, raw in enumerate(f, start=1):
                line = _decode_json_line(path, raw, line_number)
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise DataFileError(f"{path}:{line_number}:{error.colno}: invalid JSON: {error.msg}"
                                            + _cut_short(path, error, line)) from None
                    locations.append(f"{path}:{line_number}")
        if not records:
            raise DataFileError(f"{path}: the file is empty (expected one JSON sample per line)")
        return records, locations
    with open(path, "rb") as f:
        text = _decode_json_line(path, f.read(), 1)
    if not text.strip():
        raise DataFileError(f"{path}: the file is empty (expected a JSON array of samples)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFileError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}"
                            + _cut_short(path, error, text)) from None
    if not isinstance(data, list):
        raise DataFileError(f"{path}: expected a JSON array of samples, got {type(data).__name__}")
    return data, [f"{path}:#{index}" for index in range(len(data))]


def _decode_json_line(path: str, raw: bytes, first_line: int) -> str:
    """`raw` (a whole file from line `first_line`, or one line) as UTF-8 text (a UTF-8 byte-order mark is dropped);
    UTF-16/32 or bytes that are not UTF-8 (latin-1, ...) are a `DataFileError` naming the line and column."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in raw[:4]:
        raise DataFileError(f"{path}:{first_line}:1: the file is UTF-16 or UTF-32, not UTF-8: JSON data files must "
                            "be UTF-8 (re-save it as UTF-8)")
    try:
        return raw.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as error:
        line = first_line + raw.count(b"\n", 0, error.start)
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataFileError(f"{path}:{line}:{column}: not UTF-8 (byte 0x{raw[error.start]:02x}; latin-1 or another "
                            "encoding?): JSON data files must be UTF-8 (re-save it as UTF-8)") from None


def _cut_short(path: str, error: json.JSONDecodeError, text: str) -> str:
    """A hint when the JSON ends before it is complete (a truncated file)."""
    at_end = error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string")  # a string to the end
    return " (the file ends before the JSON is complete: truncated?)" if at_end else ""


class HFSource:
    """A `datasets.Dataset` with a `messages` column, an optional `images` column (PIL images or paths) and an
    optional `depth_images` column (which of them are depth maps). The messages are parsed once at load; images stay
    in the (memory-mapped) dataset until `load_images`."""

    def __init__(self, dataset, name: str, image_folder: str | None, image_placement: str = "front"):
        if "messages" not in dataset.column_names:
            raise ValueError(f"{name}: a datasets source needs a 'messages' column, has {dataset.column_names}")
        self.dataset, self.path, self.image_folder = dataset, name, image_folder
        self.image_placement = image_placement
        # Only this column is read at fetch time: the messages were parsed at load.
        self._images = dataset.select_columns(["images"]) if "images" in dataset.column_names else None
        self._depth = dataset.select_columns(["depth_images"]) if "depth_images" in dataset.column_names else None
        self._image_refs = None  # the images column without decoding (`image_sizes`), made when first needed
        self.locations = _LazyLocations(name)
        self.requested_format = None
        self.records = self.rows = None  # the parsed store (`train/records.py`), once attached
        self._ids = {}

    def attach(self, records, rows) -> None:
        self.records, self.rows = records, rows

    def __len__(self):
        return len(self.dataset)

    def sample_id(self, index: int) -> str:
        if self.records is not None:
            return row_sample_id(self.rows[index])
        value = self._ids.get(index)
        return value if value is not None else f"{self.path}:#{index}"

    def row(self, index: int) -> dict:
        """The stored row of record `index` (messages, id, location; its images stay in the HF dataset)."""
        return self.rows[index]

    def row_extras(self, index: int) -> dict:
        """The stored columns of record `index` besides its messages (right after `parse_all` yielded it); the
        images stay in the HF dataset."""
        return {
            "id": self._ids.pop(index, None), "location": self.locations[index], "images": [], "depth": [], "changed": [],
        }  # fmt: skip

    def _resolve(self, image):
        if isinstance(image, str) and not os.path.isabs(image) and self.image_folder is not None:
            return os.path.join(self.image_folder, image)
        return image

    def parse_all(self, check_files: bool, chunk: int = 1000, start: int = 0, stop: int | None = None):
        """Yield `(index, ParsedSample or BadSampleError)` for records `start..stop` (default: all), reading `images`
        as Arrow list lengths (no decoding, no copy of the image bytes into Python)."""
        # pyarrow comes with `datasets` (the optional `train` extra): only a datasets source needs it.
        import pyarrow.compute as pc

        messages_only = self.dataset.select_columns(["messages"])
        images_arrow = self._images.with_format("arrow") if self._images is not None else None
        inner = getattr(self.dataset.features.get("images"), "feature", None)
        paths_to_check = check_files and getattr(inner, "dtype", None) == "string"
        id_column = self.dataset.select_columns(["id"]) if "id" in self.dataset.column_names else None
        stop = len(messages_only) if stop is None else stop
        for first in range(start, stop, chunk):
            end = min(first + chunk, stop)
            batch = messages_only[first:end]["messages"]
            if id_column is not None:
                ids = id_column[first:end]["id"]
                self._ids = {first + k: None if v is None else str(v) for k, v in enumerate(ids)}
            counts, paths = [0] * len(batch), None
            if images_arrow is not None:
                column = images_arrow[first:end]["images"]
                counts = pc.fill_null(pc.list_value_length(column), 0).to_pylist()
                paths = column.to_pylist() if paths_to_check else None
            for offset, messages in enumerate(batch):
                try:
                    parsed = _check_against_images(_normalize_messages(messages, self.image_placement), counts[offset])
                    if paths is not None:
                        _check_files_exist(self._resolve(ref) for ref in paths[offset] or [])
                    yield first + offset, parsed
                except BadSampleError as error:
                    yield first + offset, error

    def load_images(self, index: int, row: dict | None = None) -> list[Image.Image]:
        images = (self._images[index]["images"] or []) if self._images is not None else []
        depth = _depth_positions(self._depth[index]["depth_images"], len(images)) if self._depth is not None else ()
        return [decode_image(self._resolve(image), k in depth) for k, image in enumerate(images)]

    def image_sizes(self, index: int, row: dict | None = None) -> list[tuple[int, int]]:
        """`(height, width)` of each image of row `index` as `load_images` gives it, without decoding pixels."""
        if self._image_refs is None and self._images is not None:
            self._image_refs = _undecoded(self._images)
        images = (self._image_refs[index]["images"] or []) if self._image_refs is not None else []
        return [image_size(self._resolve(image)) for image in images]


def _undecoded(column):
    """The `images` column with its `datasets.Image` feature set to `decode=False`: `{"bytes", "path"}` per image, whose
    header alone gives the size (`image_size`)."""
    import datasets

    feature = column.features["images"]
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.Image) and inner.decode:
        return column.cast_column("images", type(feature)(datasets.Image(decode=False)))
    return column


class _LazyLocations:
    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, index: int) -> str:
        return f"{self.name}:#{index}"


def open_source(path, image_folder, format: str, split: str, position: int, image_placement: str = "front"):
    """One entry of `data_path` -> a `JsonSource` or an `HFSource`."""
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        suffix = Path(path).suffix.lower()
        if suffix in (".json", ".jsonl", ".parquet", ".arrow", ".csv") and not os.path.isfile(path):
            raise FileNotFoundError(f"data file {path} does not exist")
        if suffix in (".json", ".jsonl"):
            return JsonSource(path, image_folder, format, image_placement)
        if format == "llava":
            raise ValueError(f"{path}: format='llava' needs a .json or .jsonl file")
    # `datasets` is an optional extra (`ross[train]`): JSON / JSONL sources work without it.
    import datasets

    if isinstance(path, datasets.Dataset):
        return HFSource(path, f"datasets.Dataset[{position}]", image_folder, image_placement)
    return HFSource(_load_hf_dataset(datasets, path, split), path, image_folder, image_placement)


def _load_hf_dataset(datasets, path: str, split: str):
    """A `save_to_disk` folder, a parquet / arrow / csv file, a local dataset folder or a Hub dataset id."""
    suffix = Path(path).suffix.lower()
    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, name)) for name in _DATASET_FOLDER_MARKERS):
        dataset = datasets.load_from_disk(path)
        return dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
    if os.path.isfile(path) and suffix in (".parquet", ".arrow", ".csv"):
        builder = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}[suffix]
        return datasets.load_dataset(builder, data_files=path, split=split)
    if os.path.exists(path) or "/" in path:
        return datasets.load_dataset(path, split=split)  # a local dataset folder or a Hub dataset id
    raise FileNotFoundError(f"data path {path} does not exist")
