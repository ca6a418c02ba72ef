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

With a native VLM's latent cache (`train/latent_cache.py`, built with the model's `adapter`), every batch also gets
`teacher_targets`: one `{"mean", "std"}` per image in placeholder order, looked up by image content, the grid the
processor gave it and its view (`adapter.image_grids` / `adapter.image_views` of the batch); an empty list for a
batch without images. A miss raises `LatentCacheMiss`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

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

    def sample_length(self, messages, num_images: int) -> int:
        raise NotImplementedError(
            "a native VLM's image token count depends on the image's size: lengths are checked per batch, not by a "
            "pre-pass"
        )

    def _encode_any_length(self, feature, processor=None, count_only: bool = False) -> dict:
        images = feature["images"]
        if is_creation(feature["messages"]):
            raise BadSampleError("template", "creation samples (<query>) need the LLaVA-style RossForConditionalGeneration")
        out, mask = self._tokenize(feature["messages"], images, self.processor)
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


def _pad_views(key: str, values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-image tensors of several samples with a views axis (`VIEWS_NDIM`), zero-padded to the most views: what the
    processor does within one call. LLaVA-OneVision reads each image's own view count from `image_sizes`; Idefics3 /
    SmolVLM drop all-zero frames (and their `pixel_attention_mask`)."""
    if values[0].ndim != VIEWS_NDIM.get(key):
        return values
    views = max(value.shape[1] for value in values)
    return [torch.nn.functional.pad(v, (0, 0) * (v.ndim - 2) + (0, views - v.shape[1])) for v in values]


__all__ = ["NativeVlmDataCollator"]
