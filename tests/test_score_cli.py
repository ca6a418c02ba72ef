"""`python -m ross.eval.score` end to end, on small JSONL files: its `main` in this process (an interpreter per call
would cost seconds of imports each), and the module entry point in a fresh process once."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ross.eval import score


ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    """`python -m ross.eval.score ARGS` as its exit status and its stdout and stderr, run in this process."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = score.main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return subprocess.CompletedProcess(["ross.eval.score", *args], code, stdout.getvalue(), stderr.getvalue())


def test_module_entry_point_exits_with_main_status(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"question_id": 1, "question": "?", "answer": "yes"}'])
    proc = subprocess.run([sys.executable, "-m", "ross.eval.score", "--benchmark", "pope", "--predictions", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {path}:1: missing field 'prediction'"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    return path


CASES = {
    "pope": ([{"question_id": 1, "question": "Dog?", "answer": "yes", "category": "random", "prediction": "Yes"},
              {"question_id": 2, "question": "Cat?", "answer": "no", "category": "random", "prediction": "Yes."}],
             {"accuracy": 0.5, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5}),
    "mmvp": ([{"Index": 1, "Question": "Open?", "Options": "(a) Open (b) Closed", "Correct Answer": "(a)", "prediction": "A"},
              {"Index": 2, "Question": "Open?", "Options": "(a) Open (b) Closed", "Correct Answer": "(b)", "prediction": "A"}],
             {"accuracy": 0.5, "pair_accuracy": 0.0}),
    "chartqa": ([{"question": "?", "answer": "1000", "prediction": "1,000"}, {"question": "?", "answer": "12", "prediction": "12.3"}],
                {"relaxed_accuracy": 0.5}),
    "docvqa": ([{"questionId": 7, "question": "?", "answers": ["Straße 5"], "prediction": "straße 5"}], {"anls": 1.0}),
    "infovqa": ([{"questionId": 7, "question": "?", "answers": ["abc"], "prediction": ""}], {"anls": 0.0}),
    "textvqa": ([{"question_id": 3, "question": "?", "answers": ["two"] * 10, "prediction": "2"}], {"vqa_accuracy": 1.0}),
    "ocrbench": ([{"question": "?", "answer": ["hello"], "dataset": "IIIT5K", "question_type": "Regular Text Recognition",
                   "prediction": "It says HELLO"}], {"score": 1000.0}),
    "gqa": ([{"question": "?", "answer": "left", "prediction": "Left."}], {"exact_match": 1.0}),
    "ai2d": ([{"question": "?", "options": ["a", "b"], "answer": "1", "prediction": "The answer is B"}], {"exact_match": 0.0}),
    "realworldqa": ([{"question": "?\nA. x\nB. y", "answer": "B", "prediction": "The answer is B"}], {"exact_match": 1.0}),
    "hallusionbench": ([{"category": "VD", "subcategory": "chart", "set_id": 0, "figure_id": 0, "question_id": 0,
                         "question": "?", "gt_answer": "1", "prediction": "Yes, it is."},
                        {"category": "VD", "subcategory": "chart", "set_id": 0, "figure_id": 1, "question_id": 0,
                         "question": "?", "gt_answer": "0", "prediction": "Yes"}],
                       {"aAcc": 0.5, "fAcc": 0.5, "qAcc": 0.0}),
    "mmbench": ([{"index": 0, "question": "?", "hint": None, "A": "cat", "B": "dog", "C": "cow", "D": "pig",
                  "answer": "A", "category": "x", "prediction": "A"},
                 {"index": 1000000, "question": "?", "hint": None, "A": "dog", "B": "cow", "C": "pig", "D": "cat",
                  "answer": "D", "category": "x", "prediction": "A"}],
                {"circular_accuracy": 0.0}),
    "seedbench": ([{"question_id": "1", "question": "?", "choice_a": "a", "choice_b": "b", "choice_c": "c", "choice_d": "d",
                    "answer": "C", "prediction": "C. c"}], {"accuracy": 1.0}),
    "mmmu": ([{"id": "validation_Art_1", "question": "?", "options": "['x', 'y']", "question_type": "multiple-choice",
               "answer": "A", "prediction": "(A)"}], {"accuracy": 1.0}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_benchmark_headline(tmp_path, name):
    rows, expected = CASES[name]
    proc = run("--benchmark", name, "--predictions", str(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert proc.stdout.count("\n") == 1  # exactly one JSON object
    assert out["benchmark"] == name and out["rules"] == "lmms-eval" and out["num_items"] == len(rows)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), key


def test_rules_switch_changes_the_score(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "?", "answer": "yes", "prediction": "Yes."}])
    lmms = json.loads(run("--benchmark", "gqa", "--predictions", str(path)).stdout)
    vlm = json.loads(run("--benchmark", "gqa", "--predictions", str(path), "--rules", "vlmevalkit").stdout)
    assert lmms["exact_match"] == 1.0 and vlm["exact_match"] == 0.0 and vlm["rules"] == "vlmevalkit"


def test_blank_lines_and_unicode(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", ['{"question": "?", "answer": "café", "prediction": "Café"}', "", "  "])
    out = json.loads(run("--benchmark", "gqa", "--predictions", str(path)).stdout)
    assert out["num_items"] == 1 and out["exact_match"] == 1.0


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"question_id": 1, "question": "?", "answer": "yes", "prediction": "yes"}', '{"question": "?"'],
         ":2: invalid JSON"),
        (['{"question_id": 1, "question": "?", "answer": "yes", "prediction": "yes"}',
          '{"question_id": 2, "question": "?", "prediction": "no"}'], ":2: missing field 'answer'"),
        (['{"question_id": 1, "question": "?", "answer": "yes"}'], ":1: missing field 'prediction'"),
        (['["not", "an", "object"]'], ":1: expected a JSON object"),
        ([""], "no predictions"),
        (['{"question_id": 1, "question": "?", "answer": "maybe", "prediction": "yes"}'], "not yes/no"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    proc = run("--benchmark", "pope", "--predictions", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert message in proc.stderr and "bad.jsonl" in proc.stderr


def test_unknown_benchmark_rules_and_file(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "?", "answer": "a", "prediction": "a"}])
    for args, message in (
        (("--benchmark", "mme", "--predictions", str(path)), "unknown benchmark 'mme'"),
        (("--benchmark", "gqa", "--predictions", str(path), "--rules", "opencompass"), "unknown rules"),
        (("--benchmark", "gqa", "--predictions", str(tmp_path / "missing.jsonl")), "missing.jsonl: no such file"),
    ):
        proc = run(*args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_synthetic_benchmarks_are_scored_by_name(tmp_path):
    rows = [
        {"question_id": 0, "question": "Is there a red circle?", "answer": "yes", "category": "random", "prediction": "Yes"},
        {"question_id": 1, "question": "Is there a blue square?", "answer": "no", "category": "random", "prediction": "yes"},
    ]
    result = run("--benchmark", "synthetic_pope", "--predictions", str(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["benchmark"] == "synthetic_pope" and scores["num_items"] == 2 and scores["accuracy"] == 0.5
