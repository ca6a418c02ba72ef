"""`modeling_ross.export_llava`: ROSS -> plain transformers LLaVA (no remote code), same logits.

The source is the full import pipeline: the authors' layout (tests/fixtures_official.py) -> `convert_official` ->
ROSS folder -> `export_llava`. The fresh-process test also loads the converted ROSS folder with remote code.
"""

import json
import textwrap

import numpy as np
import pytest
from conftest import run_isolated
import torch
from PIL import Image
from safetensors import safe_open

from fixtures_official import write_tiny_official_checkpoint
from modeling_ross.convert_official import convert_official
from modeling_ross.export_llava import LlavaExportError, export_llava


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_tiny_official_checkpoint(root / "official", dtype=torch.float32, seed=2)
    convert_official(str(root / "official"), root / "ross", dtype="fp32")
    report = export_llava(str(root / "ross"), root / "llava")
    return root, report


def _image(seed, size):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]


def test_export_is_a_plain_llava_folder(exported):
    root, report = exported
    dst = report.dst
    assert not list(dst.glob("*.py"))
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "llava" and config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["vision_feature_select_strategy"] == "full" and config["vision_feature_layer"] == -2
    # transformers 4.x spellings kept for older readers (Qwen2's RoPE base would otherwise default to 1e4).
    assert config["text_config"]["rope_theta"] == config["text_config"]["rope_parameters"]["rope_theta"] == 1e6
    for path in dst.glob("*.json"):
        text = path.read_text()
        assert "auto_map" not in text and "RossProcessor" not in text and "ross_objective" not in text, path.name
    with safe_open(str(dst / report.shard_files[0]), "pt") as handle:
        keys = set(handle.keys())
    assert not any(k.startswith(("denoiser", "teacher")) for k in keys)
    assert set(report.dropped) == {k for k in report.dropped if k.startswith("denoiser.")} and report.dropped
    # The llava-hf Hub layout (what transformers 4.x wrote and vLLM reads).
    assert "language_model.lm_head.weight" in keys and "multi_modal_projector.linear_2.bias" in keys
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in keys
    template = (dst / "chat_template.jinja").read_text()
    assert "endgeneration" not in template and "- generation" not in template and "ASSISTANT:" in template
    ross_template = (root / "ross" / "chat_template.jinja").read_text()
    assert "{%- generation -%}" in ross_template  # what was stripped (training-only assistant masks)


def test_logits_and_inputs_equal_ross(exported):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from modeling_ross import RossForConditionalGeneration, RossProcessor

    root, report = exported
    ross = RossForConditionalGeneration.from_pretrained(root / "ross").eval()
    ross_processor = RossProcessor.from_pretrained(root / "ross")
    llava = LlavaForConditionalGeneration.from_pretrained(report.dst).eval()
    llava_processor = AutoProcessor.from_pretrained(report.dst)
    assert type(llava_processor).__name__ == "LlavaProcessor" and llava.dtype == torch.float32

    prompt = ross_processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert llava_processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == prompt
    square = [_image(0, (70, 70)), _image(1, (56, 56))]
    ours = ross_processor(text=[prompt, prompt], images=square, return_tensors="pt")
    theirs = llava_processor(text=[prompt, prompt], images=square, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    with torch.no_grad():
        difference = (ross(**ours).logits - llava(**theirs).logits).abs().max().item()
    assert difference < 1e-5

    # Non-square: both pad to a square with the mean colour, int(255 * mean) as LLaVA and the authors do.
    wide = _image(2, (90, 50))
    ours = ross_processor(text=[prompt], images=[wide], return_tensors="pt")["pixel_values"]
    theirs = llava_processor(text=[prompt], images=[wide], return_tensors="pt")["pixel_values"]
    assert torch.equal(ours, theirs)
    assert torch.equal(ours[..., 20:36, :], theirs[..., 20:36, :])  # the image rows far from the padding


def test_fresh_process_loads_llava_without_and_ross_with_remote_code(exported, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    root, report = exported
    llava = LlavaForConditionalGeneration.from_pretrained(report.dst).eval()
    processor = AutoProcessor.from_pretrained(report.dst)
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    batch = processor(text=[prompt], images=[_image(3, (64, 64))], return_tensors="pt")
    with torch.no_grad():
        reference = llava(**batch).logits
    torch.save({"batch": dict(batch), "logits": reference}, tmp_path / "reference.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        ref = torch.load({str(tmp_path / "reference.pt")!r})
        llava = AutoModelForImageTextToText.from_pretrained({str(report.dst)!r})  # no trust_remote_code
        processor = AutoProcessor.from_pretrained({str(report.dst)!r})
        ross = AutoModelForImageTextToText.from_pretrained({str(root / "ross")!r}, trust_remote_code=True)
        ross_processor = AutoProcessor.from_pretrained({str(root / "ross")!r}, trust_remote_code=True)
        with torch.no_grad():
            a = llava(**ref["batch"]).logits
            b = ross(**ref["batch"]).logits
        assert torch.equal(a, ref["logits"]), (a - ref["logits"]).abs().max()
        assert (b - a).abs().max() < 1e-5, (b - a).abs().max()
        print("OK", type(llava).__name__, type(processor).__name__, type(ross).__name__, type(ross_processor).__name__)
        """
    )
    result = run_isolated(script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK LlavaForConditionalGeneration LlavaProcessor RossForConditionalGeneration RossProcessor" in result.stdout


def test_linear_projector_cannot_be_exported(exported, tmp_path):
    import shutil

    root, _ = exported
    src = tmp_path / "ross_linear"
    shutil.copytree(root / "ross", src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "projector_type": "linear"}))
    with pytest.raises(LlavaExportError, match="projector_type='linear'"):
        export_llava(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()
