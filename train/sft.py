"""Train ROSS (stage 1 or 2 of the recipe) with `RossTrainer`.

    accelerate launch train/sft.py --config train/configs/tiny_stage2.yaml [--key value ...]
    python train/sft.py --config train/configs/tiny_stage1.yaml --max_steps 10

The model is built from components (`vision_model`, `language_model`, `teacher`) or continued from a ROSS checkpoint
(`model_name_or_path`, loaded with its trained denoiser). The trained model is saved, Hub-ready, to
`<output_dir>/model` (safetensors, processor + chat template, remote-code files, config, the resolved YAML and
`training_args.json`), and a summary (throughput, peak memory, final losses) is printed and written as JSON.
With `benchmarks`, the model is evaluated every `benchmark_every_steps` steps and at the end
(`ross.train.callbacks.BenchmarkEvalCallback`); the last scores are saved with the model, for its card.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


if __package__ in (None, ""):  # `python train/sft.py` / `accelerate launch train/sft.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml
from accelerate import PartialState
from transformers import set_seed

from modeling_ross.modeling_ross_pretraining import RossForPreTraining
from ross.model_cards.publish import push_from_trainer
from ross.train.build import build_model_and_processor, prepare_tiny_run, quiet_deepspeed_on_cpu
from ross.train.callbacks import (
    BenchmarkEvalCallback,
    ProgressCallback,
    ReconstructionPreviewCallback,
    preview_images_from_dataset,
)
from ross.train.config import ConfigError, build_parser, make_run_config, parse_overrides, read_config
from ross.train.collator import RossDataCollator
from ross.train.command_line import run_cli
from ross.train.native_collator import NativeVlmDataCollator
from ross.train.packed_attention import pack_capacity
from ross.train.dataset import load_training_dataset, skipped_summary
from ross.train.latent_cache import LatentCache, build_latent_cache
from ross.train.lengths import check_lengths
from ross.train.trainer import RossTrainer, apply_lora, apply_stage, count_trainable_parameters, images_seen_per_rank


def load_data(run_config, processor, collator=None):
    """The training dataset (a `Subset` of it with `max_train_samples`).

    The local main process of each node parses the data once, in a pool of processes using the node's CPUs, into its
    records store (`train/records.py`, in `length_cache_dir` or next to the data) while the node's other processes
    wait, then they open it. With the run's collator, the length pre-pass (`train/lengths.py`) runs next on every rank, each measuring
    its share: samples too long for `model_max_length` are an error listing them all, or with `on_bad_sample: skip`
    are left out, before step 1."""
    cache_dir = run_config.length_cache_dir  # paths were resolved when the config was loaded
    with run_config.main_process_first(local=True, desc="parsing the training data"):
        dataset = load_training_dataset(
            run_config.data_path,
            image_folder=run_config.image_folder,
            on_bad_sample=run_config.on_bad_sample,
            image_seq_length=getattr(processor, "image_seq_length", None),  # None: a native VLM's varies
            image_placement=run_config.image_placement,
            max_bad_fraction=run_config.max_bad_fraction,
            cache_dir=cache_dir,
        )
    if collator is not None:
        check_lengths(dataset, collator, cache_dir=cache_dir)
    if run_config.max_train_samples is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(run_config.max_train_samples, len(dataset))))
    return dataset


def check_data_paths(run_config) -> None:
    """`image_folder`, when set, is a folder: checked before the model loads, since a wrong one would otherwise leave
    only the text-only samples (in skip mode). `data_path` itself is checked by `load_training_dataset`, which names a
    missing or unreadable file."""
    image_folder = run_config.image_folder  # resolved when the config was loaded
    if image_folder is not None and not Path(image_folder).is_dir():
        raise FileNotFoundError(
            f"image_folder {run_config.image_folder} does not exist (image paths of {run_config.data_path} are "
            "resolved against it)"
        )


def make_benchmark_callback(run_config) -> BenchmarkEvalCallback | None:
    """The `benchmarks` evaluation during training, or None without `benchmarks`. Built before the model loads, so a
    wrong benchmark name or a missing data path stops the run at once (the data itself is read at train begin)."""
    if not run_config.benchmarks:
        return None
    return BenchmarkEvalCallback(
        benchmarks=run_config.benchmarks,  # paths resolved when the config was loaded
        every_steps=run_config.benchmark_every_steps,
        limit=run_config.benchmark_limit,
        batch_size=run_config.benchmark_batch_size,
        max_new_tokens=run_config.benchmark_max_new_tokens,
        rules=run_config.benchmark_rules,
    )


def make_collator(run_config, processor, latent_cache=None, adapter=None) -> RossDataCollator:
    """The run's collator; with a `LatentCache` (see `prepare_latent_cache`) every batch carries `teacher_targets`.
    `adapter` (`RossForPreTraining.adapter`): the collator of a native VLM's own processor."""
    if adapter is not None:
        return NativeVlmDataCollator(
            processor, max_length=run_config.model_max_length, adapter=adapter, format=run_config.data_format,
            on_bad_sample=run_config.on_bad_sample, padding_free=run_config.padding_free, latent_cache=latent_cache,
        )  # fmt: skip
    return RossDataCollator(
        processor,
        max_length=run_config.model_max_length,
        format=run_config.data_format,
        on_bad_sample=run_config.on_bad_sample,
        latent_cache=latent_cache,
        padding_free=run_config.padding_free,
        pack_max_tokens=pack_capacity(run_config.attn_implementation, run_config.pack_max_tokens),
        cache_encodings=run_config.cache_encodings,
    )


# ---- latent cache (train/latent_cache.py) -------------------------------------------------------------------------
def prepare_latent_cache(run_config, teacher, processor, dataset, adapter=None):
    """The `LatentCache` of `latent_cache_dir` for this teacher and preprocessing, or None without `latent_cache_dir`.
    `adapter`: a native VLM's (`RossForPreTraining.adapter`); its cache is keyed by image and grid.

    With `build_latent_cache`, the global main process encodes the images missing from the cache (on the training
    device) while the other processes wait, then they open it (the folder must be shared by all processes, like
    `output_dir`). Every process uses the cache, so no rank calls the teacher during training (ZeRO-3 safe).
    """
    if run_config.latent_cache_dir is None:
        return None
    if teacher is None:
        raise ValueError("latent_cache_dir needs a teacher: the objective is disabled (objective='none').")
    if run_config.objective == "latent2pixel":
        raise ValueError("objective='latent2pixel' compares pixels: the latent cache does not apply, unset it.")
    cache_dir = run_config.latent_cache_dir
    dtype = run_config.latent_cache_dtype
    with run_config.main_process_first(local=False, desc="building the latent cache"):
        if run_config.build_latent_cache and run_config.process_index == 0:
            cache = build_latent_cache(
                teacher, processor, dataset, cache_dir, dtype=dtype, device=run_config.device, adapter=adapter
            )
            print(f"[ross] latent cache {cache.directory}: {cache.build_stats}", flush=True)
        else:
            cache = LatentCache.open(cache_dir, teacher, processor, dtype=dtype, adapter=adapter)
    return cache


def peak_memory_bytes() -> int:
    """Peak GPU memory allocated by torch (CUDA), else the process's peak resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def save_model(trainer, model, processor, run_config, resolved: dict, directory: Path) -> None:
    """Save a Hub-ready folder: weights (safetensors), config, code files, processor + chat template, run config."""
    if run_config.lora:
        # Merge the adapters so the folder is a plain ROSS checkpoint (loads without PEFT).
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        merged = unwrapped.merge_and_unload()
        if trainer.args.should_save:
            merged.save_pretrained(directory)
    else:
        # Gathers ZeRO-3 shards; RossForConditionalGeneration drops the teacher. `_internal_call`: the complete folder is
        # pushed by `ross.model_cards.publish` at the end, not the Trainer's raw output_dir.
        trainer.save_model(str(directory), _internal_call=True)
    if trainer.args.should_save:
        processor.save_pretrained(directory)
        (directory / "training_args.json").write_text(trainer.args.to_json_string() + "\n")
        public = {key: value for key, value in resolved.items() if not key.endswith("_token")}  # never save secrets
        with open(directory / "train_config.yaml", "w") as f:
            yaml.safe_dump(public, f, sort_keys=True)


def check_native_run(run_config, adapter) -> None:
    """What a native VLM run (`RossForPreTraining` with `adapter`) does not support yet, named before anything trains."""
    unsupported = {
        "padding_free": run_config.padding_free,
        "cache_encodings": run_config.cache_encodings,
        "preview_every_n_steps": bool(run_config.preview_every_n_steps),
        "group_by": run_config.group_by is not None,
        "data_format: plain": run_config.data_format != "chat",
        # Idefics3 / SmolVLM: several frames (tiles + global view) per image, the cache keys one target per image.
        f"latent_cache_dir with {adapter.config.model_type}": (
            run_config.latent_cache_dir is not None and not adapter.one_grid_per_image
        ),
    }
    named = [key for key, used in unsupported.items() if used]
    if named:
        raise ConfigError(
            f"A native VLM run (model_name_or_path={run_config.model_name_or_path}) does not support {', '.join(named)} "
            "yet (docs/native-vlms.md)."
        )


def setup_cpu_deepspeed(values: dict[str, Any]) -> dict[str, Any]:
    """
    DeepSpeed on CPU (tests, no GPU): launch with `torchrun --nproc_per_node N` (or `accelerate launch
    --num_processes N --multi_gpu`) and `DS_ACCELERATOR=cpu`. accelerate only starts DeepSpeed on an accelerator
    device (with `use_cpu` it silently falls back to plain CPU DDP), so here the process group is created first with
    gloo and DeepSpeed flagged, and the returned values tell `TrainingArguments` to reuse that state
    (`accelerator_config.use_configured_state`). Part of starting the run (it has side effects), before the run config
    is built. The values unchanged unless `deepspeed` is set, `DS_ACCELERATOR=cpu`, and the process was started by a
    distributed launcher.
    """
    if not values.get("deepspeed") or os.environ.get("DS_ACCELERATOR") != "cpu" or "LOCAL_RANK" not in os.environ:
        return values
    if values.get("use_cpu"):
        raise ConfigError("With DS_ACCELERATOR=cpu leave `use_cpu` unset: accelerate disables DeepSpeed with use_cpu.")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    accelerator_config = {**(values.get("accelerator_config") or {}), "use_configured_state": True}
    return {**values, "accelerator_config": accelerator_config}


USAGE = "python train/sft.py [--config FILE.yaml] [--key value ...]   (or: accelerate launch train/sft.py ...)"


def main(argv: list[str] | None = None, callbacks=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:  # every key with its type, default and meaning; exits
        build_parser(prog="train/sft.py", usage=USAGE, description=__doc__.split("\n\n")[0]).parse_args(["--help"])
    overrides = parse_overrides(argv)
    config_path = overrides.pop("config", None)
    config_path = None if config_path is None else str(config_path)
    resume = overrides.pop("resume_from_checkpoint", None)
    values = setup_cpu_deepspeed(read_config(config_path, overrides))
    quiet_deepspeed_on_cpu(uses_deepspeed=bool(values.get("deepspeed")))
    run_config = make_run_config(values, config_path)
    resolved = {**values, "resume_from_checkpoint": resume} if resume is not None else values

    benchmark_callback = make_benchmark_callback(run_config)  # names and paths checked before anything is built
    # The training arguments exist before the model: under ZeRO-3 the loaders then partition weights while loading.
    if run_config.prepare_tiny is not None:
        prepare_tiny_run(run_config)
    check_data_paths(run_config)  # before the (long) model load
    set_seed(run_config.seed)
    model, processor = build_model_and_processor(run_config)
    native = isinstance(model, RossForPreTraining)
    if native:
        check_native_run(run_config, model.adapter)

    teacher = model.teacher  # before any PEFT wrapping; used by the latent cache
    adapter = model.adapter if native else None  # a native VLM's grids, for its collator and latent cache
    counts = apply_stage(model, run_config.stage, train_position_embedding=run_config.train_position_embedding)
    if run_config.lora:
        model = apply_lora(
            model, r=run_config.lora_r, alpha=run_config.lora_alpha, dropout=run_config.lora_dropout,
            target_modules=run_config.lora_target_modules,
        )
        counts = count_trainable_parameters(model)
    if run_config.gradient_checkpointing:
        model.config.use_cache = False
        if run_config.stage == 1 or run_config.lora:
            # Frozen LLM: checkpointed blocks need an input that requires grad for the backward to reach the projector.
            model.enable_input_require_grads()

    # The length pre-pass encodes with a cacheless collator; training's collator gets the latent cache it reads. A
    # native VLM's collator counts each image's tokens from its size (read from the file's header in the pre-pass).
    dataset = load_data(run_config, processor, make_collator(run_config, processor, adapter=adapter))
    latent_cache = prepare_latent_cache(run_config, teacher, processor, dataset, adapter)
    collator = make_collator(run_config, processor, latent_cache=latent_cache, adapter=adapter)
    callbacks = [ProgressCallback(label=f"stage {run_config.stage}"), *(callbacks or [])]
    if run_config.preview_every_n_steps:
        images = run_config.preview_images or preview_images_from_dataset(dataset, 4)
        callbacks.append(
            ReconstructionPreviewCallback(
                images=images,
                every_n_steps=run_config.preview_every_n_steps,
                num_inference_steps=run_config.preview_num_inference_steps,
                processor=processor,
            )
        )
    if benchmark_callback is not None:
        callbacks.append(benchmark_callback)  # it takes the trainer, which it logs through, at train begin
    trainer = RossTrainer(
        model=model,
        args=run_config,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
        group_by=run_config.group_by,
    )
    if trainer.is_world_process_zero():
        print(f"[ross] stage {run_config.stage}: trainable parameters per module {counts}", flush=True)

    if isinstance(resume, str) and resume.lower() in ("true", "latest"):
        resume = True
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    elapsed = time.perf_counter() - start

    output_dir = Path(run_config.output_dir)
    save_model(trainer, model, processor, run_config, resolved, output_dir / "model")
    if benchmark_callback is not None and trainer.is_world_process_zero():
        if run_config.load_best_model_at_end:  # the saved weights may be another step's than the last scores'
            print("[ross] load_best_model_at_end: the final benchmark scores stay in eval/step-N only", flush=True)
        else:  # the last step's scores, as the saved model's: the model card lists them (`find_scores`)
            benchmark_callback.write_final_scores(output_dir / "model")
    summary = build_summary(trainer, result, elapsed, counts, dataset, collator)
    if benchmark_callback is not None and benchmark_callback.logged:
        last = max(benchmark_callback.logged)
        summary["benchmarks"] = {"step": last, **benchmark_callback.logged[last]}  # the values logged at the end
    if trainer.is_world_process_zero():
        (output_dir / run_config.summary_file).write_text(json.dumps(summary, indent=2) + "\n")
        print("[ross] summary: " + json.dumps(summary), flush=True)
    if run_config.push_to_hub:
        push_from_trainer(trainer, output_dir / "model")
    trainer.accelerator.wait_for_everyone()
    # Destroys the process group (if any) before interpreter exit, where gloo's threads can otherwise abort it.
    trainer.accelerator.end_training()
    return summary


def build_summary(trainer, result, elapsed: float, counts: dict, dataset=None, collator=None) -> dict:
    """The run's numbers (every rank calls it: the per-rank image counts are gathered). Runtime, tokens/s and the
    final training loss cover the whole run, also after a resume (the totals saved with each checkpoint)."""
    metrics = result.metrics
    runtime = getattr(trainer, "run_seconds", None) or metrics.get("train_runtime") or elapsed
    whole_run_loss = trainer.whole_run_train_loss() if hasattr(trainer, "whole_run_train_loss") else None
    base = getattr(dataset, "dataset", dataset)  # a Subset (max_train_samples) holds the RossDataset
    sources = [base, collator] if base is not None and collator is not None else []
    history = trainer.state.log_history
    last = {key: next((h[key] for h in reversed(history) if key in h), None) for key in ("text_loss", "visual_loss")}
    logged = [{k: h[k] for k in ("loss", "text_loss", "visual_loss") if k in h} for h in history if "loss" in h]
    tokens = trainer.state.num_input_tokens_seen
    return {
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(runtime, 3),
        "steps_per_second": metrics.get("train_steps_per_second"),
        "samples_per_second": metrics.get("train_samples_per_second"),
        "tokens_per_second": round(tokens / runtime, 2) if tokens and runtime else None,
        "num_input_tokens_seen": tokens,
        "peak_memory_bytes": peak_memory_bytes(),
        "peak_memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "cpu_max_rss",
        "this_process_runtime_s": round(metrics.get("train_runtime") or elapsed, 3),
        "final_train_loss": whole_run_loss if whole_run_loss is not None else metrics.get("train_loss"),
        "final_text_loss": last["text_loss"],
        "final_visual_loss": last["visual_loss"],
        "first_logged": logged[0] if logged else None,  # {"loss", "text_loss", "visual_loss"} of the first log
        "last_logged": logged[-1] if logged else None,
        "trainable_parameters": counts,
        "world_size": trainer.args.world_size,
        "images_seen_per_rank": images_seen_per_rank(trainer),
        # bad samples left out, by reason (load, length pre-pass, fetch, collator), and how many records there were
        "skipped": skipped_summary(*sources) if sources else {},
        # records trained in a changed form, by rule (e.g. a leading gpt turn dropped, as the authors' preprocessing)
        "changed": changed_summary(base),
        "num_records": getattr(base, "num_records", None),
        "num_train_samples": len(dataset) if dataset is not None else None,
    }


def changed_summary(dataset) -> dict:
    """`{rule: records}` of the records a source changed at parse (`ross.train.sources.drop_leading_gpt_turn`)."""
    changed = Counter()
    for source in getattr(dataset, "sources", None) or []:
        changed.update(getattr(source, "changes", None) or {})
    return {rule: count for rule, count in sorted(changed.items()) if count}


def cli(argv: list[str] | None = None) -> int:
    """`main` for the command line: bad input is one `error: ...` line on stderr and status 2."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
