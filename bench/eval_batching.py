"""Evaluation throughput at batch size 1 vs 8 on a synthetic benchmark, with identical answers.

    python bench/eval_batching.py [--device cpu|cuda] [--dtype float32|bfloat16] [--benchmark synthetic_pope]
                                  [--items 48] [--batch-sizes 1 8] [--repeats 2] [--out runs/bench/eval_batching]

A model built from tiny component repos (`modeling_ross.testing`, the `scaled` geometry of `bench/train_step.py`)
answers `--items` rows of a freshly generated synthetic benchmark (`ross.eval.synthetic`) through the batched greedy
runner of `python -m ross.eval.run` (`ross.eval.generation.generate_answers`: left padding, KV cache, longest first). Batch
sizes are interleaved (1, 8, 1, 8, ...); items/s is the median over `--repeats`. The answers must be identical at
every batch size (exit 1 otherwise). Goal: items/s at batch 8 >= 4x batch 1. Writes `eval_batching.json` and
`eval_batching.md` under `--out`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import synchronize, write_outputs
from ross.eval.generation import generate_answers, load_items
from ross.eval.synthetic import write_benchmarks
from modeling_ross import RossProcessor, from_components
from modeling_ross.testing import write_tiny_components


GEOMETRY = dict(vision=dict(image_size=64, patch_size=4, hidden_size=96, num_layers=2),
                language=dict(hidden_size=512, num_layers=12, num_heads=8))  # fmt: skip


def build_model(root: Path, device, dtype):
    paths = write_tiny_components(root / "components", vision_kwargs=GEOMETRY["vision"],
                                  language_kwargs=GEOMETRY["language"])  # fmt: skip
    torch.manual_seed(0)
    model = from_components(paths["vision_model"], paths["language_model"], objective="none")
    processor = RossProcessor.from_components(paths["vision_model"], paths["language_model"])
    return model.to(device, dtype).eval(), processor


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--benchmark", default="synthetic_pope")
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/eval_batching"))
    args = parser.parse_args(argv)
    if args.items < 1 or args.repeats < 1 or min(args.batch_sizes) < 1:
        parser.error("--items, --repeats and every batch size must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        model, processor = build_model(Path(tmp), args.device, getattr(torch, args.dtype))
        data = write_benchmarks(str(Path(tmp) / "bench"), num_items=max(args.items, 6), names=[args.benchmark])
        _, rows, prompts = load_items(args.benchmark, data[args.benchmark], limit=args.items)
        items = [(row["images"], prompt) for row, prompt in zip(rows, prompts)]

        def answer(batch_size):
            with torch.inference_mode():
                return generate_answers(model, processor, items, max_new_tokens=args.max_new_tokens,
                                        batch_size=batch_size, progress=False)  # fmt: skip

        answers = {size: answer(size) for size in args.batch_sizes}  # warm-up, and the answers to compare
        times = {size: [] for size in args.batch_sizes}
        for _ in range(args.repeats):
            for size in args.batch_sizes:
                start = time.perf_counter()
                answer(size)
                synchronize(args.device)
                times[size].append(time.perf_counter() - start)
    base = args.batch_sizes[0]
    identical = all(answers[size] == answers[base] for size in args.batch_sizes)
    rate = {size: len(items) / statistics.median(times[size]) for size in args.batch_sizes}
    lines = [f"{len(items)} items of {args.benchmark}, device {args.device}, dtype {args.dtype}, "
             f"{args.max_new_tokens} new tokens at most, {args.repeats} interleaved repeats (median). "
             f"Answers identical at every batch size: {'yes' if identical else 'NO'}.", "",
             "| batch size | items/s | x batch " + str(base) + " |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {size} | {rate[size]:.2f} | {rate[size] / rate[base]:.2f} |" for size in args.batch_sizes]
    report = "\n".join(lines) + "\n"
    payload = {"benchmark": args.benchmark, "items": len(items), "device": args.device, "dtype": args.dtype,
               "identical_answers": identical, "items_per_s": rate, "times_s": times}  # fmt: skip
    write_outputs(args.out, "eval_batching", payload, report)
    if not identical:
        print("error: the answers differ between batch sizes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
