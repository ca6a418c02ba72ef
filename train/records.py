"""The parsed records of a source, stored once on disk: parsed in parallel, read back without a memory map.

Parsing (`train/sources.py`, `parse_all`) runs once per data file and settings, in a forked child of the local main
process, which splits the records into chunks of `BATCH` parsed by a pool of `num_proc` forked processes and writes
their results in source order (same rows whatever `num_proc`). A store is two files in the cache folder::

    records-<key>.arrow   what loading reads, one row per record (a `datasets` Arrow file, memory-mapped at load):
        num_images  images of the record (int32)
        text_chars  characters of text (for the cheap length estimate)
        images      image paths, resolved (JSON sources; HF sources keep their images in the HF dataset)
        changed     the parse rules that changed the record (e.g. `dropped_leading_gpt_turn`)
        reason      the `SKIP_REASONS` entry of a bad record, else null
        detail      what is wrong with it
        row_bytes   size of the record's row in `records-<key>.rows`
    records-<key>.rows    what a fetch reads: per record, in order, one UTF-8 JSON object
        {"messages": parsed HF chat messages (null for a bad record), "id": str | null,
         "location": "file:line" | "file:#index", "images": [paths], "depth": [positions of depth maps]}

A fetch (`RecordRows`) reads one row with `os.pread` at its offset (the cumulative sum of `row_bytes`, one int64 per
record in memory): the rows file is never mapped, so the pages a DataLoader worker reads stay in the page cache,
not in any process's memory (PSS), and memory does not grow over an epoch, in a rank or in its workers. Each process
opens its own file handle (again after a fork).

The key hashes the source's identity (file contents, or a `datasets` fingerprint), its format, image folder and
placement, whether image files were checked, and `STORE_VERSION`. A second start opens the files (no parsing); with
`check_image_files` the image files of good records are checked again (one `stat` each), so a deleted image is still
a named `missing_image` at load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np


logger = logging.getLogger(__name__)

STORE_VERSION = 3  # 2: the `changed` column; 3: rows in their own file, read with `pread`
# Records per Arrow record batch, and per task of a parsing process.
BATCH = 10_000
# Seconds between progress lines of the parse.
PROGRESS_EVERY_S = 10.0
# Parsing processes at most (default: the CPUs available, the node's other ranks wait for the parse).
MAX_NUM_PROC = 32
# What the last parse in this process cost (read by `bench/data_scale.py`): seconds and CPU seconds by part.
LAST_BUILD: dict = {}

__all__ = ["STORE_VERSION", "RecordRows", "open_records", "records_key", "source_identity"]


def _features():
    import datasets

    return datasets.Features(
        {
            "num_images": datasets.Value("int32"),
            "text_chars": datasets.Value("int64"),
            "images": datasets.List(datasets.Value("string")),
            "changed": datasets.List(datasets.Value("string")),
            "reason": datasets.Value("string"),
            "detail": datasets.Value("string"),
            "row_bytes": datasets.Value("int64"),
        }
    )


class RecordRows:
    """`rows[i]`: the stored row of record `i` (a fresh dict: messages, id, location, images, depth), read with one
    `os.pread` (no memory map). The file handle is per process: opened on first use and again after a fork, never
    pickled."""

    def __init__(self, path, offsets: np.ndarray):
        self.path, self.offsets = str(path), offsets  # offsets: (num_records + 1,) int64
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> dict:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return json.loads(os.pread(self._fd, end - start, start))

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


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


def _parse_chunk(source, check_files: bool, start: int, stop: int):
    """Records `start..stop` -> (their Arrow record batch, their rows' bytes, CPU seconds spent here)."""
    import pyarrow as pa

    from ross.train.sources import BadSampleError

    cpu = time.process_time()
    columns = {name: [] for name in _features()}
    rows = []
    for local, parsed in source.parse_all(check_files, start=start, stop=stop):
        extras = source.row_extras(local)  # id, location, images, depth, changed
        bad = isinstance(parsed, BadSampleError)
        row = {"messages": None if bad else parsed.messages, "id": extras["id"], "location": extras["location"],
               "images": extras["images"], "depth": extras["depth"]}  # fmt: skip
        rows.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode())
        columns["num_images"].append(0 if bad else parsed.num_images)
        columns["text_chars"].append(0 if bad else _text_chars(parsed.messages))
        columns["images"].append(extras["images"])
        columns["changed"].append(extras["changed"])
        columns["reason"].append(parsed.reason if bad else None)
        columns["detail"].append(parsed.detail if bad else None)
        columns["row_bytes"].append(len(rows[-1]))
    batch = pa.RecordBatch.from_pydict(columns, schema=_features().arrow_schema)
    return batch, b"".join(rows), time.process_time() - cpu


_WORK = None  # (source, check_files) of the forked parsing processes


def _parse_task(start: int):
    source, check_files = _WORK
    return _parse_chunk(source, check_files, start, min(start + BATCH, len(source)))


def _build(source, check_files: bool, path: Path, num_proc: int) -> dict:
    """Parse the source into `path` and its rows file, in `num_proc` forked processes (1: here), chunks written in
    source order; both files are written to temporary files and renamed (a killed run leaves no half store).
    Returns what it cost (`LAST_BUILD`)."""
    global _WORK
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    wall, cpu = time.perf_counter(), time.process_time()
    count = len(source)  # a JSON source reads its file here, before the fork: the processes share it
    stats = {"records": count, "read_s": time.perf_counter() - wall, "read_cpu_s": time.process_time() - cpu}
    starts = range(0, count, BATCH)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = {}
    for suffix in (".arrow.tmp", ".rows.tmp"):
        fd, tmp[suffix] = tempfile.mkstemp(dir=path.parent, suffix=suffix)
        os.close(fd)
    pool, worker_cpu, done, last = None, 0.0, 0, time.perf_counter()
    _WORK = (source, check_files)
    try:
        if num_proc > 1 and len(starts) > 1 and "fork" in multiprocessing.get_all_start_methods():
            pool = multiprocessing.get_context("fork").Pool(min(num_proc, len(starts)))
            parts = pool.imap(_parse_task, starts)  # in order
        else:
            parts = map(_parse_task, starts)
        writer = ArrowWriter(features=_features(), path=tmp[".arrow.tmp"], writer_batch_size=BATCH)
        with open(tmp[".rows.tmp"], "wb") as rows:
            for batch, blob, seconds in parts:
                writer.write_table(pa.Table.from_batches([batch]))
                rows.write(blob)
                worker_cpu, done = worker_cpu + seconds, done + batch.num_rows
                if time.perf_counter() - last >= PROGRESS_EVERY_S:
                    logger.warning("Parsing %s: %d/%d records", source.path, done, count)
                    last = time.perf_counter()
        writer.finalize()
        writer.close()
        os.replace(tmp[".rows.tmp"], _rows_path(path))
        os.replace(tmp[".arrow.tmp"], path)  # last: the store exists once both files do
    finally:
        _WORK = None
        if pool is not None:  # every chunk was received, or an error stops the others
            pool.terminate()
            pool.join()
        for name in tmp.values():
            if os.path.exists(name):
                os.remove(name)
    own_cpu = time.process_time() - cpu
    stats.update(
        num_proc=num_proc if pool is not None else 1, parse_cpu_s=worker_cpu, wall_s=time.perf_counter() - wall,
        # this process's own CPU besides reading and parsing: receiving the chunks and writing them
        write_cpu_s=own_cpu - stats["read_cpu_s"] - (worker_cpu if pool is None else 0.0),
    )
    return stats


def _rows_path(path: Path) -> Path:
    return path.with_suffix(".rows")


def _build_child(connection, source, check_files: bool, path: Path, num_proc: int) -> None:
    try:
        connection.send(("ok", _build(source, check_files, path, num_proc)))
    except BaseException as error:  # sent to the training process, raised there
        import pickle
        import traceback

        try:
            pickle.dumps(error)
        except Exception:
            error = RuntimeError("".join(traceback.format_exception(error)))
        connection.send(("error", error))


def _build_in_child(source, check_files: bool, path: Path, num_proc: int) -> dict:
    """`_build` in a forked process where the platform has fork: the raw JSON records (several KB each as Python
    objects) and the heap they fragment then never stay in the training process; its errors are raised here. (A
    `Process`, not a `Pool`: a pool's daemonic worker could not start the parsing processes.)"""
    if "fork" not in multiprocessing.get_all_start_methods():
        return _build(source, check_files, path, num_proc)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_build_child, args=(send, source, check_files, path, num_proc))
    child.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        child.join()
        raise RuntimeError(f"the process parsing {source.path} died (exit code {child.exitcode}) before writing "
                           f"{path}: out of memory?") from None  # fmt: skip
    child.join()
    if status == "error":
        raise value
    return value


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


def default_num_proc() -> int:
    """Parsing processes: the CPUs this process may use (the node's other ranks wait), at most `MAX_NUM_PROC`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_NUM_PROC, cpus))


def open_records(source, check_files: bool, cache_dir, num_proc: int | None = None) -> tuple:
    """The source's store, built on first use in `num_proc` processes (default `default_num_proc()`): the Arrow
    table of load-time columns (a memory-mapped `datasets.Dataset`), the `RecordRows` a fetch reads, and a dict
    `{row: missing-image detail}` of images deleted since it was built."""
    import datasets

    path = Path(cache_dir) / f"records-{records_key(source, check_files)}.arrow"
    start = time.perf_counter()
    built = not (path.exists() and _rows_path(path).exists())
    LAST_BUILD.clear()
    if built:
        num_proc = default_num_proc() if num_proc is None else max(1, int(num_proc))
        LAST_BUILD.update(_build_in_child(source, check_files, path, num_proc))
    records = datasets.Dataset.from_file(str(path), in_memory=False)
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(records.data.column("row_bytes").to_numpy(), out=offsets[1:])
    size = _rows_path(path).stat().st_size
    if offsets[-1] != size:
        raise ValueError(f"{_rows_path(path)} has {size} bytes, {path} says {offsets[-1]}: the store is damaged; "
                         "delete both files to parse the data again.")  # fmt: skip
    missing = dict(_recheck_files(records, check_files)) if not built else {}
    logger.info(
        "%s %s: %d records in %.1fs (%s)%s", "Parsed" if built else "Opened", source.path, len(records),
        time.perf_counter() - start, path, f", {LAST_BUILD}" if built else "",
    )  # fmt: skip
    return records, RecordRows(_rows_path(path), offsets), missing
