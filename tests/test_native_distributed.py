"""`train/sft.py` runs of native VLMs (`RossForPreTraining`) that must equal a reference run: gradient accumulation
(one large batch) and kill -9 resume (DeepSpeed with a text-only rank: tests/test_native_deepspeed.py); for
Qwen2.5-VL, Qwen3-VL, llava-hf Llava, LLaVA-OneVision, Gemma 3 and SmolVLM (tiny random-weight configs, offline). See
docs/native-vlms.md."""

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from modeling_ross.modeling_ross_pretraining import HEAD_FOLDER
from modeling_ross.objective import grid_denoising_loss
from tests.native_sft import (
    ARCHITECTURES,
    MORE_ARCHITECTURES,
    assert_same_saved_weights,
    images_counted,
    run_sft_process,
    save_base,
    sft_argv,
    write_native_data,
    write_sft_script,
)


# ---- gradient accumulation == one large batch ----


def noise_keyed_by_image(denoiser, scheduler, conditions, targets, grids, num_draws, **kwargs):
    """`grid_denoising_loss` with each image's noise draws and timesteps drawn from a generator seeded by the image's
    own target tokens. The global stream would hand an image other draws in a micro-batch than in the large batch
    (it is consumed per call, in padded shapes); keyed by the image, the draws are the same in both runs."""
    max_tokens = max(rows * cols for rows, cols in grids)
    noise = torch.zeros(num_draws, len(grids), max_tokens, targets[0].shape[-1])
    timesteps = torch.zeros(num_draws, len(grids), dtype=torch.long)
    for i, target in enumerate(targets):
        digest = hashlib.sha256(target.detach().float().cpu().numpy().tobytes()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))
        noise[:, i, : target.shape[0]] = torch.randn(num_draws, *target.shape, generator=generator)
        timesteps[:, i] = torch.randint(0, scheduler.config.num_train_timesteps, (num_draws,), generator=generator)
    # Rows are tiled draw-major (row d * M + i is draw d of image i), as `grid_denoising_loss` tiles them.
    return grid_denoising_loss(
        denoiser, scheduler, conditions, targets, grids, num_draws, noise=noise.flatten(0, 1),
        timesteps=timesteps.flatten(),
    )  # fmt: skip


@pytest.mark.parametrize("build", ARCHITECTURES + MORE_ARCHITECTURES)
def test_gradient_accumulation_equals_one_large_batch(build, kl16_vae, tmp_path, monkeypatch):
    """Batch 2 x GA 1 and batch 1 x GA 2 over the same samples in the same order (sequential sampler) give the same
    logged losses and the same VLM and ROSS head after 2 SGD steps. The micro-batches hold 1 and 2 images (step 1),
    then 0 and 1 (step 2: a text-only micro-batch), so a visual term averaged per micro-batch instead of weighted by
    the step's image count (`num_images_in_batch`) would differ. Randomness: the teacher target is its posterior
    mode (`latent_sample: mode`) and the noise draws are keyed by the image (`noise_keyed_by_image`); nothing else
    draws (no dropout in these configs). SGD without clipping: the weights move by exactly lr x gradient."""
    import modeling_ross.modeling_ross_pretraining
    import ross.train.build
    from modeling_ross.testing import load_native_processor_without_torchvision
    from ross.train.sft import main

    monkeypatch.setattr(ross.train.build, "load_native_processor", load_native_processor_without_torchvision)
    monkeypatch.setattr(modeling_ross.modeling_ross_pretraining, "grid_denoising_loss", noise_keyed_by_image)
    base = tmp_path / "base"
    save_base(build, base)
    data, images = write_native_data(tmp_path, "messages")
    runs = {}
    for name, batch, accumulation in (("large", 2, 1), ("accumulated", 1, 2)):
        runs[name] = main(sft_argv(
            base, data, images, kl16_vae, tmp_path / name, head={"latent_sample": "mode"},
            per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=2, optim="sgd",
            learning_rate=0.1, lr_scheduler_type="constant", max_grad_norm=0, train_sampling_strategy="sequential",
        ))  # fmt: skip
    large, accumulated = runs["large"], runs["accumulated"]
    # 4 images; SmolVLM counts frames (each image's tiles + global view), as its visual loss does.
    assert large["images_seen_per_rank"] == accumulated["images_seen_per_rank"] == [images_counted(build, 4)]
    for key in ("first_logged", "last_logged"):
        assert accumulated[key] == pytest.approx(large[key], rel=1e-5, abs=1e-7), key
    assert large["first_logged"]["visual_loss"] > 0 and large["last_logged"]["visual_loss"] > 0
    assert_same_saved_weights(tmp_path / "accumulated" / "model", tmp_path / "large" / "model", rtol=1e-5, atol=1e-6)
    # Not vacuous: both terms moved the weights far more than the tolerance.
    before = load_file(str(base / "model.safetensors"))
    after = load_file(str(tmp_path / "large" / "model" / "model.safetensors"))
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 1e-3
    head = load_file(str(tmp_path / "large" / "model" / HEAD_FOLDER / "model.safetensors"))
    assert head["denoiser.final_layer.linear.weight"].abs().max() > 1e-3  # zero-initialised


# ---- kill -9 and resume ----


@pytest.mark.slow
@pytest.mark.parametrize("build", ARCHITECTURES + MORE_ARCHITECTURES)
def test_resume_after_kill_matches_uninterrupted_run(build, kl16_vae, tmp_path, monkeypatch):
    """train/sft.py killed (SIGKILL) right after the step-1 checkpoint and resumed with `--resume_from_checkpoint
    true`: the final VLM and head equal an uninterrupted 2-step run's, so the checkpoint (the plain VLM + ross_head/,
    which `RossTrainer._load_from_checkpoint` hands to `RossForPreTraining.load_checkpoint_weights`), the optimizer
    state and the RNG state (the noise draws) all came back. The killed run is a process of its own; the uninterrupted
    and the resumed runs run here."""
    import ross.train.build
    from modeling_ross.testing import load_native_processor_without_torchvision
    from ross.train.sft import main

    monkeypatch.setattr(ross.train.build, "load_native_processor", load_native_processor_without_torchvision)
    base = tmp_path / "base"
    save_base(build, base)
    data, images = write_native_data(tmp_path, "messages")

    def argv(output_dir):
        return sft_argv(base, data, images, kl16_vae, output_dir, save_strategy="steps", save_steps=1)

    main(argv(tmp_path / "full"))
    killed = run_sft_process(write_sft_script(tmp_path), argv(tmp_path / "interrupted"), tmp_path, kill_after_step=1)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (tmp_path / "interrupted" / "checkpoint-1" / HEAD_FOLDER / "model.safetensors").is_file()
    assert not (tmp_path / "interrupted" / "model").exists()
    resumed = main([*argv(tmp_path / "interrupted"), "--resume_from_checkpoint", "true"])
    assert resumed["global_step"] == 2
    assert_same_saved_weights(tmp_path / "interrupted" / "model", tmp_path / "full" / "model", rtol=1e-5, atol=1e-6)
