"""The run config (`train/config.py`) on `HfArgumentParser`: `--help`, typed nested mappings, YAML errors, paths
resolved once, no side effects at load; and the run's objects complete at construction (`train/sft.py`, `build.py`,
the trainer's callback handler, the model's visual term)."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO_ROOT
from transformers import TrainerCallback

from ross.train.config import (
    ConfigError,
    PrepareTiny,
    RossRunConfig,
    load_config,
    model_override_types,
    parse_overrides,
    read_config,
    run_config_keys,
)


SFT = str(REPO_ROOT / "train" / "sft.py")
CONFIGS = sorted((REPO_ROOT / "train" / "configs").glob("*.yaml"))
BASE = "output_dir: x\nvision_model: a\nlanguage_model: b\ndata_path: d\nstage: 1\n"


def _write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- --help ----
def test_help_lists_every_key_with_type_default_and_meaning(capsys):
    from ross.train import sft

    with pytest.raises(SystemExit) as exit_:  # `python train/sft.py --help`, in this process
        sft.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(RossRunConfig):
        if f.init:
            assert f"--{f.name} " in text or f"--{f.name}\n" in text, f.name
    for name in run_config_keys():  # the run's own keys all say what they mean
        assert RossRunConfig.__dataclass_fields__[name].metadata.get("help"), name
    assert "--config YAML" in text
    assert "--learning_rate FLOAT" in text and "--model_max_length INT" in text
    # Choices are Literal types; objective / target come from the model config.
    assert "--objective {denoise,regress,latent2pixel,none}" in text and "--target {vae,pixel,features}" in text
    assert "--image_aspect_ratio {pad,resize}" in text and "--model_overrides MAPPING" in text
    assert "(default: 2048)" in text and "Longest sample in tokens." in text


# ---- every shipped config loads, unchanged ----
@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_with_its_values(path, tmp_path):
    given = yaml.safe_load(path.read_text())
    overrides = {"use_cpu": True}
    if given.get("model_name_or_path"):
        stage1 = tmp_path / "stage1" / "model"
        stage1.mkdir(parents=True)
        overrides["model_name_or_path"] = str(stage1)
    run, values = load_config(str(path), overrides)
    for key, value in given.items():
        if key in overrides or key == "deepspeed":
            continue
        got = getattr(run, key)
        got = getattr(got, "value", got)  # enums of TrainingArguments
        if key == "prepare_tiny":
            assert {k: getattr(got, k) for k in value if k != "root"} == {k: v for k, v in value.items() if k != "root"}
        elif key == "report_to":
            assert got == ([] if value == "none" else [value]) or got == value
        else:
            assert got == value or float(got) == float(value), key
    if "deepspeed" in given:
        assert os.path.isfile(run.deepspeed) and run.deepspeed.endswith(given["deepspeed"].split("/")[-1])


# ---- nested mappings are typed and checked ----
def test_unknown_nested_keys_are_errors_with_a_hint(tmp_path):
    config = _write(tmp_path, BASE + "model_overrides: {denoiser_dept: 5}\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(config))
    message = str(error.value)
    assert "'denoiser_dept'" in message and "did you mean 'denoiser_depth'" in message and "model_overrides" in message
    with pytest.raises(ConfigError, match="'num_image' \\(did you mean 'num_images'"):
        load_config(None, {"output_dir": "x", "stage": 1, "prepare_tiny": {"num_image": 3}})
    # The run's own keys are not model overrides.
    with pytest.raises(ConfigError, match="model_overrides: 'objective'"):
        load_config(str(_write(tmp_path, BASE, "base.yaml")), {"model_overrides": {"objective": "regress"}})


def test_nested_values_are_typed_like_top_level_keys(tmp_path):
    config = _write(tmp_path, BASE)
    overrides = {"denoiser_depth": 2.0, "weight": "0.5", "denoiser_position_embedding": "sincos"}
    run, _ = load_config(str(config), {"model_overrides": overrides})
    assert run.model_overrides == {"denoiser_depth": 2, "weight": 0.5, "denoiser_position_embedding": "sincos"}
    with pytest.raises(ConfigError) as error:
        load_config(str(config), {"model_overrides": {"denoiser_depth": "deep", "denoiser_position_embedding": "x"}})
    message = str(error.value)
    assert "model_overrides.denoiser_depth='deep' is not an integer" in message
    assert "model_overrides.denoiser_position_embedding='x' is not one of 'sincos', 'learned'" in message
    run, _ = load_config(None, {"output_dir": "x", "stage": 1, "prepare_tiny": {"root": str(tmp_path), "size": "32"}})
    assert run.prepare_tiny == PrepareTiny(root=str(tmp_path), size=32)
    with pytest.raises(ConfigError, match="prepare_tiny.stage='chat' is not one of 'plain', 'sft'"):
        load_config(None, {"output_dir": "x", "stage": 1, "prepare_tiny": {"stage": "chat"}})
    # Every key the model configs accept is listed with its type.
    assert {"denoiser_depth", "vision_feature_layer", "condition"} <= set(model_override_types())


def test_no_and_yes_are_strings_for_string_keys_and_booleans_for_boolean_keys(tmp_path):
    """YAML 1.1 reads `no` as False, so transformers' `save_strategy: no` was refused ("False is not one of 'no',
    ..."); the config and the command line now read YAML 1.2 booleans (true / false), and bool keys take yes / no."""
    config = _write(tmp_path, BASE + "save_strategy: no\nbf16: no\ndataloader_pin_memory: no\ndisable_tqdm: yes\n")
    run, values = load_config(str(config))
    assert values["save_strategy"] == "no" and run.save_strategy == "no"
    assert run.bf16 is False and run.dataloader_pin_memory is False and run.disable_tqdm is True
    overrides = parse_overrides(["--save_strategy", "no", "--bf16=true", "--eval_strategy", "NO", "--seed", "3"])
    assert overrides == {"save_strategy": "no", "bf16": True, "eval_strategy": "NO", "seed": 3}
    run, _ = load_config(str(config), parse_overrides(["--save_strategy", "no", "--logging_steps", "5"]))
    assert run.save_strategy == "no" and run.logging_steps == 5


# ---- a YAML syntax error: one line, file:line:column, exit code 2 ----
def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    config = _write(tmp_path, "output_dir: x\nstage: 1\nmodel_overrides: {denoiser_depth: 2\nlora: true\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(config))
    assert str(error.value).startswith(f"{config}:4:")
    assert "YAML syntax error" in str(error.value) and "\n" not in str(error.value)
    result = subprocess.run(
        [sys.executable, SFT, "--config", str(config)], capture_output=True, text=True, timeout=300,
        env={**{k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {error.value}"]  # and nothing else (no library warning)
    assert "Traceback" not in result.stderr


# ---- paths resolved once, at load ----
def test_paths_are_resolved_when_the_config_is_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths that exist only under the repo root
    (tmp_path / "configs").mkdir()
    config = _write(
        tmp_path / "configs",
        "output_dir: out\nvision_model: google/siglip-so400m-patch14-384\nlanguage_model: tests\n"
        "data_path: train/configs/tiny_stage1.yaml\nimage_folder: synthetic\nstage: 1\nuse_cpu: true\n"
        "deepspeed: ds.json\nbenchmarks: [synthetic_pope=eval]\npreview_images: [docs/spaces-demo.png]\n",
    )
    (tmp_path / "configs" / "ds.json").write_text((REPO_ROOT / "train" / "configs" / "zero2.json").read_text())
    run, values = load_config(str(config))
    assert run.language_model == str(REPO_ROOT / "tests") and run.image_folder == str(REPO_ROOT / "synthetic")
    assert run.data_path == str(REPO_ROOT / "train" / "configs" / "tiny_stage1.yaml")
    assert run.vision_model == "google/siglip-so400m-patch14-384"  # a Hub id stays one
    assert run.deepspeed == str(tmp_path / "configs" / "ds.json")  # next to the config file
    assert run.benchmarks == [f"synthetic_pope={REPO_ROOT / 'eval'}"]
    assert run.preview_images == [str(REPO_ROOT / "docs" / "spaces-demo.png")]
    assert values["language_model"] == "tests"  # what was given, as saved with the model


def test_prepare_tiny_paths_are_derived_at_load_and_the_config_is_not_rewritten(tmp_path, monkeypatch):
    from ross.train import build

    root = tmp_path / "tiny"
    run, _ = load_config(None, {"output_dir": str(tmp_path / "o"), "stage": 1, "use_cpu": True,
                                "prepare_tiny": {"root": str(root), "num_images": 4, "stage": "plain"}})  # fmt: skip
    assert run.vision_model == str(root / "components" / "siglip-tiny")
    assert run.teacher == str(root / "components" / "vae-tiny") and run.teacher_subfolder == "vae"
    assert run.data_path == str(root / "data" / "synthetic_plain.json") and run.image_folder == str(root / "data")
    written = []
    monkeypatch.setattr(build, "write_tiny_components", lambda folder: written.append(folder))
    monkeypatch.setattr(build, "write_llava_dataset", lambda folder, **kwargs: written.append((folder, kwargs)))
    before = run.to_dict()
    build.prepare_tiny_run(run)
    assert run.to_dict() == before
    assert written[0] == root / "components"
    assert written[1] == (str(root / "data"), {"num_images": 4, "seed": 0, "size": 48, "stage": "plain"})
    # A baseline has no teacher; given keys win.
    run, _ = load_config(None, {"output_dir": "x", "stage": 1, "objective": "none", "data_path": "mine.json",
                                "prepare_tiny": {"root": str(root)}})  # fmt: skip
    assert run.teacher is None and run.data_path == "mine.json"


# ---- no side effects at load; CPU DeepSpeed set up where the run starts ----
def test_loading_has_no_side_effects_and_the_run_start_sets_up_cpu_deepspeed(monkeypatch):
    from ross.train import sft

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "unset")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    states = []
    monkeypatch.setattr(sft, "PartialState", lambda **kwargs: states.append(kwargs))
    values = read_config(None, {"output_dir": "x", "stage": 1, "deepspeed": "train/configs/zero2.json"})
    assert "accelerator_config" not in values and "ACCELERATE_USE_DEEPSPEED" not in os.environ and not states
    started = sft.setup_cpu_deepspeed(values)
    assert started["accelerator_config"] == {"use_configured_state": True} and "accelerator_config" not in values
    assert os.environ["ACCELERATE_USE_DEEPSPEED"] == "true" and states == [{"backend": "gloo"}]


# ---- objects complete at construction ----
def test_trainer_hands_itself_to_callbacks_and_the_benchmark_callback_takes_it(tmp_path, tiny_model, monkeypatch):
    from ross.train.callbacks import BenchmarkEvalCallback
    from ross.train.trainer import RossTrainer, RossTrainingArguments

    class Recorder(TrainerCallback):
        seen = None

        def on_train_begin(self, args, state, control, trainer=None, **kwargs):
            self.seen = trainer

    bench = BenchmarkEvalCallback([f"synthetic_pope={tmp_path}"])
    monkeypatch.setattr(bench, "check_data", lambda: {})
    recorder = Recorder()
    args = RossTrainingArguments(
        output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", remove_unused_columns=False
    )
    trainer = RossTrainer(model=tiny_model, args=args, callbacks=[recorder, bench])
    trainer.callback_handler.on_train_begin(trainer.args, trainer.state, trainer.control)
    assert recorder.seen is trainer and bench.trainer is trainer


def test_model_returns_the_weighted_visual_term(tiny_model, tiny_processor):
    from test_model import SPECS, _batch

    batch = _batch(tiny_processor, SPECS)  # 3 images
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    tiny_model.train()
    torch.manual_seed(0)
    plain = tiny_model(**batch, labels=labels)
    torch.manual_seed(0)
    shared = tiny_model(**batch, labels=labels, num_images_in_batch=torch.tensor(6))
    weight = tiny_model.config.objective_config.weight
    torch.testing.assert_close(plain.visual_term, plain.visual_loss)
    torch.testing.assert_close(shared.visual_term, shared.visual_loss * 0.5)
    torch.testing.assert_close(shared.loss, shared.text_loss + weight * shared.visual_term)
    tiny_model.eval()
    assert tiny_model(**batch, labels=labels).visual_term is None


def test_checkpoint_processor_gets_the_runs_aspect_ratio_at_construction(tmp_path, tiny_model, tiny_processor):
    from ross.train.build import build_model_and_processor

    tiny_model.save_pretrained(tmp_path / "ckpt")
    tiny_processor.save_pretrained(tmp_path / "ckpt")
    assert tiny_processor.image_aspect_ratio == "pad"
    values = {"output_dir": str(tmp_path / "o"), "model_name_or_path": str(tmp_path / "ckpt"), "data_path": "d",
              "stage": 1, "image_aspect_ratio": "resize", "use_cpu": True}  # fmt: skip
    run, _ = load_config(None, values)
    _, processor = build_model_and_processor(run)
    assert processor.image_aspect_ratio == "resize"


# ---- packing is a run key ----
def test_padding_free_run_key_builds_a_packing_collator(tmp_path, tiny_processor):
    from ross.train.sft import make_collator

    run_config, _ = load_config(str(_write(tmp_path, BASE + "padding_free: true\npack_max_tokens: 512\n")), {})
    collator = make_collator(run_config, tiny_processor)
    assert collator.padding_free and collator.pack_max_tokens == 512
    run_config, _ = load_config(str(_write(tmp_path, BASE, "plain.yaml")), {})
    assert not make_collator(run_config, tiny_processor).padding_free


def test_sdpa_varlen_run_key_sets_the_attention_and_packs_one_row(tmp_path, tiny_components, tiny_processor):
    """`attn_implementation: sdpa_varlen` reaches every attention layer of the built model, and with `padding_free`
    the collator's default capacity becomes the whole micro-batch (one row, no padding)."""
    from conftest import TINY_OBJECTIVE

    from ross.train.build import build_model_and_processor
    from ross.train.sft import make_collator

    values = {"output_dir": str(tmp_path / "o"), "data_path": "d", "stage": 1, "use_cpu": True,
              "vision_model": tiny_components["vision_model"], "language_model": tiny_components["language_model"],
              "teacher": tiny_components["teacher"], "teacher_subfolder": tiny_components["teacher_subfolder"],
              "model_overrides": TINY_OBJECTIVE,
              "attn_implementation": "sdpa_varlen", "padding_free": True}  # fmt: skip
    run_config, _ = load_config(None, values)
    model, _ = build_model_and_processor(run_config)
    assert model.model.language_model.config._attn_implementation == "sdpa_varlen"
    assert model.model.vision_tower.config._attn_implementation == "sdpa_varlen"
    collator = make_collator(run_config, tiny_processor)
    assert collator.padding_free and collator.pack_max_tokens >= 10**12
    batch = collator([{"id": str(i), "source": "t", "images": [], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "word " * (3 + 5 * i)}]},
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]} for i in range(3)])  # fmt: skip
    assert batch["input_ids"].shape[0] == 1 and (batch["position_ids"][0] == 0).sum() == 3
    assert make_collator(load_config(None, {**values, "pack_max_tokens": 64})[0], tiny_processor).pack_max_tokens == 64
