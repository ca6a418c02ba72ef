"""`RossForPreTraining`: ROSS's training objective around a native transformers VLM (Qwen2.5-VL, llava-hf Llava, ...).

The VLM is held unchanged as `model` (any `AutoModelForImageTextToText` class an adapter supports, see
`native_adapters.py`); next to it sit the training-only ROSS head, `denoiser` (trained) and `teacher` (frozen), and
the noise schedule. One forward:

    vlm(**inputs, labels, output_hidden_states=True)  -> text loss, hidden states (the last: after the final norm)
    hidden states at the image placeholders, split per image          -> conditions  (N_i, D), row-major grids
    adapter: each image's grid (rows_i, cols_i) and the image seen    -> teacher targets (N_i, C) on that grid
    grid_denoising_loss (one padded denoiser call, key mask)          -> visual loss
    loss = text_loss + weight * visual_term

`save_pretrained` writes the VLM as its own plain architecture at the folder's root (loadable with
`AutoModelForImageTextToText` without this package) and the head in `ross_head/` (`config.json` +
`model.safetensors`); `from_pretrained` restores both.

Why not a `PreTrainedModel` registered for `AutoModelForPreTraining`: the checkpoint's root `config.json` *is* the
VLM's (that is what makes it a plain Qwen2.5-VL checkpoint), so an Auto class keyed on it would resolve to the VLM's
own classes; and wrapping the loaded VLM in a second `PreTrainedModel` would re-run `post_init` weight init over it.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageTextToText
from transformers.modeling_outputs import ModelOutput
from transformers.utils import logging

from .configuration_ross import RossObjectiveConfig
from .configuration_ross_head import RossHeadConfig
from .denoiser import RossDenoiser, build_noise_scheduler, sample_tokens
from .native_adapters import adapter_for
from .objective import grid_denoising_loss, make_sampling_scheduler
from .teacher import build_teacher, freeze, sample_targets
from .teacher_source import load_teacher_source


logger = logging.get_logger(__name__)

HEAD_FOLDER = "ross_head"
HEAD_WEIGHTS = "model.safetensors"


@dataclass
class RossPreTrainingOutput(ModelOutput):
    r"""
    loss: `text_loss + weight * visual_term` (`text_loss` without the objective or in eval mode).
    text_loss: the VLM's own language-modelling loss.
    visual_loss: the denoising loss, mean over the batch's images (zero, still connected, without images).
    visual_term: `visual_loss` weighted by this batch's share of the step's images (`num_images_in_batch`).
    logits: the VLM's logits.
    visual_outputs: per image, the `(N_i, D)` condition hidden states, in placeholder order.
    image_grids: per image, its `(rows, cols)` token grid.
    """

    loss: torch.FloatTensor | None = None
    text_loss: torch.FloatTensor | None = None
    visual_loss: torch.FloatTensor | None = None
    visual_term: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    visual_outputs: list[torch.FloatTensor] | None = None
    image_grids: list[tuple[int, int]] | None = None


class RossForPreTraining(nn.Module):
    """A native VLM (`model`) + ROSS's training head (`denoiser`, frozen `teacher`).

    Args:
        model: the VLM, e.g. `Qwen2_5_VLForConditionalGeneration` (its class is kept; nothing in it is replaced).
        config (`RossHeadConfig`): the objective and the condition width, kept as `head_config` (`config` is the
            VLM's, which the Trainer and DeepSpeed read).

    Build one with `from_vlm` (a pretrained VLM + an objective) or `from_pretrained` (a folder this class saved).
    """

    # The Trainer passes `num_items_in_batch` on (the text loss of a GA step is then exact).
    accepts_loss_kwargs = True
    # Read by PEFT (through transformers' checkpoint conversion mapping) when it wraps this model for LoRA.
    base_model_prefix = "model"

    def __init__(self, model: nn.Module, config: RossHeadConfig):
        super().__init__()
        if config.vlm_model_type and config.vlm_model_type != model.config.model_type:
            raise ValueError(
                f"The ROSS head was trained with a {config.vlm_model_type!r} model, not {model.config.model_type!r}."
            )
        self.model = model
        self.head_config = config
        objective = config.objective_config
        self.adapter = adapter_for(model.config, objective.image_mean, objective.image_std)
        # Not a registered child: see `teacher`.
        self._frozen = {"teacher": build_teacher(objective, self.adapter.nominal_grid)}
        self.denoiser = RossDenoiser(
            in_channels=self.teacher.num_channels,
            condition_size=config.condition_size,
            hidden_size=objective.denoiser_hidden_size,
            depth=objective.denoiser_depth,
            num_heads=objective.denoiser_num_heads,
            mlp_ratio=objective.denoiser_mlp_ratio,
            grid_size=self.adapter.nominal_grid,
            self_attention=objective.denoiser_self_attention,
            position_embedding="sincos",
            compute_dtype=objective.compute_dtype,
        )
        with torch.device("cpu"):  # tables only, not a module
            self.noise_scheduler = build_noise_scheduler(objective)
        self._idle_tower_armed = False
        self.adapter.language_model(model).register_forward_pre_hook(self._run_idle_vision_tower, with_kwargs=True)

    # ---- construction ----
    @classmethod
    def from_vlm(
        cls,
        model: nn.Module | str,
        objective_config: dict | RossObjectiveConfig | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **from_pretrained_kwargs,
    ) -> "RossForPreTraining":
        """A fresh ROSS head on a pretrained VLM (a loaded model or a path / Hub id for
        `AutoModelForImageTextToText.from_pretrained`). The teacher's weights are read from
        `objective_config["teacher"]`. `image_mean` / `image_std` default to the path's image processor's."""
        base_model = model if isinstance(model, str) else getattr(model.config, "_name_or_path", None)
        if isinstance(model, (str, Path)):
            model = AutoModelForImageTextToText.from_pretrained(str(model), **from_pretrained_kwargs)
        if image_mean is None or image_std is None:
            image_mean, image_std = _processor_normalisation(base_model)
        objective = _objective_dict(objective_config)
        objective.setdefault("denoiser_position_embedding", "sincos")
        objective.update(image_mean=list(image_mean), image_std=list(image_std))
        teacher_config, state_dict, _ = load_teacher_source(RossObjectiveConfig(**objective))
        if teacher_config is not None:
            objective["teacher_config"] = teacher_config
        config = RossHeadConfig(
            objective_config=objective,
            condition_size=model.config.get_text_config().hidden_size,
            vlm_model_type=model.config.model_type,
            base_model=base_model,
        )
        ross = cls(model, config)
        ross.load_teacher_weights(state_dict)
        return ross

    @classmethod
    def from_pretrained(cls, path: str | Path, **from_pretrained_kwargs) -> "RossForPreTraining":
        """Load a folder written by `save_pretrained`: the VLM from its root, the head from `ross_head/`. The teacher
        comes from the folder when it was saved there (`save_teacher`), else from its own source."""
        head_dir = Path(path) / HEAD_FOLDER
        if not (head_dir / "config.json").is_file():
            raise ValueError(
                f"{path} has no {HEAD_FOLDER}/config.json: it is not a RossForPreTraining checkpoint. Start from a "
                "plain VLM with RossForPreTraining.from_vlm(path, objective_config)."
            )
        model = AutoModelForImageTextToText.from_pretrained(str(path), **from_pretrained_kwargs)
        config = RossHeadConfig.from_pretrained(head_dir)
        ross = cls(model, config)
        state_dict = load_file(head_dir / HEAD_WEIGHTS)
        teacher_state = {k[len("teacher.") :]: v for k, v in state_dict.items() if k.startswith("teacher.")}
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("teacher.")}
        if not teacher_state:
            _, teacher_state, _ = load_teacher_source(config.objective_config)
        ross.load_teacher_weights(teacher_state)
        missing, unexpected = ross.load_state_dict(state_dict, strict=False)
        head_missing = [key for key in missing if not key.startswith("model.")]
        if head_missing or unexpected:
            raise ValueError(
                f"{head_dir / HEAD_WEIGHTS} does not match the head its config builds: missing {head_missing}, "
                f"unexpected {unexpected}."
            )
        return ross

    def load_checkpoint_weights(self, folder: str | Path) -> None:
        """Copy into this model, in place, the weights of a folder `save_pretrained` wrote (a Trainer checkpoint when
        resuming): the VLM read back with its own class (which undoes any key renaming its `save_pretrained` did)
        and the denoiser from `ross_head/`. The optimizer and RNG states are the Trainer's business."""
        saved = type(self.model).from_pretrained(str(folder), dtype=self.model.dtype)
        self.model.load_state_dict(saved.state_dict())
        head = load_file(Path(folder) / HEAD_FOLDER / HEAD_WEIGHTS)
        self.denoiser.load_state_dict({k[len("denoiser.") :]: v for k, v in head.items() if k.startswith("denoiser.")})

    def load_teacher_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        if state_dict:
            self.teacher.load_state_dict(state_dict)
        freeze(self.teacher)

    def save_pretrained(self, save_directory, state_dict: dict | None = None, **kwargs) -> None:
        """The VLM as its plain architecture at `save_directory`, the head in `save_directory/ross_head/`.

        `state_dict` (this module's keys, e.g. gathered by the Trainer under ZeRO-3) is split between the two.
        The frozen teacher is left out unless `objective_config.save_teacher`."""
        state_dict = self.state_dict() if state_dict is None else state_dict
        vlm_state = {key[len("model.") :]: value for key, value in state_dict.items() if key.startswith("model.")}
        head_state = {key: value for key, value in state_dict.items() if key.startswith("denoiser.")}
        if self.head_config.objective_config.save_teacher:
            head_state.update({f"teacher.{key}": value for key, value in self.teacher.state_dict().items()})
        head_state = {key: value.detach().contiguous().cpu() for key, value in head_state.items()}
        self.model.save_pretrained(save_directory, state_dict=vlm_state, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        head_dir = Path(save_directory) / HEAD_FOLDER
        head_dir.mkdir(parents=True, exist_ok=True)
        self.head_config.save_pretrained(head_dir)
        save_file(head_state, head_dir / HEAD_WEIGHTS, metadata={"format": "pt"})

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher. It is deliberately not a registered child module: it runs once per image (the grids
        differ), so ranks with different image counts call it a different number of times, which DeepSpeed ZeRO-3's
        per-module parameter gathers (and its check that every rank traces the same modules) cannot allow. Kept
        outside, it is a whole, frozen copy on every rank, moved to the batch's device when used, never partitioned,
        never in the optimizer or `state_dict` (`save_pretrained` adds it with `save_teacher`)."""
        return self._frozen["teacher"]

    def teacher_on(self, device: torch.device) -> nn.Module:
        teacher = self.teacher
        parameter = next(teacher.parameters(), None)
        if parameter is not None and parameter.device != device:
            teacher.to(device)
        return teacher

    # ---- passthroughs the Trainer, DeepSpeed and PEFT use ----
    @property
    def config(self):
        """The VLM's config (what the Trainer and DeepSpeed's `auto` sizes read); the head's is `head_config`."""
        return self.model.config

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        self.model.gradient_checkpointing_disable()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def enable_input_require_grads(self):
        self.model.enable_input_require_grads()

    def count_images(self, inputs: dict) -> int:
        """Images whose visual loss a batch averages over (the Trainer's `num_images_in_batch` counts these)."""
        return self.adapter.count_images(inputs)

    # ---- forward ----
    def forward(
        self,
        labels: torch.LongTensor | None = None,
        teacher_targets: list[dict] | None = None,
        num_images_in_batch: int | torch.Tensor | None = None,
        **inputs,
    ) -> RossPreTrainingOutput:
        r"""
        Args:
            labels: `(batch_size, sequence_length)`, -100 where not supervised.
            teacher_targets: optional cached teacher outputs (`train/latent_cache.py`), one `{"mean", "std"}` per
                image (each `(rows_i * cols_i, C)`), in placeholder order: the teacher is then not run (an empty list
                for a batch without images).
            num_images_in_batch: images in the whole accumulation step (summed over ranks); the visual term is this
                batch's share of them, so micro-batches add up to one large batch.
            inputs: the VLM's own inputs, as its processor returns them (`input_ids`, `attention_mask`,
                `pixel_values`, `image_grid_thw`, `mm_token_type_ids`, ...), and `num_items_in_batch`.
        """
        computes_visual_loss = labels is not None and self.training
        index = self.condition_index()
        input_ids = inputs.get("input_ids")
        self._idle_tower_armed = self.training and self.adapter.count_images(inputs) == 0
        try:
            outputs = self.model(**inputs, labels=labels, output_hidden_states=computes_visual_loss, return_dict=True)
        finally:
            self._idle_tower_armed = False
        if not computes_visual_loss:
            return RossPreTrainingOutput(loss=outputs.loss, text_loss=outputs.loss, logits=outputs.logits)

        hidden_states = outputs.hidden_states[index]
        grids = self.adapter.image_grids(inputs)
        conditions = self.split_conditions(input_ids, hidden_states, grids)
        if grids:
            images = self.adapter.images_seen(inputs)
            targets = self.teacher_targets(images, grids, teacher_targets)
            visual_loss = grid_denoising_loss(
                self.denoiser, self.noise_scheduler, conditions, targets, grids,
                self.head_config.objective_config.num_noise_draws,
            )  # fmt: skip
        else:
            visual_loss = self.empty_batch_loss(hidden_states, cached=teacher_targets is not None)
        visual_term = visual_loss
        if num_images_in_batch is not None:
            images_in_step = torch.as_tensor(num_images_in_batch, device=visual_loss.device).clamp(min=1)
            visual_term = visual_loss * (len(grids) / images_in_step.to(torch.float32))
        loss = outputs.loss + self.head_config.objective_config.weight * visual_term
        return RossPreTrainingOutput(
            loss=loss,
            text_loss=outputs.loss,
            visual_loss=visual_loss,
            visual_term=visual_term,
            logits=outputs.logits,
            visual_outputs=conditions,
            image_grids=grids,
        )

    def condition_index(self) -> int:
        """Index into the VLM's `hidden_states` tuple: -1 (the last, after the final norm) or `condition_layer`."""
        layer = self.head_config.objective_config.condition_layer
        return -1 if layer is None else layer

    def split_conditions(
        self, input_ids: torch.LongTensor, hidden_states: torch.Tensor, grids: list[tuple[int, int]]
    ) -> list[torch.Tensor]:
        """The `(rows * cols, D)` hidden states on each image's grid: its placeholder span (boolean indexing is
        row-major, the order in which the VLM's `masked_scatter` filled the image features), of which the first
        `rows * cols` tokens are the grid (the whole span except for LLaVA-OneVision's tiles); each span must be whole."""
        if input_ids is None:
            raise ValueError("RossForPreTraining needs input_ids to find the image placeholders.")
        mask = input_ids == self.adapter.image_token_id
        lengths = self.adapter.span_lengths(mask, grids) if grids else []
        if int(mask.sum()) != sum(lengths):
            raise ValueError(
                f"Image placeholders and image grids do not match: {int(mask.sum())} tokens of id "
                f"{self.adapter.image_token_id}, grids {grids} ({sum(lengths)} tokens). A span was cut by truncation "
                "or the processor does not match the model."
            )
        spans = hidden_states[mask].split(lengths) if lengths else []
        return [span[: rows * cols] for span, (rows, cols) in zip(spans, grids)]

    def teacher_targets(self, images, grids, cached: list[dict] | None = None) -> list[torch.Tensor]:
        """`(N_i, C)` fp32 targets per image: the frozen teacher on the image resized to its grid, or drawn from
        cached `{"mean", "std"}` entries (one per image, keyed by image and grid by the cache's builder)."""
        if cached is not None:
            if len(cached) != len(grids):
                raise ValueError(f"teacher_targets has {len(cached)} entries for {len(grids)} images.")
            shapes = [tuple(entry["mean"].shape) for entry in cached]
            expected = [(rows * cols, self.teacher.num_channels) for rows, cols in grids]
            if shapes != expected:
                raise ValueError(f"teacher_targets' shapes {shapes} do not match the images' grids {grids} ({expected}).")
            return [sample_targets(entry["mean"].float(), _std(entry)) for entry in cached]
        targets = []
        for image, grid in zip(images, grids):
            mean, std = self.teacher_on(image.device).encode_grid_distribution(image[None], grid)
            targets.append(sample_targets(mean, std)[0])
        return targets

    def _run_idle_vision_tower(self, module, args, kwargs):
        """Forward pre-hook of the VLM's language model, armed for a training batch without images.

        The VLM's own forward would then skip its vision tower and projector; they run here instead, on the adapter's
        minimal dummy input, at zero weight, inside the VLM's forward between the token embedding and the LLM: the
        place and order in which a batch with images calls them; features that a batch with images hands the LLM
        another way (Qwen3-VL's DeepStack) go in there too (`adapter.idle_language_model_inputs`). Every rank then calls
        the same modules in the same order and produces the same gradients in the same order, which DeepSpeed ZeRO-3
        checks and needs for its per-module parameter gathers and its gradient reductions."""
        if not self._idle_tower_armed:
            return None
        self._idle_tower_armed = False
        embeds = kwargs["inputs_embeds"]
        dummy = self.adapter.dummy_image_inputs(embeds.device, self.model.dtype)
        image_outputs = self.model.get_image_features(**dummy, return_dict=True)
        features = image_outputs.pooler_output  # per image, or a tensor
        kwargs["inputs_embeds"] = embeds + 0.0 * sum(feature.sum() for feature in features).to(embeds.dtype)
        kwargs.update(self.adapter.idle_language_model_inputs(image_outputs, embeds))
        return args, kwargs

    def empty_batch_loss(self, hidden_states: torch.Tensor, cached: bool = False) -> torch.Tensor:
        """A batch without images: teacher and denoiser still run (on a grey 2 x 2-token image), at zero weight, so
        every rank calls the same modules (DeepSpeed ZeRO-3 / DDP would otherwise hang or error); the vision tower
        ran in `_run_idle_vision_tower`. With the latent cache (`cached`) no rank runs the teacher: a zero target."""
        grid = (2, 2)
        if cached:
            target = hidden_states.new_zeros(4, self.teacher.num_channels, dtype=torch.float32)
        else:
            grey = torch.full((1, 3, 32, 32), 0.5, device=hidden_states.device)
            target = self.teacher_on(grey.device).encode_grid_distribution(grey, grid)[0][0]
        condition = hidden_states[0, :1].expand(4, -1) * 0.0
        loss = grid_denoising_loss(self.denoiser, self.noise_scheduler, [condition], [target], [grid], 1)
        return loss * 0.0

    # ---- reconstruction ----
    @torch.no_grad()
    def reconstruct(
        self, num_inference_steps: int = 50, scheduler="ddim", generator=None, output_type: str = "pil", **inputs
    ):
        """Reconstruct each image of `inputs` (the VLM processor's output for a prompt with images) from the VLM's
        visual outputs: reverse diffusion with the trained denoiser on each image's grid, then the teacher's decoder.
        Returns one PIL image (or `(3, rows * 16, cols * 16)` tensor in [0, 1] with `output_type="pt"`) per image."""
        outputs = self.model(**inputs, output_hidden_states=True, return_dict=True)
        grids = self.adapter.image_grids(inputs)
        conditions = self.split_conditions(inputs.get("input_ids"), outputs.hidden_states[self.condition_index()], grids)
        sampler = make_sampling_scheduler(self.noise_scheduler, scheduler) if isinstance(scheduler, str) else scheduler
        images = []
        for condition, grid in zip(conditions, grids):
            tokens = sample_tokens(
                self.denoiser, condition[None], self.teacher.num_channels, scheduler=sampler,
                num_inference_steps=num_inference_steps, generator=generator, grid_sizes=[grid],
            )  # fmt: skip
            images.append(self.teacher_on(tokens.device).decode(tokens, grid=grid).float().clamp(0, 1)[0])
        if output_type == "pt":
            return images
        return [Image.fromarray((image.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")) for image in images]


def _std(entry: dict) -> torch.Tensor | None:
    std = entry.get("std")
    return None if std is None else std.float()


def _objective_dict(objective_config) -> dict:
    if objective_config is None:
        return {}
    if isinstance(objective_config, RossObjectiveConfig):
        return {key: value for key, value in objective_config.to_dict().items() if key in RossObjectiveConfig.__annotations__}
    return dict(objective_config)


def _processor_normalisation(path: str | None) -> tuple[list[float], list[float]]:
    """`image_mean` / `image_std` of the image processor saved with the VLM (read from its JSON, which needs neither
    torchvision nor a processor class that constructs)."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        file = Path(path or "") / name
        if path and file.is_file():
            data = json.loads(file.read_text())
            data = data.get("image_processor", data)
            if "image_mean" in data and "image_std" in data:
                return list(data["image_mean"]), list(data["image_std"])
    if path:
        try:
            processor = AutoImageProcessor.from_pretrained(path, backend="pil")  # only its mean and std
            return list(processor.image_mean), list(processor.image_std)
        except (OSError, ValueError):
            pass
    raise ValueError(
        f"Cannot read the image normalisation of {path!r}: pass image_mean and image_std (the VLM processor's)."
    )


__all__ = ["RossForPreTraining", "RossPreTrainingOutput"]
