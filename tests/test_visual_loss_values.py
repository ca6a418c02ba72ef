"""The value of the visual loss, recomputed independently in plain torch for every objective.

The model's `visual_loss` (the training forward, `compute_visual_loss`) must equal a reference built here from the
same pieces a reader can check by hand: the visual outputs gathered row by row at the image tokens, the frozen
teacher's targets, the iDDPM cosine schedule written out, the same seeded noise and timesteps, condition and target
tiled `num_noise_draws` times along the batch, epsilon or velocity targets, MSE / cosine / decoded-pixel MSE.
The teacher's maths and the denoiser's forward have their own reference tests (test_teacher.py, test_denoiser.py).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_ross import from_components


TINY = {"denoiser_hidden_size": 32, "denoiser_depth": 1, "denoiser_num_heads": 4}
SPECS = [[1], [], [2, 3]]  # images per sample: a text-only sample in the middle, two images in the last


def _image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.NEAREST)


def _batch(processor, specs=SPECS):
    texts, images = [], []
    for seeds in specs:
        content = [{"type": "image"} for _ in seeds] + [{"type": "text", "text": "Describe."}]
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": "a red disc"}]
        texts.append(processor.apply_chat_template(messages, tokenize=False))
        images += [_image(seed) for seed in seeds]
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def _model(components, **settings):
    torch.manual_seed(0)
    model = from_components(**components, **{**TINY, **settings})
    with torch.no_grad():  # a trained-looking head: the fresh DiT outputs exact zeros (adaLN-Zero)
        generator = torch.Generator().manual_seed(1)
        for param in model.denoiser.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.train()


def cosine_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """iDDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas capped at 0.999, in float64."""
    abar = lambda t: math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = torch.tensor([min(1 - abar(i + 1) / abar(i), 0.999) for i in range(steps)], dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def gather_visual_outputs(model, batch) -> torch.Tensor:
    """(num_images, N, D): final-norm hidden states at the image tokens, row by row, images in order."""
    with torch.no_grad():
        hidden = model.model(
            input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    n = model.config.image_seq_length
    images = []
    for row, ids in zip(hidden, batch["input_ids"]):
        positions = (ids == model.config.image_token_id).nonzero().flatten()
        for k in range(0, len(positions), n):
            images.append(row[positions[k : k + n]])
    return torch.stack(images)


def reference_visual_loss(model, batch, seed: int, *, tile: bool = True) -> torch.Tensor:
    config = model.config.objective_config
    condition = gather_visual_outputs(model, batch)
    with torch.no_grad():
        target = model.teacher(batch["pixel_values"]).float()  # (M, N, C), posterior mode: deterministic
        if config.objective == "regress":
            prediction = model.denoiser(condition).float()
            if config.regress_loss == "cosine":
                return (1 - F.cosine_similarity(prediction, target, dim=-1)).mean()
            return ((prediction - target) ** 2).mean()
        if config.objective == "latent2pixel":
            pixels = model.teacher.decode(model.denoiser(condition).float(), clamp=False)
            mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
            std = torch.tensor(config.image_std).view(1, 3, 1, 1)
            image = (batch["pixel_values"] * std + mean).clamp(0, 1)  # the tower's input, back in [0, 1]
            image = F.interpolate(image, size=pixels.shape[-1], mode="bilinear", antialias=True, align_corners=False)
            return ((pixels - image) ** 2).mean()
        # ROSS^D: the same draws, in the same order, as the model (noise first, then timesteps).
        draws = config.num_noise_draws
        repeat = (lambda x: torch.cat([x] * draws)) if tile else (lambda x: x.repeat_interleave(draws, dim=0))
        torch.manual_seed(seed)
        noise = torch.randn((draws * target.shape[0], *target.shape[1:]))
        timesteps = torch.randint(0, 1000, (draws * target.shape[0],))
        abar = cosine_alphas_cumprod()[timesteps].float().view(-1, 1, 1)
        clean = repeat(target)
        noisy = abar.sqrt() * clean + (1 - abar).sqrt() * noise
        goal = noise if config.prediction_type == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * clean
        prediction = model.denoiser(noisy, timesteps, repeat(condition)).float()
        return ((prediction - goal) ** 2).mean()


CASES = [
    dict(objective="denoise", target="vae", num_noise_draws=4),  # ROSS^D, the paper's default
    dict(objective="denoise", target="vae", num_noise_draws=3, prediction_type="v_prediction"),
    dict(objective="denoise", target="pixel", pixel_patch_size=4, num_noise_draws=2),  # pixel denoising
    dict(objective="regress", target="pixel", pixel_patch_size=4),  # ROSS^R-Pixel, MSE
    dict(objective="regress", target="vae"),  # ROSS^R-Latent, cosine
    dict(objective="regress", target="vae", regress_loss="mse"),
    dict(objective="latent2pixel", target="vae"),  # ROSS^R-Latent2Pixel
]


@pytest.mark.parametrize("settings", CASES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_visual_loss_equals_an_independent_computation(tiny_components, tiny_processor, settings):
    model = _model(tiny_components, latent_sample="mode", **settings)
    batch = _batch(tiny_processor)
    assert batch["pixel_values"].shape[0] == 3
    torch.manual_seed(123)
    with torch.no_grad():
        out = model(**batch)
    expected = reference_visual_loss(model, batch, seed=123)
    assert expected > 1e-4
    torch.testing.assert_close(out.visual_loss, expected.float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.loss, out.text_loss + out.visual_loss, rtol=1e-6, atol=1e-7)
    if settings["objective"] == "denoise":
        # The pairing of noise draws matters: interleaving condition and target instead of tiling them is caught.
        interleaved = reference_visual_loss(model, batch, seed=123, tile=False)
        mismatch, match = (interleaved.float() - out.visual_loss).abs(), (expected.float() - out.visual_loss).abs()
        assert mismatch > 1e-5 and mismatch > 50 * match, (mismatch, match)


def test_regress_head_uses_torch_default_init(tiny_components):
    """The ROSS^R head gets torch's Linear init (as the authors' inverse projector), not transformers' N(0, 0.02)."""
    torch.manual_seed(0)
    model = from_components(**tiny_components, objective="regress", target="vae")
    fc1 = model.denoiser.fc1.weight
    bound = 1 / math.sqrt(fc1.shape[1])  # kaiming_uniform(a=sqrt(5)) on fan_in
    assert fc1.abs().max() <= bound and fc1.abs().max() > 0.9 * bound
    assert model.denoiser.fc1.bias.abs().max() > 0  # torch's init gives the bias values too (transformers: zeros)


@pytest.mark.parametrize("weights", ["fp32-autocast-bf16", "bf16"])
def test_bf16_losses_are_close_to_fp32_and_the_visual_loss_runs_in_fp32(tiny_components, tiny_processor, weights):
    """Trainer bf16 without DeepSpeed (fp32 weights + bf16 autocast) and bf16 weights (as under DeepSpeed bf16)."""
    model = _model(tiny_components, num_noise_draws=4)
    batch = _batch(tiny_processor)
    torch.manual_seed(7)
    with torch.no_grad():
        reference = model(**batch)

    dtypes = []
    hook = model.denoiser.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    if weights == "bf16":
        model.to(torch.bfloat16)
        context = torch.autocast("cpu", enabled=False)
    else:
        context = torch.autocast("cpu", dtype=torch.bfloat16)
    torch.manual_seed(7)
    with torch.no_grad(), context:
        low = model(**batch)
    hook.remove()
    assert dtypes == [torch.float32]  # the denoiser's maths in fp32, as the authors' fp32 autocast
    assert low.visual_loss.dtype == torch.float32
    torch.testing.assert_close(low.text_loss.float(), reference.text_loss, rtol=3e-2, atol=0)
    torch.testing.assert_close(low.visual_loss, reference.visual_loss, rtol=3e-2, atol=0)
