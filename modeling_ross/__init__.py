"""ROSS for Hugging Face transformers: config, model, processor, and the reconstructive objective.

Importing this package registers the classes with the Auto classes, and marks them so that
`save_pretrained` copies the code files and writes `auto_map` (remote-code loading).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_ross import RossConfig, RossObjectiveConfig
from .configuration_ross_head import RossHeadConfig
from .modeling_ross import RossForConditionalGeneration, RossModel, RossPreTrainedModel
from .processing_ross import RossProcessor
from .builder import from_components, from_llava, processor_from_llava
from .modeling_ross_pretraining import RossForPreTraining


AutoConfig.register("ross", RossConfig, exist_ok=True)
AutoConfig.register("ross_objective", RossObjectiveConfig, exist_ok=True)
AutoConfig.register("ross_head", RossHeadConfig, exist_ok=True)
AutoModel.register(RossConfig, RossModel, exist_ok=True)
AutoModelForImageTextToText.register(RossConfig, RossForConditionalGeneration, exist_ok=True)
AutoProcessor.register(RossConfig, RossProcessor, exist_ok=True)

RossConfig.register_for_auto_class()
RossModel.register_for_auto_class("AutoModel")
RossForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
RossProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "RossConfig",
    "RossObjectiveConfig",
    "RossForConditionalGeneration",
    "RossForPreTraining",
    "RossHeadConfig",
    "RossModel",
    "RossPreTrainedModel",
    "RossProcessor",
    "from_components",
    "from_llava",
    "processor_from_llava",
]
