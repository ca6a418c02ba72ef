"""The evaluation runner (eval.run / eval.generation) end to end on synthetic benchmarks and a saved tiny model."""

import json

import pytest
import torch

from ross.eval import generation
from ross.eval.generation import evaluate_model, generate_answers, get_benchmark, load_items, load_model


@pytest.fixture(scope="module")
def model_dir(tiny_components, tmp_path_factory):
    from conftest import TINY_OBJECTIVE
    from modeling_ross import RossProcessor, from_components

    folder = tmp_path_factory.mktemp("ross-tiny")
    torch.manual_seed(0)
    model = from_components(**tiny_components, **TINY_OBJECTIVE).eval()
    model.save_pretrained(folder)
    RossProcessor.from_components(tiny_components["vision_model"], tiny_components["language_model"]).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    from ross.eval.synthetic import write_benchmarks

    root = tmp_path_factory.mktemp("synthetic")
    write_benchmarks(str(root), num_items=12)
    return root


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir)  # remote code, fp32 on CPU


def test_cli_writes_predictions_and_scores(model_dir, bench_dir, tmp_path, capsys):
    from ross.eval import run, score

    out = tmp_path / "pope"
    code = run.main(["--model", str(model_dir), "--benchmark", "synthetic_pope", "--data",
                     str(bench_dir / "synthetic_pope"), "--out", str(out), "--batch-size", "4",
                     "--max-new-tokens", "4", "--no-progress"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {p.name for p in out.iterdir()} == {"predictions.jsonl", "scores.json", "scores.md"}

    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 12
    assert [r["question_id"] for r in records] == [str(i) for i in range(12)]  # dataset order
    for r in records:
        assert {"question_id", "question", "answer", "category", "prompt", "prediction"} <= set(r)
        assert "images" not in r and "image" not in r
        assert r["prompt"] == r["question"] + "\nAnswer the question using a single word or phrase."
        assert isinstance(r["prediction"], str)

    scores = json.loads((out / "scores.json").read_text())
    assert scores == printed
    assert {"benchmark", "rules", "num_items", "primary_metric", "primary_value", "metrics", "chance", "model",
            "data", "settings", "seconds"} <= set(scores)
    assert scores["benchmark"] == "synthetic_pope" and scores["rules"] == "lmms-eval" and scores["num_items"] == 12
    assert scores["settings"] == {"batch_size": 4, "max_new_tokens": 4, "dtype": "float32", "device": "cpu",
                                  "limit": None}
    assert scores["chance"] == {"accuracy": 0.5}
    assert scores["primary_metric"] == "accuracy"
    assert scores["primary_value"] == scores["metrics"]["accuracy"]
    assert set(scores["metrics"]["categories"]) == {"random", "popular", "adversarial"}
    # The predictions file re-scores to the same metrics with the standalone scorer.
    assert score.main(["--benchmark", "pope", "--predictions", str(out / "predictions.jsonl")]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert rescored["f1"] == scores["metrics"]["f1"] and rescored["accuracy"] == scores["metrics"]["accuracy"]

    table = (out / "scores.md").read_text()
    assert "| Metric | Value |" in table and "| accuracy (primary) |" in table and "chance accuracy" in table


@pytest.mark.parametrize(
    "name, metrics",
    [
        ("synthetic_mmvp", {"accuracy", "pair_accuracy", "num_pairs"}),
        ("synthetic_count", {"exact_match"}),
        ("synthetic_colour", {"exact_match"}),
        ("synthetic_position", {"exact_match"}),
    ],
)
def test_every_synthetic_benchmark_runs_through_evaluate_model(loaded, bench_dir, tmp_path, name, metrics):
    model, processor = loaded
    scores = evaluate_model(model, processor, name, bench_dir / name, batch_size=3, limit=6, out_dir=tmp_path,
                            max_new_tokens=3, progress=False)
    assert metrics <= set(scores["metrics"]) and scores["num_items"] == 6
    assert 0.0 <= scores["primary_value"] <= 1.0
    assert scores["chance"]["accuracy"] > 0
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all("prediction" in json.loads(line) for line in lines)


def test_batched_generation_equals_batch_size_one(loaded, bench_dir):
    model, processor = loaded
    items = []
    for name in ("synthetic_pope", "synthetic_mmvp", "synthetic_count", "synthetic_position"):
        _, rows, prompts = load_items(name, bench_dir / name, limit=3)
        items += [(row["images"], prompt) for row, prompt in zip(rows, prompts)]
    items.append(([], "What is two plus two?"))  # text-only, shortest
    lengths = {len(processor.tokenizer(generation.chat_text(processor, p, len(im)))["input_ids"]) for im, p in items}
    assert len(lengths) >= 4, lengths  # the batch really mixes prompt lengths (left padding is exercised)
    batched = generate_answers(model, processor, items, max_new_tokens=6, batch_size=13, progress=False)
    single = generate_answers(model, processor, items, max_new_tokens=6, batch_size=1, progress=False)
    assert batched == single
    assert any(answer for answer in single)  # a random tiny model still says something


def test_unknown_benchmark_and_bad_batch_size_exit_2(model_dir, bench_dir, capsys):
    from ross.eval import run

    data = str(bench_dir / "synthetic_pope")
    assert run.main(["--model", str(model_dir), "--benchmark", "nope", "--data", data]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert run.main(["--model", str(model_dir), "--benchmark", "pope", "--data", data, "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_synthetic_benchmarks_reuse_registry_prompts_and_scorers():
    from ross.eval.benchmarks import BENCHMARKS

    assert get_benchmark("synthetic_pope").prompt_fn is BENCHMARKS["pope"].prompt_fn
    assert get_benchmark("synthetic_mmvp").score_fn is BENCHMARKS["mmvp"].score_fn
    assert get_benchmark("synthetic_count").score_fn is BENCHMARKS["gqa"].score_fn
    assert get_benchmark("pope") is BENCHMARKS["pope"]
    with pytest.raises(KeyError, match="unknown benchmark"):
        get_benchmark("synthetic_nothing")


def test_helpers():
    assert generation.truncate_at("yes\n\nmore", ["\n\n"]) == "yes"
    assert generation.truncate_at("a.b", ["", "."]) == "a"
    assert generation.resolve_dtype("auto", "cpu") == torch.float32
    assert generation.resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        generation.resolve_dtype("int8")
    table = generation.scores_markdown([
        {"benchmark": "pope", "rules": "lmms-eval", "num_items": 9000, "primary_metric": "f1", "primary_value": 0.85},
        {"benchmark": "ocrbench", "rules": "lmms-eval", "num_items": 1000, "primary_metric": "score",
         "primary_value": 512.0},
    ])
    assert "| pope | f1 | 0.8500 | 9000 | lmms-eval |" in table and "| ocrbench | score | 512.0000 |" in table
