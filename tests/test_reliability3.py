"""Issue 23 (reliability, round 3): four silent wrong results and the last deep tracebacks.

Silent: duplicated items scored twice (`eval.score`, `eval.run`), a partial authors' checkpoint converted into a
shallower denoiser, a LLaVA record whose first turn is `gpt`, `images_seen_per_rank` after a resume. Tracebacks: a
truncated RGB JPEG (processor, `eval.run`, the Space, training), bad JSON data files, model paths without weights or
that do not exist, `convert_official` on a file or without `mm_inv_projector`, undecodable Space uploads.
"""

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from fixtures_official import write_tiny_official_checkpoint
from modeling_ross.convert_official import ConversionError, convert_official
from modeling_ross.convert_official import main as convert_main
from ross.eval import run, score
from ross.eval.benchmarks import BadItemError, BenchmarkDataError, decode_images, get_benchmark
from ross.eval.generation import ModelPathError, evaluate_model, load_model, model_path_problem
from ross.train.sources import BadSampleError, DataFileError, JsonSource, drop_leading_gpt_turn


REPO_ROOT = Path(__file__).resolve().parents[1]
NET = "model.mm_inv_projector.net."


def _jpeg(seed: int = 0, size=(56, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _truncated_jpeg() -> bytes:
    data = _jpeg()
    return data[: len(data) // 2]


def _one_error_line(err: str) -> str:
    """The one `error: ...` line, last on stderr (progress bars may come before it), and no traceback."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


# ---------------------------------------------------------------------------------------------------------------------
# 1. Duplicated items: an error naming the id and lines, or (--on-duplicate last) the last copy scored and counted
# ---------------------------------------------------------------------------------------------------------------------

ITEMS = [("1", "yes"), ("2", "no"), ("3", "yes"), ("4", "no")]
FLIP = {"yes": "no", "no": "yes"}


def _two_runs(path: Path) -> Path:
    """Two runs of the same 4 POPE items concatenated: the first all wrong, the second 3 of 4 right."""
    first = [dict(question_id=q, question="?", answer=a, category="random", prediction=FLIP[a]) for q, a in ITEMS]
    second = [dict(question_id=q, question="?", answer=a, category="random", prediction=a if q != "4" else FLIP[a])
              for q, a in ITEMS]
    path.write_text("".join(json.dumps(row) + "\n" for row in first + second))
    return path


def test_score_refuses_repeated_items_naming_id_and_lines(tmp_path, capsys):
    path = _two_runs(tmp_path / "predictions.jsonl")
    assert score.main(["--benchmark", "pope", "--predictions", str(path)]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert captured.out == ""
    assert str(path) in line and "4 item(s) appear on several lines" in line
    # POPE's items are told apart by question_id and category (the three POPE splits may reuse an id)
    assert "first: question_id=1, category=random on lines 1, 5" in line and "--on-duplicate last" in line


def test_score_on_duplicate_last_scores_each_item_once_and_counts_the_copies(tmp_path, capsys):
    path = _two_runs(tmp_path / "predictions.jsonl")
    assert score.main(["--benchmark", "pope", "--predictions", str(path), "--on-duplicate", "last"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_items"] == 4 and out["accuracy"] == 0.75  # not 8 items at 0.375
    assert out["duplicates"]["count"] == 4
    assert out["duplicates"]["items"][0] == {"id": "question_id=1, category=random", "lines": [1, 5],
                                                "kept": 5}


def test_items_are_told_apart_by_the_benchmark_key_fields(tmp_path, capsys):
    # HallusionBench repeats question_id across figures: the same question_id on two figures is two items.
    rows = [{"category": "VD", "subcategory": "chart", "set_id": 0, "figure_id": f, "question_id": 0, "question": "?",
             "gt_answer": "1", "prediction": "yes"} for f in (0, 1)]
    path = tmp_path / "hallusion.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert score.main(["--benchmark", "hallusionbench", "--predictions", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["num_items"] == 2
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    assert score.main(["--benchmark", "hallusionbench", "--predictions", str(path)]) == 2
    assert "figure_id=0, question_id=0 on lines 1, 3" in _one_error_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def pope_dir(tmp_path_factory):
    from ross.eval.synthetic import write_benchmarks

    root = tmp_path_factory.mktemp("synthetic")
    write_benchmarks(str(root), num_items=6, names=["synthetic_pope"])
    return root / "synthetic_pope"


def _pope_copy(pope_dir, out: Path, edit) -> Path:
    """`pope_dir` saved again under `out` after `edit(rows)` (a dict of columns; images undecoded)."""
    import datasets

    data = datasets.load_from_disk(str(pope_dir)).cast_column("image", datasets.Image(decode=False))
    rows = data.to_dict()
    edit(rows)
    datasets.Dataset.from_dict(rows, features=data.features).save_to_disk(str(out))
    return out


def test_benchmark_data_with_a_duplicated_id_is_refused(pope_dir, tmp_path):
    def duplicate(rows):
        rows["question_id"][3] = rows["question_id"][1]
        rows["category"][3] = rows["category"][1]

    data = _pope_copy(pope_dir, tmp_path / "dup", duplicate)
    with pytest.raises(BenchmarkDataError) as info:
        get_benchmark("synthetic_pope").load(data)
    message = str(info.value)
    assert str(data) in message and "appear more than once" in message and "rows 1, 3" in message
    assert len(get_benchmark("synthetic_pope").load(pope_dir)) > 0  # the untouched data loads


# ---------------------------------------------------------------------------------------------------------------------
# 2. A partial authors' checkpoint is refused, naming what is missing
# ---------------------------------------------------------------------------------------------------------------------


def _drop_tensors(folder: Path, fragment: str, keep_total_size: bool = True) -> None:
    """Remove every tensor whose key holds `fragment` from the shards and the index (consistent with each other);
    `total_size` kept as declared, or recomputed from what is left."""
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        tensors = {k: v for k, v in load_file(str(folder / shard)).items() if fragment not in k}
        total += sum(v.numel() * v.element_size() for v in tensors.values())
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if fragment not in k}
    if not keep_total_size:
        index["metadata"]["total_size"] = total
    index_file.write_text(json.dumps(index))


def test_checkpoint_without_its_last_dit_block_is_refused(tmp_path):
    src = tmp_path / "src"
    write_tiny_official_checkpoint(src, with_tokenizer=False)
    _drop_tensors(src, NET + "blocks.2.")
    with pytest.raises(ConversionError) as info:
        convert_official(str(src), tmp_path / "dst", image_token_id=160)
    message = str(info.value)
    assert "partial" in message and "'denoiser_vit3x' gives a denoiser of 3 DiT blocks; block(s) [2] are missing" in message
    assert "declares total_size" in message and "bytes missing" in message
    assert not (tmp_path / "dst").exists()  # nothing written


def test_a_missing_block_is_found_from_the_config_alone(tmp_path):
    # The index's total_size recomputed too: the config's `denoiser_vit3x` still says 3 blocks.
    src = tmp_path / "src"
    write_tiny_official_checkpoint(src, with_tokenizer=False)
    _drop_tensors(src, NET + "blocks.2.", keep_total_size=False)
    with pytest.raises(ConversionError, match=r"block\(s\) \[2\] are missing") as info:
        convert_official(str(src), tmp_path / "dst", image_token_id=160)
    assert "total_size" not in str(info.value)


def test_convert_main_prints_one_line_and_exits_2(tmp_path, capsys):
    src = tmp_path / "src"
    write_tiny_official_checkpoint(src, with_tokenizer=False, with_denoiser=False)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "ross_enable": True, "mm_inv_projector_type": "denoiser_vit3x"}))
    with pytest.raises(SystemExit) as info:
        convert_main(["--src", str(src), "--dst", str(tmp_path / "dst"), "--image-token-id", "160"])
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no denoiser weights" in line and "mm_inv_projector" in line

    a_file = tmp_path / "weights.safetensors"
    a_file.write_bytes(b"x")
    with pytest.raises(SystemExit) as info:
        convert_main(["--src", str(a_file), "--dst", str(tmp_path / "dst2")])
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--src {a_file} is a file" in line and "Repo id" not in line

    with pytest.raises(SystemExit) as info:
        convert_main(["--src", str(tmp_path / "no" / "such" / "folder"), "--dst", str(tmp_path / "dst3")])
    assert info.value.code == 2
    assert "no such folder" in _one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------------------------------
# 3. A LLaVA record whose first turn is gpt: dropped as the authors do, and counted
# ---------------------------------------------------------------------------------------------------------------------


def _llava(conversations, image=None, record_id="r"):
    record = {"id": record_id, "conversations": [{"from": f, "value": v} for f, v in conversations]}
    if image:
        record["image"] = image
    return record


def test_a_leading_gpt_turn_is_dropped_as_the_authors_do(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")  # never opened here
    records = [
        _llava([("gpt", "Hello! Ask me."), ("human", "<image>\nWhat colour?"), ("gpt", "red")], "a.png", "lead"),
        _llava([("human", "<image>\nWhat colour?"), ("gpt", "red")], "a.png", "plain"),
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    source = JsonSource(str(path), None, "llava")
    parsed = dict(source.parse_all(check_files=False))
    first, second = parsed[0], parsed[1]
    assert first.messages == second.messages  # the greeting is not trained before the image and the question
    assert [m["role"] for m in first.messages] == ["user", "assistant"]
    assert source.changes == {"dropped_leading_gpt_turn": 1}

    # What the authors' preprocessing would then refuse (a second leading gpt turn) or leave empty, is named.
    with pytest.raises(BadSampleError, match="turns 0 and 1 are both gpt turns"):
        drop_leading_gpt_turn([{"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}])
    with pytest.raises(BadSampleError, match="nothing is left to supervise"):
        drop_leading_gpt_turn([{"from": "gpt", "value": "a"}])
    kept = [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    assert drop_leading_gpt_turn(kept) == (kept, False)


# ---------------------------------------------------------------------------------------------------------------------
# 4. images_seen_per_rank covers the whole run after a resume
# ---------------------------------------------------------------------------------------------------------------------


class _Samples(torch.utils.data.Dataset):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.items = []
        for i in range(8):
            images = [Image.fromarray(rng.integers(0, 255, (24, 36, 3), dtype=np.uint8)) for _ in range(i % 3)]
            content = [{"type": "image"}] * len(images) + [{"type": "text", "text": f"How many? {i}"}]
            messages = [{"role": "user", "content": content},
                        {"role": "assistant", "content": [{"type": "text", "text": str(len(images))}]}]
            self.items.append({"messages": messages, "images": images})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


class _Collator:
    def __init__(self, processor):
        self.processor = processor

    def __call__(self, samples):
        texts = self.processor.apply_chat_template([s["messages"] for s in samples], tokenize=False)
        images = [image for s in samples for image in s["images"]]
        batch = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        labels[batch["input_ids"] == self.processor.image_token_id] = -100
        batch["labels"] = labels
        return dict(batch)


def test_images_seen_per_rank_covers_the_whole_run_after_a_resume(tiny_components, tiny_processor, tmp_path):
    from conftest import TINY_OBJECTIVE
    from modeling_ross import from_components
    from ross.train.trainer import RossTrainer, RossTrainingArguments, images_seen_per_rank

    def trainer(output_dir, steps):
        torch.manual_seed(0)
        model = from_components(**tiny_components, **TINY_OBJECTIVE)
        args = RossTrainingArguments(
            output_dir=str(output_dir), per_device_train_batch_size=2, max_steps=steps, learning_rate=1e-3,
            save_strategy="steps", save_steps=2, report_to="none", use_cpu=True, dataloader_num_workers=0, seed=0,
            disable_tqdm=True, logging_steps=1,
        )  # fmt: skip
        return RossTrainer(model=model, args=args, train_dataset=_Samples(), data_collator=_Collator(tiny_processor))

    whole = trainer(tmp_path / "whole", 4)
    whole.train()
    expected = images_seen_per_rank(whole)
    assert expected == [sum(i % 3 for i in range(8))]  # 4 steps of 2 samples: every sample's images once

    first = trainer(tmp_path / "split", 2)
    first.train()
    saved = json.loads((tmp_path / "split" / "checkpoint-2" / "ross_run_totals.json").read_text())
    assert saved["images_seen_per_rank"] == images_seen_per_rank(first) and 0 < saved["images_seen_per_rank"][0]
    resumed = trainer(tmp_path / "split", 4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "split" / "checkpoint-2"))
    assert resumed.images_seen < expected[0]  # this process alone saw only the last two steps' images
    assert images_seen_per_rank(resumed) == expected


# ---------------------------------------------------------------------------------------------------------------------
# Truncated RGB JPEG: decoded inside `upright_rgb`, named on every path
# ---------------------------------------------------------------------------------------------------------------------


def test_upright_rgb_decodes_an_rgb_jpeg_and_the_processor_names_it(tmp_path, tiny_processor):
    from modeling_ross.processing_ross import upright_rgb

    path = tmp_path / "cut.jpg"
    path.write_bytes(_truncated_jpeg())
    with Image.open(path) as image:
        assert image.mode == "RGB"  # `to_rgb` would return it as it is, undecoded
        with pytest.raises(OSError, match="truncated"):
            upright_rgb(image)
    with pytest.raises(ValueError) as info:
        tiny_processor(text=["<image>\nWhat?"], images=[Image.open(path)], return_tensors="pt")
    message = str(info.value)
    assert message.startswith("images[0] (JPEG file") and str(path) in message and "truncated" in message
    whole = Image.open(io.BytesIO(_jpeg()))
    assert np.array_equal(np.asarray(upright_rgb(whole)), np.asarray(Image.open(io.BytesIO(_jpeg())).convert("RGB")))


@pytest.fixture(scope="module")
def truncated_pope(pope_dir, tmp_path_factory):
    def cut(rows):
        rows["image"][2] = {"bytes": _truncated_jpeg(), "path": None}

    return _pope_copy(pope_dir, tmp_path_factory.mktemp("trunc") / "pope", cut)


def test_eval_names_and_skips_a_truncated_rgb_jpeg(truncated_pope, tiny_components, tiny_processor, tmp_path):
    from conftest import TINY_OBJECTIVE
    from modeling_ross import from_components

    rows = get_benchmark("synthetic_pope").load(truncated_pope)
    with pytest.raises(BadItemError) as info:
        decode_images(rows[2], 2, truncated_pope)
    assert "row 2 (id 2)" in str(info.value) and "truncated" in str(info.value)

    torch.manual_seed(0)
    model = from_components(**tiny_components, **TINY_OBJECTIVE).eval()
    scores = evaluate_model(model, tiny_processor, "synthetic_pope", truncated_pope, batch_size=4, max_new_tokens=2,
                            progress=False, on_bad_item="skip")
    assert scores["skipped"]["count"] == 1 and scores["skipped"]["items"][0]["index"] == 2
    assert scores["num_items"] == len(rows) - 1


# ---------------------------------------------------------------------------------------------------------------------
# Training: bad JSON data files and a truncated image end the run with one line, status 2
# ---------------------------------------------------------------------------------------------------------------------

GOOD = [_llava([("human", "<image>\nWhat colour?"), ("gpt", "red")], "good.jpg", f"r{i}") for i in range(4)]


@pytest.mark.parametrize(
    "name, payload, expected",
    [
        ("cut.json", json.dumps(GOOD, indent=1)[:200].encode(), r"cut\.json:\d+:\d+: invalid JSON: .*truncated\?"),
        ("empty.json", b"", r"empty\.json: the file is empty"),
        ("empty.jsonl", b"\n\n", r"empty\.jsonl: the file is empty"),
        ("latin1.json", json.dumps([{**GOOD[0], "id": "Café"}], ensure_ascii=False).encode("latin-1"),
         r"latin1\.json:1:\d+: not UTF-8 \(byte 0xe9"),
        ("utf16.json", json.dumps(GOOD).encode("utf-16"), r"utf16\.json:1:1: the file is UTF-16"),
        ("lines.jsonl", (json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[1])[:30] + "\n").encode(),
         r"lines\.jsonl:2:\d+: invalid JSON"),
        ("latin1.jsonl", (json.dumps(GOOD[0]) + "\n" + json.dumps({**GOOD[1], "id": "é"}, ensure_ascii=False)
                          + "\n").encode("latin-1"), r"latin1\.jsonl:2:\d+: not UTF-8"),
    ],
)
def test_bad_json_data_files_are_one_line_naming_file_line_and_column(tmp_path, name, payload, expected):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(DataFileError) as info:
        len(JsonSource(str(path), None, "llava"))  # the file is read on first use
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    assert __import__("re").search(expected, message), message


def _sft_argv(root: Path, data: Path, output_dir: Path) -> list[str]:
    return [
        "--config", str(REPO_ROOT / "train" / "configs" / "tiny_stage2.yaml"),
        "--prepare_tiny", f"{{root: {root}, num_images: 8, stage: sft}}",
        "--data_path", str(data), "--image_folder", str(data.parent), "--output_dir", str(output_dir),
        "--max_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
    ]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-run")


def test_sft_bad_data_is_one_line_and_status_2(tiny_root, tmp_path, capsys):
    from ross.train.sft import cli

    (tmp_path / "cut.jpg").write_bytes(_truncated_jpeg())
    data = tmp_path / "data.json"
    data.write_text(json.dumps([_llava([("human", "<image>\nWhat?"), ("gpt", "red")], "cut.jpg", f"r{i}")
                                for i in range(2)]))
    assert cli(_sft_argv(tiny_root, data, tmp_path / "out")) == 2  # at step 0, in error mode
    line = _one_error_line(capsys.readouterr().err)
    assert "bad sample id='r0'" in line and str(tmp_path / "cut.jpg") in line and "truncated" in line

    data.write_bytes(json.dumps(GOOD).encode("utf-16"))
    assert cli(_sft_argv(tiny_root, data, tmp_path / "out2")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{data}:1:1: the file is UTF-16" in line


class _BadFetch(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise BadSampleError("corrupt_image", "cannot decode image file x.jpg", "r0", "d.json:#0")


def test_a_bad_sample_from_a_dataloader_worker_keeps_its_one_line_message():
    # torch re-raises a worker's exception as `type(formatted traceback)`: still a BadSampleError, with the message.
    with pytest.raises(BadSampleError) as info:
        list(torch.utils.data.DataLoader(_BadFetch(), num_workers=1))
    assert str(info.value) == "bad sample id='r0' (d.json:#0) [corrupt_image]: cannot decode image file x.jpg"


def test_sft_summary_counts_a_record_whose_gpt_turn_was_dropped(tiny_root, tmp_path):
    from ross.train.sft import main

    (tmp_path / "good.jpg").write_bytes(_jpeg(1))
    records = GOOD[:3] + [_llava([("gpt", "Hi!"), ("human", "<image>\nWhat colour?"), ("gpt", "red")], "good.jpg")]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    summary = main(_sft_argv(tiny_root, data, tmp_path / "out"))
    assert summary["changed"] == {"dropped_leading_gpt_turn": 1} and summary["num_records"] == 4
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["changed"] == {"dropped_leading_gpt_turn": 1}


# ---------------------------------------------------------------------------------------------------------------------
# Model paths: a folder without weights, a path that does not exist
# ---------------------------------------------------------------------------------------------------------------------


def test_model_paths_are_named_before_loading(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert model_path_problem(folder) == f"model folder {folder} has no weights (model.safetensors or " \
                                         "model.safetensors.index.json)"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    assert "the shard(s) model-1.safetensors" in model_path_problem(folder)
    missing = tmp_path / "runs" / "no-such-model"
    assert model_path_problem(missing) == f"model folder {missing} does not exist"
    assert model_path_problem("user/ross-qwen2-7b") is None  # a Hub id: left to huggingface_hub
    with pytest.raises(ModelPathError, match="does not exist"):
        load_model(missing)


def test_sft_names_a_model_folder_without_weights(tmp_path, tiny_components):
    from ross.train.build import check_model_sources
    from ross.train.config import load_config

    folder = tmp_path / "stage1" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    run_config, _ = load_config(None, {"output_dir": str(tmp_path / "out"), "data_path": "d",
                                       "model_name_or_path": str(folder)})
    with pytest.raises(ValueError) as info:
        check_model_sources(run_config)
    assert f"model_name_or_path: model folder {folder} has no weights" in str(info.value)


def test_sft_model_path_errors_are_one_line(tiny_root, tmp_path, capsys):
    from ross.train.sft import cli

    folder = tmp_path / "stage1" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(GOOD))
    argv = _sft_argv(tiny_root, data, tmp_path / "out")
    assert cli([*argv, "--model_name_or_path", str(folder)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"error: Cannot load the run's models: model_name_or_path: model folder {folder} has no weights "
                    "(model.safetensors or model.safetensors.index.json)")


def test_eval_run_names_a_model_folder_without_weights(tmp_path, pope_dir, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    argv = ["--benchmark", "synthetic_pope", "--data", str(pope_dir), "--out", str(tmp_path / "out")]
    assert run.main(["--model", str(folder), *argv]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(folder) in line and "no weights" in line
    assert run.main(["--model", str(tmp_path / "nowhere" / "model"), *argv]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "does not exist" in line and "Repo id" not in line


# ---------------------------------------------------------------------------------------------------------------------
# The Space: uploads Gradio cannot decode are a message in the page; a model path that does not exist
# ---------------------------------------------------------------------------------------------------------------------


def _app():
    import importlib.util

    if "ross_spaces_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ross_spaces_app", REPO_ROOT / "spaces" / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["ross_spaces_app"] = module
        spec.loader.exec_module(module)
    return sys.modules["ross_spaces_app"]


@pytest.mark.parametrize(
    "name, payload, expected",
    [
        ("cut.jpg", _truncated_jpeg(), "cannot be decoded (OSError: image file is truncated"),
        ("empty.png", b"", "not an image file PIL can read"),
        ("notes.png", b"shopping list: eggs, milk\n", "not an image file PIL can read"),
        ("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image file PIL can read"),
        ("bomb.jpg", _jpeg(), "too large to decode safely"),
    ],
)
def test_space_undecodable_uploads_are_a_message_in_the_page(tmp_path, monkeypatch, name, payload, expected):
    import gradio as gr
    from gradio.data_classes import FileData

    app = _app()
    if name.startswith("bomb"):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 56 x 40 > 2 x 1000: PIL's DecompressionBombError
    path = tmp_path / name
    path.write_bytes(payload)
    component = app.upload_image(label="Image", type="pil", image_mode=None)
    assert type(component) is gr.Image  # rendered by gr.Image's own frontend
    with pytest.raises(gr.Error) as info:
        component.preprocess(FileData(path=str(path), orig_name=name))
    message = info.value.message
    assert message.startswith(f"Image: cannot use {name}: ") and expected in message


def test_space_decodes_good_uploads_as_gr_image_does(tmp_path):
    from gradio.data_classes import FileData

    app = _app()
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg())
    image = app.upload_image(label="Image", type="pil", image_mode=None).preprocess(FileData(path=str(path)))
    reference = app.gr.Image(type="pil", image_mode=None).preprocess(FileData(path=str(path)))
    assert np.array_equal(np.asarray(image), np.asarray(reference))


def test_space_names_a_model_folder_that_does_not_exist(tmp_path, capsys):
    app = _app()
    missing = tmp_path / "runs" / "demo" / "model"
    with pytest.raises(SystemExit) as info:
        app.main(["--model", str(missing)])
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"error: model folder {missing} does not exist"
