"""Batched greedy generation over a benchmark, and the evaluation of a model on it.

    from ross.eval.generation import evaluate_model, load_model
    model, processor = load_model("path/to/ross-checkpoint")          # bf16/fp16 on GPU, fp32 on CPU
    scores = evaluate_model(model, processor, "pope", "/data/POPE", out_dir="runs/eval/pope")

Every prompt is the benchmark's prompt rule (:mod:`ross.eval.benchmarks`) placed after the image(s)
in the model's chat template, i.e. ``[{"type": "image"}, ..., {"type": "text", "text": prompt}]``
as one user turn plus the generation prompt. Generation is greedy (``do_sample=False``,
``num_beams=1``, no repetition penalty: an explicit ``GenerationConfig`` replaces whatever the
checkpoint's ``generation_config.json`` says), batched with left padding and the KV cache.
Items are batched longest-first to waste little padding; results come back in input order.
On CPU in fp32 a batch gives the same tokens as batch size 1 (tested); on GPU in bf16 padding
can change rounding, so a rare near-tie may differ.

Files written by :func:`evaluate_model` under ``out_dir`` (the model-card code reads them):

* ``predictions.jsonl``: one JSON object per item, in dataset order: the row's fields
  without ``images`` (as loaded by the benchmark, e.g. ``question_id``, ``question``,
  ``answer``), plus ``prompt`` (the text after the image(s)) and ``prediction``. ``python -m
  ross.eval.score --benchmark NAME --predictions predictions.jsonl`` re-scores it.
* ``scores.json``: ``{"benchmark", "rules", "num_items", "primary_metric", "primary_value",
  "metrics": {<the benchmark scorer's dict>}, "chance" (synthetic benchmarks, else null),
  "model", "data", "settings": {"batch_size", "max_new_tokens", "dtype", "device", "limit"},
  "seconds"}``. Metrics are fractions in [0, 1] (OCRBench's ``score`` is 0-1000).
  With ``on_bad_item="skip"`` it also holds ``"skipped": {"count", "items": [{"index", "id", "file",
  "reason"}]}``: the rows left out of ``num_items`` and of the metrics.
* ``scores.md``: :func:`scores_markdown` of that dict: one table row per metric.

Nothing finished is lost: ``predictions.jsonl`` is appended (and flushed) after every batch, in the order items
finish, so a crash or Ctrl-C keeps the finished items; ``resume=True`` reads them back, generates only the rest,
then rewrites the file in dataset order and scores all items. A row whose image cannot be read raises
:class:`~ross.eval.benchmarks.BadItemError` naming the file and the row (index and id), at load or just before its
batch is generated (images are decoded batch by batch); ``on_bad_item="skip"`` leaves such rows out and counts them.

Synthetic benchmarks (``ross.eval.synthetic``) run through the same path: :func:`get_benchmark`
adds them to the names of :data:`ross.eval.benchmarks.BENCHMARKS`, reusing POPE's prompt and
scorer for ``synthetic_pope``, MMVP's for ``synthetic_mmvp`` and GQA's (exact match) for
``synthetic_count`` / ``synthetic_colour`` / ``synthetic_position``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from ross.eval.benchmarks import (
    SYNTHETIC_BENCHMARKS,
    BadItemError,
    Benchmark,
    BenchmarkDataError,
    benchmark_names,
    decode_images,
    get_benchmark,
)


# ---------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------

ON_BAD_ITEM = ("error", "skip")


def primary_metric(bench: Benchmark, metrics: dict) -> str | None:
    """The key of the headline metric: the benchmark's ``primary_metric``, else the first float in ``metrics``."""
    if bench.primary_metric in metrics:
        return bench.primary_metric
    return next((k for k, v in metrics.items() if isinstance(v, float)), None)


# ---------------------------------------------------------------------------------------
# Model loading
# ---------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA if available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device | None = None) -> torch.dtype:
    """``"auto"``: bfloat16 on a GPU that supports it, float16 on other GPUs, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        device = resolve_device(device)
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r} (known: auto, {', '.join(names)})")
    return names[dtype]


# What `from_pretrained` reads from a model folder: its config and one of these weight layouts.
WEIGHTS_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelPathError(ValueError):
    """``--model`` is not a loadable model: the message names the path and what is missing."""


def _looks_like_hub_id(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", value)) and not value.endswith((".", "-"))


def model_path_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a model to load, checked before loading (None when it may be one): a local folder needs
    ``config.json`` and weights (``model.safetensors``, a safetensors index whose shards are all there, or pytorch
    ``.bin`` files); a path that is no folder and not shaped like a Hub id does not exist (huggingface_hub would
    call it a malformed repo id)."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        missing = [] if (folder / "config.json").is_file() else ["config.json"]
        present = [name for name in WEIGHTS_NAMES if (folder / name).is_file()]
        if not present:
            missing.append(f"weights ({' or '.join(WEIGHTS_NAMES[:2])})")
        for index in (name for name in present if name.endswith(".index.json")):
            try:
                shards = sorted(set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                return f"model folder {folder}: {index} is not a readable index ({type(error).__name__}: {error})"
            absent = [shard for shard in shards if not (folder / shard).is_file()]
            if absent:
                missing.append(f"the shard(s) {', '.join(absent)} that {index} lists")
        return f"model folder {folder} has no {' and no '.join(missing)}" if missing else None
    if folder.exists():
        return f"{path} is a file, not a model folder"
    if not _looks_like_hub_id(str(path)):
        return f"model folder {path} does not exist"
    return None


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
):
    """``AutoModelForImageTextToText`` + ``AutoProcessor`` from ``path``, in eval mode on ``device``.

    ``path`` is a ROSS checkpoint (remote code: ``auto_map`` in its ``config.json``) or a native VLM folder such as
    ``RossForPreTraining.save_pretrained`` writes (a plain Qwen2.5-VL, llava-hf Llava, ... plus ``ross_head/``, which
    generation does not need); either way prompts go through the processor's own chat template.

    Pass ``attn_implementation="eager"`` to get attention weights (:mod:`ross.eval.attention`). A path that is not a
    loadable model (:func:`model_path_problem`; a Hub id that cannot be fetched) is a :class:`ModelPathError`.
    """
    problem = model_path_problem(path)
    if problem is not None:
        raise ModelPathError(problem)
    device = resolve_device(device)
    kwargs = {"dtype": resolve_dtype(dtype, device), "trust_remote_code": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device.type == "cuda":
        kwargs["device_map"] = str(device)
    try:
        model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
        processor = load_processor(path)
    except OSError as error:  # a Hub id that is not there (or not cached offline), a file that is not a model's
        raise ModelPathError(f"cannot load model {path}: {_first_line(error)}") from error
    except ValueError as error:  # e.g. a text-only LLM's config: no image-text-to-text class maps to it
        raise ModelPathError(
            f"cannot load model {path} as an image-text-to-text model (a ROSS checkpoint with its remote code, or a "
            f"native VLM such as Qwen2.5-VL or llava-hf Llava): {_first_line(error)}"
        ) from error
    if getattr(processor, "chat_template", None) is None:
        # Prompts are built with the model's own chat template; a guessed one would change the scores silently.
        raise ModelPathError(
            f"model folder {path} has no chat template (chat_template.jinja or the processor's chat_template): "
            "prompts are built with the model's own template"
        )
    return model.to(device).eval(), processor


def load_processor(path: str | Path):
    """The checkpoint's processor: ``AutoProcessor`` (remote code for a ROSS checkpoint; a native VLM's own class).
    Qwen2/2.5/3-VL processors need torchvision in transformers 5.23 (their video processor); the tests, which run
    without it, replace this function."""
    return AutoProcessor.from_pretrained(str(path), trust_remote_code=True)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# ---------------------------------------------------------------------------------------
# Prompts and batches
# ---------------------------------------------------------------------------------------


def chat_text(processor, prompt: str | list[dict], num_images: int) -> str:
    """One user turn (``num_images`` images, then ``prompt``) + the generation prompt, in the chat template.

    A prompt that already holds exactly ``num_images`` image tokens (some lmms-eval tasks write
    ``<image>`` themselves) is used as it is. A list is a whole conversation (``[{"role", "content": [{"type":
    "image"} | {"type": "text", "text"}, ...]}, ...]``, as lmms-eval's chat models get it), rendered as it is.
    """
    if not isinstance(prompt, str):
        return processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    image_token = getattr(processor, "image_token", "<image>")
    if num_images and prompt.count(image_token) == num_images:
        content = [{"type": "text", "text": prompt}]
    else:
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_batch(processor, items: Sequence[tuple[list, str]], device=None, dtype=None) -> dict:
    """Left-padded processor output for ``items`` = ``[(images, prompt), ...]`` (images: a list, may be empty;
    prompt: a string or a conversation, see :func:`chat_text`)."""
    texts = [chat_text(processor, prompt, len(images)) for images, prompt in items]
    # One list of images per sample: processors that count placeholders per prompt (Gemma 3, Idefics3 / SmolVLM)
    # need the nesting; the others flatten it.
    images = [list(item_images) for item_images, _ in items] if any(item_images for item_images, _ in items) else None
    batch = processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
    if device is not None:
        batch = batch.to(device)
    if dtype is not None and "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return batch


def greedy_config(processor, max_new_tokens: int, **overrides):
    """An explicit greedy ``GenerationConfig`` (nothing inherited from the checkpoint); ``overrides`` win."""
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=pad, use_cache=True)
    settings.update(overrides)
    return GenerationConfig(**settings)


def truncate_at(text: str, stop: Iterable[str] | None) -> str:
    """``text`` cut before the first occurrence of any stop string (empty strings are ignored)."""
    for s in stop or ():
        if s:
            text = text.split(s, 1)[0]
    return text


@torch.no_grad()
def generate_answers(
    model,
    processor,
    items: Sequence[tuple[list, str]],
    max_new_tokens: int = 128,
    batch_size: int = 8,
    stop: Iterable[str] | None = None,
    progress: bool = True,
    description: str = "generate",
    **generation_overrides,
) -> list[str]:
    """Greedy answers to ``items`` = ``[(images, prompt), ...]``, in order, stripped and cut at ``stop``.

    ``generation_overrides`` (e.g. ``do_sample=True, temperature=0.2``) update :func:`greedy_config`.
    """
    config = greedy_config(processor, max_new_tokens, **generation_overrides)
    answers: list[str | None] = [None] * len(items)
    with tqdm(total=len(items), desc=description, unit="item", disable=not progress, dynamic_ncols=True) as bar:
        for indices in batch_order(items, batch_size):
            texts = generate_batch(model, processor, [items[i] for i in indices], config, stop)
            for i, text in zip(indices, texts):
                answers[i] = text
            bar.update(len(indices))
    return answers


def batch_order(items: Sequence[tuple[list, str]], batch_size: int) -> list[list[int]]:
    """Indices of ``items`` in batches, longest first (chars + images as a cheap proxy for tokens): little padding,
    and an out-of-memory error shows up at once."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(items)), key=lambda i: -(len(str(items[i][1])) + 10_000 * len(items[i][0])))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


@torch.no_grad()
def generate_batch(model, processor, items: Sequence[tuple[list, str]], config, stop=None) -> list[str]:
    """Greedy answers (per ``config``) to one batch of ``(images, prompt)``, stripped and cut at ``stop``."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    batch = build_batch(processor, items, device=model.device, dtype=dtype)
    output = model.generate(**batch, generation_config=config)
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    texts = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [truncate_at(text, stop).strip() for text in texts]


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------


def _jsonable(value):
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return _jsonable(value.tolist())
    if isinstance(value, bytes):
        return None
    return str(value)


def prediction_record(row: dict, prompt: str, prediction: str) -> dict:
    """One ``predictions.jsonl`` line: the row without ``images``, plus ``prompt`` and ``prediction``."""
    record = {k: _jsonable(v) for k, v in row.items() if k not in ("images", "prompt", "prediction")}
    record["prompt"] = prompt
    record["prediction"] = prediction
    return record


def flat_metrics(metrics: dict) -> list[tuple[str, float | int]]:
    """Top-level numbers, and numbers one level down (e.g. ``category_mean/f1``); deeper dicts are left out."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            rows.append((key, value))
        elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            rows += [(f"{key}/{k}", v) for k, v in value.items()]
    return rows


def scores_markdown(scores: dict | Sequence[dict]) -> str:
    """A Markdown table of one ``scores.json`` dict (all its metrics) or of several (headline metric each)."""
    if isinstance(scores, dict):
        s = scores
        lines = [
            f"**{s['benchmark']}** ({s['rules']} rules, {s['num_items']} items, model `{s.get('model')}`)",
            "",
            "| Metric | Value |",
            "|---|---|",
        ]
        for key, value in flat_metrics(s["metrics"]):
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            mark = " (primary)" if key == s.get("primary_metric") else ""
            lines.append(f"| {key}{mark} | {shown} |")
        for key, value in (s.get("chance") or {}).items():
            lines.append(f"| chance {key} | {value:.4f} |")
        return "\n".join(lines) + "\n"
    lines = ["| Benchmark | Metric | Value | Items | Rules |", "|---|---|---|---|---|"]
    for s in scores:
        value = s.get("primary_value")
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {s['benchmark']} | {s.get('primary_metric')} | {shown} | {s['num_items']} | {s['rules']} |")
    return "\n".join(lines) + "\n"


def write_results_file(path: Path, records: list[dict]) -> None:
    """``records`` as JSON lines in ``path``, replaced atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def write_results(out_dir: str | Path, records: list[dict], scores: dict) -> Path:
    """Write ``predictions.jsonl``, ``scores.json`` and ``scores.md`` under ``out_dir``; return it.

    ``predictions.jsonl`` is replaced atomically (a temporary file, then a rename): an interruption leaves the
    old file or the new one, never half of either.
    """
    out = Path(out_dir)
    write_results_file(out / "predictions.jsonl", records)
    (out / "scores.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "scores.md").write_text(scores_markdown(scores), encoding="utf-8")
    return out


def load_items(
    benchmark: str | Benchmark,
    data_path: str | Path,
    rules: str = "lmms-eval",
    limit: int | None = None,
    defer_bad_images: bool = False,
):
    """``(bench, rows, prompts)``: the benchmark's rows from ``data_path`` (first ``limit``) and their prompts.

    ``defer_bad_images``: see :meth:`Benchmark.load`.
    """
    bench = get_benchmark(benchmark)
    rows = bench.load(data_path, defer_bad_images=defer_bad_images)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise BenchmarkDataError(f"{data_path}: no rows for benchmark {bench.name!r}")
    return bench, rows, [bench.prompt(row, rules) for row in rows]


def record_key(record: dict) -> str:
    """What identifies a ``predictions.jsonl`` line across runs: every field but the prediction (ids included)."""
    return json.dumps({k: v for k, v in record.items() if k != "prediction"}, sort_keys=True, ensure_ascii=False)


def read_finished(path: Path, records: list[dict]) -> dict[int, dict]:
    """The items of ``records`` (this run's rows, prediction still unset) already in ``path``, by position.

    A last line cut short (the process was killed while writing it) is ignored; any other bad line, or a line that
    matches no item of this run (other ``--data``, ``--rules`` or ``--limit``), is a :class:`BenchmarkDataError`.
    """
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    positions: dict[str, list[int]] = {}
    for position, record in enumerate(records):
        positions.setdefault(record_key(record), []).append(position)
    finished, unmatched = {}, Counter()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            done = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break  # cut short by a kill: that item is generated again
            raise BenchmarkDataError(f"{path}:{number}: invalid JSON ({err.msg}); cannot resume from it") from None
        if not isinstance(done, dict) or not isinstance(done.get("prediction"), str):
            raise BenchmarkDataError(f"{path}:{number}: not a prediction record (no string 'prediction')")
        free = positions.get(record_key(done))
        if not free:
            unmatched[number] += 1
            continue
        finished[free.pop(0)] = done
    if unmatched:
        first = min(unmatched)
        raise BenchmarkDataError(
            f"{path}:{first}: {len(unmatched)} finished prediction(s) match no item of this run (was it made with "
            "another --data, --rules or --limit?); use another --out, or drop --resume to start over"
        )
    return finished


def evaluate_model(
    model,
    processor,
    benchmark: str | Benchmark,
    data_path: str | Path,
    rules: str = "lmms-eval",
    batch_size: int = 8,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
    model_name: str | None = None,
    on_bad_item: str = "error",
    resume: bool = False,
) -> dict:
    """Generate answers for a benchmark, score them and (with ``out_dir``) write the three result files.

    Returns the ``scores.json`` dict (see the module docstring). ``max_new_tokens`` defaults to
    the benchmark's (lmms-eval's) limit. ``on_bad_item``: ``"error"`` raises :class:`BadItemError` on the first
    row whose image cannot be read; ``"skip"`` leaves such rows out and lists them under ``"skipped"``.
    ``resume``: keep the finished items of ``out_dir/predictions.jsonl`` and generate only the others.
    """
    if on_bad_item not in ON_BAD_ITEM:
        raise ValueError(f"on_bad_item must be one of {', '.join(ON_BAD_ITEM)}, got {on_bad_item!r}")
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the predictions.jsonl to continue)")
    start = time.perf_counter()
    skipped: list[dict] | None = [] if on_bad_item == "skip" else None
    bench, rows, prompts = load_items(benchmark, data_path, rules, limit, defer_bad_images=skipped is not None)
    source = Path(data_path)
    max_new_tokens = max_new_tokens or bench.max_new_tokens
    records: list[dict | None] = [prediction_record(row, p, None) for row, p in zip(rows, prompts)]
    out = Path(out_dir) if out_dir is not None else None
    finished = read_finished(out / "predictions.jsonl", records) if resume else {}
    for position, record in finished.items():
        records[position] = record
    todo = [i for i in range(len(rows)) if i not in finished]
    config = greedy_config(processor, max_new_tokens)
    log = None
    if out is not None:
        # The finished items first (replaced atomically: a line cut short by a kill is dropped), then one line per
        # item as its batch finishes.
        write_results_file(out / "predictions.jsonl", [records[i] for i in sorted(finished)])
        log = open(out / "predictions.jsonl", "a", encoding="utf-8")
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(rows), initial=len(finished), desc=bench.name, unit="item", disable=not progress,
               dynamic_ncols=True)
    try:
        for batch in batch_order([(rows[i]["images"], prompts[i]) for i in todo], batch_size):
            positions, items = [], []
            for i in (todo[k] for k in batch):
                try:
                    images = decode_images(rows[i], i, source)
                except BadItemError as err:
                    if skipped is None:
                        raise
                    skipped.append(err.as_dict())
                    records[i] = None
                    bar.update(1)
                    continue
                positions.append(i)
                items.append((images, prompts[i]))
            if not items:
                continue
            answers = generate_batch(model, processor, items, config)
            for i, answer in zip(positions, answers):
                rows[i]["images"] = None  # decoded pixels are not kept for the whole run
                records[i]["prediction"] = answer
                if log is not None:
                    log.write(json.dumps(records[i], ensure_ascii=False) + "\n")
            if log is not None:
                log.flush()
                os.fsync(log.fileno())
            bar.update(len(items))
    finally:
        bar.close()
        if log is not None:
            log.close()
        model.train(was_training)
    records = [r for r in records if r is not None]
    if not records:
        raise BenchmarkDataError(f"{data_path}: every row of benchmark {bench.name!r} was skipped as bad")
    metrics = bench.score(records, rules)
    key = primary_metric(bench, metrics)
    scores = {
        "benchmark": bench.name,
        "rules": rules,
        "num_items": len(records),
        "primary_metric": key,
        "primary_value": metrics.get(key) if key else None,
        "metrics": _jsonable(metrics),
        "chance": dict(bench.chance) if bench.chance else None,
        "model": model_name or getattr(model, "name_or_path", None) or type(model).__name__,
        "data": str(data_path),
        "settings": {
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "device": str(model.device),
            "limit": limit,
        },
        "seconds": round(time.perf_counter() - start, 3),
    }
    if skipped is not None:
        skipped.sort(key=lambda item: item["index"])
        scores["skipped"] = {"count": len(skipped), "items": skipped}
    if resume:
        scores["resumed_items"] = len(finished)
    if out is not None:
        write_results(out, records, scores)
    return scores


__all__ = [
    "SYNTHETIC_BENCHMARKS",
    "benchmark_names",
    "build_batch",
    "chat_text",
    "batch_order",
    "evaluate_model",
    "flat_metrics",
    "generate_batch",
    "generate_answers",
    "get_benchmark",
    "greedy_config",
    "load_items",
    "load_model",
    "load_processor",
    "model_path_problem",
    "prediction_record",
    "resolve_device",
    "resolve_dtype",
    "scores_markdown",
    "truncate_at",
    "write_results",
]
