"""Core model: shapes, padding, visual outputs, generation, remote code, LLaVA equivalence, input errors."""

import json
import textwrap

import numpy as np
import pytest
from conftest import run_isolated
import torch
from PIL import Image

from modeling_ross import RossProcessor, from_components


def _image(seed: int, size=(40, 28)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _messages(num_images: int, question: str, answer: str | None = "Yes"):
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def _batch(processor, specs, padding_side="right", generation=False):
    """`specs`: list of (num_images, question, image_seed). Returns the processor output for the whole batch."""
    texts, images = [], []
    for num_images, question, seed in specs:
        answer = None if generation else "Yes"
        texts.append(
            processor.apply_chat_template(
                _messages(num_images, question, answer), tokenize=False, add_generation_prompt=generation
            )
        )
        images += [_image(seed + j) for j in range(num_images)]
    return processor(text=texts, images=images or None, padding=True, padding_side=padding_side, return_tensors="pt")


def _positions(attention_mask):
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


SPECS = [(0, "What is two plus two?", 0), (1, "Is there a red circle in the image?", 10), (2, "How many squares?", 20)]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_mixed_batch_matches_single_samples(tiny_model, tiny_processor, padding_side):
    model = tiny_model.eval()
    batch = _batch(tiny_processor, SPECS, padding_side)
    n = model.config.image_seq_length
    assert batch["pixel_values"].shape[0] == 3
    assert (batch["input_ids"] == model.config.image_token_id).sum(-1).tolist() == [0, n, 2 * n]
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        out = model(**batch, labels=labels, position_ids=_positions(batch["attention_mask"]))
    assert out.logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)
    assert out.visual_outputs.shape == (3, n, model.config.text_config.hidden_size)
    assert torch.isfinite(out.loss) and out.visual_loss is None  # eval mode: text loss only

    for i, spec in enumerate(SPECS):
        single = _batch(tiny_processor, [spec])
        with torch.no_grad():
            ref = model(**single).logits[0]
        mask = batch["attention_mask"][i].bool()
        torch.testing.assert_close(out.logits[i][mask], ref, atol=1e-5, rtol=1e-5)


def test_visual_outputs_are_gathered_at_image_positions(tiny_model, tiny_processor):
    model = tiny_model.eval()
    batch = _batch(tiny_processor, SPECS, "left")
    with torch.no_grad():
        out = model(**batch, position_ids=_positions(batch["attention_mask"]))
    # Independent index: scan each row for image tokens and cut them into images of N tokens.
    n, rows = model.config.image_seq_length, []
    for b, ids in enumerate(batch["input_ids"].tolist()):
        positions = [p for p, token in enumerate(ids) if token == model.config.image_token_id]
        rows += [(b, positions[k : k + n]) for k in range(0, len(positions), n)]
    assert len(rows) == out.visual_outputs.shape[0]
    for image_index, (b, positions) in enumerate(rows):
        expected_logits = out.logits[b, positions]
        torch.testing.assert_close(model.lm_head(out.visual_outputs[image_index]), expected_logits)


def test_generate_with_and_without_cache_agree(tiny_model, tiny_processor):
    model = tiny_model.eval()
    batch = _batch(tiny_processor, SPECS, "left", generation=True)
    kwargs = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6, pad_token_id=tiny_processor.tokenizer.pad_token_id)
    with_cache = model.generate(**batch, use_cache=True, **kwargs)
    without_cache = model.generate(**batch, use_cache=False, **kwargs)
    assert with_cache.shape == (3, batch["input_ids"].shape[1] + 6)
    assert torch.equal(with_cache, without_cache)


def test_from_components_loads_component_weights_exactly(tiny_model, tiny_components):
    from diffusers import AutoencoderKL
    from transformers import AutoModelForCausalLM, SiglipVisionModel

    vision = SiglipVisionModel.from_pretrained(tiny_components["vision_model"])
    llm = AutoModelForCausalLM.from_pretrained(tiny_components["language_model"])
    vae = AutoencoderKL.from_pretrained(tiny_components["teacher"], subfolder="vae")
    for reference, ours in (
        (vision.state_dict(), tiny_model.model.vision_tower.state_dict()),
        (llm.model.state_dict(), tiny_model.model.language_model.state_dict()),
        (llm.lm_head.state_dict(), tiny_model.lm_head.state_dict()),
        (vae.state_dict(), tiny_model.teacher.vae.state_dict()),
    ):
        assert reference.keys() == ours.keys()
        for key in reference:
            assert torch.equal(reference[key], ours[key]), key
    # Frozen: vision tower and teacher; trainable: projector, LLM, denoiser.
    assert not any(p.requires_grad for p in tiny_model.model.vision_tower.parameters())
    assert not any(p.requires_grad for p in tiny_model.teacher.parameters())
    assert all(p.requires_grad for p in tiny_model.model.projector.parameters())
    assert all(p.requires_grad for p in tiny_model.denoiser.parameters())


def test_logits_equal_transformers_llava(tiny_model, tiny_processor):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = tiny_model.config
    llava = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=config.vision_config.to_dict(),
            text_config=config.text_config.to_dict(),
            image_token_index=config.image_token_id,
            image_seq_length=config.image_seq_length,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            projector_hidden_act=config.projector_hidden_act,
        )
    ).eval()
    state = {}
    for key, value in tiny_model.state_dict().items():
        if key.startswith(("teacher.", "denoiser.")):
            continue
        state[key.replace("model.projector.", "model.multi_modal_projector.")] = value
    missing, unexpected = llava.load_state_dict(state, strict=False)
    assert not unexpected and not missing
    batch = _batch(tiny_processor, SPECS, "left")
    with torch.no_grad():
        ours = tiny_model.eval()(**batch).logits
        theirs = llava(**batch).logits
    assert (ours - theirs).abs().max().item() < 1e-5


def test_save_and_fresh_process_load_with_remote_code(tiny_model, tiny_processor, tmp_path):
    folder = tmp_path / "model"
    tiny_model.eval().save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert set(saved["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoProcessor"}
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    for name in ("configuration_ross.py", "modeling_ross.py", "processing_ross.py", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert not any(k.startswith("teacher.") for k in keys) and any(k.startswith("denoiser.") for k in keys)

    batch = _batch(tiny_processor, SPECS[1:], "left")
    with torch.no_grad():
        reference = tiny_model(**batch).logits
    torch.save({"batch": dict(batch), "logits": reference}, tmp_path / "reference.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
        model = AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert model.denoiser is None and model.teacher is None, "inference load must not allocate the objective"
        ref = torch.load({str(tmp_path / "reference.pt")!r})
        with torch.no_grad():
            logits = model(**ref["batch"]).logits
        assert torch.equal(logits, ref["logits"]), (logits - ref["logits"]).abs().max()
        pipe = pipeline("image-text-to-text", model={str(folder)!r}, trust_remote_code=True)
        messages = [{{"role": "user", "content": [{{"type": "image", "image": Image.new("RGB", (40, 30), "red")}},
                     {{"type": "text", "text": "Is there a red circle?"}}]}}]
        answer = pipe(text=messages, max_new_tokens=4, do_sample=False)
        assert answer[0]["generated_text"][-1]["role"] == "assistant", answer
        print("OK", type(processor).__name__)
        """
    )
    result = run_isolated(script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK RossProcessor" in result.stdout


def test_placeholder_image_count_mismatch_is_a_clear_error(tiny_processor):
    text = tiny_processor.apply_chat_template(_messages(2, "Two?"), tokenize=False)
    with pytest.raises(ValueError, match="number of <image> tokens"):
        tiny_processor(text=[text], images=[_image(0)], return_tensors="pt")


def test_truncated_image_tokens_are_a_clear_error(tiny_processor):
    text = tiny_processor.apply_chat_template(_messages(1, "What?"), tokenize=False)
    with pytest.raises(ValueError, match="truncation"):
        tiny_processor(text=[text], images=[_image(0)], truncation=True, max_length=40, return_tensors="pt")


def test_missing_pixel_values_is_a_clear_error(tiny_model, tiny_processor):
    batch = _batch(tiny_processor, SPECS[1:2])
    with pytest.raises(ValueError, match="no pixel_values"):
        tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_image_token_count_mismatch_in_model_is_a_clear_error(tiny_model, tiny_processor):
    batch = _batch(tiny_processor, SPECS[1:2])
    two_images = torch.cat([batch["pixel_values"]] * 2)
    with pytest.raises(ValueError, match="tokens: 64, features: 128"):
        tiny_model(input_ids=batch["input_ids"], pixel_values=two_images)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16", "I", "F", "1"])
def test_unusual_image_modes_are_converted_to_rgb(tiny_processor, mode):
    rgb = _image(3, (30, 30))
    if mode == "I;16":
        image = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257))
        assert image.mode == "I;16"
    else:
        image = rgb.convert(mode)
    text = tiny_processor.apply_chat_template(_messages(1, "Colour?"), tokenize=False)
    out = tiny_processor(text=[text], images=[image], return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 32, 32) and torch.isfinite(out["pixel_values"]).all()
    if mode in ("L", "I;16"):  # grey images map to equal channels, 16-bit rescaled to the same 8-bit range
        reference = tiny_processor(text=[text], images=[rgb.convert("L")], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(out["pixel_values"], reference, atol=2 / 255, rtol=0)


def test_pad_to_square_uses_the_mean_colour(tiny_processor):
    text = tiny_processor.apply_chat_template(_messages(1, "Colour?"), tokenize=False)
    wide = Image.new("RGB", (64, 16), (255, 0, 0))
    out = tiny_processor(text=[text], images=[wide], return_tensors="pt")["pixel_values"][0]
    # Top rows are padding in the mean colour (0.5 -> 0 after normalisation); the middle row is red.
    assert out[:, 0, 16].abs().max() < 0.02
    assert out[0, 16, 16] > 0.9 and out[1, 16, 16] < -0.9
    resize = RossProcessor(tiny_processor.image_processor, tiny_processor.tokenizer, image_seq_length=64,
                           image_aspect_ratio="resize")
    out = resize(text=[text], images=[wide], return_tensors="pt")["pixel_values"][0]
    assert out[0, 0, 16] > 0.9  # no padding: red everywhere


def test_config_round_trip(tiny_model, tmp_path):
    from modeling_ross import RossConfig

    tiny_model.config.save_pretrained(tmp_path)
    loaded = RossConfig.from_pretrained(tmp_path)
    assert loaded.objective_config.to_dict() == tiny_model.config.objective_config.to_dict()
    assert loaded.objective_config.enabled and loaded.objective_config.objective == "denoise"
    assert loaded.image_seq_length == 64 and loaded.vision_feature_layer == -2
    assert RossConfig(objective_config={"objective": "none"}).objective_config.enabled is False


def test_separator_space_is_supervised_with_the_answer(tiny_processor):
    """BPE may keep the space after "ASSISTANT:" as a token of its own; it must be supervised, or the model never
    learns to emit it and generation (whose prompt ends at "ASSISTANT:") drifts to other answers."""
    messages = _messages(1, "What shape is it?", answer="Circle")
    out = tiny_processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        processor_kwargs={"images": [_image(0)]}, return_tensors="pt",
    )  # fmt: skip
    tokens = tiny_processor.tokenizer.convert_ids_to_tokens(out["input_ids"][0][out["assistant_masks"][0].bool()])
    assert "".join(tokens).replace("Ġ", " ") == " Circle<|im_end|>", tokens
    prompt = tiny_processor.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    full = tiny_processor.apply_chat_template(messages, tokenize=False)
    assert prompt.endswith("ASSISTANT:") and full == prompt + " Circle<|im_end|>"


def test_from_components_with_a_full_clip_repo(tiny_components, tmp_path):
    """CLIP-L/14-336 recipe path: a full CLIP repo (text + vision), CLS dropped ("default"), weights loaded exactly."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37),
        vision_config=dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37),
    )  # fmt: skip
    torch.manual_seed(0)
    clip = CLIPModel(config)
    clip.save_pretrained(tmp_path / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "clip"
    )
    language_model = tiny_components["language_model"]
    model = from_components(
        str(tmp_path / "clip"), language_model, objective="denoise", target="pixel", pixel_patch_size=4,
        denoiser_hidden_size=32, denoiser_num_heads=4,
    )  # fmt: skip
    processor = RossProcessor.from_components(str(tmp_path / "clip"), language_model)
    assert model.config.vision_feature_select_strategy == "default"
    assert model.config.image_seq_length == processor.image_seq_length == 64  # 8 x 8 patches, CLS dropped
    reference, ours = clip.vision_model.state_dict(), model.model.vision_tower.state_dict()
    assert reference.keys() == ours.keys()
    assert all(torch.equal(reference[key], ours[key]) for key in reference)
    text = processor.apply_chat_template(_messages(1, "Colour?"), tokenize=False)
    batch = processor(text=[text], images=[_image(0)], return_tensors="pt")
    out = model.train()(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss) and out.visual_loss > 0
