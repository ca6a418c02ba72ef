"""Evaluate a checkpoint on one benchmark: ``python -m ross.eval.run --model PATH --benchmark NAME --data PATH``.

Loads the model with ``AutoModelForImageTextToText.from_pretrained(PATH, trust_remote_code=True)``
and ``AutoProcessor``: a ROSS checkpoint through its remote code, a native VLM folder (what ``RossForPreTraining``
saves: a plain Qwen2.5-VL, llava-hf Llava, ... with ``ross_head/`` beside it) as its own class; prompts use the
processor's own chat template (bf16 on GPU, fp16 where bf16 is unsupported, fp32 on CPU unless
``--dtype`` says otherwise), generates greedily in batches (left padding, KV cache), scores
with the benchmark's rules, and writes ``predictions.jsonl``, ``scores.json`` and ``scores.md``
under ``--out`` (default ``runs/eval/<benchmark>``; formats in :mod:`ross.eval.generation`).
Prints the ``scores.json`` object, and a progress line (items done / total, items/s, ETA) on stderr
unless ``--no-progress``.

Bad input exits with status 2 and a one-line ``error: ...`` message naming the file (and the row: index and id),
before or after the model loads: a missing column, an item id on two rows, an image that cannot be opened or decoded,
a ``--model`` folder that does not exist, has no config or weights, is no image-text-to-text model (e.g. a
text-only LLM) or has no chat template. ``--on-bad-item skip``
leaves such rows out instead and lists them under ``"skipped"`` in ``scores.json`` (scores cover the other rows).
``predictions.jsonl`` grows batch by batch, so a crash or Ctrl-C keeps the finished items; ``--resume`` generates
only the rest and scores all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ross.eval.benchmarks import BenchmarkDataError
from ross.eval.generation import (
    ON_BAD_ITEM,
    ModelPathError,
    benchmark_names,
    evaluate_model,
    get_benchmark,
    load_model,
    resolve_dtype,
)
from ross.eval.scoring import RULES


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ross.eval.run", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id: a ROSS checkpoint (remote "
                        "code) or a native VLM folder (e.g. RossForPreTraining's: Qwen2.5-VL, llava-hf Llava + ross_head/)")
    parser.add_argument("--benchmark", required=True, help=f"one of: {', '.join(benchmark_names())}")
    parser.add_argument("--data", required=True, type=Path, help="local copy: save_to_disk folder, parquet or .tsv")
    parser.add_argument("--rules", default="lmms-eval", choices=RULES, help="prompt and scoring rules")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N items only")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the benchmark's")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/eval/<benchmark>)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0, help="seeds torch (generation is greedy anyway)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress line")
    parser.add_argument("--on-bad-item", default="error", choices=ON_BAD_ITEM,
                        help="a row whose image cannot be read: stop with status 2 (error, default) or leave it out "
                             "and count it in scores.json's 'skipped' (skip)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished items of --out's predictions.jsonl and generate only the rest")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        bench = get_benchmark(args.benchmark)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if not args.data.exists():
            raise ValueError(f"--data {args.data}: no such file or directory")
        resolve_dtype(args.dtype, "cpu")  # validates the name before the (slow) model load
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    try:
        model, processor = load_model(args.model, args.dtype, args.device)
    except ModelPathError as err:  # no such folder, no weights, a Hub id that cannot be fetched: one line, status 2
        print(f"error: --model: {err}", file=sys.stderr)
        return 2
    try:
        scores = evaluate_model(
            model, processor, bench, args.data, rules=args.rules, batch_size=args.batch_size, limit=args.limit,
            out_dir=args.out or Path("runs") / "eval" / bench.name, max_new_tokens=args.max_new_tokens,
            progress=not args.no_progress, model_name=str(args.model), on_bad_item=args.on_bad_item,
            resume=args.resume,
        )
    except BenchmarkDataError as err:  # bad data, found at load or when its batch comes: one line, status 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = args.out or Path("runs") / "eval" / bench.name
        print(f"interrupted: the finished items are in {out / 'predictions.jsonl'}; add --resume to continue",
              file=sys.stderr)
        return 130
    print(json.dumps(scores, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
