"""Build what a run trains from its run config: tiny components and synthetic data for the default run
(`prepare_tiny_run`, which writes the files the loaded config points at), and the model and processor
(`build_model_and_processor`), either from components (`vision_model`, `language_model`, `teacher`) or from a ROSS
checkpoint (`model_name_or_path`, trained denoiser included). Used by `train/sft.py` and `train/latent_cache.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import huggingface_hub
import torch
from transformers import AutoProcessor
from transformers.integrations.deepspeed import (
    is_deepspeed_zero3_enabled,
    set_hf_deepspeed_config,
    unset_hf_deepspeed_config,
)

from modeling_ross import RossForConditionalGeneration, RossProcessor, from_components
from modeling_ross.modeling_ross_pretraining import RossForPreTraining
from modeling_ross.native_adapters import ADAPTERS
from modeling_ross.testing import write_tiny_components
from ross.eval.generation import ModelPathError, model_path_problem
from ross.train.config import RossRunConfig, looks_like_hub_id
import ross.train.packed_attention  # noqa: F401  (registers the "sdpa_varlen" attention)
from ross.train.synthetic import write_llava_dataset


def prepare_tiny_run(run_config: RossRunConfig) -> None:
    """Write the tiny components and synthetic LLaVA data of `prepare_tiny` under its `root` when missing. The run
    config already points at them (`ross.train.config.resolve_paths` derives those paths when it is loaded)."""
    tiny = run_config.prepare_tiny
    components, data = Path(tiny.root) / "components", Path(tiny.root) / "data"
    with run_config.main_process_first(desc="writing tiny components and synthetic data"):
        if not (components / "qwen2-tiny" / "config.json").exists():
            write_tiny_components(components)
        if not (data / f"synthetic_{tiny.stage}.json").exists():
            write_llava_dataset(str(data), num_images=tiny.num_images, seed=tiny.seed, size=tiny.size, stage=tiny.stage)


def build_model_and_processor(run_config: RossRunConfig):
    """
    The model is built in full on every rank, also under ZeRO-3 (the engine partitions it in `deepspeed.initialize`):
    `from_components` assembles modules on the meta device and `load_teacher` copies into the teacher, neither of
    which works inside `zero.Init`. Memory per rank is then the whole model until the engine starts. The run key
    `attn_implementation` is then set on the whole model (`set_attn_implementation`).
    """
    zero3 = is_deepspeed_zero3_enabled()
    if zero3:
        unset_hf_deepspeed_config()
    try:
        model, processor = _build_model_and_processor(run_config)
    finally:
        if zero3:
            set_hf_deepspeed_config(run_config.hf_deepspeed_config)
    if run_config.attn_implementation:  # "sdpa_varlen" is registered by ross.train.packed_attention (imported here)
        model.set_attn_implementation(run_config.attn_implementation)
    return model, processor


def quiet_deepspeed_on_cpu(uses_deepspeed: bool = False) -> None:
    """Name DeepSpeed's accelerator (`DS_ACCELERATOR=cpu`, what it detects anyway) on a machine without CUDA, for a run
    that does not use DeepSpeed. accelerate imports DeepSpeed whenever it is installed (`extract_model_from_parallel`,
    reached from every `save_pretrained` and the Trainer), and DeepSpeed's detection then warns "Setting accelerator to
    CPU ..." on every CPU run: a line the user can do nothing about. A run with `deepspeed` set is left alone
    (`DS_ACCELERATOR=cpu` is the switch of `train/sft.py`'s CPU DeepSpeed mode), as is a value the user set."""
    if not uses_deepspeed and "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


MODEL_PATH_KEYS = ("model_name_or_path", "vision_model", "language_model", "teacher")


def _offline() -> bool:
    return huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def check_model_sources(run_config: RossRunConfig) -> None:
    """
    Before anything is loaded: every model path of the run (`model_name_or_path`, `vision_model`, `language_model`,
    `teacher`; resolved when the config was loaded) is an existing local folder or a Hub id, and offline (`HF_HUB_OFFLINE`) a Hub id must be in the local
    Hub cache. Otherwise one `ValueError` naming each key, its value and what is wrong (instead of huggingface_hub's
    "Repo id must be in the form ...").
    """
    problems = []
    for key in MODEL_PATH_KEYS:
        value = getattr(run_config, key)
        if not value:
            continue
        if Path(value).is_dir():  # paths were resolved when the config was loaded
            problem = model_path_problem(value) if key == "model_name_or_path" else None  # config.json, weights
            if problem:
                problems.append(f"{key}: {problem}")
            continue
        if Path(value).exists():
            problems.append(f"{key}: {value} is a file, not a model folder")
        elif not looks_like_hub_id(value):
            problems.append(f"{key}: the local folder {value} does not exist")
        elif _offline():
            subfolder = run_config.teacher_subfolder if key == "teacher" else None
            filename = f"{subfolder}/config.json" if subfolder else "config.json"
            cached = huggingface_hub.try_to_load_from_cache(value, filename)
            if not isinstance(cached, str):
                problems.append(
                    f"{key}: {value} is not a local folder (no such folder) and not in the local Hub cache, and "
                    "offline mode is on (HF_HUB_OFFLINE=1): download it first or unset HF_HUB_OFFLINE"
                )
    if problems:
        raise ModelPathError("Cannot load the run's models:\n  " + "\n  ".join(problems))


def native_vlm_type(path: str | None) -> str | None:
    """The `model_type` of `path` when it is a local folder of a native transformers VLM ROSS has an adapter for
    (Qwen2.5-VL, llava-hf Llava, ...; `modeling_ross/native_adapters.py`), else None (a ROSS checkpoint)."""
    config_file = Path(path or "") / "config.json"
    if not path or not config_file.is_file():
        return None
    model_type = json.loads(config_file.read_text()).get("model_type")
    return model_type if model_type in ADAPTERS else None


def build_native_model_and_processor(run_config: RossRunConfig, dtype):
    """`RossForPreTraining` around the native VLM at `model_name_or_path` (a fresh ROSS head from the run's objective
    keys, or the saved one when the folder has `ross_head/`) and the VLM's own processor (`AutoProcessor`)."""
    path = run_config.model_name_or_path
    kwargs = {"dtype": dtype or "auto"}
    if (Path(path) / "ross_head" / "config.json").is_file():
        model = RossForPreTraining.from_pretrained(path, **kwargs)
    else:
        objective = {
            "objective": run_config.objective, "target": run_config.target, "teacher": run_config.teacher,
            "teacher_subfolder": run_config.teacher_subfolder, **run_config.model_overrides,
        }  # fmt: skip
        model = RossForPreTraining.from_vlm(path, objective, **kwargs)
    processor = load_native_processor(path)
    return model, processor


def load_native_processor(path: str):
    """The VLM's own processor (`AutoProcessor`). On a machine without torchvision transformers 5.23 cannot load
    Qwen2/2.5/3-VL's (their video processor needs it); the tests replace this function, users install torchvision."""
    return AutoProcessor.from_pretrained(path)


def _build_model_and_processor(run_config: RossRunConfig):
    check_model_sources(run_config)
    # fp32 master weights unless the run asks otherwise, also from a bf16 checkpoint: bf16 runs under autocast (or
    # DeepSpeed's bf16 engine); updating bf16 weights directly would round lr-2e-5 steps away.
    dtype = None if run_config.weights_dtype == "auto" else getattr(torch, run_config.weights_dtype)
    if native_vlm_type(run_config.model_name_or_path):
        return build_native_model_and_processor(run_config, dtype)
    if run_config.model_name_or_path:
        path = run_config.model_name_or_path
        model = RossForConditionalGeneration.from_pretrained(path, load_objective=True, dtype=dtype or "auto")
        # The run's aspect ratio (stage 1 resizes, stage 2 pads) over the one saved with the checkpoint.
        processor = AutoProcessor.from_pretrained(
            path, trust_remote_code=True, image_aspect_ratio=run_config.image_aspect_ratio
        )
    else:
        model = from_components(
            run_config.vision_model,
            run_config.language_model,
            objective=run_config.objective,
            target=run_config.target,
            teacher=run_config.teacher,
            teacher_subfolder=run_config.teacher_subfolder,
            dtype=dtype,
            **run_config.model_overrides,
        )
        processor = RossProcessor.from_components(
            run_config.vision_model,
            run_config.language_model,
            chat_template=run_config.chat_template,
            image_aspect_ratio=run_config.image_aspect_ratio,
            # The generative variant (`model_overrides: {condition: queries}`) needs the same <query> token.
            query_token="<query>" if model.config.uses_queries else None,
        )
    if model.config.uses_queries and getattr(processor, "query_token_id", None) != model.config.query_token_id:
        raise ValueError(
            f"The model's query_token_id is {model.config.query_token_id} but the processor's <query> token is "
            f"{getattr(processor, 'query_token_id', None)}: save the processor with the model (or rebuild both)."
        )
    return model, processor


__all__ = ["build_model_and_processor", "check_model_sources", "native_vlm_type", "prepare_tiny_run"]
