"""The Spaces demo (spaces/app.py) on a native VLM folder (RossForPreTraining's: a plain llava-hf Llava + ross_head/):
chat with transformers' own class, the reconstruction panel from ross_head/, or a panel that says why not."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import load_spaces_app
from PIL import Image

from modeling_ross.modeling_ross_pretraining import HEAD_FOLDER, RossForPreTraining
from modeling_ross.testing import tiny_llava, write_tiny_vae


gradio = pytest.importorskip("gradio", reason="gradio is not installed (demo extra: pip install -e '.[demo]')")
HEAD = {"teacher_subfolder": "vae", "denoiser_hidden_size": 64, "denoiser_depth": 2, "denoiser_num_heads": 4}


app = load_spaces_app()


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    vae = write_tiny_vae(root / "vae", block_out_channels=(8, 16, 16, 16, 16))
    torch.manual_seed(0)
    vlm, processor = tiny_llava()
    image_processor = processor.image_processor
    ross = RossForPreTraining.from_vlm(
        vlm, {"teacher": str(vae), **HEAD}, image_mean=image_processor.image_mean, image_std=image_processor.image_std
    )
    with torch.no_grad():
        for parameter in ross.denoiser.parameters():  # a "trained" head: the zero-init one ignores its condition
            parameter.add_(0.05 * torch.randn_like(parameter))
    ross.save_pretrained(root / "ckpt")
    processor.save_pretrained(root / "ckpt")
    return root / "ckpt"


def test_native_folder_chats_and_reconstructs(native_dir):
    loaded = app.load_model(str(native_dir))
    assert loaded.reconstruction_error is None and loaded.native_ross is not None
    assert type(loaded.model).__name__ == "LlavaForConditionalGeneration"
    assert "native `llava`" in loaded.describe() and "objective `denoise`" in loaded.describe()
    image = Image.new("RGB", (40, 30), "red")

    history = [{"role": "user", "content": "What colour is it?"}]
    answer = list(app.stream_answer(loaded, image, history, max_new_tokens=5))[-1][-1]["content"]
    processor = loaded.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    inputs = processor(text=[processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)],
                       images=[image], return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        output = loaded.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    expected = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer == (expected if expected.strip() else "(empty answer)")

    result, info = app.reconstruct(loaded, image, steps=2, seed=1)
    assert isinstance(result, Image.Image) and max(result.size) == app.DISPLAY_SIZE
    assert "2 DDIM steps" in info and HEAD_FOLDER in info and "128x128 px" in info  # 8 x 8 tokens, 16 px each
    again, _ = app.reconstruct(loaded, image, steps=2, seed=1)
    assert again.tobytes() == result.tobytes()  # seeded
    other, _ = app.reconstruct(loaded, Image.new("RGB", (40, 30), "blue"), steps=2, seed=1)
    assert other.tobytes() != result.tobytes()  # conditioned on the image


def test_without_modeling_ross_the_panel_says_why(native_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "modeling_ross.modeling_ross_pretraining", None)  # as on a Space: not installed
    loaded = app.load_model(str(native_dir))
    assert loaded.native_ross is None and "modeling_ross" in loaded.reconstruction_error
    result, info = app.reconstruct(loaded, Image.new("RGB", (40, 30), "red"))
    assert result is None and info.startswith("**Reconstruction unavailable:**") and HEAD_FOLDER in info
    assert "ROSS head not loaded" in loaded.describe()


def test_plain_vlm_without_head_chats_only(tmp_path):
    vlm, processor = tiny_llava()
    vlm.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = app.load_model(str(tmp_path))
    assert loaded.native_ross is None and f"`{HEAD_FOLDER}/`" in loaded.reconstruction_error
    history = [{"role": "user", "content": "hi"}]
    assert list(app.stream_answer(loaded, None, history, max_new_tokens=2))[-1][-1]["role"] == "assistant"
