"""ROSS: a LLaVA-style model whose visual outputs are supervised by a reconstructive objective.

At inference ROSS is exactly LLaVA: vision tower -> projector -> visual tokens scattered into the
text embeddings at the `<image>` positions -> causal LLM -> `lm_head`. In training, the LLM's last
hidden states (after the final norm; or those of `objective_config.condition_layer`) at the image
positions -- the *visual outputs* -- also condition a small denoiser that must recover the image's
latent tokens from noise (see `objective.py`), and `loss = text_loss + weight * visual_loss`.
The generative variant (`objective_config.condition="queries"`) conditions it instead on the hidden states of
learnable queries inserted at the `<query>` tokens of caption -> image "creation" samples.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, ModelOutput
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import select_hidden_states

from .configuration_ross import RossConfig
from .denoiser import RossDenoiser, RossMLPHead
from .objective import build_objective
from .teacher import build_teacher, freeze, protect_from_init, restore_non_persistent_buffers
from .teacher_source import load_teacher_source


logger = logging.get_logger(__name__)


@dataclass
class RossModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(num_images, image_seq_length, hidden_size)`, *optional*):
        Projected vision features that were scattered into the input embeddings.
    image_token_mask (`torch.BoolTensor` of shape `(batch_size, sequence_length)`, *optional*):
        Where the image tokens are.
    query_token_mask (`torch.BoolTensor` of shape `(batch_size, sequence_length)`, *optional*):
        Where the learnable queries were inserted (`<query>` tokens; None when there are none).
    """

    image_hidden_states: torch.FloatTensor | None = None
    image_token_mask: torch.BoolTensor | None = None
    query_token_mask: torch.BoolTensor | None = None


@dataclass
class RossCausalLMOutputWithPast(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        `text_loss + weight * visual_loss` in training (the visual term weighted by `num_images / num_images_in_batch`
        when the step's image count is given), `text_loss` otherwise.
    text_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Next-token cross-entropy on the supervised (non -100) labels.
    visual_loss (`torch.FloatTensor` of shape `()`, *optional*):
        The reconstructive loss averaged over the images of the batch, whatever `num_images_in_batch` (None for
        `objective="none"`, without the objective loaded, in eval mode, or without labels). Zero, but still connected to the denoiser, for a batch without images.
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
        Language-modelling scores.
    visual_outputs (`torch.FloatTensor` of shape `(num_images, image_seq_length, hidden_size)`, *optional*):
        The LLM's hidden states of `objective_config.condition_layer` (default: the last ones, after the final norm)
        gathered at the image-token positions, image by image in the order of `pixel_values`. This is the denoiser's
        condition. None at inference when `condition_layer` names a layer whose hidden states were not requested.
        With `condition="queries"`: gathered at the query positions instead, `(num_creations, image_seq_length,
        hidden_size)` in the order of `target_pixel_values` (None without creation samples).
    visual_term (`torch.FloatTensor` of shape `()`, *optional*):
        The visual term of the loss before the objective's `weight`: `visual_loss` weighted by this batch's share of
        the step's images (`num_images / num_images_in_batch`), or `visual_loss` itself without `num_images_in_batch`;
        `loss = text_loss + weight * visual_term`. What the trainer logs as `visual_loss`.
    """

    loss: torch.FloatTensor | None = None
    text_loss: torch.FloatTensor | None = None
    visual_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor] | None = None
    attentions: tuple[torch.FloatTensor] | None = None
    image_hidden_states: torch.FloatTensor | None = None
    visual_outputs: torch.FloatTensor | None = None
    visual_term: torch.FloatTensor | None = None


class RossProjector(nn.Module):
    """Vision features `(num_images, N, vision_hidden)` -> visual tokens `(num_images, N, text_hidden)`."""

    def __init__(self, config: RossConfig):
        super().__init__()
        vision_size, text_size = config.vision_config.hidden_size, config.text_config.hidden_size
        self.linear_1 = nn.Linear(vision_size, text_size)
        if config.projector_type == "mlp2x_gelu":
            self.act = ACT2FN[config.projector_hidden_act]
            self.linear_2 = nn.Linear(text_size, text_size)
        else:  # "linear"
            self.act = self.linear_2 = None

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden_states = self.linear_1(image_features)
        if self.linear_2 is not None:
            hidden_states = self.linear_2(self.act(hidden_states))
        return hidden_states


class RossPreTrainedModel(PreTrainedModel):
    config: RossConfig
    config_class = RossConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Training-only modules found in a checkpoint are expected when the model is loaded for inference.
    _keys_to_ignore_on_load_unexpected = [r"^denoiser\.", r"^teacher\.", r"^queries\."]

    def _init_weights(self, module):
        super()._init_weights(module)
        # Children are visited first, so this overrides the generic init with the DiT one (zero-init adaLN) and, for
        # the ROSS^R head, with torch's default Linear init (what the authors' inverse projector gets).
        if isinstance(module, (RossDenoiser, RossMLPHead)):
            module.initialize_weights()


class RossModel(RossPreTrainedModel):
    """Vision tower + projector + language model (no LM head), as `LlavaModel`."""

    def __init__(self, config: RossConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.projector = RossProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    @merge_with_config_defaults
    @can_return_tuple
    @select_hidden_states("vision_feature_layer")
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """
        Args:
            pixel_values: `(num_images, 3, image_size, image_size)`, normalised as the vision tower expects.
            vision_feature_layer, vision_feature_select_strategy: default to the config's (as in `LlavaModel`).
            kwargs: `output_hidden_states` / `output_attentions` of the vision tower, `return_dict`.
        Returns:
            The vision tower's `BaseModelOutputWithPooling` (`last_hidden_state` `(num_images, num_patches,
            vision_hidden_size)`, the requested `hidden_states` / `attentions`) whose `pooler_output` is the visual
            tokens, one `(image_seq_length, text_hidden_size)` tensor per image (a list, as llava's).
        """
        # A frozen tower (the recipe's default) needs no autograd graph.
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(needs_grad):
            pixel_values = pixel_values.to(self.vision_tower.dtype)
            image_outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
            features = image_outputs.hidden_states[vision_feature_layer]
            if vision_feature_select_strategy == "default":
                features = features[:, 1:]  # drop CLS
        if features.shape[1] != self.config.image_seq_length:
            raise ValueError(
                f"The vision tower returned {features.shape[1]} tokens per image but the config expects "
                f"image_seq_length={self.config.image_seq_length}; check image_size and vision_feature_select_strategy."
            )
        image_outputs.pooler_output = list(self.projector(features))
        return image_outputs

    def project_images(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """The visual tokens `(num_images, image_seq_length, text_hidden_size)` of `pixel_values` (what `forward`
        scatters into the text embeddings)."""
        return torch.stack(self.get_image_features(pixel_values, return_dict=True).pooler_output)

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.FloatTensor, image_features: torch.FloatTensor
    ) -> torch.BoolTensor:
        """
        The `(batch_size, sequence_length)` mask of image tokens, checked against the number of image features:
        every image must own exactly `image_seq_length` tokens (a truncated image span would silently misalign).
        """
        if input_ids is None:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embedding).all(-1)
        else:
            mask = input_ids == self.config.image_token_id
        num_tokens, num_features = int(mask.sum()), image_features.shape[0] * image_features.shape[1]
        if num_tokens != num_features:
            raise ValueError(
                f"Image features and image tokens do not match: tokens: {num_tokens}, features: {num_features} "
                f"({image_features.shape[0]} images x {image_features.shape[1]} tokens). Each <image> must be "
                "expanded to image_seq_length tokens by the processor and must not be cut by truncation."
            )
        return mask

    def get_query_mask(
        self, input_ids: torch.LongTensor | None, queries: torch.Tensor | None
    ) -> torch.BoolTensor | None:
        """
        The `(batch_size, sequence_length)` mask of `<query>` tokens (`config.query_token_id`), or None when there is
        none. Each creation sample must hold whole spans of `image_seq_length` queries, and the model must have the
        learnable `queries` (`(image_seq_length, D)`) to put there.
        """
        if input_ids is None or self.config.query_token_id is None:
            return None
        mask = input_ids == self.config.query_token_id
        if not mask.any():
            return None
        if queries is None:
            raise ValueError(
                f"input_ids contain {int(mask.sum())} <query> tokens but the model has no learnable queries: they "
                "exist only in training with objective_config.condition='queries' (load_objective=True); a prompt "
                "for generation has no <query> token."
            )
        per_row = mask.sum(-1)
        if bool((per_row % self.config.image_seq_length != 0).any()):
            raise ValueError(
                f"<query> tokens per sample: {per_row.tolist()}; each creation sample must hold image_seq_length="
                f"{self.config.image_seq_length} of them (expanded by the processor, not cut by truncation)."
            )
        return mask

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        queries: torch.FloatTensor | None = None,
        **kwargs,
    ) -> RossModelOutputWithPast:
        r"""
        queries (`torch.FloatTensor` of shape `(image_seq_length, hidden_size)`, *optional*):
            The learnable queries (`condition="queries"`), inserted at every span of `<query>` tokens.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        query_mask = self.get_query_mask(input_ids, queries)
        if inputs_embeds is None:
            # The <query> id needs no embedding row: those positions are overwritten by the queries.
            ids = input_ids if query_mask is None else input_ids.masked_fill(query_mask, 0)
            inputs_embeds = self.get_input_embeddings()(ids)
        if query_mask is not None:
            num_spans = int(query_mask.sum()) // self.config.image_seq_length
            query_embeds = queries.to(inputs_embeds.dtype).unsqueeze(0).expand(num_spans, -1, -1)
            inputs_embeds = inputs_embeds.masked_scatter(query_mask.unsqueeze(-1), query_embeds)
        elif queries is not None and self.training:
            # A batch without creation samples keeps the queries in the graph (DDP expects a gradient for each).
            inputs_embeds = inputs_embeds + 0.0 * queries.sum()

        image_features = image_mask = None
        if pixel_values is not None:
            image_features = self.project_images(pixel_values).to(inputs_embeds.device, inputs_embeds.dtype)
            image_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_features)
        elif (
            input_ids is not None
            and (past_key_values is None or past_key_values.get_seq_length() == 0)
            and (input_ids == self.config.image_token_id).any()
        ):
            # Only a prompt must come with its images: a decode step (a filled cache) may generate the image token id,
            # which is then embedded as any token (llava merges image features only when pixel values are given).
            raise ValueError(
                f"input_ids contain {int((input_ids == self.config.image_token_id).sum())} image tokens "
                "but no pixel_values were given."
            )
        elif self.training:
            # A batch without images still runs the tower and projector (at zero weight): under DeepSpeed ZeRO-3
            # every rank must call the same modules or the parameter all-gathers hang.
            size = self.config.vision_config.image_size
            dummy = inputs_embeds.new_zeros(1, 3, size, size)
            inputs_embeds = inputs_embeds + 0.0 * self.project_images(dummy).sum()

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        return RossModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            image_token_mask=image_mask,
            query_token_mask=query_mask,
        )


class RossForConditionalGeneration(RossPreTrainedModel, GenerationMixin):
    """
    ROSS for image-text-to-text generation.

    Modules: `model.vision_tower`, `model.projector`, `model.language_model`, `lm_head` (inference), and, with
    `load_objective=True`, the training-only `teacher` (frozen target tokenizer), `denoiser` (ROSS^D denoiser, or the
    MLP head of ROSS^R) and `objective` (the loss and sampling maths, see `objective.py`; no parameters of its own),
    plus, for the generative variant (`condition="queries"`), the learnable `queries` (`nn.Embedding(image_seq_length,
    D)`, key `queries.weight`), training-only as well.

    Args:
        config (`RossConfig`): The model configuration.
        load_objective (`bool`, defaults to `False`): Build the objective's modules (when `objective_config` enables
            one). The same rule as `from_pretrained(..., load_objective=False)`: inference builds nothing it does not
            run; training, further training and `reconstruct` ask for the objective explicitly.
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}  # as llava: the LLM's own plan covers model.language_model
    # A checkpoint never needs to hold the frozen teacher: `from_pretrained` restores it from its own source when the
    # checkpoint has no copy (`save_teacher=False`).
    _keys_to_ignore_on_load_missing = [r"^teacher\."]

    def __init__(self, config: RossConfig, load_objective: bool = False):
        super().__init__(config)
        self.model = RossModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.objective = self.teacher = self.denoiser = self.queries = None
        if load_objective and config.objective_config.enabled:
            self._build_objective()
        self.post_init()

    def _build_objective(self):
        """The objective module, the frozen teacher and the trained head (registered here: keys `teacher.*`,
        `denoiser.*`)."""
        self.objective = build_objective(self.config)
        self.teacher = protect_from_init(build_teacher(self.config.objective_config, self.config.grid_size))
        self.denoiser = self.objective.build_head(self.teacher.num_channels)
        if self.config.uses_queries:
            # The generic init draws them as token embeddings (normal, std = initializer_range).
            self.queries = nn.Embedding(self.config.image_seq_length, self.config.text_config.hidden_size)

    @property
    def can_reconstruct(self) -> bool:
        """Whether `reconstruct` can run: the objective is built and its teacher decodes to pixels (target "vae" or
        "pixel", not a feature teacher)."""
        return self.objective is not None and hasattr(self.teacher, "decode")

    # ---- convenience accessors (the modules live in `self.model`, as in LlavaForConditionalGeneration) ----
    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def projector(self) -> nn.Module:
        return self.model.projector

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """`RossModel.get_image_features`: the tower's outputs, the visual tokens in `pooler_output`."""
        return self.model.get_image_features(
            pixel_values,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            **kwargs,
        )

    def get_visual_outputs(self, outputs: RossModelOutputWithPast) -> torch.FloatTensor | None:
        """
        The LLM hidden states the objective is conditioned on, at the image-token positions, `(num_images, N, D)`, or
        None when the batch has no image. `objective_config.condition_layer=None`: the last hidden state after the
        final norm (`outputs.last_hidden_state`, the authors' choice); an int `k`: `outputs.hidden_states[k]`, which
        `forward` / `reconstruct` request (see `condition_hidden_states_request`). Boolean indexing is row-major: the
        order masked_scatter filled images in. `condition="queries"`: the same hidden states at the query positions,
        `(num_creations, N, D)`, or None without creation samples.
        """
        mask = outputs.query_token_mask if self.config.uses_queries else outputs.image_token_mask
        if mask is None:
            return None
        hidden_states = self.get_condition_hidden_states(outputs)
        return hidden_states[mask].view(-1, self.config.image_seq_length, hidden_states.shape[-1])

    def get_condition_hidden_states(self, outputs: RossModelOutputWithPast) -> torch.FloatTensor:
        """The `(batch_size, sequence_length, D)` hidden states of the configured `condition_layer`."""
        index = self.config.condition_hidden_states_index
        if index is None:
            return outputs.last_hidden_state
        if outputs.hidden_states is None or outputs.hidden_states[index] is None:
            raise ValueError(
                f"objective_config.condition_layer={self.config.objective_config.condition_layer} needs the LLM's "
                f"hidden_states[{index}]: call the model with `output_hidden_states=[{index}]` (or True)."
            )
        return outputs.hidden_states[index]

    def condition_hidden_states_request(self, output_hidden_states: bool | int | list[int] | None = None):
        """
        The `output_hidden_states` to pass to the LLM so that it keeps the `condition_layer` hidden state, given the
        caller's own request (None: the text config's). The default layer needs nothing (no extra memory); otherwise
        `[index]` (transformers then keeps only that entry of the tuple), or `True` when the caller asked for hidden
        states as well.
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.text_config.output_hidden_states
        index = self.config.condition_hidden_states_index
        if index is None:
            return output_hidden_states
        return True if _requested(output_hidden_states) else [index]

    def has_condition_hidden_states(self, outputs: RossModelOutputWithPast) -> bool:
        """Whether `outputs` hold the hidden states of the configured `condition_layer`."""
        index = self.config.condition_hidden_states_index
        return index is None or (outputs.hidden_states is not None and outputs.hidden_states[index] is not None)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        teacher_targets: dict[str, torch.Tensor] | tuple | None = None,
        num_images_in_batch: int | torch.Tensor | None = None,
        target_pixel_values: torch.FloatTensor | None = None,
        **kwargs,
    ) -> RossCausalLMOutputWithPast:
        r"""
        Args:
            input_ids: `(batch_size, sequence_length)` with every image expanded to `image_seq_length` image tokens.
            pixel_values: `(num_images, 3, H, W)`, images in their order of appearance in the batch (row-major).
            labels: `(batch_size, sequence_length)`, -100 where not supervised.
            teacher_targets: optional cached teacher outputs `{"mean", "std"}` (or a pair), each `(num_images, N, C)`
                in `pixel_values` order (`train/latent_cache.py`); the visual loss then skips the teacher.
            num_images_in_batch: images in the whole accumulation step (summed over ranks), the image analogue of
                `num_items_in_batch`. The visual term is then weighted by this batch's share of them
                (`num_images / num_images_in_batch`), so the micro-batches of a step add up to one large batch.
                Without it the visual term is the batch's plain mean. With `condition="queries"` it counts the
                creation targets (`target_pixel_values`) instead.
            target_pixel_values: `(num_creations, 3, H, W)`, `condition="queries"` only: the image each creation
                sample's queries must reconstruct, in row-major order of the query spans. Only the teacher sees them.
        """
        self.check_visual_inputs(target_pixel_values, teacher_targets)
        # Only the visual loss with a `condition_layer` needs an intermediate hidden state; nothing extra otherwise.
        computes_visual_loss = labels is not None and self.training and self.objective is not None
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        if output_hidden_states is None:
            output_hidden_states = self.config.text_config.output_hidden_states
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            queries=None if self.queries is None else self.queries.weight,
            return_dict=True,  # the fields are read below, whatever config.return_dict
            output_hidden_states=(
                self.condition_hidden_states_request(output_hidden_states)
                if computes_visual_loss
                else output_hidden_states
            ),
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # after the LLM's final norm
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        # None at inference when `condition_layer` names a hidden state that was not kept.
        visual_outputs = self.get_visual_outputs(outputs) if self.has_condition_hidden_states(outputs) else None

        loss = text_loss = visual_loss = visual_term = None
        if labels is not None:
            text_loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
            loss = text_loss
            if computes_visual_loss:
                # The images the objective reconstructs: the inputs (ROSS), or the creation targets (queries).
                target_images = target_pixel_values if self.config.uses_queries else pixel_values
                check_targets_match(visual_outputs, target_images)
                visual_loss = self.objective(
                    visual_outputs,
                    target_images,
                    teacher_targets,
                    denoiser=self.denoiser,
                    teacher=self.teacher,
                    hidden_states=self.get_condition_hidden_states(outputs),
                )
                visual_term = visual_loss
                if num_images_in_batch is not None:
                    num_images = 0 if target_images is None else target_images.shape[0]
                    images_in_step = torch.as_tensor(num_images_in_batch, device=visual_loss.device)
                    visual_term = visual_loss * (num_images / images_in_step.clamp(min=1).to(torch.float32))
                loss = text_loss + self.config.objective_config.weight * visual_term

        return RossCausalLMOutputWithPast(
            loss=loss,
            text_loss=text_loss,
            visual_loss=visual_loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            # Not the one the visual loss alone asked for.
            hidden_states=outputs.hidden_states if _requested(output_hidden_states) else None,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            visual_outputs=visual_outputs,
            visual_term=visual_term,
        )

    def check_visual_inputs(self, target_pixel_values, teacher_targets) -> None:
        """Creation targets exist only for the generative variant, which cannot use the latent cache (cached per input
        image, not per creation target)."""
        if target_pixel_values is not None and not self.config.uses_queries:
            raise ValueError(
                f"target_pixel_values ({target_pixel_values.shape[0]} creation targets) need "
                "objective_config.condition='queries'; this model reconstructs its input images."
            )
        if teacher_targets is not None and self.config.uses_queries:
            raise ValueError("condition='queries' does not support cached teacher targets (the latent cache).")

    @torch.no_grad()
    def reconstruct(
        self,
        pixel_values: torch.FloatTensor | None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_inference_steps: int = 50,
        scheduler="ddim",
        generator: torch.Generator | None = None,
        output_type: str = "pil",
    ):
        """
        Reconstruct the images from the model's visual outputs: reverse diffusion with the trained denoiser
        (or the MLP head of ROSS^R), then the teacher's decoder (VAE decoder or un-patchify).

        Args:
            pixel_values: `(num_images, 3, H, W)` as produced by the processor.
            input_ids: optional prompt ids containing the image tokens (e.g. from the chat template); by default each
                image is fed alone as `image_seq_length` image tokens. `condition="queries"`: required, a creation
                prompt holding the `<query>` spans (`pixel_values` may then be None): the images are created from the
                captions.
            scheduler: `"ddpm"`, `"ddim"` or any diffusers scheduler instance.
            output_type: `"pil"` (list of `PIL.Image`) or `"pt"` (`(num_images, 3, S, S)` in [0, 1]).
        """
        if not self.can_reconstruct:
            raise ValueError(
                "reconstruct() needs the trained denoiser and a decodable teacher (target 'vae' or 'pixel'): load the "
                "model with `from_pretrained(path, load_objective=True)`."
            )
        if input_ids is None and self.config.uses_queries:
            raise ValueError(
                "condition='queries' reconstructs from the queries: pass input_ids of a creation prompt holding the "
                "<query> tokens (the processor's chat template of a caption -> image turn)."
            )
        if input_ids is None:
            input_ids = torch.full(
                (pixel_values.shape[0], self.config.image_seq_length), self.config.image_token_id, device=self.device
            )
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            queries=None if self.queries is None else self.queries.weight,
            output_hidden_states=self.condition_hidden_states_request(),
            return_dict=True,
        )
        condition = self.get_visual_outputs(outputs)  # the layer the objective was trained on
        if condition is None:
            raise ValueError("reconstruct() found no <query> span in input_ids to create an image from.")
        tokens = self.objective.sample(
            condition,
            denoiser=self.denoiser,
            teacher=self.teacher,
            num_inference_steps=num_inference_steps,
            scheduler=scheduler,
            generator=generator,
        )
        images = self.teacher.decode(tokens).float().clamp(0, 1)
        if output_type == "pt":
            return images
        arrays = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
        return [Image.fromarray(array) for array in arrays]

    # ---- construction from components / checkpoints ----
    @classmethod
    def from_pretrained(cls, *args, load_objective: bool = False, **kwargs):
        """
        `load_objective=False` (default, inference, as for `__init__`): neither teacher nor denoiser is allocated.
        `load_objective=True` (further training, reconstruction): the trained denoiser is restored from the checkpoint
        and the frozen teacher is loaded from the checkpoint if it was saved there, else from its own source.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            *args, load_objective=load_objective, output_loading_info=True, **kwargs
        )
        if model.teacher is not None:
            missing = info["missing_keys"]
            if not model.config.objective_config.save_teacher or not _filled_by_loader(model.teacher):
                model.load_teacher()
            # Neither path fills the buffers no state dict holds (SigLIP / CLIP `position_ids`).
            restore_non_persistent_buffers(model.teacher, model.config.objective_config, model.config.grid_size)
            missing_denoiser = [key for key in missing if key.startswith("denoiser.")]
            if missing_denoiser == ["denoiser.pos_embed"]:
                # Saved before the table was stored (or with the fixed one): it starts as the sin-cos table, as then.
                logger.info("The checkpoint has no denoiser.pos_embed: the 2-D sin-cos table is used.")
            elif missing_denoiser:
                logger.warning(
                    "The checkpoint has no denoiser weights: the denoiser starts from a fresh (zero-init) state."
                )
            freeze(model.teacher)
        return (model, info) if output_loading_info else model

    def load_teacher(self):
        """(Re)load the frozen teacher's weights from `objective_config.teacher` and freeze it."""
        _, state_dict, _ = load_teacher_source(self.config.objective_config)
        if state_dict:
            self.teacher.load_state_dict(state_dict)
        freeze(self.teacher)

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """Saves safetensors weights; the frozen teacher is left out unless `objective_config.save_teacher`."""
        if self.teacher is not None and not self.config.objective_config.save_teacher:
            state_dict = state_dict if state_dict is not None else self.state_dict()
            state_dict = {key: value for key, value in state_dict.items() if not key.startswith("teacher.")}
        super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        if kwargs.get("is_main_process", True):
            add_auto_map(Path(save_directory) / "config.json")

    def initialize_weights_of(self, module: nn.Module):
        """Run this model's `_init_weights` over one sub-module, children first as `post_init` does."""
        with torch.no_grad():
            for sub in reversed(list(module.modules())):
                self._init_weights(sub)


def check_targets_match(visual_outputs: torch.Tensor | None, target_images: torch.Tensor | None) -> None:
    """One target image per condition span (per image, or per creation sample's queries)."""
    num_conditions = 0 if visual_outputs is None else visual_outputs.shape[0]
    num_targets = 0 if target_images is None else target_images.shape[0]
    if num_conditions != num_targets:
        raise ValueError(
            f"The objective got {num_conditions} condition spans but {num_targets} target images: with "
            "condition='queries' each creation sample needs one image in target_pixel_values and one span of <query> "
            "tokens."
        )


def _requested(output_hidden_states: bool | int | list[int] | None) -> bool:
    """Whether an `output_hidden_states` value asks for hidden states (`True`, an index or a list of indices)."""
    return output_hidden_states is not None and output_hidden_states is not False


def _filled_by_loader(module: nn.Module) -> bool:
    """Whether the checkpoint held every parameter of `module`. The loader flags each tensor it fills
    (`_is_hf_initialized`, so `_init_weights` skips it); missing teacher keys are on the ignore list and so are not
    in the loading report."""
    return all(getattr(param, "_is_hf_initialized", False) for param in module.parameters())


# transformers writes auto_map entries only for the class it saves; users also expect AutoModel and AutoProcessor.
AUTO_MAP = {
    "AutoConfig": "configuration_ross.RossConfig",
    "AutoModel": "modeling_ross.RossModel",
    "AutoModelForImageTextToText": "modeling_ross.RossForConditionalGeneration",
    "AutoProcessor": "processing_ross.RossProcessor",
}


def add_auto_map(config_file: Path) -> None:
    """Complete `auto_map` in a saved `config.json` so every Auto class finds the remote code."""
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    config.setdefault("auto_map", {}).update(AUTO_MAP)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


__all__ = ["RossForConditionalGeneration", "RossModel", "RossPreTrainedModel"]
