"""The ROSS visual loss: one `nn.Module` per reconstructive objective, as MAR's `DiffLoss`.

visual outputs x (LLM hidden states at the image positions: the last ones, or `condition_layer`'s)
-> frozen teacher targets z0 = F(image) -> repeat for several noise draws -> z_t = add_noise(z0, eps, t)
-> denoiser(z_t, t, x) -> MSE to eps.
ROSS^R variants replace the denoiser by an MLP head that regresses z0 (`regress`) or the decoded image
(`latent2pixel`) directly.

Each objective has `forward(visual_outputs, pixel_values, teacher_targets, ...) -> loss` and `sample(condition, ...)`
-> target tokens, and owns its noise schedule and which head it trains (`build_head`). It holds no parameters: the
trained head and the frozen teacher are the model's children `denoiser` and `teacher` (checkpoint keys `denoiser.*`
and `teacher.*`) and are passed in at each call. Holding them here as well would either duplicate their state-dict
entries or go stale when a wrapper replaces the model's child (PEFT's `modules_to_save` swaps `model.denoiser` for
a trainable copy).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_ross import RossConfig
from .denoiser import RossDenoiser, RossMLPHead, _require_diffusers, build_noise_scheduler, sample_tokens
from .teacher import sample_targets


try:  # optional, as in denoiser.py: only sampling with a named scheduler needs it here
    from diffusers import DDIMScheduler, DDPMScheduler
except ImportError:  # pragma: no cover - depends on the environment
    DDIMScheduler = DDPMScheduler = None


class RossObjective(nn.Module):
    """
    The visual loss shared by every objective: targets from the frozen teacher (or the latent cache), and the
    zero-weight pass for a batch without images. Subclasses define `build_head`, `target` (if not the teacher's
    tokens), `loss` and `sample`.
    """

    def __init__(self, config: RossConfig):
        super().__init__()
        self.objective_config = config.objective_config
        self.image_size = config.vision_config.image_size
        self.image_seq_length = config.image_seq_length
        self.condition_size = config.text_config.hidden_size
        self.grid_size = config.grid_size

    def build_head(self, num_channels: int) -> nn.Module:
        """The trained module (the model's `denoiser`) predicting `num_channels`-wide target tokens."""
        raise NotImplementedError

    def forward(
        self,
        visual_outputs: torch.Tensor | None,
        pixel_values: torch.Tensor | None = None,
        teacher_targets: dict | tuple | None = None,
        *,
        denoiser: nn.Module,
        teacher: nn.Module,
        hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            visual_outputs: `(num_images, N, D)`, or None when the batch has no image.
            pixel_values: `(num_images, 3, H, W)` or None.
            teacher_targets: optional cached teacher outputs (`train/latent_cache.py`): `{"mean", "std"}` or a
                `(mean, std)` pair, each `(num_images, N, C)` in `pixel_values` order, `std` None / absent for a
                deterministic target. The teacher is then not run: the target is drawn as `mean + std * eps`,
                exactly as the teacher's `forward` draws it.
            denoiser, teacher: the model's trained head and frozen teacher.
            hidden_states: `(batch_size, seq_len, D)`, only used to keep a batch without images in the graph.
        Returns:
            The visual loss `()` in fp32, averaged over images. Text-only samples contribute nothing (they have no
            image); a batch without any image still runs teacher and denoiser on a grey dummy image and returns
            `0 * loss`, so every rank calls the same modules (DeepSpeed ZeRO-3 / DDP would otherwise hang or error).
            With `teacher_targets` (also given, empty, for a batch without images) the teacher is never called and
            the dummy target is zeros: consistent on every rank as long as all ranks use the cache, which the run
            config ensures.
        """
        has_images = visual_outputs is not None
        if not has_images:  # every rank must run the same modules: a grey image, at zero weight
            pixel_values = self.grey_image(hidden_states.device)
            visual_outputs = hidden_states[:1, :1].expand(1, self.image_seq_length, -1) * 0.0
        target = self.target(teacher, pixel_values, teacher_targets, visual_outputs, has_images)
        if self.objective_config.shuffle_condition:  # the matched control: every image gets another one's condition
            visual_outputs = shuffle_across_images(visual_outputs)
        loss = self.loss(denoiser, teacher, visual_outputs, target)
        return loss if has_images else loss * 0.0

    def grey_image(self, device: torch.device) -> torch.Tensor:
        """`(1, 3, S, S)`: mid-grey, normalised as the vision tower's inputs."""
        mean = torch.tensor(self.objective_config.image_mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.objective_config.image_std, device=device).view(1, 3, 1, 1)
        return ((0.5 - mean) / std).expand(1, 3, self.image_size, self.image_size)

    def target(self, teacher, pixel_values, teacher_targets, visual_outputs, has_images) -> torch.Tensor:
        """The clean target tokens z0 `(num_images, N, C)` in fp32: the frozen teacher's, or drawn from the cache."""
        if teacher_targets is None:
            with torch.no_grad():
                return teacher(pixel_values).float()
        num_channels = teacher.num_channels
        if not has_images:
            return visual_outputs.new_zeros(1, self.image_seq_length, num_channels, dtype=torch.float32)
        expected = (visual_outputs.shape[0], self.image_seq_length, num_channels)
        return cached_targets(teacher_targets, expected, visual_outputs.device)

    def loss(self, denoiser, teacher, condition, target) -> torch.Tensor:
        """`condition` `(M, N, D)`, `target` `(M, N, C)` -> the loss `()` in fp32."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, condition: torch.Tensor, *, denoiser: nn.Module, teacher: nn.Module, **kwargs) -> torch.Tensor:
        """Target tokens `(M, N, C)` predicted from the visual outputs `condition` `(M, N, D)`. ROSS^R: the head."""
        return denoiser(condition).float()


class RossDenoisingObjective(RossObjective):
    """ROSS^D: epsilon (or v) prediction of the noised teacher tokens, conditioned token by token on the visual outputs."""

    def __init__(self, config: RossConfig):
        super().__init__(config)
        # Not an nn.Module: keep its tables off the meta device `from_pretrained` builds the model on.
        with torch.device("cpu"):
            self.noise_scheduler = build_noise_scheduler(self.objective_config)

    def build_head(self, num_channels: int) -> nn.Module:
        config = self.objective_config
        return RossDenoiser(
            in_channels=num_channels,
            condition_size=self.condition_size,
            hidden_size=config.denoiser_hidden_size,
            depth=config.denoiser_depth,
            num_heads=config.denoiser_num_heads,
            mlp_ratio=config.denoiser_mlp_ratio,
            grid_size=self.grid_size,
            self_attention=config.denoiser_self_attention,
            position_embedding=config.denoiser_position_embedding,
            compute_dtype=config.compute_dtype,
        )

    def loss(self, denoiser, teacher, condition, target, generator=None) -> torch.Tensor:
        """
        Args:
            condition: `(M, N, D)` visual outputs.  target: `(M, N, C)` clean teacher tokens z0.
        `num_noise_draws` noise draws per image (reference: 4): condition and target are tiled along the batch.
        """
        scheduler, num_draws = self.noise_scheduler, self.objective_config.num_noise_draws
        condition = condition.repeat(num_draws, 1, 1)
        target = target.repeat(num_draws, 1, 1)
        noise = torch.randn(target.shape, generator=generator, device=target.device, dtype=target.dtype)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (target.shape[0],), generator=generator, device=target.device
        )
        noisy = scheduler.add_noise(target, noise, timesteps)
        prediction = denoiser(noisy, timesteps, condition).float()  # the denoiser casts to its compute dtype
        if scheduler.config.prediction_type == "epsilon":
            goal = noise
        else:
            goal = scheduler.get_velocity(target, noise, timesteps)
        return F.mse_loss(prediction, goal)

    @torch.no_grad()
    def sample(self, condition, *, denoiser, teacher, num_inference_steps=50, scheduler="ddim", generator=None):
        """
        Reverse diffusion from noise to target tokens `(M, N, C)`, conditioned on `condition` `(M, N, D)`.
        `scheduler`: `"ddpm"`, `"ddim"` (sharing the training schedule) or any diffusers scheduler instance.
        """
        if isinstance(scheduler, str):
            scheduler = make_sampling_scheduler(self.noise_scheduler, scheduler)
        return sample_tokens(
            denoiser,
            condition,
            teacher.num_channels,
            scheduler=scheduler,
            num_inference_steps=num_inference_steps,
            generator=generator,
        )


class RossRegressionObjective(RossObjective):
    """ROSS^R-Pixel / ROSS^R-Latent: an MLP head regresses the teacher tokens (MSE or cosine)."""

    def build_head(self, num_channels: int) -> nn.Module:
        config = self.objective_config
        hidden_size = config.head_hidden_size or self.condition_size
        return RossMLPHead(self.condition_size, num_channels, hidden_size, compute_dtype=config.compute_dtype)

    def loss(self, denoiser, teacher, condition, target) -> torch.Tensor:
        prediction = denoiser(condition).float()
        if self.objective_config.regress_loss == "cosine":
            return (1 - F.cosine_similarity(prediction, target, dim=-1)).mean()
        return F.mse_loss(prediction, target)


class RossLatentToPixelObjective(RossRegressionObjective):
    """ROSS^R-Latent2Pixel: the head's latents go through the frozen VAE decoder and are compared with the image."""

    def target(self, teacher, pixel_values, teacher_targets, visual_outputs, has_images) -> torch.Tensor:
        """The image `(M, 3, S, S)` in [0, 1], as the VAE sees it (pixels, not teacher tokens: nothing to cache)."""
        if teacher_targets is not None:
            raise ValueError("objective='latent2pixel' compares pixels, not teacher tokens: no latent cache.")
        with torch.no_grad():
            return (teacher.preprocess(pixel_values) + 1) / 2

    def loss(self, denoiser, teacher, condition, target) -> torch.Tensor:
        # Gradients flow through the frozen decoder to the head.
        prediction = teacher.decode(denoiser(condition).float(), clamp=False)  # (M, 3, S, S)
        return F.mse_loss(prediction.float(), target)


OBJECTIVES = {
    "denoise": RossDenoisingObjective,
    "regress": RossRegressionObjective,
    "latent2pixel": RossLatentToPixelObjective,
}


def build_objective(config: RossConfig) -> RossObjective:
    """The objective module named by `config.objective_config.objective` (not for `"none"`)."""
    name = config.objective_config.objective
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}.")
    return OBJECTIVES[name](config)


def cached_targets(teacher_targets, expected: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """Target tokens `expected = (num_images, N, C)` drawn from cached `(mean, std)`.

    Shapes are checked against the batch (one entry per image, in `pixel_values` order) and the teacher's token grid.
    """
    if isinstance(teacher_targets, dict):
        mean, std = teacher_targets["mean"], teacher_targets.get("std")
    else:
        mean, std = teacher_targets
    for name, value in (("mean", mean), ("std", std)):
        if value is not None and tuple(value.shape) != expected:
            raise ValueError(
                f"teacher_targets[{name!r}] has shape {tuple(value.shape)}, expected {expected} (images in the "
                "batch, tokens per image, teacher channels); the latent cache was built for other settings or the "
                "collator's images are out of order."
            )
    return sample_targets(mean.to(device).float(), None if std is None else std.to(device).float())


def shuffle_across_images(visual_outputs: torch.Tensor) -> torch.Tensor:
    """`(M, N, D)` -> the same with image i's rows moved to image (i + 1) mod M: no image keeps its own condition
    (for M > 1; a batch of one image has nothing to swap with and is returned as is)."""
    return visual_outputs.roll(1, dims=0)


def make_sampling_scheduler(train_scheduler, name: str):
    """A diffusers sampler sharing the training schedule: `"ddpm"` or `"ddim"` (deterministic, few steps)."""
    _require_diffusers("make_sampling_scheduler")
    classes = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
    if name not in classes:
        raise ValueError(f"scheduler must be one of {sorted(classes)} or a diffusers scheduler, got {name!r}")
    return classes[name].from_config(train_scheduler.config)


def grid_denoising_loss(
    denoiser: nn.Module,
    scheduler,
    conditions: list[torch.Tensor],
    targets: list[torch.Tensor],
    grids: list[tuple[int, int]],
    num_draws: int,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ROSS^D's loss for images whose token grids differ (native VLMs): one padded denoiser call with a key mask.

    Args:
        conditions: per image `(N_i, D)` visual outputs, `N_i = rows_i * cols_i`.
        targets: per image `(N_i, C)` clean teacher tokens, on the same grid.
        grids: per image `(rows_i, cols_i)`.
        num_draws: noise draws per image (rows are tiled draw-major, as `condition.repeat(num_draws, 1, 1)`).
        noise, timesteps: `(num_draws * M, max N_i, C)` and `(num_draws * M,)`, drawn here when not given (tests
            pass them to compare with the per-image computation).
    Returns:
        `()` fp32: the mean over images of each image's mean squared error over its draws, tokens and channels (with
        equal grids, exactly `F.mse_loss` of the fixed-grid path). Padding contributes nothing.
    """
    num_images = len(conditions)
    lengths = [rows * cols for rows, cols in grids]
    if [c.shape[0] for c in conditions] != lengths or [t.shape[0] for t in targets] != lengths:
        raise ValueError(
            f"conditions {[c.shape[0] for c in conditions]} / targets {[t.shape[0] for t in targets]} tokens per "
            f"image do not match the grids {grids} ({lengths} tokens)."
        )
    max_tokens = max(lengths)
    condition = _pad_rows(conditions, max_tokens).repeat(num_draws, 1, 1)
    target = _pad_rows([t.float() for t in targets], max_tokens).repeat(num_draws, 1, 1)
    row_grids = list(grids) * num_draws
    if noise is None:
        noise = torch.randn(target.shape, generator=generator, device=target.device, dtype=target.dtype)
    if timesteps is None:
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (target.shape[0],), generator=generator, device=target.device
        )
    noisy = scheduler.add_noise(target, noise, timesteps)
    prediction = denoiser(noisy, timesteps, condition, grid_sizes=row_grids).float()
    goal = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(target, noise, timesteps)
    token_mask = torch.zeros(target.shape[:2], dtype=torch.float32, device=target.device)
    for row, length in enumerate(lengths * num_draws):
        token_mask[row, :length] = 1.0
    squared = ((prediction - goal) ** 2).mean(-1) * token_mask  # (rows, N): per-token mean over channels
    per_image = squared.view(num_draws, num_images, max_tokens).sum(dim=(0, 2))
    per_image = per_image / (torch.tensor(lengths, device=target.device, dtype=torch.float32) * num_draws)
    return per_image.mean()


def _pad_rows(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """`[(N_i, X)]` -> `(M, length, X)`, zeros after each row's tokens."""
    return torch.stack([F.pad(row, (0, 0, 0, length - row.shape[0])) for row in rows])


__all__ = [
    "RossDenoisingObjective",
    "RossLatentToPixelObjective",
    "RossObjective",
    "RossRegressionObjective",
    "build_objective",
    "grid_denoising_loss",
    "shuffle_across_images",
]
