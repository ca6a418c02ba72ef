"""Training data: sources, label masking, image order, bad-data handling, samplers."""

import copy
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.trainer_pt_utils import get_length_grouped_indices

import ross.train.sources
from ross.train.collator import IGNORE_INDEX, RossDataCollator
from ross.train.dataset import load_training_dataset, skipped_summary
from ross.train.samplers import LengthGroupedSampler, ModalityLengthGroupedSampler
from ross.train.synthetic import write_llava_dataset

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions."
)


def _png(folder, name, seed, size=(40, 28)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    return name


def _records(folder):
    """Samples with 0, 1 and 2 images, one multi-turn; images written under folder/images/."""
    (folder / "images").mkdir(exist_ok=True)
    img = {k: "images/" + _png(folder / "images", f"{k}.png", seed) for k, seed in (("a", 1), ("b", 2), ("c", 3))}
    return [
        {"id": "text", "conversations": [{"from": "human", "value": "What is two plus two?"},
                                         {"from": "gpt", "value": "four"}]},
        {"id": "one", "image": img["a"], "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "How many are there?"}, {"from": "gpt", "value": "two"}]},
        {"id": "two", "image": [img["b"], img["c"]], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nHow many squares?"}, {"from": "gpt", "value": "three"}]},
    ]


def _write(folder, records, name="data.json"):
    path = folder / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


@pytest.fixture()
def llava_json(tmp_path):
    return _write(tmp_path, _records(tmp_path))


def _supervised(processor, input_ids, labels):
    """Decoded runs of supervised tokens of one row."""
    runs, current = [], []
    for token, label in zip(input_ids.tolist(), labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(processor.tokenizer.decode(current))
            current = []
    if current:
        runs.append(processor.tokenizer.decode(current))
    return runs


def _expected_labels(processor, input_ids, answers):
    """Independent labels: the template places each answer right after 'ASSISTANT:'; find it token by token."""
    tokenizer = processor.tokenizer
    expected = torch.full_like(input_ids, IGNORE_INDEX)
    position = 0
    ids = input_ids.tolist()
    for answer in answers:
        target = tokenizer(" " + answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        while ids[position : position + len(target)] != target:
            position += 1
            assert position < len(ids), f"answer {answer!r} not found"
        expected[position : position + len(target)] = input_ids[position : position + len(target)]
        position += len(target)
    return expected


# ----------------------------------------------------------------------------- items and masking
def test_items_follow_hf_chat_format(llava_json, tiny_processor):
    dataset = load_training_dataset(llava_json, image_seq_length=tiny_processor.image_seq_length)
    assert len(dataset) == 3
    item = dataset[2]
    assert item["id"] == "two" and item["source"] == f"{llava_json}:#2"
    assert item["messages"] == [
        {"role": "user", "content": [
            {"type": "image"}, {"type": "image"}, {"type": "text", "text": "How many squares?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "three"}]},
    ]
    assert [im.mode for im in item["images"]] == ["RGB", "RGB"]
    assert np.array_equal(np.asarray(item["images"][0]), np.asarray(Image.open(llava_json.parent / "images/b.png")))
    assert dataset[0]["images"] == [] and dataset.num_images == [0, 1, 2]


def test_records_are_parsed_once_at_load(llava_json, monkeypatch):
    dataset = load_training_dataset(llava_json)
    reference = [dataset[i] for i in range(3)]

    def parse_again(*args, **kwargs):
        raise AssertionError("a record was parsed again at fetch time")

    for name in ("llava_to_messages", "_normalize_messages", "_content_items", "_check_against_images"):
        monkeypatch.setattr(ross.train.sources, name, parse_again)
    items = [dataset[i] for i in range(3)]  # fetching only reads and decodes the images
    assert [item["messages"] for item in items] == [item["messages"] for item in reference]
    items[1]["messages"][0]["content"].clear()  # a caller's edit does not reach the parsed sample
    assert dataset[1]["messages"] == reference[1]["messages"]


def test_placeholder_position_and_llava_prepend(tmp_path):
    _png(tmp_path, "x.png", 0)
    records = [
        {"id": "middle", "image": "x.png", "conversations": [
            {"from": "human", "value": "Look: <image> what is it?"}, {"from": "gpt", "value": "a box"}]},
        {"id": "none", "image": "x.png", "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "a box"}]},
    ]
    path = _write(tmp_path, records, "d.jsonl")
    inplace = load_training_dataset(path, image_placement="inplace")
    assert inplace[0]["messages"][0]["content"] == [
        {"type": "text", "text": "Look: "}, {"type": "image"}, {"type": "text", "text": " what is it?"}]
    # Default: the authors' preprocess_multimodal, "<image>\n" + value.replace("<image>", "").strip().
    dataset = load_training_dataset(path)
    authors = "Look: <image> what is it?".replace("<image>", "").strip()
    assert dataset[0]["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": authors}]
    messages = dataset[1]["messages"]
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert messages[1]["content"] == [{"type": "image"}, {"type": "text", "text": "What is it?"}]
    assert dataset[1]["source"] == f"{tmp_path / 'd.jsonl'}:2"  # JSONL: 1-based line number


def test_image_placement_front_moves_single_images_and_keeps_interleaved_turns(tmp_path, tiny_processor):
    for name, seed in (("x.png", 0), ("y.png", 1)):
        _png(tmp_path, name, seed)
    records = [
        {"id": "after", "image": "x.png", "conversations": [
            {"from": "human", "value": "What colour is the square?\n<image>"}, {"from": "gpt", "value": "red"}]},
        {"id": "two", "image": ["x.png", "y.png"], "conversations": [
            {"from": "human", "value": "Compare <image> with <image>."}, {"from": "gpt", "value": "same"}]},
        {"id": "list", "images": ["x.png"], "messages": [
            {"role": "user", "content": [{"type": "text", "text": " Which shape? "}, {"type": "image"}]},
            {"role": "assistant", "content": "a disc"}]},
    ]
    llava = load_training_dataset(_write(tmp_path, records[:2], "l.json"))
    assert llava[0]["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]
    assert llava[1]["messages"][0]["content"] == [  # two images: interleaved, kept in place
        {"type": "text", "text": "Compare "}, {"type": "image"}, {"type": "text", "text": " with "}, {"type": "image"},
        {"type": "text", "text": "."}]
    messages = load_training_dataset(_write(tmp_path, records[2:], "m.json"), format="messages")
    assert messages[0]["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "Which shape?"}]
    # Rendered, the question follows the image tokens, so the (causal) visual outputs do not see it.
    collator = RossDataCollator(tiny_processor, max_length=512)
    row = collator([llava[0]])["input_ids"][0].tolist()
    first_image = row.index(tiny_processor.image_token_id)
    question = tiny_processor.tokenizer("What colour", add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(row)) if row[i : i + len(question)] == question]
    assert starts and all(i > first_image + tiny_processor.image_seq_length - 1 for i in starts)
    with pytest.raises(ValueError, match="image_placement"):
        load_training_dataset(_write(tmp_path, records[:1], "e.json"), image_placement="end")


def test_labels_only_answers_and_end_of_turn(llava_json, tiny_processor):
    dataset = load_training_dataset(llava_json)
    collator = RossDataCollator(tiny_processor, max_length=512)
    assert collator.masking == "generation"
    batch = collator([dataset[i] for i in range(3)])
    n = tiny_processor.image_seq_length
    image_id = tiny_processor.image_token_id

    # Token by token against an independent construction.
    for row, answers in enumerate((["four"], ["red", "two"], ["three"])):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        assert torch.equal(labels, _expected_labels(tiny_processor, ids, answers).masked_fill(
            batch["attention_mask"][row] == 0, IGNORE_INDEX))
        assert _supervised(tiny_processor, ids, labels) == [f" {a}<|im_end|>" for a in answers]
        assert not (labels[ids == image_id] != IGNORE_INDEX).any()
        assert (labels[batch["attention_mask"][row] == 0] == IGNORE_INDEX).all()

    # The prompt is the Vicuna template: system prompt, USER:, expanded image tokens, ASSISTANT:.
    text = tiny_processor.tokenizer.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()])
    assert text == (f"{SYSTEM} USER: " + "<image>" * n + "\nWhat colour is the shape? ASSISTANT: red<|im_end|>"
                    "USER: How many are there? ASSISTANT: two<|im_end|>")
    # Right padding; image tokens counted per row.
    lengths = batch["attention_mask"].sum(-1)
    for row in range(3):
        mask = batch["attention_mask"][row]
        assert mask[: lengths[row]].all() and not mask[lengths[row] :].any()
        assert (batch["input_ids"][row, lengths[row]:] == tiny_processor.tokenizer.pad_token_id).all()
    assert (batch["input_ids"] == image_id).sum(-1).tolist() == [0, n, 2 * n]


def test_cached_encodings_give_the_same_batches_and_encode_each_sample_once(llava_json, tiny_processor, monkeypatch):
    """`cache_encodings`: over three epochs the batches equal the uncached collator's, each distinct sample is
    encoded once, a sample with other pixels (same text) is encoded anew, and a bad sample raises at every draw."""
    dataset = load_training_dataset(llava_json)
    features = [dataset[i] for i in range(3)]
    plain = RossDataCollator(tiny_processor, max_length=512)
    cached = RossDataCollator(tiny_processor, max_length=512, cache_encodings=True)
    calls = []
    encode = RossDataCollator._encode_any_length
    monkeypatch.setattr(RossDataCollator, "_encode_any_length",
                        lambda self, feature, **kw: calls.append(self is cached) or encode(self, feature, **kw))
    for epoch in range(3):
        order = [features[(i + epoch) % 3] for i in range(3)]
        reference, batch = plain(copy.deepcopy(order)), cached(copy.deepcopy(order))
        assert reference.keys() == batch.keys()
        assert all(torch.equal(reference[k], batch[k]) for k in reference)
    assert calls.count(True) == 3 and calls.count(False) == 9
    with_image = next(f for f in features if f["images"])
    other = copy.deepcopy(with_image)
    other["images"] = [Image.new("RGB", image.size, (1, 2, 3)) for image in other["images"]]
    assert not torch.equal(cached([other])["pixel_values"], cached([with_image])["pixel_values"])
    assert calls.count(True) == 4
    short = RossDataCollator(tiny_processor, max_length=8, cache_encodings=True)
    for _ in range(2):
        with pytest.raises(ValueError, match="too_long|max_length"):
            short([features[0]])


def test_prefix_fallback_matches_generation_markers(llava_json, tiny_processor):
    dataset = load_training_dataset(llava_json)
    features = [dataset[i] for i in range(3)]
    reference = RossDataCollator(tiny_processor, max_length=512)(features)

    no_markers = copy.copy(tiny_processor)
    no_markers.chat_template = tiny_processor.chat_template.replace("{%- generation -%}", "").replace(
        "{%- endgeneration -%}", "")
    assert "generation -%}" not in no_markers.chat_template
    fallback = RossDataCollator(no_markers, max_length=512)
    assert fallback.masking == "prefix"
    batch = fallback(features)
    for key in reference:
        assert torch.equal(batch[key], reference[key]), key


def test_plain_format_supervises_caption_only(tmp_path, tiny_processor):
    _png(tmp_path, "x.png", 0)
    records = [{"id": "cap", "image": "x.png", "conversations": [
        {"from": "human", "value": "Describe the image briefly.\n<image>"}, {"from": "gpt", "value": "a red circle"}]}]
    dataset = load_training_dataset(_write(tmp_path, records))
    batch = RossDataCollator(tiny_processor, max_length=512, format="plain")([dataset[0]])
    n = tiny_processor.image_seq_length
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert tiny_processor.tokenizer.decode(ids) == "<image>" * n + "a red circle<|im_end|>"
    assert (labels[:n] == IGNORE_INDEX).all() and torch.equal(labels[n:], ids[n:])
    assert _supervised(tiny_processor, ids, labels) == ["a red circle<|im_end|>"]
    assert batch["pixel_values"].shape[0] == 1


def test_pixel_values_row_major_across_mixed_batch(tmp_path, tiny_processor):
    records = _records(tmp_path)
    # order: two images, text-only, one image
    dataset = load_training_dataset(_write(tmp_path, [records[2], records[0], records[1]]))
    batch = RossDataCollator(tiny_processor, max_length=512)([dataset[i] for i in range(3)])
    # Reference: each image alone through the processor (which pads to a square, then resizes).
    singles = [tiny_processor(text=["<image>"], images=[Image.open(tmp_path / f"images/{k}.png")],
                              return_tensors="pt")["pixel_values"][0] for k in "bca"]
    assert batch["pixel_values"].shape == (3, *singles[0].shape)
    for k in range(3):
        torch.testing.assert_close(batch["pixel_values"][k], singles[k])
    assert not torch.equal(singles[0], singles[1])

    text_only = RossDataCollator(tiny_processor, max_length=512)([dataset[1]])
    assert "pixel_values" not in text_only and set(text_only) == {"input_ids", "attention_mask", "labels"}


def test_multiple_sources_are_mixed_in_order(tmp_path, tiny_processor):
    records = _records(tmp_path)
    first = _write(tmp_path, records[:2], "first.json")
    # The same two-image sample in messages format (JSONL, images as paths relative to the file).
    second = _write(tmp_path, [{"id": "two", "images": records[2]["image"], "messages": [
        {"role": "user", "content": [
            {"type": "image"}, {"type": "image"}, {"type": "text", "text": "How many squares?"}]},
        {"role": "assistant", "content": "three"}]}], "second.jsonl")
    mixed = load_training_dataset([first, second], image_seq_length=4)
    assert [mixed[i]["id"] for i in range(3)] == ["text", "one", "two"]
    assert mixed[2]["source"] == f"{second}:1"
    reference = load_training_dataset(_write(tmp_path, records, "all.json"), image_seq_length=4)
    assert mixed.lengths == reference.lengths
    collator = RossDataCollator(tiny_processor, max_length=512)
    a, b = collator([mixed[i] for i in range(3)]), collator([reference[i] for i in range(3)])
    assert all(torch.equal(a[key], b[key]) for key in a) and a.keys() == b.keys()


def test_synthetic_generator_output_trains(tmp_path, tiny_processor):
    n = tiny_processor.image_seq_length
    for stage, format in (("sft", "chat"), ("plain", "plain")):
        path = write_llava_dataset(str(tmp_path / stage), num_images=4, seed=0, stage=stage)
        dataset = load_training_dataset(path, image_seq_length=n)
        collator = RossDataCollator(tiny_processor, max_length=1024, format=format)
        batch = collator([dataset[i] for i in range(len(dataset))])
        images = torch.tensor(dataset.num_images)
        assert images.sum() == 4 and batch["pixel_values"].shape[0] == 4
        assert torch.equal((batch["input_ids"] == tiny_processor.image_token_id).sum(-1), images * n)
        assert ((batch["labels"] != IGNORE_INDEX).sum(-1) > 0).all()


def test_hf_messages_dataset_gives_same_batch_as_llava_json(tmp_path, llava_json, tiny_processor):
    import datasets

    records = json.loads(llava_json.read_text())
    rows = {"id": [], "messages": [], "images": []}
    for record in records:
        paths = record.get("image", [])
        paths = [paths] if isinstance(paths, str) else paths
        messages = []
        for turn in record["conversations"]:
            content = []
            for k, piece in enumerate(turn["value"].split("<image>")):
                if k:
                    content.append({"type": "image", "text": None})
                    piece = piece.removeprefix("\n")
                if piece:
                    content.append({"type": "text", "text": piece})
            messages.append({"role": {"human": "user", "gpt": "assistant"}[turn["from"]], "content": content})
        rows["id"].append(record["id"])
        rows["messages"].append(messages)
        rows["images"].append([Image.open(llava_json.parent / p) for p in paths])
    features = datasets.Features({
        "id": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(
            {"type": datasets.Value("string"), "text": datasets.Value("string")})}),
        "images": datasets.List(datasets.Image()),
    })
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "hf")

    collator = RossDataCollator(tiny_processor, max_length=512)
    from_json = load_training_dataset(llava_json, image_seq_length=16)
    from_hf = load_training_dataset(tmp_path / "hf", image_seq_length=16)
    assert from_hf[1]["id"] == "one" and from_hf[1]["source"] == f"{tmp_path / 'hf'}:#1"
    assert from_hf.lengths == from_json.lengths and from_hf.modality_lengths == from_json.modality_lengths
    a = collator([from_json[i] for i in range(3)])
    b = collator([from_hf[i] for i in range(3)])
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- bad data
def _bad_record(kind, folder):
    if kind == "missing_image":
        return {"id": "bad", "image": "images/nope.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]}
    if kind == "no_assistant_turn":
        return {"id": "bad", "conversations": [{"from": "human", "value": "Hello?"}]}
    if kind == "image_count_mismatch":
        return {"id": "bad", "image": "images/a.png", "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhat?"}, {"from": "gpt", "value": "red"}]}
    if kind == "invalid_record":
        return {"id": "bad", "conversations": [{"from": "robot", "value": "beep"}, {"from": "gpt", "value": "x"}]}
    if kind in ("corrupt_image", "truncated_image"):
        data = (folder / "images/a.png").read_bytes()
        broken = data[: len(data) // 2] if kind == "truncated_image" else b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
        (folder / "images/broken.png").write_bytes(broken)
        return {"id": "bad", "image": "images/broken.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]}
    raise AssertionError(kind)


LOAD_TIME = ["missing_image", "no_assistant_turn", "image_count_mismatch", "invalid_record"]


@pytest.mark.parametrize("kind", LOAD_TIME)
def test_bad_samples_found_at_load_time(tmp_path, kind):
    records = _records(tmp_path)
    path = _write(tmp_path, records[:2] + [_bad_record(kind, tmp_path)] + records[2:])
    with pytest.raises(ValueError, match=kind) as info:
        load_training_dataset(path)
    assert "'bad'" in str(info.value) and f"{path}:#2" in str(info.value)

    dataset = load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.5)
    assert [dataset[i]["id"] for i in range(len(dataset))] == ["text", "one", "two"]
    assert dataset.skipped == {kind: 1}


@pytest.mark.parametrize("kind", ["corrupt_image", "truncated_image"])
def test_undecodable_image_found_when_loaded(tmp_path, kind):
    records = _records(tmp_path)
    path = _write(tmp_path, records[:1] + [_bad_record(kind, tmp_path)] + records[1:], "d.jsonl")
    dataset = load_training_dataset(path)  # the file exists: only decoding can tell
    assert len(dataset) == 4
    with pytest.raises(ValueError, match="corrupt_image") as info:
        dataset[1]
    assert "'bad'" in str(info.value) and f"{path}:2" in str(info.value)

    dataset = load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.5)
    assert dataset[1] is None  # dropped from its batch by the collator; no other sample stands in
    assert [dataset[i]["id"] for i in (0, 2, 3)] == ["text", "one", "two"]
    assert dataset.skipped == {"corrupt_image": 1}
    assert dataset[1] is None  # counted once per sample, not per access
    assert dataset.skipped == {"corrupt_image": 1}


def test_skip_counts_come_back_from_dataloader_workers(tmp_path, tiny_processor):
    records = _records(tmp_path)
    bad = [_bad_record("corrupt_image", tmp_path), _bad_record("missing_image", tmp_path)]
    path = _write(tmp_path, records + bad)
    dataset = load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.5)
    collator = RossDataCollator(tiny_processor, max_length=512, on_bad_sample="skip")
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collator)
    rows = sum(batch["input_ids"].shape[0] for batch in loader)
    assert rows == len(dataset) - 1 == 3  # the corrupt one is dropped (the missing one never entered)
    assert skipped_summary(dataset, collator) == {"missing_image": 1, "corrupt_image": 1}


def test_too_long_sample_is_never_truncated(llava_json, tiny_processor, caplog):
    dataset = load_training_dataset(llava_json)
    features = [dataset[i] for i in range(3)]
    full = RossDataCollator(tiny_processor, max_length=512)(features)
    lengths = full["attention_mask"].sum(-1).tolist()
    limit = lengths[2] - 1  # the two-image sample is 1 token too long; the others fit
    assert lengths[0] <= limit and lengths[1] <= limit

    with pytest.raises(ValueError, match="too_long") as info:
        RossDataCollator(tiny_processor, max_length=limit)(features)
    assert "'two'" in str(info.value) and str(llava_json) in str(info.value)

    collator = RossDataCollator(tiny_processor, max_length=limit, on_bad_sample="skip")
    with caplog.at_level(logging.WARNING, logger="ross.train.collator"):
        batch = collator(features)
    assert "'two'" in caplog.text
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 1
    width = batch["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"], full["input_ids"][:2, :width])
    n = tiny_processor.image_seq_length
    assert (batch["input_ids"] == tiny_processor.image_token_id).sum(-1).tolist() == [0, n]  # whole images only
    assert collator.skipped == {"too_long": 1}

    text_limit = lengths[0] - 1  # a text-only sample is not truncated either
    with pytest.raises(ValueError, match="'text'"):
        RossDataCollator(tiny_processor, max_length=text_limit)(features[:1])
    # A batch with nothing left is a one-token placeholder the trainer trains at zero weight, not an error.
    placeholder = RossDataCollator(tiny_processor, max_length=text_limit, on_bad_sample="skip")(features[:1])
    assert placeholder["ross_empty_batch"].item() and (placeholder["labels"] == -100).all()
    assert placeholder["input_ids"].shape == (1, 1) and "pixel_values" not in placeholder


# ----------------------------------------------------------------------------- samplers
def _chunks(order, size):
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_length_grouped_sampler_is_a_deterministic_permutation():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, 203).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=3, mega_batch_mult=5)
    order = list(sampler)
    assert sorted(order) == list(range(203)) and len(sampler) == 203
    assert order == list(LengthGroupedSampler(lengths, batch_size=4, seed=3, mega_batch_mult=5))
    assert lengths[order[0]] == max(lengths)  # longest first
    # transformers' get_length_grouped_indices, seeded with seed + epoch: mega-batches of 5 * 4 sorted longest first,
    # then the longest sample swapped with the first mega-batch's head, so at most one other mega-batch has its head
    # out of order (every mega-batch after its head is sorted).
    assert order == get_length_grouped_indices(lengths, 4, 5, torch.Generator().manual_seed(3))
    megabatches = [[lengths[i] for i in megabatch] for megabatch in _chunks(order, 20)]
    assert megabatches[0] == sorted(megabatches[0], reverse=True)
    assert all(m[1:] == sorted(m[1:], reverse=True) for m in megabatches)
    assert sum(m != sorted(m, reverse=True) for m in megabatches) <= 1
    sampler.set_epoch(1)
    other = list(sampler)
    assert other != order and sorted(other) == list(range(203))
    assert list(LengthGroupedSampler(lengths, batch_size=4, seed=4, mega_batch_mult=5)) != order


def test_modality_sampler_batches_are_single_modality(tmp_path):
    rng = np.random.default_rng(1)
    lengths = [int(v) * (1 if rng.random() < 0.7 else -1) for v in rng.integers(1, 500, 150)]
    for seed in range(3):
        sampler = ModalityLengthGroupedSampler(lengths, batch_size=8, seed=seed)
        order = list(sampler)
        assert sorted(order) == list(range(150))
        batches = _chunks(order, 8)
        mixed = [k for k, b in enumerate(batches) if len({lengths[i] > 0 for i in b}) > 1]
        assert len(mixed) <= 1 and all(k >= len(batches) - 2 for k in mixed)  # only the tail may mix
        assert all(len(b) == 8 for b in batches[:-1])
        assert order == list(ModalityLengthGroupedSampler(lengths, batch_size=8, seed=seed))


def test_dataset_lengths_feed_the_samplers(llava_json):
    dataset = load_training_dataset(llava_json, image_seq_length=16)
    lengths, modality = dataset.lengths, dataset.modality_lengths
    # ceil(text characters / 4) + images * 16: (21 + 4) chars; (25 + 3 + 19 + 3) + 1 image; (17 + 5) + 2 images
    assert lengths == [7, 13 + 16, 6 + 32]
    assert [m > 0 for m in modality] == [False, True, True] and [abs(m) for m in modality] == lengths
    order = list(ModalityLengthGroupedSampler(modality, batch_size=2, seed=0))
    assert sorted(order) == [0, 1, 2] and {order[0], order[1]} == {1, 2}  # the image pair is the full batch
    with pytest.raises(ValueError, match="image_seq_length"):
        load_training_dataset(llava_json).lengths


def test_hf_dataset_with_image_paths_checked_at_load(tmp_path):
    import datasets

    _png(tmp_path, "x.png", 0)
    message = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    hf = datasets.Dataset.from_dict({"id": ["ok", "gone"], "messages": [message, message],
                                     "images": [["x.png"], ["missing.png"]]})
    with pytest.raises(ValueError, match="missing_image") as info:
        load_training_dataset(hf, image_folder=tmp_path)
    assert "'gone'" in str(info.value) and "datasets.Dataset[0]:#1" in str(info.value)
    dataset = load_training_dataset(hf, image_folder=tmp_path, on_bad_sample="skip", max_bad_fraction=0.5)
    assert len(dataset) == 1 and dataset[0]["id"] == "ok" and dataset[0]["images"][0].size == (40, 28)
    assert dataset.skipped == {"missing_image": 1}
