"""ROSS model configuration.

`RossConfig` is a LLaVA-style composite config (a vision tower config + a causal LM config)
with one extra section, `objective_config` (`RossObjectiveConfig`), that describes the
reconstructive objective used in training: which target the denoiser recovers, from which
frozen teacher, with which denoiser and noise schedule. Inference never reads that section.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class RossObjectiveConfig(PreTrainedConfig):
    r"""
    The reconstructive ("visual") objective of ROSS. Training-only.

    Args:
        objective (`str`, defaults to `"denoise"`):
            `"denoise"` (ROSS^D, the paper's default), `"regress"` (ROSS^R-Pixel / ROSS^R-Latent, an MLP head),
            `"latent2pixel"` (MLP head -> frozen VAE decoder -> pixel MSE) or `"none"` (the LLaVA baseline).
        enabled (`bool`, defaults to `True`):
            Kept in sync with `objective`: `objective="none"` <=> `enabled=False`.
        target (`str`, defaults to `"vae"`):
            What the teacher tokenizer produces: `"vae"` (diffusers `AutoencoderKL` latents), `"pixel"`
            (patchified RGB) or `"features"` (a transformers vision model's features).
        teacher (`str`, *optional*):
            Hub id or local folder of the teacher (not needed for `target="pixel"`).
        teacher_subfolder (`str`, *optional*):
            Subfolder of `teacher` holding the weights (e.g. `"vae"` in a diffusers pipeline repo).
        teacher_config (`dict`, *optional*):
            The teacher's own config (filled in by `from_components`), so the teacher can be built from
            config alone, e.g. under DeepSpeed ZeRO-3 or offline.
        latent_sample (`str`, defaults to `"sample"`):
            `"sample"` (reference code) draws from the VAE posterior, `"mode"` takes its mean.
        vae_fold (`int`, *optional*):
            Fold `vae_fold x vae_fold` latent windows into channels so the latent grid equals the vision token
            grid. Defaults to `max(1, 16 // vae_downsample)` (2 for FLUX/SD VAEs, 1 for KL-16 VAEs).
        pixel_patch_size (`int`, defaults to 16):
            Patch size of the `"pixel"` target: the image is resized to `grid * pixel_patch_size`.
        pixel_norm (`bool`, defaults to `False`):
            Normalise each pixel patch to zero mean / unit variance (MAE-style).
        feature_layer (`int`, defaults to -1):
            Hidden-state index used by the `"features"` teacher.
        teacher_image_size / teacher_image_mean / teacher_image_std:
            Input size and normalisation of the `"features"` teacher (filled in from its image processor).
        image_mean / image_std (`list[float]`):
            The vision tower's input normalisation, used to de-normalise `pixel_values` for the teacher.
        denoiser_hidden_size, denoiser_depth, denoiser_num_heads, denoiser_mlp_ratio:
            Width, number of blocks, heads and MLP ratio of the DiT-style denoiser (reference: 1024, 3, 16, 4).
        denoiser_self_attention (`bool`, defaults to `True`):
            `False` gives the paper's ablation without self-attention (per-token MLP blocks only).
        denoiser_position_embedding (`str`, defaults to `"learned"`):
            `"learned"` (the authors' behaviour): a stored `denoiser.pos_embed` parameter initialised to the 2-D
            sin-cos table; their stage 1 trains it (`tune_mm_mlp_adapter` unfreezes every denoiser parameter) and
            stage 2 keeps it frozen, which `ross.train.trainer.apply_stage` reproduces. `"sincos"`: the fixed table,
            recomputed on each call and never stored (DiT's stated design). A checkpoint saved before this field
            existed has no table and loads with the sin-cos one.
        compute_dtype (`str`, defaults to `"float32"`):
            Dtype of the denoiser / MLP head maths. `"float32"` as the authors (fp32 autocast around the visual
            loss, whatever the weights' dtype); `"weights"` computes in the weights' dtype (e.g. bf16 under DeepSpeed).
        num_noise_draws (`int`, defaults to 4):
            Noise draws per image for the denoising loss (condition and target repeated along the batch).
        weight (`float`, defaults to 1.0):
            `loss = text_loss + weight * visual_loss`.
        condition_layer (`int`, *optional*):
            Which LLM hidden state conditions the objective (the "visual outputs", gathered at the image tokens).
            `None` (the authors): the last hidden state after the LLM's final norm. An int `k` indexes the
            `output_hidden_states` tuple of transformers, `(num_hidden_layers + 1)` tensors of shape
            `(batch_size, sequence_length, hidden_size)`: `hidden_states[0]` is the input embeddings (not allowed
            here), `hidden_states[k]` for `1 <= k < num_hidden_layers` the output of decoder layer `k` (before the
            final norm), and `hidden_states[num_hidden_layers]` (= `-1`) the last hidden state after the final norm,
            the same as `None` (transformers 5 `capture_outputs` puts `last_hidden_state` there). Negative values count from the end (`-1` is the last). Only layers `<= k` then get
            the visual loss's gradient. VIRAL's representation alignment uses `16` (of Vicuna-7B's 32).
        condition (`str`, defaults to `"visual_outputs"`):
            What conditions the objective. `"visual_outputs"` (ROSS, the reconstructive variant): the hidden states at
            the image tokens of the input image. `"queries"` (the paper's generative variant, Table 2 "reconstructive
            vs generative", in the style of Emu / DreamLLM): `image_seq_length` learnable query embeddings (the
            model's `queries`, trained with the denoiser, saved with it) are inserted after the prompt of a
            *creation* sample (a caption -> image turn, see `ross.train.sources`) at the positions of the processor's
            `<query>` tokens; their hidden states (of `condition_layer`) condition the head that reconstructs the
            sample's target image (`target_pixel_values`, never shown to the LLM), query `i` aligned with latent
            token `i`. Only creation samples get a visual loss; comprehension samples train the text loss alone, as
            in the paper, where the generative loss comes from the added text-to-image data. Generation never sees
            the queries (they are inserted only where `<query>` tokens are). Needs `RossConfig.query_token_id`; the
            latent cache is not supported.
        num_train_timesteps, beta_schedule, prediction_type:
            Arguments of diffusers' `DDPMScheduler` (reference: 1000, `"squaredcos_cap_v2"`, `"epsilon"`).
        regress_loss (`str`, *optional*):
            `"mse"` or `"cosine"` for the `regress` objective; defaults to `"mse"` for pixels, `"cosine"` for latents.
        head_hidden_size (`int`, *optional*):
            Hidden width of the MLP head of `regress` / `latent2pixel` (defaults to the LLM width).
        shuffle_condition (`bool`, defaults to `False`):
            A control, not ROSS: in training, each image's visual outputs condition the reconstruction of the next
            image of the batch (a derangement), so the loss has ROSS's density and gradients but no image-specific
            target (the matched-control arm of `bench/evidence_v3.yaml`).
        save_teacher (`bool`, defaults to `False`):
            Whether `save_pretrained` keeps the frozen teacher's weights in the checkpoint.
    """

    model_type = "ross_objective"

    objective: Literal["denoise", "regress", "latent2pixel", "none"] = "denoise"
    enabled: bool = True
    target: Literal["vae", "pixel", "features"] = "vae"
    teacher: str | None = None
    teacher_subfolder: str | None = None
    teacher_config: dict | None = None
    latent_sample: Literal["sample", "mode"] = "sample"
    vae_fold: int | None = None
    pixel_patch_size: int = 16
    pixel_norm: bool = False
    feature_layer: int = -1
    teacher_image_size: int | None = None
    teacher_image_mean: list[float] | None = None
    teacher_image_std: list[float] | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    denoiser_hidden_size: int = 1024
    denoiser_depth: int = 3
    denoiser_num_heads: int = 16
    denoiser_mlp_ratio: float = 4.0
    denoiser_self_attention: bool = True
    denoiser_position_embedding: Literal["sincos", "learned"] = "learned"
    compute_dtype: Literal["float32", "weights"] = "float32"
    num_noise_draws: int = 4
    weight: float = 1.0
    condition_layer: int | None = None
    condition: Literal["visual_outputs", "queries"] = "visual_outputs"
    shuffle_condition: bool = False
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    regress_loss: Literal["mse", "cosine"] | None = None
    head_hidden_size: int | None = None
    save_teacher: bool = False

    def __post_init__(self, **kwargs):
        if self.objective == "none" or not self.enabled:
            self.objective, self.enabled = "none", False
        if self.condition == "queries" and not self.enabled:
            raise ValueError(
                "objective_config.condition='queries' conditions the objective's head on learnable queries, but "
                "objective='none' has no head: use objective='denoise' (the paper's generative variant) or another one."
            )
        if self.regress_loss is None:
            self.regress_loss = "mse" if self.target == "pixel" else "cosine"
        if self.image_mean is None:
            self.image_mean = [0.5, 0.5, 0.5]
        if self.image_std is None:
            self.image_std = [0.5, 0.5, 0.5]
        super().__post_init__(**kwargs)


@strict
class RossConfig(PreTrainedConfig):
    r"""
    Configuration of a ROSS model: vision tower -> projector -> causal LLM, plus the training-only
    reconstructive objective.

    Args:
        vision_config (`dict` or `PreTrainedConfig`):
            Any transformers vision tower (SigLIP, CLIP, ...). Default: SigLIP-so400m-patch14-384.
        text_config (`dict` or `PreTrainedConfig`):
            Any causal LM (Qwen2, Llama/Vicuna, ...). Default: Qwen2.
        objective_config (`dict` or `RossObjectiveConfig`):
            The reconstructive objective (see `RossObjectiveConfig`).
        image_token_id (`int`):
            Id of the `<image>` token; each image occupies `image_seq_length` consecutive such tokens.
        image_seq_length (`int`):
            Number of visual tokens per image (`grid_size ** 2`, e.g. 729 for SigLIP-384/14).
        query_token_id (`int`, *optional*):
            Id of the `<query>` token (`objective_config.condition="queries"` only, required there): each creation
            sample holds `image_seq_length` consecutive such tokens, replaced by the learnable queries. Never needs an
            embedding row (the model replaces those positions before the embedding lookup).
        vision_feature_layer (`int`, defaults to -2):
            Hidden-state index of the vision tower fed to the projector (reference: the penultimate layer).
        vision_feature_select_strategy (`str`, defaults to `"full"`):
            `"default"` drops the first (CLS) token as for CLIP, `"full"` keeps every patch as for SigLIP.
        projector_type (`str`, defaults to `"mlp2x_gelu"`):
            `"mlp2x_gelu"` (Linear-GELU-Linear, LLaVA-1.5) or `"linear"`.
        projector_hidden_act (`str`, defaults to `"gelu"`):
            Activation of the `mlp2x_gelu` projector.
    """

    model_type = "ross"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="siglip_vision_model",
            init_kwargs={
                "hidden_size": 1152,
                "intermediate_size": 4304,
                "num_hidden_layers": 27,
                "num_attention_heads": 16,
                "image_size": 384,
                "patch_size": 14,
                "vision_use_head": False,
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
        "objective_config": SubConfigSpec(config_class=RossObjectiveConfig),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    objective_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151646
    image_seq_length: int | None = None
    query_token_id: int | None = None
    vision_feature_layer: int = -2
    vision_feature_select_strategy: Literal["default", "full"] = "full"
    projector_type: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"
    projector_hidden_act: str = "gelu"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.image_seq_length is None:
            self.image_seq_length = self.grid_size**2
        elif self.image_seq_length != self.grid_size**2:
            raise ValueError(
                f"image_seq_length={self.image_seq_length} does not match the vision tower's token grid "
                f"{self.grid_size}x{self.grid_size} (image_size={self.vision_config.image_size}, "
                f"patch_size={self.vision_config.patch_size})."
            )
        self.check_condition_layer()
        self.check_queries()
        # Same workaround as LlavaConfig: some checkpoints keep the flag only in the text config.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    def check_condition_layer(self) -> None:
        """`objective_config.condition_layer` must name a decoder layer's output: `1..L` or `-L..-1` for an LLM of
        `L = text_config.num_hidden_layers` layers (0, the embeddings, is not an LLM layer)."""
        layer = self.objective_config.condition_layer
        num_layers = self.text_config.num_hidden_layers
        if layer is not None and not (1 <= layer <= num_layers or -num_layers <= layer <= -1):
            raise ValueError(
                f"objective_config.condition_layer={layer} is out of range for a language model with {num_layers} "
                f"decoder layers: use 1..{num_layers} (the output of that layer) or -{num_layers}..-1 (counting from "
                "the end), or None for the last hidden state after the final norm."
            )

    def check_queries(self) -> None:
        """`condition="queries"` needs its own placeholder token, distinct from the image token."""
        if self.objective_config.condition != "queries":
            return
        if self.query_token_id is None:
            raise ValueError(
                "objective_config.condition='queries' needs query_token_id, the id of the `<query>` placeholder: "
                "`from_components(..., condition='queries')` adds the token to the tokenizer and sets it."
            )
        if self.query_token_id == self.image_token_id:
            raise ValueError(f"query_token_id and image_token_id are both {self.image_token_id}: use two tokens.")

    @property
    def uses_queries(self) -> bool:
        """Whether the objective is conditioned on learnable queries (the generative variant), not visual outputs."""
        return self.objective_config.enabled and self.objective_config.condition == "queries"

    @property
    def condition_hidden_states_index(self) -> int | None:
        """`objective_config.condition_layer` as a non-negative index into the LLM's `hidden_states` tuple
        (`1..num_hidden_layers`), or None for the default (the last hidden state after the final norm)."""
        layer = self.objective_config.condition_layer
        if layer is None:
            return None
        return layer % (self.text_config.num_hidden_layers + 1)

    @property
    def grid_size(self) -> int:
        """Side of the square visual token grid (27 for SigLIP-384/14, 24 for CLIP-L/14-336)."""
        return self.vision_config.image_size // self.vision_config.patch_size


__all__ = ["RossConfig", "RossObjectiveConfig"]
