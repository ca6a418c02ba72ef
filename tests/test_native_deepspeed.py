"""DeepSpeed ZeRO-2 / ZeRO-3 runs of `train/sft.py` on native VLMs (`RossForPreTraining`), 2 CPU processes with a
text-only rank (tiny random-weight configs, offline). A file of its own so that pytest-xdist (`--dist loadfile`) runs
these two-process runs beside tests/test_native_distributed.py's. See docs/native-vlms.md; tests/test_distributed.py
says how DeepSpeed runs on CPU here."""

import json

import numpy as np
import pytest

from modeling_ross.modeling_ross_pretraining import RossForPreTraining
from tests.native_sft import (
    ARCHITECTURES,
    MORE_ARCHITECTURES,
    REPO_ROOT,
    images_counted,
    save_base,
    sft_argv,
    write_native_data,
    write_sft_script,
)


# ---- DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU processes, one rank text-only ----


def _deepspeed_cases():
    """In `make test`: ZeRO-3 (partitioned parameters gathered per module, and gradients reduced in bucket order: the
    stricter case for a text-only rank) on the four required architectures, ZeRO-2 on Qwen2.5-VL and Llava. The rest
    of the matrix (ZeRO-2 on Qwen3-VL and LLaVA-OneVision, both stages on Gemma 3 and SmolVLM) is marked `extended`
    (`make test-extended`): each 2-process run takes both cores of the test machine for ~20 s."""
    cases = []
    for arch in ARCHITECTURES + MORE_ARCHITECTURES:
        for zero in ("zero3", "zero2"):
            in_make_test = arch in ARCHITECTURES and (zero == "zero3" or arch.id in ("qwen2_5_vl", "llava"))
            marks = () if in_make_test else (pytest.mark.extended,)
            cases.append(pytest.param(arch.values[0], zero, id=f"{zero}-{arch.id}", marks=marks))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("build, zero", _deepspeed_cases())
def test_deepspeed_two_processes_with_a_text_only_rank(build, zero, kl16_vae, tmp_path):
    """torchrun, 2 CPU processes, DeepSpeed ZeRO-2 / ZeRO-3: records alternate image / text-only with a sequential
    sampler and one sample per rank, so rank 1 never has an image. Every rank must call the same modules (the idle
    tower, teacher and denoiser at zero weight) or ZeRO-3's gathers hang; the run finishing, and the saved plain VLM
    + ross_head with gathered (non-empty) weights, show it."""
    from tests.test_distributed import _torchrun

    base = tmp_path / "base"
    save_base(build, base)
    data, images = write_native_data(tmp_path, "llava")
    records = json.loads(data.read_text())[:3]  # one image, two images, text-only
    data.write_text(json.dumps([records[0], records[2], records[1], records[2]]))
    output_dir = tmp_path / "out"
    argv = sft_argv(
        base, data, images, kl16_vae, output_dir, use_cpu="false",
        deepspeed=REPO_ROOT / "train" / "configs" / f"{zero}.json", per_device_train_batch_size=1,
        gradient_accumulation_steps=1, train_sampling_strategy="sequential",
    )  # fmt: skip
    result = _torchrun(argv, cwd=tmp_path, script=str(write_sft_script(tmp_path)))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    assert summary["images_seen_per_rank"] == [images_counted(build, 3), 0]  # rank 1 never saw an image
    assert summary["final_visual_loss"] > 0 and np.isfinite(summary["final_text_loss"])
    restored = RossForPreTraining.from_pretrained(output_dir / "model")
    assert all(p.numel() > 0 for p in restored.parameters())
    assert restored.denoiser.final_layer.linear.weight.abs().sum() > 0  # trained and gathered
