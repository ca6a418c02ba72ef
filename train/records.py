"""The parsed records of a source, stored once as an Arrow file: memory-mapped, shared by ranks and workers.

Parsing (`train/sources.py`, `parse_all`) runs once per data file and settings; its result is written with `datasets`'
`ArrowWriter` to `<cache_dir>/records-<key>.arrow` and opened with `datasets.Dataset.from_file` (memory-mapped). A
training process then holds no Python object per record: the dataset keeps a few numpy arrays (source, position,
image count, text characters, length) and reads a record's messages from the mapped file when it is fetched, so
memory does not grow with the dataset in every rank, nor again in every forked dataloader worker (numpy arrays and
mapped pages are not copied by reference counting).

Columns, one row per record of the source, in its order::

    messages    JSON of the parsed HF chat messages (null for a bad record)
    num_images  images of the record (int32)
    text_chars  characters of text (for the cheap length estimate)
    id          the record's id (null: none)
    location    "file:line" / "file:#index"
    images      image paths, resolved (JSON sources; HF sources keep their images in the HF dataset)
    depth       positions of depth maps among the images
    changed     the parse rules that changed the record (e.g. `dropped_leading_gpt_turn`)
    reason      the `SKIP_REASONS` entry of a bad record, else null
    detail      what is wrong with it

The key hashes the source's identity (file contents, or a `datasets` fingerprint), its format, image folder and
placement, whether image files were checked, and `STORE_VERSION`. A second start opens the file (no parsing); with
`check_image_files` the image files of good records are checked again (one `stat` each), so a deleted image is still
a named `missing_image` at load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path


logger = logging.getLogger(__name__)

STORE_VERSION = 2  # 2: the `changed` column
# Records per Arrow record batch (also the parse -> write unit).
BATCH = 10_000

__all__ = ["STORE_VERSION", "open_records", "records_key", "source_identity"]


def _features():
    import datasets

    return datasets.Features(
        {
            "messages": datasets.Value("large_string"),
            "num_images": datasets.Value("int32"),
            "text_chars": datasets.Value("int64"),
            "id": datasets.Value("string"),
            "location": datasets.Value("string"),
            "images": datasets.List(datasets.Value("string")),
            "depth": datasets.List(datasets.Value("int32")),
            "changed": datasets.List(datasets.Value("string")),
            "reason": datasets.Value("string"),
            "detail": datasets.Value("string"),
        }
    )


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def source_identity(source) -> str:
    """The source's content identity (memoised on the source: the length pre-pass uses it too)."""
    identity = getattr(source, "_identity", None)
    if identity is None:
        dataset = getattr(source, "dataset", None)
        if dataset is not None:  # an HF dataset: its fingerprint changes with its content
            identity = f"datasets:{getattr(dataset, '_fingerprint', None) or source.path}"
        else:
            identity = f"{os.path.abspath(source.path)}:{file_digest(source.path)}"
        source._identity = identity
    return identity


def records_key(source, check_files: bool) -> str:
    blob = json.dumps(
        {
            "version": STORE_VERSION,
            "source": source_identity(source),
            "format": getattr(source, "requested_format", None),
            "image_folder": os.path.abspath(source.image_folder) if source.image_folder else None,
            "image_placement": source.image_placement,
            "check_files": bool(check_files),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _text_chars(messages: list[dict]) -> int:
    return sum(len(item["text"]) for m in messages for item in m["content"] if item["type"] == "text")


def _rows(source, check_files: bool):
    """Parse every record once (`source.parse_all`) and yield column batches of at most `BATCH` rows."""
    from ross.train.sources import BadSampleError

    columns = {name: [] for name in _features()}
    for local, parsed in source.parse_all(check_files):
        row = source.row_extras(local)  # id, location, images, depth, changed
        if isinstance(parsed, BadSampleError):
            row.update(messages=None, num_images=0, text_chars=0, reason=parsed.reason, detail=parsed.detail)
        else:
            row.update(
                messages=json.dumps(parsed.messages, ensure_ascii=False),
                num_images=parsed.num_images,
                text_chars=_text_chars(parsed.messages),
                reason=None,
                detail=None,
            )
        for name, values in columns.items():
            values.append(row[name])
        if len(columns["messages"]) >= BATCH:
            yield columns
            columns = {name: [] for name in columns}
    if columns["messages"]:
        yield columns


def _build(source, check_files: bool, path: Path):
    """Parse the source into `path` (written to a temporary file and renamed: a killed run leaves no half file)."""
    from datasets.arrow_writer import ArrowWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".arrow.tmp")
    os.close(fd)
    try:
        writer = ArrowWriter(features=_features(), path=tmp, writer_batch_size=BATCH)
        for batch in _rows(source, check_files):
            writer.write_batch(batch)
        writer.finalize()
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_BUILD = None  # (source, check_files, path) for the forked builder


def _build_forked():
    _build(*_BUILD)


def _build_in_child(source, check_files: bool, path: Path) -> None:
    """`_build` in a forked process where the platform has fork: the raw JSON records (several KB each as Python
    objects) and the heap they fragment then never stay in the training process; its errors are raised here."""
    global _BUILD
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return _build(source, check_files, path)
    _BUILD = (source, check_files, path)
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            pool.apply(_build_forked)
    finally:
        _BUILD = None


def _recheck_files(records, check_files: bool):
    """On a reused store: image files of good records checked again; yields (row, detail) of each missing one."""
    if not check_files:
        return
    table = records.data
    for start in range(0, len(records), BATCH):
        chunk = table.slice(start, BATCH)
        reasons = chunk.column("reason").to_pylist()
        for offset, paths in enumerate(chunk.column("images").to_pylist()):
            if reasons[offset] is None:
                for image in paths or []:
                    if not os.path.isfile(image):
                        yield start + offset, f"image file {image} does not exist"
                        break


def open_records(source, check_files: bool, cache_dir) -> tuple:
    """The source's records store (a memory-mapped `datasets.Dataset`, built on first use) and a dict
    `{row: missing-image detail}` of images deleted since it was built."""
    import datasets

    path = Path(cache_dir) / f"records-{records_key(source, check_files)}.arrow"
    start = time.perf_counter()
    built = not path.exists()
    if built:
        _build_in_child(source, check_files, path)
    records = datasets.Dataset.from_file(str(path), in_memory=False)
    missing = dict(_recheck_files(records, check_files)) if not built else {}
    logger.info(
        "%s %s: %d records in %.1fs (%s)", "Parsed" if built else "Opened", source.path, len(records),
        time.perf_counter() - start, path,
    )
    return records, missing
