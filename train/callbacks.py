"""Trainer callbacks for ROSS runs.

`ProgressCallback`: one compact line per log to stderr, `[ross] progress stage 2 step 40/1000 loss 1.23 text 1.1
visual 0.31 ETA 4m10s` (what `python -m ross.train.demo` shows as its live progress line).

`ReconstructionPreviewCallback`: every K optimizer steps, reconstruct a few fixed images from the model's visual
outputs (`model.reconstruct`: reverse diffusion with the denoiser being trained, then the teacher's decoder) and write
a grid of inputs (top row) vs reconstructions (bottom row) to `<output_dir>/previews/step_XXXXXX.png`, and to
TensorBoard / trackio when they are in `args.report_to`. The noise is drawn from the same seed at every preview, so
successive grids differ only by what the model learned.

Distributed runs:
- DDP / ZeRO-1/2 (every rank holds all weights): only the world main process runs the reconstruction; the other
  ranks go on and wait for it at the next collective.
- DeepSpeed ZeRO-3 and FSDP (weights sharded): a forward all-gathers each module's parameters, which is a collective,
  so *every* rank runs the same reconstruction (same images, same seed) and only the main process writes it.
  Running it on rank 0 alone would hang the job. (ZeRO-3 is what the stage-2 recipe uses; FSDP is untested.)

`BenchmarkEvalCallback`: every K optimizer steps and once at the end of training, evaluate the model being trained on
one or more benchmarks with the batched greedy runner of `ross.eval.generation` (`evaluate_model`: the same prompts,
greedy settings, scorer and files as `python -m ross.eval.run`) on a fixed subset (the first `limit` items, the same
every time). Files go to `<output_dir>/eval/step-<N>/<benchmark>/` (`predictions.jsonl`, `scores.json`, `scores.md`),
and the metrics are logged through `Trainer.log` as `eval_<benchmark>/<metric>` (TensorBoard: `eval/<benchmark>/
<metric>`, next to `train/loss`; `trainer_state.json`'s `log_history` at the same step as `loss`). `write_final_scores`
puts the last step's `scores.json` into the saved model folder (`<model>/eval/<benchmark>/`), where the model card
(`ross.model_cards.card.find_scores`) finds them. Distributed runs, as for the previews:
- DDP / ZeRO-1/2: the world main process alone generates and writes; the other ranks wait in the broadcast of its
  metrics (`accelerate.utils.broadcast_object_list`), so every rank logs the same values. Their wait counts against
  the process group's timeout (`ddp_timeout`, 30 min by default): keep `limit` small enough, or raise it.
- ZeRO-3 / FSDP: every rank generates the same items (each forward all-gathers the shards; `generate` turns on
  `synced_gpus` there, so a rank that reaches EOS early keeps joining the forwards until all are done); only the main
  process writes files, and its metrics are broadcast as well. Gathering the full weights on rank 0 instead
  (`deepspeed.zero.GatheredParameters`) would also be a collective, and would hold a full copy of a 7B model.
An error on the main process is broadcast too, so that every rank stops with it instead of waiting.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import TrainerCallback
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.integrations.integration_utils import default_logdir
from transformers.utils import logging

from ross.eval.benchmarks import BenchmarkDataError, benchmark_names, get_benchmark
from ross.eval.generation import flat_metrics, evaluate_model, load_items, scores_markdown
from ross.train.sources import decode_image


logger = logging.get_logger(__name__)

PREVIEW_PROMPT = "Describe the image briefly."


def unwrap_ross_model(model):
    """The `RossForConditionalGeneration` inside PEFT / DDP / DeepSpeed wrappers (anything with `reconstruct`)."""
    seen = model
    while not hasattr(type(model), "reconstruct"):
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif hasattr(model, "module"):  # DDP, DeepSpeedEngine
            model = model.module
        else:
            raise TypeError(f"{type(seen).__name__} has no `reconstruct`: expected a RossForConditionalGeneration.")
    return model


def weights_are_sharded(args) -> bool:
    """True under DeepSpeed ZeRO-3 or FSDP: then a forward is a collective that every rank must join."""
    return is_deepspeed_zero3_enabled() or bool(getattr(args, "fsdp", None))


def check_model(model):
    """The unwrapped ROSS model, if it can reconstruct (`model.can_reconstruct`), else a ValueError."""
    model = unwrap_ross_model(model)
    if not model.can_reconstruct:
        objective = model.config.objective_config
        raise ValueError(
            "ReconstructionPreviewCallback needs a model with its reconstructive objective and a decodable teacher "
            f"(target 'vae' or 'pixel'); this one has objective {objective.objective!r}, target {objective.target!r}."
        )
    if model.config.uses_queries:
        raise ValueError(
            "ReconstructionPreviewCallback reconstructs input images from their visual outputs; a model with "
            "condition='queries' creates images from captions (reconstruct(None, input_ids=<creation prompt>))."
        )
    return model


def preview_images_from_dataset(dataset, num_images: int = 4) -> list:
    """The first image of each of the first `num_images` samples that have one (a `RossDataset` or a Subset of it)."""
    images = []
    for index in range(len(dataset)):
        item = dataset[index]  # None: a sample found bad at fetch (skip mode)
        sample_images = (item or {}).get("images") or []
        if sample_images:
            images.append(sample_images[0])
        if len(images) == num_images:
            break
    if not images:
        raise ValueError("No sample of the training data has an image to preview.")
    return images


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """`(3, H, W)` in [0, 1] -> `(H, W, 3)` uint8."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def make_preview_grid(
    inputs: torch.Tensor, reconstructions: torch.Tensor, cell_size: int = 96, label_width: int = 100
) -> Image.Image:
    """
    Inputs `(N, 3, H, W)` and reconstructions `(N, 3, S, S)`, both in [0, 1] -> an RGB grid of size
    `(label_width + N * cell_size, 2 * cell_size)`: inputs on the top row, reconstructions below, each tile resized
    (nearest neighbour) to `cell_size`.
    """
    if inputs.shape[0] != reconstructions.shape[0]:
        raise ValueError(f"{inputs.shape[0]} inputs but {reconstructions.shape[0]} reconstructions.")
    rows = [("input", inputs), ("reconstruction", reconstructions)]
    grid = Image.new("RGB", (label_width + cell_size * inputs.shape[0], cell_size * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        draw.text((6, r * cell_size + cell_size // 2 - 6), label, fill="black")
        for c, image in enumerate(images):
            tile = Image.fromarray(_to_uint8(image)).resize((cell_size, cell_size), Image.NEAREST)
            grid.paste(tile, (label_width + c * cell_size, r * cell_size))
    return grid


PROGRESS_PREFIX = "[ross] progress "


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class ProgressCallback(TrainerCallback):
    """A compact progress line on every training log (main process, stderr): step/total, losses, ETA from the steps
    of this process (a resumed run does not count the restored steps as fast ones)."""

    def __init__(self, label: str = "train", stream=None):
        self.label, self.stream = label, stream
        self._start, self._start_step = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start, self._start_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        step, total = state.global_step, state.max_steps
        parts = [f"{PROGRESS_PREFIX}{self.label} step {step}/{total}", f"loss {logs['loss']:.4g}"]
        parts += [f"{name} {logs[key]:.4g}" for key, name in (("text_loss", "text"), ("visual_loss", "visual")) if key in logs]
        done = step - self._start_step
        if self._start is not None and done > 0 and total:
            parts.append(f"ETA {format_duration((time.perf_counter() - self._start) / done * (total - step))}")
        print(" ".join(parts), file=self.stream or sys.stderr, flush=True)


class ReconstructionPreviewCallback(TrainerCallback):
    r"""
    Writes inputs-vs-reconstructions grids during training (see the module docstring).

    Args:
        images (`list` of `PIL.Image` or paths, *optional*): preview images, turned into model inputs with the
            processor (`processor`, else the Trainer's `processing_class`) and the chat template, as in training.
        pixel_values (`torch.Tensor` of shape `(N, 3, H, W)`, *optional*): already processed images (exactly one of
            `images` / `pixel_values`). With a processor, the image tokens are placed in the same chat prompt as for
            `images`; without one each image is fed alone as `image_seq_length` image tokens.
        every_n_steps (`int`): preview at global steps K, 2K, ...
        num_inference_steps (`int`, defaults to 25): reverse-diffusion steps of the sampler.
        output_dir (`str`, *optional*): defaults to `args.output_dir`; the PNGs go to `<output_dir>/previews/`.
        scheduler (`str`, defaults to `"ddim"`): the sampler (`"ddim"` or `"ddpm"`).
        seed (`int`, defaults to 0): the noise seed, the same at every preview.
        cell_size (`int`, defaults to 96): side of one tile in the grid.
        processor (*optional*): a `RossProcessor`.
    """

    def __init__(
        self,
        images=None,
        pixel_values: torch.Tensor | None = None,
        every_n_steps: int = 500,
        num_inference_steps: int = 25,
        output_dir: str | None = None,
        scheduler: str = "ddim",
        seed: int = 0,
        cell_size: int = 96,
        processor=None,
    ):
        if (images is None) == (pixel_values is None):
            raise ValueError("Give exactly one of `images` (PIL images or paths) or `pixel_values`.")
        if images is not None and len(images) == 0:
            raise ValueError("`images` is empty.")
        if int(every_n_steps) < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        if pixel_values is not None and pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (N, 3, H, W), got shape {tuple(pixel_values.shape)}.")
        self.images = list(images) if images is not None else None
        self.pixel_values = pixel_values
        self.every_n_steps = int(every_n_steps)
        self.num_inference_steps = int(num_inference_steps)
        self.output_dir = output_dir
        self.scheduler = scheduler
        self.seed = int(seed)
        self.cell_size = int(cell_size)
        self.processor = processor
        self._inputs = None  # model inputs, built once
        self._tb_writer = None
        self._tb_dir = None

    # ---- inputs ----
    def _prompt(self, processor) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PREVIEW_PROMPT}]}]
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def build_inputs(self, processor=None) -> dict:
        """`pixel_values` and, with a processor, the chat-prompt `input_ids` / `attention_mask` (built once)."""
        if self._inputs is not None:
            return self._inputs
        processor = self.processor or processor
        if self.images is not None:
            if processor is None or not hasattr(processor, "image_processor"):
                raise ValueError("Preview `images` need a RossProcessor: pass `processor=` or `processing_class=`.")
            # decoded by the data pipeline's rule (EXIF upright, then RGB; a bad file is named)
            images = [decode_image(i) if isinstance(i, (str, os.PathLike)) else i for i in self.images]
            batch = processor(text=[self._prompt(processor)] * len(images), images=images, return_tensors="pt")
            inputs = {key: batch[key] for key in ("pixel_values", "input_ids", "attention_mask")}
        else:
            inputs = {"pixel_values": self.pixel_values}
            if processor is not None and hasattr(processor, "image_seq_length"):
                # The processor expands `<image>` only when it gets images: expand it here, as it would.
                text = self._prompt(processor).replace(
                    processor.image_token, processor.image_token * processor.image_seq_length
                )
                ids = processor.tokenizer([text] * len(self.pixel_values), return_tensors="pt")
                inputs.update(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
        self._inputs = inputs
        return inputs

    # ---- the preview ----
    @torch.no_grad()
    def render(self, model, processor=None) -> Image.Image:
        """Reconstruct the preview images and return the grid; the modules' train/eval modes are restored after."""
        model = check_model(model)
        inputs = {k: v.to(model.device) for k, v in self.build_inputs(processor).items()}
        modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            generator = torch.Generator(device=model.device).manual_seed(self.seed)
            reconstructions = model.reconstruct(
                **inputs, num_inference_steps=self.num_inference_steps, scheduler=self.scheduler,
                generator=generator, output_type="pt",
            )  # fmt: skip
        finally:
            for module, training in modes.items():
                module.training = training
        objective = model.config.objective_config
        mean = torch.tensor(objective.image_mean, device=model.device).view(1, 3, 1, 1)
        std = torch.tensor(objective.image_std, device=model.device).view(1, 3, 1, 1)
        originals = inputs["pixel_values"].float() * std + mean  # the images as the vision tower saw them, in [0, 1]
        return make_preview_grid(originals, reconstructions, cell_size=self.cell_size)

    def preview_path(self, args, step: int) -> Path:
        return Path(self.output_dir or args.output_dir) / "previews" / f"step_{step:06d}.png"

    # ---- Trainer events ----
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            check_model(model)  # fail at the start of a run, not at step K
        # The directory TensorBoardCallback picks in its own on_train_begin (same rule), so both write to one run.
        self._tb_dir = os.getenv("TENSORBOARD_LOGGING_DIR") or os.path.join(args.output_dir, default_logdir())

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if step == 0 or step % self.every_n_steps != 0:
            return
        # Sharded weights: every rank joins the forward (its all-gathers are collectives); otherwise rank 0 alone.
        if not (state.is_world_process_zero or weights_are_sharded(args)):
            return
        grid = self.render(model, processing_class)
        if state.is_world_process_zero:
            self.write(grid, args, step)

    def on_train_end(self, args, state, control, **kwargs):
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None

    # ---- outputs ----
    def write(self, grid: Image.Image, args, step: int) -> Path:
        path = self.preview_path(args, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        report_to = args.report_to or []
        caption = f"step {step}: inputs (top) vs reconstructions (bottom), {self.num_inference_steps} steps"
        if "tensorboard" in report_to:
            try:
                self._tensorboard(args).add_image("reconstructions", np.asarray(grid), step, dataformats="HWC")
                self._tb_writer.flush()
            except Exception as error:  # the PNG is written; a logger failure must not stop a long run
                logger.warning(f"Could not log the reconstruction preview to TensorBoard: {error!r}")
        if "trackio" in report_to:
            try:
                import trackio

                trackio.log({"reconstructions": trackio.Image(grid, caption=caption)}, step=step)
            except Exception as error:
                logger.warning(f"Could not log the reconstruction preview to trackio: {error!r}")
        logger.info(f"Reconstruction preview written to {path}")
        return path

    def _tensorboard(self, args):
        if self._tb_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            if self._tb_dir is None:
                self.on_train_begin(args, None, None)
            self._tb_writer = SummaryWriter(log_dir=self._tb_dir)
        return self._tb_writer


def parse_benchmark_specs(benchmarks) -> list[tuple[str, str]]:
    """`["pope=/data/POPE", ...]`, `[("pope", path), ...]` or `{"pope": path}` -> `[(name, path), ...]`; each name is
    checked against the registry (`ross.eval.benchmarks`, synthetic ones included) and each path must exist."""
    if isinstance(benchmarks, (str, os.PathLike)) or benchmarks is None:
        raise ValueError(f"benchmarks must be a list of 'name=path' entries, got {benchmarks!r}.")
    items = benchmarks.items() if isinstance(benchmarks, dict) else benchmarks
    specs = []
    for item in items:
        if isinstance(item, str):
            name, sep, path = item.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"benchmark entry {item!r} is not 'name=path' (e.g. 'pope=/data/POPE').")
        else:
            name, path = item
        name, path = str(name).strip(), str(path).strip()
        try:
            get_benchmark(name)
        except KeyError:
            raise ValueError(f"benchmark entry {name}={path}: unknown benchmark {name!r} "
                             f"(known: {', '.join(benchmark_names())}).") from None  # fmt: skip
        if not Path(path).exists():
            raise FileNotFoundError(f"benchmark entry {name}={path}: {path} does not exist.")
        specs.append((name, path))
    if not specs:
        raise ValueError("benchmarks is empty: give at least one 'name=path' entry.")
    names = [name for name, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark names must be unique (one output folder each), got {', '.join(names)}.")
    return specs


class BenchmarkEvalCallback(TrainerCallback):
    r"""
    Evaluates the model on benchmarks during training (see the module docstring).

    Args:
        benchmarks (`list`): `"name=path"` strings (as `python -m ross.eval.run --benchmark NAME --data PATH`),
            `(name, path)` pairs or a `{name: path}` mapping; names from `ross.eval.benchmarks` (synthetic included).
        every_steps (`int`, *optional*): evaluate at global steps K, 2K, ...; always once more at the end of
            training (the last step), unless that step was just evaluated. `None`: only at the end.
        limit (`int`, *optional*, defaults to 100): the first `limit` items of each benchmark (the same subset every
            time); `None`: all of them.
        batch_size (`int`, defaults to 8): generation batch size.
        max_new_tokens (`int`, *optional*): defaults to each benchmark's own limit.
        rules (`str`, defaults to `"lmms-eval"`): prompt and scoring rules.
        output_dir (`str`, *optional*): defaults to `args.output_dir`; files go to `<output_dir>/eval/step-<N>/`.
        trainer (`Trainer`, *optional*): the trainer whose `log` receives the metrics. A `RossTrainer` hands itself
            to its callbacks' events (`trainer=`), taken at `on_train_begin`; with another `Trainer` pass
            `trainer=trainer` (as TRL's `WinRateCallback` takes it).
        processor (*optional*): a `RossProcessor`; defaults to the Trainer's `processing_class`.

    The benchmark data is read (every row of the subset, images decoded) at train begin on every rank, so a bad file
    or column stops the run at once, with the file named. After each evaluation `self.history[step]` holds the
    `scores.json` dicts by benchmark, and `self.logged[step]` the values that were logged.
    """

    def __init__(
        self,
        benchmarks,
        every_steps: int | None = None,
        limit: int | None = 100,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        rules: str = "lmms-eval",
        output_dir: str | None = None,
        trainer=None,
        processor=None,
    ):
        for key, value in (("every_steps", every_steps), ("limit", limit), ("max_new_tokens", max_new_tokens)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{key} must be >= 1 (or None), got {value}.")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.benchmarks = parse_benchmark_specs(benchmarks)
        self.every_steps = None if every_steps is None else int(every_steps)
        self.limit = None if limit is None else int(limit)
        self.batch_size = int(batch_size)
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.rules = rules
        self.output_dir = output_dir
        self.trainer = trainer
        self.processor = processor
        self.history: dict[int, dict[str, dict]] = {}  # step -> {benchmark: scores.json dict}
        self.logged: dict[int, dict[str, float]] = {}  # step -> the values logged (identical on every rank)

    # ---- checks ----
    def check_data(self) -> dict[str, int]:
        """Load each benchmark's subset (as the evaluation will); `{name: items}`. Errors name the file."""
        counts = {}
        for name, path in self.benchmarks:
            try:
                _, rows, _ = load_items(name, path, self.rules, self.limit)
            except BenchmarkDataError:
                raise
            except Exception as error:  # an unreadable file: name it, keep the original as the cause
                raise BenchmarkDataError(f"benchmark {name}={path}: cannot be loaded ({error!r})") from error
            counts[name] = len(rows)
        return counts

    # ---- the evaluation ----
    def step_dir(self, args, step: int) -> Path:
        return Path(self.output_dir or args.output_dir) / "eval" / f"step-{step}"

    def run(self, model, processor, args, step: int, write: bool) -> dict[str, dict]:
        """`{benchmark: scores.json dict}` of the unwrapped `model` (eval mode for the run, every module's own mode
        restored after); with `write`, the three files of each benchmark under `step_dir(args, step)/<benchmark>/`."""
        model = unwrap_ross_model(model)
        modes = {module: module.training for module in model.modules()}
        model.eval()
        results = {}
        try:
            for name, path in self.benchmarks:
                results[name] = evaluate_model(
                    model, processor, name, path, rules=self.rules, batch_size=self.batch_size, limit=self.limit,
                    out_dir=self.step_dir(args, step) / name if write else None, max_new_tokens=self.max_new_tokens,
                    progress=False, model_name=f"{self.output_dir or args.output_dir} at step {step}",
                )  # fmt: skip
        finally:
            for module, training in modes.items():
                module.training = training
        return results

    @staticmethod
    def metrics_to_log(results: dict[str, dict]) -> dict[str, float]:
        """`eval_<benchmark>/<metric>` for every number of each `scores.json` (one level of nesting flattened)."""
        return {f"eval_{name}/{key}": value for name, s in results.items() for key, value in flat_metrics(s["metrics"])}

    def evaluate(self, args, state, model=None, processing_class=None) -> dict[str, float]:
        """Run the benchmarks (main process, or every rank under sharded weights), broadcast the main process's
        results, log them on every rank; returns what was logged."""
        step = state.global_step
        trainer = self.trainer
        model = trainer.model if model is None else model
        processor = self.processor or processing_class or getattr(trainer, "processing_class", None)
        if processor is None:
            raise ValueError("BenchmarkEvalCallback needs a processor: pass `processor=` or `processing_class=`.")
        main = state.is_world_process_zero
        results, error = None, None
        if main or weights_are_sharded(args):
            start = time.perf_counter()
            try:
                results = self.run(model, processor, args, step, write=main)
            except Exception as err:
                # Another rank's failure under sharded weights breaks the collectives anyway: it stops at once (the
                # launcher ends the job). The main process's error is sent to the waiting ranks, raised everywhere.
                if args.world_size <= 1 or not main:
                    raise
                error = f"{type(err).__name__}: {err}"
            if main and results is not None:
                logger.info(f"Benchmarks at step {step} took {time.perf_counter() - start:.1f}s")
        if args.world_size > 1:
            from accelerate.utils import broadcast_object_list

            payload = [(results, error) if main else None]
            broadcast_object_list(payload, from_process=0)
            results, error = payload[0]
        if error is not None:
            raise RuntimeError(f"Benchmark evaluation at step {step} failed on the main process: {error}")
        self.history[step] = results
        logs = self.metrics_to_log(results)
        self.logged[step] = dict(logs)
        # Every rank: the same values in each log_history; TensorBoard on the main process. `on_log` clears
        # `control.should_log`, which the step's own loss log (after `on_step_end`) still needs: keep it.
        control = trainer.control
        should_log = control.should_log
        trainer.log(logs)
        trainer.control.should_log = should_log
        return logs

    def write_final_scores(self, directory) -> list[Path]:
        """The last evaluation's `scores.json` (+ `scores.md`) as `<directory>/eval/<benchmark>/`, with `model` set
        to `directory`: call it (main process) on the saved model folder, for `build_model_card` to find them."""
        if not self.history:
            raise ValueError("No benchmark evaluation has run yet: nothing to write.")
        directory = Path(directory)
        written = []
        for name, scores in self.history[max(self.history)].items():
            scores = {**scores, "model": str(directory)}
            out = directory / "eval" / name
            out.mkdir(parents=True, exist_ok=True)
            (out / "scores.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            (out / "scores.md").write_text(scores_markdown(scores), encoding="utf-8")
            written.append(out / "scores.json")
        return written

    # ---- Trainer events ----
    def on_train_begin(self, args, state, control, trainer=None, **kwargs):
        self.trainer = self.trainer or trainer  # a RossTrainer hands itself to every event
        if self.trainer is None:
            raise ValueError(
                "BenchmarkEvalCallback logs through the Trainer: train with a RossTrainer (it hands itself to its "
                "callbacks) or create it with `trainer=trainer` (e.g. "
                "`trainer.add_callback(BenchmarkEvalCallback(..., trainer=trainer))`)."
            )
        counts = self.check_data()  # every rank: a bad file stops all of them now, not after hours of training
        if state.is_world_process_zero:
            listed = ", ".join(f"{name} ({n} items)" for name, n in counts.items())
            logger.info(f"Benchmarks every {self.every_steps or 'end-of-training'} steps: {listed}")

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        due = self.every_steps is not None and step % self.every_steps == 0
        if step > 0 and (due or step >= state.max_steps) and step not in self.history:
            self.evaluate(args, state, model, processing_class)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        # Training stopped before max_steps (a callback, a time limit): the final weights still get their scores.
        if state.global_step > 0 and state.global_step not in self.history:
            self.evaluate(args, state, model, processing_class)


__all__ = [
    "BenchmarkEvalCallback",
    "PROGRESS_PREFIX",
    "ProgressCallback",
    "ReconstructionPreviewCallback",
    "check_model",
    "make_preview_grid",
    "parse_benchmark_specs",
    "preview_images_from_dataset",
    "unwrap_ross_model",
    "weights_are_sharded",
]
