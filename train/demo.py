"""The default run (`make demo`): ROSS end to end on one CPU, offline, in minutes.

    python -m ross.train.demo [--out runs] [--baseline] [--fast] [--probe] [--stop-after PHASE]

Phases (each timed; the summary says how long each took):
1. components  tiny SigLIP tower, Qwen2 LLM and AutoencoderKL teacher as Hub-style folders, the tower and the VAE
               briefly pretrained on synthetic scenes (`ross.train.pretrain_components`), cached under
               `<out>/components/<settings hash>/`;
2. data        synthetic LLaVA-format training data (stage-1 captions, stage-2 instructions with text-only samples)
               and the five synthetic benchmarks (held-out scenes), cached under `<out>/data/<settings hash>/`;
3. stage1      `accelerate launch train/sft.py --config train/configs/tiny_stage1.yaml` (projector + denoiser);
4. stage2      the same with `tiny_stage2.yaml`, continuing from the stage-1 model (projector + LLM + denoiser);
5. eval        the Hub-ready model folder, loaded as a user would (remote code), on every synthetic benchmark with the
               eval runner's batched greedy generation; accuracy per benchmark and per question type next to chance;
6. reconstruct the ROSS-active check (registered in `DemoSettings`): on held-out images, the visual loss with the true
               visual outputs vs shuffled across images, and the PSNR of ROSS's reconstructions against each image's
               teacher decode, another image's, and a constant image; a labelled PNG grid of the reconstructions.

Outputs: `<out>/demo/model/` (the stage-2 model), `<out>/demo/summary.json`, `<out>/demo/reconstructions.png`,
`<out>/demo/eval/<benchmark>/` (predictions, scores). `--baseline` trains the LLaVA baseline (no visual loss) on the
same components and data into `<out>/demo_baseline/`, to compare with ROSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


# Before transformers / huggingface_hub are imported: they read these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers import AutoProcessor  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from ross.eval.generation import evaluate_model, get_benchmark, load_model  # noqa: E402
from ross.eval.synthetic import BENCHMARKS, DEPTH_BENCHMARKS, chance_rate, write_benchmarks  # noqa: E402
from ross.model_cards.card import build_model_card  # noqa: E402
from modeling_ross import RossForConditionalGeneration  # noqa: E402
from modeling_ross.objective import shuffle_across_images  # noqa: E402  (the check's wrong conditions)
from ross.train.pretrain_components import (  # noqa: E402
    ComponentSettings,
    component_paths,
    format_detail,
    prepare_components,
    psnr,
)
from ross.train.build import quiet_deepspeed_on_cpu  # noqa: E402
from ross.train.synthetic import write_llava_dataset  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]
PHASES = ("components", "data", "stage1", "stage2", "eval", "reconstruct")
DATA_CACHE_VERSION = 1
DEMO_NAMES = {False: "ross-tiny-demo", True: "ross-tiny-demo-baseline"}  # model card titles, by `--baseline`
ABLATION_RESULT = REPO_ROOT / "bench" / "results" / "ablation_quick.json"  # the baseline printed next to ROSS


@dataclass
class StageSettings:
    """`train/sft.py` overrides of one stage (on top of its YAML config)."""

    max_steps: int
    batch_size: int
    learning_rate: float
    gradient_accumulation_steps: int = 1

    def overrides(self) -> dict:
        return {
            "max_steps": self.max_steps,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "learning_rate": self.learning_rate,
        }


@dataclass
class DemoSettings:
    """Everything the default run does, sized for 2 CPU cores and about 10 minutes (components fitted once)."""

    smoke_run: bool = False  # set by `fast()`: the numbers of such a run mean nothing
    components: ComponentSettings = field(default_factory=ComponentSettings)
    # data (training scenes: seed 0; benchmarks: seed 1 and their own streams, so held out)
    plain_images: int = 2000
    sft_images: int = 3000
    benchmark_items: int = 120
    image_size: int = 48
    # RGB-D (bench/ablation_depth.yaml): stage-2 data of the depth world ("which object is closer?" turns) written
    # twice from the same scenes, RGB only (`stage2_data`) and RGB + depth map (`stage2_data_rgbd`), + synthetic_depth
    depth: bool = False
    # the denoiser of ROSS^D, sized so that it can use its condition: 64 wide, 1 deep (117K parameters). Trained
    # alone on the teacher's targets for 1000 steps it reaches a loss of 0.24 with a zero condition and 0.08 with an
    # oracle one; the 8-wide denoiser of protocol v2 ("0.8% of the LLM") reached 0.83 vs 0.81, i.e. it could not read
    # its condition (issue 22). Its position table is stored, trained in stage 1 and frozen in stage 2, as in the
    # recipe configs.
    denoiser: dict = field(
        default_factory=lambda: {
            "denoiser_hidden_size": 64,
            "denoiser_depth": 1,
            "denoiser_num_heads": 4,
            "num_noise_draws": 2,
            "denoiser_position_embedding": "learned",
        }
    )
    latent_cache: bool = True  # ROSS reads the frozen teacher's targets from a cache built once per components
    stage1: StageSettings = field(default_factory=lambda: StageSettings(max_steps=120, batch_size=16, learning_rate=1e-3))
    stage2: StageSettings = field(default_factory=lambda: StageSettings(max_steps=1000, batch_size=16, learning_rate=1e-3))
    # evaluation: every answer of the synthetic benchmarks is at most 3 tokens + end of turn
    eval_batch_size: int = 32
    eval_max_new_tokens: int = 6
    # reconstruction preview (the first `num_reconstructions` of the check's images)
    num_reconstructions: int = 8
    reconstruction_steps: int = 50
    # The ROSS-active check at the end of the run, pre-registered (issue 22) before the first run with these
    # settings: on `check_images` held-out images (synthetic_colour's), the visual loss with each image's own visual
    # outputs must be at least `check_loss_margin` (relative) below the loss with the visual outputs shuffled across
    # the images (same noise and timesteps, `check_noise_rounds` rounds), and ROSS's reconstructions must be closer to
    # their own image's teacher decode than to another image's by `check_psnr_margin_db`, and closer than the best
    # constant image (the mean teacher decode) is.
    check_images: int = 32
    check_noise_rounds: int = 8
    check_loss_margin: float = 0.10
    check_psnr_margin_db: float = 1.0

    @classmethod
    def fast(cls) -> "DemoSettings":
        """A smoke run for tests: same pipeline and shapes, a handful of samples and steps."""
        return cls(
            smoke_run=True,
            components=ComponentSettings.fast(),
            plain_images=32,
            sft_images=32,
            benchmark_items=12,
            stage1=StageSettings(max_steps=2, batch_size=4, learning_rate=1e-3),
            stage2=StageSettings(max_steps=3, batch_size=4, learning_rate=1e-3),
            eval_batch_size=16,
            eval_max_new_tokens=3,
            num_reconstructions=4,
            reconstruction_steps=5,
            check_images=8,
            check_noise_rounds=2,
        )

    def data_key(self) -> str:
        blob = json.dumps(
            {
                "version": DATA_CACHE_VERSION,
                "plain": self.plain_images,
                "sft": self.sft_images,
                "bench": self.benchmark_items,
                "size": self.image_size,
                **({"depth": True} if self.depth else {}),  # the keys of RGB-only data stay as they were
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def prepare_data(root: Path, settings: DemoSettings) -> dict:
    """Training data and benchmarks under `root/<data key>/`, written once (a `data.json` marks a complete folder)."""
    folder = root / settings.data_key()
    manifest_file = folder / "data.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        log(f"data: reusing {folder}")
        return {**manifest, "cached": True}

    tmp = root / f".{settings.data_key()}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"data: writing {settings.plain_images} caption + {settings.sft_images} instruction images and benchmarks")
    train_dir = tmp / "train"
    plain = write_llava_dataset(str(train_dir), settings.plain_images, seed=0, size=settings.image_size, stage="plain")
    depth = {"depth_questions": True} if settings.depth else {}
    sft = write_llava_dataset(str(train_dir), settings.sft_images, seed=0, size=settings.image_size, stage="sft", **depth)
    names = BENCHMARKS + (DEPTH_BENCHMARKS if settings.depth else ())
    benchmarks = write_benchmarks(str(tmp / "benchmarks"), settings.benchmark_items, seed=1, size=settings.image_size,
                                  names=names)  # fmt: skip
    with open(sft) as f:
        sft_records = len(json.load(f))

    def rel(path):
        return str(Path(path).relative_to(tmp))

    manifest = {
        "key": settings.data_key(),
        "image_folder": "train",
        "stage1_data": rel(plain),
        "stage2_data": rel(sft),
        "stage1_records": settings.plain_images,
        "stage2_records": sft_records,
        "stage2_text_only_records": sft_records - settings.sft_images,
        "benchmarks": {name: rel(path) for name, path in benchmarks.items()},
        "benchmark_items": settings.benchmark_items,
    }
    if settings.depth:
        manifest["stage2_data_rgbd"] = rel(write_llava_dataset(
            str(train_dir), settings.sft_images, seed=0, size=settings.image_size, stage="sft", with_depth=True))
    (tmp / "data.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return {**manifest, "cached": False}


def _yaml_flow(mapping: dict) -> str:
    """A dict as a one-line YAML flow mapping (how `train/sft.py` reads a dict-valued override)."""
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in mapping.items()) + "}"


PROGRESS_PREFIX = "[ross] progress "  # the lines `ross.train.callbacks.ProgressCallback` prints
CACHE_PROGRESS_PREFIX = "latent cache:"  # `train/latent_cache.py`'s tqdm bar while it encodes a stage's images
NON_TTY_PROGRESS_SECONDS = 5.0  # without a terminal: at most one progress line per this many seconds (and the last)


def stream_process(command: list[str], log, env: dict, cwd) -> int:
    """Run `command`, writing all its output (stdout and stderr) to the open file `log`, and show its progress lines
    on the console: one line updated in place on a terminal, else a line every few seconds. Returns the exit code."""
    tty = sys.stdout.isatty()
    last_print, shown = 0.0, ""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    with process:
        for line in process.stdout:  # text mode: tqdm's carriage returns end lines too
            log.write(line if line.endswith("\n") else line + "\n")
            if line.startswith(CACHE_PROGRESS_PREFIX):  # the teacher encoding the stage's images (tqdm, stderr)
                counts = line.rsplit("|", 1)[-1].strip()  # "85/188 [00:20<00:25,  4.1batch/s]"
                if not counts.endswith("]"):
                    continue
                counts = counts.replace("[", "(").replace("]", ")")
                line = f"{PROGRESS_PREFIX}{line.split('|')[0].strip()} {counts}"
            if not line.startswith(PROGRESS_PREFIX):
                continue
            log.flush()
            text = "[demo] " + line[len(PROGRESS_PREFIX):].strip()
            if tty:
                width = shutil.get_terminal_size((100, 20)).columns - 1
                print("\r" + text[:width].ljust(len(shown[:width])), end="", flush=True)
                shown = text
                continue
            if " step " in text:
                step = text.split(" step ", 1)[-1].split(" ", 1)[0]  # "40/1000"
            else:  # "latent cache: 45% 85/188 (00:20<00:25, 4.1batch/s)"
                step = next((w for w in text.split() if "/" in w and w.replace("/", "").isdigit()), "")
            done, _, total = step.partition("/")
            now = time.monotonic()
            if now - last_print >= NON_TTY_PROGRESS_SECONDS or done == total or not last_print:
                print(text, flush=True)
                last_print = now
    if tty and shown:
        print(flush=True)
    return process.wait()


def _threads() -> str:
    """Intra-op threads of a stage: `OMP_NUM_THREADS` when the caller set it (the tests set 1: their models are so
    small that a second thread only adds synchronisation), else one per core. accelerate launch would otherwise
    overwrite the caller's value with its `--num_cpu_threads_per_process`."""
    return os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count() or 1)


def run_stage(stage: int, out_dir: Path, overrides: dict, log_file: Path, cpu: bool = True) -> dict:
    """`accelerate launch train/sft.py --config train/configs/tiny_stage{stage}.yaml --key value ...` in one process
    (on the CPU unless `cpu=False`); the output goes to `log_file`. Returns `<out_dir>/summary.json` plus the first
    and last logged losses."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        *(["--cpu"] if cpu else []), "--num_cpu_threads_per_process", _threads(),
        str(REPO_ROOT / "train" / "sft.py"), "--config", str(REPO_ROOT / "train" / "configs" / f"tiny_stage{stage}.yaml"),
    ]  # fmt: skip
    for key, value in overrides.items():
        command += [f"--{key}", _yaml_flow(value) if isinstance(value, dict) else str(value)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as f:
        f.write("$ " + " ".join(command) + "\n\n")
        f.flush()
        returncode = stream_process(command, log=f, env=env, cwd=REPO_ROOT)
    if returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"stage {stage} failed (exit {returncode}); log: {log_file}\n{tail}")
    return json.loads((out_dir / "summary.json").read_text())  # first / last logged losses included


def evaluate(model_dir: Path, data_root: Path, data: dict, out_dir: Path, settings: DemoSettings) -> dict:
    """Every synthetic benchmark through the eval runner's generation and scoring (one model load, remote code)."""
    model, processor = load_model(model_dir, dtype="float32", device="cpu")
    results = {}
    for name, rel_path in data["benchmarks"].items():
        bench = get_benchmark(name)
        scores = evaluate_model(
            model, processor, bench, data_root / rel_path, batch_size=settings.eval_batch_size,
            out_dir=out_dir / name, max_new_tokens=settings.eval_max_new_tokens, progress=True,
            model_name=str(model_dir),
        )  # fmt: skip  (progress: the eval runner's live line on stderr: items done, items/s, ETA)
        records = [json.loads(line) for line in (out_dir / name / "predictions.jsonl").read_text().splitlines()]
        results[name] = benchmark_report(bench, records, scores)
        log(
            f"eval: {name}: accuracy {results[name]['accuracy']:.3f} (chance {results[name]['chance']:.3f}), "
            f"{scores['seconds']:.0f}s"
        )
    return results


def _above_chance(accuracy: float, chance: float, n: int) -> bool:
    """Above chance by more than two binomial standard errors (of a chance-level guesser)."""
    return n > 0 and accuracy - chance > 2 * math.sqrt(chance * (1 - chance) / n)


def benchmark_report(bench, records: list[dict], scores: dict) -> dict:
    """Accuracy of a benchmark and of each of its question types (`bench.type_column`), next to the uniform-guess
    chance rates (`bench.chance`; per question type from `ross.eval.synthetic.chance_rate`), plus `bench.report_metrics`
    (e.g. MMVP's pair accuracy, next to its own chance rate)."""
    metrics = scores["metrics"]
    accuracy = metrics.get("accuracy", metrics.get("exact_match"))
    chance = bench.chance["accuracy"]
    report = {
        "accuracy": accuracy,
        "chance": chance,
        "num_items": len(records),
        "above_chance": _above_chance(accuracy, chance, len(records)),
        "primary_metric": scores["primary_metric"],
        "primary_value": scores["primary_value"],
        "seconds": scores["seconds"],
    }
    for metric in bench.report_metrics:
        report[metric] = metrics.get(metric)
        if metric in bench.chance:
            report[metric.replace("accuracy", "chance")] = bench.chance[metric]
    groups = defaultdict(list)
    for record in records:
        groups[str(record.get(bench.type_column))].append(record)
    types = {}
    for qtype, rows in sorted(groups.items()):
        sub = bench.score(rows, "lmms-eval")
        sub_accuracy = sub.get("accuracy", sub.get("exact_match"))
        type_chance = chance_rate(bench.name, qtype) if ":" in qtype else chance
        types[qtype] = {
            "accuracy": sub_accuracy,
            "chance": type_chance,
            "n": len(rows),
            "above_chance": _above_chance(sub_accuracy, type_chance, len(rows)),
        }
        for metric in bench.report_metrics:
            if metric in bench.chance:  # per-type values only for metrics that have a chance rate (pair accuracy)
                types[qtype][metric] = sub[metric]
    report["question_types"] = types
    return report


def _psnr01(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of `(M, 3, S, S)` images in [0, 1] -> `(M,)`."""
    mse = (a.float() - b.float()).square().flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def condition_check(model, batch: dict, settings: DemoSettings) -> dict:
    """Does ROSS's denoiser read the image? The visual loss on these images with their own visual outputs vs with the
    visual outputs shuffled across the images, each averaged over `check_noise_rounds` rounds of noise draws and
    timesteps shared by both (a paired comparison). Returns both losses and whether the registered margin is met."""
    outputs = model.model(
        input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"],
        output_hidden_states=model.condition_hidden_states_request(),
    )  # fmt: skip
    condition = model.get_visual_outputs(outputs)  # (M, N, D), what the objective was trained on
    torch.manual_seed(0)  # the teacher draws its target from the posterior
    target = model.teacher(batch["pixel_values"]).float()  # (M, N, C)
    losses = {"true": [], "shuffled": []}
    for round_ in range(settings.check_noise_rounds):
        for name, cond in (("true", condition), ("shuffled", shuffle_across_images(condition))):
            generator = torch.Generator().manual_seed(round_)  # the same noise and timesteps for both
            loss = model.objective.loss(model.denoiser, model.teacher, cond, target, generator=generator)
            losses[name].append(loss.item())
    true, wrong = (sum(v) / len(v) for v in (losses["true"], losses["shuffled"]))
    return {
        "images": int(condition.shape[0]),
        "noise_rounds": settings.check_noise_rounds,
        "visual_loss_true": round(true, 4),
        "visual_loss_shuffled": round(wrong, 4),
        "relative_gap": round((wrong - true) / wrong, 4) if wrong > 0 else 0.0,
        "margin": settings.check_loss_margin,
        "passed": wrong > 0 and (wrong - true) / wrong >= settings.check_loss_margin,
    }


def save_reconstructions(model_dir: Path, data_root: Path, data: dict, path: Path, settings: DemoSettings) -> dict:
    """The end-of-run ROSS-active check and a labelled PNG grid of its first `num_reconstructions` images.

    Rows: the images as the tower saw them; the teacher VAE's decode of its own latents (the ceiling); ROSS's
    reconstructions from the LLM's visual outputs (`model.reconstruct`: reverse diffusion with the trained denoiser,
    then the VAE decoder); the same with each image's visual outputs swapped for another image's. Each tile shows its
    PSNR against the image's teacher decode. Returns the check (`condition_check` plus PSNRs) and `passed`."""
    # The checkpoint holds no teacher weights by design (the frozen teacher is reloaded from its own folder), so the
    # loader's MISSING table for `teacher.*` is expected; keep it off the report.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = RossForConditionalGeneration.from_pretrained(model_dir, load_objective=True).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    rows = get_benchmark("synthetic_colour").load(data_root / data["benchmarks"]["synthetic_colour"])
    count = max(settings.check_images, settings.num_reconstructions)
    images = [row["images"][0] for row in rows[:count]]
    if len(images) < 2:
        raise ValueError(f"the ROSS-active check needs at least 2 images, synthetic_colour has {len(images)}")
    log(f"check: visual loss with true vs shuffled visual outputs on {len(images)} held-out images ...")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image briefly."}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text] * len(images), images=images, padding=True, return_tensors="pt")
    check = condition_check(model, batch, settings)
    log(
        f"check: visual loss {check['visual_loss_true']:.4f} with the true visual outputs, "
        f"{check['visual_loss_shuffled']:.4f} shuffled across images ({100 * check['relative_gap']:.1f}% lower; "
        f"registered margin {100 * settings.check_loss_margin:.0f}%)"
    )
    log(f"reconstruct: {len(images)} images, {settings.reconstruction_steps} denoising steps each, true and shuffled ...")
    with torch.no_grad():
        inputs = (model.teacher.preprocess(batch["pixel_values"]).float() + 1) / 2  # [0, 1] at the teacher's size
        # the teacher's decode of each image's own latents (posterior mean): what a reconstruction can reach
        teacher = model.teacher.decode(model.teacher.encode_distribution(batch["pixel_values"])[0]).float().clamp(0, 1)
        ross = model.reconstruct(
            batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            num_inference_steps=settings.reconstruction_steps, generator=torch.Generator().manual_seed(0),
            output_type="pt",
        )  # fmt: skip
        # The same sampling from another image's visual outputs (what `reconstruct` does, with the condition swapped).
        outputs = model.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                              attention_mask=batch["attention_mask"],
                              output_hidden_states=model.condition_hidden_states_request())  # fmt: skip
        tokens = model.objective.sample(
            shuffle_across_images(model.get_visual_outputs(outputs)), denoiser=model.denoiser, teacher=model.teacher,
            num_inference_steps=settings.reconstruction_steps, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        ross_shuffled = model.teacher.decode(tokens).float().clamp(0, 1)
    constant = teacher.mean(0, keepdim=True).expand_as(teacher)  # the best constant image (in MSE) for these images
    psnr_true = _psnr01(ross, teacher)
    psnr_other = _psnr01(ross, shuffle_across_images(teacher))  # against another image's teacher decode
    psnr_shuffled = _psnr01(ross_shuffled, teacher)
    psnr_constant = _psnr01(constant, teacher)
    check.update(
        psnr_ross_vs_teacher_db=round(psnr_true.mean().item(), 2),
        psnr_ross_vs_other_teacher_db=round(psnr_other.mean().item(), 2),
        psnr_shuffled_ross_vs_teacher_db=round(psnr_shuffled.mean().item(), 2),
        psnr_constant_vs_teacher_db=round(psnr_constant.mean().item(), 2),
        psnr_teacher_vs_input_db=round(_psnr01(teacher, inputs).mean().item(), 2),
        psnr_ross_vs_input_db=round(_psnr01(ross, inputs).mean().item(), 2),
        psnr_margin_db=settings.check_psnr_margin_db,
    )
    check["loss_passed"] = check.pop("passed")
    check["psnr_passed"] = bool(
        check["psnr_ross_vs_teacher_db"] - check["psnr_ross_vs_other_teacher_db"] >= settings.check_psnr_margin_db
        and check["psnr_ross_vs_teacher_db"] > check["psnr_constant_vs_teacher_db"]
    )
    check["passed"] = check["loss_passed"] and check["psnr_passed"]
    for line in format_check(check):
        log(line)

    shown = settings.num_reconstructions
    rows_out = [
        ("input", inputs, None),
        ("VAE teacher decode", teacher, None),
        ("ROSS reconstruct", ross, psnr_true),
        ("ROSS, shuffled cond.", ross_shuffled, psnr_shuffled),
    ]
    cell, caption, label_width = 96, 14, 150
    grid = Image.new("RGB", (label_width + cell * shown, (cell + caption) * len(rows_out)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, batch_images, psnrs) in enumerate(rows_out):
        top = r * (cell + caption)
        draw.text((6, top + cell // 2 - 12), label, fill="black")
        if psnrs is not None:
            draw.text((6, top + cell // 2 + 2), f"mean {psnrs[:shown].mean().item():.1f} dB vs teacher", fill="black")
        for c, image in enumerate(batch_images[:shown]):
            array = (image.permute(1, 2, 0).cpu().numpy() * 255).round().clip(0, 255).astype("uint8")
            tile = Image.fromarray(array).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_width + c * cell, top))
            if psnrs is not None:
                draw.text((label_width + c * cell + 4, top + cell), f"{psnrs[c].item():.1f} dB", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    log(f"reconstruct: wrote {path}")
    return {
        "path": str(path),
        "num_images": shown,
        "denoising_steps": settings.reconstruction_steps,
        "teacher_psnr_db": check["psnr_teacher_vs_input_db"],
        "ross_psnr_db": check["psnr_ross_vs_input_db"],
        "check": check,
    }


def format_check(check: dict) -> list[str]:
    """The check's lines, as the demo prints them (and says clearly when it fails)."""
    verdict = "PASSED" if check["passed"] else "FAILED: the denoiser does not read the image enough; ROSS is inactive"
    return [
        f"ROSS-active check ({check['images']} held-out images): {verdict}",
        f"  visual loss: true visual outputs {check['visual_loss_true']:.4f}, shuffled across images "
        f"{check['visual_loss_shuffled']:.4f} ({100 * check['relative_gap']:.1f}% lower, needs >= "
        f"{100 * check['margin']:.0f}%): {'ok' if check['loss_passed'] else 'FAILED'}",
        f"  PSNR vs the teacher's decode: ROSS {check['psnr_ross_vs_teacher_db']:.2f} dB; against another image's "
        f"decode {check['psnr_ross_vs_other_teacher_db']:.2f} dB (needs >= {check['psnr_margin_db']:.1f} dB less); "
        f"constant image {check['psnr_constant_vs_teacher_db']:.2f} dB (needs less); from shuffled conditions "
        f"{check['psnr_shuffled_ross_vs_teacher_db']:.2f} dB: {'ok' if check['psnr_passed'] else 'FAILED'}",
    ]


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


class _Run:
    """What the phases of one demo run share: the summary being built, the phase timings, where to stop."""

    def __init__(self, run_dir: Path, settings: DemoSettings, baseline: bool, stop_after: str | None):
        self.run_dir, self.settings, self.baseline, self.stop_after = run_dir, settings, baseline, stop_after
        self.timings: dict[str, float] = {}
        self.summary: dict = {
            "mode": "baseline (LLaVA: text loss only)" if baseline else "ross (text loss + denoising visual loss)",
            "objective": "none" if baseline else "denoise",
            "fast": settings.smoke_run,
            "settings": dataclasses.asdict(settings),
            "machine": machine_info(),
            "timings_s": self.timings,
            "paths": {"run": str(run_dir)},
        }

    def phase(self, name: str, function):
        start = time.perf_counter()
        result = function()
        self.timings[name] = round(time.perf_counter() - start, 2)
        return result

    def stops_after(self, name: str) -> bool:
        if self.stop_after != name:
            return False
        self.write_summary()
        log(f"stopped after {name}; summary: {self.run_dir / 'summary.json'}")
        return True

    def write_summary(self) -> None:
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.summary["machine"]["load_average_at_end"] = [round(x, 2) for x in load] if load else None
        self.timings["total"] = round(sum(v for k, v in self.timings.items() if k != "total"), 2)
        (self.run_dir / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")


def run_demo(
    out: Path, settings: DemoSettings, baseline: bool = False, stop_after: str | None = None, probe: bool = False
) -> dict:
    """The phases in order (see the module docstring); `probe` adds the per-quadrant component probes (diagnostic)."""
    out = Path(out).resolve()
    run_dir = out / ("demo_baseline" if baseline else "demo")
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(run_dir, settings, baseline, stop_after)
    summary = run.summary

    # 1. components
    components_root = out / "components"
    manifest = run.phase(
        "components", lambda: prepare_components(components_root, settings.components, log=log, probe=probe)
    )
    paths = component_paths(components_root, manifest)
    summary["components"] = {
        "cached": manifest["cached"],
        "key": manifest["key"],
        "folder": str(components_root / manifest["key"]),
        **paths,
        "vision_tower": manifest["vision_tower"],
        "vae": manifest["vae"],
        "detail_probe": manifest.get("detail_probe"),
        "fit_seconds": manifest["seconds"],
    }
    if run.stops_after("components"):
        return summary

    # 2. data
    data = run.phase("data", lambda: prepare_data(out / "data", settings))
    data_root = out / "data" / data["key"]
    summary["data"] = {**data, "folder": str(data_root)}
    # The data folder is keyed by a settings hash; `<run>/benchmarks` is a stable name for this run's benchmarks
    # (README's `python -m ross.eval.run ... --data runs/demo/benchmarks/synthetic_pope`).
    link = run_dir / "benchmarks"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(data_root / "benchmarks", run_dir), target_is_directory=True)
    summary["paths"]["benchmarks"] = str(link)
    if run.stops_after("data"):
        return summary

    # 3-4. training
    model_dir = train_stages(run, paths, manifest, data_root, data)
    if model_dir is None:
        return summary

    # 5. evaluation
    eval_dir = run_dir / "eval"
    summary["evaluation"] = run.phase("eval", lambda: evaluate(model_dir, data_root, data, eval_dir, settings))
    summary["paths"]["eval"] = str(eval_dir)
    # The model card, with these scores: what `publish` pushes, and the name the Space's header shows.
    card = build_model_card(model_dir, eval_results=[eval_dir], model_name=DEMO_NAMES[baseline])
    card.save(str(model_dir / "README.md"))
    if run.stops_after("eval"):
        return summary

    # 6. reconstructions (ROSS only: the baseline has no denoiser)
    if not baseline:
        preview = run_dir / "reconstructions.png"
        summary["reconstruction"] = run.phase(
            "reconstruct", lambda: save_reconstructions(model_dir, data_root, data, preview, settings)
        )
        summary["paths"]["reconstructions"] = str(preview)
    run.write_summary()
    return summary


def train_stages(run: _Run, paths: dict, manifest: dict, data_root: Path, data: dict) -> Path | None:
    """Stage 1 (captions: projector + denoiser), then stage 2 from its model (QA: projector + LLM + denoiser).

    Returns the stage-2 model folder copied to `<run>/model`, or None when the run stops after a stage."""
    settings, summary = run.settings, run.summary
    objective = "none" if run.baseline else "denoise"
    common = {
        "prepare_tiny": "null",
        "image_folder": str(data_root / data["image_folder"]),
        "logging_steps": max(1, min(10, settings.stage2.max_steps // 20)),
        "disable_tqdm": "true",
        "dataloader_num_workers": 0,
        # About 5 epochs over 3000 records: each record is encoded once (a fifth of a stage-2 step was the encoding).
        "cache_encodings": "true",
    }
    if settings.latent_cache and not run.baseline:  # the same posterior draw per step, without re-encoding
        common.update(latent_cache_dir=str(Path(paths["vision_model"]).parent / "latent_cache"), build_latent_cache="true")
    stage1_dir, stage2_dir = run.run_dir / "stage1", run.run_dir / "stage2"
    stage1_overrides = {
        **common,
        **paths,
        "objective": objective,
        "model_overrides": {**settings.denoiser, **manifest["objective_overrides"]},
        "data_path": str(data_root / data["stage1_data"]),
        "output_dir": str(stage1_dir),
        **settings.stage1.overrides(),
    }
    log(f"stage1: {settings.stage1.max_steps} steps x {settings.stage1.batch_size} captions (log: {stage1_dir / 'train.log'})")
    stage1 = run.phase("stage1", lambda: run_stage(1, stage1_dir, stage1_overrides, stage1_dir / "train.log"))
    summary["training"] = {"stage1": stage1}
    log(f"stage1: final text loss {stage1.get('final_text_loss')}, visual loss {stage1.get('final_visual_loss')}")
    if run.stops_after("stage1"):
        return None

    stage2_overrides = {
        **common,
        "model_name_or_path": str(stage1_dir / "model"),
        "objective": objective,
        "data_path": str(data_root / data["stage2_data"]),
        "output_dir": str(stage2_dir),
        **settings.stage2.overrides(),
    }
    log(f"stage2: {settings.stage2.max_steps} steps x {settings.stage2.batch_size} QA samples (log: {stage2_dir / 'train.log'})")
    stage2 = run.phase("stage2", lambda: run_stage(2, stage2_dir, stage2_overrides, stage2_dir / "train.log"))
    summary["training"]["stage2"] = stage2
    log(f"stage2: final text loss {stage2.get('final_text_loss')}, visual loss {stage2.get('final_visual_loss')}")
    model_dir = run.run_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(stage2_dir / "model", model_dir)
    summary["paths"].update(model=str(model_dir), stage1=str(stage1_dir), stage2=str(stage2_dir))
    return None if run.stops_after("stage2") else model_dir


def ablation_baseline(path: Path = ABLATION_RESULT) -> dict | None:
    """The LLaVA baseline's accuracy per benchmark from the committed quick-ablation result (`bench/ablation.py
    --mode quick`: the same components, data, steps and seed as this run, objective `none`), or None without it."""
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    runs = [r for r in payload["runs"] if r["arm"] == "baseline" and r["seed"] == 0]
    if not runs:
        return None
    protocol = payload["protocol"]
    return {
        "label": f"LLaVA (objective none), seed 0, from {path.relative_to(REPO_ROOT)} (protocol "
        f"v{protocol['protocol_version']}, {protocol['hash']}); rerun: python bench/ablation.py --mode quick",
        "accuracy": {name: value["accuracy"] for name, value in runs[0]["final"].items() if isinstance(value, dict)},
    }


def format_report(summary: dict) -> str:
    """The short end-of-run report: where things went, what was measured, against chance."""
    lines = ["", f"ROSS demo: {summary['mode']}" + ("  [--fast smoke run: numbers mean nothing]" if summary["fast"] else "")]
    t, m = summary["timings_s"], summary["machine"]
    lines.append(
        "  time: " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items() if k != "total") + f"; total {t.get('total', 0):.0f}s"
        f" on {m['cpu_count']} CPUs (load average {m['load_average_at_start']} at start)"
    )
    c = summary["components"]
    lines.append(
        f"  components ({'reused from cache' if c['cached'] else 'fitted now'}, {c['folder']}):"
        f" tower colour-presence probe accuracy {c['vision_tower']['probe_accuracy']:.3f}"
        f" (majority {c['vision_tower']['probe_chance']:.3f}); VAE reconstruction PSNR {c['vae']['psnr_db']:.1f} dB"
    )
    lines.append(f"    {format_detail(c.get('detail_probe'))}")
    for stage, s in summary.get("training", {}).items():
        first = s.get("first_logged", {})
        lines.append(
            f"  {stage}: {s['global_step']} steps in {s['train_runtime_s']:.0f}s; text loss"
            f" {first.get('text_loss', float('nan')):.3f} -> {s.get('final_text_loss') or float('nan'):.3f}"
            + (
                f", visual loss {first.get('visual_loss', float('nan')):.3f} -> {s['final_visual_loss']:.3f}"
                if s.get("final_visual_loss") is not None
                else ""
            )
        )
    if "evaluation" in summary:
        baseline = None if summary["objective"] == "none" or summary["fast"] else ablation_baseline()
        lines.append("  accuracy vs chance ('*' = above chance by > 2 standard errors of a chance-level guesser):")
        if baseline:
            lines.append(f"    (baseline: {baseline['label']})")
        for name, r in summary["evaluation"].items():
            star = "*" if r["above_chance"] else " "
            se = math.sqrt(r["chance"] * (1 - r["chance"]) / max(1, r["num_items"]))
            extra = f", pairs {r['pair_accuracy']:.3f} (chance {r['pair_chance']:.3f})" if "pair_accuracy" in r else ""
            if baseline and name in baseline["accuracy"]:
                extra += f"; baseline {baseline['accuracy'][name]:.3f}"
            lines.append(
                f"   {star} {name:<19} {r['accuracy']:.3f} (chance {r['chance']:.3f}, SE {se:.3f}, n={r['num_items']}){extra}"
            )
            types = "; ".join(
                f"{q}{'*' if v['above_chance'] else ''} {v['accuracy']:.2f}/{v['chance']:.2f}"
                for q, v in r["question_types"].items()
            )
            lines.append(f"        by type (accuracy/chance): {types}")
    if "reconstruction" in summary:
        r = summary["reconstruction"]
        lines.append(
            f"  reconstructions: {r['path']} (PSNR vs input: ROSS {r['ross_psnr_db']:.1f} dB,"
            f" VAE teacher ceiling {r['teacher_psnr_db']:.1f} dB)"
        )
        lines += ["  " + line for line in format_check(r["check"])]
    p = summary["paths"]
    if "model" in p:
        lines.append(f"  model (Hub-ready, load with trust_remote_code=True): {p['model']}")
    lines.append(f"  summary: {Path(p['run']) / 'summary.json'}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m ross.train.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs", help="root of all outputs (default: runs/)")
    parser.add_argument("--baseline", action="store_true", help="train the LLaVA baseline (objective none) instead")
    parser.add_argument("--fast", action="store_true", help="a smoke run with tiny step counts (tests)")
    parser.add_argument("--stop-after", choices=PHASES, default=None, help="stop after this phase")
    parser.add_argument("--probe", action="store_true", help="also run the per-quadrant component probes (diagnostic)")
    args = parser.parse_args(argv)
    quiet_deepspeed_on_cpu()  # the demo never uses DeepSpeed; its stages inherit this
    hf_logging.disable_progress_bar()  # weight loading/saving bars would drown the report
    settings = DemoSettings.fast() if args.fast else DemoSettings()
    summary = run_demo(args.out, settings, baseline=args.baseline, stop_after=args.stop_after, probe=args.probe)
    if args.stop_after is None or args.stop_after in ("eval", "reconstruct"):
        print(format_report(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
