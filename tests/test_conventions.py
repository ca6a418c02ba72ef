"""transformers conventions the model keeps, as transformers' common model tests check them for llava:
`get_image_features` returns a `BaseModelOutputWithPooling`, `return_dict=False` gives tuples, the tied `lm_head` has
a tensor-parallel plan entry, and a decode step may generate the image token id (generation from `inputs_embeds`)."""

import pytest
import torch
from conftest import TINY_OBJECTIVE
from transformers import LogitsProcessor, LogitsProcessorList, LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_ross import from_components
from test_model import SPECS, _batch


@pytest.fixture()
def eval_model(tiny_components):
    torch.manual_seed(0)
    return from_components(**tiny_components, **TINY_OBJECTIVE).eval()


def _pixels(model, num_images=3):
    size = model.config.vision_config.image_size
    return torch.randn(num_images, 3, size, size, generator=torch.Generator().manual_seed(0))


# ---- 1. get_image_features ----
@pytest.mark.parametrize("owner", ["model", "model.model"])
def test_get_image_features_returns_base_model_output_with_pooling(eval_model, owner):
    model = eval_model if owner == "model" else eval_model.model
    pixel_values = _pixels(eval_model)
    with torch.no_grad():
        outputs = model.get_image_features(pixel_values, return_dict=True)
    assert isinstance(outputs, BaseModelOutputWithPooling)
    vision = eval_model.config.vision_config
    num_patches = (vision.image_size // vision.patch_size) ** 2
    assert outputs.last_hidden_state.shape == (3, num_patches, vision.hidden_size)
    # One (image_seq_length, text_hidden_size) tensor per image, as llava's pooler_output.
    n, d = eval_model.config.image_seq_length, eval_model.config.text_config.hidden_size
    assert len(outputs.pooler_output) == 3 and all(f.shape == (n, d) for f in outputs.pooler_output)
    # They are the visual tokens forward scatters into the embeddings.
    with torch.no_grad():
        scattered = eval_model.model.project_images(pixel_values)
    torch.testing.assert_close(torch.stack(outputs.pooler_output), scattered)
    with torch.no_grad():
        as_tuple = model.get_image_features(pixel_values, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], outputs.last_hidden_state)


def test_get_image_features_hidden_states_and_attentions_on_request(eval_model):
    pixel_values = _pixels(eval_model, 2)
    layers = eval_model.config.vision_config.num_hidden_layers
    with torch.no_grad():
        default = eval_model.get_image_features(pixel_values)
        full = eval_model.get_image_features(pixel_values, output_hidden_states=True)
    # Only the feature layer is captured by default; every layer (+ embeddings) when asked; the features agree.
    assert default.hidden_states is None or any(h is None for h in default.hidden_states)
    assert len(full.hidden_states) == layers + 1 and all(h is not None for h in full.hidden_states)
    torch.testing.assert_close(torch.stack(default.pooler_output), torch.stack(full.pooler_output))
    eval_model.set_attn_implementation("eager")
    with torch.no_grad():
        attended = eval_model.get_image_features(pixel_values, output_attentions=True)
    assert len(attended.attentions) == layers


# ---- 2. return_dict=False ----
def test_forward_with_return_dict_false_returns_the_tuple(eval_model, tiny_processor):
    batch = _batch(tiny_processor, SPECS)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        as_dict = eval_model(**batch, labels=labels)
        as_tuple = eval_model(**batch, labels=labels, return_dict=False)
        base_tuple = eval_model.model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(base_tuple, tuple)
    expected = as_dict.to_tuple()
    assert len(as_tuple) == len(expected)
    for got, want in zip(as_tuple, expected):
        if isinstance(want, torch.Tensor):
            torch.testing.assert_close(got, want)
    torch.testing.assert_close(base_tuple[0], eval_model.model(**batch).last_hidden_state)
    # The config's return_dict is honoured too.
    eval_model.config.return_dict = False
    with torch.no_grad():
        assert isinstance(eval_model(**batch), tuple)


# ---- 3. tensor-parallel plan of the tied head ----
def test_lm_head_has_the_llava_tp_plan_entry(eval_model):
    from transformers.distributed.parallel_utils import _get_parameter_plan

    assert type(eval_model)._tp_plan == LlavaForConditionalGeneration._tp_plan == {"lm_head": "colwise_gather_output"}
    assert eval_model.tp_plan["lm_head"] == "colwise_gather_output"
    # Every entry of the full plan (the LLM's own, under model.language_model) names a real parameter or module.
    names = {name for name, _ in eval_model.named_parameters()} | {name for name, _ in eval_model.named_modules()}
    unused = [
        pattern
        for pattern in eval_model.tp_plan
        if not any(
            _get_parameter_plan(name, {pattern: ""}, is_weight=is_weight) is not None
            for name in names
            for is_weight in (True, False)
        )
    ]
    assert not unused


# ---- 4. decode steps may produce the image token id ----
class ForceToken(LogitsProcessor):
    """Makes `token_id` the greedy choice at every step."""

    def __init__(self, token_id: int):
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        scores = torch.full_like(scores, -1e9)
        scores[:, self.token_id] = 0.0
        return scores


def test_decode_step_may_generate_the_image_token(eval_model, tiny_processor):
    image_token_id = eval_model.config.image_token_id
    force = LogitsProcessorList([ForceToken(image_token_id)])
    prompt = _batch(tiny_processor, SPECS[1:2], generation=True)
    with torch.no_grad():
        out = eval_model.generate(**prompt, max_new_tokens=3, do_sample=False, logits_processor=force)
    assert out[0, -3:].tolist() == [image_token_id] * 3

    # From inputs_embeds (transformers' common generation test): text-only, and with the image merged beforehand.
    text = _batch(tiny_processor, SPECS[:1], generation=True)
    embeds = eval_model.get_input_embeddings()(text["input_ids"])
    with torch.no_grad():
        from_ids = eval_model.generate(**text, max_new_tokens=4, do_sample=False)
        from_embeds = eval_model.generate(
            inputs_embeds=embeds, attention_mask=text["attention_mask"], max_new_tokens=4, do_sample=False
        )
        forced = eval_model.generate(
            inputs_embeds=embeds, attention_mask=text["attention_mask"], max_new_tokens=3, do_sample=False,
            logits_processor=force,
        )  # fmt: skip
    assert from_embeds.tolist() == from_ids[:, text["input_ids"].shape[1] :].tolist()
    assert forced.tolist() == [[image_token_id] * 3]

    # A decode step with the cache: the token is embedded as any token, no image is expected.
    with torch.no_grad():
        prefill = eval_model(**prompt, use_cache=True)
        step = eval_model(
            input_ids=torch.tensor([[image_token_id]]), past_key_values=prefill.past_key_values, use_cache=True
        )
    assert step.logits.shape == (1, 1, eval_model.config.text_config.vocab_size)
    # A prompt (no cache) with image tokens but no pixel values is still refused.
    with pytest.raises(ValueError, match="no pixel_values"):
        eval_model(input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"])
