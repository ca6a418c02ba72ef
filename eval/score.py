"""Score a JSONL file of predictions: ``python -m ross.eval.score --benchmark NAME --predictions FILE``.

Each line is one benchmark item with its fields named as in the lmms-lab dataset rows
(no images) plus ``prediction``. Prints one JSON object: ``benchmark``, ``rules``,
``num_items`` and the metrics of :mod:`ross.eval.scoring`. Bad input exits with status 2 and
a one-line message naming the file and line.

A ``"prediction"`` that is ``null`` (no answer was made for that item) or not a string is an error naming the line:
scoring it as wrong in silence would hide a broken run. With ``--missing-as-wrong`` each null prediction is scored as
the empty answer (wrong) instead, and counted in the output's ``"missing": {"count", "lines"}``.

An item that appears on several lines (two runs concatenated, or an id twice in the benchmark data; items are told
apart by the benchmark's ``key_fields``, e.g. ``question_id``) is an error naming the id and its lines: each copy
would be scored. With ``--on-duplicate last`` the last copy of each item is scored instead (at the place of its first)
and the output counts the dropped copies in ``"duplicates": {"count", "items": [{"id", "lines", "kept"}]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ross.eval.benchmarks import benchmark_names, describe_key, get_benchmark
from ross.eval.scoring import RULES


class InputError(Exception):
    """Bad command-line input; the message is shown as is."""


def read_predictions(path: Path, fields: tuple[str, ...], missing: list[int] | None = None,
                     line_numbers: list[int] | None = None) -> list[dict]:
    """The JSONL rows, checked to be objects holding ``fields`` and a string ``prediction``.

    A null ``prediction`` is an :class:`InputError`, or, when ``missing`` is a list, scored as ``""`` with its line
    number appended to ``missing``. ``line_numbers``, when a list, gets the line number of each row returned.
    """
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
        if row["prediction"] is None:
            if missing is None:
                raise InputError(
                    f"{path}:{number}: 'prediction' is null (no answer for this item); generate it again, or pass "
                    "--missing-as-wrong to score null predictions as wrong and count them"
                )
            missing.append(number)
            row = {**row, "prediction": ""}
        elif not isinstance(row["prediction"], str):
            raise InputError(f"{path}:{number}: 'prediction' is a {type(row['prediction']).__name__}, not a string")
        rows.append(row)
        if line_numbers is not None:
            line_numbers.append(number)
    if not rows:
        raise InputError(f"{path}: no predictions")
    return rows


ON_DUPLICATE = ("error", "last")


def drop_duplicates(path: Path, rows: list[dict], lines: list[int], bench, on_duplicate: str = "error") -> tuple[
        list[dict], list[dict]]:
    """``rows`` (read from ``lines`` of ``path``) with each item once, and what was dropped.

    ``on_duplicate="error"``: an item on several lines is an :class:`InputError` naming its id and lines. ``"last"``:
    its last copy is kept, at the place of its first; returns ``[{"id", "lines", "kept"}]`` for each such item.
    """
    duplicates = bench.duplicates(rows)
    if not duplicates:
        return rows, []
    if on_duplicate == "error":
        key, where = next(iter(duplicates.items()))
        raise InputError(
            f"{path}: {len(duplicates)} item(s) appear on several lines (each copy would be scored); first: "
            f"{describe_key(key)} on lines {', '.join(str(lines[i]) for i in where)}. Remove the copies, or pass "
            "--on-duplicate last to score the last copy of each item"
        )
    kept = list(rows)
    dropped, report = set(), []
    for key, where in duplicates.items():
        kept[where[0]] = rows[where[-1]]
        dropped.update(where[1:])
        report.append({"id": describe_key(key), "lines": [lines[i] for i in where], "kept": lines[where[-1]]})
    return [row for i, row in enumerate(kept) if i not in dropped], report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ross.eval.score", description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", required=True, help=f"one of: {', '.join(benchmark_names())}")
    parser.add_argument("--predictions", required=True, type=Path, help="JSONL file, one item per line")
    parser.add_argument("--rules", default="lmms-eval", help=f"scoring rules: {' or '.join(RULES)}")
    parser.add_argument("--missing-as-wrong", action="store_true",
                        help='score a null "prediction" as wrong and count it under "missing" (default: a null '
                             "prediction is an error naming its line)")
    parser.add_argument("--on-duplicate", default="error", choices=ON_DUPLICATE,
                        help="an item on several lines: stop with status 2 (error, default) or score its last copy "
                             "and count the dropped ones under \"duplicates\" (last)")
    args = parser.parse_args(argv)
    try:
        if args.benchmark not in benchmark_names():
            raise InputError(f"unknown benchmark {args.benchmark!r} (known: {', '.join(benchmark_names())})")
        if args.rules not in RULES:
            raise InputError(f"unknown rules {args.rules!r} (known: {', '.join(RULES)})")
        bench = get_benchmark(args.benchmark)
        missing = [] if args.missing_as_wrong else None
        lines: list[int] = []
        rows = read_predictions(args.predictions, bench.fields, missing, lines)
        rows, duplicates = drop_duplicates(args.predictions, rows, lines, bench, args.on_duplicate)
        try:
            metrics = bench.score(rows, args.rules)
        except (KeyError, ValueError, TypeError, IndexError, SyntaxError) as err:
            raise InputError(f"{args.predictions}: cannot score: {type(err).__name__}: {err}") from None
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = {"benchmark": bench.name, "rules": args.rules, "num_items": len(rows)}
    out.update({k: v for k, v in metrics.items() if k != "num_items"})
    if missing is not None:
        out["missing"] = {"count": len(missing), "lines": missing}
    if duplicates:
        out["duplicates"] = {"count": sum(len(d["lines"]) - 1 for d in duplicates), "items": duplicates}
    print(json.dumps(out, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
