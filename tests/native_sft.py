"""Helpers for running `train/sft.py` on tiny native VLMs (tests/test_native_vlms.py, tests/test_native_distributed.py):
the architectures the training matrix covers, their data, the base folder, the argv, the script a run in its own
process starts (torchrun, kill -9), and the comparison of two saved folders."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_ross.modeling_ross_pretraining import HEAD_FOLDER
from modeling_ross.testing import tiny_gemma3, tiny_llava, tiny_llava_onevision, tiny_qwen3_vl, tiny_qwen25_vl, tiny_smolvlm
from tests.conftest import TINY_OBJECTIVE


REPO_ROOT = Path(__file__).resolve().parents[1]

# The architectures `train/sft.py` must train (issue 24): one pytest id each.
ARCHITECTURES = [
    pytest.param(tiny_qwen25_vl, id="qwen2_5_vl"),
    pytest.param(tiny_qwen3_vl, id="qwen3_vl"),
    pytest.param(tiny_llava, id="llava"),
    pytest.param(tiny_llava_onevision, id="llava_onevision"),
]
# Also required unless transformers blocks them: Gemma 3 and SmolVLM (SmolVLM2's class; Idefics3 shares its adapter).
MORE_ARCHITECTURES = [pytest.param(tiny_gemma3, id="gemma3"), pytest.param(tiny_smolvlm, id="smolvlm")]


def images_counted(build, num_images: int) -> int:
    """What `images_seen_per_rank` counts for `num_images` images of `write_native_data`: SmolVLM counts frames (each
    image of these sizes becomes 2 x 2 tiles + the global view), the others images."""
    return num_images * (5 if build is tiny_smolvlm else 1)


# `train/sft.py` in a process of its own. No torchvision here, so the VLM's processor is built from its saved parts
# (`load_native_processor_without_torchvision`). With `KILL_AFTER_STEP=k` the process kills itself (SIGKILL, like a
# preempted job) right after the step-k checkpoint is written.
SFT_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import ross.train.build
from transformers import TrainerCallback
from modeling_ross.testing import load_native_processor_without_torchvision
from ross.train.sft import main

ross.train.build.load_native_processor = load_native_processor_without_torchvision

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if str(state.global_step) == os.environ.get("KILL_AFTER_STEP"):
            os.kill(os.getpid(), signal.SIGKILL)

main(sys.argv[1:], callbacks=[KillAfterSave()])
"""


def random_image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_native_data(root, fmt: str):
    """Images of three sizes; a one-image, a two-image and a text-only sample (twice, in that order), in LLaVA JSON
    or HF messages JSONL."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name, (height, width), seed in (("a.png", (56, 84), 0), ("b.png", (84, 56), 1), ("c.png", (56, 56), 2)):
        random_image(height, width, seed).save(images / name)
    if fmt == "llava":
        records = [
            {"id": "one", "image": "a.png", "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"}]},
            {"id": "two", "image": ["b.png", "c.png"], "conversations": [
                {"from": "human", "value": "<image>\n<image>\nHow many are there?"}, {"from": "gpt", "value": "two"}]},
            {"id": "text", "conversations": [
                {"from": "human", "value": "Is there a circle?"}, {"from": "gpt", "value": "yes"}]},
        ] * 2  # fmt: skip
        path = root / "data.json"
        path.write_text(json.dumps(records))
    else:
        records = [
            {"id": "one", "images": ["a.png"], "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]},
            {"id": "two", "images": ["b.png", "c.png"], "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "How many?"}]},
                {"role": "assistant", "content": "two"}]},
            {"id": "text", "messages": [
                {"role": "user", "content": "Is there a circle?"}, {"role": "assistant", "content": "yes"}]},
        ] * 2  # fmt: skip
        path = root / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, images


def save_base(build, folder: Path):
    """The tiny VLM `build()` makes, saved with its processor as on the Hub; returns `(vlm, processor)`."""
    vlm, processor = build()
    vlm.save_pretrained(folder)
    processor.save_pretrained(folder)
    return vlm, processor


def sft_argv(base, data, images, teacher: str, output_dir, head: dict | None = None, **settings) -> list[str]:
    """`train/sft.py` arguments for a stage-2 ROSS^D run on the native VLM folder `base`, one CPU process by default;
    `settings` add or replace keys (`save_strategy='"no"'`: YAML would read a bare no as false)."""
    overrides = {**TINY_OBJECTIVE, **(head or {})}  # the small ROSS head
    values = {
        "model_name_or_path": base, "objective": "denoise", "teacher": teacher, "teacher_subfolder": "vae",
        "model_overrides": "{" + ", ".join(f"{k}: {v}" for k, v in overrides.items()) + "}",
        "data_path": data, "image_folder": images, "data_format": "chat", "stage": 2, "output_dir": output_dir,
        "max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1,
        "save_strategy": '"no"', "report_to": "none", "use_cpu": "true", "model_max_length": 512, **settings,
    }  # fmt: skip
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def write_sft_script(folder: Path) -> Path:
    script = folder / "sft.py"
    script.write_text(SFT_SCRIPT.format(repo=str(REPO_ROOT)))
    return script


def run_sft_process(script: Path, argv: list[str], cwd: Path, kill_after_step: int | None = None):
    """`python script argv` on one CPU process (see `SFT_SCRIPT`)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("KILL_AFTER_STEP", None)
    if kill_after_step is not None:
        env["KILL_AFTER_STEP"] = str(kill_after_step)
    return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=400,
                          env=env, cwd=cwd)  # fmt: skip


def assert_same_saved_weights(folder, reference, rtol: float, atol: float) -> None:
    """Every tensor of the VLM (`model.safetensors`) and the head (`ross_head/model.safetensors`) of two folders
    `save_pretrained` wrote is equal within `rtol` / `atol`."""
    from safetensors.torch import load_file

    for part in ("model.safetensors", f"{HEAD_FOLDER}/model.safetensors"):
        expected, got = load_file(str(Path(reference) / part)), load_file(str(Path(folder) / part))
        assert expected.keys() == got.keys(), part
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=rtol, atol=atol, msg=f"{part}: {key}")
