"""Configuration of the ROSS head that `RossForPreTraining` trains beside a native transformers VLM.

The VLM keeps its own config (saved as the plain architecture at the checkpoint's root); the head's config is saved
in the `ross_head/` subfolder next to the head's weights.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_ross import RossObjectiveConfig


@strict
class RossHeadConfig(PreTrainedConfig):
    r"""
    Args:
        objective_config (`dict` or `RossObjectiveConfig`):
            The reconstructive objective (`objective="denoise"`, `denoiser_position_embedding="sincos"`: a grid of any
            shape gets its own 2-D sin-cos table). `image_mean` / `image_std` are the VLM processor's normalisation.
        condition_size (`int`):
            Width of the LLM hidden states that condition the denoiser (`text_config.hidden_size` of the VLM).
        vlm_model_type (`str`):
            `model_type` of the VLM the head was trained with (selects the adapter, see `native_adapters.py`).
        base_model (`str`, *optional*):
            The checkpoint training started from (for model cards).
    """

    model_type = "ross_head"
    sub_configs_defaults = {"objective_config": SubConfigSpec(config_class=RossObjectiveConfig)}

    objective_config: dict | PreTrainedConfig | None = None
    condition_size: int = 0
    vlm_model_type: str = ""
    base_model: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        objective = self.objective_config
        if objective.objective != "denoise":
            raise ValueError(
                f"RossForPreTraining supports objective='denoise' (ROSS^D) with native VLMs, got {objective.objective!r}."
            )
        if objective.condition != "visual_outputs":
            raise ValueError("RossForPreTraining reconstructs input images: condition must be 'visual_outputs'.")
        if objective.denoiser_position_embedding != "sincos":
            raise ValueError(
                "Native VLMs have a token grid per image: set denoiser_position_embedding='sincos' (a learned table "
                "exists for one grid only)."
            )
        if objective.target not in ("vae", "pixel"):
            raise ValueError(f"Native VLMs support target 'vae' or 'pixel', got {objective.target!r}.")


__all__ = ["RossHeadConfig"]
