"""Model cards and `python -m ross.model_cards.publish --dry-run` for native VLM folders (RossForPreTraining's: a plain
llava-hf Llava / Qwen2.5-VL + `ross_head/`): the card names the base model and the objective; `ross_head/` goes
along."""

import json

import pytest
import torch
import yaml

from modeling_ross.modeling_ross_pretraining import HEAD_FOLDER, RossForPreTraining
from modeling_ross.testing import tiny_llava, tiny_qwen25_vl, without_torchvision_preamble, write_tiny_vae
from ross.model_cards import publish
from ross.model_cards.card import NATIVE_HEAD_FOLDER, build_model_card


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


@pytest.mark.parametrize(
    "build, base", [(tiny_qwen25_vl, "Qwen/Qwen2.5-VL-7B-Instruct"), (tiny_llava, "llava-hf/llava-1.5-7b-hf")],
    ids=["qwen2_5_vl", "llava"],
)
def test_card_names_the_base_model_and_the_objective(build, base, vae, tmp_path):
    folder = save_native(build, tmp_path / "ckpt", vae, base)
    card = str(build_model_card(folder, eval_results=[]))
    meta = front_matter(card)
    assert meta["base_model"] == [base]
    assert meta["pipeline_tag"] == "image-text-to-text" and "custom_code" not in meta["tags"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"][0] in card and f"**Base model:** {base}" in card
    assert "ROSS^D" in card and "trust_remote_code" not in card
    assert "Denoiser: 2 blocks, width 64, 4 heads" in card
    assert "RossForPreTraining.from_pretrained" in card


@pytest.mark.parametrize(
    "build, base", [(tiny_llava, "llava-hf/llava-1.5-7b-hf"), (tiny_qwen25_vl, "Qwen/Qwen2.5-VL-7B-Instruct")],
    ids=["llava", "qwen2_5_vl"],
)
def test_publish_dry_run_stages_the_head_and_verifies_the_plain_vlm(build, base, vae, tmp_path, capsys, monkeypatch):
    if build is tiny_qwen25_vl:
        # No torchvision here: the fresh verification process builds Qwen2.5-VL's processor from its saved parts
        # (modeling_ross.testing's loader, as source: that process cannot import this project); users' runs load it
        # with AutoProcessor.from_pretrained.
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
    assert front_matter(readme)["base_model"] == [base] and "me/ross-vlm" in readme
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
