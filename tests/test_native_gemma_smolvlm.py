"""ROSS around Gemma 3, Idefics3 (SmolVLM v1) and SmolVLM2 (`RossForPreTraining`): tiny random-weight configs of the
real classes with their real processors, offline. The shared checks (save, train/sft.py) are
tests/test_native_vlms.py's. See docs/native-vlms.md."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_ross.testing import tiny_gemma3, tiny_idefics3, tiny_smolvlm
from tests.native_sft import random_image
from tests.test_native_vlms import (
    _changed_tokens,
    chat_batch,
    check_save_loads_as_the_plain_vlm_without_ross,
    check_sft_trains_a_native_vlm_end_to_end,
    ross_for,
)


BUILDS = [tiny_gemma3, tiny_idefics3, tiny_smolvlm]
IDS = ["gemma3", "idefics3", "smolvlm"]


def _image_features(ross, inputs) -> torch.Tensor:
    """The projected image features of one sample, in placeholder order `(tokens, D)`."""
    with torch.no_grad():
        features = ross.model.get_image_features(**inputs, return_dict=True).pooler_output
    return torch.cat(list(features)) if isinstance(features, (list, tuple)) else features.flatten(0, 1)


def _moved_pixels(seen_a, seen_b) -> tuple[int, int, int, int]:
    """(first row, last row, first col, last col) of the pixels that differ between two `(3, H, W)` images."""
    moved = torch.nonzero((seen_a - seen_b).abs().amax(0) > 1e-6)
    return int(moved[:, 0].min()), int(moved[:, 0].max()), int(moved[:, 1].min()), int(moved[:, 1].max())


# ---- grid mapping: a change in one cell moves the feature of exactly the token the adapter assigns to it ----


def test_gemma3_grid_mapping(kl16_vae):
    """Gemma 3, tower without attention: 32 px / patch 4 = 8 x 8 patches, average-pooled 2 x 2 into 4 x 4 tokens.
    Changing the 8 px cell (1, 2) changes token 1 * 4 + 2 only, and the image seen in that cell only."""
    ross, processor = ross_for(tiny_gemma3, kl16_vae, vision_layers=0)
    image = np.asarray(random_image(32, 32, seed=1)).copy()
    changed = image.copy()
    changed[8:16, 16:24] = 255 - changed[8:16, 16:24]
    features, seen = [], []
    for array in (image, changed):
        inputs = processor.image_processor(images=[Image.fromarray(array)], return_tensors="pt")
        features.append(_image_features(ross, inputs))
        seen.append(ross.adapter.images_seen(inputs)[0])
    assert ross.adapter.image_grids(inputs) == [(4, 4)]
    assert _changed_tokens(features[0], features[1]) == [1 * 4 + 2]
    assert _moved_pixels(seen[0], seen[1]) == (8, 15, 16, 23)


@pytest.mark.parametrize("build", [tiny_idefics3, tiny_smolvlm], ids=["idefics3", "smolvlm"])
def test_idefics3_smolvlm_grid_mapping(build, kl16_vae):
    """Idefics3 / SmolVLM, tower without attention: a 64 x 64 px image is split into 2 x 2 tiles of 32 px, then the
    whole image at 32 px (the global view); each frame is 8 x 8 patches, pixel-shuffled by 2 into 4 x 4 tokens, so
    5 frames of 16 tokens. Changing the 8 px cell at rows 40-47, cols 16-23 changes tile 2 (row 1, col 0), cell
    (1, 2): token 2 * 16 + 1 * 4 + 2, and in the global view (nearest resampling, 4 x 4 px at rows 20-23, cols 8-11)
    cell (2, 1): token 4 * 16 + 2 * 4 + 1; nothing else. The adapter's frames move in exactly those pixels."""
    ross, processor = ross_for(build, kl16_vae, vision_layers=0)
    image = np.asarray(random_image(64, 64, seed=1)).copy()
    changed = image.copy()
    changed[40:48, 16:24] = 255 - changed[40:48, 16:24]
    features, seen = [], []
    for array in (image, changed):
        inputs = processor.image_processor(
            images=[Image.fromarray(array)], resample=Image.Resampling.NEAREST, return_tensors="pt"
        )
        features.append(_image_features(ross, inputs))
        seen.append(ross.adapter.images_seen(inputs))
    assert inputs["pixel_values"].shape == (1, 5, 3, 32, 32) and features[0].shape[0] == 5 * 16
    assert ross.adapter.image_grids(inputs) == [(4, 4)] * 5
    assert _changed_tokens(features[0], features[1]) == [2 * 16 + 1 * 4 + 2, 4 * 16 + 2 * 4 + 1]
    assert [torch.equal(a, b) for a, b in zip(*seen)] == [True, True, False, True, False]
    assert _moved_pixels(seen[0][2], seen[1][2]) == (8, 15, 16, 23)
    assert _moved_pixels(seen[0][4], seen[1][4]) == (20, 23, 8, 11)
    # The tiles are the image itself, at full resolution.
    assert torch.allclose(seen[0][2], torch.from_numpy(image[32:, :32]).permute(2, 0, 1).float() / 255, atol=1e-5)


# ---- the training forward ----


@pytest.mark.parametrize("build", BUILDS, ids=IDS)
def test_forward_loss_is_text_plus_visual(build, kl16_vae):
    """loss = text + visual; the text loss is exactly the VLM's own; the conditions are the last hidden states at the
    model's image tokens; the gradient reaches the denoiser, not the teacher; a text-only batch still runs the tower."""
    torch.manual_seed(0)
    ross, processor = ross_for(build, kl16_vae)
    ross.train()
    images = [[random_image(56, 84, 0)], [random_image(84, 56, 1), random_image(56, 56, 2)]]
    batch = chat_batch(processor, images)
    outputs = ross(**batch, labels=batch["input_ids"])
    assert torch.allclose(outputs.loss, outputs.text_loss + outputs.visual_loss) and outputs.visual_loss > 0
    frames = 3 if build is tiny_gemma3 else 3 * 5  # Idefics3 / SmolVLM: 2 x 2 tiles + the global view per image
    assert outputs.image_grids == [(4, 4)] * frames
    assert torch.allclose(outputs.text_loss, ross.model(**batch, labels=batch["input_ids"]).loss)
    last = ross.model.model(**batch).last_hidden_state
    assert torch.allclose(torch.cat(outputs.visual_outputs), last[batch["input_ids"] == ross.config.image_token_id])
    if build is tiny_gemma3:  # its processor's image_token_id is <start_of_image>; the model's is the soft token
        assert processor.image_token_id != ross.config.image_token_id
        assert torch.equal(batch["token_type_ids"] == 1, batch["input_ids"] == ross.config.image_token_id)
    outputs.loss.backward()
    assert ross.denoiser.final_layer.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ross.teacher.parameters())

    ross.zero_grad()
    text_only = chat_batch(processor, [[], []])
    outputs = ross(**text_only, labels=text_only["input_ids"])
    assert outputs.visual_loss.item() == 0.0 and outputs.image_grids == []
    outputs.loss.backward()
    projector = ross.model.model.multi_modal_projector if build is tiny_gemma3 else ross.model.model.connector
    assert all(p.grad is not None for p in projector.parameters())  # the idle tower ran, at zero weight


def test_gemma3_pan_and_scan_crops_are_images_of_their_own(kl16_vae):
    """Gemma 3 with pan-and-scan: a 40 x 120 px image becomes the original + 3 crops, each a 4 x 4 grid with its own
    image seen (its `pixel_values`), through the collator and the training forward. (`Gemma3Processor.images_kwargs`
    sets `do_pan_and_scan=False` over the image processor's own setting; this processor's defaults are changed.)"""
    from ross.train.native_collator import NativeVlmDataCollator

    torch.manual_seed(0)
    ross, processor = ross_for(tiny_gemma3, kl16_vae)
    processor.images_kwargs = {**processor.images_kwargs, "do_pan_and_scan": True, "pan_and_scan_min_crop_size": 8}
    feature = {"id": "wide", "images": [random_image(40, 120, 0)], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}  # fmt: skip
    batch = NativeVlmDataCollator(processor, max_length=1024)([feature])
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert int((batch["input_ids"] == ross.config.image_token_id).sum()) == 4 * 16
    ross.train()
    outputs = ross(**batch)
    assert outputs.image_grids == [(4, 4)] * 4 and outputs.visual_loss > 0
    seen = ross.adapter.images_seen(batch)
    assert all(torch.allclose(s, (p * 0.5 + 0.5).clamp(0, 1)) for s, p in zip(seen, batch["pixel_values"]))


# ---- the collator: the model's image tokens, per-token and per-frame tensors ----


@pytest.mark.parametrize("build", BUILDS, ids=IDS)
def test_native_collator_masks_the_models_image_tokens(build):
    from ross.train.native_collator import NativeVlmDataCollator

    vlm, processor = build()
    collator = NativeVlmDataCollator(processor, max_length=1024)
    features = [
        {"id": "one", "images": [random_image(56, 84, 0)], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]},
        {"id": "text", "images": [], "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Is there a circle?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]},
        {"id": "two", "images": [random_image(84, 56, 1), random_image(32, 32, 2)], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "How many?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "two"}]}]},
    ]  # fmt: skip
    batch = collator(features)
    tokenizer = processor.tokenizer
    end = tokenizer.eos_token
    answers = [tokenizer.decode(row[row != -100]).strip() for row in batch["labels"]]
    assert answers == [f"red{end}", f"yes{end}", f"two{end}"]
    is_image = batch["input_ids"] == vlm.config.image_token_id
    if build is tiny_gemma3:  # 16 soft tokens per image; <start_of_image> is not one of them
        assert is_image.sum(1).tolist() == [16, 0, 32] and batch["pixel_values"].shape == (3, 3, 32, 32)
        assert torch.equal(batch["token_type_ids"] == 1, is_image)
    else:  # 5 frames per image (resized to 64 px on the long side: 2 x 2 tiles + the global view), 16 tokens each
        assert is_image.sum(1).tolist() == [5 * 16, 0, 10 * 16]
        # one row per sample with images, its frames zero-padded to the most (the model drops all-zero frames)
        assert batch["pixel_values"].shape == (2, 10, 3, 32, 32)
        assert batch["pixel_attention_mask"].shape == (2, 10, 32, 32)
        assert batch["pixel_values"][0, 5:].abs().sum() == 0 and batch["pixel_attention_mask"][0, 5:].sum() == 0
        assert vlm(**batch).logits.shape[:2] == batch["input_ids"].shape  # the model takes the padded batch


# ---- training groups: stage presets and LoRA map Idefics3 / SmolVLM's own module names ----


def test_smolvlm_stage_and_lora_groups(kl16_vae):
    """SmolVLM names its parts `vision_model`, `connector`, `text_model`: stage 2 freezes the tower and trains the
    connector (the projector), the LLM and the denoiser; LoRA goes on the LLM only, the connector still trains fully."""
    from ross.train.trainer import apply_lora, apply_stage, count_trainable_parameters

    ross, _ = ross_for(tiny_smolvlm, kl16_vae)
    counts = apply_stage(ross, 2)
    connector = sum(p.numel() for p in ross.model.model.connector.parameters())
    llm = sum(p.numel() for p in ross.model.model.text_model.parameters()) + ross.model.lm_head.weight.numel()
    assert counts["vision_tower"] == counts["other"] == 0
    assert counts["projector"] == connector and counts["language_model"] == llm and counts["denoiser"] > 0
    lora_counts = count_trainable_parameters(apply_lora(ross, r=4, alpha=8))
    assert lora_counts["projector"] == connector and 0 < lora_counts["language_model"] < llm
    assert lora_counts["vision_tower"] == 0


# ---- saving and train/sft.py (the shared checks of tests/test_native_vlms.py) ----


@pytest.mark.parametrize("build", BUILDS, ids=IDS)
def test_save_loads_as_the_plain_vlm_without_ross(build, kl16_vae, tmp_path):
    check_save_loads_as_the_plain_vlm_without_ross(build, kl16_vae, tmp_path)


@pytest.mark.parametrize(
    "build, fmt",
    [(tiny_gemma3, "llava"), (tiny_gemma3, "messages"), (tiny_smolvlm, "llava"), (tiny_idefics3, "messages")],
    ids=["gemma3-llava_json", "gemma3-messages", "smolvlm-llava_json", "idefics3-messages"],
)  # fmt: skip
def test_sft_trains_end_to_end(build, fmt, kl16_vae, tmp_path, monkeypatch):
    """train/sft.py on each model's own processor; Gemma 3's training forward gets `token_type_ids` (its
    bidirectional attention within each image) marking the soft image tokens."""
    from transformers import Gemma3Model

    image_tokens_marked = []
    forward = Gemma3Model.forward

    def recording_forward(self, input_ids=None, *args, token_type_ids=None, **kwargs):
        if self.training and kwargs.get("pixel_values") is not None:
            image_tokens_marked.append(torch.equal(token_type_ids == 1, input_ids == self.config.image_token_id))
        return forward(self, input_ids, *args, token_type_ids=token_type_ids, **kwargs)

    monkeypatch.setattr(Gemma3Model, "forward", recording_forward)
    check_sft_trains_a_native_vlm_end_to_end(build, fmt, kl16_vae, tmp_path, monkeypatch)
    if build is tiny_gemma3:
        assert image_tokens_marked and all(image_tokens_marked)


def test_latent_cache_is_refused_for_frame_per_tile_models(kl16_vae):
    """The latent cache keys one teacher target per input image; Idefics3 / SmolVLM see several frames per image
    (tiles + the global view), so a run asking for the cache is refused before anything trains, naming the model."""
    from types import SimpleNamespace

    from ross.train.config import ConfigError
    from ross.train.sft import check_native_run

    run = SimpleNamespace(
        model_name_or_path="smolvlm", latent_cache_dir="cache", padding_free=False, preview_every_n_steps=0,
        group_by=None, data_format="chat", cache_encodings=False,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="latent_cache_dir with smolvlm"):
        check_native_run(run, ross_for(tiny_smolvlm, kl16_vae)[0].adapter)
    gemma3 = ross_for(tiny_gemma3, kl16_vae)[0].adapter
    check_native_run(run, gemma3)  # one grid per image: accepted
    with pytest.raises(ConfigError, match="does not support cache_encodings"):  # the LLaVA-style collator's only
        check_native_run(SimpleNamespace(**{**vars(run), "cache_encodings": True}), gemma3)
