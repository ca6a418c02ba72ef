"""`python -m ross.eval.run` on native VLM folders (what `RossForPreTraining.save_pretrained` writes: a plain
Qwen2.5-VL / Qwen3-VL / llava-hf Llava / LLaVA-OneVision / Gemma 3 / Idefics3 / SmolVLM + `ross_head/`): loaded as
their own class, prompted through their own chat template."""

import json

import pytest
import torch

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
    write_tiny_language_model,
    write_tiny_vae,
)
from ross.eval import generation, run


HEAD = {"teacher_subfolder": "vae", "denoiser_hidden_size": 64, "denoiser_depth": 2, "denoiser_num_heads": 4}


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    from ross.eval.synthetic import write_benchmarks

    root = tmp_path_factory.mktemp("synthetic")
    write_benchmarks(str(root), num_items=4)
    return root


@pytest.fixture(autouse=True)
def processor_without_torchvision(monkeypatch):
    # Qwen-VL's AutoProcessor needs torchvision (its video processor), which this machine lacks.
    monkeypatch.setattr(generation, "load_processor", load_native_processor_without_torchvision)


def save_native(build, folder, vae):
    torch.manual_seed(0)
    vlm, processor = build()
    image_processor = processor.image_processor
    ross = RossForPreTraining.from_vlm(
        vlm, {"teacher": str(vae), **HEAD}, image_mean=image_processor.image_mean, image_std=image_processor.image_std
    )
    ross.save_pretrained(folder)
    processor.save_pretrained(folder)
    return ross, processor


# Every architecture RossForPreTraining has an adapter for.
NATIVE_BUILDERS = {
    "qwen2_5_vl": tiny_qwen25_vl, "qwen3_vl": tiny_qwen3_vl, "llava": tiny_llava,
    "llava_onevision": tiny_llava_onevision, "gemma3": tiny_gemma3, "idefics3": tiny_idefics3, "smolvlm": tiny_smolvlm,
}  # fmt: skip


@pytest.mark.parametrize("build", NATIVE_BUILDERS.values(), ids=NATIVE_BUILDERS.keys())
def test_cli_evaluates_a_native_vlm_folder(build, bench_dir, tmp_path, capsys):
    vae = write_tiny_vae(tmp_path / "vae", block_out_channels=(8, 16, 16, 16, 16))
    ross, processor = save_native(build, tmp_path / "ckpt", vae)
    assert (tmp_path / "ckpt" / HEAD_FOLDER / "config.json").is_file()
    out = tmp_path / "pope"
    code = run.main(["--model", str(tmp_path / "ckpt"), "--benchmark", "synthetic_pope", "--data",
                     str(bench_dir / "synthetic_pope"), "--out", str(out), "--batch-size", "2",
                     "--max-new-tokens", "3", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    scores = json.loads((out / "scores.json").read_text())
    assert scores["num_items"] == 6 and scores["primary_metric"] == "accuracy"
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(isinstance(r["prediction"], str) for r in records)

    # The answers are the plain VLM's own greedy answers to its own chat template (the head plays no part).
    model, loaded_processor = generation.load_model(tmp_path / "ckpt")
    assert type(model) is type(ross.model)
    assert loaded_processor.chat_template == processor.chat_template
    bench, rows, prompts = generation.load_items("synthetic_pope", bench_dir / "synthetic_pope")
    from ross.eval.benchmarks import decode_images

    images = decode_images(rows[0], 0, bench_dir / "synthetic_pope")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompts[0]}]}],
        tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    inputs = processor(text=[text], images=images, return_tensors="pt")
    with torch.no_grad():
        expected = ross.model.eval().generate(**inputs, max_new_tokens=3, do_sample=False)
    expected = processor.tokenizer.decode(expected[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert records[0]["prediction"] == expected.strip()


def test_text_only_model_folder_is_a_clear_error(bench_dir, tmp_path, capsys):
    folder = write_tiny_language_model(tmp_path / "llm")
    code = run.main(["--model", str(folder), "--benchmark", "synthetic_pope", "--data",
                     str(bench_dir / "synthetic_pope"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith("error: --model: cannot load model") and "image-text-to-text" in err, err


def test_folder_without_chat_template_is_a_clear_error(bench_dir, tmp_path, capsys):
    vae = write_tiny_vae(tmp_path / "vae", block_out_channels=(8, 16, 16, 16, 16))
    save_native(tiny_llava, tmp_path / "ckpt", vae)
    (tmp_path / "ckpt" / "chat_template.jinja").unlink()
    code = run.main(["--model", str(tmp_path / "ckpt"), "--benchmark", "synthetic_pope", "--data",
                     str(bench_dir / "synthetic_pope"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "no chat template" in err and str(tmp_path / "ckpt") in err, err
