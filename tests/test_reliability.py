"""Training under bad input and faults: model paths, image folder, bad-sample share, the length pre-pass, dropped
bad samples, half-written checkpoints, progress lines (issue 13, training side)."""

import json
import logging
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers.trainer_utils import get_last_checkpoint

from ross.train.collator import RossDataCollator
from ross.train.config import load_config
from ross.train.dataset import load_training_dataset, skipped_summary
from test_data import _bad_record, _records, _write, llava_json  # noqa: F401 (fixture)


# ---- model paths (item 2) ----
def _run_config(tmp_path, **overrides):
    values = {"output_dir": str(tmp_path / "out"), "data_path": "d", "allow_fresh_stage2": True, **overrides}
    run_config, _ = load_config(None, values)
    return run_config


def test_missing_local_model_folder_is_named_before_loading(tmp_path, tiny_components, monkeypatch):
    from ross.train import build

    loaded = []
    monkeypatch.setattr(build, "from_components", lambda *a, **k: loaded.append(a))
    missing = str(tmp_path / "models" / "siglip")
    run_config = _run_config(
        tmp_path, vision_model=missing, language_model=tiny_components["language_model"]
    )
    with pytest.raises(ValueError) as info:
        build.build_model_and_processor(run_config)
    message = str(info.value)
    assert "vision_model" in message and missing in message and "does not exist" in message
    assert "Repo id" not in message and not loaded

    # A Hub id that is not in the local cache, offline: say that offline mode is on.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_config = _run_config(
        tmp_path, vision_model=tiny_components["vision_model"], language_model="nobody-org/no-such-llm-xyz"
    )
    with pytest.raises(ValueError) as info:
        build.build_model_and_processor(run_config)
    message = str(info.value)
    assert "language_model" in message and "nobody-org/no-such-llm-xyz" in message
    assert "offline" in message and "HF_HUB_OFFLINE" in message and not loaded


# ---- image folder, bad-sample share (item 3) ----
def test_missing_image_folder_is_an_error_up_front(tmp_path):
    path = _write(tmp_path, _records(tmp_path))
    for mode in ("error", "skip"):
        with pytest.raises(FileNotFoundError, match=f"image_folder {tmp_path / 'nope'} does not exist"):
            load_training_dataset(path, image_folder=tmp_path / "nope", on_bad_sample=mode)


def test_skip_mode_stops_above_max_bad_fraction(tmp_path):
    records = _records(tmp_path)
    path = _write(tmp_path, records + [_bad_record("missing_image", tmp_path)])
    with pytest.raises(ValueError) as info:
        load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.05)
    message = str(info.value)
    assert "1 of 4" in message and "missing_image: 1" in message and str(path) in message
    assert "max_bad_fraction" in message
    dataset = load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.5)
    assert len(dataset) == 3 and dataset.skipped == {"missing_image": 1}


# ---- length pre-pass (item 4) ----
def test_length_prepass_finds_too_long_samples_before_training(llava_json, tiny_processor, tmp_path, monkeypatch):
    from ross.train.lengths import check_lengths

    dataset = load_training_dataset(llava_json)
    full = RossDataCollator(tiny_processor, max_length=512)([dataset[i] for i in range(3)])
    lengths = full["attention_mask"].sum(-1).tolist()
    limit = lengths[2] - 1  # the two-image sample is one token too long
    collator = RossDataCollator(tiny_processor, max_length=limit)
    with pytest.raises(ValueError) as info:
        check_lengths(dataset, collator, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "1 sample(s)" in message and "'two'" in message and str(llava_json) in message
    assert f"{lengths[2]} tokens > max_length {limit}" in message

    # The measured lengths are exactly what the collator makes; cached: a second pass encodes nothing.
    dataset = load_training_dataset(llava_json, on_bad_sample="skip", max_bad_fraction=0.5)
    collator = RossDataCollator(tiny_processor, max_length=limit, on_bad_sample="skip")
    measured = check_lengths(dataset, collator, cache_dir=tmp_path / "cache")
    assert measured == lengths
    assert len(dataset) == 2 and [dataset[i]["id"] for i in range(2)] == ["text", "one"]
    assert dataset.skipped == {"too_long": 1}
    assert dataset.lengths == lengths[:2]  # exact lengths for the samplers

    calls = []
    monkeypatch.setattr(RossDataCollator, "_encode", lambda self, f: calls.append(f))
    dataset = load_training_dataset(llava_json, on_bad_sample="skip", max_bad_fraction=0.5)
    assert check_lengths(dataset, collator, cache_dir=tmp_path / "cache") == lengths and not calls
    assert len(dataset) == 2
    # Another max_length is another key (a new pass).
    monkeypatch.undo()
    other = RossDataCollator(tiny_processor, max_length=512, on_bad_sample="skip")
    dataset = load_training_dataset(llava_json, on_bad_sample="skip", max_bad_fraction=0.5)
    assert check_lengths(dataset, other, cache_dir=tmp_path / "cache") == lengths and len(dataset) == 3
    assert len(list((tmp_path / "cache").glob("lengths-*.json"))) == 2


# ---- bad samples found at fetch are dropped, not replaced (item 5) ----
def test_undecodable_image_is_dropped_not_replaced(tmp_path, tiny_processor):
    records = _records(tmp_path)
    path = _write(tmp_path, records[:1] + [_bad_record("corrupt_image", tmp_path)] + records[1:])
    dataset = load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.5)
    collator = RossDataCollator(tiny_processor, max_length=512, on_bad_sample="skip")
    seen = []

    def collate(features):
        seen.extend(f["id"] for f in features if f is not None)
        return collator(features)

    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate)
    rows = sum(batch["input_ids"].shape[0] for batch in loader)
    assert rows == 3 and sorted(seen) == ["one", "text", "two"]  # no sample trained twice
    assert skipped_summary(dataset, collator) == {"corrupt_image": 1}


def test_skip_mode_batch_of_one_bad_sample_trains_on(tmp_path, tiny_model, tiny_processor):
    """Batch size 1 and a sample found bad at fetch: the step trains on a zero-weight placeholder, the run goes on."""
    from ross.train.trainer import RossTrainer, RossTrainingArguments, apply_stage

    records = _records(tmp_path)
    path = _write(tmp_path, records[1:2] + [_bad_record("corrupt_image", tmp_path)] + records[1:2])
    dataset = load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.5)
    collator = RossDataCollator(tiny_processor, max_length=512, on_bad_sample="skip")
    apply_stage(tiny_model, 2)
    args = RossTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, max_steps=3, learning_rate=1e-3,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = RossTrainer(model=tiny_model, args=args, train_dataset=dataset, data_collator=collator)
    placeholder = collator([None])
    loss = trainer.compute_loss(tiny_model.train(), placeholder)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in tiny_model.parameters())
    tiny_model.zero_grad(set_to_none=True)

    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(value) for value in losses)
    assert skipped_summary(dataset, collator) == {"corrupt_image": 1}


# ---- checkpoints (item 6) ----
def _complete_checkpoint(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "ross"}))
    save_file({"w": torch.zeros(4, 4)}, str(folder / "model.safetensors"))
    torch.save({"state": {0: torch.ones(64)}}, folder / "optimizer.pt")
    torch.save({"lr": 1}, folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_resume_picks_the_newest_complete_checkpoint(tmp_path, caplog):
    from ross.train.checkpoints import latest_complete_checkpoint

    _complete_checkpoint(tmp_path / "checkpoint-2", 2)
    (tmp_path / "checkpoint-4").mkdir()  # killed right after mkdir
    zero_config = _complete_checkpoint(tmp_path / "checkpoint-6", 6)
    (zero_config / "config.json").write_text("")
    truncated = _complete_checkpoint(tmp_path / "checkpoint-8", 8)
    data = (truncated / "optimizer.pt").read_bytes()
    (truncated / "optimizer.pt").write_bytes(data[: len(data) // 2])
    short = _complete_checkpoint(tmp_path / "checkpoint-10", 10)
    data = (short / "model.safetensors").read_bytes()
    (short / "model.safetensors").write_bytes(data[:-10])
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-10")  # what the stock Trainer resumes from

    with caplog.at_level(logging.WARNING, logger="ross.train.checkpoints"):
        chosen = latest_complete_checkpoint(tmp_path)
    assert chosen == str(tmp_path / "checkpoint-2")
    for name, reason in (("checkpoint-4", "trainer_state.json"), ("checkpoint-6", "config.json"),
                         ("checkpoint-8", "optimizer.pt"), ("checkpoint-10", "model.safetensors")):
        assert any(name in r.message and reason in r.message for r in caplog.records), (name, caplog.text)
    for step in (2, 6, 8, 10):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{")
    with pytest.raises(ValueError, match="(?s)no complete checkpoint.*checkpoint-4.*checkpoint-2"):
        latest_complete_checkpoint(tmp_path)


# ---- progress (item 8) ----
def test_progress_callback_prints_compact_lines(capsys):
    from transformers import TrainerControl, TrainerState

    from ross.train.callbacks import ProgressCallback

    callback = ProgressCallback(label="stage 2")
    state = TrainerState(max_steps=10, global_step=0)
    callback.on_train_begin(None, state, TrainerControl())
    state.global_step = 3
    callback.on_log(None, state, TrainerControl(), logs={"loss": 1.5, "text_loss": 1.2, "visual_loss": 0.31})
    err = capsys.readouterr().err
    assert err.startswith("[ross] progress stage 2 step 3/10") and "loss 1.5" in err and "visual 0.31" in err
    assert "ETA" in err


def test_demo_stage_shows_progress_and_still_logs(tmp_path, capsys):
    from ross.train.demo import stream_process

    script = (
        "import sys\n"
        "print('noise line')\n"
        "print('[ross] progress stage 1 step 1/2 loss 2.0 ETA 0s', file=sys.stderr)\n"
        "print('[ross] progress stage 1 step 2/2 loss 1.0 ETA 0s', file=sys.stderr)\n"
    )
    log_file = tmp_path / "train.log"
    with open(log_file, "w") as f:
        code = stream_process([sys.executable, "-c", script], log=f, env=dict(os.environ), cwd=tmp_path)
    assert code == 0
    text = log_file.read_text()
    assert "noise line" in text and "step 2/2" in text
    out = capsys.readouterr().out
    assert "stage 1 step 1/2" in out and "stage 1 step 2/2" in out and "noise line" not in out


def test_latent_cache_build_shows_progress(tiny_model, tiny_processor, tmp_path, capsys):
    from PIL import Image

    from ross.train.latent_cache import build_latent_cache

    items = [{"id": str(i), "images": [Image.new("RGB", (20, 20), (10 * i, 0, 0))]} for i in range(3)]
    build_latent_cache(tiny_model.teacher, tiny_processor, items, tmp_path / "cache", batch_size=2)
    assert "latent cache" in capsys.readouterr().err
