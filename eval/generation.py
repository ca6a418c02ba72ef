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
* ``scores.md``: :func:`scores_markdown` of that dict: one table row per metric.

Synthetic benchmarks (``ross.eval.synthetic``) run through the same path: :func:`get_benchmark`
adds them to the names of :data:`ross.eval.benchmarks.BENCHMARKS`, reusing POPE's prompt and
scorer for ``synthetic_pope``, MMVP's for ``synthetic_mmvp`` and GQA's (exact match) for
``synthetic_count`` / ``synthetic_colour`` / ``synthetic_position``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from ross.eval.benchmarks import SYNTHETIC_BENCHMARKS, Benchmark, benchmark_names, get_benchmark


# ---------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------


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


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
):
    """``AutoModelForImageTextToText`` + ``AutoProcessor`` from ``path`` (remote code), in eval mode on ``device``.

    Pass ``attn_implementation="eager"`` to get attention weights (:mod:`ross.eval.attention`).
    """
    device = resolve_device(device)
    kwargs = {"dtype": resolve_dtype(dtype, device), "trust_remote_code": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device.type == "cuda":
        kwargs["device_map"] = str(device)
    model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=True)
    return model.to(device).eval(), processor


# ---------------------------------------------------------------------------------------
# Prompts and batches
# ---------------------------------------------------------------------------------------


def chat_text(processor, prompt: str, num_images: int) -> str:
    """One user turn (``num_images`` images, then ``prompt``) + the generation prompt, in the chat template.

    A prompt that already holds exactly ``num_images`` image tokens (some lmms-eval tasks write
    ``<image>`` themselves) is used as it is.
    """
    image_token = getattr(processor, "image_token", "<image>")
    if num_images and prompt.count(image_token) == num_images:
        content = [{"type": "text", "text": prompt}]
    else:
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_batch(processor, items: Sequence[tuple[list, str]], device=None, dtype=None) -> dict:
    """Left-padded processor output for ``items`` = ``[(images, prompt), ...]`` (images: a list, may be empty)."""
    texts = [chat_text(processor, prompt, len(images)) for images, prompt in items]
    images = [image for item_images, _ in items for image in item_images]
    batch = processor(text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt")
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
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = greedy_config(processor, max_new_tokens, **generation_overrides)
    # Longest first (chars + images as a cheap proxy for tokens): little padding, OOM shows up at once.
    order = sorted(range(len(items)), key=lambda i: -(len(items[i][1]) + 10_000 * len(items[i][0])))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    answers: list[str | None] = [None] * len(items)
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    for indices in tqdm(batches, desc=description, unit="batch", disable=not progress):
        batch = build_batch(processor, [items[i] for i in indices], device=model.device, dtype=dtype)
        output = model.generate(**batch, generation_config=config)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        texts = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for i, text in zip(indices, texts):
            answers[i] = truncate_at(text, stop).strip()
    return answers


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


def _flat_metrics(metrics: dict) -> list[tuple[str, float | int]]:
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
        for key, value in _flat_metrics(s["metrics"]):
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


def write_results(out_dir: str | Path, records: list[dict], scores: dict) -> Path:
    """Write ``predictions.jsonl``, ``scores.json`` and ``scores.md`` under ``out_dir``; return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    (out / "scores.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "scores.md").write_text(scores_markdown(scores), encoding="utf-8")
    return out


def load_items(benchmark: str | Benchmark, data_path: str | Path, rules: str = "lmms-eval", limit: int | None = None):
    """``(bench, rows, prompts)``: the benchmark's rows from ``data_path`` (first ``limit``) and their prompts."""
    bench = get_benchmark(benchmark)
    rows = bench.load(data_path)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"{data_path}: no rows for benchmark {bench.name!r}")
    return bench, rows, [bench.prompt(row, rules) for row in rows]


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
) -> dict:
    """Generate answers for a benchmark, score them and (with ``out_dir``) write the three result files.

    Returns the ``scores.json`` dict (see the module docstring). ``max_new_tokens`` defaults to
    the benchmark's (lmms-eval's) limit.
    """
    start = time.perf_counter()
    bench, rows, prompts = load_items(benchmark, data_path, rules, limit)
    max_new_tokens = max_new_tokens or bench.max_new_tokens
    was_training = model.training
    model.eval()
    try:
        predictions = generate_answers(
            model, processor, [(row["images"], p) for row, p in zip(rows, prompts)], max_new_tokens, batch_size,
            progress=progress, description=bench.name,
        )
    finally:
        model.train(was_training)
    records = [prediction_record(row, p, pred) for row, p, pred in zip(rows, prompts, predictions)]
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
    if out_dir is not None:
        write_results(out_dir, records, scores)
    return scores


__all__ = [
    "SYNTHETIC_BENCHMARKS",
    "benchmark_names",
    "build_batch",
    "chat_text",
    "evaluate_model",
    "generate_answers",
    "get_benchmark",
    "greedy_config",
    "load_items",
    "load_model",
    "prediction_record",
    "resolve_device",
    "resolve_dtype",
    "scores_markdown",
    "truncate_at",
    "write_results",
]
