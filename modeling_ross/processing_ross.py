"""Processor for ROSS: image processor (SigLIP/CLIP preprocessing) + tokenizer + `<image>` expansion + chat template.

For the generative variant (`objective_config.condition="queries"`) it also expands each `<query>` placeholder (a
`{"type": "query"}` content item of a creation turn) to `image_seq_length` query tokens.
"""

import json
import re

import numpy as np
from PIL import Image, ImageOps
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import MultiModalData, ProcessorMixin


# The authors' two Vicuna-style templates (ross/conversation.py): `qwen_2` (Qwen2 recipes) and `v1` (Vicuna recipes).
# Both render "{system} USER: <image>\n{q} ASSISTANT: {a}{eos}USER: ..." and differ only in the system prompt: "human"
# in `qwen_2`, "user" in `v1`. Each answer ends with the tokenizer's EOS token (`<|im_end|>` for Qwen2-Instruct,
# `</s>` for Vicuna: the `sep2` of each template). The {% generation %} markers make `return_assistant_tokens_mask`
# mark each answer and its end-of-turn token; the space after "ASSISTANT:" is inside them because BPE may keep it as
# a token of its own, which the model must then learn to generate. A `{"type": "query"}` item (the image an assistant
# creates, training only) renders as `<query>`, which the processor expands.
SYSTEM_PROMPTS = {
    "qwen_2": "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "v1": "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
}


def _vicuna_style_template(system_prompt: str) -> str:
    return (
        "{%- set default_system = " + json.dumps(system_prompt) + " -%}"
        "{%- macro render(content) -%}"
        "{%- if content is string -%}{{- content -}}"
        "{%- else -%}{%- for item in content -%}"
        "{%- if item['type'] == 'image' -%}{{- '<image>\\n' -}}"
        "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
        "{%- elif item['type'] == 'query' -%}{{- '<query>' -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
        "{%- if messages[0]['role'] == 'system' -%}"
        "{{- render(messages[0]['content']) -}}{%- set messages = messages[1:] -%}"
        "{%- else -%}{{- default_system -}}{%- endif -%}"
        "{{- ' ' -}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{- 'USER: ' -}}{{- render(message['content']) -}}{{- ' ' -}}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{- 'ASSISTANT:' -}}{%- generation -%}{{- ' ' -}}{{- render(message['content']) -}}"
        "{{- eos_token if eos_token is defined and eos_token else '<|im_end|>' -}}{%- endgeneration -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
    )


CHAT_TEMPLATES = {name: _vicuna_style_template(system) for name, system in SYSTEM_PROMPTS.items()}
VICUNA_QWEN2_CHAT_TEMPLATE = CHAT_TEMPLATES["qwen_2"]
VICUNA_V1_CHAT_TEMPLATE = CHAT_TEMPLATES["v1"]
# The authors pick the template per LLM in their scripts: `--version v1` for Vicuna (llama), `qwen_2` for Qwen2.
AUTO_CHAT_TEMPLATE = {"llama": "v1"}


def resolve_chat_template(chat_template: str | None, tokenizer=None, language_model_type: str | None = None) -> str:
    """A template name -> Jinja. `"qwen_2"`, `"v1"`, `"auto"` (`v1` for a llama/Vicuna LLM, `qwen_2` otherwise, as
    the authors' scripts), `"llm"` (the tokenizer's own template); any other string is taken as Jinja."""
    if chat_template is None or chat_template == "auto":
        return CHAT_TEMPLATES[AUTO_CHAT_TEMPLATE.get(language_model_type, "qwen_2")]
    if chat_template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[chat_template]
    if chat_template == "llm":
        if tokenizer is None or not tokenizer.chat_template:
            raise ValueError("chat_template='llm' but the language model's tokenizer has no chat template.")
        return tokenizer.chat_template
    if chat_template == "vicuna":
        raise ValueError(
            "chat_template='vicuna' is ambiguous: use 'qwen_2' (the authors' Qwen2 template, system prompt about a "
            "'human') or 'v1' (their Vicuna v1 template, about a 'user'), or 'auto' to pick by the language model."
        )
    if "{" not in chat_template:
        raise ValueError(
            f"Unknown chat_template {chat_template!r}: expected one of auto, {', '.join(CHAT_TEMPLATES)}, llm, or a "
            "Jinja template string."
        )
    return chat_template


def add_image_token(tokenizer, image_token: str = "<image>") -> int:
    """Add `image_token` as a special token if the tokenizer lacks it (existing ids are kept); return its id."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([image_token], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(image_token)


def add_query_token(tokenizer, query_token: str = "<query>") -> int:
    """Add the generative variant's `query_token` as a special token if the tokenizer lacks it; return its id."""
    return add_image_token(tokenizer, query_token)


NAFLEX_MODEL_TYPES = ("siglip2", "siglip2_vision_model")


def vision_grid(vision_config, name: str = "the vision tower") -> int:
    """Patches per side of a fixed-resolution tower (`image_size // patch_size`); the number of visual tokens per
    image is its square. A SigLIP 2 NaFlex tower (`model_type: siglip2`) has no fixed grid: it takes patchified
    pixels with `pixel_attention_mask` / `spatial_shapes` and a variable token count, which `RossConfig`
    (one `image_seq_length`) and the denoiser (one square latent grid) cannot express; it is refused here."""
    if vision_config.model_type in NAFLEX_MODEL_TYPES:
        raise ValueError(
            f"{name} is a SigLIP 2 NaFlex model (model_type={vision_config.model_type!r}: variable resolution, "
            "patchified pixel_values with pixel_attention_mask / spatial_shapes). ROSS needs a fixed token grid: use "
            "a fixed-resolution SigLIP 2 checkpoint, published as model_type 'siglip' (e.g. "
            "google/siglip2-so400m-patch14-384)."
        )
    return vision_config.image_size // vision_config.patch_size


def load_image_processor(path: str, **kwargs):
    """The vision repo's image processor with the PIL backend (no torchvision dependency)."""
    return AutoImageProcessor.from_pretrained(path, backend="pil", **kwargs)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha is composited on white, 16/32-bit and float images are rescaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / high * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr, 1, ...


EXIF_ORIENTATION = 0x0112  # PIL.ExifTags.Base.Orientation


def upright_rgb(image: Image.Image) -> Image.Image:
    """The one image rule of every ROSS path (processor, training data, evaluation, Space): EXIF orientation applied,
    then `to_rgb`.

    A photo whose EXIF orientation tag is not 1 is turned the way the camera meant it, as browsers, Gradio and
    transformers' `load_image` show it (`PIL.ImageOps.exif_transpose`, which also drops the tag, so applying the rule
    twice changes nothing). Decodes the image fully first: a corrupt or truncated file fails here, where every caller
    names the image, also an RGB JPEG, which `to_rgb` returns as it is (its pixels would otherwise be decoded later,
    in whatever reads them first: `Image.paste`, numpy).
    """
    image.load()
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


DEPTH_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "F")


def depth_to_rgb(image: Image.Image) -> Image.Image:
    """The one depth-map rule of every ROSS path (training data, evaluation, Space): SpatialBot's encoding.

    A single-channel depth map in millimetres (8-bit `L`, 16-bit `I;16` PNG, 32-bit `I`, float `F`; values clipped to
    SpatialBot's uint16 range 0..65535, floats rounded) -> RGB by packing the 16 bits into the three channels as
    SpatialBot does (`three_channel_array` in its README and data loader): R = (d >> 10) << 2, G = ((d >> 5) & 31) << 3,
    B = (d & 31) << 3. Lossless, but G wraps every 1024 mm and B every 32 mm. A depth map that already has 3 channels
    is taken as encoded (SpatialBot keeps it as is) and goes through `upright_rgb`. EXIF orientation is applied first.
    Decodes the image first, as `upright_rgb` does.
    """
    image.load()
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if len(image.getbands()) != 1:
        return upright_rgb(image)
    if image.mode not in DEPTH_MODES:
        raise ValueError(f"a depth map must be single-channel {', '.join(DEPTH_MODES)} (millimetres), got mode {image.mode}")
    depth = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 65535).astype(np.uint16)
    rgb = np.stack([(depth >> 10) << 2, ((depth >> 5) & 31) << 3, (depth & 31) << 3], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, mode="RGB")


def _describe_image(image) -> str:
    filename = getattr(image, "filename", None)
    return f"{image.format or 'image'} file {filename}" if filename else f"{image.format or 'in-memory'} image"


def _flat(images) -> list:
    """The leaves of a (nested) list of images, in order."""
    if isinstance(images, (list, tuple)):
        return [leaf for item in images for leaf in _flat(item)]
    return [images]


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad to a centred square with `background` (the reference SFT setting uses the image processor's mean colour)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new("RGB", (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


class RossProcessor(ProcessorMixin):
    r"""
    Wraps an image processor and a tokenizer. Each `<image>` placeholder in the text is expanded to
    `image_seq_length` image tokens; images are converted to RGB and, with `image_aspect_ratio="pad"`, padded to a
    square with the mean colour before resizing (`"resize"` resizes directly, as in stage 1 of the recipe).

    Args:
        image_processor: e.g. `SiglipImageProcessorPil`.
        tokenizer: the LLM's tokenizer, with `image_token` added.
        chat_template (`str`, *optional*): defaults to the reference Vicuna-style template.
        image_token (`str`, defaults to `"<image>"`).
        image_seq_length (`int`): visual tokens per image (`grid_size ** 2`).
        image_aspect_ratio (`str`, defaults to `"pad"`): `"pad"` or `"resize"`.
        query_token (`str`, *optional*): the generative variant's placeholder (`"<query>"`, already in the
            tokenizer); each one in the text is expanded to `image_seq_length` of them. None (default): no expansion.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token="<image>",
        image_seq_length=None,
        image_aspect_ratio="pad",
        query_token=None,
        **kwargs,
    ):
        if image_aspect_ratio not in ("pad", "resize"):
            raise ValueError(f"image_aspect_ratio must be 'pad' or 'resize', got {image_aspect_ratio!r}")
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {image_token!r} token; add it with `add_image_token(tokenizer)`.")
        self.image_seq_length = image_seq_length
        self.image_aspect_ratio = image_aspect_ratio
        self.query_token = query_token
        self.query_token_id = None
        if query_token is not None:
            self.query_token_id = tokenizer.convert_tokens_to_ids(query_token)
            if self.query_token_id is None or self.query_token_id == tokenizer.unk_token_id:
                raise ValueError(
                    f"The tokenizer has no {query_token!r} token; add it with `add_query_token(tokenizer)`."
                )
        super().__init__(image_processor, tokenizer, chat_template=chat_template or VICUNA_QWEN2_CHAT_TEMPLATE)

    @classmethod
    def from_components(
        cls,
        vision_model: str,
        language_model: str,
        image_token: str = "<image>",
        chat_template="auto",
        query_token: str | None = None,
        **kwargs,
    ) -> "RossProcessor":
        """
        Build the processor of `modeling_ross.from_components(vision_model, language_model)`.

        `chat_template`: `"auto"` (default: the authors' template for this LLM, `v1` for Vicuna/llama, `qwen_2`
        otherwise), `"qwen_2"`, `"v1"`, `"llm"` (the language model's own template, which needs `{% generation %}`
        markers for assistant-only masks), or a Jinja string (see `resolve_chat_template`).
        `query_token`: `"<query>"` for a model built with `condition="queries"` (added after `image_token`, as
        `modeling_ross.from_components` adds it, so both get the same id).
        """
        tokenizer = AutoTokenizer.from_pretrained(language_model)
        add_image_token(tokenizer, image_token)
        if query_token is not None:
            add_query_token(tokenizer, query_token)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or "<|endoftext|>"
        vision_config = AutoConfig.from_pretrained(vision_model)
        vision_config = getattr(vision_config, "vision_config", vision_config)
        grid = vision_grid(vision_config, repr(vision_model))
        image_processor = load_image_processor(vision_model)
        text_type = getattr(AutoConfig.from_pretrained(language_model), "model_type", None)
        chat_template = resolve_chat_template(chat_template, tokenizer, text_type)
        return cls(
            image_processor,
            tokenizer,
            chat_template,
            image_token=image_token,
            image_seq_length=grid * grid,
            query_token=query_token,
            **kwargs,
        )

    def prepare_inputs_layout(self, images=None, **kwargs):
        """Checks that every image of the call is one (before transformers' `fetch_images` fails on it, unnamed)."""
        if images is not None:
            for index, image in enumerate(_flat(images)):
                if not isinstance(image, (Image.Image, np.ndarray, str)) and not hasattr(image, "shape"):
                    raise TypeError(
                        f"images[{index}] is a {type(image).__name__}, not an image (expected a PIL image, a numpy "
                        "array, a tensor, or a path or URL)"
                    )
        return super().prepare_inputs_layout(images=images, **kwargs)

    def _process_images(self, images, **kwargs):
        images = make_flat_list_of_images(images)
        converted = []
        for index, image in enumerate(images):
            if isinstance(image, Image.Image):
                try:
                    image = upright_rgb(image)  # decodes: a truncated or corrupt file fails here, not inside numpy
                except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
                    raise ValueError(
                        f"images[{index}] ({_describe_image(image)}, {image.mode} {image.size[0]}x{image.size[1]}): "
                        f"cannot decode the image: {type(error).__name__}: {error}"
                    ) from error
                if self.image_aspect_ratio == "pad":
                    mean = tuple(int(255 * m) for m in self.image_processor.image_mean)  # as LLaVA and the authors
                    image = expand_to_square(image, mean)
            converted.append(image)
        return super()._process_images(converted, **kwargs)

    def get_text_with_replacements(self, text, images_replacements=(), videos_replacements=(), audio_replacements=()):
        """transformers' `<image>` expansion, then each `query_token` expanded to `image_seq_length` of them. The
        offsets returned cover both, in the original text's coordinates, so the assistant mask and the collator's
        answer spans map through the queries as through the images."""
        text, image_offsets = super().get_text_with_replacements(
            text, list(images_replacements), list(videos_replacements), list(audio_replacements)
        )
        if self.query_token is None or not any(self.query_token in sample for sample in text):
            return text, image_offsets
        image_offsets = image_offsets or [[] for _ in text]
        replacement = self.query_token * self.image_seq_length
        expanded, offsets = [], []
        for sample, images in zip(text, image_offsets):
            pieces, entries, last, query_gain = [], [], 0, 0
            for match in re.finditer(re.escape(self.query_token), sample):
                start, end = match.span()
                # Characters the image expansions before this query added: back to the original text's position.
                image_gain = sum(len(r["replacement"]) - len(r["text"]) for r in images if r["new_span"][1] <= start)
                original = start - image_gain
                new_start = start + query_gain
                entries.append(
                    {
                        "type": "query",
                        "span": (original, original + len(self.query_token)),
                        "new_span": (new_start, new_start + len(replacement)),
                        "text": self.query_token,
                        "replacement": replacement,
                    }
                )
                pieces += [sample[last:start], replacement]
                last, query_gain = end, query_gain + len(replacement) - len(self.query_token)
            pieces.append(sample[last:])
            for r in images:  # shift each image's new span past the queries expanded before it
                gain = sum(len(e["replacement"]) - len(e["text"]) for e in entries if e["span"][1] <= r["span"][0])
                entries.append({**r, "new_span": (r["new_span"][0] + gain, r["new_span"][1] + gain)})
            expanded.append("".join(pieces))
            offsets.append(sorted(entries, key=lambda e: e["span"][0]))
        return expanded, offsets

    def preprocess_targets(self, images):
        """Creation targets (`condition="queries"`) -> `(num_images, 3, H, W)` pixel values, preprocessed exactly as
        input images (RGB, padding, the image processor), since the teacher reads both the same way."""
        return self(images=images, return_tensors="pt")["pixel_values"]

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.image_seq_length

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        if image_sizes is None:
            return MultiModalData()
        return MultiModalData(
            num_image_tokens=[self.image_seq_length] * len(image_sizes), num_image_patches=[1] * len(image_sizes)
        )

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["RossProcessor", "depth_to_rgb"]
