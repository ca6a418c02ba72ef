"""Two-process runs on CPU, each compared with one process on the same global batch: plain DDP (gloo) gradients and
logged losses; DeepSpeed ZeRO-2 (stage 1) weights and losses; ZeRO-3 (stage 2) with a text-only rank; benchmarks
during training (DDP and ZeRO-3), evaluated once and logged alike on both ranks.

How DeepSpeed runs on CPU here (no GPU, gloo):
- launcher: `torchrun --nproc_per_node 2` (it sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT).
  `accelerate launch --cpu --num_processes 2` is not usable: with `--cpu` it starts one process, and accelerate
  disables DeepSpeed whenever `cpu=True`.
- `DS_ACCELERATOR=cpu`: DeepSpeed's CPU accelerator (communication falls back to gloo without oneCCL).
- `use_cpu` must stay unset (accelerate would silently drop DeepSpeed); `ross.train.sft.setup_cpu_deepspeed` then
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


def _torchrun(args, cwd, nproc: int = 2, script: str = SFT) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("ACCELERATE_USE_CPU", None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), script, *args,
    ]
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as error:  # a hang (e.g. a rank skipping a module under ZeRO-3) ends here
        pytest.fail(f"{nproc}-process run did not finish within {TIMEOUT_S}s:\n{(error.stdout or b'')[-3000:]!r}")


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


def _trained_weights(folder: Path, prefixes) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k.startswith(prefixes)}


@pytest.mark.slow
def test_two_ranks_give_the_gradients_of_one_process_with_twice_the_batch(tiny_components, tmp_path):
    """transformers 5 treats a model whose forward takes **kwargs as computing its own GA / rank normalisation; with
    `average_tokens_across_devices` the Trainer multiplies the loss by the world size. RossTrainer's weighting (text by
    supervised tokens, visual by images, both over the step and over ranks) must make 2 ranks x batch B (x GA 2)
    equal 1 process x batch 2B, for the text part (lm_head), the visual part (the head) and the logged components."""
    components = json.dumps({k: str(v) for k, v in tiny_components.items()})
    script = str(REPO_ROOT / "tests" / "ddp_rank_equivalence.py")
    results = {}
    for nproc, batch in ((1, 4), (2, 2)):
        out = tmp_path / f"ddp{nproc}"
        result = _torchrun([components, str(batch), str(out)], cwd=tmp_path, nproc=nproc, script=script)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        results[nproc] = torch.load(out / "result.pt")
    one, two = results[1], results[2]
    # Same 8 samples; rank 0 gets 1 image per micro-batch, rank 1 gets 3: unequal shares of the step's images.
    assert one["image_counts"] == [[4, 4]] and two["image_counts"] == [[1, 1], [3, 3]]
    for key in ("loss", "text_loss", "visual_loss"):
        assert two["log"][key] == pytest.approx(one["log"][key], rel=1e-5), (key, one["log"], two["log"])
    assert one["grads"].keys() == two["grads"].keys()
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert one["grads"]["lm_head.weight"].abs().max() > 1e-4  # text part
    assert one["grads"]["denoiser.fc2.weight"].abs().max() > 1e-4  # visual part


@pytest.mark.slow
def test_zero2_two_processes_stage1_match_one_process(tiny_root):
    """ZeRO-2, stage 1, a deterministic objective (ROSS^R-Latent on the posterior mode, so the ranks' RNG streams do
    not matter): 2 ranks x batch 2 end where 1 process x batch 4 ends, weights and logged losses."""
    common = [
        "--config", str(REPO_ROOT / "train" / "configs" / "tiny_stage1.yaml"),
        "--prepare_tiny", f"{{root: {tiny_root / 'tiny'}, num_images: 8, stage: plain}}",
        "--objective", "regress", "--model_overrides", "{latent_sample: mode}",
        "--use_cpu", "false", "--deepspeed", str(REPO_ROOT / "train" / "configs" / "zero2.json"),
        "--max_steps", "2", "--train_sampling_strategy", "sequential", "--max_grad_norm", "0",
    ]  # fmt: skip
    summaries, weights = {}, {}
    for nproc, batch in ((1, 4), (2, 2)):
        output_dir = tiny_root / f"zero2_{nproc}"
        result = _torchrun(
            [*common, "--output_dir", str(output_dir), "--per_device_train_batch_size", str(batch)],
            cwd=tiny_root, nproc=nproc,
        )  # fmt: skip
        summaries[nproc] = _summary(result, output_dir)
        weights[nproc] = _trained_weights(output_dir / "model", ("model.projector.", "denoiser."))
        _check_folder(output_dir / "model")
    one, two = summaries[1], summaries[2]
    assert two["world_size"] == 2 and two["global_step"] == 2 and two["trainable_parameters"]["language_model"] == 0
    assert sum(two["images_seen_per_rank"]) == sum(one["images_seen_per_rank"]) == 8
    for key in ("final_text_loss", "final_visual_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), key
    assert weights[1].keys() == weights[2].keys() and weights[1]
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[2][name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_zero3_two_processes_with_a_text_only_rank(tiny_root):
    """
    Records alternate image / text-only, the sampler is sequential and each rank takes one sample per step; accelerate
    deals batches out round-robin (rank r gets batches r, r+2, ...), so rank 0 always has an image and rank 1 never
    does. Under ZeRO-3 every rank must still call the vision tower, teacher and denoiser (the model runs them on a
    dummy image at zero weight) or the parameter all-gathers deadlock; finishing within the timeout shows it.
    Compared with 1 process x batch 2 on the same samples: the text loss and the lm_head (text gradients only; the
    denoiser's noise differs between the runs, so the rest of the model does not) after one step.
    """
    from ross.train.synthetic import write_llava_dataset

    data_dir = tiny_root / "alternating"
    path = write_llava_dataset(str(data_dir), num_images=3, seed=1, stage="sft", text_only_fraction=0.5)
    records = json.loads(Path(path).read_text())
    images = [r for r in records if "image" in r]
    texts = [r for r in records if "image" not in r]
    assert len(images) == len(texts) == 3
    alternating = [r for pair in zip(images, texts) for r in pair]
    (data_dir / "alternating.json").write_text(json.dumps(alternating))

    summaries, heads = {}, {}
    for nproc, batch, steps in ((2, 1, 3), (1, 2, 1), (2, 1, 1)):
        output_dir = tiny_root / f"zero3_{nproc}_{steps}"
        result = _torchrun(
            [
                "--config", str(REPO_ROOT / "train" / "configs" / "tiny_stage2.yaml"),
                "--prepare_tiny", f"{{root: {tiny_root / 'tiny'}, num_images: 8, stage: plain}}",
                "--data_path", str(data_dir / "alternating.json"), "--image_folder", str(data_dir),
                "--use_cpu", "false", "--deepspeed", str(REPO_ROOT / "train" / "configs" / "zero3.json"),
                "--output_dir", str(output_dir), "--max_steps", str(steps),
                "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", "1",
                "--train_sampling_strategy", "sequential", "--max_grad_norm", "0",
            ],
            cwd=tiny_root, nproc=nproc,
        )  # fmt: skip
        summaries[nproc, steps] = _summary(result, output_dir)
        heads[nproc, steps] = _trained_weights(output_dir / "model", ("lm_head.",))
        if steps == 3:
            _check_folder(output_dir / "model")
    long_run = summaries[2, 3]
    assert long_run["world_size"] == 2 and long_run["global_step"] == 3
    assert long_run["images_seen_per_rank"] == [3, 0]  # rank 1 never saw an image
    # Only rank 0's images count: the visual loss is their mean (rank 1's zero-weight dummy adds nothing).
    assert long_run["final_visual_loss"] > 0 and long_run["trainable_parameters"]["language_model"] > 0
    one, two = summaries[1, 1], summaries[2, 1]
    assert two["images_seen_per_rank"] == [1, 0] and one["images_seen_per_rank"] == [1]
    assert two["final_text_loss"] == pytest.approx(one["final_text_loss"], rel=1e-5)
    torch.testing.assert_close(heads[2, 1]["lm_head.weight"], heads[1, 1]["lm_head.weight"], rtol=1e-5, atol=1e-6)


# Runs sft.py with a callback that writes each rank's log history (the run's own files come from rank 0 only).
_LOG_EVERY_RANK = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from transformers import TrainerCallback
from ross.train.sft import main

class DumpLogs(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"log_history_rank{{args.process_index}}.json"
        path.write_text(json.dumps(state.log_history))

main(sys.argv[1:], callbacks=[DumpLogs()])
"""


@pytest.mark.slow
@pytest.mark.parametrize("zero", [None, "zero3"])
def test_two_ranks_evaluate_benchmarks_once_and_log_the_same_scores(tiny_root, zero):
    """BenchmarkEvalCallback on 2 processes: DDP (rank 0 alone generates, the others wait in the broadcast) and ZeRO-3
    (both ranks generate: each forward all-gathers the shards; finishing within the timeout shows no rank skipped
    one). Only rank 0 writes files; both ranks log the same values at the same steps."""
    from ross.eval.synthetic import write_benchmarks

    bench = tiny_root / "bench"
    if not bench.exists():
        write_benchmarks(str(bench), num_items=6, names=["synthetic_pope"])
    script = tiny_root / "log_every_rank.py"
    script.write_text(_LOG_EVERY_RANK.format(repo=str(REPO_ROOT)))
    output_dir = tiny_root / f"bench_{zero or 'ddp'}"
    sharding = []
    if zero:
        sharding = ["--use_cpu", "false", "--deepspeed", str(REPO_ROOT / "train" / "configs" / f"{zero}.json")]
    result = _torchrun(
        [
            "--config", str(REPO_ROOT / "train" / "configs" / "tiny_stage2.yaml"),
            "--prepare_tiny", f"{{root: {tiny_root / 'tiny'}, num_images: 8, stage: sft}}", *sharding,
            "--output_dir", str(output_dir), "--max_steps", "2", "--per_device_train_batch_size", "1",
            "--gradient_accumulation_steps", "1", "--benchmarks", f"[synthetic_pope={bench / 'synthetic_pope'}]",
            "--benchmark_every_steps", "1", "--benchmark_limit", "4", "--benchmark_batch_size", "2",
            "--benchmark_max_new_tokens", "4",
        ],
        cwd=tiny_root, script=str(script),
    )  # fmt: skip
    summary = _summary(result, output_dir)
    assert summary["world_size"] == 2 and summary["benchmarks"]["step"] == 2
    logs = [json.loads((output_dir / f"log_history_rank{r}.json").read_text()) for r in (0, 1)]
    evals = [[h for h in log if "eval_synthetic_pope/accuracy" in h] for log in logs]
    assert [h["step"] for h in evals[0]] == [1, 2] and evals[0] == evals[1]
    assert all(any("loss" in h and h["step"] == s for h in logs[0]) for s in (1, 2))
    files = sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("scores.json"))
    assert files == ["eval/step-1/synthetic_pope/scores.json", "eval/step-2/synthetic_pope/scores.json",
                     "model/eval/synthetic_pope/scores.json"]  # fmt: skip
    scores = json.loads((output_dir / "eval" / "step-2" / "synthetic_pope" / "scores.json").read_text())
    assert summary["benchmarks"]["eval_synthetic_pope/accuracy"] == scores["metrics"]["accuracy"]
