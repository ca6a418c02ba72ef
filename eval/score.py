"""Score a JSONL file of predictions: ``python -m ross.eval.score --benchmark NAME --predictions FILE``.

Each line is one benchmark item with its fields named as in the lmms-lab dataset rows
(no images) plus ``prediction``. Prints one JSON object: ``benchmark``, ``rules``,
``num_items`` and the metrics of :mod:`ross.eval.scoring`. Bad input exits with status 2 and
a one-line message naming the file and line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ross.eval.benchmarks import benchmark_names, get_benchmark
from ross.eval.scoring import RULES


class InputError(Exception):
    """Bad command-line input; the message is shown as is."""


def read_predictions(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """The JSONL rows, checked to be objects holding ``fields`` and ``prediction``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read: {err}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        for field in (*fields, "prediction"):
            if field not in row:
                raise InputError(f"{path}:{number}: missing field {field!r}")
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no predictions")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ross.eval.score", description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", required=True, help=f"one of: {', '.join(benchmark_names())}")
    parser.add_argument("--predictions", required=True, type=Path, help="JSONL file, one item per line")
    parser.add_argument("--rules", default="lmms-eval", help=f"scoring rules: {' or '.join(RULES)}")
    args = parser.parse_args(argv)
    try:
        if args.benchmark not in benchmark_names():
            raise InputError(f"unknown benchmark {args.benchmark!r} (known: {', '.join(benchmark_names())})")
        if args.rules not in RULES:
            raise InputError(f"unknown rules {args.rules!r} (known: {', '.join(RULES)})")
        bench = get_benchmark(args.benchmark)
        rows = read_predictions(args.predictions, bench.fields)
        try:
            metrics = bench.score(rows, args.rules)
        except (KeyError, ValueError, TypeError, IndexError, SyntaxError) as err:
            raise InputError(f"{args.predictions}: cannot score: {type(err).__name__}: {err}") from None
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = {"benchmark": bench.name, "rules": args.rules, "num_items": len(rows)}
    out.update({k: v for k, v in metrics.items() if k != "num_items"})
    print(json.dumps(out, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
