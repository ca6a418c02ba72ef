"""Build an untrained (or continued) ROSS model from parts: every assembly goes through `_assemble`.

    model = from_components("google/siglip-so400m-patch14-384", "Qwen/Qwen2-7B-Instruct",
                            teacher="black-forest-labs/FLUX.1-dev", teacher_subfolder="vae")
    model = from_llava("llava-hf/llava-1.5-7b-hf", teacher="black-forest-labs/FLUX.1-dev", teacher_subfolder="vae")
    processor = processor_from_llava("llava-hf/llava-1.5-7b-hf")

`from_components` starts from a pretrained vision tower and causal LM (fresh projector); `from_llava` from a trained
llava-hf `LlavaForConditionalGeneration` (its projector kept: the ROSS logits equal the LLaVA's). Both get a fresh
denoiser and the frozen teacher named by `teacher`. This file is not remote code: `save_pretrained` does not copy it,
and a checkpoint is reloaded with `from_pretrained`, not rebuilt. Only what `RossConfig` can express is accepted from
a LLaVA: a single `vision_feature_layer` and a biased Linear-act-Linear projector (every llava-hf LLaVA-1.5 / SigLIP
LLaVA checkpoint); LLaVA-NeXT / OneVision (anyres tiling) are other architectures.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    LlavaForConditionalGeneration,
)

from .configuration_ross import RossConfig, RossObjectiveConfig
from .modeling_ross import RossForConditionalGeneration, RossProjector
from .processing_ross import (
    VICUNA_V1_CHAT_TEMPLATE,
    RossProcessor,
    add_image_token,
    add_query_token,
    load_image_processor,
    resolve_chat_template,
    vision_grid,
)
from .teacher import freeze
from .teacher_source import load_teacher_source


OBJECTIVE_FIELDS = frozenset(RossObjectiveConfig.__dataclass_fields__)


def from_components(
    vision_model: str,
    language_model: str,
    objective: str = "denoise",
    target: str = "vae",
    teacher: str | None = None,
    teacher_subfolder: str | None = None,
    image_token: str = "<image>",
    dtype: torch.dtype | None = None,
    query_token: str = "<query>",
    **config_overrides,
) -> RossForConditionalGeneration:
    """
    Build an untrained ROSS model from pretrained component repos or folders, loading their weights: a vision
    tower (e.g. `google/siglip-so400m-patch14-384`), a causal LM (e.g. `Qwen/Qwen2-7B-Instruct`) and, for
    `target="vae"/"features"`, a teacher (e.g. `black-forest-labs/FLUX.1-dev` with `teacher_subfolder="vae"`).
    The projector and the denoiser are freshly initialised; the vision tower and the teacher are frozen.

    `config_overrides` go to `RossConfig` (e.g. `vision_feature_layer`, `projector_type`) or, for the fields of
    `RossObjectiveConfig` (e.g. `denoiser_depth`, `num_noise_draws`, `weight`), to the objective section.
    `dtype`: of the loaded and the fresh weights (default float32).
    `condition="queries"` (the generative variant) adds `query_token` to the tokenizer after `image_token` and sets
    `query_token_id`; build its processor with `RossProcessor.from_components(..., query_token=query_token)`.
    """
    vision_config = AutoConfig.from_pretrained(vision_model)
    vision_config = getattr(vision_config, "vision_config", vision_config)  # full CLIP/SigLIP repos
    vision_grid(vision_config, repr(vision_model))  # refuses SigLIP 2 NaFlex towers (no fixed token grid)
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    image_token_id = add_image_token(tokenizer, image_token)
    image_processor = load_image_processor(vision_model)

    objective_overrides = {k: config_overrides.pop(k) for k in list(config_overrides) if k in OBJECTIVE_FIELDS}
    if objective_overrides.get("condition") == "queries":
        config_overrides["query_token_id"] = add_query_token(tokenizer, query_token)
    objective_kwargs, teacher_state = _objective_and_teacher(
        objective, target, teacher, teacher_subfolder, image_processor.image_mean, image_processor.image_std,
        objective_overrides,
    )
    if vision_config.model_type == "clip_vision_model":
        config_overrides.setdefault("vision_feature_select_strategy", "default")
    config = RossConfig(
        vision_config=vision_config.to_dict(),
        text_config=AutoConfig.from_pretrained(language_model).to_dict(),
        objective_config=objective_kwargs,
        image_token_id=image_token_id,
        **config_overrides,
    )
    float_dtype = dtype or torch.float32
    # The vision config picks the tower's class (e.g. SiglipVisionModel), also from a full CLIP / SigLIP repo.
    vision_tower = AutoModel.from_pretrained(vision_model, config=vision_config, dtype=float_dtype)
    causal_lm = AutoModelForCausalLM.from_pretrained(language_model, dtype=float_dtype)
    model = _assemble(config, vision_tower, causal_lm.model, causal_lm.lm_head, None, teacher_state, float_dtype)
    if len(tokenizer) > config.text_config.vocab_size:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
        model.tie_weights()
    return model


def from_llava(
    llava_path_or_id: str,
    objective: str = "denoise",
    target: str = "vae",
    teacher: str | None = None,
    teacher_subfolder: str | None = None,
    dtype: torch.dtype | None = None,
    **objective_overrides,
) -> RossForConditionalGeneration:
    """
    Build a ROSS model from a trained `LlavaForConditionalGeneration` checkpoint (continued training).

    Args:
        llava_path_or_id: a llava-hf style folder or Hub id (config `model_type: llava`).
        objective, target, teacher, teacher_subfolder: as in `from_components`.
        dtype: dtype of the loaded weights (default: float32).
        objective_overrides: fields of `RossObjectiveConfig` (e.g. `denoiser_depth`, `num_noise_draws`, `weight`).

    Returns:
        The model in train mode with the vision tower and teacher frozen, the projector, LLM and fresh denoiser
        trainable (stage-II recipe). Its logits equal the LLaVA's.
    """
    unknown = sorted(set(objective_overrides) - OBJECTIVE_FIELDS)
    if unknown:
        raise TypeError(f"Unknown objective fields {unknown}; valid fields: {sorted(OBJECTIVE_FIELDS)}")
    check_llava_config(AutoConfig.from_pretrained(llava_path_or_id))
    image_mean, image_std = _llava_image_statistics(llava_path_or_id)
    objective_kwargs, teacher_state = _objective_and_teacher(
        objective, target, teacher, teacher_subfolder, image_mean, image_std, objective_overrides
    )
    float_dtype = dtype or torch.float32
    llava = LlavaForConditionalGeneration.from_pretrained(llava_path_or_id, dtype=float_dtype)
    config = ross_config_from_llava(llava.config, objective_kwargs)
    projector_state = llava.model.multi_modal_projector.state_dict()  # same keys as RossProjector
    return _assemble(
        config, llava.model.vision_tower, llava.model.language_model, llava.lm_head, projector_state, teacher_state,
        float_dtype,
    )


def _objective_and_teacher(objective, target, teacher, teacher_subfolder, image_mean, image_std, overrides):
    """The objective section of `RossConfig` and the teacher's tensors (None when no teacher is loaded)."""
    objective_kwargs = dict(overrides)
    objective_kwargs.update(
        objective=objective,
        target=target,
        teacher=teacher,
        teacher_subfolder=teacher_subfolder,
        image_mean=[float(v) for v in image_mean],
        image_std=[float(v) for v in image_std],
    )
    teacher_config, teacher_state, extra = load_teacher_source(RossObjectiveConfig(**objective_kwargs))
    if teacher_config is not None:
        # The teacher's image processor gives its input size and statistics unless the caller set them (e.g. DINOv2
        # at 378 = 27 x 14 pixels, so its patch grid is the SigLIP-384 token grid).
        extra = {key: value for key, value in extra.items() if overrides.get(key) is None}
        objective_kwargs.update(teacher_config=teacher_config, **extra)
    return objective_kwargs, teacher_state or None


def _assemble(
    config: RossConfig,
    vision_tower: nn.Module,
    language_model: nn.Module,
    lm_head: nn.Module,
    projector_state: dict | None,
    teacher_state: dict | None,
    dtype: torch.dtype,
) -> RossForConditionalGeneration:
    """
    Plug loaded modules into a model built on the meta device (nothing is materialised twice), then add the fresh
    (or given) projector and the fresh objective. The vision tower and the teacher are frozen; train mode.
    """
    with torch.device("meta"):
        model = RossForConditionalGeneration(config, load_objective=False)
    model.model.vision_tower = vision_tower
    model.model.language_model = language_model
    model.lm_head = lm_head
    projector = RossProjector(config).to(dtype)
    if projector_state is None:
        model.initialize_weights_of(projector)
    else:
        projector.load_state_dict(projector_state)
    model.model.projector = projector
    if config.objective_config.enabled:
        model._build_objective()
        for trained in (model.denoiser, model.queries):  # the queries exist for condition="queries" only
            if trained is not None:
                model.initialize_weights_of(trained)
                trained.to(dtype)
        if teacher_state:
            model.teacher.load_state_dict(teacher_state)
        freeze(model.teacher)
    freeze(model.model.vision_tower)
    model.tie_weights()
    model.train()
    return model


# ---- LLaVA -> ROSS translation ----------------------------------------------------------------------------------


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


def ross_config_from_llava(llava_config, objective_config: dict) -> RossConfig:
    """The `RossConfig` whose inference path equals `LlavaForConditionalGeneration(llava_config)`."""
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


def _llava_image_statistics(llava_path_or_id: str) -> tuple[list[float], list[float]]:
    try:
        processor = AutoImageProcessor.from_pretrained(llava_path_or_id, backend="pil")
    except (OSError, ValueError):
        return [0.5] * 3, [0.5] * 3
    return [float(v) for v in processor.image_mean], [float(v) for v in processor.image_std]


def processor_from_llava(
    llava_path_or_id: str, chat_template: str | None = "llava", image_aspect_ratio: str = "resize", **kwargs
) -> RossProcessor:
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


__all__ = ["check_llava_config", "from_components", "from_llava", "processor_from_llava", "ross_config_from_llava"]
