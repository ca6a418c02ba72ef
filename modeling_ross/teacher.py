"""Frozen teacher tokenizers F of ROSS.

A teacher turns the image the vision tower saw into the target tokens the reconstructive objective
recovers, one token per cell of the vision tower's token grid:

    pixel_values (B, 3, H, W), normalised with `image_mean` / `image_std`  ->  targets (B, N, C), N = grid_size ** 2

Tokens are in raster order (row-major over the grid), the order of the vision tower's patch tokens.

Every teacher is a `RossTeacher`: `encode_distribution(pixel_values) -> (mean, std)` gives the target distribution
per token (`std` is `None` for a deterministic target: pixels, features, a VAE with `latent_sample="mode"`), and
`forward` draws from it with `sample_targets` (`mean + std * eps`, `eps ~ N(0, 1)` of the tokens' shape). The latent
cache (`train/latent_cache.py`) stores `(mean, std)` once and the visual loss draws the same way every step.

- `RossVaeTeacher`: diffusers `AutoencoderKL` latents, `fold x fold` latent windows folded into channels
  (the reference code's FLUX VAE: 16 channels x 2 x 2 = 64 channels on a 27 x 27 grid).
- `RossPixelTeacher`: patchified RGB (ROSS^R-Pixel, or pixel denoising).
- `RossFeatureTeacher`: features of any transformers vision model (DINOv2, DeiT, CLIP / SigLIP vision).

Teachers are built from config only (`build_teacher`); the real weights are read once by
`teacher_source.load_teacher_source` and copied in by the model, or filled by the outer `from_pretrained`. That keeps
DeepSpeed ZeRO-3 and offline loading working.

Precision: teachers are frozen and run under `torch.no_grad()` with autocast disabled; inputs are cast to fp32.
If a training engine cast a teacher's parameters to bf16 (DeepSpeed, `model.to(torch.bfloat16)`), the inputs are
cast to the parameter dtype instead, the teacher computes in it, and the targets are still returned in fp32.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from .configuration_ross import RossObjectiveConfig


try:  # diffusers is a training-time dependency: inference-only users can import the model without it.
    from diffusers import AutoencoderKL
except ImportError:  # pragma: no cover - exercised only without diffusers
    AutoencoderKL = None

try:  # accelerate too (it builds the parameter-less copy of `restore_non_persistent_buffers`).
    from accelerate import init_empty_weights
except ImportError:  # pragma: no cover - exercised only without accelerate
    init_empty_weights = None


# ---------------------------------------------------------------------------------------------------------------------
# Helpers shared by the teachers
# ---------------------------------------------------------------------------------------------------------------------


def protect_from_init(module: nn.Module) -> nn.Module:
    """Mark every submodule of `module` as initialised, so transformers' `post_init` / `_init_weights` skip it.

    `PreTrainedModel.initialize_weights` visits every child module and only checks the `_is_hf_initialized` flag,
    so a teacher whose weights were copied in would otherwise be re-initialised. Do not call it on a teacher whose
    weights are still missing (e.g. before a `from_pretrained` that has no teacher weights): its parameters would
    then keep whatever the loader allocated.
    """
    for submodule in module.modules():
        submodule._is_hf_initialized = True
    return module


def freeze(module: nn.Module) -> nn.Module:
    """Set `requires_grad=False` on all parameters and put `module` in eval mode.

    Call again after any `from_pretrained`: transformers' loader creates new `nn.Parameter`s with `requires_grad=True`.
    """
    module.requires_grad_(False)
    module.eval()
    return module


def _check_pixel_values(pixel_values: torch.Tensor) -> None:
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(
            f"Teachers expect pixel_values of shape (batch, 3, height, width), got {tuple(pixel_values.shape)}."
        )


def _channel_stats(values: list[float], reference: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=reference.dtype, device=reference.device).view(1, -1, 1, 1)


def _to_unit_range(pixel_values: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Undo the vision tower's normalisation: fp32 RGB in [0, 1]."""
    pixel_values = pixel_values.float()
    return (pixel_values * _channel_stats(std, pixel_values) + _channel_stats(mean, pixel_values)).clamp(0.0, 1.0)


def _resize(images: torch.Tensor, size: int | tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, size, size), or to (B, C, height, width) for `size` = (height,
    width); a no-op when the size already matches."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if images.shape[-2:] == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def _parameter_dtype(module: nn.Module) -> torch.dtype:
    parameter = next(module.parameters(), None)
    return torch.float32 if parameter is None else parameter.dtype


@contextlib.contextmanager
def _frozen_fp32(device: torch.device, keep_graph: bool = False):
    """No autograd graph (unless `keep_graph`) and no autocast: the teacher computes in its own parameter dtype."""
    grad_context = contextlib.nullcontext() if keep_graph else torch.no_grad()
    with grad_context, torch.autocast(device_type=device.type, enabled=False):
        yield


def _fold(latents: torch.Tensor, fold: int) -> torch.Tensor:
    """(B, C, g*fold, g*fold) -> (B, g*g, C*fold*fold), channel = c*fold*fold + row_offset*fold + col_offset.

    This is the channel order of the reference code (`unfold(2, f, f).unfold(3, f, f)` then
    `b c h w p1 p2 -> b (c p1 p2) h w`), which is also `pixel_unshuffle`'s.
    """
    if fold > 1:
        latents = F.pixel_unshuffle(latents, fold)
    return latents.flatten(2).transpose(1, 2)


def _unfold(tokens: torch.Tensor, fold: int, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Inverse of `_fold`: (B, rows*cols, C*fold*fold) -> (B, C, rows*fold, cols*fold); `grid` = (rows, cols)
    defaults to the square grid of the token count."""
    batch_size, num_tokens, channels = tokens.shape
    rows, cols = grid if grid is not None else _square_grid(num_tokens)
    if rows * cols != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a {rows}x{cols} grid.")
    latents = tokens.transpose(1, 2).reshape(batch_size, channels, rows, cols)
    return F.pixel_shuffle(latents, fold) if fold > 1 else latents


def _square_grid(num_tokens: int) -> tuple[int, int]:
    side = int(round(num_tokens**0.5))
    if side * side != num_tokens:
        raise ValueError(f"Tokens must form a square grid, got {num_tokens} tokens.")
    return side, side


def _require_diffusers() -> None:
    if AutoencoderKL is None:
        raise ImportError("The `vae` target needs diffusers: `pip install diffusers`.")


# ---------------------------------------------------------------------------------------------------------------------
# Teachers
# ---------------------------------------------------------------------------------------------------------------------


def sample_targets(
    mean: torch.Tensor, std: torch.Tensor | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw target tokens `mean + std * eps` (`eps ~ N(0, 1)`, shape of `mean`); `mean` itself when `std` is None.

    This is the only place a target is drawn, shared by the teachers' `forward` and the cached-target path of the
    visual loss, so both consume the random stream identically. `eps` is drawn on the generator's device (the global
    RNG of `mean`'s device without one) in `mean`'s dtype.
    """
    if std is None:
        return mean
    device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
    return mean + std * eps


class RossTeacher(nn.Module):
    """Base of the frozen teachers: `forward` = `sample_targets(*encode_distribution(pixel_values))`.

    Subclasses implement `encode_distribution(pixel_values) -> (mean (B, N, C), std (B, N, C) or None)` in fp32,
    without autograd graph, and `num_channels`.
    """

    def encode_distribution(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def encode_grid_distribution(
        self, images: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Targets on any `(rows, cols)` token grid, for native VLMs whose grid varies per image.

        `images` `(B, 3, H, W)` in [0, 1] (already de-normalised: each VLM normalises differently) are resized so that
        the teacher's token grid is `rows x cols`; returns `(mean, std)` each `(B, rows * cols, num_channels)` fp32
        (`std` None for a deterministic target), tokens row-major over the grid.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no variable-grid targets: use target='vae' or 'pixel' with a native VLM."
        )

    def forward(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) tower-normalised images -> (B, grid_size**2, num_channels) fp32 target tokens.

        `generator` seeds the draw of a stochastic target (`latent_sample="sample"`); it is unused otherwise.
        """
        mean, std = self.encode_distribution(pixel_values)
        return sample_targets(mean, std, generator)


class RossVaeTeacher(RossTeacher):
    """KL-VAE latents (ROSS^D's default target), folded so the latent grid equals the vision token grid.

    The image is de-normalised to [-1, 1] and resized (bilinear, antialiased) to
    `image_size = grid_size * downsample * fold`, encoded, and
    `latents = (sample-or-mode - shift_factor) * scaling_factor`. Every `fold x fold` latent window is then folded
    into channels (channel = c * fold**2 + row_offset * fold + col_offset, the reference code's order), giving
    `(B, grid_size**2, latent_channels * fold**2)` tokens.

    Examples: FLUX VAE (16 channels, downsample 8, fold 2) on SigLIP-384/14 -> 432 px, 729 x 64 tokens;
    KL-16 VAE (downsample 16, fold 1) -> 432 px, 729 x latent_channels tokens.

    Args:
        objective_config (`RossObjectiveConfig`): `teacher_config` holds the `AutoencoderKL` config; `vae_fold`,
            `latent_sample`, `image_mean` / `image_std` are read too.
        grid_size (`int`): side of the vision tower's token grid.
    """

    def __init__(self, objective_config: RossObjectiveConfig, grid_size: int):
        super().__init__()
        _require_diffusers()
        if not objective_config.teacher_config:
            raise ValueError(
                "target='vae' needs `objective_config.teacher_config` (the AutoencoderKL config); "
                "fill it with `load_teacher_source` (done by `RossForConditionalGeneration.from_components`)."
            )
        # Built from config only: the weights are copied in later (from_components) or by the outer from_pretrained.
        self.vae = AutoencoderKL.from_config(objective_config.teacher_config)
        self.grid_size = grid_size
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.fold = objective_config.vae_fold or max(1, 16 // self.downsample)
        self.image_size = grid_size * self.downsample * self.fold
        self.latent_sample = objective_config.latent_sample
        self.image_mean = list(objective_config.image_mean)
        self.image_std = list(objective_config.image_std)

    @property
    def num_channels(self) -> int:
        """Channels of a target token: `latent_channels * fold**2`."""
        return self.vae.config.latent_channels * self.fold**2

    @property
    def shift_factor(self) -> float:
        return self.vae.config.shift_factor or 0.0

    @property
    def scaling_factor(self) -> float:
        return self.vae.config.scaling_factor

    def preprocess(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tower-normalised images -> fp32 images in [-1, 1] of side `image_size`."""
        _check_pixel_values(pixel_values)
        images = _to_unit_range(pixel_values, self.image_mean, self.image_std) * 2.0 - 1.0
        return _resize(images, self.image_size).clamp(-1.0, 1.0)

    def _scaled_posterior(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Posterior mean and std of the scaled, shifted latents before folding, each
        (B, latent_channels, grid*fold, grid*fold), fp32, no graph; std is None with `latent_sample="mode"`."""
        with _frozen_fp32(pixel_values.device):
            return self._posterior(self.preprocess(pixel_values))

    def _posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """fp32 images in [-1, 1] -> scaled, shifted posterior mean and std (None with `latent_sample="mode"`)."""
        with _frozen_fp32(images.device):
            # If a training engine cast the VAE to bf16, compute in that dtype and return fp32.
            posterior = self.vae.encode(images.to(_parameter_dtype(self.vae))).latent_dist
            mean = (posterior.mean.float() - self.shift_factor) * self.scaling_factor
            std = posterior.std.float() * self.scaling_factor if self.latent_sample == "sample" else None
        return mean, std

    def encode_grid_distribution(self, images, grid):
        """`RossTeacher.encode_grid_distribution`: the image is resized to `(rows * 16, cols * 16)` px for a KL-16
        VAE (`rows * downsample * fold` in general; the f8 FLUX VAE with 2 x 2 folding: the same size)."""
        _check_pixel_values(images)
        rows, cols = grid
        side = self.downsample * self.fold
        with _frozen_fp32(images.device):
            resized = _resize(images.float() * 2.0 - 1.0, (rows * side, cols * side)).clamp(-1.0, 1.0)
            mean, std = self._posterior(resized)
        return _fold(mean, self.fold), None if std is None else _fold(std, self.fold)

    def encode_latents(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled, shifted latents before folding: (B, latent_channels, grid*fold, grid*fold), fp32, no graph.

        `(sample-or-mode - shift_factor) * scaling_factor`, the sample drawn as `mean + std * eps` in this layout.
        """
        return sample_targets(*self._scaled_posterior(pixel_values), generator)

    def encode_distribution(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The target distribution per token: folded posterior `mean` and `std` of the scaled, shifted latents, each
        (B, grid_size**2, num_channels) fp32; `std` is None with `latent_sample="mode"` (the target is the mean).

        Scaling and folding are affine / a permutation, so `mean + std * eps` here is distributed exactly as the
        folded `(posterior.sample() - shift_factor) * scaling_factor`.
        """
        mean, std = self._scaled_posterior(pixel_values)
        tokens = _fold(mean, self.fold)
        if tokens.shape[1] != self.grid_size**2:
            raise ValueError(
                f"VAE latent grid {mean.shape[-1] // self.fold} does not match the token grid {self.grid_size} "
                f"(image_size={self.image_size}, downsample={self.downsample}, fold={self.fold})."
            )
        return tokens, None if std is None else _fold(std, self.fold)

    def decode(self, tokens: torch.Tensor, clamp: bool = True, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N, num_channels) tokens -> (B, 3, image_size, image_size) fp32 images in [0, 1] (with `grid` =
        (rows, cols): (B, 3, rows * 16, cols * 16) for a KL-16 VAE).

        Unfolds, un-scales / un-shifts and runs the frozen VAE decoder. No parameter receives a gradient, but the
        graph to `tokens` is kept (the latent2pixel objective backpropagates through the decoder): wrap the call
        in `torch.no_grad()` for visualisation. `clamp=False` skips the final clamp, which would zero the gradient
        of out-of-range pixels.
        """
        if tokens.ndim != 3 or tokens.shape[-1] != self.num_channels:
            raise ValueError(
                f"Expected tokens of shape (batch, num_tokens, {self.num_channels}), got {tuple(tokens.shape)}."
            )
        latents = _unfold(tokens.float(), self.fold, grid) / self.scaling_factor + self.shift_factor
        with _frozen_fp32(tokens.device, keep_graph=True):
            images = self.vae.decode(latents.to(_parameter_dtype(self.vae))).sample.float()
        images = (images + 1.0) / 2.0
        return images.clamp(0.0, 1.0) if clamp else images


class RossPixelTeacher(RossTeacher):
    """Patchified RGB targets (ROSS^R-Pixel; pixel denoising with ROSS^D). No parameters.

    The image is de-normalised to [-1, 1], resized (bilinear, antialiased) to `grid_size * patch_size` and cut
    into `patch_size x patch_size` patches in raster order. Channel order inside a token is MAE's
    `(row, col, rgb)`: channel = (row * patch_size + col) * 3 + rgb. With `pixel_norm`, every patch is normalised
    to zero mean / unit variance over its 3 * patch_size**2 values (MAE's `norm_pix_loss`).
    """

    def __init__(self, objective_config: RossObjectiveConfig, grid_size: int):
        super().__init__()
        self.grid_size = grid_size
        self.patch_size = objective_config.pixel_patch_size
        self.image_size = grid_size * self.patch_size
        self.pixel_norm = objective_config.pixel_norm
        self.image_mean = list(objective_config.image_mean)
        self.image_std = list(objective_config.image_std)

    @property
    def num_channels(self) -> int:
        return 3 * self.patch_size**2

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, rows*P, cols*P) -> (B, rows*cols, P*P*3), channel order (row, col, rgb)."""
        batch_size, channels, height, width = images.shape
        p = self.patch_size
        rows, cols = height // p, width // p
        patches = images.reshape(batch_size, channels, rows, p, cols, p).permute(0, 2, 4, 3, 5, 1)
        return patches.reshape(batch_size, rows * cols, p * p * channels)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Inverse of `patchify`: (B, rows*cols, P*P*3) -> (B, 3, rows*P, cols*P); `grid` defaults to square."""
        batch_size, num_tokens, _ = tokens.shape
        p = self.patch_size
        rows, cols = grid if grid is not None else _square_grid(num_tokens)
        if rows * cols != num_tokens:
            raise ValueError(f"{num_tokens} tokens do not form a {rows}x{cols} grid.")
        images = tokens.reshape(batch_size, rows, cols, p, p, 3).permute(0, 5, 1, 3, 2, 4)
        return images.reshape(batch_size, 3, rows * p, cols * p)

    def encode_grid_distribution(self, images, grid):
        """`RossTeacher.encode_grid_distribution`: the image resized to `(rows * P, cols * P)` px and patchified."""
        _check_pixel_values(images)
        rows, cols = grid
        with _frozen_fp32(images.device):
            resized = _resize(images.float() * 2.0 - 1.0, (rows * self.patch_size, cols * self.patch_size))
            tokens = self.patchify(resized.clamp(-1.0, 1.0))
        if self.pixel_norm:
            mean, std = self.patch_statistics(tokens)
            tokens = (tokens - mean) / std
        return tokens, None

    def encode_distribution(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(B, 3, H, W) tower-normalised images -> ((B, grid_size**2, 3 * patch_size**2) fp32 targets in [-1, 1]
        (or per-patch normalised with `pixel_norm`), None): a deterministic target."""
        tokens = self.raw_patches(pixel_values)
        if self.pixel_norm:
            mean, std = self.patch_statistics(tokens)
            tokens = (tokens - mean) / std
        return tokens, None

    def raw_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Un-normalised patches in [-1, 1]: (B, grid_size**2, 3 * patch_size**2), fp32, no graph."""
        _check_pixel_values(pixel_values)
        with _frozen_fp32(pixel_values.device):
            images = _to_unit_range(pixel_values, self.image_mean, self.image_std) * 2.0 - 1.0
            return self.patchify(_resize(images, self.image_size).clamp(-1.0, 1.0))

    @staticmethod
    def patch_statistics(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch mean and std (MAE's `norm_pix_loss`: unbiased variance, eps 1e-6), each (B, N, 1)."""
        return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + 1e-6) ** 0.5

    def decode(
        self, tokens: torch.Tensor, pixel_values: torch.Tensor | None = None, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """(B, N, 3 * patch_size**2) tokens -> (B, 3, image_size, image_size) fp32 images in [0, 1].

        Without `pixel_norm` this inverts `forward` exactly (up to the resize). With `pixel_norm`, the per-patch
        mean and variance are lost: if `pixel_values` (the images the targets came from) are given, their patch
        statistics are put back; otherwise the normalised patches are only mapped for display (+-2 std -> [0, 1]).
        The graph to `tokens` is kept (the output is clamped to [0, 1]).
        """
        tokens = tokens.float()
        if self.pixel_norm and pixel_values is not None:
            mean, std = self.patch_statistics(self.raw_patches(pixel_values))
            tokens = tokens * std + mean
        elif self.pixel_norm:
            return ((self.unpatchify(tokens, grid) + 2.0) / 4.0).clamp(0.0, 1.0)
        return ((self.unpatchify(tokens, grid) + 1.0) / 2.0).clamp(0.0, 1.0)


class RossFeatureTeacher(RossTeacher):
    """Features of a frozen transformers vision model (ROSS^R-Latent / ROSS^D with a DINOv2, DeiT, CLIP ... teacher).

    The image is re-normalised from the tower's normalisation to the teacher's (`teacher_image_mean/std`), resized
    (bilinear, antialiased) to `teacher_image_size`, and `hidden_states[feature_layer]` is taken (for most models
    these are the encoder outputs before the final layer norm). Prefix tokens (CLS, register, distillation tokens)
    are dropped by comparing the token count with the patch grid, and the patch features are bilinearly
    interpolated to `grid_size x grid_size`.
    """

    def __init__(self, objective_config: RossObjectiveConfig, grid_size: int):
        super().__init__()
        teacher_config = dict(objective_config.teacher_config or {})
        if "model_type" not in teacher_config:
            raise ValueError(
                "target='features' needs `objective_config.teacher_config` with a `model_type` (a transformers vision "
                "model config); fill it with `load_teacher_source`."
            )
        self.model = AutoModel.from_config(AutoConfig.for_model(**teacher_config))
        config = self.model.config
        self.grid_size = grid_size
        self.feature_layer = objective_config.feature_layer
        self.image_size = objective_config.teacher_image_size or _as_int(config.image_size)
        self.patch_size = _as_int(config.patch_size)
        if objective_config.teacher_image_mean is None or objective_config.teacher_image_std is None:
            raise ValueError(
                "target='features' needs `teacher_image_mean` and `teacher_image_std` (from the teacher's image "
                "processor; `load_teacher_source` returns them)."
            )
        self.teacher_mean = list(objective_config.teacher_image_mean)
        self.teacher_std = list(objective_config.teacher_image_std)
        self.image_mean = list(objective_config.image_mean)
        self.image_std = list(objective_config.image_std)

    @property
    def num_channels(self) -> int:
        return self.model.config.hidden_size

    def preprocess(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tower-normalised images -> fp32 images normalised for the teacher, of side `teacher_image_size`."""
        _check_pixel_values(pixel_values)
        images = _resize(_to_unit_range(pixel_values, self.image_mean, self.image_std), self.image_size)
        return (images - _channel_stats(self.teacher_mean, images)) / _channel_stats(self.teacher_std, images)

    def encode_distribution(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(B, 3, H, W) tower-normalised images -> ((B, grid_size**2, hidden_size) fp32 features, None): a
        deterministic target."""
        with _frozen_fp32(pixel_values.device):
            images = self.preprocess(pixel_values)
            outputs = self.model(pixel_values=images.to(_parameter_dtype(self.model)), output_hidden_states=True)
            features = outputs.hidden_states[self.feature_layer].float()
            patch_grid = self.image_size // self.patch_size
            num_prefix = features.shape[1] - patch_grid**2
            if num_prefix < 0:
                raise ValueError(
                    f"The teacher returned {features.shape[1]} tokens, fewer than its {patch_grid}x{patch_grid} "
                    f"patch grid (image_size={self.image_size}, patch_size={self.patch_size})."
                )
            features = features[:, num_prefix:]
            batch_size, _, channels = features.shape
            if patch_grid != self.grid_size:
                features = features.transpose(1, 2).reshape(batch_size, channels, patch_grid, patch_grid)
                features = _resize(features, self.grid_size, antialias=False).flatten(2).transpose(1, 2)
        return features, None


def _as_int(value) -> int:
    """`image_size` / `patch_size` may be an int or a (height, width) pair; teachers use square inputs."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)


# ---------------------------------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------------------------------


_TEACHER_CLASSES = {"vae": RossVaeTeacher, "pixel": RossPixelTeacher, "features": RossFeatureTeacher}


def build_teacher(objective_config: RossObjectiveConfig, grid_size: int) -> nn.Module | None:
    """The frozen teacher of `objective_config.target`, built from config only (random weights until loaded).

    Returns `None` when the objective is disabled. Does not call `protect_from_init`: the caller does once the
    weights are in place.
    """
    if not objective_config.enabled:
        return None
    return freeze(_TEACHER_CLASSES[objective_config.target](objective_config, grid_size))


def non_persistent_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers of `module` that its state dict leaves out (e.g. SigLIP / CLIP `embeddings.position_ids`)."""
    return {
        f"{prefix}.{name}" if prefix else name: buffer
        for prefix, submodule in module.named_modules()
        for name, buffer in submodule.named_buffers(recurse=False)
        if name in submodule._non_persistent_buffers_set
    }


def restore_non_persistent_buffers(
    teacher: nn.Module, objective_config: RossObjectiveConfig, grid_size: int
) -> nn.Module:
    """Copy into a loaded `teacher` the non-persistent buffers of a freshly built one. No-op for a teacher without
    any (the VAE, pixel and DINOv2 teachers).

    transformers 5's `from_pretrained` builds the model on the meta device, replaces every non-persistent buffer by
    uninitialised memory and leaves it to `_init_weights` to fill (`_move_missing_keys_from_meta_to_device`,
    `_initialize_missing_keys`). That skips the teacher (`protect_from_init`), and no checkpoint holds these buffers.
    The fresh copy has its parameters on the meta device: only its buffers are computed (by its constructor and its
    model's own `_init_weights`), which costs a fraction of a second for a SigLIP-so400m, and no init code ever runs
    on the loaded weights.
    """
    buffers = non_persistent_buffers(teacher)
    # ZeRO-3 builds the model on the real device and keeps the buffers its constructor computed.
    if not buffers or is_deepspeed_zero3_enabled():
        return teacher
    if init_empty_weights is None:
        raise ImportError(f"Restoring the teacher's buffers {sorted(buffers)} needs accelerate.")
    with init_empty_weights(include_buffers=False):
        fresh = non_persistent_buffers(build_teacher(objective_config, grid_size))
    with torch.no_grad():
        for name, buffer in buffers.items():
            buffer.copy_(fresh[name])
    return teacher


__all__ = [
    "RossFeatureTeacher",
    "RossPixelTeacher",
    "RossTeacher",
    "RossVaeTeacher",
    "build_teacher",
    "freeze",
    "non_persistent_buffers",
    "protect_from_init",
    "restore_non_persistent_buffers",
    "sample_targets",
]
