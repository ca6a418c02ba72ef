"""RossTrainer: exact gradient accumulation, stage presets, component logging, LoRA, resume, sft.py end to end."""

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback, TrainingArguments

from modeling_ross import RossProcessor, from_components
from ross.train.config import RossRunConfig, load_config, parse_overrides
from ross.train.samplers import LengthGroupedSampler, ModalityLengthGroupedSampler
from ross.train.trainer import (
    RossTrainer,
    RossTrainingArguments,
    apply_lora,
    apply_stage,
    count_trainable_parameters,
)
from ross.train.sft import main
from ross.train.synthetic import write_llava_dataset


REPO_ROOT = Path(__file__).resolve().parents[1]


# ---- a small in-memory dataset + collator (independent of train/dataset.py and train/collator.py) ----
def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (24, 36, 3), dtype=np.uint8))


def _sample(index: int, num_images: int) -> dict:
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": f"How many squares? {index % 5}"}]
    answer = ["one", "two red circles", "three", "yes", "no blue square"][index % 5]
    return {
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": [_image(100 * index + j) for j in range(num_images)],
    }


# Image counts vary (0, 1, 2) so that micro-batches have different shares of the step's images.
IMAGE_COUNTS = [1, 0, 2, 1, 1, 0, 2, 1]


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, counts=IMAGE_COUNTS):
        self.items = [_sample(i, n) for i, n in enumerate(counts)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class SimpleCollator:
    """Chat template -> processor; labels = input ids on the answer (assistant mask), -100 elsewhere."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, samples):
        out = self.processor.apply_chat_template(
            [s["messages"] for s in samples],
            images=None,
            tokenize=False,
        )
        images = [image for s in samples for image in s["images"]]
        batch = self.processor(text=out, images=images or None, padding=True, return_tensors="pt")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        labels[batch["input_ids"] == self.processor.image_token_id] = -100
        # Supervise only the second half of each row's real tokens: a cheap stand-in for answer masks.
        lengths = batch["attention_mask"].sum(-1)
        for row, length in enumerate(lengths.tolist()):
            labels[row, : length // 2] = -100
        batch["labels"] = labels
        return dict(batch)


def _args(tmp_path, **overrides) -> RossTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=1,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    defaults.update(overrides)
    return RossTrainingArguments(**defaults)


@pytest.fixture(scope="module")
def regress_model_state(tiny_components):
    """A deterministic objective (ROSS^R on VAE latents, posterior mode): no noise, so runs can be compared."""
    torch.manual_seed(0)
    model = from_components(
        **tiny_components, objective="regress", latent_sample="mode", weight=0.7
    )
    return model


class GradCapture:
    """Trainer callback that copies every gradient right before the optimizer step."""

    def __init__(self):
        capture = self

        class _Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                capture.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

        self.callback = _Callback()
        self.grads = None


class CountingCollator(SimpleCollator):
    """`SimpleCollator` that records how many images each micro-batch it built holds."""

    def __init__(self, processor):
        super().__init__(processor)
        self.image_counts = []

    def __call__(self, samples):
        self.image_counts.append(sum(len(s["images"]) for s in samples))
        return super().__call__(samples)


def _train_once(model, processor, dataset, args):
    model = copy.deepcopy(model)
    capture = GradCapture()
    collator = CountingCollator(processor)
    trainer = RossTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[capture.callback],
    )
    trainer.train()
    trainer.image_counts = collator.image_counts
    return trainer, capture.grads


def test_gradient_accumulation_equals_large_batch(regress_model_state, tiny_processor, tmp_path):
    dataset = ListDataset()
    big, big_grads = _train_once(
        regress_model_state, tiny_processor, dataset, _args(tmp_path / "a", per_device_train_batch_size=8)
    )
    acc, acc_grads = _train_once(
        regress_model_state,
        tiny_processor,
        dataset,
        _args(
            tmp_path / "b", per_device_train_batch_size=2, gradient_accumulation_steps=4,
            train_sampling_strategy="sequential",  # a random order can deal out 2 images per micro-batch
        ),
    )  # fmt: skip
    # The micro-batches really hold different numbers of images (else a per-micro-batch mean would also pass).
    assert len(acc.image_counts) == 4 and sum(acc.image_counts) == sum(IMAGE_COUNTS)
    assert len(set(acc.image_counts)) > 1, acc.image_counts
    # Direct reference: one forward over the whole dataset as a single batch.
    model = regress_model_state
    model.train()
    batch = SimpleCollator(tiny_processor)([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        ref = model(**batch)
    expected = {
        "text_loss": ref.text_loss.item(),
        "visual_loss": ref.visual_loss.item(),
        "loss": ref.loss.item(),
    }
    assert abs(expected["loss"] - (expected["text_loss"] + 0.7 * expected["visual_loss"])) < 1e-6
    for trainer in (big, acc):
        logged = trainer.state.log_history[0]
        for key, value in expected.items():
            assert logged[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, logged, expected)

    assert big_grads.keys() == acc_grads.keys()
    assert any(k.startswith("denoiser.") for k in big_grads) and any(k.startswith("model.projector.") for k in big_grads)
    for name in big_grads:
        torch.testing.assert_close(acc_grads[name], big_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # The visual term matters for these gradients (a double-weighted visual term would fail the check above).
    assert big_grads["denoiser.fc2.weight"].abs().max() > 1e-4


# ---- stage presets ----
def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


@pytest.mark.parametrize("stage", [1, 2])
def test_stage_presets_count_parameters(tiny_model, stage):
    model = tiny_model
    counts = apply_stage(model, stage)
    llm = _numel(model.model.language_model) + (
        0 if model.lm_head.weight is model.model.language_model.embed_tokens.weight else _numel(model.lm_head)
    )
    expected = {
        "vision_tower": 0,
        "projector": _numel(model.model.projector),
        "language_model": llm if stage == 2 else 0,
        # The stored position table trains in stage 1 only (the authors' behaviour).
        "denoiser": _numel(model.denoiser) - (model.denoiser.pos_embed.numel() if stage == 2 else 0),
        "queries": 0,  # condition="queries" only
        "teacher": 0,
        "other": 0,
    }
    assert counts == expected
    assert expected["projector"] > 0 and expected["denoiser"] > 0 and llm > 0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(expected.values())
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad == (stage == 2) for p in model.model.language_model.parameters())
    with pytest.raises(ValueError, match="stage must be one of"):
        apply_stage(model, 3)


def test_learned_position_table_trains_in_stage1_and_is_frozen_in_stage2(tiny_components):
    """The authors' stage 1 unfreezes every denoiser parameter (the table included); stage 2 builds it frozen."""
    torch.manual_seed(0)
    model = from_components(
        **tiny_components, denoiser_hidden_size=32, denoiser_depth=1, denoiser_num_heads=4,
        denoiser_position_embedding="learned",
    )  # fmt: skip
    table = model.denoiser.pos_embed
    apply_stage(model, 1)
    assert table.requires_grad
    counts = apply_stage(model, 2)
    assert not table.requires_grad and counts["denoiser"] == _numel(model.denoiser) - table.numel()
    assert all(p.requires_grad for n, p in model.denoiser.named_parameters() if n != "pos_embed")
    apply_stage(model, 2, train_position_embedding=True)
    assert table.requires_grad
    apply_stage(model, 1, train_position_embedding=False)
    assert not table.requires_grad
    # LoRA's modules_to_save copies the denoiser as trainable: the table keeps the stage's setting.
    apply_stage(model, 2)
    peft_model = apply_lora(model, r=2, alpha=4)
    tables = [p for n, p in peft_model.named_parameters() if n.endswith("denoiser.modules_to_save.default.pos_embed")]
    assert tables and not any(p.requires_grad for p in tables)


@pytest.mark.slow
def test_continuing_from_a_bf16_checkpoint_trains_fp32_weights(tiny_components, tmp_path):
    """A bf16 stage-1 (or converted) checkpoint continued without DeepSpeed: fp32 master weights, unless asked."""

    torch.manual_seed(0)
    model = from_components(
        **tiny_components, denoiser_hidden_size=32, denoiser_depth=1, denoiser_num_heads=4,
        denoiser_position_embedding="learned",
    ).to(torch.bfloat16)  # fmt: skip
    model.save_pretrained(tmp_path / "bf16")
    RossProcessor.from_components(tiny_components["vision_model"], tiny_components["language_model"]).save_pretrained(
        tmp_path / "bf16"
    )
    data = write_llava_dataset(str(tmp_path / "data"), num_images=4, seed=0, size=48, stage="sft")

    seen = {}

    class Dtypes(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen[len(seen)] = {p.dtype for p in model.parameters() if p.requires_grad}

    argv = [
        "--config", str(REPO_ROOT / "train" / "configs" / "tiny_stage2.yaml"),
        "--model_name_or_path", str(tmp_path / "bf16"), "--data_path", data, "--image_folder", str(tmp_path / "data"),
        "--max_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
    ]  # fmt: skip
    main([*argv, "--output_dir", str(tmp_path / "fp32")], callbacks=[Dtypes()])
    main([*argv, "--output_dir", str(tmp_path / "auto"), "--weights_dtype", "auto"], callbacks=[Dtypes()])
    assert seen == {0: {torch.float32}, 1: {torch.bfloat16}}


# ---- logging, bf16 autocast on CPU, per-module learning rates ----
def test_component_logging_and_module_learning_rates(tiny_model, tiny_processor, tmp_path):
    apply_stage(tiny_model, 2)
    args = _args(
        tmp_path, max_steps=4, logging_steps=2, bf16=True, projector_lr=3e-3, denoiser_lr=2e-3, llm_lr=1e-4,
        weight_decay=0.1,
    )
    trainer = RossTrainer(
        model=tiny_model, args=args, train_dataset=ListDataset(), data_collator=SimpleCollator(tiny_processor)
    )
    assert trainer.args.remove_unused_columns is False
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [2, 4]
    for h in logs:
        assert np.isfinite(h["text_loss"]) and np.isfinite(h["visual_loss"]) and h["visual_loss"] > 0
        # Every batch has an image, so the window means add up exactly like the loss.
        assert h["loss"] == pytest.approx(h["text_loss"] + h["visual_loss"], rel=1e-4)
    summary = trainer.state.log_history[-1]
    assert "train_runtime" in summary and "text_loss" not in summary  # empty buffer skipped
    assert not any(trainer._metrics["train"].values())  # cleared by each log
    lrs = {g["name"]: (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups}
    assert lrs["projector/decay"] == (3e-3, 0.1) and lrs["projector/no_decay"] == (3e-3, 0.0)
    assert lrs["denoiser/decay"][0] == 2e-3 and lrs["language_model/decay"][0] == 1e-4
    assert not any(name.startswith(("vision_tower", "teacher")) for name in lrs)


def test_remove_unused_columns_is_forced_off(tmp_path):
    assert _args(tmp_path, remove_unused_columns=True).remove_unused_columns is False


# ---- LoRA ----
def test_lora_trains_a_step(tiny_model, tiny_processor, tmp_path):
    apply_stage(tiny_model, 2)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    peft_model = apply_lora(tiny_model, r=4, alpha=8)
    counts = count_trainable_parameters(peft_model)
    assert counts["vision_tower"] == counts["teacher"] == 0
    assert counts["projector"] == _numel(tiny_model.model.projector.modules_to_save["default"])
    assert 0 < counts["language_model"] < _numel(tiny_model.model.language_model) // 4  # adapters only
    trainer = RossTrainer(
        model=peft_model, args=_args(tmp_path, learning_rate=1e-2), train_dataset=ListDataset(),
        data_collator=SimpleCollator(tiny_processor),
    )
    trainer.train()
    assert np.isfinite(trainer.state.log_history[0]["visual_loss"])
    merged = peft_model.merge_and_unload()
    after = dict(merged.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert any(n.startswith("model.projector.") for n in changed)
    assert any(n.startswith("denoiser.") for n in changed)
    assert any(n.startswith("model.language_model.layers.") and "proj" in n for n in changed)  # merged LoRA delta
    assert not any(n.startswith(("model.vision_tower.", "teacher.")) for n in changed)
    assert not any("embed_tokens" in n or n.startswith("lm_head") for n in changed)  # not adapted: frozen


# ---- config ----
def test_unknown_config_key_is_a_clear_error(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("output_dir: x\nvision_model: a\nlanguage_model: b\ndata_path: d\nlearnig_rate: 1e-3\n")
    with pytest.raises(ValueError) as error:
        load_config(str(config))
    message = str(error.value)
    assert "'learnig_rate'" in message and "did you mean 'learning_rate'" in message
    assert "Valid run keys:" in message and "stage" in message and "per_device_train_batch_size" in message
    assert parse_overrides(["--stage", "1", "--bf16=true", "--lr_list", "[1, 2]"]) == {
        "stage": 1, "bf16": True, "lr_list": [1, 2],
    }
    with pytest.raises(ValueError, match="command-line overrides"):
        config.write_text("output_dir: x\nvision_model: a\nlanguage_model: b\ndata_path: d\n")
        load_config(str(config), {"sage": 1})


def test_paper_configs_parse(tmp_path):
    stage1_model = tmp_path / "stage1" / "model"
    stage1_model.mkdir(parents=True)
    for path in sorted((REPO_ROOT / "train" / "configs").glob("*.yaml")):
        if path.name.startswith("qwen2.5vl"):
            continue  # native-VLM recipes (from a Hub VLM, no stage 1): tests/test_native_vlms.py
        # use_cpu: bf16 TrainingArguments refuse to build without a GPU unless told to run on CPU.
        stage1 = "stage1" in path.name
        overrides = {"use_cpu": True}
        if not stage1 and not path.name.startswith("tiny"):
            # Stage 2 continues from the stage-1 output and says so when it is missing.
            with pytest.raises(ValueError, match="_stage1(_baseline|_viral|_generative)?/model does not exist. Run stage 1 first"):
                load_config(str(path), overrides)
            overrides["model_name_or_path"] = str(stage1_model)
        run, _ = load_config(str(path), overrides)
        args = run  # one dataclass: the run's keys and the training arguments
        if path.name.startswith("tiny"):
            continue
        # The single-GPU LoRA recipe: LLM frozen in bf16 + adapters, batch 1 x GA 128, no DeepSpeed, latent cache.
        lora24 = "lora24gb" in path.name
        world = 1 if lora24 else 8
        assert world * args.per_device_train_batch_size * args.gradient_accumulation_steps == (256 if stage1 else 128)
        assert args.learning_rate == (2e-4 if lora24 else 1e-3 if stage1 else 2e-5) and args.weight_decay == 0.0
        assert args.warmup_steps == 0.03 and args.lr_scheduler_type.value == "cosine" and args.bf16
        if lora24:
            assert args.deepspeed is None and args.per_device_train_batch_size == 1 and args.gradient_checkpointing
            assert run.lora and run.weights_dtype == "bfloat16" and run.model_max_length <= 2048
            assert run.latent_cache_dir and run.build_latent_cache
        else:
            assert args.deepspeed.endswith("zero2.json" if stage1 else "zero3.json")
            assert run.weights_dtype == "float32" and not run.lora
        assert run.stage == (1 if stage1 else 2)
        assert (run.objective == "none") == ("baseline" in path.name)
        assert run.image_placement == "front"
        if stage1:
            # The authors' templates: `v1` for Vicuna, `qwen_2` for Qwen2 (saved with the stage-1 model).
            assert run.chat_template == ("v1" if "vicuna" in path.name else "qwen_2")
            # One LR for projector and denoiser except in the SigLIP scripts (mm_inv_projector_lr 1e-4).
            siglip_ross = "siglip" in path.name and run.objective == "denoise"
            assert args.denoiser_lr == (1e-4 if siglip_ross else None), path.name
            if run.objective == "denoise":
                assert run.model_overrides["denoiser_position_embedding"] == "learned"
            # The generative variant: the denoiser conditioned on learnable queries (paper Table 2).
            assert (run.model_overrides.get("condition") == "queries") == ("generative" in path.name)
            if "viral" in path.name:  # VIRAL: cosine to frozen DINOv2 features from LLM layer 16, weight 0.5
                assert (run.objective, run.target, run.teacher) == ("regress", "features", "facebook/dinov2-base")
                assert run.model_overrides["condition_layer"] == 16 and run.model_overrides["weight"] == 0.5
                assert run.model_overrides["regress_loss"] == "cosine"
        else:
            assert run.model_name_or_path == str(stage1_model)
            assert args.denoiser_lr == (2e-5 if lora24 else None) and args.projector_lr == (2e-5 if lora24 else None)


def test_stage2_needs_a_stage1_checkpoint_unless_told(tmp_path):
    config = tmp_path / "s2.yaml"
    config.write_text("output_dir: x\nvision_model: a\nlanguage_model: b\ndata_path: d\nstage: 2\n")
    with pytest.raises(ValueError, match="stage 2 continues from a stage-1 checkpoint.*allow_fresh_stage2"):
        load_config(str(config))
    run, _ = load_config(str(config), {"allow_fresh_stage2": True})
    assert run.stage == 2 and run.model_name_or_path is None
    with pytest.raises(ValueError, match="image_placement='end'"):
        load_config(str(config), {"allow_fresh_stage2": True, "image_placement": "end"})
    with pytest.raises(ValueError, match="weights_dtype"):
        load_config(str(config), {"allow_fresh_stage2": True, "weights_dtype": "fp8"})


def test_config_values_are_parsed_with_their_declared_types(tmp_path):
    """PyYAML reads `2e-4` as a string; the field's type (float) decides, in YAML and on the command line."""

    config = tmp_path / "typed.yaml"
    config.write_text(
        "output_dir: x\nvision_model: a\nlanguage_model: b\ndata_path: d\nallow_fresh_stage2: true\n"
        "learning_rate: 2e-4\nprojector_lr: 1e-3\nmax_steps: '7'\nuse_cpu: 'true'\nlora_r: 8.0\n"
    )
    run, resolved = load_config(str(config))
    assert isinstance(run, RossRunConfig) and isinstance(run, TrainingArguments)
    assert run.learning_rate == 2e-4 and isinstance(run.learning_rate, float)
    assert run.projector_lr == 1e-3 and run.max_steps == 7 and run.use_cpu is True and run.lora_r == 8
    assert resolved["learning_rate"] == 2e-4
    run, _ = load_config(str(config), parse_overrides(["--learning_rate", "3e-4", "--stage", "1"]))
    assert run.learning_rate == 3e-4 and run.stage == 1

    config.write_text(
        "output_dir: x\nvision_model: a\nlanguage_model: b\ndata_path: d\n"
        "learning_rate: fast\nmax_steps: 1.5\nlora: maybe\nlora_target_modules: q_proj\n"
    )
    with pytest.raises(ValueError) as error:
        load_config(str(config))
    message = str(error.value)
    assert message.startswith(str(config))
    for expected in ("learning_rate='fast' is not a number", "max_steps=1.5 is not an integer",
                     "lora='maybe' is not true or false", "lora_target_modules='q_proj' is not a list of a string"):
        assert expected in message
    with pytest.raises(ValueError, match="command-line overrides: stage='two' is not an integer"):
        load_config(None, {"output_dir": "x", "stage": "two"})


# ---- sft.py: end to end, and exact resume after a kill ----
SFT = str(REPO_ROOT / "train" / "sft.py")


def _sft_argv(root, output_dir, steps=4):
    return [
        "--config", str(REPO_ROOT / "train" / "configs" / "tiny_stage2.yaml"),
        "--prepare_tiny", f"{{root: {root}, num_images: 12, stage: sft}}",
        "--output_dir", str(output_dir),
        "--max_steps", str(steps), "--save_strategy", "steps", "--save_steps", "2",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--logging_steps", "1",
    ]


def _weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """One uninterrupted 4-step sft.py run (in-process) on tiny components and synthetic data."""
    root = tmp_path_factory.mktemp("sft")
    summary = main(_sft_argv(root / "tiny", root / "full"))
    return root, summary


@pytest.mark.slow
def test_sft_end_to_end_writes_a_loadable_folder(sft_run):
    root, summary = sft_run
    folder = root / "full" / "model"
    for name in ("model.safetensors", "config.json", "modeling_ross.py", "chat_template.jinja",
                 "processor_config.json", "training_args.json", "train_config.yaml"):
        assert (folder / name).is_file(), name
    assert summary["global_step"] == 4 and summary["final_visual_loss"] > 0 and summary["final_text_loss"] > 0
    assert summary["tokens_per_second"] > 0 and summary["peak_memory_bytes"] > 0
    assert summary["skipped"] == {} and summary["num_records"] == summary["num_train_samples"] > 0
    assert json.loads((root / "full" / "summary.json").read_text())["global_step"] == 4
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "RossForConditionalGeneration" and model.denoiser is None
    saved = _weights(folder)
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), saved[name]), name
    assert processor.image_seq_length == model.config.image_seq_length


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from transformers import TrainerCallback
    from ross.train.sft import main

    class KillAfterSave(TrainerCallback):
        # on_save runs after the checkpoint folder is complete: die there like a preempted job.
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    main(sys.argv[1:], callbacks=[KillAfterSave()])
    """
)


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(sft_run, tmp_path):
    root, _ = sft_run
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO_ROOT)))
    out = tmp_path / "interrupted"
    killed = subprocess.run(
        [sys.executable, str(script), *_sft_argv(root / "tiny", out)], capture_output=True, text=True, timeout=300,
        env=env,
    )
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and not (out / "model").exists()

    resumed = subprocess.run(
        [sys.executable, SFT, *_sft_argv(root / "tiny", out), "--resume_from_checkpoint", str(out / "checkpoint-2")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    reference, final = _weights(root / "full" / "model"), _weights(out / "model")
    assert reference.keys() == final.keys()
    for name in reference:
        torch.testing.assert_close(final[name], reference[name], rtol=0, atol=1e-6, msg=name)
    # Not trivially equal: training moved the weights away from the step-2 checkpoint.
    step2 = _weights(out / "checkpoint-2")
    assert any(not torch.equal(step2[name], reference[name]) for name in reference if name.startswith("denoiser."))

    # The summary covers the whole run: the loss of all 4 steps (not only the 2 resumed ones), tokens over both
    # processes' training time.
    full, summary = json.loads((root / "full" / "summary.json").read_text()), json.loads((out / "summary.json").read_text())
    assert summary["final_train_loss"] == pytest.approx(full["final_train_loss"], rel=1e-5)
    assert summary["num_input_tokens_seen"] == full["num_input_tokens_seen"]
    first = json.loads((out / "checkpoint-2" / "ross_run_totals.json").read_text())
    assert first["global_step"] == 2 and first["train_seconds"] > 0
    assert summary["train_runtime_s"] > summary["this_process_runtime_s"]
    assert summary["train_runtime_s"] >= round(first["train_seconds"], 3)
    assert summary["tokens_per_second"] == pytest.approx(summary["num_input_tokens_seen"] / summary["train_runtime_s"], rel=1e-3)


KILL_DURING_SAVE_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from ross.train.sft import main
    from ross.train.trainer import RossTrainer

    original = RossTrainer._save_optimizer_and_scheduler

    def dies_while_saving(self, output_dir):
        original(self, output_dir)
        if self.state.global_step == 4:  # a preempted job: the optimizer state half on disk, no trainer_state.json
            path = os.path.join(output_dir, "optimizer.pt")
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    RossTrainer._save_optimizer_and_scheduler = dies_while_saving
    main(sys.argv[1:])
    """
)


@pytest.mark.slow
def test_resume_true_skips_a_checkpoint_killed_while_saving(sft_run, tmp_path):
    root, _ = sft_run
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    script = tmp_path / "kill_during_save.py"
    script.write_text(KILL_DURING_SAVE_SCRIPT.format(repo=str(REPO_ROOT)))
    out = tmp_path / "run"
    argv = [*_sft_argv(root / "tiny", out, steps=6)]
    killed = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert (out / "checkpoint-4").is_dir() and not (out / "checkpoint-4" / "trainer_state.json").exists()

    resumed = subprocess.run(
        [sys.executable, SFT, *argv, "--resume_from_checkpoint", "true"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "Not resuming from" in log and "checkpoint-4" in log and "trainer_state.json is missing" in log
    assert f"Resuming from {out / 'checkpoint-2'}" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 6 and (out / "checkpoint-6" / "trainer_state.json").is_file()


class LengthsDataset(ListDataset):
    """ListDataset with the `lengths` / `modality_lengths` that `ross.train.dataset.RossDataset` provides."""

    @property
    def lengths(self):
        return [10 + 64 * len(item["images"]) for item in self.items]

    @property
    def modality_lengths(self):
        return [length if item["images"] else -length for length, item in zip(self.lengths, self.items)]


@pytest.mark.parametrize("group_by", ["length", "modality_length"])
def test_group_by_uses_the_grouped_samplers(tiny_model, tiny_processor, tmp_path, group_by):
    dataset = LengthsDataset()
    trainer = RossTrainer(
        model=tiny_model, args=_args(tmp_path), train_dataset=dataset, data_collator=SimpleCollator(tiny_processor),
        group_by=group_by,
    )  # fmt: skip
    sampler = trainer._get_train_sampler()
    expected = LengthGroupedSampler if group_by == "length" else ModalityLengthGroupedSampler
    assert isinstance(sampler, expected)
    order = list(sampler)
    assert sorted(order) == list(range(len(dataset)))  # every sample exactly once per epoch
    if group_by == "modality_length":  # batches of 2 never mix text-only and image samples but at the very end
        batches = [order[i : i + 2] for i in range(0, len(order), 2)]
        mixed = [b for b in batches if len({bool(dataset.items[i]["images"]) for i in b}) > 1]
        assert len(mixed) <= 1 and (not mixed or mixed[0] == batches[-1])
    trainer.train()
    with pytest.raises(ValueError, match="group_by"):
        RossTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=dataset, group_by="size")
