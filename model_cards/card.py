"""Model cards for trained ROSS folders, built with `huggingface_hub.ModelCard` and the Jinja template `template.md`.

    from ross.model_cards.card import build_model_card
    card = build_model_card("runs/tiny/stage2/model", repo_id="me/ross-tiny")
    card.save("README.md")

What the card is built from (all optional except `config.json`):

* ``config.json``: architecture (vision tower, projector, LLM) and the reconstructive objective (target, teacher,
  denoiser), and the component paths (``vision_config._name_or_path``/``text_config._name_or_path``).
* ``train_config.yaml`` (the resolved run config written by ``train/sft.py``) and ``training_args.json``: the recipe of
  the last stage; earlier stages are read from ``model_name_or_path`` when that folder is still on disk.
* ``summary.json`` in the folder or its parent (``train/sft.py`` writes ``<output_dir>/summary.json`` next to
  ``<output_dir>/model``): steps, runtime, final losses.
* ``scores.json`` files (``eval/generation.py``): any under the folder, plus those in the sibling ``eval/`` folder
  (``<run>/eval/<benchmark>/scores.json``, the demo's layout) whose ``model`` is this folder; or passed explicitly.

The YAML header carries ``pipeline_tag``, ``library_name``, ``base_model`` (vision tower + LLM, Hub ids only), ``datasets``,
``license``, ``tags`` and a ``model-index`` made of one `EvalResult` per top-level metric of each benchmark.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from ross.eval.benchmarks import SYNTHETIC_BENCHMARKS, get_benchmark


logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("template.md")
NATIVE_TEMPLATE_PATH = Path(__file__).with_name("template_native.md")
# RossForPreTraining's HEAD_FOLDER (not imported: that module pulls in torch and diffusers).
NATIVE_HEAD_FOLDER = "ross_head"
PAPER_URL = "https://arxiv.org/abs/2410.09575"
REFERENCE_CODE_URL = "https://github.com/Haochen-Wang409/ross"
TASK_TYPE = "image-text-to-text"

# Known training data files -> their Hub datasets (other data paths are described in the text, not in the metadata).
KNOWN_DATASETS = {
    "blip_laion_cc_sbu_558k": "liuhaotian/LLaVA-Pretrain",
    "llava_v1_5_mix665k": "liuhaotian/LLaVA-Instruct-150K",
    "cambrian737k": "nyu-visionx/Cambrian-10M",
}
# License of the weights follows the language model's (the largest part of the checkpoint); for a native VLM, the base
# model's (Hub license ids: Qwen3-VL and SmolVLM are Apache 2.0, Gemma 3 has its own "gemma" terms).
KNOWN_LICENSES = {
    "vicuna": "llama2", "llama-2": "llama2", "qwen2": "apache-2.0", "qwen3": "apache-2.0", "siglip-tiny": "apache-2.0",
    "gemma-3": "gemma", "smolvlm": "apache-2.0",
}  # fmt: skip
# What each stage of the recipe trains (as `ross.train.trainer.STAGE_TRAINABLE`; the vision tower and teacher stay frozen).
STAGE_TRAINABLE = {1: "projector + denoiser", 2: "projector + LLM + denoiser"}
OBJECTIVE_NAMES = {
    "denoise": "ROSS^D: a DiT-style denoiser recovers the teacher's latent tokens from noise (DDPM epsilon MSE)",
    "regress": "ROSS^R: an MLP head regresses the target tokens",
    "latent2pixel": "ROSS^R-Latent2Pixel: an MLP head predicts latents, decoded by the frozen VAE decoder (pixel MSE)",
    "none": "none (the LLaVA baseline: text loss only)",
}
HYPERPARAMETERS = (
    "learning_rate", "projector_lr", "denoiser_lr", "llm_lr", "per_device_train_batch_size",
    "gradient_accumulation_steps", "num_train_epochs", "max_steps", "warmup_steps", "warmup_ratio",
    "lr_scheduler_type", "weight_decay", "optim", "bf16", "fp16", "gradient_checkpointing", "seed",
)  # fmt: skip
CARD_OVERRIDES = ("repo_id", "model_name", "base_model", "datasets", "license", "language", "tags", "demo", "notes")
# A model this small cannot be more than the tiny synthetic demo.
DEMO_MAX_PARAMETERS = 50_000_000


# ---------------------------------------------------------------------------------------
# Reading the trained folder
# ---------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def read_run_config(folder: Path) -> dict:
    """The resolved run config + training arguments of the stage that produced ``folder`` (`{}` if none saved)."""
    run = dict(_read_yaml(folder / "train_config.yaml") or {})
    args = _read_json(folder / "training_args.json") or {}
    # training_args.json is complete (defaults included); the YAML holds the run keys and what the user set.
    return {**run, **{k: v for k, v in args.items() if k not in run or v is not None}}


def read_summary(folder: Path, run: Mapping) -> dict | None:
    """The run summary (``train/sft.py``'s ``summary.json``) in the folder or its parent."""
    name = run.get("summary_file") or "summary.json"
    for candidate in (folder / name, folder.parent / name):
        summary = _read_json(candidate)
        if isinstance(summary, dict):
            return summary
    return None


def count_parameters(folder: Path) -> int | None:
    """Number of weights in the folder's safetensors files (read from the headers, nothing is loaded)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                numel = 1
                for dim in f.get_slice(key).get_shape():
                    numel *= dim
                total += numel
    return total


def component_id(path: str | None) -> str | None:
    """A Hub id as is; a local path -> its folder name (``/x/runs/siglip-tiny`` -> ``siglip-tiny``)."""
    if not path:
        return None
    p = Path(path)
    if p.is_absolute() or p.exists() or path.startswith((".", "~")) or path.count("/") > 1:
        return p.name
    return path


def hub_id(path: str | None) -> str | None:
    """``path`` if it names a Hub repo, else None: a card's ``base_model`` must list Hub ids only (the Hub links them
    and refuses a card whose ids do not exist), so a local component is left out rather than named by its folder."""
    return path if path and component_id(path) == path else None


def _short_path(path: str | None) -> str | None:
    """A Hub id as is; a local path -> its last two parts (``runs/tiny/stage1/model`` -> ``stage1/model``)."""
    if not path or component_id(path) == path:
        return path
    return "/".join(Path(path).parts[-2:])


def _stage_record(run: Mapping, config: Mapping | None, summary: Mapping | None, folder: Path | None) -> dict:
    objective = run.get("objective") or (config or {}).get("objective_config", {}).get("objective")
    data_path = run.get("data_path")
    world = (summary or {}).get("world_size")  # the number of processes is known from the run summary only
    batch = None
    if run.get("per_device_train_batch_size"):
        per_process = int(run["per_device_train_batch_size"]) * int(run.get("gradient_accumulation_steps") or 1)
        batch = f"{per_process * world} (global)" if world else f"{per_process} per process"
    hyper = {k: run[k] for k in HYPERPARAMETERS if run.get(k) not in (None, False, "")}
    if hyper.get("max_steps") in (-1, 0):
        hyper.pop("max_steps")
    elif "max_steps" in hyper:
        hyper.pop("num_train_epochs", None)  # max_steps overrides the epochs
    stage = run.get("stage")
    return {
        "stage": stage,
        "trainable": STAGE_TRAINABLE.get(stage, "unknown"),
        "objective": objective,
        "data": Path(data_path).name if data_path else ("synthetic (tiny demo)" if run.get("prepare_tiny") else None),
        "data_format": run.get("data_format"),
        "image_aspect_ratio": run.get("image_aspect_ratio"),
        "continued_from": _short_path(run.get("model_name_or_path")),
        "lora": {k: run.get(k) for k in ("lora_r", "lora_alpha", "lora_dropout")} if run.get("lora") else None,
        "deepspeed": Path(str(run["deepspeed"])).name if isinstance(run.get("deepspeed"), str) else None,
        "batch": batch,
        "world_size": world,
        "hyperparameters": hyper,
        "summary": {
            k: summary.get(k)
            for k in ("global_step", "train_runtime_s", "final_train_loss", "final_text_loss", "final_visual_loss")
            if summary and summary.get(k) is not None
        },
        "folder": str(folder) if folder else None,
    }


def read_stages(folder: Path, max_depth: int = 4) -> list[dict]:
    """The recipe's stages, oldest first: this folder's run and, while on disk, the runs it continued from."""
    stages, seen, current = [], set(), folder
    for _ in range(max_depth):
        run = read_run_config(current)
        if not run:
            break
        stages.append(_stage_record(run, _read_json(current / "config.json"), read_summary(current, run), current))
        seen.add(current.resolve())
        parent = run.get("model_name_or_path")
        if not parent or not Path(parent).is_dir() or Path(parent).resolve() in seen:
            break
        current = Path(parent)
    return stages[::-1]


def _datasets_of(runs: list[Mapping]) -> list[str]:
    found = []
    for run in runs:
        name = Path(str(run.get("data_path") or "")).stem.lower()
        for key, dataset in KNOWN_DATASETS.items():
            if key.lower() == name and dataset not in found:
                found.append(dataset)
    return found


# ---------------------------------------------------------------------------------------
# Eval results
# ---------------------------------------------------------------------------------------


def _same_folder(model: Any, folder: Path) -> bool:
    try:
        return model is not None and Path(str(model)).resolve() == folder.resolve()
    except OSError:
        return False


def find_scores(folder: str | Path) -> list[Path]:
    """``scores.json`` files under ``folder``, then those of the sibling ``eval/`` folder that evaluated ``folder``."""
    folder = Path(folder)
    found = sorted(folder.rglob("scores.json"))
    sibling = folder.parent / "eval"
    if sibling.is_dir() and sibling.resolve() != folder.resolve():
        for path in sorted(sibling.rglob("scores.json")):
            if _same_folder((_read_json(path) or {}).get("model"), folder):
                found.append(path)
            else:
                logger.info("%s: left out of the card (it evaluated another model)", path)
    return found


def load_scores(sources: Iterable[str | Path | Mapping]) -> list[dict]:
    """``scores.json`` dicts from dicts, files, or folders (searched recursively)."""
    scores = []
    for source in sources:
        if isinstance(source, Mapping):
            scores.append(dict(source))
            continue
        path = Path(source)
        files = sorted(path.rglob("scores.json")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"{path}: no scores.json under this folder")
        for file in files:
            data = _read_json(file)
            if not isinstance(data, dict) or "benchmark" not in data or "metrics" not in data:
                raise ValueError(f"{file}: not a scores.json written by eval/generation.py (needs benchmark, metrics)")
            scores.append(data)
    return scores


def _benchmark_source(name: str) -> tuple[str, str | None, str | None]:
    """``(dataset id, config, split)`` of a benchmark from the eval registry (the name itself if unknown)."""
    try:
        bench = get_benchmark(name)
    except KeyError:
        return name, None, None
    if name in SYNTHETIC_BENCHMARKS:
        return name, None, None  # generated by eval.synthetic, not a Hub dataset
    return bench.dataset, bench.config, bench.split


def _metric_rows(metrics: Mapping, primary: str | None) -> list[tuple[str, float]]:
    """The scores (floats, and the primary metric whatever its type); counts such as ``num_items`` are left out."""
    return [
        (k, v)
        for k, v in metrics.items()
        if (isinstance(v, float) or (k == primary and isinstance(v, int))) and not isinstance(v, bool)
    ]


def eval_results_from_scores(scores: Iterable[Mapping]) -> list[EvalResult]:
    """One `EvalResult` per top-level metric of each ``scores.json`` dict, the primary metric first."""
    results, seen = [], set()
    for s in scores:
        name, rules = s["benchmark"], s.get("rules") or "lmms-eval"
        if (name, rules) in seen:
            raise ValueError(f"Two results for benchmark {name!r} with {rules} rules: pass only one of them.")
        seen.add((name, rules))
        dataset, config, split = _benchmark_source(name)
        limit = (s.get("settings") or {}).get("limit")
        display = name if limit is None else f"{name} (first {s.get('num_items')} items)"
        rows = _metric_rows(s["metrics"], s.get("primary_metric"))
        rows.sort(key=lambda row: row[0] != s.get("primary_metric"))
        for key, value in rows:
            results.append(
                EvalResult(
                    task_type=TASK_TYPE,
                    dataset_type=dataset,
                    dataset_name=display,
                    dataset_config=config,
                    dataset_split=split,
                    metric_type=key,
                    metric_value=value,
                    metric_name=key if rules == "lmms-eval" else f"{key} ({rules} rules)",
                    source_name=f"ross eval ({rules} rules)",
                    source_url=REFERENCE_CODE_URL,
                )
            )
    return results


def _results_table(scores: list[Mapping]) -> list[dict]:
    rows = []
    for s in scores:
        value, primary, chance = s.get("primary_value"), s.get("primary_metric"), s.get("chance") or {}
        # eval.synthetic gives the chance of a correct answer ("accuracy"), which is the exact-match chance too.
        chance = chance.get(primary, chance.get("accuracy") if primary == "exact_match" else None)
        rows.append(
            {
                "benchmark": s["benchmark"],
                "metric": s.get("primary_metric"),
                "value": f"{value:.4f}" if isinstance(value, float) else str(value),
                "chance": f"{chance:.4f}" if isinstance(chance, float) else "",
                "num_items": s.get("num_items"),
                "limit": (s.get("settings") or {}).get("limit"),
                "rules": s.get("rules"),
                "others": ", ".join(
                    f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in _metric_rows(s["metrics"], primary)
                    if k != primary
                ),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------


def _architecture(config: Mapping, num_parameters: int | None) -> dict:
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    return {
        "vision": f"{vision.get('model_type')} ({vision.get('num_hidden_layers')} layers, width "
        f"{vision.get('hidden_size')}, {vision.get('image_size')}px, patch {vision.get('patch_size')})",
        "projector": config.get("projector_type"),
        "language": f"{text.get('model_type')} ({text.get('num_hidden_layers')} layers, width "
        f"{text.get('hidden_size')}, vocabulary {text.get('vocab_size')})",
        "image_seq_length": config.get("image_seq_length"),
        "vision_feature_layer": config.get("vision_feature_layer"),
        "num_parameters": f"{num_parameters:,}" if num_parameters else "unknown",
    }


def _objective(config: Mapping) -> dict:
    obj = dict(config.get("objective_config") or {})
    name = obj.get("objective", "none")
    record = {"name": name, "description": OBJECTIVE_NAMES.get(name, name), "enabled": name != "none"}
    if name != "none":
        teacher = component_id(obj.get("teacher"))
        if teacher and obj.get("teacher_subfolder"):
            teacher = f"{teacher} (subfolder `{obj['teacher_subfolder']}`)"
        record.update(
            target=obj.get("target"),
            teacher=teacher or ("none (patchified pixels)" if obj.get("target") == "pixel" else None),
            weight=obj.get("weight"),
        )
        if name == "denoise":
            record["denoiser"] = (
                f"{obj.get('denoiser_depth')} blocks, width {obj.get('denoiser_hidden_size')}, "
                f"{obj.get('denoiser_num_heads')} heads, self-attention {obj.get('denoiser_self_attention')}, "
                f"{obj.get('num_noise_draws')} noise draws per image, {obj.get('num_train_timesteps')} steps "
                f"{obj.get('beta_schedule')} schedule, {obj.get('prediction_type')} prediction"
            )
    return record


def _license_of(language_path: str | None) -> str:
    """The license of the language model when it is a known family, else "other"."""
    language_id = (component_id(language_path) or "").lower()
    return next((v for k, v in KNOWN_LICENSES.items() if k in language_id), "other")


def _tags(is_demo: bool, extra: list[str] | None, kind: list[str]) -> list[str]:
    """The card's tags: ROSS's, then the model's `kind` (e.g. `llava` + `custom_code`, or a native VLM's type)."""
    tags = ["ross", "multimodal", "vision-language", *kind]
    if is_demo:
        tags.append("synthetic-demo")
    return tags + [t for t in extra or [] if t not in tags]


def _card_data(folder: Path, runs, base_model, license_, tags, eval_results, overrides):
    """What both cards put in their YAML header (datasets, scores, name), with the overrides applied. Returns
    `(ModelCardData, scores, eval_results, model_name, repo_id)`."""
    datasets = overrides.get("datasets")
    datasets = _datasets_of(runs) if datasets is None else ([datasets] if isinstance(datasets, str) else datasets)
    repo_id = overrides.get("repo_id")
    model_name = overrides.get("model_name") or (repo_id.split("/")[-1] if repo_id else folder.resolve().name)
    eval_results = list(find_scores(folder) if eval_results is None else eval_results)
    scores = load_scores([e for e in eval_results if not isinstance(e, EvalResult)])
    results = [e for e in eval_results if isinstance(e, EvalResult)] + eval_results_from_scores(scores)
    card_data = ModelCardData(
        base_model=base_model or None,
        datasets=datasets or None,
        license=license_,
        language=overrides.get("language") or ["en"],
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=tags,
        model_name=model_name,
        eval_results=results or None,
    )
    return card_data, scores, eval_results, model_name, repo_id


def build_model_card(folder: str | Path, eval_results=None, **overrides) -> ModelCard:
    """
    The model card of a trained ROSS folder (see the module docstring for what it reads).

    Args:
        folder: a folder saved by `RossForConditionalGeneration.save_pretrained` (+ processor, + training files).
        eval_results: ``scores.json`` dicts, files or folders, or `EvalResult`s; ``None`` discovers them
            (`find_scores`); ``[]`` means none.
        overrides: ``repo_id`` (used in the usage snippet and as the model name), ``model_name``, ``base_model``
            (str or list), ``datasets``, ``license``, ``language``, ``tags`` (added to the defaults), ``demo`` (bool:
            force the tiny-demo note on or off), ``notes`` (extra Markdown for the limitations section).
    """
    unknown = sorted(set(overrides) - set(CARD_OVERRIDES))
    if unknown:
        raise TypeError(f"Unknown card option(s) {unknown}; valid: {', '.join(CARD_OVERRIDES)}")
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if isinstance(config, dict) and config.get("model_type") != "ross" and read_native_head(folder) is not None:
        return build_native_model_card(folder, config, read_native_head(folder), eval_results, **overrides)
    if not isinstance(config, dict) or config.get("model_type") != "ross":
        raise ValueError(
            f"{folder}: no ROSS config.json (model_type 'ross') in this folder, and no native VLM with "
            f"{NATIVE_HEAD_FOLDER}/config.json (as RossForPreTraining.save_pretrained writes)"
        )

    run = read_run_config(folder)
    stages = read_stages(folder)
    runs = [read_run_config(Path(s["folder"])) for s in stages if s.get("folder")]
    num_parameters = count_parameters(folder)

    vision_path = run.get("vision_model") or (config.get("vision_config") or {}).get("_name_or_path")
    language_path = run.get("language_model") or (config.get("text_config") or {}).get("_name_or_path")
    base_model = overrides.get("base_model")
    if base_model is None:
        base_model = [c for c in (hub_id(vision_path), hub_id(language_path)) if c]
    base_model = [base_model] if isinstance(base_model, str) else list(base_model)

    is_demo = overrides.get("demo")
    if is_demo is None:
        is_demo = any(r.get("prepare_tiny") for r in runs) or (num_parameters or 0) < DEMO_MAX_PARAMETERS
    license_ = overrides.get("license") or _license_of(language_path)
    tags = _tags(is_demo, overrides.get("tags"), ["llava", "custom_code"])
    card_data, scores, eval_results, model_name, repo_id = _card_data(folder, runs, base_model, license_, tags,
                                                                      eval_results, overrides)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_title=model_name,
        repo_id=repo_id or f"<your-org>/{model_name}",
        is_demo=is_demo,
        demo_trained_on_synthetic=any(r.get("prepare_tiny") for r in runs),
        paper_url=PAPER_URL,
        code_url=REFERENCE_CODE_URL,
        components={"vision": vision_path and component_id(vision_path), "language": component_id(language_path)},
        architecture=_architecture(config, num_parameters),
        objective=_objective(config),
        stages=stages,
        results=_results_table(scores),
        extra_results=[e for e in eval_results if isinstance(e, EvalResult)],
        license_name=license_,
        notes=overrides.get("notes"),
    )


# ---------------------------------------------------------------------------------------
# Native VLMs (RossForPreTraining: a plain Qwen2.5-VL, llava-hf Llava, ... + ross_head/)
# ---------------------------------------------------------------------------------------


def read_native_head(folder: str | Path) -> dict | None:
    """``ross_head/config.json`` of a folder `RossForPreTraining.save_pretrained` wrote (None when there is none)."""
    head = _read_json(Path(folder) / NATIVE_HEAD_FOLDER / "config.json")
    return head if isinstance(head, dict) and head.get("model_type") == "ross_head" else None


def _native_architecture(config: Mapping, folder: Path, num_parameters: int | None) -> dict:
    text = config.get("text_config") or config
    vision = config.get("vision_config") or {}
    head_parameters = count_parameters(folder / NATIVE_HEAD_FOLDER)
    return {
        "model_type": config.get("model_type"),
        "model_class": (config.get("architectures") or ["unknown"])[0],
        "vision": f"{vision.get('model_type', config.get('model_type'))} "
        f"({vision.get('num_hidden_layers', vision.get('depth'))} layers, width {vision.get('hidden_size')})",
        "language": f"{text.get('model_type')} ({text.get('num_hidden_layers')} layers, width "
        f"{text.get('hidden_size')}, vocabulary {text.get('vocab_size')})",
        "num_parameters": f"{num_parameters:,}" if num_parameters else "unknown",
        "head_parameters": f"{head_parameters:,}" if head_parameters else "unknown",
    }


def build_native_model_card(folder: Path, config: Mapping, head: Mapping, eval_results=None, **overrides) -> ModelCard:
    """The card of a native VLM trained with ROSS (`RossForPreTraining`): the base model comes from
    ``ross_head/config.json``'s ``base_model`` (a Hub id as is, a local path as its folder name) unless ``base_model``
    is given; the objective from its ``objective_config``. Same overrides as `build_model_card`."""
    run = read_run_config(folder)
    stages = read_stages(folder)
    runs = [read_run_config(Path(s["folder"])) for s in stages if s.get("folder")]
    base_model = overrides.get("base_model")
    if base_model is None:
        base_model = component_id(head.get("base_model") or run.get("model_name_or_path"))
    base_model = [base_model] if isinstance(base_model, str) else list(base_model or [])
    num_parameters = count_parameters(folder)
    architecture = _native_architecture(config, folder, num_parameters)
    is_demo = overrides.get("demo")
    if is_demo is None:
        is_demo = (num_parameters or 0) < DEMO_MAX_PARAMETERS
    license_ = overrides.get("license") or _license_of(base_model[0] if base_model else None)
    tags = _tags(is_demo, overrides.get("tags"), [str(config.get("model_type"))])
    card_data, scores, eval_results, model_name, repo_id = _card_data(folder, runs, base_model, license_, tags,
                                                                      eval_results, overrides)
    return ModelCard.from_template(
        card_data,
        template_path=str(NATIVE_TEMPLATE_PATH),
        model_title=model_name,
        repo_id=repo_id or f"<your-org>/{model_name}",
        is_demo=is_demo,
        base_model_text=", ".join(base_model) if base_model else f"A {config.get('model_type')} model (base unknown)",
        head_folder=NATIVE_HEAD_FOLDER,
        paper_url=PAPER_URL,
        code_url=REFERENCE_CODE_URL,
        architecture=architecture,
        objective=_objective(head),
        stages=stages,
        results=_results_table(scores),
        extra_results=[e for e in eval_results if isinstance(e, EvalResult)],
        license_name=license_,
        notes=overrides.get("notes"),
    )


__all__ = [
    "build_model_card", "build_native_model_card", "eval_results_from_scores", "find_scores", "load_scores",
    "read_native_head", "read_stages",
]
