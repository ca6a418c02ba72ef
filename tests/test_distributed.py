"""Two-process DeepSpeed runs of train/sft.py on CPU (ZeRO-2 stage 1; ZeRO-3 stage 2 with a text-only rank).

How DeepSpeed runs on CPU here (no GPU, gloo):
- launcher: `torchrun --nproc_per_node 2` (it sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT).
  `accelerate launch --cpu --num_processes 2` is not usable: with `--cpu` it starts one process, and accelerate
  disables DeepSpeed whenever `cpu=True`.
- `DS_ACCELERATOR=cpu`: DeepSpeed's CPU accelerator (communication falls back to gloo without oneCCL).
- `use_cpu` must stay unset (accelerate would silently drop DeepSpeed); `train.config.setup_cpu_deepspeed` then
  creates accelerate's `PartialState` with the gloo backend and DeepSpeed flagged before `TrainingArguments`, and sets
  `accelerator_config.use_configured_state` so the Trainer reuses it.
- `OMP_NUM_THREADS=1` keeps two processes from oversubscribing the cores.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch


REPO_ROOT = Path(__file__).resolve().parents[1]
SFT = str(REPO_ROOT / "train" / "sft.py")
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, cwd) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("ACCELERATE_USE_CPU", None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), SFT, *args,
    ]
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as error:  # a hang (e.g. a rank skipping a module under ZeRO-3) ends here
        pytest.fail(f"2-process run did not finish within {TIMEOUT_S}s:\n{(error.stdout or b'')[-3000:]!r}")


def _check_folder(folder: Path):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file()
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    saved = load_file(str(folder / "model.safetensors"))
    assert any(key.startswith("denoiser.") for key in saved)  # the ZeRO-3 shards were gathered, denoiser included
    assert not any(key.startswith("teacher.") for key in saved)
    for name, param in model.named_parameters():
        assert param.numel() > 0 and torch.equal(param.detach(), saved[name]), name
    return model


def _summary(result, output_dir: Path) -> dict:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads((output_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.mark.slow
def test_zero2_two_processes_stage1(tiny_root):
    output_dir = tiny_root / "zero2"
    result = _torchrun(
        [
            "--config", str(REPO_ROOT / "train" / "configs" / "tiny_stage1.yaml"),
            "--prepare_tiny", f"{{root: {tiny_root / 'tiny'}, num_images: 8, stage: plain}}",
            "--use_cpu", "false", "--deepspeed", str(REPO_ROOT / "train" / "configs" / "zero2.json"),
            "--output_dir", str(output_dir), "--max_steps", "2", "--per_device_train_batch_size", "2",
        ],
        cwd=tiny_root,
    )
    summary = _summary(result, output_dir)
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    assert summary["final_visual_loss"] > 0 and summary["trainable_parameters"]["language_model"] == 0
    _check_folder(output_dir / "model")


@pytest.mark.slow
def test_zero3_two_processes_with_a_text_only_rank(tiny_root):
    """
    Records alternate image / text-only, the sampler is sequential and each rank takes one sample per step; accelerate
    deals batches out round-robin (rank r gets batches r, r+2, ...), so rank 0 always has an image and rank 1 never
    does. Under ZeRO-3 every rank must still call the vision tower, teacher and denoiser (the model runs them on a
    dummy image at zero weight) or the parameter all-gathers deadlock; finishing within the timeout shows it.
    """
    from train.synthetic import write_llava_dataset

    data_dir = tiny_root / "alternating"
    path = write_llava_dataset(str(data_dir), num_images=3, seed=1, stage="sft", text_only_fraction=0.5)
    records = json.loads(Path(path).read_text())
    images = [r for r in records if "image" in r]
    texts = [r for r in records if "image" not in r]
    assert len(images) == len(texts) == 3
    alternating = [r for pair in zip(images, texts) for r in pair]
    (data_dir / "alternating.json").write_text(json.dumps(alternating))

    output_dir = tiny_root / "zero3"
    result = _torchrun(
        [
            "--config", str(REPO_ROOT / "train" / "configs" / "tiny_stage2.yaml"),
            "--prepare_tiny", f"{{root: {tiny_root / 'tiny'}, num_images: 8, stage: plain}}",
            "--data_path", str(data_dir / "alternating.json"), "--image_folder", str(data_dir),
            "--use_cpu", "false", "--deepspeed", str(REPO_ROOT / "train" / "configs" / "zero3.json"),
            "--output_dir", str(output_dir), "--max_steps", "3", "--per_device_train_batch_size", "1",
            "--gradient_accumulation_steps", "1", "--train_sampling_strategy", "sequential",
        ],
        cwd=tiny_root,
    )
    summary = _summary(result, output_dir)
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    # Only rank 0's images count: the visual loss is their mean (rank 1's zero-weight dummy adds nothing).
    assert summary["final_visual_loss"] > 0 and summary["trainable_parameters"]["language_model"] > 0
    _check_folder(output_dir / "model")
