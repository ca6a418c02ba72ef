"""Start ROSS from a trained LLaVA: continued training with a fresh reconstructive objective.

    model = from_llava("llava-hf/llava-1.5-7b-hf", teacher="black-forest-labs/FLUX.1-dev", teacher_subfolder="vae")
    processor = processor_from_llava("llava-hf/llava-1.5-7b-hf")

The LLaVA's vision tower, projector, LLM and LM head are loaded unchanged (the ROSS model's logits equal the LLaVA's);
the denoiser is freshly initialised and the teacher loaded from `teacher`. Only what `RossConfig` can express is
accepted: a single `vision_feature_layer` and a biased Linear-act-Linear projector (every llava-hf LLaVA-1.5 / SigLIP
LLaVA checkpoint); LLaVA-NeXT / OneVision (anyres tiling) are other architectures and are not handled.
"""

from __future__ import annotations

import torch


def check_llava_config(llava_config) -> None:
    """Raise `ValueError` for what `RossConfig` cannot express (checked before any weight is loaded)."""
    problems = []
    if getattr(llava_config, "model_type", None) != "llava":
        problems.append(f"model_type={getattr(llava_config, 'model_type', None)!r} (expected 'llava')")
    elif not isinstance(llava_config.vision_feature_layer, int):
        problems.append(f"vision_feature_layer={llava_config.vision_feature_layer} (ROSS takes a single layer)")
    elif not getattr(llava_config, "multimodal_projector_bias", True):
        problems.append("multimodal_projector_bias=False (the ROSS projector has biases)")
    if problems:
        raise ValueError("This LLaVA cannot be represented by RossConfig: " + "; ".join(problems))


def ross_config_from_llava(llava_config, objective_config: dict):
    """The `RossConfig` whose inference path equals `LlavaForConditionalGeneration(llava_config)`."""
    from .configuration_ross import RossConfig

    check_llava_config(llava_config)
    return RossConfig(
        vision_config=llava_config.vision_config.to_dict(),
        text_config=llava_config.text_config.to_dict(),
        objective_config=objective_config,
        image_token_id=llava_config.image_token_id,
        image_seq_length=None,  # grid ** 2 (LlavaConfig's own field defaults to 576 whatever the tower)
        vision_feature_layer=llava_config.vision_feature_layer,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        projector_type="mlp2x_gelu",
        projector_hidden_act=llava_config.projector_hidden_act,
        tie_word_embeddings=llava_config.tie_word_embeddings,
    )


def _image_statistics(llava_path_or_id: str) -> tuple[list[float], list[float]]:
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(llava_path_or_id, backend="pil")
    except (OSError, ValueError):
        return [0.5] * 3, [0.5] * 3
    return [float(v) for v in processor.image_mean], [float(v) for v in processor.image_std]


def from_llava(
    llava_path_or_id: str,
    objective: str = "denoise",
    target: str = "vae",
    teacher: str | None = None,
    teacher_subfolder: str | None = None,
    dtype: torch.dtype | None = None,
    **objective_overrides,
):
    """
    Build a `RossForConditionalGeneration` from a trained `LlavaForConditionalGeneration` checkpoint.

    Args:
        llava_path_or_id: a llava-hf style folder or Hub id (config `model_type: llava`).
        objective, target, teacher, teacher_subfolder: as in `RossForConditionalGeneration.from_components`.
        dtype: dtype of the loaded weights (default: float32).
        objective_overrides: fields of `RossObjectiveConfig` (e.g. `denoiser_depth`, `num_noise_draws`, `weight`).

    Returns:
        The model in train mode with the vision tower and teacher frozen, the projector, LLM and fresh denoiser
        trainable (stage-II recipe). Its logits equal the LLaVA's.
    """
    from transformers import AutoConfig, LlavaForConditionalGeneration

    from .configuration_ross import RossObjectiveConfig
    from .modeling_ross import RossForConditionalGeneration, RossProjector
    from .teacher import freeze, load_teacher_source

    fields = set(RossObjectiveConfig.__dataclass_fields__)
    unknown = sorted(set(objective_overrides) - fields)
    if unknown:
        raise TypeError(f"Unknown objective fields {unknown}; valid fields: {sorted(fields)}")
    check_llava_config(AutoConfig.from_pretrained(llava_path_or_id))
    image_mean, image_std = _image_statistics(llava_path_or_id)
    objective_kwargs = dict(objective_overrides)
    objective_kwargs.update(objective=objective, target=target, teacher=teacher, teacher_subfolder=teacher_subfolder,
                            image_mean=image_mean, image_std=image_std)
    teacher_state = None
    if objective != "none" and target != "pixel":
        teacher_config, teacher_state, extra = load_teacher_source(RossObjectiveConfig(**objective_kwargs))
        objective_kwargs.update(teacher_config=teacher_config, **extra)

    llava = LlavaForConditionalGeneration.from_pretrained(llava_path_or_id, dtype=dtype or torch.float32)
    config = ross_config_from_llava(llava.config, objective_kwargs)
    with torch.device("meta"):
        model = RossForConditionalGeneration(config, load_objective=False)
    # Plug the trained LLaVA modules in (no copy), then the fresh objective.
    model.model.vision_tower = llava.model.vision_tower
    model.model.language_model = llava.model.language_model
    model.lm_head = llava.lm_head
    projector = RossProjector(config).to(llava.model.multi_modal_projector.linear_1.weight.dtype)
    projector.load_state_dict(llava.model.multi_modal_projector.state_dict())
    model.model.projector = projector
    if config.objective_config.enabled:
        model._build_objective()
        model.initialize_weights_of(model.denoiser)
        model.denoiser.to(dtype or torch.float32)
        if teacher_state:
            model.teacher.load_state_dict(teacher_state)
        freeze(model.teacher)
    freeze(model.model.vision_tower)
    model.tie_weights()
    model.train()
    return model


def processor_from_llava(
    llava_path_or_id: str, chat_template: str | None = "llava", image_aspect_ratio: str = "resize", **kwargs
):
    """
    The `RossProcessor` of `from_llava(llava_path_or_id)`: the LLaVA's tokenizer and image processor.

    Args:
        chat_template: `"llava"` (default: the LLaVA's own template, the one it was trained with), `"v1"` / `"qwen_2"`
            (the ROSS authors' templates, with `{% generation %}` markers for assistant-only loss masks; LLaVA-1.5 is
            Vicuna, hence `"v1"`) or a Jinja string.
            A template without `{% generation %}` markers cannot produce assistant masks.
        image_aspect_ratio: `"resize"` (default) leaves images to the LLaVA image processor, exactly as
            `LlavaProcessor` does; `"pad"` pads to a square with the mean colour first (the ROSS stage-II recipe).
    """
    from transformers import AutoConfig, AutoProcessor

    from .processing_ross import VICUNA_V1_CHAT_TEMPLATE, RossProcessor, resolve_chat_template

    llava_processor = AutoProcessor.from_pretrained(llava_path_or_id, backend="pil")
    vision_config = AutoConfig.from_pretrained(llava_path_or_id).vision_config
    grid = vision_config.image_size // vision_config.patch_size
    tokenizer = llava_processor.tokenizer
    if chat_template == "llava":
        chat_template = llava_processor.chat_template or VICUNA_V1_CHAT_TEMPLATE
    else:
        chat_template = resolve_chat_template(chat_template, tokenizer, "llama")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return RossProcessor(
        llava_processor.image_processor,
        tokenizer,
        chat_template,
        image_token=llava_processor.image_token,
        image_seq_length=grid * grid,
        image_aspect_ratio=image_aspect_ratio,
        **kwargs,
    )


__all__ = ["check_llava_config", "from_llava", "processor_from_llava", "ross_config_from_llava"]
