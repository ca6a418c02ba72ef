"""`objective_config.condition="queries"`: the paper's generative variant (Table 2, "reconstructive vs generative").

Learnable queries, inserted at the `<query>` tokens of caption -> image "creation" samples, condition the denoiser
that reconstructs the sample's target image. Tested like the other objectives: the loss falls on a few images,
gradients reach the queries, inference is unchanged; plus parsing, collation, checkpoints and export.
"""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_OBJECTIVE
from huggingface_hub.errors import StrictDataclassFieldValidationError
from PIL import Image
from transformers import LlavaForConditionalGeneration

from modeling_ross import RossConfig, RossForConditionalGeneration, RossProcessor, from_components
from modeling_ross.export_llava import export_llava
from ross.train.callbacks import check_model
from ross.train.collator import IGNORE_INDEX, RossDataCollator
from ross.train.dataset import load_training_dataset
from ross.train.sources import BadSampleError, is_creation
from ross.train.synthetic import CREATION_PROMPT, write_llava_dataset
from ross.train.trainer import _num_images, apply_stage


def _image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.NEAREST)


def _creation(caption: str) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "text", "text": CREATION_PROMPT.format(caption=caption)}]},
        {"role": "assistant", "content": [{"type": "query"}]},
    ]


def _question() -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]


@pytest.fixture(scope="module")
def query_processor(tiny_components):
    return RossProcessor.from_components(
        tiny_components["vision_model"], tiny_components["language_model"], query_token="<query>"
    )


def _model(components, **kwargs):
    torch.manual_seed(0)
    return from_components(**components, **{**TINY_OBJECTIVE, "condition": "queries", **kwargs})


def _features(specs):
    """`specs`: "c<seed>" a creation sample of that target image, "q<seed>" a question about that image."""
    features = []
    for spec in specs:
        kind, seed = spec[0], int(spec[1:])
        messages = _creation(f"a picture number {seed}") if kind == "c" else _question()
        features.append({"id": spec, "source": "test", "messages": messages, "images": [_image(seed)]})
    return features


# ---- configuration ----
def test_config_validation(tiny_components):
    with pytest.raises(StrictDataclassFieldValidationError, match="condition"):
        from_components(**tiny_components, **TINY_OBJECTIVE, condition="query")
    with pytest.raises(ValueError, match="objective='none' has no head"):
        from_components(**tiny_components, objective="none", condition="queries")
    model = _model(tiny_components)
    config = model.config.to_dict()
    assert config["objective_config"]["condition"] == "queries" and config["query_token_id"] is not None
    with pytest.raises(ValueError, match="needs query_token_id"):
        RossConfig(**{**config, "query_token_id": None})
    with pytest.raises(ValueError, match="both"):
        RossConfig(**{**config, "query_token_id": config["image_token_id"]})
    assert RossConfig(**config).uses_queries and not from_components(**tiny_components).config.uses_queries


# ---- processor, parsing, collation ----
def test_processor_inserts_exactly_n_query_tokens(query_processor, tiny_components):
    model = _model(tiny_components)
    n = query_processor.image_seq_length
    assert query_processor.query_token_id == model.config.query_token_id
    out = query_processor.apply_chat_template(
        [_creation("a red circle")], tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        return_tensors="pt",
    )  # fmt: skip
    ids, mask = out["input_ids"][0], out["assistant_masks"][0].bool()
    is_query = ids == query_processor.query_token_id
    positions = is_query.nonzero().flatten()
    assert len(positions) == n and torch.equal(positions, positions[0] + torch.arange(n))  # one span
    # The assistant turn: its queries and the end of turn; the prompt (with the caption) is not.
    assert mask[is_query].all() and query_processor.tokenizer.decode(ids[mask & ~is_query]).strip() == "<|im_end|>"
    # A generation prompt never holds a query.
    prompt = query_processor.apply_chat_template(_question()[:1], add_generation_prompt=True, tokenize=False)
    assert "<query>" not in prompt


def test_prefix_masking_maps_through_queries_and_images(query_processor):
    """Mixed turns (an image, then a creation in a later turn): both masking paths supervise the same tokens."""
    messages = [*_question(), {"role": "user", "content": [{"type": "text", "text": "Draw it."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "ok "}, {"type": "query"}]}]  # fmt: skip
    feature = {"id": "m", "source": "test", "messages": messages, "images": [_image(1)]}
    # Not a creation sample for the parser (it has an <image>), but the processor handles both placeholders.
    generation = RossDataCollator(query_processor, 512, masking="generation")._tokenize(messages, [_image(1)])
    prefix = RossDataCollator(query_processor, 512, masking="prefix")._tokenize(messages, [_image(1)])
    assert torch.equal(generation[0]["input_ids"], prefix[0]["input_ids"]) and torch.equal(generation[1], prefix[1])
    ids = generation[0]["input_ids"][0]
    supervised = ids[generation[1] & (ids != query_processor.query_token_id)]
    assert query_processor.tokenizer.decode(supervised).replace(" ", "") == "red<|im_end|>ok<|im_end|>"
    assert is_creation(feature["messages"])


def test_collator_batches_creation_targets(query_processor):
    n = query_processor.image_seq_length
    batch = RossDataCollator(query_processor, 512)(_features(["c1", "q2", "c3"]))
    assert batch["pixel_values"].shape == (1, 3, 32, 32)  # only the question's image is an input
    assert batch["target_pixel_values"].shape == (2, 3, 32, 32)
    expected = query_processor.preprocess_targets([_image(1), _image(3)])
    assert torch.equal(batch["target_pixel_values"], expected)
    is_query = batch["input_ids"] == query_processor.query_token_id
    assert is_query.sum(-1).tolist() == [n, 0, n]
    assert (batch["labels"][is_query] == IGNORE_INDEX).all()
    assert ((batch["labels"] != IGNORE_INDEX).sum(-1) > 0).all()  # the end of turn is still supervised


def test_collator_refuses_creation_samples_it_cannot_train(tiny_processor, query_processor):
    with pytest.raises(BadSampleError, match=r"id='c1'.*\[template\].*query_token"):
        RossDataCollator(tiny_processor, 512)(_features(["c1"]))
    with pytest.raises(BadSampleError, match="plain format"):
        RossDataCollator(query_processor, 512, format="plain")(_features(["c1"]))
    literal = _features(["q1"])
    literal[0]["messages"][1]["content"] = [{"type": "text", "text": "<query>"}]  # not parsed: literal text
    n = query_processor.image_seq_length
    with pytest.raises(BadSampleError, match=rf"\[image_count_mismatch\]: {n} query tokens in the text, expected 0"):
        RossDataCollator(query_processor, 512)(literal)


def _png(folder, name, seed):
    _image(seed).save(folder / name)
    return name


def test_creation_records_parse_in_both_formats(tmp_path):
    _png(tmp_path, "a.png", 1)
    llava = [{"id": "c", "image": "a.png", "conversations": [
        {"from": "human", "value": "Create an image of a red circle."}, {"from": "gpt", "value": "<query>"}]}]
    messages = [{"id": "c", "images": ["a.png"], "messages": [
        {"role": "user", "content": "Create an image of a red circle."},
        {"role": "assistant", "content": [{"type": "query"}]}]}]  # fmt: skip
    items = []
    for name, records in (("llava.json", llava), ("messages.json", messages)):
        (tmp_path / name).write_text(json.dumps(records))
        dataset = load_training_dataset(str(tmp_path / name), image_seq_length=16)
        items.append(dataset[0])
    assert items[0]["messages"] == items[1]["messages"] == _creation("a red circle")
    assert all(len(item["images"]) == 1 for item in items)


BAD_CREATIONS = {
    "query in a user turn": (
        [{"from": "human", "value": "<query>"}, {"from": "gpt", "value": "ok"}], ["a.png"],
        r"\[invalid_record\]: a creation sample needs exactly one <query> placeholder, in an assistant turn.*user",
    ),
    "two queries": (
        [{"from": "human", "value": "Draw."}, {"from": "gpt", "value": "<query><query>"}], ["a.png"],
        r"\[invalid_record\].*found 2",
    ),
    "an input image too": (
        [{"from": "human", "value": "<image>\nDraw it again."}, {"from": "gpt", "value": "<query>"}], ["a.png"],
        r"\[invalid_record\].*1 <image> placeholder\(s\)",
    ),
    "no target image": (
        [{"from": "human", "value": "Draw."}, {"from": "gpt", "value": "<query>"}], [],
        r"\[image_count_mismatch\]: a creation sample needs exactly one \(target\) image, got 0",
    ),
    "two target images": (
        [{"from": "human", "value": "Draw."}, {"from": "gpt", "value": "<query>"}], ["a.png", "a.png"],
        r"\[image_count_mismatch\].*got 2",
    ),
}


@pytest.mark.parametrize("case", BAD_CREATIONS, ids=list(BAD_CREATIONS))
def test_bad_creation_records_are_named(tmp_path, case):
    conversations, images, message = BAD_CREATIONS[case]
    _png(tmp_path, "a.png", 1)
    (tmp_path / "data.json").write_text(json.dumps([{"id": "bad", "image": images, "conversations": conversations}]))
    with pytest.raises(ValueError, match=r"id='bad' \(.*data.json:#0\) " + message):
        load_training_dataset(str(tmp_path / "data.json"), image_seq_length=16)


def test_synthetic_creation_samples(tmp_path, query_processor):
    plain = json.loads(open(write_llava_dataset(str(tmp_path / "a"), 6, size=32)).read())
    path = write_llava_dataset(str(tmp_path / "b"), 6, size=32, creation_fraction=0.5)
    records = json.loads(open(path).read())
    created = [r for r in records if "_create_" in r["id"]]
    assert len(created) == 3 and [r for r in records if "_create_" not in r["id"]] == plain  # the rest unchanged
    assert created[0]["conversations"][0]["value"].startswith("Create an image of ")
    dataset = load_training_dataset(path, image_seq_length=query_processor.image_seq_length)
    items = [dataset[i] for i in range(len(dataset))]
    batch = RossDataCollator(query_processor, 512)([item for item in items if is_creation(item["messages"])])
    assert batch["target_pixel_values"].shape[0] == 3 and "pixel_values" not in batch
    with pytest.raises(ValueError, match="stage='sft'"):
        write_llava_dataset(str(tmp_path / "c"), 2, stage="plain", creation_fraction=0.5)


# ---- the model ----
def test_queries_condition_the_objective_and_get_gradients(tiny_components, query_processor):
    model = _model(tiny_components).train()
    assert model.queries.weight.shape == (model.config.image_seq_length, model.config.text_config.hidden_size)
    assert 0.005 < float(model.queries.weight.detach().std()) < 0.05  # drawn like token embeddings (std 0.02)
    batch = RossDataCollator(query_processor, 512)(_features(["c1", "q2", "c3"]))
    out = model(**batch)
    # The condition: the last hidden states at the query positions, in row order; queries are the embeddings there.
    outputs = model.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                          attention_mask=batch["attention_mask"], queries=model.queries.weight)  # fmt: skip
    mask = batch["input_ids"] == model.config.query_token_id
    expected = outputs.last_hidden_state[mask].view(2, model.config.image_seq_length, -1)
    assert torch.equal(out.visual_outputs, expected) and out.visual_loss > 0
    out.loss.backward()
    assert model.queries.weight.grad is not None and model.queries.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.denoiser.parameters())
    # Comprehension samples only: no visual loss, every module still in the graph (DDP / ZeRO-3).
    model.zero_grad()
    only_questions = model(**RossDataCollator(query_processor, 512)(_features(["q1", "q2"])))
    assert only_questions.visual_outputs is None and only_questions.visual_loss == 0
    only_questions.loss.backward()
    assert model.queries.weight.grad is not None and not model.queries.weight.grad.any()


def test_model_errors_name_the_problem(tiny_components, query_processor):
    model = _model(tiny_components).train()
    batch = RossDataCollator(query_processor, 512)(_features(["c1", "c2"]))
    with pytest.raises(ValueError, match="2 condition spans but 1 target images"):
        model(**{**batch, "target_pixel_values": batch["target_pixel_values"][:1]})
    n = model.config.image_seq_length
    with pytest.raises(ValueError, match=rf"<query> tokens per sample: \[{n - 1}, {n}\]"):
        ids = batch["input_ids"].clone()
        ids[0, (ids[0] == model.config.query_token_id).nonzero()[0]] = 0
        model(**{**batch, "input_ids": ids})
    with pytest.raises(ValueError, match="latent cache"):
        model(**batch, teacher_targets={"mean": torch.zeros(2, n, 64)})
    reconstructive = from_components(**tiny_components, **TINY_OBJECTIVE).train()
    with pytest.raises(ValueError, match="need objective_config.condition='queries'"):
        reconstructive(input_ids=batch["input_ids"][:, :3], target_pixel_values=batch["target_pixel_values"])
    inference = RossForConditionalGeneration(model.config)  # load_objective=False: no queries
    with pytest.raises(ValueError, match=f"{2 * n} <query> tokens but the model has no learnable queries"):
        inference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_loss_falls_on_a_few_images(tiny_components, query_processor):
    """A few optimizer steps on three caption -> image samples: the denoising loss on the same noise draws falls."""
    model = _model(tiny_components, target="pixel", pixel_patch_size=4, num_noise_draws=4).train()
    batch = RossDataCollator(query_processor, 512)(_features(["c11", "c12", "c13"]))
    apply_stage(model, 2)
    assert model.queries.weight.requires_grad
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)

    def fixed_draw_loss() -> float:
        torch.manual_seed(123)  # the same timesteps and noise before and after
        with torch.no_grad():
            return float(model(**batch).visual_loss)

    before, start = fixed_draw_loss(), model.queries.weight.detach().clone()
    torch.manual_seed(0)
    for _ in range(60):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    after = fixed_draw_loss()
    assert after < 0.7 * before, (before, after)
    assert not torch.equal(model.queries.weight, start)


def test_inference_is_unchanged_and_the_queries_round_trip(tiny_components, query_processor, tmp_path):
    """`generate` on a normal prompt never sees the queries: the same tokens as the model without them, after a
    save / reload (which restores the queries with `load_objective=True`), and after export to a plain LLaVA."""
    model = _model(tiny_components).train()
    batch = RossDataCollator(query_processor, 512)(_features(["c1", "q2"]))
    model(**batch).loss.backward()  # a trained-looking step: queries and all move
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param -= 0.5 * param.grad.sign() * 1e-2
    model.save_pretrained(tmp_path / "ross")
    query_processor.save_pretrained(tmp_path / "ross")

    prompt = query_processor.apply_chat_template(_question()[:1], add_generation_prompt=True, tokenize=False)
    inputs = query_processor(text=[prompt], images=[_image(4)], return_tensors="pt")
    kwargs = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6)
    reference = model.eval().generate(**inputs, **kwargs)

    reloaded = RossForConditionalGeneration.from_pretrained(tmp_path / "ross", load_objective=True)
    assert torch.equal(reloaded.queries.weight, model.queries.weight)
    processor = RossProcessor.from_pretrained(tmp_path / "ross")
    assert processor.query_token == "<query>" and processor.query_token_id == model.config.query_token_id
    inference, info = RossForConditionalGeneration.from_pretrained(tmp_path / "ross", output_loading_info=True)
    assert inference.queries is None and not info["missing_keys"]
    # The same inference weights in a model that never had queries.
    plain_config = RossConfig(**{**model.config.to_dict(), "objective_config": {"objective": "none"}})
    plain = RossForConditionalGeneration(plain_config)
    plain.load_state_dict({k: v for k, v in inference.state_dict().items()})
    for other in (reloaded.eval(), inference.eval(), plain.eval()):
        assert torch.equal(other.generate(**inputs, **kwargs), reference)
    with torch.no_grad():
        assert torch.equal(plain(**inputs).logits, model(**inputs).logits)

    report = export_llava(str(tmp_path / "ross"), tmp_path / "llava")
    assert "queries.weight" in report.dropped
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    assert torch.equal(llava.generate(**inputs, **kwargs), reference)


def test_reconstruct_creates_from_a_creation_prompt(tiny_components, query_processor):
    model = _model(tiny_components).eval()
    batch = RossDataCollator(query_processor, 512)(_features(["c1", "c2"]))
    images = model.reconstruct(None, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               num_inference_steps=2, output_type="pt")  # fmt: skip
    side = model.config.grid_size * 16  # the teacher VAE's input size
    assert images.shape == (2, 3, side, side) and images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="creation prompt"):
        model.reconstruct(query_processor.preprocess_targets([_image(1)]))
    with pytest.raises(ValueError, match="creates images from captions"):
        check_model(model)  # the reconstruction preview of input images


def test_trainer_counts_creation_targets(tiny_components, query_processor):
    model = _model(tiny_components)
    batch = RossDataCollator(query_processor, 512)(_features(["c1", "q2", "c3"]))
    assert _num_images(batch, model) == 2
    assert _num_images(batch, from_components(**tiny_components, **TINY_OBJECTIVE)) == 1
