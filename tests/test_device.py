"""The model's paths on a chosen device and dtype: `ROSS_TEST_DEVICE` (default cpu) and `ROSS_TEST_DTYPE` (default
bfloat16). On this CPU-only machine they run in bf16 on the CPU; `bench/gpu.sh` runs them with
`ROSS_TEST_DEVICE=cuda`, which is where device bugs (a tensor left on the CPU, a dtype mismatch) show up.
Each check compares with the same model in fp32 on the CPU."""

import os

import numpy as np
import pytest
import torch
from conftest import TINY_OBJECTIVE
from PIL import Image

from modeling_ross import RossForConditionalGeneration, from_components


DEVICE = torch.device(os.environ.get("ROSS_TEST_DEVICE", "cpu"))
DTYPE = getattr(torch, os.environ.get("ROSS_TEST_DTYPE", "bfloat16"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("ROSS_TEST_DEVICE=cuda but no CUDA device", allow_module_level=True)


def _batch(processor, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(2)]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    batch = processor(text=[text, text], images=images, padding=True, return_tensors="pt")
    batch["labels"] = batch["input_ids"].masked_fill(batch["input_ids"] == processor.image_token_id, -100)
    return dict(batch)


def _to(batch: dict, device, dtype) -> dict:
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}


@pytest.fixture()
def models(tiny_components):
    """(reference: fp32 on the CPU, model: the same weights in DTYPE on DEVICE), both in train mode."""
    torch.manual_seed(0)
    reference = from_components(**tiny_components, **TINY_OBJECTIVE).train()
    with torch.no_grad():  # a denoiser that reads its condition (it is zero-initialised)
        for parameter in reference.denoiser.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model = from_components(**tiny_components, **TINY_OBJECTIVE)
    model.load_state_dict(reference.state_dict())
    return reference, model.to(DEVICE, DTYPE).train()


def test_training_step_on_the_device(models, tiny_processor):
    reference, model = models
    batch = _batch(tiny_processor)
    torch.manual_seed(0)
    out = model(**_to(batch, DEVICE, DTYPE))
    out.loss.backward()
    assert out.loss.device.type == DEVICE.type and torch.isfinite(out.loss)
    assert out.visual_loss is not None and torch.isfinite(out.visual_loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("denoiser.") for n in grads) and any(n.startswith("model.projector.") for n in grads)
    assert all(torch.isfinite(g).all() and g.device.type == DEVICE.type for g in grads.values())
    # The text loss is deterministic: equal to fp32 on the CPU within the dtype's rounding.
    expected = reference(**batch).text_loss
    tolerance = 1e-4 if DTYPE == torch.float32 else 5e-2
    assert abs(out.text_loss.float().item() - expected.item()) <= tolerance * max(1.0, expected.item())


def test_cached_targets_on_the_device(models, tiny_processor):
    _, model = models
    batch = _to(_batch(tiny_processor), DEVICE, DTYPE)
    with torch.no_grad():
        mean, std = model.teacher.encode_distribution(batch["pixel_values"])
    targets = {"mean": mean.float(), "std": None if std is None else std.float()}  # as the latent cache stores them
    out = model(**batch, teacher_targets=targets)
    assert torch.isfinite(out.visual_loss) and out.visual_loss.device.type == DEVICE.type


def test_generation_and_reconstruction_on_the_device(models, tiny_processor, tmp_path):
    reference, model = models
    batch = _batch(tiny_processor)
    prompt = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    reference.eval()
    with torch.no_grad():
        logits = model(**_to(prompt, DEVICE, DTYPE)).logits.float().cpu()
        expected = reference(**prompt).logits
        tokens = model.generate(**_to(prompt, DEVICE, DTYPE), max_new_tokens=4, do_sample=False)
    assert logits.shape == expected.shape and torch.isfinite(logits).all()
    scale = expected.abs().max().item()
    assert (logits - expected).abs().max().item() <= (1e-4 if DTYPE == torch.float32 else 5e-2) * max(1.0, scale)
    assert tokens.shape == (2, prompt["input_ids"].shape[1] + 4) and tokens.device.type == DEVICE.type

    images = model.reconstruct(
        prompt["pixel_values"].to(DEVICE, DTYPE), num_inference_steps=3, generator=torch.Generator(DEVICE).manual_seed(0),
        output_type="pt",
    )  # fmt: skip
    assert images.shape[:2] == (2, 3) and images.device.type == DEVICE.type
    assert images.min() >= 0 and images.max() <= 1

    # Saved in DTYPE, reloaded onto the device with the objective: fp32's logits within the dtype's rounding. (Not
    # bit-equal to `model`: `.to(dtype)` also rounds the LLM's rotary `inv_freq` buffer, a fresh load keeps it fp32.)
    model.save_pretrained(tmp_path / "model")
    reloaded = RossForConditionalGeneration.from_pretrained(tmp_path / "model", dtype=DTYPE, load_objective=True)
    reloaded = reloaded.to(DEVICE).eval()
    assert reloaded.denoiser is not None and next(reloaded.denoiser.parameters()).dtype == DTYPE
    with torch.no_grad():
        again = reloaded(**_to(prompt, DEVICE, DTYPE)).logits.float().cpu()
    assert (again - expected).abs().max().item() <= (1e-4 if DTYPE == torch.float32 else 5e-2) * max(1.0, scale)
