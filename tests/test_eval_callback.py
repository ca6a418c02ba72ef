"""BenchmarkEvalCallback: benchmarks every K steps inside a training run (train/sft.py), logged next to the losses,
written as eval.run writes them, and carried into the saved model's card; bad data stops the run at train begin."""

import json
import math
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from ross.eval.generation import evaluate_model, load_model
from ross.model_cards.card import build_model_card, find_scores
from ross.train.callbacks import BenchmarkEvalCallback, parse_benchmark_specs
from ross.train.sft import main


REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("synthetic_pope", "synthetic_count")
LIMIT, MAX_NEW_TOKENS = 4, 3


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    from ross.eval.synthetic import write_benchmarks

    root = tmp_path_factory.mktemp("bench")
    write_benchmarks(str(root), num_items=6, names=BENCHMARKS)
    return root


def _argv(root, output_dir, bench_dir, steps=4, every=2):
    return [
        "--config", str(REPO_ROOT / "train" / "configs" / "tiny_stage2.yaml"),
        "--prepare_tiny", f"{{root: {root}, num_images: 8, stage: sft}}",
        "--output_dir", str(output_dir), "--max_steps", str(steps),
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
        "--benchmarks", f"[{', '.join(f'{name}={bench_dir / name}' for name in BENCHMARKS)}]",
        "--benchmark_every_steps", str(every), "--benchmark_limit", str(LIMIT), "--benchmark_batch_size", "2",
        "--benchmark_max_new_tokens", str(MAX_NEW_TOKENS),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, bench_dir):
    """One 4-step sft.py run with benchmarks at steps 2 and 4 (the last step); the model is checked in train mode
    and the step's loss finite after each evaluation."""
    from transformers import TrainerCallback

    root = tmp_path_factory.mktemp("evalrun")
    seen = []

    class Modes(TrainerCallback):  # added before the benchmark callback: sees each step before it is evaluated
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            seen.append((state.global_step, model.training, model.denoiser.training))

    summary = main(_argv(root / "tiny", root / "out", bench_dir), callbacks=[Modes()])
    return root / "out", summary, seen


def test_scores_are_logged_at_every_k_steps_and_equal_a_separate_evaluation(run, bench_dir, tmp_path):
    output_dir, summary, seen = run
    callback_files = sorted(p.relative_to(output_dir).as_posix() for p in (output_dir / "eval").rglob("scores.json"))
    assert callback_files == [f"eval/step-{s}/{b}/scores.json" for s in (2, 4) for b in sorted(BENCHMARKS)]
    # Train mode at every step after an evaluation (steps 3 and 4 begin after the eval at step 2), whole model.
    assert [s for s, _, _ in seen] == [0, 1, 2, 3] and all(m and d for _, m, d in seen)
    assert math.isfinite(summary["last_logged"]["loss"]) and summary["global_step"] == 4

    logged = summary["benchmarks"]
    assert logged["step"] == 4
    # The final numbers equal evaluate_model on the saved folder, same subset and settings.
    model, processor = load_model(output_dir / "model")
    for name in BENCHMARKS:
        separate = evaluate_model(
            model, processor, name, bench_dir / name, batch_size=2, limit=LIMIT, max_new_tokens=MAX_NEW_TOKENS,
            out_dir=tmp_path / name, progress=False,
        )  # fmt: skip
        in_training = json.loads((output_dir / "eval" / "step-4" / name / "scores.json").read_text())
        assert in_training["metrics"] == separate["metrics"] and in_training["num_items"] == LIMIT
        for key, value in separate["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert logged[f"eval_{name}/{key}"] == value
        predictions = (output_dir / "eval" / "step-4" / name / "predictions.jsonl").read_text()
        assert predictions == (tmp_path / name / "predictions.jsonl").read_text()


def test_log_history_has_the_scores_next_to_the_loss(bench_dir, tiny_model, tiny_processor, tmp_path):
    """A RossTrainer run without sft.py: `eval_<benchmark>/<metric>` at steps 2 and 4 in `log_history`, at the same
    steps as `loss`, and in TensorBoard as `eval/<benchmark>/<metric>`."""
    from test_trainer import ListDataset, SimpleCollator

    from ross.train.trainer import RossTrainer, RossTrainingArguments

    args = RossTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to=["tensorboard"], use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    trainer = RossTrainer(
        model=tiny_model, args=args, train_dataset=ListDataset(), data_collator=SimpleCollator(tiny_processor),
        processing_class=tiny_processor,
    )  # fmt: skip
    callback = BenchmarkEvalCallback(
        [f"synthetic_pope={bench_dir / 'synthetic_pope'}"], every_steps=2, limit=LIMIT, batch_size=4,
        max_new_tokens=MAX_NEW_TOKENS, trainer=trainer,
    )  # fmt: skip
    trainer.add_callback(callback)
    trainer.train()
    history = trainer.state.log_history
    evals = [h for h in history if "eval_synthetic_pope/accuracy" in h]
    assert [h["step"] for h in evals] == [2, 4]
    assert {h["step"] for h in history if "loss" in h} == {1, 2, 3, 4}
    assert all(math.isfinite(h["loss"]) for h in history if "loss" in h)
    for h in evals:
        assert {k: v for k, v in h.items() if k.startswith("eval_")} == callback.logged[h["step"]]
    assert tiny_model.training

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p.parent for p in (tmp_path / "out").rglob("events.out.tfevents.*")]
    tags = set().union(*(EventAccumulator(str(r)).Reload().Tags()["scalars"] for r in runs))
    assert {"eval/synthetic_pope/accuracy", "train/loss"} <= tags


def test_scores_json_format_and_the_model_card_lists_the_final_results(run):
    output_dir, _, _ = run
    folder = output_dir / "model"
    step_scores = json.loads((output_dir / "eval" / "step-4" / "synthetic_pope" / "scores.json").read_text())
    # eval.run's format (ross.eval.generation's module docstring)
    assert set(step_scores) >= {"benchmark", "rules", "num_items", "primary_metric", "primary_value", "metrics",
                                "chance", "model", "data", "settings", "seconds"}  # fmt: skip
    assert step_scores["settings"]["limit"] == LIMIT and step_scores["settings"]["max_new_tokens"] == MAX_NEW_TOKENS
    assert {p.name for p in (output_dir / "eval" / "step-4" / "synthetic_pope").iterdir()} == {
        "predictions.jsonl", "scores.json", "scores.md"}  # fmt: skip

    # Only the final scores (in the model folder, `model` = the folder) reach the card; the step-N ones say which
    # step they evaluated and are left out.
    found = find_scores(folder)
    assert sorted(p.relative_to(folder).as_posix() for p in found) == [
        f"eval/{b}/scores.json" for b in sorted(BENCHMARKS)]  # fmt: skip
    final = json.loads((folder / "eval" / "synthetic_pope" / "scores.json").read_text())
    assert final == {**step_scores, "model": str(folder)}
    card = build_model_card(folder)
    index = card.data.eval_results
    assert {r.dataset_type for r in index} == set(BENCHMARKS)
    pope = next(r for r in index if r.dataset_type == "synthetic_pope" and r.metric_type == final["primary_metric"])
    assert pope.metric_value == pytest.approx(final["primary_value"])


def test_missing_or_bad_benchmark_data_fails_at_train_begin(bench_dir, tmp_path):
    missing = tmp_path / "nowhere" / "pope"
    with pytest.raises(FileNotFoundError, match=f"synthetic_pope={missing}: {missing} does not exist"):
        main([*_argv(tmp_path / "tiny", tmp_path / "out", bench_dir), "--benchmarks", f"[synthetic_pope={missing}]"])
    assert not (tmp_path / "tiny").exists()  # stopped before anything was built
    with pytest.raises(ValueError, match="unknown benchmark 'popee'"):
        parse_benchmark_specs([f"popee={bench_dir / 'synthetic_pope'}"])
    with pytest.raises(ValueError, match="is not 'name=path'"):
        parse_benchmark_specs(["synthetic_pope"])

    # A path that exists but holds no benchmark: the data is loaded on train begin, and the error names the file.
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tquestion\n0\twhat?\n")
    callback = BenchmarkEvalCallback([f"synthetic_pope={bad}"], trainer=object())
    args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match=str(bad)):
        callback.on_train_begin(args, TrainerState(), TrainerControl())
    with pytest.raises(ValueError, match="trainer=trainer"):
        BenchmarkEvalCallback([f"synthetic_pope={bench_dir / 'synthetic_pope'}"]).on_train_begin(
            args, TrainerState(), TrainerControl())  # fmt: skip


def test_run_config_keys_are_typed_and_checked(tmp_path):
    from ross.train.config import load_config

    base = {"output_dir": str(tmp_path), "prepare_tiny": {"root": str(tmp_path / "tiny")}, "stage": 1}
    config, _ = load_config(None, {**base, "benchmarks": ["synthetic_pope=/data/x"], "benchmark_every_steps": "50",
                                   "benchmark_limit": 20.0})  # fmt: skip
    assert config.benchmarks == ["synthetic_pope=/data/x"]
    assert (config.benchmark_every_steps, config.benchmark_limit) == (50, 20)
    assert config.benchmark_batch_size == 8 and config.benchmark_rules == "lmms-eval"
    with pytest.raises(ValueError, match="benchmark_rules='paper' is not one of 'lmms-eval', 'vlmevalkit'"):
        load_config(None, {**base, "benchmark_rules": "paper"})
    with pytest.raises(ValueError, match="benchmarks='pope=x' is not a list of a string"):
        load_config(None, {**base, "benchmarks": "pope=x"})
