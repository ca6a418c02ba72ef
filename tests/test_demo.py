"""The default run end to end: `python -m ross.train.demo --fast` (components, data, two training stages, evaluation,
reconstructions), the Hub-ready model folder in a fresh process, and the component cache on a second run."""

import json
import textwrap
from pathlib import Path

import pytest
from conftest import run_demo_cli, run_isolated


BENCHMARKS = ("synthetic_pope", "synthetic_mmvp", "synthetic_count", "synthetic_colour", "synthetic_position")


# `fast_demo` (conftest.py, session scope): `python -m ross.train.demo --fast --probe`, shared with test_readme.py.


# A warning the project prints on purpose carries the action to take; none is expected in a default run.
ACTIONABLE_WARNINGS = ()


def warning_lines(text: str) -> list[str]:
    lines = text.replace("\r", "\n").splitlines()
    return [line for line in lines if "warning" in line.lower() and not line.startswith(ACTIONABLE_WARNINGS)]


@pytest.mark.slow
def test_console_has_no_warning_a_user_cannot_act_on(fast_demo):
    """The demo's own output and its two `train/sft.py` stages (each launched by accelerate, logs in train.log):
    no DeepSpeed accelerator notice, no torchvision fallback, no deprecation or library warning."""
    out, _, output = fast_demo
    assert warning_lines(output) == []
    for stage in ("stage1", "stage2"):
        log = (out / "demo" / stage / "train.log").read_text()
        assert "[ross] summary:" in log  # the stage's whole console output, to its end
        assert warning_lines(log) == [], stage


@pytest.mark.slow
def test_summary_has_every_phase_and_metric(fast_demo):
    out, summary, stdout = fast_demo
    assert summary["fast"] is True and summary["objective"] == "denoise"
    assert set(summary["timings_s"]) == {"components", "data", "stage1", "stage2", "eval", "reconstruct", "total"}
    assert all(value >= 0 for value in summary["timings_s"].values())
    components = summary["components"]
    assert components["cached"] is False
    assert 0.0 <= components["vision_tower"]["probe_accuracy"] <= 1.0
    assert components["vae"]["psnr_db"] > 0
    probe = components["detail_probe"]  # what the tower and teacher keep of each quadrant's object
    assert all(0.0 <= probe[f"{m}_{t}_{k}"] <= 1.0 for m in ("tower", "teacher") for t in ("shape", "colour")
               for k in ("linear", "mlp"))  # fmt: skip
    assert "per-quadrant shape probe" in stdout
    for stage in ("stage1", "stage2"):
        training = summary["training"][stage]
        assert training["global_step"] > 0
        assert training["final_text_loss"] is not None and training["final_visual_loss"] is not None
    assert set(summary["evaluation"]) == set(BENCHMARKS)
    for name, report in summary["evaluation"].items():
        assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 < report["chance"] < 1.0, name
        assert report["question_types"], name
        for qtype in report["question_types"].values():
            assert {"accuracy", "chance", "n", "above_chance"} <= set(qtype)
        assert (Path(summary["paths"]["eval"]) / name / "predictions.jsonl").is_file()
    assert "pair_accuracy" in summary["evaluation"]["synthetic_mmvp"]
    assert Path(summary["reconstruction"]["path"]).is_file()
    assert all((out / "demo" / "benchmarks" / name).is_dir() for name in BENCHMARKS)  # README's stable data path
    assert Path(summary["paths"]["model"]) == out.resolve() / "demo" / "model"
    card = (out / "demo" / "model" / "README.md").read_text()  # the card: the Space's header name, the scores
    assert "\n# ross-tiny-demo\n" in card and "synthetic_pope" in card
    assert "accuracy vs chance" in stdout and str(out.resolve() / "demo" / "model") in stdout
    # live progress on the console for every long phase: both stages, each benchmark's eval, the reconstructions
    assert "stage 1 step" in stdout and "stage 2 step" in stdout
    assert all(f"{name}: 100%" in stdout for name in BENCHMARKS)
    assert "reconstruct: 8 images, 5 denoising steps" in stdout  # the check's images; the first 4 in the grid
    # the ROSS-active check: both losses, the PSNRs, and a verdict printed (a 3-step smoke run fails it)
    check = summary["reconstruction"]["check"]
    assert check["images"] == 8 and check["visual_loss_true"] > 0 and check["visual_loss_shuffled"] > 0
    assert check["passed"] == (check["loss_passed"] and check["psnr_passed"])
    for key in ("psnr_ross_vs_teacher_db", "psnr_ross_vs_other_teacher_db", "psnr_constant_vs_teacher_db"):
        assert check[key] > 0, key
    assert "ROSS-active check (8 held-out images): " in stdout and "shuffled across images" in stdout
    assert ("PASSED" if check["passed"] else "FAILED") in stdout


@pytest.mark.slow
def test_model_folder_answers_in_a_fresh_process(fast_demo, tmp_path):
    out, summary, _ = fast_demo
    from ross.synthetic.world import make_scene, render

    image_path = tmp_path / "scene.png"
    render(make_scene(123)).save(image_path)
    script = textwrap.dedent(
        f"""
        import json
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        path = {summary["paths"]["model"]!r}
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        messages = [{{"role": "user", "content": [{{"type": "image"}},
                     {{"type": "text", "text": "Is there a red circle in the image?"}}]}}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[Image.open({str(image_path)!r})], return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        new = output[0, inputs["input_ids"].shape[1]:]
        print(json.dumps({{"num_new_tokens": int(new.numel()),
                           "answer": processor.decode(new, skip_special_tokens=True),
                           "denoiser": model.denoiser is not None}}))
        """
    )
    result = run_isolated(script, tmp_path)  # as on a machine without this repository: remote code only
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["num_new_tokens"] >= 1 and isinstance(answer["answer"], str)
    assert answer["denoiser"] is False  # inference loads no training-only modules


@pytest.mark.slow
def test_second_run_reuses_the_component_and_data_caches(fast_demo):
    out, first, _ = fast_demo
    run_demo_cli(out, "--stop-after", "data")
    second = json.loads((out / "demo" / "summary.json").read_text())
    assert second["components"]["cached"] is True and second["data"]["cached"] is True
    assert second["components"]["key"] == first["components"]["key"]
    assert second["components"]["vision_tower"] == first["components"]["vision_tower"]
    assert second["timings_s"]["components"] < first["timings_s"]["components"]
    assert len(list((out / "components").iterdir())) == 1  # one keyed folder, no leftovers
