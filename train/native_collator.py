"""The collator for native transformers VLMs (`RossForPreTraining`): the VLM's own processor and chat template.

It keeps `RossDataCollator`'s data contract (LLaVA JSON and HF `messages` items, assistant-only labels from the chat
template's `{% generation %}` markers or from rendered prefixes, image tokens and padding at -100, text-only and
multi-image samples, nothing ever truncated, bad samples raise or are counted skips) and changes what depends on the
processor: an image expands to as many placeholder tokens as the processor makes of it (variable for Qwen-VL), and
every tensor the processor returns travels into the batch: per image (`pixel_values`, `image_grid_thw`,
`image_sizes`, LLaVA-OneVision's per-sample `batch_num_images`, Idefics3 / SmolVLM's `pixel_attention_mask`)
concatenated in sample order (any-res views and Idefics3 / SmolVLM frames zero-padded to the most), per token
(`mm_token_type_ids`, which Qwen-VL's M-RoPE needs; Gemma 3's `token_type_ids`, its bidirectional attention over
each image) padded like `input_ids`.

The image tokens (kept out of the labels, counted against the sample's images) are the processor's
`image_token_ids`: the tokens of the expanded text the model scatters image features into. For most processors that
is `image_token_id`; Gemma 3's `image_token_id` is `<start_of_image>`, which begins each image, and its
`image_token_ids` is the soft image token (`config.image_token_id`).

The length pre-pass (`train/lengths.py`) counts a sample's tokens with `sample_length(messages, image_sizes)`: the
collator's own encoding (template, tokenizer, masking, checks) through a counting copy of the processor whose images
are size-only stand-ins. Each image's placeholder is replaced by the processor's own replacement text
(`replace_image_token`, what `ProcessorMixin._process_images` returns next to the pixels), measured once per distinct
`(height, width, images in the sample)` by running the real processor's `_process_images` on blank images of that
size, and memoised; the rendered text is then tokenised as in training, with each run of image tokens kept as one
token and the rest added back (they are added tokens, which the tokenizer splits out before anything else). So the
count is the collator's `input_ids` length, neighbouring-token merges included (Gemma 3's replacement starts and ends
with newlines), and no pixels are processed per sample. The image count is in the key because LLaVA-OneVision
expands an image of a multi-image sample without its any-res tiles. (`_get_num_multimodal_tokens(image_sizes=...)` is
not used: it gives the image tokens, not the replacement's text tokens, such as Gemma 3's `<start_of_image>` and
newlines, ignores that multi-image rule, and raises for some processors; see docs/native-vlms.md.)

With a native VLM's latent cache (`train/latent_cache.py`, built with the model's `adapter`), every batch also gets
`teacher_targets`: one `{"mean", "std"}` per image in placeholder order, looked up by image content, the grid the
processor gave it and its view (`adapter.image_grids` / `adapter.image_views` of the batch); an empty list for a
batch without images. A miss raises `LatentCacheMiss`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence

import torch
from PIL import Image
from transformers import BatchFeature
from transformers.image_utils import is_valid_image, make_flat_list_of_images

from ross.train.collator import IGNORE_INDEX, RossDataCollator
from ross.train.sources import BadSampleError, is_creation


# What the processors of the supported VLMs return next to `input_ids` / `attention_mask`.
PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")
# Concatenated in sample order: per image, or per sample with images (LLaVA-OneVision's `batch_num_images`, which
# tells the model that a multi-image sample's images are not split into any-res tiles).
PER_IMAGE_KEYS = ("pixel_values", "image_grid_thw", "image_sizes", "batch_num_images", "pixel_attention_mask")
# Per-image tensors with a views axis (dim 1) when they have this many dims: LLaVA-OneVision's `(images, views, 3, S,
# S)`, Idefics3 / SmolVLM's `(1, frames, 3, S, S)` and `(1, frames, S, S)`.
VIEWS_NDIM = {"pixel_values": 5, "pixel_attention_mask": 4}


class NativeVlmDataCollator(RossDataCollator):
    """`RossDataCollator` for a native VLM's processor (see the module docstring). `adapter`
    (`RossForPreTraining.adapter`) gives the batch's image grids, which a `latent_cache` needs. `padding_free` is not
    supported here (`train/sft.py` refuses it for native VLMs)."""

    def __init__(self, processor, max_length: int, adapter=None, **kwargs):
        if kwargs.get("padding_free"):
            raise ValueError("Native VLM runs do not support padding_free yet.")
        if kwargs.get("format", "chat") != "chat":
            raise ValueError("Native VLM runs use the model's own chat template: data_format must be 'chat'.")
        latent_cache = kwargs.get("latent_cache")
        if latent_cache is not None and (adapter is None or not latent_cache.per_image_grid):
            raise ValueError(
                "A native VLM's latent cache is keyed by image and grid: pass the model's adapter and a cache built "
                f"with it (build_latent_cache(..., adapter=model.adapter)); got adapter={adapter!r}, cache "
                f"{latent_cache.directory}."
            )
        super().__init__(processor, max_length, **kwargs)
        self.adapter = adapter
        self.image_token_ids = torch.tensor([i for i in processor.image_token_ids if i is not None])

    # The length pre-pass hands `sample_length` each image's `(height, width)` (`RossDataset.image_sizes`).
    counts_image_sizes = True

    def sample_length(self, messages, image_sizes: Sequence[tuple[int, int]]) -> int:
        """The number of tokens `_encode` makes of a sample whose images have these `(height, width)` sizes (upright,
        as the dataset loads them), without their pixels; raises `BadSampleError` (`template`,
        `image_count_mismatch`) as training would. See the module docstring; equal to `_encode`'s count (tested)."""
        stand_ins = [_SizeOnly(height, width) for height, width in image_sizes]
        counter = self._counting_processor()
        feature = {"messages": messages, "images": stand_ins}
        encoded = self._encode_any_length(feature, processor=counter, count_only=True)
        collapsed = counter._process_images.collapsed
        return len(encoded["input_ids"]) + sum(collapsed[(h, w, len(image_sizes))] for h, w in image_sizes)

    def _counting_processor(self):
        """A shallow copy of the processor whose `_process_images` returns no pixels and each image's memoised
        replacement text (`ImageExpansions`)."""
        if self._counter is None:
            counter = copy.copy(self.processor)
            counter._process_images = ImageExpansions(self.processor)
            self._counter = counter
        return self._counter

    def length_settings(self) -> dict:
        """What decides an image's expansion, for the length cache's key (`train/lengths.py`): the processor's saved
        settings (its image processor's whole config: sizes, min / max pixels, patch and merge size, ...; its own
        `num_image_tokens`, `image_seq_len`, `vision_feature_select_strategy`, ...) and its plain attributes (the
        image tokens and Gemma 3's `full_image_sequence`)."""
        settings = {key: value for key, value in self.processor.to_dict().items() if key != "chat_template"}
        attributes = {k: v for k, v in sorted(vars(self.processor).items()) if isinstance(v, (str, int, float, bool))}
        return json.loads(json.dumps({"processor": settings, "attributes": attributes}, sort_keys=True, default=str))

    def _encode_any_length(self, feature, processor=None, count_only: bool = False) -> dict:
        images = feature["images"]
        if is_creation(feature["messages"]):
            raise BadSampleError("template", "creation samples (<query>) need the LLaVA-style RossForConditionalGeneration")
        out, mask = self._tokenize(feature["messages"], images, processor or self.processor)
        input_ids = out["input_ids"][0]
        is_image = torch.isin(input_ids, self.image_token_ids)
        num_image_tokens = int(is_image.sum())
        if bool(images) != (num_image_tokens > 0):  # e.g. an image the template dropped, or a literal placeholder
            raise BadSampleError(
                "image_count_mismatch", f"{num_image_tokens} image tokens in the text for {len(images)} images"
            )
        labels = input_ids.masked_fill(~mask | is_image, IGNORE_INDEX)
        if not (labels != IGNORE_INDEX).any():
            raise BadSampleError("template", "the rendered conversation supervises no token")
        return {
            "input_ids": input_ids,
            "labels": labels,
            "per_token": {key: out[key][0] for key in PER_TOKEN_KEYS if key in out},
            "per_image": {key: out[key] for key in PER_IMAGE_KEYS if key in out} if images else {},
            "num_image_tokens": num_image_tokens,
        }

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        num_drawn = len(features)
        features = [feature for feature in features if feature is not None]
        encoded, kept = self._encode_or_skip(features)
        if not encoded:
            return self._placeholder_batch(num_drawn)
        batch = self._pad(encoded)
        width = batch["input_ids"].shape[1]
        for key in {key for e in encoded for key in e["per_token"]}:
            padded = torch.zeros(len(encoded), width, dtype=encoded[0]["per_token"][key].dtype)
            for row, e in enumerate(encoded):
                padded[row, : len(e["per_token"][key])] = e["per_token"][key]
            batch[key] = padded
        for key in PER_IMAGE_KEYS:
            values = [e["per_image"][key] for e in encoded if key in e["per_image"]]
            if values:
                batch[key] = torch.cat(_pad_views(key, values), dim=0)
        if self.latent_cache is not None:
            grids, views = self.adapter.image_grids(batch), self.adapter.image_views(batch)
            batch["teacher_targets"] = self.latent_cache.grid_targets_for(kept, grids, views)
        return batch


class _SizeOnly(Image.Image):
    """A stand-in image with a size and no pixels (the counting processor reads only `.size`)."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self._size, self._mode = (int(width), int(height)), "RGB"


class ImageExpansions:
    """The counting processor's `_process_images`: no pixels, and per image the real processor's replacement text for
    a blank image of its size, memoised by `(height, width, images in the sample)` (see the module docstring)."""

    def __init__(self, processor):
        self.processor = processor
        self.memo: dict[tuple[int, int, int], str] = {}
        # Per key, the image tokens left out of the memoised text: each run of an image token is kept as one token
        # (an added token, split out before anything else, so a run of n is always n tokens; checked here), which
        # spares tokenising and offsetting hundreds of them per image. `sample_length` adds them back.
        self.collapsed: dict[tuple[int, int, int], int] = {}
        tokenizer = processor.tokenizer
        ids = [i for i in processor.image_token_ids if i is not None]
        self._runs = [
            (token, re.compile(f"(?:{re.escape(token)}){{2,}}"))
            for token, token_id in zip(tokenizer.convert_ids_to_tokens(ids), ids)
            if tokenizer(token * 3, add_special_tokens=False)["input_ids"] == [token_id] * 3
        ]

    def __call__(self, images, **kwargs) -> tuple[BatchFeature, list[str]]:
        flat = make_flat_list_of_images(images)
        nested = not is_valid_image(images[0])  # Gemma 3 / Idefics3 / SmolVLM pass one list of images per sample
        return BatchFeature({}), [self.replacement(*image.size[::-1], len(flat), nested, kwargs) for image in flat]

    def replacement(self, height: int, width: int, num_images: int, nested: bool, kwargs: dict) -> str:
        key = (height, width, num_images)
        if key not in self.memo:
            blanks = [Image.new("RGB", (width, height))] * num_images
            _, replacements = self.processor._process_images([blanks] if nested else blanks, **kwargs)
            text, collapsed = replacements[0], 0
            for token, run in self._runs:
                collapsed += sum(len(match) // len(token) - 1 for match in run.findall(text))
                text = run.sub(token, text)
            self.memo[key], self.collapsed[key] = text, collapsed
        return self.memo[key]


def _pad_views(key: str, values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-image tensors of several samples with a views axis (`VIEWS_NDIM`), zero-padded to the most views: what the
    processor does within one call. LLaVA-OneVision reads each image's own view count from `image_sizes`; Idefics3 /
    SmolVLM drop all-zero frames (and their `pixel_attention_mask`)."""
    if values[0].ndim != VIEWS_NDIM.get(key):
        return values
    views = max(value.shape[1] for value in values)
    return [torch.nn.functional.pad(v, (0, 0) * (v.ndim - 2) + (0, views - v.shape[1])) for v in values]


__all__ = ["NativeVlmDataCollator"]
