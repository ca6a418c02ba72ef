"""The ROSS visual loss, in one screen.

visual outputs x (LLM last hidden states at the image positions) -> frozen teacher targets z0 = F(image)
-> repeat for several noise draws -> z_t = add_noise(z0, eps, t) -> denoiser(z_t, t, x) -> MSE to eps.
ROSS^R variants replace the denoiser by an MLP head that regresses z0 directly.
"""

import torch
import torch.nn.functional as F

from .teacher import sample_targets


def compute_visual_loss(model, visual_outputs, pixel_values, hidden_states, teacher_targets=None):
    """
    Args:
        model: a `RossForConditionalGeneration` with `teacher`, `denoiser` (and `noise_scheduler` for "denoise").
        visual_outputs: `(num_images, N, D)` or None when the batch has no image.
        pixel_values: `(num_images, 3, H, W)` or None.
        hidden_states: `(batch_size, seq_len, D)`, used only to keep a batch without images connected to the graph.
        teacher_targets: optional cached teacher outputs (`train/latent_cache.py`): `{"mean", "std"}` or a
            `(mean, std)` pair, each `(num_images, N, C)` in `pixel_values` order, `std` None / absent for a
            deterministic target. The teacher is then not run: the target is drawn as `mean + std * eps`, exactly
            as the teacher's `forward` draws it.
    Returns:
        The visual loss `()` in fp32, averaged over images. Text-only samples contribute nothing (they have no image);
        a batch without any image still runs teacher and denoiser on a grey dummy image and returns `0 * loss`, so
        every rank calls the same modules (DeepSpeed ZeRO-3 / DDP would otherwise hang or error). With
        `teacher_targets` (also given, empty, for a batch without images) the teacher is never called and the dummy
        target is zeros: consistent on every rank as long as all ranks use the cache, which the run config ensures.
    """
    config = model.config.objective_config
    has_images = visual_outputs is not None
    if not has_images:
        size = model.config.vision_config.image_size
        mean = torch.tensor(config.image_mean, device=hidden_states.device).view(1, 3, 1, 1)
        std = torch.tensor(config.image_std, device=hidden_states.device).view(1, 3, 1, 1)
        pixel_values = ((0.5 - mean) / std).expand(1, 3, size, size)  # a grey image
        visual_outputs = hidden_states[:1, :1].expand(1, model.config.image_seq_length, -1) * 0.0

    if teacher_targets is not None:
        if config.objective == "latent2pixel":
            raise ValueError("objective='latent2pixel' compares pixels, not teacher tokens: no latent cache.")
        target = cached_targets(model, teacher_targets, visual_outputs if has_images else None, hidden_states)
    else:
        with torch.no_grad():
            target = model.teacher(pixel_values).float()  # (num_images, N, C), frozen

    if config.objective == "denoise":
        loss = denoising_loss(model.denoiser, model.noise_scheduler, visual_outputs, target, config.num_noise_draws)
    elif config.objective == "regress":
        prediction = model.denoiser(visual_outputs).float()
        if config.regress_loss == "cosine":
            loss = (1 - F.cosine_similarity(prediction, target, dim=-1)).mean()
        else:
            loss = F.mse_loss(prediction, target)
    elif config.objective == "latent2pixel":
        # The frozen VAE decoder turns predicted latents into pixels; gradients flow through it to the head.
        prediction = model.teacher.decode(model.denoiser(visual_outputs).float(), clamp=False)  # (M, 3, S, S)
        with torch.no_grad():
            image = (model.teacher.preprocess(pixel_values) + 1) / 2  # the VAE's input, in [0, 1]
        loss = F.mse_loss(prediction.float(), image)
    else:
        raise ValueError(f"Unknown objective {config.objective!r}")
    return loss if has_images else loss * 0.0


def cached_targets(model, teacher_targets, visual_outputs, hidden_states) -> torch.Tensor:
    """Target tokens `(num_images, N, C)` drawn from cached `(mean, std)`; zeros `(1, N, C)` for a batch without images.

    Shapes are checked against the batch (one entry per image, in `pixel_values` order) and the teacher's token grid.
    """
    if isinstance(teacher_targets, dict):
        mean, std = teacher_targets["mean"], teacher_targets.get("std")
    else:
        mean, std = teacher_targets
    num_tokens, num_channels = model.config.image_seq_length, model.teacher.num_channels
    if visual_outputs is None:
        return hidden_states.new_zeros(1, num_tokens, num_channels, dtype=torch.float32)
    expected = (visual_outputs.shape[0], num_tokens, num_channels)
    for name, value in (("mean", mean), ("std", std)):
        if value is not None and tuple(value.shape) != expected:
            raise ValueError(
                f"teacher_targets[{name!r}] has shape {tuple(value.shape)}, expected {expected} (images in the "
                "batch, tokens per image, teacher channels); the latent cache was built for other settings or the "
                "collator's images are out of order."
            )
    device = visual_outputs.device
    return sample_targets(mean.to(device).float(), None if std is None else std.to(device).float())


def denoising_loss(denoiser, scheduler, condition, target, num_draws: int, generator=None):
    """
    ROSS^D: epsilon (or v) prediction of the frozen targets, conditioned token-by-token on the visual outputs.

    Args:
        condition: `(M, N, D)` visual outputs.  target: `(M, N, C)` clean teacher tokens z0.
        num_draws: noise draws per image (reference: 4); condition and target are repeated along the batch.
    """
    condition = condition.repeat(num_draws, 1, 1)
    target = target.repeat(num_draws, 1, 1)
    noise = torch.randn(target.shape, generator=generator, device=target.device, dtype=target.dtype)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (target.shape[0],), generator=generator, device=target.device
    )
    noisy = scheduler.add_noise(target, noise, timesteps)
    prediction = denoiser(noisy, timesteps, condition).float()  # the denoiser casts to its compute dtype
    goal = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(target, noise, timesteps)
    return F.mse_loss(prediction, goal)


@torch.no_grad()
def reconstruct_tokens(model, condition, num_inference_steps, scheduler, generator):
    """Target tokens `(M, N, C)` predicted from the visual outputs `(M, N, D)`: sampling for ROSS^D, the head for ROSS^R."""
    from .denoiser import sample_tokens

    config = model.config.objective_config
    if config.objective != "denoise":
        return model.denoiser(condition).float()
    if isinstance(scheduler, str):
        scheduler = make_sampling_scheduler(model.noise_scheduler, scheduler)
    return sample_tokens(
        model.denoiser,
        condition,
        model.teacher.num_channels,
        scheduler=scheduler,
        num_inference_steps=num_inference_steps,
        generator=generator,
    )


def make_sampling_scheduler(train_scheduler, name: str):
    """A diffusers sampler sharing the training schedule: `"ddpm"` or `"ddim"` (deterministic, few steps)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    classes = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
    if name not in classes:
        raise ValueError(f"scheduler must be one of {sorted(classes)} or a diffusers scheduler, got {name!r}")
    return classes[name].from_config(train_scheduler.config)
