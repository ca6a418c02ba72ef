"""`objective_config.condition_layer`: which LLM hidden state conditions the visual loss (VIRAL-style alignment).

The tiny LLM has 2 decoder layers, so `condition_layer=1` is a middle layer: the output of the first decoder layer,
before the second layer and the final norm.
"""

import pytest
import torch
from conftest import TINY_OBJECTIVE
from test_objective import _batch, _model

from modeling_ross import RossConfig, RossForConditionalGeneration, from_components
from modeling_ross.testing import write_tiny_dinov2


@pytest.fixture(scope="module")
def dinov2_teacher(tmp_path_factory):
    return str(write_tiny_dinov2(tmp_path_factory.mktemp("dinov2-tiny")))


@pytest.fixture()
def features_components(tiny_components, dinov2_teacher):
    return {**tiny_components, "teacher": dinov2_teacher, "teacher_subfolder": None}


def _features_model(components, **kwargs):
    """regress + cosine to a frozen DINOv2's features (`features_components`)."""
    torch.manual_seed(0)
    settings = {**TINY_OBJECTIVE, "objective": "regress", "target": "features", "regress_loss": "cosine", **kwargs}
    return from_components(**components, **settings)


def _llm_kwargs(model) -> list:
    """Records the `output_hidden_states` each LLM call receives."""
    seen = []
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("output_hidden_states")), with_kwargs=True
    )
    return seen


def test_default_layer_is_the_last_hidden_state_after_the_final_norm(tiny_components, tiny_processor):
    batch = _batch(tiny_processor, [[1], [], [2, 3]])
    model = _model(tiny_components, objective="regress", latent_sample="mode").train()
    assert model.config.objective_config.condition_layer is None
    seen = _llm_kwargs(model)
    out = model(**batch)
    assert not seen[-1] and out.hidden_states is None  # the default path asks the LLM for nothing more
    # The loss as computed before `condition_layer` existed: the last hidden state at the image positions.
    outputs = model.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                          attention_mask=batch["attention_mask"])  # fmt: skip
    last = outputs.last_hidden_state
    visual = last[outputs.image_token_mask].view(3, -1, last.shape[-1])
    expected = model.objective(visual, batch["pixel_values"], None, denoiser=model.denoiser, teacher=model.teacher,
                               hidden_states=last)  # fmt: skip
    assert torch.equal(out.visual_outputs, visual) and torch.equal(out.visual_loss, expected)
    # transformers' last `hidden_states` entry is that same tensor (after the norm): -1 and L equal the default.
    for layer in (-1, 2):
        same = _model(tiny_components, objective="regress", latent_sample="mode", condition_layer=layer).train()
        assert torch.equal(same(**batch).visual_loss, out.visual_loss), layer


@pytest.mark.parametrize("layer", [1, -2])
def test_condition_is_the_hidden_state_of_that_layer(features_components, tiny_processor, layer):
    batch = _batch(tiny_processor, [[1], [], [2, 3]])
    model = _features_model(features_components, condition_layer=layer).train()
    seen = _llm_kwargs(model)
    out = model(**batch)
    assert seen[-1] == [1] and out.hidden_states is None  # only hidden_states[1] is kept, and not returned
    reference = model(**batch, output_hidden_states=True)
    assert len(reference.hidden_states) == 3  # embeddings + 2 layers
    mask = batch["input_ids"] == model.config.image_token_id
    expected = reference.hidden_states[1][mask].view(3, -1, model.config.text_config.hidden_size)
    assert torch.equal(out.visual_outputs, expected) and torch.equal(reference.visual_outputs, expected)
    last = reference.hidden_states[2][mask].view(expected.shape)
    assert not torch.allclose(expected, last) and torch.equal(out.visual_loss, reference.visual_loss)
    # A batch without images still runs every module, at zero weight, from the same layer.
    text_only = model(**_batch(tiny_processor, [[]]))
    assert text_only.visual_outputs is None and text_only.visual_loss == 0 and seen[-1] == [1]
    # Inference asks for nothing: no visual outputs of a layer that was not kept.
    model.eval()
    with torch.no_grad():
        inference = model(**batch)
    assert not seen[-1] and inference.visual_outputs is None and inference.visual_loss is None


@pytest.mark.parametrize("checkpointing", [False, True])
def test_visual_loss_gradient_stops_at_the_condition_layer(features_components, tiny_processor, checkpointing):
    model = _features_model(features_components, condition_layer=1).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    model.zero_grad()
    model(**_batch(tiny_processor, [[1], [2]])).visual_loss.backward()
    language_model = model.model.language_model

    def grads(module):
        return [p.grad for p in module.parameters() if p.requires_grad]

    for name, module in (("projector", model.model.projector), ("layer 1", language_model.layers[0]),
                         ("head", model.denoiser)):  # fmt: skip
        assert all(g is not None for g in grads(module)) and any(g.abs().sum() > 0 for g in grads(module)), name
    for name, module in (("layer 2", language_model.layers[1]), ("final norm", language_model.norm),
                         ("lm_head", model.lm_head)):  # fmt: skip
        assert all(g is None or not g.any() for g in grads(module)), name


def test_condition_layer_survives_a_save_and_load(features_components, tiny_processor, tmp_path):
    model = _features_model(features_components, condition_layer=1).train()
    batch = _batch(tiny_processor, [[1]])
    model.save_pretrained(tmp_path)
    loaded = RossForConditionalGeneration.from_pretrained(tmp_path, load_objective=True).train()
    assert loaded.config.objective_config.condition_layer == 1
    torch.testing.assert_close(loaded(**batch).visual_loss, model(**batch).visual_loss)


@pytest.mark.parametrize("layer", [0, 3, -3, 40])
def test_out_of_range_condition_layer_is_an_error(layer):
    text_config = {"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2}
    with pytest.raises(ValueError, match=rf"condition_layer={layer} is out of range .* 2 decoder layers: use 1\.\.2"):
        RossConfig(text_config=text_config, objective_config={"condition_layer": layer})
    RossConfig(text_config=text_config, objective_config={"condition_layer": -2})  # -2..-1 and 1..2 are fine


def test_reconstruct_uses_the_condition_layer(tiny_components, tiny_processor):
    model = _model(tiny_components, objective="regress", target="pixel", pixel_patch_size=4, condition_layer=1)
    model.eval()
    pixel_values = _batch(tiny_processor, [[1], [2]])["pixel_values"]
    images = model.reconstruct(pixel_values, output_type="pt")
    input_ids = torch.full((2, model.config.image_seq_length), model.config.image_token_id)
    with torch.no_grad():
        hidden = model.model(input_ids=input_ids, pixel_values=pixel_values, output_hidden_states=True).hidden_states
        expected = model.teacher.decode(model.denoiser(hidden[1]).float()).float().clamp(0, 1)
    torch.testing.assert_close(images, expected)


def test_feature_alignment_at_a_middle_layer_trains(features_components, tiny_processor):
    """The VIRAL recipe in miniature: cosine regression of frozen vision features from layer 1 of 2."""
    model = _features_model(features_components, condition_layer=1, weight=0.5, teacher_image_size=48).train()
    assert model.config.objective_config.teacher_image_size == 48  # the caller's size beats the processor's
    batch = _batch(tiny_processor, [[1], [2, 3]])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    losses = []
    for _ in range(8):
        out = model(**batch)
        torch.testing.assert_close(out.loss, out.text_loss + 0.5 * out.visual_loss)
        losses.append(out.visual_loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert losses[-1] < 0.8 * losses[0], losses
