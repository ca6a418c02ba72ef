"""Where a native transformers VLM keeps the three facts ROSS needs, one small adapter per architecture family.

For each image of a batch, in the order the model scatters image features into its placeholder tokens:
(a) how many placeholder tokens it owns (its span of `image_token_id` tokens; the condition is the LLM's hidden states
    there), (b) its token grid `(rows, cols)`, the span's tokens being row-major over it, and (c) the image as the
    model saw it, in [0, 1], which the teacher resizes so that its own token grid is `rows x cols`.
Nothing here runs the VLM: the adapters read the processor's outputs (`pixel_values`, `image_grid_thw`) and the
model's config. `../docs/native-vlms.md` lists what each adapter maps and how it is tested.

| adapter | model types | grid | image seen |
|---|---|---|---|
| `LlavaAdapter` | `llava` | fixed `image_size / patch_size` square (CLS dropped by `"default"`) | `pixel_values[i]` |
| `LlavaOnevisionAdapter` | `llava_onevision` | the base view's fixed square (tiles and newline tokens get no visual loss) | `pixel_values[i, 0]` |
| `Gemma3Adapter` | `gemma3` | fixed `sqrt(mm_tokens_per_image)` square (16 x 16: the tower's patches average-pooled) | `pixel_values[i]` (each pan-and-scan crop is an image of its own) |
| `Idefics3Adapter` | `idefics3`, `smolvlm` | fixed `(image_size / patch) / scale_factor` square per frame (each split tile and the global view is an image of its own) | each frame's `pixel_values` |
| `QwenVLAdapter` | `qwen2_vl`, `qwen2_5_vl`, `qwen3_vl` | `image_grid_thw[i] = (1, h, w)` -> `(h / merge, w / merge)`; one token = `merge * patch` px (28 for Qwen2/2.5-VL, 32 for Qwen3-VL) | `pixel_values` rows of image i, un-patchified |
"""

import torch
from torch import nn
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches


class NativeVlmAdapter:
    """The three facts of one architecture family. `image_mean` / `image_std`: the processor's normalisation, undone
    to give the teacher the image in [0, 1]."""

    model_types: tuple[str, ...] = ()
    # The latent cache keys one teacher target per input image (`train/latent_cache.py`); an adapter whose "images"
    # are several frames per input image (Idefics3 / SmolVLM tiles) sets this False and the cache refuses it.
    one_grid_per_image: bool = True

    def __init__(self, config, image_mean: list[float], image_std: list[float]):
        self.config = config
        self.image_mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1)
        self.image_std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1)

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id

    def count_images(self, inputs: dict) -> int:
        raise NotImplementedError

    @staticmethod
    def language_model(vlm) -> nn.Module:
        """The VLM's LLM (decoder), called with `inputs_embeds` once the image features are in place."""
        return vlm.model.language_model

    def image_grids(self, inputs: dict) -> list[tuple[int, int]]:
        """`(rows, cols)` of each image's token grid, in placeholder order."""
        raise NotImplementedError

    def images_seen(self, inputs: dict) -> list[torch.Tensor]:
        """Each image as the model saw it, `(3, H, W)` fp32 in [0, 1], in placeholder order."""
        raise NotImplementedError

    def image_views(self, inputs: dict) -> list[str]:
        """Per image, in placeholder order, a name for how the processor made the image seen when that depends on more
        than the image and its grid (the latent cache keys on it); "" when it does not, as here."""
        return [""] * self.count_images(inputs)

    def span_lengths(self, image_mask: torch.Tensor, grids: list[tuple[int, int]]) -> list[int]:
        """Placeholder tokens of each image, in order (`image_mask` `(batch, seq)`). Its first `rows * cols` tokens
        are the grid the visual loss reconstructs. Default: the span is exactly the grid."""
        return [rows * cols for rows, cols in grids]

    def dummy_image_inputs(self, device: torch.device, dtype: torch.dtype) -> dict:
        """The smallest image input `get_image_features` accepts: a batch without images runs the vision tower on it
        at zero weight, so every rank calls the same modules (DeepSpeed ZeRO-3 / DDP)."""
        raise NotImplementedError

    def idle_language_model_inputs(self, image_outputs, inputs_embeds: torch.Tensor) -> dict:
        """Extra language-model inputs that carry the dummy image's features in (`image_outputs`, what
        `get_image_features` returned for `dummy_image_inputs`) where a batch with images would, at no image position,
        so that every part of the tower gets its (zero) gradient at the same point of the backward. Default: none (the
        features reach the LLM through `inputs_embeds` only)."""
        return {}

    @property
    def nominal_grid(self) -> int:
        """A square grid side for the parts of the objective that want one (the teacher's default input size)."""
        raise NotImplementedError

    def unnormalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """`(3, H, W)` processor-normalised -> fp32 in [0, 1]."""
        mean, std = self.image_mean.to(pixels.device), self.image_std.to(pixels.device)
        return (pixels.float() * std + mean).clamp(0.0, 1.0)


class LlavaAdapter(NativeVlmAdapter):
    """llava-hf `LlavaForConditionalGeneration`: one fixed square grid, `pixel_values` `(num_images, 3, S, S)`.

    The tower's patch tokens are row-major over the `S / patch` grid; `vision_feature_select_strategy="default"`
    drops the CLS token, `"full"` keeps every patch (SigLIP has none). Both give `grid ** 2` tokens per image."""

    model_types = ("llava",)

    @property
    def grid_side(self) -> int:
        vision = self.config.vision_config
        return vision.image_size // vision.patch_size

    @property
    def nominal_grid(self) -> int:
        return self.grid_side

    def count_images(self, inputs: dict) -> int:
        pixel_values = inputs.get("pixel_values")
        return 0 if pixel_values is None else int(pixel_values.shape[0])

    def image_grids(self, inputs: dict) -> list[tuple[int, int]]:
        return [(self.grid_side, self.grid_side)] * self.count_images(inputs)

    def images_seen(self, inputs: dict) -> list[torch.Tensor]:
        pixel_values = inputs.get("pixel_values")
        return [] if pixel_values is None else [self.unnormalise(image) for image in pixel_values]

    def dummy_image_inputs(self, device, dtype) -> dict:
        size = self.config.vision_config.image_size
        return {"pixel_values": torch.zeros(1, 3, size, size, device=device, dtype=dtype)}


class LlavaOnevisionAdapter(LlavaAdapter):
    """LLaVA-OneVision (any-res): `pixel_values` `(num_images, num_views, 3, S, S)`, view 0 the base view (the whole
    image resized to S x S), then the any-res tiles. `pack_image_features` lays out each image's span as the base
    view's `(S / patch) ** 2` tokens, row-major, then the unpadded tiles with one image-newline token per row.

    Only the base view gets the visual loss: its tokens sit on a fixed square grid (ROSS's own 27 x 27 for SigLIP-384)
    and see the whole image, which the teacher reconstructs; the tiles' grid depends on the image's size and their
    newline tokens hold no image cell. A span's length (base + tiles + newlines) is read from the placeholders: each
    image is one contiguous run of image tokens (the chat template puts text between images); runs that do not match
    the image count are an error."""

    model_types = ("llava_onevision",)

    def images_seen(self, inputs: dict) -> list[torch.Tensor]:
        pixel_values = inputs.get("pixel_values")
        return [] if pixel_values is None else [self.unnormalise(views[0]) for views in pixel_values]

    def image_views(self, inputs: dict) -> list[str]:
        """"square" for the images of a sample with several (`batch_num_images[s] > 1`): the processor pads each to a
        square and resizes it, without tiles, instead of resizing the whole image to the base view."""
        per_sample = inputs.get("batch_num_images")
        if per_sample is None:
            return super().image_views(inputs)
        return [view for n in per_sample.tolist() for view in ["square" if n > 1 else ""] * n]

    def span_lengths(self, image_mask, grids):
        runs = []
        for row in image_mask:
            edges = torch.diff(torch.nn.functional.pad(row.long(), (1, 1)))
            starts, ends = torch.nonzero(edges == 1).flatten(), torch.nonzero(edges == -1).flatten()
            runs += (ends - starts).tolist()
        if len(runs) != len(grids):
            raise ValueError(
                f"{len(runs)} runs of image tokens for {len(grids)} images: LLaVA-OneVision images must be separated "
                "by text in the prompt (its chat template does this)."
            )
        short = [n for n, (rows, cols) in zip(runs, grids) if n < rows * cols]
        if short:
            raise ValueError(f"image spans {short} are shorter than the base view's {grids[0][0] * grids[0][1]} tokens.")
        return runs

    def dummy_image_inputs(self, device, dtype) -> dict:
        """One S x S image as the processor gives it: the base view and the any-res tiles `get_image_features` counts
        for that size from `image_grid_pinpoints` (it slices that many views per image; one view alone fails there)."""
        size = self.config.vision_config.image_size
        views = image_size_to_num_patches((size, size), self.config.image_grid_pinpoints, patch_size=size)
        return {
            "pixel_values": torch.zeros(1, views, 3, size, size, device=device, dtype=dtype),
            "image_sizes": torch.tensor([[size, size]], device=device),
        }


class Gemma3Adapter(LlavaAdapter):
    """Gemma 3: `pixel_values` `(num_images, 3, S, S)`; the projector average-pools the SigLIP patch grid to
    `tokens_per_side = sqrt(mm_tokens_per_image)` (16 x 16 = 256 tokens for 896 px / patch 14), row-major
    (`Gemma3MultiModalProjector.forward`). The placeholder is the soft image token `config.image_token_id`
    (`image_token_index`), not the processor's `image_token_id` (which is `<start_of_image>`)."""

    model_types = ("gemma3",)

    @property
    def grid_side(self) -> int:
        return int(round(self.config.mm_tokens_per_image**0.5))


class Idefics3Adapter(NativeVlmAdapter):
    """Idefics3 (the SmolVLM v1 checkpoints) and SmolVLM2: `pixel_values` `(batch, max_frames, 3, S, S)`.

    With image splitting (the processors' default) an image becomes `rows x cols` tiles of S x S px, row-major, then
    the whole image resized to S x S (the global view); without it, the global view alone. Each frame is one tower
    call (no attention across frames) and `pixel_shuffle` folds each `scale_factor x scale_factor` block of its patch
    grid into one token, row-major over `(S / patch / scale_factor)` squared (`SmolVLMConnector.pixel_shuffle`). The
    text holds one contiguous run of `<image>` tokens per frame, in the same order (tiles, then the global view).

    Every frame gets the visual loss, as an image of its own on that fixed square grid, the teacher seeing the frame's
    pixels: the tiles hold most of the image tokens and show the image at full resolution, the global view shows it
    whole (as Gemma 3's pan-and-scan crops). Frames that are all zeros are batch padding, which the model drops
    (`get_image_features`); so are they here."""

    model_types = ("idefics3", "smolvlm")
    one_grid_per_image = False  # the tiles and the global view are frames of one image

    @staticmethod
    def language_model(vlm) -> nn.Module:
        return vlm.model.text_model

    @property
    def grid_side(self) -> int:
        vision = self.config.vision_config
        return vision.image_size // vision.patch_size // self.config.scale_factor

    @property
    def nominal_grid(self) -> int:
        return self.grid_side

    def frames(self, inputs: dict) -> torch.Tensor:
        """The batch's real frames `(n, 3, S, S)`, in placeholder order (the model's rule: padding frames are all 0)."""
        pixel_values = inputs.get("pixel_values")
        if pixel_values is None:
            return torch.empty(0, 3, 0, 0)
        frames = pixel_values.flatten(0, 1)
        return frames[(frames != 0).flatten(1).any(1)]

    def count_images(self, inputs: dict) -> int:
        return int(self.frames(inputs).shape[0])

    def image_grids(self, inputs: dict) -> list[tuple[int, int]]:
        return [(self.grid_side, self.grid_side)] * self.count_images(inputs)

    def images_seen(self, inputs: dict) -> list[torch.Tensor]:
        return [self.unnormalise(frame) for frame in self.frames(inputs)]

    def dummy_image_inputs(self, device, dtype) -> dict:
        size = self.config.vision_config.image_size
        # Not zeros: an all-zero frame is padding, which Idefics3 drops (leaving the tower nothing to run on).
        return {"pixel_values": torch.ones(1, 1, 3, size, size, device=device, dtype=dtype)}


class QwenVLAdapter(NativeVlmAdapter):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: a variable grid per image.

    The processor resizes each image to multiples of `merge * patch` px and flattens it into `t * h * w` patch rows
    of `(C, temporal_patch, patch, patch)` values, ordered `[h / merge, w / merge, merge, merge]`
    (`image_processing_pil_qwen2_vl.Qwen2VLImageProcessorPil.patchify`); the merger folds each consecutive
    `merge x merge` group into one token, so image i owns `h * w / merge**2` tokens, row-major over
    `(h / merge, w / merge)` (the window attention's reordering is undone by the tower's `reverse_indices`). A still
    image is repeated over the temporal patch: `t == 1`; videos are not images and get no visual loss."""

    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

    @property
    def merge(self) -> int:
        return self.config.vision_config.spatial_merge_size

    @property
    def patch(self) -> int:
        return _as_int(self.config.vision_config.patch_size)

    @property
    def temporal_patch(self) -> int:
        return _as_int(self.config.vision_config.temporal_patch_size)

    @property
    def nominal_grid(self) -> int:
        return 16

    def count_images(self, inputs: dict) -> int:
        grid_thw = inputs.get("image_grid_thw")
        return 0 if grid_thw is None else int(grid_thw.shape[0])

    def grid_thw(self, inputs: dict) -> list[tuple[int, int, int]]:
        grid_thw = inputs.get("image_grid_thw")
        if grid_thw is None:
            return []
        rows = [tuple(int(v) for v in row) for row in grid_thw.tolist()]
        bad = [row for row in rows if row[0] != 1 or row[1] % self.merge or row[2] % self.merge]
        if bad:
            raise ValueError(
                f"image_grid_thw rows {bad}: an image must have t=1 and h, w multiples of spatial_merge_size="
                f"{self.merge} (as the model's processor makes them)."
            )
        return rows

    def image_grids(self, inputs: dict) -> list[tuple[int, int]]:
        return [(h // self.merge, w // self.merge) for _, h, w in self.grid_thw(inputs)]

    def images_seen(self, inputs: dict) -> list[torch.Tensor]:
        grids = self.grid_thw(inputs)
        if not grids:
            return []
        pixel_values = inputs["pixel_values"]
        sizes = [t * h * w for t, h, w in grids]
        if sum(sizes) != pixel_values.shape[0]:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} patch rows but image_grid_thw accounts for {sum(sizes)}."
            )
        return [self.unpatchify(rows, h, w) for rows, (_, h, w) in zip(pixel_values.split(sizes), grids)]

    def unpatchify(self, rows: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """`(h * w, C * tp * p * p)` patch rows of one image -> `(C, h * p, w * p)` in [0, 1] (first temporal copy)."""
        m, p, tp = self.merge, self.patch, self.temporal_patch
        patches = rows.reshape(height // m, width // m, m, m, -1, tp, p, p)[:, :, :, :, :, 0]
        channels = patches.shape[4]
        # (H/m, W/m, m, m, C, p, p) -> (C, H/m, m, p, W/m, m, p)
        image = patches.permute(4, 0, 2, 5, 1, 3, 6).reshape(channels, height * p, width * p)
        return self.unnormalise(image)

    def dummy_image_inputs(self, device, dtype) -> dict:
        m, p, tp = self.merge, self.patch, self.temporal_patch
        num_rows, width = m * m, 3 * tp * p * p
        return {
            "pixel_values": torch.zeros(num_rows, width, device=device, dtype=dtype),
            "image_grid_thw": torch.tensor([[1, m, m]], device=device),
        }

    def idle_language_model_inputs(self, image_outputs, inputs_embeds):
        """Qwen3-VL's DeepStack: the mergers' features are added to the hidden states of the first LLM layers at the
        image positions (`deepstack_visual_embeds`, `visual_pos_masks`). Passed on with no position selected, the
        mergers still get their (zero) gradients where a rank with images gets them: ZeRO-3 reduces gradients in the
        order they become ready, and a rank that never produced the mergers' gradients breaks that collective."""
        deepstack = getattr(image_outputs, "deepstack_features", None)
        if not deepstack:
            return {}
        return {
            "visual_pos_masks": torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device),
            "deepstack_visual_embeds": [torch.cat(list(features))[:0] for features in deepstack],
        }


def _as_int(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


ADAPTERS = {
    model_type: adapter
    for adapter in (LlavaAdapter, LlavaOnevisionAdapter, Gemma3Adapter, Idefics3Adapter, QwenVLAdapter)
    for model_type in adapter.model_types
}


def adapter_for(config, image_mean: list[float], image_std: list[float]) -> NativeVlmAdapter:
    """The adapter of a native VLM config (`config.model_type`), or a clear error naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"ROSS has no adapter for model_type={model_type!r}; supported native VLMs: {sorted(ADAPTERS)}."
        )
    return ADAPTERS[model_type](config, image_mean, image_std)


__all__ = ["ADAPTERS", "Gemma3Adapter", "Idefics3Adapter", "LlavaAdapter", "LlavaOnevisionAdapter", "NativeVlmAdapter", "QwenVLAdapter", "adapter_for"]
