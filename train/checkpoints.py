"""Which checkpoint a run resumes from, and the run totals a resumed run needs for its summary.

A process killed while the Trainer writes `checkpoint-N/` leaves it half-written: an empty folder, a 0-byte config,
a truncated optimizer state. The stock `--resume_from_checkpoint true` takes the highest N (`get_last_checkpoint`)
and then fails on it, on every retry. :func:`latest_complete_checkpoint` takes the newest *complete* one instead and
logs each newer one it skipped, and why. Complete means (every check reads headers only, no tensor is loaded):

* `trainer_state.json` is there and parses (the Trainer writes it last, after the weights, optimizer, scheduler and
  RNG states);
* every other `.json` file parses;
* every `.safetensors` file is as long as its header says (8 + header + the last tensor's end offset);
* every `.pt` / `.pth` / `.bin` file (torch's zip format, DeepSpeed's shards included) is non-empty and, when a zip,
  its central directory (at the end of the file) reads: a truncated file has none.

`RUN_TOTALS` (`ross_run_totals.json`, written into each checkpoint by `RossTrainer`) holds the summed training loss,
the training seconds and the images each rank trained on up to that step, so that the summary of a resumed run covers
the whole run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile
from pathlib import Path


logger = logging.getLogger(__name__)

RUN_TOTALS = "ross_run_totals.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

__all__ = ["RUN_TOTALS", "checkpoint_problem", "latest_complete_checkpoint", "read_run_totals"]


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > size - 8:
                return f"{path.name} is truncated ({size} bytes, header alone {header_size})"
            header = json.loads(f.read(header_size))
    except (struct.error, ValueError, UnicodeDecodeError) as error:
        return f"{path.name} has no readable safetensors header ({size} bytes: {error})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size < 8 + header_size + end:
        return f"{path.name} is truncated ({size} bytes of {8 + header_size + end})"
    return None


def checkpoint_problem(folder) -> str | None:
    """Why `folder` is not a complete checkpoint (see the module docstring), or None when it is."""
    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing (the Trainer writes it last)"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder)
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (OSError, ValueError) as error:
                return f"{name} is not valid JSON ({path.stat().st_size} bytes: {error})"
        elif path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
            if problem:
                return str(name.parent / problem) if name.parent != Path(".") else problem
        elif path.suffix in (".pt", ".pth", ".bin"):
            if path.stat().st_size == 0:
                return f"{name} is empty"
            with open(path, "rb") as f:
                is_zip = f.read(4) == b"PK\x03\x04"
            if is_zip:
                try:
                    zipfile.ZipFile(path).close()
                except (zipfile.BadZipFile, OSError) as error:
                    return f"{name} is truncated or corrupt ({path.stat().st_size} bytes: {error})"
    return None


def latest_complete_checkpoint(output_dir) -> str:
    """The newest complete `checkpoint-N` under `output_dir`; each newer incomplete one is logged with its reason.
    `ValueError` naming every checkpoint and what is wrong with it when none is complete."""
    output_dir = Path(output_dir)
    found = []
    if output_dir.is_dir():
        for entry in output_dir.iterdir():
            match = _CHECKPOINT.match(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), entry))
    skipped = []
    for _, folder in sorted(found, reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            for name, reason in skipped:
                logger.warning("Not resuming from %s: %s; it is incomplete (killed while saving?).", name, reason)
            if skipped:
                logger.warning("Resuming from %s, the newest complete checkpoint.", folder)
            return str(folder)
        skipped.append((str(folder), problem))
    if not found:
        raise ValueError(f"No checkpoint to resume from in {output_dir} (no checkpoint-N folder).")
    raise ValueError(
        f"no complete checkpoint in {output_dir} to resume from:\n  "
        + "\n  ".join(f"{name}: {reason}" for name, reason in skipped)
    )


def read_run_totals(checkpoint) -> dict:
    """`{"global_step", "loss_sum", "train_seconds", "images_seen_per_rank"}` saved with `checkpoint`, or {} (older
    checkpoints; those before `images_seen_per_rank` lack that key)."""
    path = Path(checkpoint) / RUN_TOTALS
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_run_totals(checkpoint, totals: dict) -> None:
    os.makedirs(checkpoint, exist_ok=True)
    path = Path(checkpoint) / RUN_TOTALS
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(totals) + "\n")
    os.replace(tmp, path)
