"""The run configuration of `train/sft.py`: one flat YAML file, `--key value` overrides, strict checking.

`RossRunConfig` is one dataclass: the run's own fields below (model, data, stage, LoRA, latent cache) on top of
`RossTrainingArguments` (`transformers.TrainingArguments` + per-module learning rates), as TRL's `SFTConfig` extends
`TrainingArguments`. Every field carries `help` metadata and a precise type (choices are `Literal`s; those of
`objective` and `target` are the model config's own), so `transformers.HfArgumentParser` builds the command line's
parser from it: `python train/sft.py --help` lists every key with its type, default and meaning.

Values come from the YAML file and from `--key value` (a value is read as YAML: `--stage 1`, `--benchmarks "[a=x]"`,
`--model_overrides "{denoiser_depth: 2}"`). A string is converted by the parser action `HfArgumentParser` made for its
field (`learning_rate: 2e-4`, which PyYAML reads as a string, becomes a float; `lora: yes` a bool), then every value is
checked against the field's type by `huggingface_hub`'s dataclass validator. A value that does not fit is an error
naming the key, the value and the type; an unknown key is an error with the closest valid keys. The nested mappings
are typed too: `prepare_tiny` is a `PrepareTiny`, and `model_overrides` holds fields of the model's `RossConfig` /
`RossObjectiveConfig`, checked against their types.

Loading has no side effects: relative paths are resolved once, here, and the tiny run's component and data paths are
derived from `prepare_tiny` (the files are written by `ross.train.build.prepare_tiny_run` when the run starts).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from huggingface_hub.dataclasses import type_validator
from transformers import HfArgumentParser

from modeling_ross.configuration_ross import RossConfig, RossObjectiveConfig
from ross.eval.scoring import RULES
from ross.train.trainer import RossTrainingArguments


REPO_ROOT = Path(__file__).resolve().parents[1]

# Choices owned by the model config, not repeated here.
Objective = RossObjectiveConfig.__dataclass_fields__["objective"].type
Target = RossObjectiveConfig.__dataclass_fields__["target"].type
BenchmarkRules = Literal[RULES]


class ConfigError(ValueError):
    """A run config that cannot be used (syntax, unknown key, wrong value); the CLI prints it on one line, exit 2."""


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class PrepareTiny:
    """`prepare_tiny`: write tiny components and synthetic LLaVA data under `root` when missing, and train on them."""

    root: str = _help("Folder of the tiny components (`components/`) and data (`data/`).", default="runs/tiny")
    num_images: int = _help("Synthetic images to generate.", default=64)
    stage: Literal["plain", "sft"] = _help("plain: stage-1 captions; sft: stage-2 QA conversations.", default="sft")
    seed: int = _help("Seed of the synthetic data.", default=0)
    size: int = _help("Side of the synthetic images in pixels.", default=48)


@dataclass
class RossRunConfig(RossTrainingArguments):
    """A run: model, data and stage settings, plus every `RossTrainingArguments` field (the Trainer gets this
    object)."""

    # ---- model: either components (new model) or a ROSS checkpoint (continue training) ----
    model_name_or_path: str | None = _help(
        "A ROSS checkpoint (folder or Hub id) to continue from, loaded with its trained denoiser.", default=None
    )
    vision_model: str | None = _help(
        "Vision tower for a new model, e.g. google/siglip-so400m-patch14-384.", default=None
    )
    language_model: str | None = _help("Causal LM for a new model, e.g. Qwen/Qwen2-7B-Instruct.", default=None)
    teacher: str | None = _help("Teacher of the visual targets, e.g. black-forest-labs/FLUX.1-dev.", default=None)
    teacher_subfolder: str | None = _help("Subfolder of the teacher's repo, e.g. vae.", default=None)
    objective: Objective = _help("The visual objective (none: the LLaVA baseline).", default="denoise")
    target: Target = _help("What the objective reconstructs.", default="vae")
    model_overrides: dict[str, Any] = _help(
        "Extra RossConfig / RossObjectiveConfig fields of a new model, e.g. {denoiser_depth: 2}.", default_factory=dict
    )
    weights_dtype: Literal["float32", "bfloat16", "float16", "auto"] = _help(
        "Dtype of the weights the optimizer updates (bf16 runs under autocast); auto: the checkpoint's own.",
        default="float32",
    )
    attn_implementation: str | None = _help(
        "Attention of the model: sdpa, eager, flash_attention_2, ..., or sdpa_varlen (SDPA per packed sample, for "
        "padding_free on machines without flash-attention; train/packed_attention.py); default: the model's (sdpa).",
        default=None,
    )
    chat_template: str = _help(
        "auto (v1 for Vicuna/llama, qwen_2 otherwise), qwen_2, v1, llm, or a Jinja string.", default="auto"
    )
    image_aspect_ratio: Literal["pad", "resize"] = _help("pad (stage 2) or resize (stage 1) the images.", default="pad")
    image_placement: Literal["front", "inplace"] = _help(
        "front: a turn's single <image> moves to its start (the authors' preprocess); inplace: where the data puts it.",
        default="front",
    )
    # ---- training recipe ----
    stage: int = _help("1: projector + denoiser; 2: projector + LLM + denoiser.", default=2)
    allow_fresh_stage2: bool = _help(
        "Let stage 2 start from fresh components instead of a stage-1 checkpoint (smoke tests).", default=False
    )
    train_position_embedding: bool | None = _help(
        "Train a learned denoiser position table (default: in stage 1 only, as the authors).", default=None
    )
    lora: bool = _help("LoRA on the LLM (projector and denoiser stay fully trainable).", default=False)
    lora_r: int = _help("LoRA rank.", default=16)
    lora_alpha: int = _help("LoRA alpha.", default=32)
    lora_dropout: float = _help("LoRA dropout.", default=0.05)
    lora_target_modules: list[str] | None = _help(
        "LLM linear layers to adapt (default: attention and MLP projections).", default=None
    )
    # ---- data ----
    data_path: str | None = _help("LLaVA-format JSON / JSONL training data.", default=None)
    image_folder: str | None = _help("Folder the data's image paths are relative to.", default=None)
    data_format: Literal["chat", "plain"] = _help(
        "chat (instruction tuning) or plain (stage-1 captions).", default="chat"
    )
    model_max_length: int = _help("Longest sample in tokens.", default=2048)
    on_bad_sample: Literal["error", "skip"] = _help(
        "Unreadable or too long samples: stop with an error, or skip them (logged and counted).", default="error"
    )
    max_bad_fraction: float = _help("Skip mode: stop when more than this share of the records is bad.", default=0.05)
    length_cache_dir: str | None = _help(
        "Cache of the length pre-pass (default: .ross_cache/ next to the data, else ~/.cache/ross).", default=None
    )
    group_by: Literal["length", "modality_length"] | None = _help(
        "Batch grouping: random (None), by length, or by modality and length (LLaVA's).", default=None
    )
    max_train_samples: int | None = _help("Train on the first N samples only.", default=None)
    padding_free: bool = _help(
        "Pack each batch's samples into rows (position ids restart per sample, no padding; docs/training.md).",
        default=False,
    )
    pack_max_tokens: int | None = _help(
        "With padding_free: tokens per packed row (default: the whole batch in one row with sdpa_varlen or "
        "flash-attention, else the batch's longest sample).",
        default=None,
    )
    cache_encodings: bool = _help(
        "Keep each sample's encoding (tokens, labels, pixel values) in memory and reuse it when the sample comes again "
        "(several epochs over a small dataset; memory grows with the distinct samples; docs/training.md).",
        default=False,
    )
    # ---- latent cache of the teacher's outputs (train/latent_cache.py) ----
    latent_cache_dir: str | None = _help(
        "Read cached teacher targets from here (default: run the teacher every step).", default=None
    )
    build_latent_cache: bool = _help("Encode the images missing from latent_cache_dir before training.", default=False)
    latent_cache_dtype: Literal["float32", "float16"] = _help("Storage dtype of the latent cache.", default="float32")
    # ---- reconstruction previews (train/callbacks.py) ----
    preview_every_n_steps: int | None = _help(
        "Write <output_dir>/previews/step_XXXXXX.png every K steps.", default=None
    )
    preview_images: list[str] | None = _help(
        "Preview image paths (default: the first 4 training images).", default=None
    )
    preview_num_inference_steps: int = _help("Reverse-diffusion steps of a preview.", default=25)
    # ---- benchmarks during training (train/callbacks.py BenchmarkEvalCallback) ----
    benchmarks: list[str] | None = _help(
        "name=path entries evaluated during training (as python -m ross.eval.run).", default=None
    )
    benchmark_every_steps: int | None = _help("Evaluate every K steps (always once at the end).", default=None)
    benchmark_limit: int | None = _help("Evaluate the first N items of each benchmark (None: all).", default=100)
    benchmark_batch_size: int = _help("Batch size of the benchmark runner.", default=8)
    benchmark_max_new_tokens: int | None = _help("Generation limit (default: each benchmark's own).", default=None)
    benchmark_rules: BenchmarkRules = _help("Prompt and scoring rules.", default="lmms-eval")
    # ---- tiny default run ----
    prepare_tiny: PrepareTiny | None = _help(
        "Write tiny components + synthetic data when missing and train on them: "
        "{root, num_images, stage: plain|sft, seed, size}.",
        default=None,
    )
    # ---- outputs ----
    summary_file: str = _help("Run summary JSON, written under output_dir.", default="summary.json")

    def __post_init__(self):
        if isinstance(self.prepare_tiny, dict):
            self.prepare_tiny = PrepareTiny(**self.prepare_tiny)
        super().__post_init__()

    def to_dict(self):
        d = super().to_dict()
        if self.prepare_tiny is not None:
            d["prepare_tiny"] = dataclasses.asdict(self.prepare_tiny)
        return d


# ---- the parser ---------------------------------------------------------------------------------------------------
def _metavar(annotation) -> str:
    """`FLOAT`, `INT | None`, `LIST[STR]`, `{pad,resize}`, ... : the type shown by `--help`."""
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if m is type(None) else _metavar(m) for m in members)
    if origin is Literal:
        return "{" + ",".join(map(str, members)) + "}"
    if origin is list:
        return f"LIST[{_metavar(members[0])}]" if members else "LIST"
    if origin is dict or annotation is dict or annotation is PrepareTiny:
        return "MAPPING"
    if isinstance(annotation, type):
        return annotation.__name__.upper() if annotation in (bool, int, float, str) else annotation.__name__
    return str(annotation)


def build_parser(dataclass_type=RossRunConfig, **kwargs) -> HfArgumentParser:
    """`HfArgumentParser` of a config dataclass, with `--config` and each key's type in its `--help` line."""
    parser = HfArgumentParser(dataclass_type, allow_abbrev=False, **kwargs)
    hints = _field_types(dataclass_type)
    for action in parser._actions:
        if action.dest in hints and not action.option_strings[0].startswith("--no_"):
            action.metavar = _metavar(hints[action.dest])
    if dataclass_type is RossRunConfig:
        parser.add_argument("--config", metavar="YAML", help="YAML file of run keys; --key value pairs override it.")
        nested = {"prepare_tiny": _field_types(PrepareTiny), "model_overrides": model_override_types()}
        parser.epilog = " ".join(
            f"{key} keys: " + ", ".join(f"{name} ({_metavar(annotation)})" for name, annotation in types_.items()) + "."
            for key, types_ in nested.items()
        )
    return parser


def _field_types(dataclass_type) -> dict[str, Any]:
    """Each init field's type, evaluated (a string the module cannot evaluate counts as `Any`)."""
    try:
        return typing.get_type_hints(dataclass_type)
    except NameError:
        return {f.name: (Any if isinstance(f.type, str) else f.type) for f in dataclasses.fields(dataclass_type)}


@functools.cache
def _actions(dataclass_type) -> dict[str, argparse.Action]:
    """The parser actions `HfArgumentParser` builds for a dataclass's fields, by key (built once). A bool field whose
    default is True also gets a `--no_<key>` action (no type) for the same key: the field's own action is kept."""
    actions = {}
    for action in build_parser(dataclass_type)._actions:
        if action.option_strings and (action.dest not in actions or action.type is not None):
            actions[action.dest] = action
    return actions


# ---- values -------------------------------------------------------------------------------------------------------
def training_argument_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(RossTrainingArguments) if f.init]


def run_config_keys() -> list[str]:
    """The run's own keys (those `RossRunConfig` adds to the training arguments)."""
    inherited = set(training_argument_keys())
    return [f.name for f in dataclasses.fields(RossRunConfig) if f.init and f.name not in inherited]


# `model_overrides` may set these fields of the model configs; the others are set by the run's own keys or the builder.
_SET_BY_THE_RUN = {"objective", "target", "teacher", "teacher_subfolder", "enabled"}
_STRUCTURAL = {"vision_config", "text_config", "objective_config", "image_token_id", "query_token_id"}


def model_override_types() -> dict[str, Any]:
    """The keys `model_overrides` accepts and their types: the fields `RossConfig` and `RossObjectiveConfig` declare
    (not those of `PreTrainedConfig`, nor those the run's own keys or the builder set)."""
    types_ = {}
    for config_class, excluded in ((RossConfig, _STRUCTURAL), (RossObjectiveConfig, _SET_BY_THE_RUN)):
        for name in config_class.__annotations__:
            if name not in excluded and name in config_class.__dataclass_fields__:
                types_[name] = config_class.__dataclass_fields__[name].type
    return types_


@functools.cache
def model_overrides_dataclass() -> type:
    """A dataclass of the `model_overrides` keys (all optional), so that `HfArgumentParser` types them as it types the
    run's own keys."""
    fields_ = [(name, annotation, field(default=None)) for name, annotation in model_override_types().items()]
    return dataclasses.make_dataclass("ModelOverrides", fields_)


def _unknown_keys_message(unknown, valid, source: str) -> str:
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
        hints.append(f"{key!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    return f"Unknown key(s) in {source}: {', '.join(hints)}."


def check_keys(values: dict[str, Any], source: str = "config") -> None:
    """Raise a `ConfigError` naming every unknown key, its closest valid keys, and the full list of valid keys."""
    valid = run_config_keys() + training_argument_keys()
    unknown = [key for key in values if key not in valid]
    if unknown:
        raise ConfigError(
            _unknown_keys_message(unknown, valid, source) + "\n"
            f"Valid run keys: {', '.join(sorted(run_config_keys()))}.\n"
            f"Valid TrainingArguments keys: {', '.join(sorted(training_argument_keys()))}."
        )


def _typed(value, annotation, action: argparse.Action | None):
    """`value` as `annotation`: a string goes through the field's parser action (its `type` and `choices`), a whole
    number given for a float (or the reverse) is converted; `TypeError` / `ValueError` when it does not fit."""
    mapping = any(typing.get_origin(m) is dict or m is dict for m in (annotation, *typing.get_args(annotation)))
    parsable = action is not None and action.type is not None and action.nargs != "+" and not mapping
    if isinstance(value, str) and parsable:
        try:
            converted = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            converted = value  # left to the validator (e.g. "auto" for a `str | bool` field)
        if action.choices is None or converted in action.choices:
            value = converted
    candidates = [value]
    if isinstance(value, int) and not isinstance(value, bool):
        candidates.append(float(value))
    elif isinstance(value, float) and value.is_integer():
        candidates.append(int(value))
    for candidate in candidates:
        try:
            type_validator("value", candidate, annotation)
            return candidate
        except TypeError:
            continue
    raise ValueError(value)


def _convert(values: dict[str, Any], types_: dict[str, Any], actions: dict, source: str, prefix: str = "") -> dict:
    """Every value typed (`_typed`); one `ConfigError` naming each one that is not."""
    converted, problems = {}, []
    for key, value in values.items():
        try:
            converted[key] = _typed(value, types_[key], actions.get(key))
        except (TypeError, ValueError):
            problems.append(f"{prefix}{key}={value!r} is not {_type_name(types_[key])}")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems) + ".")
    return converted


def _nested(values: dict, key: str, valid_types: dict[str, Any], actions: dict, source: str) -> dict:
    """A nested mapping's keys checked (with "did you mean") and its values typed, like top-level keys."""
    mapping = values[key]
    unknown = [name for name in mapping if name not in valid_types]
    if unknown:
        raise ConfigError(
            _unknown_keys_message(unknown, list(valid_types), f"{source} {key}")
            + f" Valid {key} keys: {', '.join(sorted(valid_types))}."
        )
    return _convert(mapping, valid_types, actions, source, prefix=f"{key}.")


def coerce_values(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Each value converted to its `RossRunConfig` field's declared type, nested mappings included."""
    # `prepare_tiny` is given as a mapping (a `PrepareTiny` once the config is built).
    types_ = {**_field_types(RossRunConfig), "prepare_tiny": dict[str, Any] | None}
    converted = _convert(values, types_, _actions(RossRunConfig), source)
    if converted.get("prepare_tiny") is not None:
        converted["prepare_tiny"] = _nested(
            converted, "prepare_tiny", _field_types(PrepareTiny), _actions(PrepareTiny), source
        )
    if converted.get("model_overrides"):
        converted["model_overrides"] = _nested(
            converted, "model_overrides", model_override_types(), _actions(model_overrides_dataclass()), source
        )
    return converted


def _type_name(annotation) -> str:
    """`a number`, `an integer or None`, `a list of a string`, `one of 'no', 'steps', 'epoch'`."""
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("None" if m is type(None) else _type_name(m) for m in members)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, members))
    if origin is list:
        return f"a list of {_type_name(members[0])}" if members else "a list"
    if origin is dict or annotation is dict or dataclasses.is_dataclass(annotation):
        return "a mapping"
    if isinstance(annotation, type) and hasattr(annotation, "__members__"):  # enums
        return "one of " + ", ".join(repr(member.value) for member in annotation)
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return simple.get(annotation, getattr(annotation, "__name__", str(annotation)))


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true / false (any case). PyYAML follows YAML 1.1, where
    `no`, `yes`, `on` and `off` are booleans too, so `save_strategy: no` (or `--save_strategy no`), transformers'
    own spelling, would arrive as False and be refused. A bool field still takes yes / no: its parser reads them."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|false)$", re.IGNORECASE), list("tTfF"))


def load_yaml(stream) -> Any:
    """A YAML document (text or file) read with YAML 1.2 booleans (`_Loader`)."""
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """`["--lr", "1e-3", "--bf16=true", "--flag"]` -> `{"lr": 0.001, "bf16": True, "flag": True}` (values as YAML).
    argparse splits the arguments; the keys are checked with the YAML file's (`check_keys`, with its hints)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for arg in argv:
        if arg.startswith("--"):
            key = arg[2:].split("=", 1)[0]
            if f"--{key}" not in parser._option_string_actions:
                parser.add_argument(
                    f"--{key}", dest=key.replace("-", "_"), nargs="?", const="true", default=argparse.SUPPRESS
                )
    namespace, rest = parser.parse_known_args(argv)
    if rest:
        raise ConfigError(f"Expected --key value, got {rest[0]!r}")
    return {key: load_yaml(value) if value != "" else "" for key, value in vars(namespace).items()}


def read_yaml(config_path: str | Path) -> dict[str, Any]:
    """The YAML file's mapping; a syntax error is a `ConfigError` naming the file, line and column."""
    try:
        with open(config_path) as f:
            values = load_yaml(f) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{config_path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(config_path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except OSError as error:
        raise ConfigError(f"{config_path}: cannot read the config ({error.strerror or error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{config_path} must hold a mapping of keys to values, got {type(values).__name__}.")
    return values


# ---- paths --------------------------------------------------------------------------------------------------------
def resolve_path(path: str | None, base: Path | None = None) -> str | None:
    """A relative path as given if it exists from the working directory, else relative to `base`, else the repo."""
    if path is None or Path(path).is_absolute() or Path(path).exists():
        return path
    for root in (base, REPO_ROOT):
        if root is not None and (root / path).exists():
            return str(root / path)
    return path


PATH_KEYS = (
    "model_name_or_path", "vision_model", "language_model", "teacher", "data_path", "image_folder", "length_cache_dir",
    "latent_cache_dir",
)  # fmt: skip


def resolve_paths(values: dict[str, Any], config_dir: Path | None) -> dict[str, Any]:
    """The run's relative paths resolved once (`resolve_path`; `deepspeed` also against the config file's folder), and
    the tiny run's component and data paths derived from `prepare_tiny` (keys given explicitly win)."""
    values = dict(values)
    for key in PATH_KEYS:
        values[key] = resolve_path(values.get(key))
    if isinstance(values.get("deepspeed"), str):
        values["deepspeed"] = resolve_path(values["deepspeed"], config_dir)
    if values.get("preview_images"):
        values["preview_images"] = [resolve_path(path) for path in values["preview_images"]]
    if values.get("benchmarks"):
        values["benchmarks"] = [_resolve_spec(spec) for spec in values["benchmarks"]]
    if values.get("prepare_tiny") is not None:
        tiny = PrepareTiny(**values["prepare_tiny"])
        tiny.root = resolve_path(tiny.root)
        values["prepare_tiny"] = dataclasses.asdict(tiny)
        components, data = Path(tiny.root) / "components", Path(tiny.root) / "data"
        derived = {
            "vision_model": str(components / "siglip-tiny"),
            "language_model": str(components / "qwen2-tiny"),
            "data_path": str(data / f"synthetic_{tiny.stage}.json"),
            "image_folder": str(data),
        }
        if values.get("objective", "denoise") != "none" and values.get("target", "vae") == "vae":
            derived.update(teacher=str(components / "vae-tiny"), teacher_subfolder="vae")
        if values.get("teacher") is not None:
            derived.pop("teacher", None), derived.pop("teacher_subfolder", None)
        for key, value in derived.items():
            if values.get(key) is None:
                values[key] = value
    return values


def _resolve_spec(spec: str) -> str:
    """`name=path` with its path resolved."""
    name, sep, path = spec.partition("=")
    return f"{name}={resolve_path(path.strip())}" if sep else spec


# ---- loading ------------------------------------------------------------------------------------------------------
def read_config(config_path: str | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The YAML file's values with the overrides applied: keys checked, values typed. No side effects."""
    values: dict[str, Any] = {}
    if config_path is not None:
        values = read_yaml(config_path)
        check_keys(values, source=str(config_path))
        values = coerce_values(values, source=str(config_path))
    overrides = overrides or {}
    check_keys(overrides, source="command-line overrides")
    values = {**values, **coerce_values(overrides, source="command-line overrides")}
    if "output_dir" not in values:
        raise ConfigError("The config needs an `output_dir`.")
    return values


def make_run_config(values: dict[str, Any], config_path: str | None = None) -> RossRunConfig:
    """The `RossRunConfig` of typed values (`read_config`), its paths resolved once, checked."""
    config_dir = Path(config_path).parent if config_path else None
    run_config = RossRunConfig(**resolve_paths(values, config_dir))
    check_run_config(run_config, source=str(config_path) if config_path else "command-line overrides")
    return run_config


def load_config(config_path: str | None, overrides: dict[str, Any] | None = None):
    """
    Read the YAML file, apply the overrides, check the keys, convert the values to their types, resolve the paths.

    Returns `(run_config, resolved)`: the `RossRunConfig` (also the Trainer's arguments) and the merged flat dict of
    what was given (saved with the model as `train_config.yaml`).
    """
    values = read_config(config_path, overrides)
    return make_run_config(values, config_path), values


def check_run_config(run_config: RossRunConfig, source: str) -> None:
    """Value checks that need no model: what to build from, the value ranges, and the stage-2 starting point."""
    if run_config.model_name_or_path is None and not (run_config.vision_model and run_config.language_model):
        raise ConfigError("Set either `model_name_or_path` (a ROSS checkpoint) or `vision_model` + `language_model`.")
    if run_config.data_path is None:
        raise ConfigError("Set `data_path` (LLaVA-format JSON) or `prepare_tiny`.")
    if not 0.0 <= run_config.max_bad_fraction <= 1.0:
        raise ConfigError(f"{source}: max_bad_fraction={run_config.max_bad_fraction!r} is not between 0 and 1.")
    if run_config.stage not in (1, 2):
        raise ConfigError(f"{source}: stage must be 1 or 2, got {run_config.stage!r}.")
    path = run_config.model_name_or_path
    if path is None:
        if run_config.stage == 2 and not run_config.allow_fresh_stage2:
            raise ConfigError(
                f"{source}: stage 2 continues from a stage-1 checkpoint, but `model_name_or_path` is not set. Point it "
                "at the stage-1 output (`<stage-1 output_dir>/model`), or set `allow_fresh_stage2: true` to start "
                "stage 2 from fresh components (untrained projector and denoiser)."
            )
    elif not looks_like_hub_id(path) and not Path(path).exists():
        hint = " Run stage 1 first (it writes `<output_dir>/model`)." if run_config.stage == 2 else ""
        raise ConfigError(f"{source}: model_name_or_path {path} does not exist.{hint}")


def looks_like_hub_id(value: str) -> bool:
    """`name` or `org/name` (what the Hub accepts), not a relative or absolute folder path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", value)) and ".." not in value


__all__ = [
    "ConfigError",
    "PrepareTiny",
    "RossRunConfig",
    "build_parser",
    "check_keys",
    "check_run_config",
    "coerce_values",
    "load_config",
    "looks_like_hub_id",
    "make_run_config",
    "model_override_types",
    "parse_overrides",
    "read_config",
    "resolve_path",
]
