"""The run configuration of `train/sft.py`: one flat YAML file, `--key value` overrides, strict checking.

`RossRunConfig` is one dataclass: the run's own fields below (model, data, stage, LoRA, latent cache) on top of
`RossTrainingArguments` (`transformers.TrainingArguments` + per-module learning rates), as TRL's `SFTConfig` extends
`TrainingArguments`. Every value is converted to its field's declared type (`learning_rate: 2e-4`, which PyYAML reads
as a string, becomes a float); a value that does not convert is an error naming the key, the value and the type. An
unknown key is an error that lists the valid keys (and the closest ones).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from accelerate import PartialState

from ross.eval.scoring import RULES
from ross.train.trainer import RossTrainingArguments


REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RossRunConfig(RossTrainingArguments):
    """A run: model, data and stage settings, plus every `RossTrainingArguments` field (the Trainer gets this object)."""

    # ---- model: either components (new model) or a ROSS checkpoint (continue training) ----
    model_name_or_path: str | None = None  # a ROSS checkpoint: loaded with `load_objective=True`
    vision_model: str | None = None  # e.g. google/siglip-so400m-patch14-384
    language_model: str | None = None  # e.g. Qwen/Qwen2-7B-Instruct
    teacher: str | None = None  # e.g. black-forest-labs/FLUX.1-dev
    teacher_subfolder: str | None = None  # e.g. vae
    objective: str = "denoise"  # denoise | regress | latent2pixel | none (baseline)
    target: str = "vae"  # vae | pixel | features
    model_overrides: dict = field(default_factory=dict)  # extra RossConfig / RossObjectiveConfig fields
    # Dtype of the weights the optimizer updates (master weights). float32 also when continuing from a bf16
    # checkpoint: bf16 runs under autocast or DeepSpeed's bf16 engine. auto: the checkpoint's own dtype.
    weights_dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    chat_template: str = "auto"  # auto (v1 for Vicuna/llama, qwen_2 otherwise) | qwen_2 | v1 | llm | a Jinja string
    image_aspect_ratio: str = "pad"  # pad (stage 2) | resize (stage 1)
    # front: a turn's single <image> moves to its start, as "<image>\n" + text (the authors' preprocess_multimodal);
    # inplace: where the data puts it. Turns with several images always keep them in place (interleaved).
    image_placement: str = "front"
    # ---- training recipe ----
    stage: int = 2  # 1: projector + denoiser; 2: projector + LLM + denoiser
    # Stage 2 continues from a stage-1 checkpoint (`model_name_or_path`); true lets it start from fresh components
    # (an untrained projector and denoiser), e.g. for smoke tests.
    allow_fresh_stage2: bool = False
    # A learned denoiser position table (denoiser_position_embedding: learned) is trained in stage 1 and frozen in
    # stage 2, as in the authors' code; true / false force it either way.
    train_position_embedding: bool | None = None
    lora: bool = False  # LoRA on the LLM (stage 2); projector and denoiser stay fully trainable
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None
    # ---- data ----
    data_path: str | None = None  # LLaVA JSON / JSONL
    image_folder: str | None = None
    data_format: str = "chat"  # chat (instruction tuning) | plain (stage-1 captions)
    model_max_length: int = 2048
    on_bad_sample: str = "error"  # unreadable / too long samples: error | skip (logged and counted)
    # skip mode: stop when more than this share of the records is bad (a wrong image_folder, a broken copy)
    max_bad_fraction: float = 0.05
    # the length pre-pass's cache (train/lengths.py); None: `.ross_cache/` next to the data file, else ~/.cache/ross
    length_cache_dir: str | None = None
    group_by: str | None = None  # None (random) | length | modality_length (LLaVA's group_by_modality_length)
    max_train_samples: int | None = None
    # ---- latent cache of the teacher's outputs (train/latent_cache.py) ----
    latent_cache_dir: str | None = None  # use cached teacher (mean, std) targets from here; None: teacher every step
    build_latent_cache: bool = False  # encode the images missing from latent_cache_dir before training (main process)
    latent_cache_dtype: str = "float32"  # storage dtype: float32 (exact) | float16
    # ---- reconstruction previews (train/callbacks.py) ----
    preview_every_n_steps: int | None = None  # write <output_dir>/previews/step_XXXXXX.png every K steps
    preview_images: list[str] | None = None  # image paths; None: the first 4 training images
    preview_num_inference_steps: int = 25
    # ---- benchmarks during training (train/callbacks.py BenchmarkEvalCallback; greedy, ross.eval.generation) ----
    # "name=path" entries, as `python -m ross.eval.run --benchmark NAME --data PATH`; None: no evaluation in training
    benchmarks: list[str] | None = None
    benchmark_every_steps: int | None = None  # evaluate every K steps; always once at the end (None: only then)
    benchmark_limit: int | None = 100  # a fixed subset: the first N items of each benchmark (None: all)
    benchmark_batch_size: int = 8
    benchmark_max_new_tokens: int | None = None  # None: each benchmark's own limit
    benchmark_rules: str = "lmms-eval"  # prompt and scoring rules (lmms-eval | vlmevalkit)
    # ---- tiny default run: write tiny components + synthetic data when missing ----
    prepare_tiny: dict | None = None  # {"root": "runs/tiny", "num_images": 64, "stage": "plain"|"sft"}
    # ---- outputs ----
    summary_file: str = "summary.json"  # written under output_dir


def training_argument_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(RossTrainingArguments) if f.init]


def run_config_keys() -> list[str]:
    """The run's own keys (those `RossRunConfig` adds to the training arguments)."""
    inherited = set(training_argument_keys())
    return [f.name for f in dataclasses.fields(RossRunConfig) if f.init and f.name not in inherited]


def coerce_values(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Each value converted to its `RossRunConfig` field's declared type; `ValueError` naming every one that is not."""
    hints = typing.get_type_hints(RossRunConfig)
    converted, problems = {}, []
    for key, value in values.items():
        try:
            converted[key] = _coerce(value, hints[key])
        except (TypeError, ValueError):
            problems.append(f"{key}={value!r} is not {_type_name(hints[key])}")
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems) + ".")
    return converted


_BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _coerce(value, annotation):
    """`value` as `annotation` (bool, int, float, str, enums, lists, dicts, unions of them, Literal, Any)."""
    if annotation is Any:
        return value
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in members:
            return None
        # A value that already has one of the member types stays as it is (`"auto"` for `str | bool`, a path string
        # for `dict | str`); otherwise the first member that converts it wins (`"2e-4"` for `float | None`).
        for member in members:
            if member is not type(None) and _is_instance(value, member):
                return _coerce(value, member)
        for member in members:
            if member is not type(None):
                try:
                    return _coerce(value, member)
                except (TypeError, ValueError):
                    continue
        raise ValueError(value)
    if origin is typing.Literal:
        if value in members:
            return value
        raise ValueError(value)
    if origin is list or annotation is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        return [_coerce(item, members[0]) for item in value] if members else list(value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise TypeError(value)
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOLEAN_WORDS:
            return _BOOLEAN_WORDS[value.lower()]
        raise ValueError(value)
    if annotation is int:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, int) or isinstance(value, float) and value.is_integer():
            return int(value)
        return int(value if isinstance(value, str) else str(value))
    if annotation is float:
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value)
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation(value).value if not isinstance(value, annotation) else value
    return value  # other classes (e.g. accelerate's ParallelismConfig): left to TrainingArguments


def _is_instance(value, annotation) -> bool:
    origin = typing.get_origin(annotation) or annotation
    if origin is typing.Literal or not isinstance(origin, type):
        return False
    if origin in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, origin)


def _type_name(annotation) -> str:
    """`a number`, `an integer or None`, `a list of a string`, `one of 'no', 'steps', 'epoch'`."""
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("None" if m is type(None) else _type_name(m) for m in members)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, members))
    if origin is list:
        return f"a list of {_type_name(members[0])}" if members else "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in annotation)
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return simple.get(annotation, getattr(annotation, "__name__", str(annotation)))


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """`["--lr", "1e-3", "--bf16=true", "--flag"]` -> `{"lr": 0.001, "bf16": True, "flag": True}` (values as YAML)."""
    overrides, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"Expected --key value, got {arg!r}")
        key = arg[2:].replace("-", "_") if "=" not in arg else arg[2 : arg.index("=")].replace("-", "_")
        if "=" in arg:
            value, i = arg[arg.index("=") + 1 :], i + 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 2
        else:
            value, i = "true", i + 1
        overrides[key] = yaml.safe_load(value) if value != "" else ""
    return overrides


def check_keys(values: dict[str, Any], source: str = "config") -> None:
    """Raise a `ValueError` naming every unknown key, its closest valid keys, and the full list of valid keys."""
    valid = run_config_keys() + training_argument_keys()
    unknown = [key for key in values if key not in valid]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise ValueError(
            f"Unknown key(s) in {source}: {', '.join(hints)}.\n"
            f"Valid run keys: {', '.join(sorted(run_config_keys()))}.\n"
            f"Valid TrainingArguments keys: {', '.join(sorted(training_argument_keys()))}."
        )


def resolve_path(path: str | None, base: Path | None = None) -> str | None:
    """A relative path as given if it exists from the working directory, else relative to `base`, else the repo."""
    if path is None or Path(path).is_absolute() or Path(path).exists():
        return path
    for root in (base, REPO_ROOT):
        if root is not None and (root / path).exists():
            return str(root / path)
    return path


def setup_cpu_deepspeed(values: dict[str, Any]) -> None:
    """
    DeepSpeed on CPU (tests, no GPU): launch with `torchrun --nproc_per_node N` (or `accelerate launch
    --num_processes N --multi_gpu`) and `DS_ACCELERATOR=cpu`. accelerate only starts DeepSpeed on an accelerator
    device (with `use_cpu` it silently falls back to plain CPU DDP), so here the process group is created first with
    gloo and DeepSpeed flagged, and `TrainingArguments` is told to reuse that state (`use_configured_state`).
    No-op unless `deepspeed` is set, `DS_ACCELERATOR=cpu`, and the process was started by a distributed launcher.
    """
    if not values.get("deepspeed") or os.environ.get("DS_ACCELERATOR") != "cpu" or "LOCAL_RANK" not in os.environ:
        return
    if values.get("use_cpu"):
        raise ValueError("With DS_ACCELERATOR=cpu leave `use_cpu` unset: accelerate disables DeepSpeed with use_cpu.")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    accelerator_config = dict(values.get("accelerator_config") or {})
    accelerator_config["use_configured_state"] = True
    values["accelerator_config"] = accelerator_config


def load_config(config_path: str | None, overrides: dict[str, Any] | None = None):
    """
    Read the YAML file, apply the overrides, check the keys, convert the values to their types.

    Returns `(run_config, resolved)`: the `RossRunConfig` (also the Trainer's arguments) and the merged flat dict of
    what was given (saved with the model as `train_config.yaml`).
    """
    values: dict[str, Any] = {}
    if config_path is not None:
        with open(config_path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{config_path} must hold a mapping of keys to values, got {type(values).__name__}.")
        check_keys(values, source=str(config_path))
        values = coerce_values(values, source=str(config_path))
    overrides = overrides or {}
    check_keys(overrides, source="command-line overrides")
    values = {**values, **coerce_values(overrides, source="command-line overrides")}
    if "deepspeed" in values and isinstance(values["deepspeed"], str):
        values["deepspeed"] = resolve_path(values["deepspeed"], Path(config_path).parent if config_path else None)
    if "output_dir" not in values:
        raise ValueError("The config needs an `output_dir`.")

    setup_cpu_deepspeed(values)
    run_config = RossRunConfig(**values)
    if run_config.stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {run_config.stage!r}")
    if (
        run_config.model_name_or_path is None
        and run_config.prepare_tiny is None
        and not (run_config.vision_model and run_config.language_model)
    ):
        raise ValueError("Set either `model_name_or_path` (a ROSS checkpoint) or `vision_model` + `language_model`.")
    if run_config.data_path is None and run_config.prepare_tiny is None:
        raise ValueError("Set `data_path` (LLaVA-format JSON) or `prepare_tiny`.")
    check_run_config(run_config, source=str(config_path) if config_path else "command-line overrides")
    return run_config, values


WEIGHTS_DTYPES = ("float32", "bfloat16", "float16", "auto")


def check_run_config(run_config: RossRunConfig, source: str) -> None:
    """Value checks that need no model: the choices of each field, and the stage-2 starting point."""
    choices = {
        "weights_dtype": WEIGHTS_DTYPES,
        "image_placement": ("front", "inplace"),
        "image_aspect_ratio": ("pad", "resize"),
        "data_format": ("chat", "plain"),
        "on_bad_sample": ("error", "skip"),
        "benchmark_rules": RULES,
    }
    for name, allowed in choices.items():
        value = getattr(run_config, name)
        if value not in allowed:
            raise ValueError(f"{source}: {name}={value!r} is not one of {', '.join(map(repr, allowed))}.")
    if not 0.0 <= run_config.max_bad_fraction <= 1.0:
        raise ValueError(f"{source}: max_bad_fraction={run_config.max_bad_fraction!r} is not between 0 and 1.")
    path = run_config.model_name_or_path
    if path is None:
        if run_config.stage == 2 and not run_config.allow_fresh_stage2:
            raise ValueError(
                f"{source}: stage 2 continues from a stage-1 checkpoint, but `model_name_or_path` is not set. Point it "
                "at the stage-1 output (`<stage-1 output_dir>/model`), or set `allow_fresh_stage2: true` to start "
                "stage 2 from fresh components (untrained projector and denoiser)."
            )
    elif not looks_like_hub_id(path) and resolve_path(path) == path and not Path(path).exists():
        hint = " Run stage 1 first (it writes `<output_dir>/model`)." if run_config.stage == 2 else ""
        raise ValueError(f"{source}: model_name_or_path {path} does not exist.{hint}")


def looks_like_hub_id(value: str) -> bool:
    """`name` or `org/name` (what the Hub accepts), not a relative or absolute folder path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", value)) and ".." not in value


__all__ = [
    "RossRunConfig",
    "check_keys",
    "check_run_config",
    "coerce_values",
    "load_config",
    "looks_like_hub_id",
    "parse_overrides",
    "resolve_path",
    "setup_cpu_deepspeed",
]
