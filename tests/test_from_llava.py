"""`modeling_ross.from_llava`: a trained llava-hf `LlavaForConditionalGeneration` -> ROSS for continued training."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_ross import from_llava, processor_from_llava
from modeling_ross.testing import build_tiny_tokenizer, write_tiny_vae


VISION = {
    "siglip": dict(model_type="siglip_vision_model", image_size=32, patch_size=4, hidden_size=32, intermediate_size=37,
                   num_hidden_layers=2, num_attention_heads=4, vision_use_head=False),
    "clip": dict(model_type="clip_vision_model", image_size=32, patch_size=4, hidden_size=32, intermediate_size=37,
                 num_hidden_layers=2, num_attention_heads=4, projection_dim=16),
}


def write_tiny_llava(folder, tower: str = "siglip", seed: int = 0):
    """A llava-hf style checkpoint: LlavaForConditionalGeneration (Qwen2 + SigLIP/CLIP) + LlavaProcessor."""
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessorPil,
    )

    from modeling_ross.processing_ross import add_image_token

    tokenizer = build_tiny_tokenizer()
    image_token_id = add_image_token(tokenizer)
    strategy = "full" if tower == "siglip" else "default"
    config = LlavaConfig(
        vision_config=VISION[tower],
        text_config=dict(model_type="qwen2", vocab_size=(len(tokenizer) // 64 + 1) * 64, hidden_size=48,
                         intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        image_token_index=image_token_id,
        image_seq_length=64,
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():  # a "trained" projector and LM, not the default init
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    model.save_pretrained(folder)
    if tower == "siglip":
        image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                                  image_std=[0.5] * 3)
    else:
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    template = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=4,
                   vision_feature_select_strategy=strategy, chat_template=template,
                   num_additional_image_tokens=0 if tower == "siglip" else 1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return str(write_tiny_vae(tmp_path_factory.mktemp("vae")))


def _messages(answer=None):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]}]
    if answer:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


@pytest.mark.parametrize("tower", ["siglip", "clip"])
def test_from_llava_keeps_the_llava_logits_and_adds_a_fresh_objective(tmp_path, teacher, tower):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    folder = write_tiny_llava(tmp_path / "llava", tower)
    model = from_llava(str(folder), teacher=teacher, teacher_subfolder="vae", denoiser_hidden_size=32,
                       denoiser_depth=1, denoiser_num_heads=4, num_noise_draws=2)
    processor = processor_from_llava(str(folder))
    llava = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    llava_processor = AutoProcessor.from_pretrained(folder, backend="pil")

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    prompt = processor.apply_chat_template(_messages(), add_generation_prompt=True, tokenize=False)
    assert prompt == llava_processor.apply_chat_template(_messages(), add_generation_prompt=True, tokenize=False)
    ours = processor(text=[prompt], images=[image], return_tensors="pt")
    theirs = llava_processor(text=[prompt], images=[image], return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    assert (ours["input_ids"] == model.config.image_token_id).sum() == model.config.image_seq_length == 64

    model.eval()
    with torch.no_grad():
        assert (model(**ours).logits - llava(**theirs).logits).abs().max().item() < 1e-5
    assert model.config.vision_feature_select_strategy == ("full" if tower == "siglip" else "default")

    # The objective is fresh (zero-init output) and trains; the tower and teacher are frozen.
    assert model.denoiser is not None and model.teacher is not None
    assert torch.count_nonzero(model.denoiser.final_layer.linear.weight) == 0
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.model.projector.parameters())
    text = processor.apply_chat_template(_messages("Red."), tokenize=False)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    model.train()
    out = model(**batch, labels=batch["input_ids"])
    assert out.visual_loss is not None and torch.isfinite(out.visual_loss) and out.visual_loss > 0
    out.loss.backward()
    assert model.denoiser.final_layer.linear.weight.grad.abs().sum() > 0


def test_from_llava_rejects_what_ross_cannot_represent(tmp_path, teacher):
    import json

    folder = write_tiny_llava(tmp_path / "llava")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vision_feature_layer": [-2, -1]}))
    with pytest.raises(ValueError, match="single layer"):
        from_llava(str(folder), teacher=teacher, teacher_subfolder="vae")
    with pytest.raises(TypeError, match="denoiser_widht"):
        from_llava(str(folder), teacher=teacher, teacher_subfolder="vae", denoiser_widht=3)
