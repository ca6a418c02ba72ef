"""`RossTrainer`: a `transformers.Trainer` for ROSS (text loss + visual loss).

What it adds to the stock Trainer:
- **Exact gradient accumulation for the visual term.** The text cross-entropy is normalised by the Trainer's
  `num_items_in_batch` (supervised tokens over the whole accumulation step, summed over ranks). The model's
  `visual_loss` is a mean over the *micro-batch's* images, so the Trainer counts images too (over the step's
  micro-batches, summed over ranks) and passes that count to the model as `num_images_in_batch`, which weights the
  micro-batch's visual mean by its share of the images. With GA=k the sum over micro-batches then equals the loss of
  one k-times larger batch, for both terms.
- `text_loss` / `visual_loss` logged next to `loss` through a metrics buffer (TRL's `_metrics`), averaged over the
  logging window and over ranks.
- Per-module learning rates (`projector_lr`, `denoiser_lr`, `llm_lr`) with the usual weight-decay split.
- Stage presets (`apply_stage`): what is trainable in stage 1 / stage 2 of the recipe.
- Optional LoRA on the LLM (`apply_lora`), projector and denoiser stay fully trainable.
- Resume from the newest *complete* checkpoint (`resume_from_checkpoint=True`; `ross.train.checkpoints`), and run
  totals (summed loss, training seconds) saved with every checkpoint, so a resumed run reports whole-run numbers.
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_callback import CallbackHandler
from transformers.utils import logging

from ross.train.checkpoints import checkpoint_problem, latest_complete_checkpoint, read_run_totals, write_run_totals
from ross.train.samplers import LengthGroupedSampler, ModalityLengthGroupedSampler


logger = logging.get_logger(__name__)

# Module groups of `RossForConditionalGeneration`, by parameter-name prefix (after unwrapping PEFT).
MODULE_PREFIXES = {
    "vision_tower": ("model.vision_tower.",),
    "projector": ("model.projector.",),
    "language_model": ("model.language_model.", "lm_head."),
    "denoiser": ("denoiser.",),
    "queries": ("queries.",),  # the generative variant's learnable queries (condition="queries")
    "teacher": ("teacher.",),
}
# The same groups in `RossForPreTraining` (a native VLM as `model`, its own parameter names under it). Checked first,
# in this order: Qwen-VL's projector (the patch merger, and Qwen3-VL's DeepStack mergers) sits inside its tower.
# Idefics3 / SmolVLM name theirs `connector`, `vision_model` and `text_model`.
NATIVE_MODULE_PREFIXES = {
    "projector": (
        "model.model.multi_modal_projector.", "model.model.visual.merger.", "model.model.visual.deepstack_merger_list.",
        "model.model.connector.",
    ),
    "vision_tower": ("model.model.vision_tower.", "model.model.visual.", "model.model.vision_model."),
    "language_model": ("model.model.language_model.", "model.model.text_model.", "model.lm_head."),
}  # fmt: skip
# The queries, where they exist, train with the denoiser they condition.
STAGE_TRAINABLE = {
    1: ("projector", "denoiser", "queries"),  # alignment: vision tower, LLM and teacher frozen
    2: ("projector", "language_model", "denoiser", "queries"),  # instruction tuning: vision tower and teacher frozen
}


def _strip_peft_prefix(name: str) -> str:
    """`base_model.model.model.projector.linear_1.weight` -> `model.projector.linear_1.weight`; LoRA/wrapper parts
    (`.base_layer`, `.modules_to_save.default`, `.original_module`) are removed so names map onto module groups."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model.") :]
    return re.sub(r"\.(base_layer|modules_to_save\.default|original_module)(?=\.)", "", name)


def module_of(name: str) -> str:
    """Which module group a parameter belongs to (`"other"` if none)."""
    name = _strip_peft_prefix(name)
    for module, prefixes in (*NATIVE_MODULE_PREFIXES.items(), *MODULE_PREFIXES.items()):
        if name.startswith(prefixes):
            return module
    return "other"


def count_trainable_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts per module group (shared/tied parameters counted once)."""
    counts = dict.fromkeys([*MODULE_PREFIXES, "other"], 0)
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[module_of(name)] += _numel(param)
    return counts


def _numel(param: torch.Tensor) -> int:
    # Under DeepSpeed ZeRO-3 a partitioned parameter is empty locally; its full size is in `ds_numel`.
    return getattr(param, "ds_numel", param.numel())


# A learned denoiser position table (`denoiser_position_embedding="learned"`). The authors build it frozen, but their
# stage 1 unfreezes every denoiser parameter, so it is trained in stage 1; stage 2 builds it frozen again and loads it.
POSITION_TABLE = "denoiser.pos_embed"


def apply_stage(model: nn.Module, stage: int, train_position_embedding: bool | None = None) -> dict[str, int]:
    """
    Set `requires_grad` for a training stage of the recipe (paper Table 6) and return the trainable parameter counts
    per module group.

    stage 1: projector + denoiser (+ queries).  stage 2: projector + LLM (with `lm_head`) + denoiser (+ queries).
    The vision tower and the teacher are always frozen. Any other parameter is frozen too.
    A learned denoiser position table follows the authors (trained in stage 1, frozen in stage 2) unless
    `train_position_embedding` says otherwise.
    """
    if stage not in STAGE_TRAINABLE:
        raise ValueError(f"stage must be one of {sorted(STAGE_TRAINABLE)}, got {stage!r}")
    trainable = STAGE_TRAINABLE[stage]
    train_table = (stage == 1) if train_position_embedding is None else train_position_embedding
    for name, param in model.named_parameters():
        if _strip_peft_prefix(name) == POSITION_TABLE:
            param.requires_grad_(train_table and "denoiser" in trainable)
        else:
            param.requires_grad_(module_of(name) in trainable)
    return count_trainable_parameters(model)


def projector_modules(model: nn.Module) -> list[str]:
    """The modules of the projector group (`NATIVE_MODULE_PREFIXES` / `MODULE_PREFIXES`), by full name, for PEFT's
    `modules_to_save`: ours, llava-hf's `multi_modal_projector`, Qwen-VL's patch `merger`, and each of Qwen3-VL's
    DeepStack mergers, Idefics3 / SmolVLM's `connector`. A `ModuleList` is never called, so PEFT cannot wrap it: its members are listed instead."""
    modules = dict(model.named_modules())
    names = []
    for prefix in (*NATIVE_MODULE_PREFIXES["projector"], *MODULE_PREFIXES["projector"]):
        module = modules.get(prefix.rstrip("."))
        if isinstance(module, nn.ModuleList):
            names += [f"{prefix}{index}" for index in range(len(module))]
        elif module is not None:
            names.append(prefix.rstrip("."))
    return names


def apply_lora(model: nn.Module, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules=None):
    """
    Wrap the LLM's linear layers with LoRA adapters (PEFT). The LLM's base weights are frozen; the projector and the
    denoiser stay fully trainable and are saved with the adapter (`modules_to_save`); vision tower and teacher stay
    frozen. Returns the `PeftModel`. Merge with `merge_and_unload()` before `save_pretrained` for a plain checkpoint.
    """
    from peft import LoraConfig, get_peft_model

    names = target_modules or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # Only the LLM's layers: a regex keeps LoRA off the vision tower and the denoiser, which share layer names.
    # `model.language_model.` (RossForConditionalGeneration) or `model.model.language_model.` (a native VLM inside
    # RossForPreTraining; Idefics3 / SmolVLM: `model.model.text_model.`).
    pattern = r"(model\.)?model\.(language_model|text_model)\..*\.(" + "|".join(map(re.escape, names)) + r")"
    modules_to_save = projector_modules(model) + [
        name for name in ("denoiser", "queries") if getattr(model, name, None) is not None
    ]
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, modules_to_save=modules_to_save
    )
    table = dict(model.named_parameters()).get(POSITION_TABLE)
    train_table = table is not None and table.requires_grad  # as `apply_stage` left it
    peft_model = get_peft_model(model, config)
    for name, param in peft_model.named_parameters():
        # The teacher must stay frozen even though PEFT leaves unrelated modules untouched.
        if module_of(name) in ("teacher", "vision_tower"):
            param.requires_grad_(False)
        # `modules_to_save` makes the whole denoiser copy trainable; keep the position table as it was.
        if _strip_peft_prefix(name) == POSITION_TABLE:
            param.requires_grad_(train_table)
    return peft_model


@dataclass
class RossTrainingArguments(TrainingArguments):
    """`TrainingArguments` + per-module learning rates (None = `learning_rate`)."""

    projector_lr: float | None = field(default=None, metadata={"help": "Learning rate of the projector."})
    denoiser_lr: float | None = field(default=None, metadata={"help": "Learning rate of the denoiser."})
    llm_lr: float | None = field(default=None, metadata={"help": "Learning rate of the LLM (and lm_head)."})
    # Counted so the run summary can report tokens/s (the stock default is "no").
    include_num_input_tokens_seen: str | bool = field(
        default="non_padding", metadata={"help": "'all', 'non_padding' or 'no' (see TrainingArguments)."}
    )

    def __post_init__(self):
        # Multimodal batches carry `pixel_values` and the collator needs the raw columns (hf-v5-notes section 3).
        if self.remove_unused_columns:
            self.remove_unused_columns = False
        super().__post_init__()


class RossTrainer(Trainer):
    """
    `Trainer` for `RossForConditionalGeneration` (or a PEFT wrapper of it).

    The loss returned by `compute_loss` is already normalised over the whole accumulation step (text by supervised
    tokens, visual by images), hence `loss_is_scaled_for_ga = True`.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, group_by: str | None = None, **kwargs):
        if group_by not in (None, "length", "modality_length"):
            raise ValueError(f"group_by must be None, 'length' or 'modality_length', got {group_by!r}")
        self.group_by = group_by
        super().__init__(*args, **kwargs)
        self.callback_handler = TrainerCallbackHandler(self.callback_handler, self)
        if self.args.remove_unused_columns:
            raise ValueError("RossTrainer needs remove_unused_columns=False (the collator reads raw columns).")
        # The model takes **kwargs, so the Trainer passes `num_items_in_batch`; the exact GA weighting relies on it.
        self.model_accepts_loss_kwargs = True
        self._num_images_in_batch = None  # images in the current accumulation step, summed over ranks
        self.images_seen = 0  # images the visual loss covered on this rank (summed per rank into the run summary)
        # Loss components of each micro-batch since the last log, per mode; averaged over ranks and cleared in `log`.
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        # Totals of the run's earlier processes (from the checkpoint resumed from) and when this process started.
        self._previous_totals = {"loss_sum": 0.0, "train_seconds": 0.0, "global_step": 0}
        self._previous_images: list[int] = []  # images per rank of those processes (`images_seen_per_rank`)
        self._segment_start = None
        self.run_seconds = None  # whole-run training seconds, set when `train` returns
        self._final_totals = None

    # ---- resume and run totals ----
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """`resume_from_checkpoint=True` takes the newest complete checkpoint of `output_dir` (the stock Trainer takes
        the newest, even a half-written one); a given folder that is incomplete is an error saying what is missing."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            problem = checkpoint_problem(resume_from_checkpoint)
            if problem is not None:
                raise ValueError(f"Cannot resume from {resume_from_checkpoint}: {problem}.")
        if resume_from_checkpoint:
            totals = read_run_totals(resume_from_checkpoint)
            if totals:
                self._previous_totals = totals
                self._previous_images = list(totals.get("images_seen_per_rank") or [])
        self._segment_start = time.perf_counter()
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        self.run_seconds = self._previous_totals["train_seconds"] + time.perf_counter() - self._segment_start
        # `_finalize_training` has added the unlogged remainder of `_tr_loss` to `_total_loss_scalar`.
        self._final_totals = {
            "global_step": self.state.global_step,
            "loss_sum": self._previous_totals["loss_sum"] + self._total_loss_scalar,
            "train_seconds": self.run_seconds,
        }
        return output

    def run_totals(self) -> dict:
        """`{"global_step", "loss_sum", "train_seconds"}` of the whole run so far, earlier processes included."""
        if self._final_totals is not None:
            return dict(self._final_totals)
        loss_sum = self._previous_totals["loss_sum"] + self._total_loss_scalar + float(self._tr_loss.item())
        seconds = self._previous_totals["train_seconds"] + time.perf_counter() - (self._segment_start or time.perf_counter())
        return {"global_step": self.state.global_step, "loss_sum": loss_sum, "train_seconds": seconds}

    def whole_run_train_loss(self) -> float | None:
        """The mean training loss over every step of the run (`train_loss` of a resumed run covers its own steps)."""
        totals = self.run_totals()
        return totals["loss_sum"] / totals["global_step"] if totals["global_step"] else None

    def _save_checkpoint(self, model, trial):
        """Writes the run totals first (the images per rank gathered from every rank: each one calls this); the stock
        save then writes `trainer_state.json` last, which marks the checkpoint complete
        (`ross.train.checkpoints.checkpoint_problem`)."""
        images = images_seen_per_rank(self)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            write_run_totals(folder, {**self.run_totals(), "images_seen_per_rank": images})
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """`RossForPreTraining` is no `PreTrainedModel` (it holds one): its own `save_pretrained` writes the VLM as its
        plain architecture plus `ross_head/`, where the stock `_save` would write one raw state dict."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if isinstance(model, PreTrainedModel) or not hasattr(model, "save_pretrained"):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=self.args.should_save)
        if self.args.should_save:
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """`RossForPreTraining`'s checkpoint is the plain VLM + `ross_head/`, which the stock loader (one state dict in
        this model's keys) would silently fail to match: the model loads it itself."""
        unwrapped = self.accelerator.unwrap_model(self.model if model is None else model, keep_torch_compile=False)
        if isinstance(unwrapped, PreTrainedModel) or not hasattr(unwrapped, "load_checkpoint_weights"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        unwrapped.load_checkpoint_weights(resume_from_checkpoint)

    def _get_train_sampler(self, train_dataset=None):
        """`group_by="length"` / `"modality_length"` use `ross.train.samplers`' seeded samplers on `dataset.lengths` /
        `dataset.modality_lengths` (the stock `group_by_length` only reads a column of a `datasets.Dataset`)."""
        if self.group_by is None:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.group_by == "length":
            return LengthGroupedSampler(dataset.lengths, self.args.per_device_train_batch_size, seed=self.args.seed)
        return ModalityLengthGroupedSampler(
            dataset.modality_lengths, self.args.per_device_train_batch_size, seed=self.args.seed
        )

    # ---- gradient accumulation ----
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        num_images = sum(_num_images(batch, self.model) for batch in batch_samples)
        self.images_seen += num_images
        num_images = torch.tensor(num_images, device=device, dtype=torch.long)
        if self.args.world_size > 1 and self.args.average_tokens_across_devices:
            # Every rank calls this every step (like num_items_in_batch), so the collective cannot hang.
            num_images = self.accelerator.reduce(num_images, reduction="sum")
        self._num_images_in_batch = num_images
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """
        The model's own loss, `text_loss + weight * visual_loss * num_images / num_images_in_batch`: the text loss is
        the token sum divided by `num_items_in_batch`, and both counts cover the whole accumulation step (summed over
        ranks with `average_tokens_across_devices`, then the loss is multiplied by the number of processes because
        DDP/DeepSpeed average gradients over ranks, as the stock Trainer does for the text loss).
        Without a token count (no accumulation bookkeeping) the per-batch means are divided by the GA steps instead.
        """
        if inputs.get("ross_empty_batch") is not None:
            # Every sample was dropped (skip mode, `RossDataCollator._placeholder_batch`): forward the placeholder so
            # that every rank runs the same modules and collectives, at zero weight (no labels: no 0/0 text loss).
            outputs = model(**{k: v for k, v in inputs.items() if k not in ("ross_empty_batch", "labels")})
            loss = outputs.logits.sum() * 0.0
            return (loss, outputs) if return_outputs else loss
        if num_items_in_batch is not None:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
            if self._num_images_in_batch is not None:
                inputs["num_images_in_batch"] = self._num_images_in_batch
        if "position_ids" in inputs and "attention_mask" not in inputs:
            # A packed batch (`RossDataCollator(padding_free=True)`): transformers keeps attention inside each sample
            # only when no KV cache is passed, and a training forward needs none.
            inputs = {**inputs, "use_cache": False}
        outputs = model(**inputs)
        if outputs.text_loss is None:
            raise ValueError("The model returned no text_loss: the batch needs `labels`.")
        loss = outputs.loss

        if num_items_in_batch is None:
            if model.training:
                loss = loss / self.current_gradient_accumulation_steps
        elif self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes

        self._record_metrics(model, inputs, outputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _record_metrics(self, model, inputs, outputs, num_items_in_batch) -> None:
        """
        Append this micro-batch's `text_loss` / `visual_loss`, scaled so that their mean over the window's
        micro-batches and ranks is the mean over optimizer steps of each step's value, as `loss` is logged. With the
        step's counts both components are this micro-batch's share of the step (of its tokens, of its images), so
        times the step's micro-batches (and ranks, when the counts cover all ranks) they average to the step's value.
        A step without any image adds no `visual_loss` entry.
        """
        mode = "train" if model.training else "eval"
        text_loss, visual_loss = outputs.text_loss.detach(), outputs.visual_loss
        if num_items_in_batch is None:
            scale = 1.0
        else:
            scale = self.current_gradient_accumulation_steps
            if self.args.average_tokens_across_devices:
                scale *= self.accelerator.num_processes
        self._metrics[mode]["text_loss"].append(float(text_loss) * scale)
        if visual_loss is None or int(inputs.get("num_images_in_batch", 1)) == 0:
            return
        # The model's visual term: the visual loss weighted by this micro-batch's share of the step's images.
        self._metrics[mode]["visual_loss"].append(float(outputs.visual_term.detach()) * scale)

    # ---- logging ----
    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Checkpoints are not pushed: `train/sft.py` publishes the complete, verified folder at the end."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """
        Adds the buffered components' means (over the window's micro-batches and over ranks) to a training log
        (`text_loss`, `visual_loss`) or an evaluation log (`eval_text_loss`), then clears the buffer. The run summary
        logged at the end of training gets nothing. Every rank calls `log`, so the reduction cannot hang.
        """
        mode = "train" if self.model.training else "eval"
        if mode == "train" and "loss" not in logs:
            return super().log(logs, start_time)
        buffer = self._metrics[mode]
        names = ("text_loss", "visual_loss")
        # Sums and counts rather than local means: ranks may hold different numbers of visual entries.
        totals = torch.tensor(
            [[sum(buffer[name]), len(buffer[name])] for name in names], device=self.args.device, dtype=torch.float64
        )
        if self.args.world_size > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        prefix = "" if mode == "train" else "eval_"
        for name, (total, count) in zip(names, totals.tolist()):
            if count > 0:  # skip empty lists
                logs[f"{prefix}{name}"] = round(total / count, 6)
        buffer.clear()
        super().log(logs, start_time)

    # ---- optimizer ----
    def create_optimizer(self, model=None):
        """AdamW (or `args.optim`) with one (decay, no-decay) pair of groups per module and per-module learning rates."""
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            decay = set(self.get_decay_parameter_names(opt_model))
            learning_rates = {
                "projector": self.args.projector_lr if getattr(self.args, "projector_lr", None) else None,
                "denoiser": self.args.denoiser_lr if getattr(self.args, "denoiser_lr", None) else None,
                "language_model": self.args.llm_lr if getattr(self.args, "llm_lr", None) else None,
            }
            groups: dict[tuple[str, bool], list] = {}
            for name, param in opt_model.named_parameters():
                if param.requires_grad:
                    groups.setdefault((module_of(name), name in decay), []).append(param)
            param_groups = []
            for (module, decays), params in sorted(groups.items()):
                group = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
                if learning_rates.get(module) is not None:
                    group["lr"] = learning_rates[module]
                group["name"] = f"{module}/{'decay' if decays else 'no_decay'}"
                param_groups.append(group)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer


class TrainerCallbackHandler(CallbackHandler):
    """The Trainer's `CallbackHandler`, which also hands every event the trainer (`trainer=`): a callback that logs
    through `Trainer.log` (`BenchmarkEvalCallback`, as TRL's `WinRateCallback`) takes it at `on_train_begin`, so it is
    complete when constructed instead of being given the trainer afterwards."""

    def __init__(self, handler: CallbackHandler, trainer: Trainer):
        vars(self).update(vars(handler))  # the callbacks and the references the Trainer gave the stock handler
        self.trainer = trainer

    def call_event(self, event, args, state, control, **kwargs):
        return super().call_event(event, args, state, control, trainer=self.trainer, **kwargs)


def images_seen_per_rank(trainer: RossTrainer) -> list[int]:
    """Images each rank trained on over the whole run, in rank order (a collective: call it on every rank).

    After a resume, rank r's count adds what rank r of the earlier processes saw (saved with the checkpoint,
    `ross_run_totals.json`), as the summary's other figures cover the whole run; if the run was resumed on another
    number of ranks, the longer list is kept and the shorter one added to its first entries (the total stays right).
    """
    local = torch.tensor([trainer.images_seen], device=trainer.args.device, dtype=torch.long)
    counts = trainer.accelerator.gather(local).tolist()
    earlier = getattr(trainer, "_previous_images", None) or []
    longer, shorter = (counts, earlier) if len(counts) >= len(earlier) else (list(earlier), counts)
    return [int(n) + (int(shorter[r]) if r < len(shorter) else 0) for r, n in enumerate(longer)]


def _num_images(batch, model) -> int:
    """The images a batch's visual loss averages over: its input images, or its creation targets when the model is
    conditioned on queries (`condition="queries"`), as the model counts them."""
    count_images = getattr(model, "count_images", None)  # RossForPreTraining: the VLM's own image inputs
    if count_images is not None:
        return count_images(batch)
    uses_queries = getattr(getattr(model, "config", None), "uses_queries", False)
    key = "target_pixel_values" if uses_queries else "pixel_values"
    pixel_values = batch.get(key) if hasattr(batch, "get") else None
    return 0 if pixel_values is None else int(pixel_values.shape[0])


__all__ = [
    "RossTrainer",
    "RossTrainingArguments",
    "TrainerCallbackHandler",
    "apply_lora",
    "apply_stage",
    "count_trainable_parameters",
    "images_seen_per_rank",
    "module_of",
    "projector_modules",
]
