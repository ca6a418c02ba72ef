"""The Spaces demo (spaces/app.py) on native VLM folders (RossForPreTraining's: a plain Qwen2.5-VL, Qwen3-VL, llava-hf
Llava, LLaVA-OneVision, Gemma 3, Idefics3 or SmolVLM + ross_head/): chat with transformers' own class, the
reconstruction panel from ross_head/, or a panel that says why not."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import load_spaces_app
from PIL import Image

from modeling_ross.modeling_ross_pretraining import HEAD_FOLDER, RossForPreTraining
from modeling_ross.testing import (
    load_native_processor_without_torchvision,
    tiny_gemma3,
    tiny_idefics3,
    tiny_llava,
    tiny_llava_onevision,
    tiny_qwen3_vl,
    tiny_qwen25_vl,
    tiny_smolvlm,
    write_tiny_vae,
)


gradio = pytest.importorskip("gradio", reason="gradio is not installed (demo extra: pip install -e '.[demo]')")
HEAD = {"teacher_subfolder": "vae", "denoiser_hidden_size": 64, "denoiser_depth": 2, "denoiser_num_heads": 4}


app = load_spaces_app()


def save_native_folder(root: Path, build) -> Path:
    """`build`'s tiny VLM + a fresh ROSS head (KL-16 teacher), saved as RossForPreTraining does, with its processor."""
    vae = write_tiny_vae(root / "vae", block_out_channels=(8, 16, 16, 16, 16))
    torch.manual_seed(0)
    vlm, processor = build()
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


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    return save_native_folder(tmp_path_factory.mktemp("native"), tiny_llava)


@pytest.fixture(scope="module")
def qwen25_vl_dir(tmp_path_factory):
    return save_native_folder(tmp_path_factory.mktemp("native-qwen"), tiny_qwen25_vl)


def check_chat_and_reconstruction(loaded, image: Image.Image) -> tuple[Image.Image, str]:
    """The chat answer is the model's own greedy answer to its chat template; the reconstruction is seeded and
    conditioned on the image. Returns the reconstruction and its panel text."""
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
    assert "2 DDIM steps" in info and HEAD_FOLDER in info
    again, _ = app.reconstruct(loaded, image, steps=2, seed=1)
    assert again.tobytes() == result.tobytes()  # seeded
    other, _ = app.reconstruct(loaded, Image.new("RGB", image.size, "blue"), steps=2, seed=1)
    assert other.tobytes() != result.tobytes()  # conditioned on the image
    return result, info


def test_native_folder_chats_and_reconstructs(native_dir):
    loaded = app.load_model(str(native_dir))
    assert loaded.reconstruction_error is None and loaded.native_ross is not None
    assert type(loaded.model).__name__ == "LlavaForConditionalGeneration"
    assert "native `llava`" in loaded.describe() and "objective `denoise`" in loaded.describe()
    _, info = check_chat_and_reconstruction(loaded, Image.new("RGB", (40, 30), "red"))
    assert "128x128 px" in info  # 8 x 8 tokens, 16 px each


def test_native_qwen25_vl_folder_chats_and_reconstructs_on_the_image_grid(qwen25_vl_dir, monkeypatch):
    # No torchvision here: the app's AutoProcessor.from_pretrained is swapped for the loader that builds Qwen2.5-VL's
    # processor from its saved parts (as tests/test_native_vlms.py does for sft); the app itself is unchanged.
    monkeypatch.setattr(app, "AutoProcessor", SimpleNamespace(
        from_pretrained=lambda name, **kwargs: load_native_processor_without_torchvision(name)))  # fmt: skip
    loaded = app.load_model(str(qwen25_vl_dir))
    assert loaded.reconstruction_error is None and loaded.native_ross is not None
    assert type(loaded.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert "native `qwen2_5_vl`" in loaded.describe() and "objective `denoise`" in loaded.describe()
    # 84 x 56 px: a 2 x 3 token grid (28 px per token), reconstructed at 16 px per token, shown with its aspect ratio.
    result, info = check_chat_and_reconstruction(loaded, Image.new("RGB", (84, 56), "red"))
    assert "48x32 px" in info and result.size == (app.DISPLAY_SIZE, round(app.DISPLAY_SIZE * 32 / 48))


# The other architectures, each with what its panel shows for an 84 x 56 px upload: the grid the VLM saw it on (16 px
# per token), and for Idefics3 / SmolVLM the global view (64 px resized to 32 px: 2 x 2 tiles + the whole image).
MORE_NATIVE = {
    "qwen3_vl": (tiny_qwen3_vl, "Qwen3VLForConditionalGeneration", "at 48x32 px."),  # 2 x 3 tokens of 32 px
    "llava_onevision": (tiny_llava_onevision, "LlavaOnevisionForConditionalGeneration", "at 128x128 px."),  # base view
    "gemma3": (tiny_gemma3, "Gemma3ForConditionalGeneration", "at 64x64 px."),  # 4 x 4 pooled tokens
    "idefics3": (tiny_idefics3, "Idefics3ForConditionalGeneration",
                 "at 64x64 px (the global view; the 4 tiles are not shown)."),
    "smolvlm": (tiny_smolvlm, "SmolVLMForConditionalGeneration",
                "at 64x64 px (the global view; the 4 tiles are not shown)."),
}  # fmt: skip


@pytest.mark.parametrize("build, model_class, panel", MORE_NATIVE.values(), ids=MORE_NATIVE.keys())
def test_every_native_architecture_chats_and_reconstructs(build, model_class, panel, tmp_path, monkeypatch):
    # No torchvision here: as above, the processors with a video processor are built from the folder's saved parts;
    # the others load with the stock AutoProcessor.from_pretrained.
    monkeypatch.setattr(app, "AutoProcessor", SimpleNamespace(
        from_pretrained=lambda name, **kwargs: load_native_processor_without_torchvision(name)))  # fmt: skip
    loaded = app.load_model(str(save_native_folder(tmp_path, build)))
    assert loaded.reconstruction_error is None and loaded.native_ross is not None
    assert type(loaded.model).__name__ == model_class
    assert f"native `{loaded.model.config.model_type}`" in loaded.describe()
    _, info = check_chat_and_reconstruction(loaded, Image.new("RGB", (84, 56), "red"))
    assert info.endswith(panel), info


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
