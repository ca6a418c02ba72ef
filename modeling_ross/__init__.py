"""ROSS for Hugging Face transformers: config, model, processor, and the reconstructive objective.

Importing this package registers the classes with the Auto classes, and marks them so that
`save_pretrained` copies the code files and writes `auto_map` (remote-code loading).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_ross import RossConfig, RossObjectiveConfig
from .modeling_ross import RossForConditionalGeneration, RossModel, RossPreTrainedModel
from .from_llava import from_llava as _from_llava
from .from_llava import processor_from_llava as _processor_from_llava
from .processing_ross import RossProcessor


AutoConfig.register("ross", RossConfig, exist_ok=True)
AutoConfig.register("ross_objective", RossObjectiveConfig, exist_ok=True)
AutoModel.register(RossConfig, RossModel, exist_ok=True)
AutoModelForImageTextToText.register(RossConfig, RossForConditionalGeneration, exist_ok=True)
AutoProcessor.register(RossConfig, RossProcessor, exist_ok=True)

RossConfig.register_for_auto_class()
RossModel.register_for_auto_class("AutoModel")
RossForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
RossProcessor.register_for_auto_class("AutoProcessor")

# Continued ROSS training from a trained llava-hf checkpoint (kept out of the remote-code files).
RossForConditionalGeneration.from_llava = staticmethod(_from_llava)
RossProcessor.from_llava = staticmethod(_processor_from_llava)

__all__ = [
    "RossConfig",
    "RossObjectiveConfig",
    "RossForConditionalGeneration",
    "RossModel",
    "RossPreTrainedModel",
    "RossProcessor",
]
