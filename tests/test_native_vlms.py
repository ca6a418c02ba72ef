"""ROSS around native transformers VLMs (`RossForPreTraining`): tiny random-weight configs of the real classes
(Qwen2.5-VL, Qwen3-VL, llava-hf Llava, LLaVA-OneVision), offline. Gemma 3, Idefics3 and SmolVLM:
tests/test_native_gemma_smolvlm.py. See docs/native-vlms.md."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_ross.denoiser import RossDenoiser, build_noise_scheduler, grid_sincos_table
from modeling_ross.modeling_ross_pretraining import HEAD_FOLDER, RossForPreTraining
from modeling_ross.native_adapters import ADAPTERS
from modeling_ross.objective import grid_denoising_loss
from modeling_ross.testing import tiny_llava, tiny_llava_onevision, tiny_qwen3_vl, tiny_qwen25_vl
from tests.conftest import TINY_OBJECTIVE, run_isolated
from tests.native_sft import ARCHITECTURES, MORE_ARCHITECTURES, random_image, save_base, sft_argv, write_native_data


def objective(vae: str, **overrides) -> dict:
    return {"teacher": vae, "teacher_subfolder": "vae", **TINY_OBJECTIVE, **overrides}


def ross_for(build, vae, **kwargs):
    vlm, processor = build(**kwargs)
    image_processor = processor.image_processor
    ross = RossForPreTraining.from_vlm(
        vlm, objective(vae), image_mean=image_processor.image_mean, image_std=image_processor.image_std
    )
    return ross, processor


def chat_batch(processor, images_per_sample, answers=("red", "two")):
    """A padded batch of user (images + question) -> assistant turns; a sample with no image is text-only. The images
    go to the processor nested per sample (Gemma 3's needs that; the others accept it)."""
    texts = []
    for sample_images, answer in zip(images_per_sample, answers):
        content = [{"type": "image"} for _ in sample_images] + [{"type": "text", "text": "what colour is it"}]
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
        texts.append(processor.apply_chat_template(messages, tokenize=False))
    images = [list(sample_images) for sample_images in images_per_sample]
    return processor(text=texts, images=images if any(images) else None, return_tensors="pt", padding=True)


# ---- the variable-grid denoiser and loss ----


def test_grid_sincos_table_equals_the_square_table():
    denoiser = RossDenoiser(in_channels=4, condition_size=8, hidden_size=32, depth=1, num_heads=4, grid_size=5)
    assert torch.allclose(grid_sincos_table(32, 5, 5), denoiser.sincos_table(), atol=1e-6)


def test_mixed_grid_loss_equals_the_per_image_computation():
    """One padded, key-masked denoiser call over images of different grids == each image alone, to 1e-5."""
    torch.manual_seed(0)
    denoiser = RossDenoiser(in_channels=6, condition_size=16, hidden_size=32, depth=2, num_heads=4, grid_size=4)
    for parameter in denoiser.parameters():  # leave adaLN-Zero's identity start, so attention matters
        torch.nn.init.normal_(parameter, std=0.1)
    scheduler = build_noise_scheduler()
    grids, num_draws = [(2, 3), (4, 4), (3, 1)], 2
    conditions = [torch.randn(r * c, 16) for r, c in grids]
    targets = [torch.randn(r * c, 6) for r, c in grids]
    rows, max_tokens = num_draws * len(grids), 16
    noise, timesteps = torch.randn(rows, max_tokens, 6), torch.randint(0, 1000, (rows,))
    batched = grid_denoising_loss(denoiser, scheduler, conditions, targets, grids, num_draws, noise, timesteps)

    per_image = []
    for i, (grid, condition, target) in enumerate(zip(grids, conditions, targets)):
        n = grid[0] * grid[1]
        draws = [d * len(grids) + i for d in range(num_draws)]  # rows are tiled draw-major
        eps, t = noise[draws, :n], timesteps[draws]
        noisy = scheduler.add_noise(target.expand(num_draws, -1, -1), eps, t)
        prediction = denoiser(noisy, t, condition.expand(num_draws, -1, -1), grid_sizes=[grid] * num_draws)
        per_image.append(torch.nn.functional.mse_loss(prediction, eps))
    assert torch.allclose(batched, torch.stack(per_image).mean(), atol=1e-5, rtol=0)


def test_square_grid_path_matches_the_fixed_grid_denoiser():
    torch.manual_seed(0)
    denoiser = RossDenoiser(in_channels=6, condition_size=16, hidden_size=32, depth=1, num_heads=4, grid_size=3)
    for parameter in denoiser.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    noisy, condition, t = torch.randn(2, 9, 6), torch.randn(2, 9, 16), torch.tensor([3, 700])
    assert torch.allclose(denoiser(noisy, t, condition), denoiser(noisy, t, condition, grid_sizes=[(3, 3)] * 2), atol=1e-6)


def test_learned_table_refuses_per_image_grids():
    denoiser = RossDenoiser(in_channels=4, condition_size=8, hidden_size=32, depth=1, num_heads=4, grid_size=2,
                            position_embedding="learned")  # fmt: skip
    with pytest.raises(ValueError, match="sincos"):
        denoiser(torch.randn(1, 4, 4), torch.tensor([1]), torch.randn(1, 4, 8), grid_sizes=[(2, 2)])


# ---- grid mapping: a change in one cell moves the feature of the token the adapter assigns to it ----


def _changed_tokens(features_a, features_b) -> list[int]:
    return torch.nonzero((features_a - features_b).abs().amax(-1) > 1e-6).flatten().tolist()


def test_qwen25_vl_grid_mapping(kl16_vae):
    """Tower without attention (depth 0: patch embed + 2 x 2 merger): token k's feature depends on its own 28 px cell
    only. A 84 x 112 px image is 3 x 4 tokens; changing cell (row 1, col 2) changes token 1 * 4 + 2 and no other, and
    the adapter's reconstruction of the image seen moves in that cell only."""
    ross, processor = ross_for(tiny_qwen25_vl, kl16_vae, vision_depth=0)
    image = np.asarray(random_image(84, 112, seed=0)).copy()
    changed = image.copy()
    changed[28:56, 56:84] = 255 - changed[28:56, 56:84]
    features, seen = [], []
    for array in (image, changed):
        inputs = processor.image_processor(images=[Image.fromarray(array)], return_tensors="pt")
        assert ross.adapter.image_grids(inputs) == [(3, 4)]
        with torch.no_grad():
            features.append(ross.model.get_image_features(**inputs, return_dict=True).pooler_output[0])
        seen.append(ross.adapter.images_seen(inputs)[0])
    assert _changed_tokens(features[0], features[1]) == [1 * 4 + 2]
    assert torch.allclose(seen[0], torch.from_numpy(image).permute(2, 0, 1).float() / 255, atol=1e-5)
    moved = torch.nonzero((seen[0] - seen[1]).abs().amax(0) > 1e-6)
    assert moved[:, 0].min() == 28 and moved[:, 0].max() == 55 and moved[:, 1].min() == 56 and moved[:, 1].max() == 83


def test_qwen3_vl_grid_mapping(kl16_vae):
    """Qwen3-VL (patch 16, merge 2: 32 px per token; learned position table interpolated per patch), tower without
    attention: a 96 x 128 px image is 3 x 4 tokens; changing cell (2, 1) changes token 2 * 4 + 1 only."""
    ross, processor = ross_for(tiny_qwen3_vl, kl16_vae, vision_depth=0)
    image = np.asarray(random_image(96, 128, seed=0)).copy()
    changed = image.copy()
    changed[64:96, 32:64] = 255 - changed[64:96, 32:64]
    features, seen = [], []
    for array in (image, changed):
        inputs = processor.image_processor(images=[Image.fromarray(array)], return_tensors="pt")
        assert ross.adapter.image_grids(inputs) == [(3, 4)]
        with torch.no_grad():
            features.append(ross.model.get_image_features(**inputs, return_dict=True).pooler_output[0])
        seen.append(ross.adapter.images_seen(inputs)[0])
    assert _changed_tokens(features[0], features[1]) == [2 * 4 + 1]
    moved = torch.nonzero((seen[0] - seen[1]).abs().amax(0) > 1e-6)
    assert moved[:, 0].min() == 64 and moved[:, 0].max() == 95 and moved[:, 1].min() == 32 and moved[:, 1].max() == 63


def test_llava_grid_mapping(kl16_vae):
    """llava-hf Llava with `vision_feature_layer=0` (SigLIP embeddings, before attention): 32 px / patch 4 = 8 x 8
    tokens; changing the 4 x 4 px cell (5, 3) changes token 5 * 8 + 3 only, and the image seen in that cell only."""
    ross, processor = ross_for(tiny_llava, kl16_vae, vision_feature_layer=0)
    image = np.asarray(random_image(32, 32, seed=1)).copy()
    changed = image.copy()
    changed[20:24, 12:16] = 255 - changed[20:24, 12:16]
    features, seen = [], []
    for array in (image, changed):
        inputs = processor.image_processor(images=[Image.fromarray(array)], return_tensors="pt")
        with torch.no_grad():  # layer 0 is only kept when hidden states are asked for (transformers 5.23)
            outputs = ross.model.get_image_features(**inputs, output_hidden_states=True, return_dict=True)
            features.append(outputs.pooler_output[0])
        seen.append(ross.adapter.images_seen(inputs)[0])
    assert ross.adapter.image_grids(inputs) == [(8, 8)]
    assert _changed_tokens(features[0], features[1]) == [5 * 8 + 3]
    moved = torch.nonzero((seen[0] - seen[1]).abs().amax(0) > 1e-6)
    assert moved[:, 0].min() == 20 and moved[:, 0].max() == 23 and moved[:, 1].min() == 12 and moved[:, 1].max() == 15


def test_llava_onevision_base_view_mapping(kl16_vae):
    """LLaVA-OneVision: a 32 px image is a base view (8 x 8 tokens) + one any-res tile (8 rows of 8 tokens + a newline
    each): 136 tokens. Changing the 4 x 4 px cell (5, 3) changes base token 5 * 8 + 3 and tile token 64 + 5 * 9 + 3;
    the adapter's grid is the base view (the span's first 64 tokens), so its condition moves at token 43 only."""
    ross, processor = ross_for(tiny_llava_onevision, kl16_vae, vision_feature_layer=0)
    image = np.asarray(random_image(32, 32, seed=1)).copy()
    changed = image.copy()
    changed[20:24, 12:16] = 255 - changed[20:24, 12:16]
    features, seen = [], []
    for array in (image, changed):
        inputs = processor.image_processor(images=[Image.fromarray(array)], return_tensors="pt")
        with torch.no_grad():  # layer 0 is only kept when hidden states are asked for (transformers 5.23)
            outputs = ross.model.get_image_features(**inputs, output_hidden_states=True, return_dict=True)
        features.append(outputs.pooler_output[0])
        seen.append(ross.adapter.images_seen(inputs)[0])
    assert features[0].shape[0] == 136 and ross.adapter.image_grids(inputs) == [(8, 8)]
    assert _changed_tokens(features[0], features[1]) == [5 * 8 + 3, 64 + 5 * 9 + 3]
    mask = torch.zeros(1, 140, dtype=torch.bool)
    mask[0, 2:138] = True
    assert ross.adapter.span_lengths(mask, [(8, 8)]) == [136]
    moved = torch.nonzero((seen[0] - seen[1]).abs().amax(0) > 1e-6)
    assert moved[:, 0].min() == 20 and moved[:, 0].max() == 23 and moved[:, 1].min() == 12 and moved[:, 1].max() == 15


# ---- the training forward ----


@pytest.mark.parametrize(
    "build", [tiny_qwen25_vl, tiny_qwen3_vl, tiny_llava, tiny_llava_onevision],
    ids=["qwen2_5_vl", "qwen3_vl", "llava", "llava_onevision"],
)
def test_forward_loss_is_text_plus_visual(build, kl16_vae):
    torch.manual_seed(0)
    ross, processor = ross_for(build, kl16_vae)
    ross.train()
    images = [[random_image(56, 84, 0)], [random_image(84, 56, 1), random_image(56, 56, 2)]]  # a multi-image sample
    batch = chat_batch(processor, images)
    outputs = ross(**batch, labels=batch["input_ids"])
    assert torch.allclose(outputs.loss, outputs.text_loss + outputs.visual_loss)
    assert len(outputs.visual_outputs) == 3
    if build is tiny_qwen25_vl:  # variable grids, from image_grid_thw (28 px per token)
        assert outputs.image_grids == [(2, 3), (3, 2), (2, 2)]
    if build is tiny_qwen3_vl:  # 32 px per token; the processor rounds 56 / 84 px to multiples of 32
        assert outputs.image_grids == [(2, 3), (3, 2), (2, 2)]
    # The text loss is exactly the VLM's own.
    vlm_loss = ross.model(**batch, labels=batch["input_ids"]).loss
    assert torch.allclose(outputs.text_loss, vlm_loss)
    outputs.loss.backward()
    assert ross.denoiser.final_layer.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ross.teacher.parameters())
    # The step's image count weights the visual term.
    half = ross(**batch, labels=batch["input_ids"], num_images_in_batch=6)
    assert torch.allclose(half.visual_term, half.visual_loss * 0.5)


def test_visual_outputs_are_the_last_hidden_states_at_each_image(kl16_vae):
    torch.manual_seed(0)
    ross, processor = ross_for(tiny_qwen25_vl, kl16_vae)
    ross.train()
    batch = chat_batch(processor, [[random_image(56, 84, 0)], [random_image(84, 56, 1)]])
    outputs = ross(**batch, labels=batch["input_ids"])
    last = ross.model.model(**{k: v for k, v in batch.items()}).last_hidden_state
    mask = batch["input_ids"] == ross.model.config.image_token_id
    assert torch.allclose(torch.cat(outputs.visual_outputs), last[mask], atol=1e-6)
    assert [v.shape[0] for v in outputs.visual_outputs] == [6, 6]


def test_text_only_batch_keeps_the_head_in_the_graph(kl16_vae):
    ross, processor = ross_for(tiny_qwen25_vl, kl16_vae)
    ross.train()
    batch = chat_batch(processor, [[], []])
    outputs = ross(**batch, labels=batch["input_ids"])
    assert outputs.visual_loss.item() == 0.0
    assert torch.allclose(outputs.loss, outputs.text_loss)
    outputs.loss.backward()
    assert ross.denoiser.final_layer.linear.weight.grad is not None  # connected, at zero weight
    assert ross.model.model.visual.merger.mlp[0].weight.grad is not None  # the tower ran too


def test_truncated_image_span_is_a_clear_error(kl16_vae):
    ross, processor = ross_for(tiny_qwen25_vl, kl16_vae)
    ross.train()
    batch = chat_batch(processor, [[random_image(56, 84, 0)], [random_image(84, 56, 1)]])
    hidden = torch.zeros(*batch["input_ids"].shape, 64)
    with pytest.raises(ValueError, match="placeholders and image grids do not match"):
        ross.split_conditions(batch["input_ids"][:, :10], hidden[:, :10], [(2, 3), (3, 2)])


# ---- saving: the plain VLM + the head beside it ----


@pytest.mark.parametrize(
    "build", [tiny_qwen25_vl, tiny_qwen3_vl, tiny_llava, tiny_llava_onevision],
    ids=["qwen2_5_vl", "qwen3_vl", "llava", "llava_onevision"],
)
def test_save_loads_as_the_plain_vlm_without_ross(build, kl16_vae, tmp_path):
    check_save_loads_as_the_plain_vlm_without_ross(build, kl16_vae, tmp_path)


def check_save_loads_as_the_plain_vlm_without_ross(build, kl16_vae, tmp_path):
    """The saved folder is the plain VLM (its own `config.json`, no `auto_map`) + `ross_head/`: in a process without
    this package it loads with `AutoModelForImageTextToText` and generates the same tokens; `from_pretrained`
    restores every tensor and `reconstruct` returns each image on its grid."""
    torch.manual_seed(0)
    ross, processor = ross_for(build, kl16_vae)
    with torch.no_grad():
        for parameter in ross.denoiser.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # a "trained" head
    ross.eval()
    batch = chat_batch(processor, [[random_image(56, 84, 3)]], answers=("",))
    batch = {k: v for k, v in batch.items()}
    expected = ross.model.generate(**batch, max_new_tokens=6, do_sample=False)
    ross.save_pretrained(tmp_path / "ckpt")

    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == ross.model.config.model_type and "auto_map" not in config
    assert (tmp_path / "ckpt" / HEAD_FOLDER / "model.safetensors").is_file()
    torch.save({"inputs": batch, "expected": expected}, tmp_path / "io.pt")
    result = run_isolated(
        f"""
        import torch
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_pretrained({str(tmp_path / "ckpt")!r})
        io = torch.load({str(tmp_path / "io.pt")!r})
        out = model.generate(**io["inputs"], max_new_tokens=6, do_sample=False)
        assert torch.equal(out, io["expected"]), (out, io["expected"])
        print("OK", type(model).__name__)
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"OK {type(ross.model).__name__}" in result.stdout

    restored = RossForPreTraining.from_pretrained(tmp_path / "ckpt")
    for (name, a), (_, b) in zip(ross.state_dict().items(), restored.state_dict().items()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(ross.teacher.state_dict().items(), restored.teacher.state_dict().items()):
        assert torch.equal(a, b), name  # restored from its source (not saved: save_teacher is off)
    assert not any(key.startswith("teacher.") for key in ross.state_dict())  # never partitioned, never trained
    restored.eval()
    images = restored.reconstruct(num_inference_steps=2, output_type="pt", **batch)
    rows, cols = restored.adapter.image_grids(batch)[0]
    assert images[0].shape == (3, rows * 16, cols * 16)


def test_from_pretrained_of_a_plain_vlm_says_what_to_do(kl16_vae, tmp_path):
    vlm, _ = tiny_llava()
    vlm.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="from_vlm"):
        RossForPreTraining.from_pretrained(tmp_path)


# ---- the training path: train/sft.py on a native VLM folder ----


@pytest.mark.parametrize(
    "build, fmt",
    [(tiny_qwen25_vl, "llava"), (tiny_qwen25_vl, "messages"), (tiny_llava, "llava"), (tiny_qwen3_vl, "llava"),
     (tiny_llava_onevision, "messages")],
    ids=["qwen2_5_vl-llava_json", "qwen2_5_vl-messages", "llava-llava_json", "qwen3_vl-llava_json",
         "llava_onevision-messages"],
)  # fmt: skip
def test_sft_trains_a_native_vlm_end_to_end(build, fmt, kl16_vae, tmp_path, monkeypatch):
    check_sft_trains_a_native_vlm_end_to_end(build, fmt, kl16_vae, tmp_path, monkeypatch)


def check_sft_trains_a_native_vlm_end_to_end(build, fmt, kl16_vae, tmp_path, monkeypatch) -> dict:
    """train/sft.py with model_name_or_path = a native VLM folder (laid out like its Hub repo) and objective denoise:
    the model's own processor and chat template, assistant-only labels, text-only and two-image samples; the saved
    folder is the plain VLM + ross_head/, and training continues from it. Returns the first run's summary."""
    import ross.train.build
    from modeling_ross.testing import load_native_processor_without_torchvision
    from ross.train.sft import main

    base = tmp_path / "base"
    vlm, _ = save_base(build, base)
    # No torchvision here: see load_native_processor (Qwen-VL's processor needs it; others load as usual).
    monkeypatch.setattr(ross.train.build, "load_native_processor", load_native_processor_without_torchvision)
    data, images = write_native_data(tmp_path, fmt)
    summary = main(sft_argv(base, data, images, kl16_vae, tmp_path / "out", max_steps=3))
    assert summary["global_step"] == 3
    assert np.isfinite(summary["final_text_loss"]) and summary["final_visual_loss"] > 0
    counts = summary["trainable_parameters"]
    assert counts["vision_tower"] == counts["teacher"] == 0
    assert counts["projector"] > 0 and counts["language_model"] > 0 and counts["denoiser"] > 0

    folder = tmp_path / "out" / "model"
    assert json.loads((folder / "config.json").read_text())["model_type"] == vlm.config.model_type
    assert (folder / HEAD_FOLDER / "model.safetensors").is_file()
    trained = RossForPreTraining.from_pretrained(folder)
    assert not torch.equal(trained.denoiser.final_layer.linear.weight, torch.zeros_like(trained.denoiser.final_layer.linear.weight))
    # Continue from the saved folder: the head is restored, not rebuilt.
    again = main(sft_argv(folder, data, images, kl16_vae, tmp_path / "again", max_steps=3))
    assert again["global_step"] == 3
    return summary


def test_native_collator_supervises_only_the_answers(kl16_vae):
    from ross.train.native_collator import NativeVlmDataCollator

    _, processor = tiny_qwen25_vl()
    collator = NativeVlmDataCollator(processor, max_length=512)
    features = [
        {"id": "one", "images": [random_image(56, 84, 0)], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]},
        {"id": "text", "images": [], "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Is there a circle?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
            {"role": "user", "content": [{"type": "text", "text": "How many?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "two"}]}]},
    ]  # fmt: skip
    batch = collator(features)
    tokenizer = processor.tokenizer
    supervised = [tokenizer.decode(row[row != -100]) for row in batch["labels"]]
    assert supervised == ["red<|im_end|>\n", "yes<|im_end|>\ntwo<|im_end|>\n"]
    assert batch["image_grid_thw"].tolist() == [[1, 4, 6]] and batch["pixel_values"].shape[0] == 24
    image_id = processor.image_token_id
    assert int((batch["input_ids"][0] == image_id).sum()) == 6 and int((batch["input_ids"][1] == image_id).sum()) == 0
    # mm_token_type_ids (M-RoPE) padded like input_ids, 1 exactly at the image tokens
    assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape
    assert torch.equal(batch["mm_token_type_ids"] == 1, batch["input_ids"] == image_id)


def test_native_collator_too_long_sample_names_it():
    from ross.train.native_collator import NativeVlmDataCollator
    from ross.train.sources import BadSampleError

    _, processor = tiny_qwen25_vl()
    collator = NativeVlmDataCollator(processor, max_length=8)
    feature = {"id": "long", "source": "data.json", "images": [random_image(56, 84, 0)], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}  # fmt: skip
    with pytest.raises(BadSampleError, match="long.*data.json|too_long"):
        collator([feature])


@pytest.mark.parametrize("build", ARCHITECTURES)
def test_text_only_batch_runs_the_same_modules_in_the_same_order(build, kl16_vae):
    """ZeRO-3 gathers each module's parameters when it is called, and reduces gradients in the order they become
    ready: a rank with a text-only batch must call the same modules in the same order as a rank with images, and
    produce the same parameters' gradients in the same order (Qwen3-VL's DeepStack mergers included). Its text loss is
    unchanged by the idle tower."""
    torch.manual_seed(0)
    ross, processor = ross_for(build, kl16_vae)
    ross.train()
    order, ready = [], []
    names = {"embed": ross.model.get_input_embeddings(), "llm": ross.model.model.language_model,
             "teacher": ross.teacher.vae.encoder, "denoiser": ross.denoiser}  # fmt: skip
    names["tower"] = getattr(ross.model.model, "visual", None) or ross.model.model.vision_tower  # Qwen-VL: visual
    hooks = [module.register_forward_pre_hook(lambda m, a, n=name: order.append(n)) for name, module in names.items()]
    hooks += [p.register_post_accumulate_grad_hook(lambda p, n=name: ready.append(n)) for name, p in ross.named_parameters()]
    calls, gradients = {}, {}
    for kind, images in (("images", [[random_image(56, 84, 0)], [random_image(84, 56, 1)]]), ("text", [[], []])):
        order.clear(), ready.clear()
        batch = chat_batch(processor, images)
        outputs = ross(**batch, labels=batch["input_ids"])
        calls[kind] = [name for k, name in enumerate(order) if k == 0 or order[k - 1] != name]
        if kind == "text":
            assert torch.allclose(outputs.text_loss, ross.model(**batch, labels=batch["input_ids"]).loss, atol=1e-6)
        ross.zero_grad(set_to_none=True)
        outputs.loss.backward()
        gradients[kind] = list(ready)
    for hook in hooks:
        hook.remove()
    assert calls["images"] == calls["text"] == ["embed", "tower", "llm", "teacher", "denoiser"]
    assert gradients["text"] == gradients["images"]
    assert any(".merger." in name or "multi_modal_projector" in name for name in gradients["text"])


# ---- LoRA through train/sft.py ----


@pytest.mark.parametrize("build", ARCHITECTURES + MORE_ARCHITECTURES)
def test_sft_lora_saves_a_merged_plain_vlm(build, kl16_vae, tmp_path, monkeypatch):
    """LoRA on the LLM of a native VLM through train/sft.py: the whole projector (Qwen-VL's patch `merger`, with
    Qwen3-VL's DeepStack mergers; llava-hf's and Gemma 3's `multi_modal_projector`; SmolVLM's `connector`) and the denoiser train fully, the LLM through
    its adapters only, and the saved folder is the merged plain VLM + ross_head."""
    import ross.train.build
    from modeling_ross.testing import load_native_processor_without_torchvision
    from ross.train.sft import main
    from ross.train.trainer import module_of

    monkeypatch.setattr(ross.train.build, "load_native_processor", load_native_processor_without_torchvision)
    base = tmp_path / "base"
    vlm, _ = save_base(build, base)
    data, images = write_native_data(tmp_path, "messages")
    summary = main(sft_argv(
        base, data, images, kl16_vae, tmp_path / "out", lora="true", lora_r=4, lora_alpha=8, learning_rate=1e-2,
    ))  # fmt: skip
    counts = summary["trainable_parameters"]
    projector = {name: p for name, p in vlm.named_parameters() if module_of(f"model.{name}") == "projector"}
    assert counts["projector"] == sum(p.numel() for p in projector.values()) > 0  # all of it, not a LoRA wrap
    assert counts["denoiser"] > 0 and counts["vision_tower"] == counts["teacher"] == 0
    llm = ADAPTERS[vlm.config.model_type].language_model(vlm)
    assert 0 < counts["language_model"] < sum(p.numel() for p in llm.parameters())  # LoRA only
    folder = tmp_path / "out" / "model"
    assert not list(folder.glob("adapter_*"))
    trained = RossForPreTraining.from_pretrained(folder)
    assert not any("lora_" in name for name, _ in trained.named_parameters())
    merged_q = ADAPTERS[vlm.config.model_type].language_model(trained.model).layers[0].self_attn.q_proj.weight
    assert not torch.equal(merged_q, llm.layers[0].self_attn.q_proj.weight)  # LoRA merged in
    saved = dict(trained.model.named_parameters())
    unchanged = [name for name, p in projector.items() if torch.equal(saved[name], p)]
    assert not unchanged, f"projector tensors not trained: {unchanged}"


@pytest.mark.parametrize("recipe", ["qwen2.5vl_7b_ross.yaml", "qwen2.5vl_7b_ross_lora24gb.yaml"])
def test_qwen25_vl_recipes_train_with_their_own_settings(recipe, kl16_vae, tmp_path, monkeypatch):
    """The Qwen2.5-VL-7B recipes' own keys (stage, LoRA, weights dtype, learning rates, objective, sin-cos table)
    drive train/sft.py on a tiny Qwen2.5-VL; only the site keys (paths, GPUs, batch, precision flags) are swapped."""
    import yaml
    from conftest import REPO_ROOT

    import ross.train.build
    from modeling_ross.testing import load_native_processor_without_torchvision
    from ross.train.sft import main

    site = {"model_name_or_path", "teacher", "teacher_subfolder", "data_path", "image_folder", "output_dir",
            "deepspeed", "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "gradient_checkpointing",
            "dataloader_num_workers", "save_strategy", "save_steps", "save_total_limit", "report_to",
            "model_max_length", "num_train_epochs", "logging_steps"}  # fmt: skip
    settings = yaml.safe_load((REPO_ROOT / "train" / "configs" / recipe).read_text())
    assert settings["model_name_or_path"] == "Qwen/Qwen2.5-VL-7B-Instruct" and settings["objective"] == "denoise"
    # The paper's stage-2 schedule: global batch 128 (8 GPUs, or 1 with LoRA), 3% warmup + cosine, wd 0, 1 epoch.
    lora = settings.get("lora", False)
    world = 1 if lora else 8
    assert world * settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"] == 128
    assert settings["learning_rate"] == (2e-4 if lora else 2e-5) and settings["weight_decay"] == 0.0
    assert settings["warmup_steps"] == 0.03 and settings["lr_scheduler_type"] == "cosine" and settings["bf16"]
    assert settings.get("deepspeed") == (None if lora else "train/configs/zero3.json") and settings["stage"] == 2
    base = tmp_path / "base"
    save_base(tiny_qwen25_vl, base)
    monkeypatch.setattr(ross.train.build, "load_native_processor", load_native_processor_without_torchvision)
    data, images = write_native_data(tmp_path, "llava")
    argv = []
    for key, value in settings.items():
        if key in site:
            continue
        if key == "model_overrides":
            value = {**TINY_OBJECTIVE, **value}
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    argv += [
        "--model_name_or_path", str(base), "--teacher", kl16_vae, "--teacher_subfolder", "vae", "--data_path", str(data),
        "--image_folder", str(images), "--output_dir", str(tmp_path / "out"), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--save_strategy", '"no"', "--report_to", "none", "--use_cpu", "true",
        "--model_max_length", "512", "--logging_steps", "1",
    ]  # fmt: skip
    summary = main(argv)
    counts = summary["trainable_parameters"]
    assert counts["vision_tower"] == counts["teacher"] == 0
    assert counts["projector"] > 0 and counts["denoiser"] > 0 and counts["language_model"] > 0
    assert np.isfinite(summary["final_text_loss"]) and summary["final_visual_loss"] > 0
    trained = RossForPreTraining.from_pretrained(tmp_path / "out" / "model")
    assert not any("lora_" in name for name, _ in trained.named_parameters())
