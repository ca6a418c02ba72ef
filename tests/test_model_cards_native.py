"""Model cards and `python -m ross.model_cards.publish --dry-run` for native VLM folders (RossForPreTraining's: a plain
Qwen2.5-VL / Qwen3-VL / llava-hf Llava / LLaVA-OneVision / Gemma 3 / Idefics3 / SmolVLM + `ross_head/`): the card
names the base model and the objective; `ross_head/` goes along."""

import json

import pytest
import torch
import yaml

from modeling_ross.modeling_ross_pretraining import HEAD_FOLDER, RossForPreTraining
from modeling_ross.testing import (
    tiny_gemma3,
    tiny_idefics3,
    tiny_llava,
    tiny_llava_onevision,
    tiny_qwen3_vl,
    tiny_qwen25_vl,
    tiny_smolvlm,
    without_torchvision_preamble,
    write_tiny_vae,
)
from ross.model_cards import publish
from ross.model_cards.card import NATIVE_HEAD_FOLDER, build_model_card


# Each architecture with the Hub checkpoint a user would start from (the card's `base_model`) and that repo's license.
NATIVE_MODELS = {
    "qwen2_5_vl": (tiny_qwen25_vl, "Qwen/Qwen2.5-VL-7B-Instruct", "apache-2.0"),
    "qwen3_vl": (tiny_qwen3_vl, "Qwen/Qwen3-VL-8B-Instruct", "apache-2.0"),
    "llava": (tiny_llava, "llava-hf/llava-1.5-7b-hf", "other"),
    "llava_onevision": (tiny_llava_onevision, "llava-hf/llava-onevision-qwen2-7b-ov-hf", "apache-2.0"),
    "gemma3": (tiny_gemma3, "google/gemma-3-4b-it", "gemma"),
    "idefics3": (tiny_idefics3, "HuggingFaceTB/SmolVLM-Instruct", "apache-2.0"),
    "smolvlm": (tiny_smolvlm, "HuggingFaceTB/SmolVLM2-2.2B-Instruct", "apache-2.0"),
}
HEAD = {"teacher_subfolder": "vae", "denoiser_hidden_size": 64, "denoiser_depth": 2, "denoiser_num_heads": 4}


def save_native(build, folder, vae, base_model: str):
    torch.manual_seed(0)
    vlm, processor = build()
    vlm.config._name_or_path = base_model  # as after from_pretrained(base_model): from_vlm records it in ross_head/
    image_processor = processor.image_processor
    ross = RossForPreTraining.from_vlm(
        vlm, {"teacher": str(vae), **HEAD}, image_mean=image_processor.image_mean, image_std=image_processor.image_std
    )
    ross.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def front_matter(readme: str) -> dict:
    return yaml.safe_load(readme.split("---")[1])


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    return write_tiny_vae(tmp_path_factory.mktemp("vae"), block_out_channels=(8, 16, 16, 16, 16))


def test_head_folder_name_matches_the_model_code():
    assert NATIVE_HEAD_FOLDER == HEAD_FOLDER


@pytest.mark.parametrize("build, base, license_", NATIVE_MODELS.values(), ids=NATIVE_MODELS.keys())
def test_card_names_the_base_model_and_the_objective(build, base, license_, vae, tmp_path):
    folder = save_native(build, tmp_path / "ckpt", vae, base)
    card = str(build_model_card(folder, eval_results=[]))
    meta = front_matter(card)
    assert meta["base_model"] == [base] and meta["license"] == license_
    assert meta["pipeline_tag"] == "image-text-to-text" and "custom_code" not in meta["tags"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"][0] in card and f"**Base model:** {base}" in card
    assert "ROSS^D" in card and "trust_remote_code" not in card
    assert "Denoiser: 2 blocks, width 64, 4 heads" in card
    assert "RossForPreTraining.from_pretrained" in card


@pytest.mark.parametrize("build, base, license_", NATIVE_MODELS.values(), ids=NATIVE_MODELS.keys())
def test_publish_dry_run_stages_the_head_and_verifies_the_plain_vlm(build, base, license_, vae, tmp_path, capsys,
                                                                    monkeypatch):
    # No torchvision here: the fresh verification process builds the Qwen-VL / LLaVA-OneVision / SmolVLM processors
    # from their saved parts (modeling_ross.testing's loaders, as source: that process cannot import this project);
    # any other folder loads with the stock AutoProcessor.from_pretrained, as users' runs all do.
    monkeypatch.setattr(publish, "VERIFY_SCRIPT", without_torchvision_preamble() + publish.VERIFY_SCRIPT)
    folder = save_native(build, tmp_path / "ckpt", vae, base)
    staged = tmp_path / "repo"
    code = publish.main(["--model", str(folder), "--repo-id", "me/ross-vlm", "--dry-run", str(staged),
                         "--no-eval", "--verify-device", "cpu"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    assert f"{architecture} (transformers' own class" in out.out
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert {"config.json", "model.safetensors", "chat_template.jinja", "README.md",
            f"{HEAD_FOLDER}/config.json", f"{HEAD_FOLDER}/model.safetensors"} <= set(files)  # fmt: skip
    assert not any(name.endswith(".py") for name in files)
    assert (staged / HEAD_FOLDER / "model.safetensors").read_bytes() == (
        folder / HEAD_FOLDER / "model.safetensors"
    ).read_bytes()
    readme = (staged / "README.md").read_text()
    assert front_matter(readme)["base_model"] == [base] and front_matter(readme)["license"] == license_
    assert "me/ross-vlm" in readme
    assert f"**Base model:** {base}" in readme and "ROSS^D" in readme  # the card names base model and objective
    # The staged repo is a complete RossForPreTraining folder again.
    restored = RossForPreTraining.from_pretrained(staged)
    assert restored.head_config.objective_config.objective == "denoise"


def test_native_folder_without_head_weights_is_refused(vae, tmp_path, capsys):
    folder = save_native(tiny_llava, tmp_path / "ckpt", vae, "llava-hf/llava-1.5-7b-hf")
    (folder / HEAD_FOLDER / "model.safetensors").unlink()
    code = publish.main(["--model", str(folder), "--repo-id", "me/x", "--dry-run", str(tmp_path / "repo"), "--no-eval"])
    err = capsys.readouterr().err
    assert code == 1 and f"{HEAD_FOLDER}: no model.safetensors" in err, err
