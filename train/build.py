"""Build what a run trains from its run config: tiny components and synthetic data for the default run
(`prepare_tiny_run`), and the model and processor (`build_model_and_processor`), either from components
(`vision_model`, `language_model`, `teacher`) or from a ROSS checkpoint (`model_name_or_path`, trained denoiser
included). Used by `train/sft.py` and `train/latent_cache.py`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoProcessor
from transformers.integrations.deepspeed import (
    is_deepspeed_zero3_enabled,
    set_hf_deepspeed_config,
    unset_hf_deepspeed_config,
)

from modeling_ross import RossForConditionalGeneration, RossProcessor, from_components
from modeling_ross.testing import write_tiny_components
from ross.train.config import RossRunConfig, resolve_path
from ross.train.synthetic import write_llava_dataset


def prepare_tiny_run(run_config: RossRunConfig) -> None:
    """Write tiny components and synthetic LLaVA data under `prepare_tiny["root"]` if missing; point the config there."""
    spec = dict(run_config.prepare_tiny)
    root = Path(resolve_path(spec.get("root", "runs/tiny")))
    components, data = root / "components", root / "data"
    stage = spec.get("stage", "sft")
    name = f"synthetic_{stage}"
    with run_config.main_process_first(desc="writing tiny components and synthetic data"):
        if not (components / "qwen2-tiny" / "config.json").exists():
            write_tiny_components(components)
        if not (data / f"{name}.json").exists():
            write_llava_dataset(
                str(data), num_images=int(spec.get("num_images", 64)), seed=int(spec.get("seed", 0)),
                size=int(spec.get("size", 48)), stage=stage,
            )
    run_config.vision_model = run_config.vision_model or str(components / "siglip-tiny")
    run_config.language_model = run_config.language_model or str(components / "qwen2-tiny")
    if run_config.objective != "none" and run_config.target == "vae" and run_config.teacher is None:
        run_config.teacher, run_config.teacher_subfolder = str(components / "vae-tiny"), "vae"
    run_config.data_path = run_config.data_path or str(data / f"{name}.json")
    run_config.image_folder = run_config.image_folder or str(data)


def build_model_and_processor(run_config: RossRunConfig):
    """
    The model is built in full on every rank, also under ZeRO-3 (the engine partitions it in `deepspeed.initialize`):
    `from_components` assembles modules on the meta device and `load_teacher` copies into the teacher, neither of
    which works inside `zero.Init`. Memory per rank is then the whole model until the engine starts.
    """
    zero3 = is_deepspeed_zero3_enabled()
    if zero3:
        unset_hf_deepspeed_config()
    try:
        return _build_model_and_processor(run_config)
    finally:
        if zero3:
            set_hf_deepspeed_config(run_config.hf_deepspeed_config)


def _build_model_and_processor(run_config: RossRunConfig):
    # fp32 master weights unless the run asks otherwise, also from a bf16 checkpoint: bf16 runs under autocast (or
    # DeepSpeed's bf16 engine); updating bf16 weights directly would round lr-2e-5 steps away.
    dtype = None if run_config.weights_dtype == "auto" else getattr(torch, run_config.weights_dtype)
    if run_config.model_name_or_path:
        path = resolve_path(run_config.model_name_or_path)
        model = RossForConditionalGeneration.from_pretrained(path, load_objective=True, dtype=dtype or "auto")
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    else:
        model = from_components(
            resolve_path(run_config.vision_model),
            resolve_path(run_config.language_model),
            objective=run_config.objective,
            target=run_config.target,
            teacher=resolve_path(run_config.teacher),
            teacher_subfolder=run_config.teacher_subfolder,
            dtype=dtype,
            **run_config.model_overrides,
        )
        processor = RossProcessor.from_components(
            resolve_path(run_config.vision_model),
            resolve_path(run_config.language_model),
            chat_template=run_config.chat_template,
            image_aspect_ratio=run_config.image_aspect_ratio,
        )
    if getattr(processor, "image_aspect_ratio", None) is not None:
        processor.image_aspect_ratio = run_config.image_aspect_ratio
    return model, processor


__all__ = ["build_model_and_processor", "prepare_tiny_run"]
