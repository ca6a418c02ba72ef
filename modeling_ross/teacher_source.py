"""Where a teacher's weights come from: `objective_config.teacher` (+ `teacher_subfolder`), a Hub id or a local folder.

`load_teacher_source` reads the real teacher once (a diffusers `AutoencoderKL`, or any transformers vision model)
and returns its config and tensors keyed like the module `teacher.build_teacher` returns. The model copies them in
(`RossForConditionalGeneration.load_teacher`); nothing here builds a module that trains.
"""

import os

import torch
from transformers import AutoConfig, AutoImageProcessor
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from .configuration_ross import RossObjectiveConfig
from .teacher import AutoencoderKL, _as_int, _require_diffusers


def load_teacher_source(objective_config: RossObjectiveConfig) -> tuple[dict | None, dict[str, torch.Tensor], dict]:
    """Load the real teacher named by `objective_config.teacher` (+ `teacher_subfolder`).

    Returns `(teacher_config, state_dict, extra)`:
        - `teacher_config`: a JSON-serialisable dict for `objective_config.teacher_config` (the `AutoencoderKL`
          config, or the vision model's config with its `model_type`); `None` when no teacher is needed
          (`target="pixel"` or the objective is disabled).
        - `state_dict`: the teacher's tensors, keyed like the module `build_teacher` returns (`vae.` or `model.`
          prefix), ready for `teacher.load_state_dict(state_dict)`.
        - `extra`: for `target="features"`, `teacher_image_size`, `teacher_image_mean`, `teacher_image_std` from the
          teacher's image processor (or its config when it has none); empty otherwise.

    A composite checkpoint (e.g. a full CLIP / SigLIP model) loads only its vision model.
    """
    if not objective_config.enabled or objective_config.target == "pixel":
        return None, {}, {}
    source = objective_config.teacher
    if not source:
        raise ValueError(
            f"target={objective_config.target!r} needs `objective_config.teacher` (a Hub id or a local folder)."
        )
    subfolder = objective_config.teacher_subfolder
    where = os.path.join(source, subfolder) if subfolder else source
    _check_local_source(source, where)
    if objective_config.target == "vae":
        return _load_vae_source(source, subfolder, where)
    return _load_feature_source(source, subfolder, where)


def _looks_like_local_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def _check_local_source(source: str, where: str) -> None:
    if os.path.isdir(source):
        if not os.path.isdir(where):
            raise ValueError(f"Teacher folder {where!r} does not exist (teacher={source!r}).")
        if not os.path.isfile(os.path.join(where, "config.json")):
            raise ValueError(f"No teacher found in {where!r}: it has no config.json.")
    elif _looks_like_local_path(source):
        raise ValueError(f"Teacher folder {source!r} does not exist.")


def _load_vae_source(source: str, subfolder: str | None, where: str):
    _require_diffusers()
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder=subfolder)
    except (OSError, ValueError, EnvironmentError) as error:
        raise ValueError(f"Could not load an AutoencoderKL from {where!r}: {error}") from error
    config = {key: list(value) if isinstance(value, tuple) else value for key, value in vae.config.items()}
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    state_dict = {f"vae.{key}": value.detach() for key, value in vae.state_dict().items()}
    return config, state_dict, {}


def _load_feature_source(source: str, subfolder: str | None, where: str):
    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        vision_config = getattr(config, "vision_config", None) or config
        model_class = MODEL_MAPPING[type(vision_config)]
        model = model_class.from_pretrained(source, config=vision_config, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as error:
        raise ValueError(f"Could not load a transformers vision model from {where!r}: {error}") from error
    extra = {"teacher_image_size": _as_int(vision_config.image_size)}
    try:
        processor = AutoImageProcessor.from_pretrained(source, backend="pil", **kwargs)  # only its size, mean, std
    except (OSError, ValueError):
        processor = None
    if processor is not None:
        extra["teacher_image_size"] = _processor_size(processor) or extra["teacher_image_size"]
        extra["teacher_image_mean"] = [float(value) for value in processor.image_mean]
        extra["teacher_image_std"] = [float(value) for value in processor.image_std]
    state_dict = {f"model.{key}": value.detach() for key, value in model.state_dict().items()}
    return vision_config.to_dict(), state_dict, extra


def _processor_size(processor) -> int | None:
    """Side of the square image the processor feeds the model (the crop when it center-crops)."""
    sizes = [getattr(processor, "crop_size", None)] if getattr(processor, "do_center_crop", False) else []
    sizes.append(getattr(processor, "size", None))
    for size in sizes:
        if size is None:
            continue
        if isinstance(size, int):
            return size
        value = _size_entry(size, "height") or _size_entry(size, "shortest_edge")
        if value:
            return int(value)
    return None


def _size_entry(size, key: str):
    """Read `key` from a size given as a dict or as transformers' `SizeDict`."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


__all__ = ["load_teacher_source"]
