"""Evaluation under bad input and interruptions: named bad rows, `--on-bad-item`, exit status 2, incremental
predictions and `--resume`, the progress line, and `eval.score` on null predictions."""

import io
import json

import pytest
import torch
from PIL import Image

from ross.eval import generation, run, score
from ross.eval.benchmarks import BadItemError, get_benchmark
from ross.eval.generation import evaluate_model, load_model


NUM_ITEMS = 12
GARBAGE_ROW, TRUNCATED_ROW = 3, 5


@pytest.fixture(scope="module")
def model_dir(tiny_components, tmp_path_factory):
    from conftest import TINY_OBJECTIVE
    from modeling_ross import RossProcessor, from_components

    folder = tmp_path_factory.mktemp("ross-tiny")
    torch.manual_seed(0)
    from_components(**tiny_components, **TINY_OBJECTIVE).eval().save_pretrained(folder)
    RossProcessor.from_components(tiny_components["vision_model"], tiny_components["language_model"]).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def pope_dir(tmp_path_factory):
    from ross.eval.synthetic import write_benchmarks

    root = tmp_path_factory.mktemp("synthetic")
    write_benchmarks(str(root), num_items=NUM_ITEMS, names=["synthetic_pope"])
    return root / "synthetic_pope"


def _copy_with(pope_dir, out, replace: dict, drop_column: str | None = None):
    """`pope_dir` saved again under `out`, with the image bytes of rows `replace` = {index: bytes}."""
    import datasets

    data = datasets.load_from_disk(str(pope_dir)).cast_column("image", datasets.Image(decode=False))
    rows = data.to_dict()
    for index, payload in replace.items():
        rows["image"][index] = {"bytes": payload, "path": None}
    if drop_column:
        del rows[drop_column]
    features = datasets.Features({k: v for k, v in data.features.items() if k in rows})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(out))
    return out


def _png_bytes(pope_dir, index) -> bytes:
    import datasets

    data = datasets.load_from_disk(str(pope_dir)).cast_column("image", datasets.Image(decode=False))
    return data[index]["image"]["bytes"]


@pytest.fixture(scope="module")
def bad_dir(pope_dir, tmp_path_factory):
    """Row 3 holds bytes that are no image at all; row 5 a PNG cut in half (it opens, it does not decode)."""
    truncated = _png_bytes(pope_dir, TRUNCATED_ROW)
    truncated = truncated[: len(truncated) // 2]
    with Image.open(io.BytesIO(truncated)) as check:  # the header is intact: only decoding fails
        assert check.size[0] > 0
    return _copy_with(pope_dir, tmp_path_factory.mktemp("bad") / "pope", {GARBAGE_ROW: b"not an image at all",
                                                                          TRUNCATED_ROW: truncated})


@pytest.fixture(scope="module")
def truncated_dir(pope_dir, tmp_path_factory):
    truncated = _png_bytes(pope_dir, TRUNCATED_ROW)
    return _copy_with(pope_dir, tmp_path_factory.mktemp("trunc") / "pope",
                      {TRUNCATED_ROW: truncated[: len(truncated) // 2]})


def _cli(model_dir, data, out, *extra):
    return run.main(["--model", str(model_dir), "--benchmark", "synthetic_pope", "--data", str(data), "--out",
                     str(out), "--batch-size", "4", "--max-new-tokens", "3", *extra])


def _one_error_line(err: str) -> str:
    """The one `error: ...` line, last on stderr (transformers' own "Loading weights" bar may come before it)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


# ---------------------------------------------------------------------------------------------------------------------
# Bad rows: named, exit 2, or skipped and counted
# ---------------------------------------------------------------------------------------------------------------------


def test_undecodable_image_names_row_and_file(pope_dir, bad_dir):
    with pytest.raises(BadItemError) as info:
        get_benchmark("synthetic_pope").load(bad_dir)
    message = str(info.value)
    assert str(bad_dir) in message and f"row {GARBAGE_ROW} (id {GARBAGE_ROW})" in message
    assert "column 'image'" in message and "cannot open the image" in message


def test_bad_image_after_the_model_loads_exits_2_naming_the_row(model_dir, truncated_dir, tmp_path, capsys):
    """The truncated PNG opens at load and fails only when its batch is decoded, after generation started."""
    assert _cli(model_dir, truncated_dir, tmp_path / "out", "--no-progress") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(truncated_dir) in line and f"row {TRUNCATED_ROW} (id {TRUNCATED_ROW})" in line
    assert "cannot be decoded" in line and "truncated" in line


def test_missing_column_after_the_model_loads_exits_2(model_dir, pope_dir, tmp_path, capsys):
    data = _copy_with(pope_dir, tmp_path / "no-answer", {}, drop_column="answer")
    assert _cli(model_dir, data, tmp_path / "out", "--no-progress") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(data) in line and "missing column 'answer'" in line


def test_on_bad_item_skip_counts_the_skipped_rows(model_dir, bad_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli(model_dir, bad_dir, out, "--no-progress", "--on-bad-item", "skip") == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["num_items"] == NUM_ITEMS - 2
    assert scores["skipped"]["count"] == 2
    assert [(s["index"], s["id"]) for s in scores["skipped"]["items"]] == [(GARBAGE_ROW, "3"), (TRUNCATED_ROW, "5")]
    assert all(s["reason"] and s["file"] == str(bad_dir) for s in scores["skipped"]["items"])
    ids = [json.loads(line)["question_id"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert ids == [str(i) for i in range(NUM_ITEMS) if i not in (GARBAGE_ROW, TRUNCATED_ROW)]


# ---------------------------------------------------------------------------------------------------------------------
# Nothing finished is lost: incremental predictions and --resume
# ---------------------------------------------------------------------------------------------------------------------


def test_interrupted_run_keeps_finished_items_and_resume_completes(loaded, pope_dir, tmp_path, monkeypatch):
    model, processor = loaded
    reference = evaluate_model(model, processor, "synthetic_pope", pope_dir, batch_size=4, out_dir=tmp_path / "ref",
                               max_new_tokens=3, progress=False)
    real = generation.generate_batch
    generated = []

    def interrupted_on_second_batch(model, processor, items, *args, **kwargs):
        if len(generated) >= 4:
            raise KeyboardInterrupt
        generated.extend(items)
        return real(model, processor, items, *args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(generation, "generate_batch", interrupted_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(model, processor, "synthetic_pope", pope_dir, batch_size=4, out_dir=out, max_new_tokens=3,
                       progress=False)
    kept = (out / "predictions.jsonl").read_text().splitlines()
    assert len(kept) == 4  # the first batch was on disk before the interruption
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"question_id": "11", "quest')  # a line cut short by kill -9

    generated.clear()
    counting = lambda model, processor, items, *a, **k: (generated.extend(items), real(model, processor, items, *a, **k))[1]  # noqa: E731
    monkeypatch.setattr(generation, "generate_batch", counting)
    scores = evaluate_model(model, processor, "synthetic_pope", pope_dir, batch_size=4, out_dir=out, max_new_tokens=3,
                            progress=False, resume=True)
    assert len(generated) == NUM_ITEMS - 4  # only the unfinished items
    assert scores["resumed_items"] == 4 and scores["num_items"] == NUM_ITEMS
    assert scores["metrics"] == reference["metrics"]
    assert (out / "predictions.jsonl").read_text() == (tmp_path / "ref" / "predictions.jsonl").read_text()


def test_ctrl_c_on_the_command_line_keeps_finished_items(model_dir, pope_dir, tmp_path, monkeypatch, capsys):
    real, calls = generation.generate_batch, []

    def interrupted_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_batch", interrupted_on_second_batch)
    out = tmp_path / "out"
    assert _cli(model_dir, pope_dir, out, "--no-progress") == 130
    assert "--resume" in capsys.readouterr().err.splitlines()[-1]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    monkeypatch.setattr(generation, "generate_batch", real)
    assert _cli(model_dir, pope_dir, out, "--no-progress", "--resume") == 0
    assert json.loads((out / "scores.json").read_text())["num_items"] == NUM_ITEMS


def test_resume_from_another_run_is_an_error(model_dir, pope_dir, tmp_path, capsys):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "predictions.jsonl").write_text(json.dumps({"question_id": "x", "prompt": "?", "prediction": "yes"}) + "\n")
    assert _cli(model_dir, pope_dir, out, "--no-progress", "--resume") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "predictions.jsonl:1" in line and "match no item" in line


# ---------------------------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------------------------


def test_progress_line_by_default_and_hidden_by_no_progress(model_dir, pope_dir, tmp_path, capsys):
    assert _cli(model_dir, pope_dir, tmp_path / "a") == 0
    err = capsys.readouterr().err
    assert f"{NUM_ITEMS}/{NUM_ITEMS}" in err and "item" in err and "<" in err  # done/total, rate, ETA
    assert _cli(model_dir, pope_dir, tmp_path / "b", "--no-progress") == 0
    assert f"/{NUM_ITEMS}" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# eval.score and null predictions
# ---------------------------------------------------------------------------------------------------------------------


def test_score_null_prediction_is_an_error_or_counted_missing(tmp_path, capsys):
    rows = [{"question_id": 1, "question": "?", "answer": "yes", "category": "random", "prediction": "yes"},
            {"question_id": 2, "question": "?", "answer": "no", "category": "random", "prediction": None}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert score.main(["--benchmark", "pope", "--predictions", str(path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{path}:2:" in line and "null" in line
    assert score.main(["--benchmark", "pope", "--predictions", str(path), "--missing-as-wrong"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["missing"] == {"count": 1, "lines": [2]} and out["num_items"] == 2 and out["accuracy"] == 0.5
