"""The benchmark registry: data loading, prompts, generation length and scoring.

    from ross.eval.benchmarks import BENCHMARKS
    bench = BENCHMARKS["pope"]
    rows = bench.load("/data/POPE")              # list[dict], each with "images": [PIL.Image]
    text = bench.prompt(rows[0], "lmms-eval")     # the text that follows the image(s)
    # ... generate at most bench.max_new_tokens tokens, greedy, into row["prediction"] ...
    metrics = bench.score(rows, "lmms-eval")      # dict, see eval.scoring

``load(path)`` reads a local copy in any of three layouts:

* an HF ``Dataset``/``DatasetDict`` saved with ``save_to_disk`` (a DatasetDict is narrowed
  to ``bench.split``);
* parquet as published on the Hub by lmms-lab: one ``.parquet`` file or a folder of them
  (a snapshot of the dataset repo); files are picked by ``bench.config`` (a folder name)
  and ``bench.split`` (the file-name prefix, e.g. ``test-00000-of-00001.parquet``);
* a VLMEvalKit ``.tsv`` with base64 images, whose columns are renamed to lmms-lab's.

Rows keep the lmms-lab field names (see ``bench.fields``); the image column(s) are
replaced by ``images: list[PIL.Image]`` (opened lazily: pixels are decoded, turned upright by their EXIF
orientation and converted to RGB by :func:`decode_images`, batch by batch, with the rule every ROSS path shares,
``modeling_ross.processing_ross.upright_rgb``; images of a benchmark's ``depth_columns`` are depth maps, listed in the
row's ``depth_images`` and turned into 3 channels by the depth rule ``depth_to_rgb``, as in training). Bad data raises
:class:`BenchmarkDataError` naming the file and the missing column, or the first item id that two rows share
(``key_fields``: each copy would be scored); a row whose image cannot be opened raises :class:`BadItemError` naming the
file, the row (index and id) and why, or, with ``load(path, defer_bad_images=True)``, keeps that error in place of the
image for :func:`decode_images` to raise when the row's batch comes (so an evaluation can skip the row and go on).
To add a benchmark (e.g. a synthetic one), build a :class:`Benchmark` with your own
``prompt_fn``/``score_fn`` and put it in ``BENCHMARKS``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from modeling_ross.processing_ross import depth_to_rgb, upright_rgb
from ross.eval import scoring
from ross.eval.scoring._text import as_text, check_rules
from ross.eval.scoring.choice import LETTERS, mmvp_options
from ross.eval.scoring.mmmu import mmmu_options
from ross.eval.scoring.vqa import answer_list
from ross.eval.synthetic import CHANCE

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
VLMEVALKIT_MCQ_TAIL = "Please select the correct answer from the options above. \n"


ID_FIELDS = ("question_id", "questionId", "id", "index", "Index")  # the row id, where a benchmark has one


class BenchmarkDataError(ValueError):
    """The benchmark's data cannot be used (missing file or column, an unreadable image); the message says where."""


class MissingDataError(BenchmarkDataError, FileNotFoundError):
    """The ``--data`` path does not exist."""


class BadItemError(BenchmarkDataError):
    """One row that cannot be evaluated: the message names the file, the row (index, id) and what is wrong."""

    def __init__(self, reason: str, index: int | None = None, item_id=None, source=None):
        self.reason, self.index, self.item_id, self.source = reason, index, item_id, source
        where = f"{source}: " if source else ""
        row = f"row {index}" if index is not None else "a row"
        row += f" (id {item_id})" if item_id is not None else ""
        super().__init__(f"{where}{row}: {reason}")

    def located(self, index: int, item_id, source=None) -> "BadItemError":
        return BadItemError(self.reason, index, item_id, self.source or source)

    def as_dict(self) -> dict:
        return {"index": self.index, "id": None if self.item_id is None else str(self.item_id), "file": (
            None if self.source is None else str(self.source)), "reason": self.reason}


def item_id(row: dict, index: int | None = None) -> str | None:
    """The row's id (its ``question_id``, ``questionId``, ``id``, ``index`` or ``Index``), None if it has none."""
    for field in ID_FIELDS:
        if row.get(field) is not None:
            return str(row[field])
    return None


def item_key(row: dict, key_fields: tuple[str, ...] = ID_FIELDS) -> tuple | None:
    """What identifies the row's item: ``(field, value)`` for each of ``key_fields`` the row holds (None when it holds
    none of them: such a benchmark's items cannot be told apart from two items with the same text)."""
    key = tuple((field, str(row[field])) for field in key_fields if row.get(field) is not None)
    return key or None


def describe_key(key: tuple) -> str:
    """``question_id 3``, or ``category=VD, set_id=0, question_id=3`` for a key of several fields."""
    if len(key) == 1:
        return f"{key[0][0]} {key[0][1]}"
    return ", ".join(f"{field}={value}" for field, value in key)


def duplicate_items(rows: list[dict], key_fields: tuple[str, ...] = ID_FIELDS) -> dict[tuple, list[int]]:
    """``{key: [positions]}`` of every item key (see :func:`item_key`) that more than one of ``rows`` holds (0-based
    positions, in order); {} when every item is there once."""
    positions: dict[tuple, list[int]] = {}
    for position, row in enumerate(rows):
        key = item_key(row, key_fields)
        if key is not None:
            positions.setdefault(key, []).append(position)
    return {key: where for key, where in positions.items() if len(where) > 1}


def decode_images(row: dict, index: int | None = None, source=None) -> list:
    """The row's images decoded now (upright RGB, the processor's own rule; the depth rule for the positions in
    ``row["depth_images"]``), or :class:`BadItemError` naming the row."""
    images, depth = [], row.get("depth_images") or ()
    for number, image in enumerate(row.get("images") or []):
        if isinstance(image, BadItemError):  # could not even be opened (load(..., defer_bad_images=True))
            raise image.located(index, item_id(row), source)
        rule = depth_to_rgb if number in depth else upright_rgb
        try:
            images.append(rule(image) if isinstance(image, Image.Image) else image)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
            name = getattr(image, "filename", None)
            raise BadItemError(
                f"image {number}{f' ({name})' if name else ''} cannot be decoded: {type(err).__name__}: {err}",
                index, item_id(row), source,
            ) from err
    return images


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its data comes from, how to prompt, how long to generate, how to score.

    ``fields`` are the row fields that ``prompt_fn`` and ``score_fn`` read (besides
    ``images`` and ``prediction``); ``load`` checks them and the CLI requires them.
    ``image_columns`` are the columns that hold images (``None`` entries are skipped).
    """

    name: str
    dataset: str  # Hub id of the lmms-lab copy
    config: str | None
    split: str
    num_rows: int | None  # rows in that split, None if not verified
    fields: tuple[str, ...]
    max_new_tokens: int
    prompt_fn: Callable[[dict, str], str]
    score_fn: Callable[[list[dict], str], dict]
    image_columns: tuple[str, ...] = ("image",)
    from_tsv: Callable[[dict, int], dict] | None = None
    # The number a model card and scores.json headline (the other metrics stay in ``metrics``).
    primary_metric: str | None = None
    # Rows whose images sit elsewhere (GQA joins them by imageId): no image column is required.
    images_joined: bool = False
    # Applied to the loaded rows (e.g. SEED-Bench keeps its image items only).
    filter_rows: Callable[[list[dict]], list[dict]] | None = None
    # Synthetic benchmarks: the uniform-guess rate of each reported metric, the column holding each row's question
    # type (for per-type breakdowns), and extra metrics a report shows next to accuracy.
    chance: dict[str, float] | None = None
    type_column: str | None = None
    report_metrics: tuple[str, ...] = ()
    # Image columns that hold depth maps (decoded with the depth rule; their positions go in ``row["depth_images"]``).
    depth_columns: tuple[str, ...] = ()
    # The fields that together identify an item (those a row holds; see `item_key`): two rows with the same values
    # are one item twice, which would be scored twice (`duplicate_items`).
    key_fields: tuple[str, ...] = ID_FIELDS

    def duplicates(self, rows: list[dict]) -> dict[tuple, list[int]]:
        """:func:`duplicate_items` of ``rows`` by this benchmark's ``key_fields``."""
        return duplicate_items(rows, self.key_fields)

    def prompt(self, row: dict, rules: str = "lmms-eval") -> str:
        """The text that follows the image(s) for this row, per ``rules``."""
        return self.prompt_fn(row, check_rules(rules))

    def score(self, rows: list[dict], rules: str = "lmms-eval") -> dict:
        """Metrics over ``rows`` (each with a ``prediction``), per ``rules``."""
        return self.score_fn(rows, check_rules(rules))

    def load(self, path: str | Path, defer_bad_images: bool = False) -> list[dict]:
        """Rows of a local copy (see the module docstring), each with ``images``.

        A row whose image cannot be opened raises :class:`BadItemError` (file, row index and id, reason); with
        ``defer_bad_images`` the error takes the image's place, for :func:`decode_images` to raise later.
        """
        path = Path(path)
        if not path.exists():
            raise MissingDataError(f"{path}: no such file or directory")
        if path.suffix == ".tsv":
            raw, convert = _read_tsv(path), self._tsv_row
        else:
            raw, path = _read_hf_or_parquet(path, self)
            convert = self._attach_images
        rows = []
        for index, record in enumerate(raw):
            try:
                rows.append(convert(record, index, path, defer_bad_images))
            except BadItemError as err:
                raise err.located(index, item_id(record, index), path) from err
        if self.images_joined:
            _join_gqa_images(rows, path, defer_bad_images)
        if rows:
            missing = [f for f in self.fields if f not in rows[0]]
            if missing:
                raise BenchmarkDataError(
                    f"{path}: missing column {missing[0]!r} for benchmark {self.name!r} "
                    f"(columns: {', '.join(sorted(k for k in rows[0] if k != 'images'))})"
                )
        rows = self.filter_rows(rows) if self.filter_rows is not None else rows
        duplicates = self.duplicates(rows)
        if duplicates:
            key, where = next(iter(duplicates.items()))
            raise BenchmarkDataError(
                f"{path}: {len(duplicates)} item id(s) appear more than once (each copy would be scored); first: "
                f"{describe_key(key)} in rows {', '.join(map(str, where))}"
            )
        return rows

    def _attach_images(self, row: dict, position: int, source: Path, defer: bool = False) -> dict:
        images = []
        present = [c for c in self.image_columns if c in row]
        if not present and not self.images_joined:
            raise BenchmarkDataError(f"{source}: missing image column {self.image_columns[0]!r} for benchmark {self.name!r}")
        for column in self.depth_columns:
            if row.get(column) is None:
                raise BenchmarkDataError(f"{source}: missing depth-map column {column!r} for benchmark {self.name!r}")
        depth = []
        for column in present:
            value = row.pop(column)
            for item in value if isinstance(value, list) else [value]:
                if item is not None:
                    if column in self.depth_columns:
                        depth.append(len(images))
                    images.append(_to_image(item, source, column, defer))
        row["images"] = images
        if self.depth_columns:
            row["depth_images"] = depth
        return row

    def _tsv_row(self, raw: dict, position: int, source: Path, defer: bool = False) -> dict:
        if "image" not in raw:
            raise BenchmarkDataError(f"{source}: missing column 'image' (base64) for benchmark {self.name!r}")
        encoded = raw.pop("image")
        if isinstance(encoded, str) and encoded.startswith("["):
            encoded = json.loads(encoded.replace("'", '"'))
        images = [_to_image(e, source, "image", defer) for e in (encoded if isinstance(encoded, list) else [encoded])]
        try:
            row = self.from_tsv(raw, position) if self.from_tsv else dict(raw)
        except KeyError as err:
            raise BenchmarkDataError(f"{source}: missing column {err.args[0]!r} for benchmark {self.name!r}") from None
        row["images"] = images
        return row


# ---------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------


def _to_image(value, source: Path, column: str, defer: bool = False):
    """A lazily opened image (pixels decoded later, by :func:`decode_images` or the processor), or BadItemError
    (raised, or with ``defer`` returned in the image's place)."""
    try:
        return _open_image(value, source, column)
    except BadItemError as err:
        err = BadItemError(err.reason, source=source)
        if defer:
            return err
        raise err from err.__cause__


def _open_image(value, source: Path, column: str):
    if isinstance(value, Image.Image):
        return value
    where = f"column {column!r}"
    try:
        if isinstance(value, dict) and value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        if isinstance(value, dict) and value.get("path"):
            file = Path(value["path"])
            file = file if file.is_absolute() else Path(source).parent / file
            where = f"column {column!r} (file {file})"
            if not file.is_file():
                raise BadItemError(f"{where}: image file does not exist")
            return Image.open(file)
        if isinstance(value, str):
            return Image.open(io.BytesIO(base64.b64decode(value, validate=False)))
        if isinstance(value, (bytes, bytearray)):
            return Image.open(io.BytesIO(value))
    except BadItemError:
        raise
    except Exception as err:  # PIL's UnidentifiedImageError, binascii.Error, OSError, ...
        raise BadItemError(f"{where}: cannot open the image: {type(err).__name__}: {err}") from err
    raise BadItemError(f"{where} holds {type(value).__name__}, not an image")


def _clean(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _read_tsv(path: Path) -> list[dict]:
    import pandas as pd  # optional readers below: each format's library is imported only when that format is read

    frame = pd.read_csv(path, sep="\t", dtype=object, keep_default_na=False, na_values=[""])
    return [{k: _clean(v) for k, v in rec.items()} for rec in frame.to_dict("records")]


def _read_hf_or_parquet(path: Path, bench: Benchmark) -> tuple[list[dict], Path]:
    if path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json", "dataset_info.json")):
        import datasets

        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if bench.split in data:
                data = data[bench.split]
            elif len(data) == 1:
                data = next(iter(data.values()))
            else:
                raise BenchmarkDataError(f"{path}: no split {bench.split!r} (splits: {', '.join(data)})")
        for column, feature in data.features.items():  # undecoded: a bad image is reported with its row, by _to_image
            if isinstance(feature, datasets.Image):
                data = data.cast_column(column, datasets.Image(decode=False))
            elif isinstance(getattr(feature, "feature", None), datasets.Image):
                data = data.cast_column(column, datasets.List(datasets.Image(decode=False)))
        return [dict(r) for r in data], path
    if path.suffix == ".parquet":
        files = [path]
    elif path.is_dir():
        files = _pick_parquet(path, bench)
    else:
        raise BenchmarkDataError(f"{path}: expected a save_to_disk folder, .parquet file/folder or .tsv file")
    import pyarrow.parquet as pq

    rows = []
    for file in files:
        rows.extend(pq.read_table(file).to_pylist())
    return rows, files[0]


def _pick_parquet(root: Path, bench: Benchmark) -> list[Path]:
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise BenchmarkDataError(f"{root}: no .parquet files and no save_to_disk metadata")
    if bench.config:
        in_config = [f for f in files if bench.config in f.relative_to(root).parts[:-1]]
        files = in_config or files
    of_split = [f for f in files if f.name.split("-")[0].split(".")[0] == bench.split or bench.split in f.parts[:-1]]
    if of_split:
        return of_split
    if len(files) == 1:
        return files
    raise BenchmarkDataError(f"{root}: no parquet file for split {bench.split!r} among {', '.join(f.name for f in files[:5])}")


def _join_gqa_images(rows: list[dict], source: Path, defer: bool = False) -> None:
    """GQA questions carry ``imageId``; images live in the ``testdev_balanced_images`` config."""
    if not rows or rows[0].get("images"):
        return
    for base in (source, *source.parents[:4]):
        candidates = sorted(base.glob("testdev_balanced_images*/**/*.parquet")) if base.is_dir() else []
        if candidates:
            break
    else:
        raise BenchmarkDataError(f"{source}: GQA rows have no 'image'; no testdev_balanced_images parquet found beside it")
    import pyarrow.parquet as pq

    by_id = {}
    for file in candidates:
        for rec in pq.read_table(file).to_pylist():
            by_id[str(rec["id"])] = rec["image"]
    for index, row in enumerate(rows):
        if str(row.get("imageId")) not in by_id:
            raise BenchmarkDataError(f"{candidates[0]}: no image with id {row.get('imageId')!r}")
        try:
            row["images"] = [_to_image(by_id[str(row["imageId"])], candidates[0], "image", defer)]
        except BadItemError as err:
            raise err.located(index, item_id(row, index), candidates[0]) from err


# ---------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------


def _lettered(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def vlmevalkit_mcq_prompt(question: str, options: list[str], hint=None) -> str:
    """VLMEvalKit's generic multiple-choice prompt (``ImageMCQDataset.build_prompt``)."""
    text = f"Hint: {hint}\n" if hint not in (None, "") else ""
    text += f"Question: {question}\n"
    if options:
        text += "Options:\n" + "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(options)) + VLMEVALKIT_MCQ_TAIL
    return text


def _pope_prompt(row, rules):
    return as_text(row["question"]).strip() + SHORT_ANSWER if rules == "lmms-eval" else as_text(row["question"])


def _bare_prompt(row, rules):
    return as_text(row["question"])


def _mmvp_prompt(row, rules):
    options = mmvp_options(as_text(row["Options"]))
    if rules == "vlmevalkit":
        return vlmevalkit_mcq_prompt(row["Question"], options)
    return f"{row['Question']}\n{_lettered(options)}\n{LETTER_ANSWER}"


def mmvp_cambrian_prompt(row: dict) -> str:
    """Cambrian's MMVP multiple-choice prompt; score with ``score_mmvp(..., cambrian=True)``."""
    return f"{row['Question']} Options:\n{_lettered(mmvp_options(as_text(row['Options'])))}\n{LETTER_ANSWER}"


def _chartqa_prompt(row, rules):
    suffix = "\nAnswer the question with a single word." if rules == "lmms-eval" else SHORT_ANSWER
    return as_text(row["question"]) + suffix


def _short_answer_prompt(row, rules):
    return as_text(row["question"]) + SHORT_ANSWER


def _textvqa_prompt(row, rules):
    question = as_text(row["question"])
    return (question.capitalize() if rules == "lmms-eval" else question) + SHORT_ANSWER


def _mmbench_prompt(row, rules):
    options = [as_text(row[c]) for c in "ABCDE" if c in row and not scoring.choice.is_missing(row[c])]
    hint = row.get("hint")
    hint = None if hint is None or (isinstance(hint, float) and math.isnan(hint)) or hint == "nan" else hint
    if rules == "vlmevalkit":
        return vlmevalkit_mcq_prompt(row["question"], options, hint)
    options_text = "There are several options:\n" + _lettered(options)
    query = f"{hint} {row['question']} {options_text}" if hint is not None else f"{row['question']} {options_text}"
    return f"{query}\n\n{LETTER_ANSWER}"  # lmms-eval joins "\n" + a post_prompt that starts with "\n"


def _seedbench_prompt(row, rules):
    options = [as_text(row[f"choice_{c}"]) for c in "abcd"]
    if rules == "vlmevalkit":
        return vlmevalkit_mcq_prompt(row["question"], options)
    return f"{row['question']}\n{_lettered(options)}\n{LETTER_ANSWER}"


def _mmmu_prompt(row, rules):
    multiple_choice = row["question_type"] == "multiple-choice"
    options = mmmu_options(row["options"]) if multiple_choice else []
    if rules == "vlmevalkit":
        return vlmevalkit_mcq_prompt(row["question"], options)
    if multiple_choice:
        return f"{row['question']}\n{_lettered(options)}\n\n{LETTER_ANSWER}"
    return f"{row['question']}\n\n{SHORT_ANSWER.strip()}"


def _ai2d_prompt(row, rules):
    options = [as_text(o) for o in row["options"]]
    if rules == "vlmevalkit":
        return vlmevalkit_mcq_prompt(row["question"], options)
    return f"{row['question']}\n{_lettered(options)}\n{LETTER_ANSWER}"


def _stripped_prompt(row, rules):
    return as_text(row["question"]).strip()


# ---------------------------------------------------------------------------------------
# VLMEvalKit TSV rows -> lmms-lab rows
# ---------------------------------------------------------------------------------------


def _options_from(raw: dict, letters: str = LETTERS) -> list[str]:
    return [as_text(raw[c]) for c in letters if raw.get(c) not in (None, "", "nan")]


def _tsv_pope(raw, i):
    return {**raw, "question_id": raw["index"], "answer": as_text(raw["answer"]).lower()}


def _tsv_hallusion(raw, i):
    parts = as_text(raw["index"]).split("_")
    return {
        **raw,
        "subcategory": raw.get("l2-category", raw.get("subcategory")),
        "set_id": parts[3] if len(parts) > 5 else raw.get("set_id"),
        "figure_id": parts[4] if len(parts) > 5 else raw.get("figure_id"),
        "question_id": parts[5] if len(parts) > 5 else raw.get("question_id"),
        "gt_answer": "1" if as_text(raw["answer"]).strip().lower() == "yes" else "0",
    }


def _tsv_mmvp(raw, i):
    a, b = as_text(raw["A"]), as_text(raw["B"])
    return {
        "Index": i + 1,
        "Question": raw["question"],
        "Options": f"(a) {a} (b) {b}",
        "Correct Answer": f"({as_text(raw['answer']).strip().lower()})",
    }


def _tsv_seed(raw, i):
    return {
        **raw,
        "question_id": raw["index"],
        "data_type": "image",
        **{f"choice_{c.lower()}": raw[c] for c in "ABCD"},
    }


def _tsv_mmmu(raw, i):
    options = _options_from(raw)
    return {
        **raw,
        "id": raw.get("id", raw["index"]),
        "options": repr(options),
        "question_type": "multiple-choice" if options else "open",
    }


def _tsv_ai2d(raw, i):
    return {**raw, "options": _options_from(raw), "answer": str(LETTERS.index(as_text(raw["answer"]).strip()))}


def _tsv_ocrbench(raw, i):
    hme = raw.get("category") == "Handwritten Mathematical Expression Recognition"
    return {
        **raw,
        "answer": answer_list(raw["answer"]),
        "question_type": raw["category"],
        "dataset": "HME100k" if hme else raw.get("split", ""),
    }


def _tsv_textvqa(raw, i):
    return {**raw, "question_id": raw["index"], "answers": answer_list(raw["answer"])}


def _tsv_docvqa(raw, i):
    return {**raw, "questionId": raw["index"], "answers": answer_list(raw["answer"])}


def _tsv_realworldqa(raw, i):
    options = _options_from(raw, "ABCD")
    if not options:
        return dict(raw)
    question = f"{raw['question']}\n{_lettered(options)}\n"
    question += "Please answer directly with only the letter of the correct option and nothing else."
    return {**raw, "question": question}


def _tsv_mmbench(raw, i):
    return {**raw, "L2-category": raw.get("l2-category")}


# ---------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------

def _image_items(rows: list[dict]) -> list[dict]:
    """SEED-Bench mixes image and video items; only the image ones are evaluated."""
    return [r for r in rows if r.get("data_type", "image") == "image"]


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(name="pope", dataset="lmms-lab/POPE", config=None, split="test", num_rows=9000,
                  fields=("question_id", "question", "answer"), max_new_tokens=128, prompt_fn=_pope_prompt,
                  score_fn=scoring.score_pope, from_tsv=_tsv_pope, primary_metric="f1",
                  key_fields=(*ID_FIELDS, "category")),
        Benchmark(name="hallusionbench", dataset="lmms-lab/HallusionBench", config=None, split="image", num_rows=951,
                  fields=("category", "subcategory", "set_id", "figure_id", "question_id", "question", "gt_answer"),
                  max_new_tokens=128, prompt_fn=_bare_prompt, score_fn=scoring.score_hallusionbench,
                  from_tsv=_tsv_hallusion, primary_metric="aAcc",
                  # question_id repeats across figures and categories: an item is all five
                  key_fields=("category", "subcategory", "set_id", "figure_id", "question_id")),
        Benchmark(name="mmvp", dataset="lmms-lab-eval/MMVP", config=None, split="train", num_rows=300,
                  fields=("Index", "Question", "Options", "Correct Answer"), max_new_tokens=16,
                  prompt_fn=_mmvp_prompt, score_fn=scoring.score_mmvp, from_tsv=_tsv_mmvp,
                  primary_metric="pair_accuracy"),
        Benchmark(name="chartqa", dataset="lmms-lab/ChartQA", config=None, split="test", num_rows=2500,
                  fields=("question", "answer"), max_new_tokens=16, prompt_fn=_chartqa_prompt,
                  score_fn=scoring.score_chartqa, primary_metric="relaxed_accuracy"),
        Benchmark(name="mmbench", dataset="lmms-lab/MMBench", config="en", split="dev", num_rows=4329,
                  fields=("index", "question", "answer", "A", "B"), max_new_tokens=1024, prompt_fn=_mmbench_prompt,
                  score_fn=scoring.score_mmbench, from_tsv=_tsv_mmbench, primary_metric="circular_accuracy"),
        Benchmark(name="seedbench", dataset="lmms-lab/SEED-Bench", config=None, split="test", num_rows=None,
                  fields=("question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer"),
                  max_new_tokens=32, prompt_fn=_seedbench_prompt, score_fn=scoring.score_seedbench,
                  from_tsv=_tsv_seed, primary_metric="accuracy", filter_rows=_image_items),
        Benchmark(name="mmmu", dataset="lmms-lab/MMMU", config=None, split="validation", num_rows=900,
                  fields=("id", "question", "options", "answer", "question_type"), max_new_tokens=128,
                  prompt_fn=_mmmu_prompt, score_fn=scoring.score_mmmu,
                  image_columns=tuple(f"image_{i}" for i in range(1, 8)), from_tsv=_tsv_mmmu,
                  primary_metric="accuracy"),
        Benchmark(name="gqa", dataset="lmms-lab/GQA", config="testdev_balanced_instructions", split="testdev",
                  num_rows=None, fields=("question", "answer"), max_new_tokens=16, prompt_fn=_short_answer_prompt,
                  score_fn=scoring.score_gqa, primary_metric="exact_match", images_joined=True),
        Benchmark(name="ai2d", dataset="lmms-lab/ai2d", config=None, split="test", num_rows=3088,
                  fields=("question", "options", "answer"), max_new_tokens=16, prompt_fn=_ai2d_prompt,
                  score_fn=scoring.score_ai2d, from_tsv=_tsv_ai2d, primary_metric="exact_match"),
        Benchmark(name="ocrbench", dataset="echo840/OCRBench", config=None, split="test", num_rows=1000,
                  fields=("question", "answer", "dataset", "question_type"), max_new_tokens=128,
                  prompt_fn=_stripped_prompt, score_fn=scoring.score_ocrbench, from_tsv=_tsv_ocrbench,
                  primary_metric="score"),
        Benchmark(name="textvqa", dataset="lmms-lab/textvqa", config=None, split="validation", num_rows=5000,
                  fields=("question_id", "question", "answers"), max_new_tokens=32, prompt_fn=_textvqa_prompt,
                  score_fn=scoring.score_textvqa, from_tsv=_tsv_textvqa, primary_metric="vqa_accuracy"),
        Benchmark(name="docvqa", dataset="lmms-lab/DocVQA", config="DocVQA", split="validation", num_rows=5349,
                  fields=("questionId", "question", "answers"), max_new_tokens=32, prompt_fn=_short_answer_prompt,
                  score_fn=scoring.score_anls, from_tsv=_tsv_docvqa, primary_metric="anls"),
        Benchmark(name="infovqa", dataset="lmms-lab/DocVQA", config="InfographicVQA", split="validation",
                  num_rows=None, fields=("questionId", "question", "answers"), max_new_tokens=32,
                  prompt_fn=_short_answer_prompt, score_fn=scoring.score_anls, from_tsv=_tsv_docvqa,
                  primary_metric="anls"),
        Benchmark(name="realworldqa", dataset="lmms-lab/RealWorldQA", config=None, split="test", num_rows=765,
                  fields=("question", "answer"), max_new_tokens=16, prompt_fn=_stripped_prompt,
                  score_fn=scoring.score_realworldqa, from_tsv=_tsv_realworldqa, primary_metric="exact_match"),
    )
}  # fmt: skip


# The project's synthetic benchmarks (eval/synthetic.py) reuse the rules of the published ones.
def _synthetic(name: str, like: str, **facts) -> Benchmark:
    base = BENCHMARKS[like]
    facts.setdefault("fields", base.fields)
    return dataclasses.replace(
        base, name=name, dataset=f"ross.eval.synthetic:{name}", config=None, split="train", num_rows=None,
        from_tsv=None, images_joined=False, **facts,
    )


SYNTHETIC_BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        _synthetic("synthetic_pope", "pope", primary_metric="accuracy", chance={"accuracy": CHANCE["synthetic_pope"]},
                   type_column="category", report_metrics=("f1", "yes_ratio")),
        _synthetic("synthetic_mmvp", "mmvp", primary_metric="pair_accuracy", type_column="pair_type",
                   chance={"accuracy": CHANCE["synthetic_mmvp"], "pair_accuracy": CHANCE["synthetic_mmvp_pair"]},
                   report_metrics=("pair_accuracy",)),
        *(_synthetic(n, "gqa", fields=("question_id", "question", "answer"), primary_metric="exact_match",
                     chance={"accuracy": CHANCE[n]}, type_column="question_type")
          for n in ("synthetic_count", "synthetic_colour", "synthetic_position")),
        # "Which object is closer?" on the RGB image alone, and with its depth map as a second image (SpatialBot's
        # layout): the same saved folder (eval/synthetic.py `make_depth`), scored like MMVP.
        *(_synthetic(n, "mmvp", primary_metric="accuracy", type_column="pair_type", image_columns=columns,
                     depth_columns=columns[1:], report_metrics=("pair_accuracy",),
                     chance={"accuracy": CHANCE["synthetic_depth"], "pair_accuracy": CHANCE["synthetic_depth_pair"]})
          for n, columns in (("synthetic_depth", ("image",)), ("synthetic_depth_rgbd", ("image", "depth")))),
    )
}  # fmt: skip


def benchmark_names() -> list[str]:
    return [*BENCHMARKS, *SYNTHETIC_BENCHMARKS]


def get_benchmark(benchmark: str | Benchmark) -> Benchmark:
    """A :class:`Benchmark` by name (the registry's, then the synthetic ones), or ``benchmark`` itself."""
    if isinstance(benchmark, Benchmark):
        return benchmark
    found = BENCHMARKS.get(benchmark) or SYNTHETIC_BENCHMARKS.get(benchmark)
    if found is None:
        raise KeyError(f"unknown benchmark {benchmark!r} (known: {', '.join(benchmark_names())})")
    return found
