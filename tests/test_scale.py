"""Training at scale: exact fast lengths, the collator's batches, sharded length pre-pass, Arrow-backed records."""

import copy
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from ross.train.collator import RossDataCollator
from ross.train.dataset import load_training_dataset


WORDS = "the a red blue square circle left right how many is there what colour shape image of and , . ? 12 é 中文".split()


def _png(folder, name, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20 + seed % 13, 16 + seed % 7, 3), dtype=np.uint8)).save(folder / name)
    return name


def _text(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _varied_records(folder, n=40, seed=0):
    """LLaVA records with 0-3 images, 1-4 rounds, placeholders first / inline, unicode, whitespace and a system turn."""
    rng = random.Random(seed)
    (folder / "images").mkdir(exist_ok=True)
    names = [_png(folder / "images", f"{k}.png", k) for k in range(4)]
    records = []
    for k in range(n):
        num_images = [0, 1, 1, 2, 3][k % 5]
        turns = []
        if k % 7 == 3:
            turns.append({"from": "system", "value": "Answer briefly. " + _text(rng, 5)})
        for r in range(1 + k % 4):
            question = _text(rng, rng.randint(1, 30))
            if r == 0 and num_images:
                question = ("<image>\n" * num_images + question) if k % 2 else (question + " <image>" * num_images)
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": "  " + _text(rng, rng.randint(1, 40))}]
        record = {"id": f"r{k}", "conversations": turns}
        if num_images:
            record["image"] = [f"images/{names[(k + i) % 4]}" for i in range(num_images)]
        records.append(record)
    return records


@pytest.fixture()
def varied_json(tmp_path):
    path = tmp_path / "varied.json"
    path.write_text(json.dumps(_varied_records(tmp_path)))
    return path


@pytest.mark.parametrize("masking", ["generation", "prefix"])
def test_sample_length_equals_the_collators_count(varied_json, tiny_processor, masking):
    """The pre-pass's count (no pixels, one token per placeholder + the known image tokens) is exactly the number of
    tokens the collator makes of each sample, with both masking paths."""
    dataset = load_training_dataset(varied_json, image_seq_length=tiny_processor.image_seq_length)
    collator = RossDataCollator(tiny_processor, max_length=100_000, masking=masking)
    for index in range(len(dataset)):
        item = dataset[index]
        expected = len(collator._encode(item)["input_ids"])
        assert collator.sample_length(copy.deepcopy(item["messages"]), len(item["images"])) == expected, item["id"]


def test_sample_length_plain_format_and_errors(varied_json, tiny_processor):
    dataset = load_training_dataset(varied_json, image_seq_length=tiny_processor.image_seq_length)
    collator = RossDataCollator(tiny_processor, max_length=100_000, format="plain", on_bad_sample="skip")
    for index in range(len(dataset)):
        item = dataset[index]
        try:
            expected = len(collator._encode(item)["input_ids"])
        except ValueError as error:  # multi-turn: not a caption sample, the same error both ways
            with pytest.raises(type(error), match="plain format needs exactly one caption turn"):
                collator.sample_length(item["messages"], len(item["images"]))
            continue
        assert collator.sample_length(item["messages"], len(item["images"])) == expected
    # A literal image token in the text (not an image item) is refused by both, with the same message.
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "see <image> here"}]}]
    chat = RossDataCollator(tiny_processor, max_length=100_000)
    with pytest.raises(ValueError) as encoded:
        chat._encode({"messages": messages, "images": []})
    with pytest.raises(ValueError) as counted:
        chat.sample_length(messages, 0)
    assert str(counted.value) == str(encoded.value)


def _batch_with_tensors(collator, features):
    """The collator's batch as it was built before (processor outputs as tensors, offsets walked as tensors)."""
    from ross.train import collator as module

    encoded = []
    for feature in features:
        images = feature["images"]
        out = collator.processor.apply_chat_template(
            [feature["messages"]], tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
            return_tensors="pt", processor_kwargs={"images": [images]} if images else {},
        )
        ids = out["input_ids"][0]
        labels = ids.masked_fill(~out["assistant_masks"][0].bool() | (ids == collator.image_token_id),
                                 module.IGNORE_INDEX)
        encoded.append({"input_ids": ids, "labels": labels, "pixel_values": out.get("pixel_values")})
    batch = collator._pad(encoded)
    pixels = [e["pixel_values"] for e in encoded if e["pixel_values"] is not None]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
    return batch


def test_collator_batches_unchanged_without_tensor_outputs(varied_json, tiny_processor):
    dataset = load_training_dataset(varied_json, image_seq_length=tiny_processor.image_seq_length)
    collator = RossDataCollator(tiny_processor, max_length=100_000)
    for start in range(0, 20, 5):
        features = [dataset[i] for i in range(start, start + 5)]
        batch, reference = collator(copy.deepcopy(features)), _batch_with_tensors(collator, features)
        assert batch.keys() == reference.keys()
        for key in reference:
            assert batch[key].dtype == reference[key].dtype, key
            assert torch.equal(batch[key], reference[key]), key


def test_length_prepass_sharded_over_two_ranks_outlives_a_short_timeout(varied_json, tiny_components, tmp_path):
    """2 gloo ranks, process-group timeout 3 s, rank 1 measuring its half for about 4 s: each rank measures only its
    share, both end with every length (equal to one process's), and no rank dies at the gather."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from modeling_ross import RossProcessor
    from ross.train.lengths import check_lengths

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(__file__).with_name("lengths_two_ranks.py")
    out = tmp_path / "out"
    out.mkdir()
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), str(script), str(varied_json), str(tiny_components["vision_model"]),
               str(tiny_components["language_model"]), str(cache), str(out), "3", "0.2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]

    processor = RossProcessor.from_components(tiny_components["vision_model"], tiny_components["language_model"])
    dataset = load_training_dataset(varied_json, image_seq_length=processor.image_seq_length)
    reference = check_lengths(dataset, RossDataCollator(processor, max_length=100_000), cache_dir=tmp_path / "one")
    assert ranks[0]["lengths"] == ranks[1]["lengths"] == reference
    assert ranks[0]["measured"] + ranks[1]["measured"] == len(reference)  # each rank measured its share only
    assert ranks[0]["measured"] == len(reference) // 2
    assert len(list(cache.glob("lengths-*.json"))) == 1  # one writer


def test_records_stored_once_and_reused_with_the_same_named_errors(tmp_path, monkeypatch, caplog):
    """The first load parses into the Arrow store; a second load parses nothing (the parse functions fail if called)
    and gives the same samples, skip counts and named errors; a deleted image is still found at load."""
    import ross.train.sources
    from ross.train.sources import BadSampleError

    records = _varied_records(tmp_path, n=12)
    records[3]["conversations"] = [{"from": "human", "value": "no answer"}]  # no_assistant_turn
    records[5]["image"] = ["images/missing.png"] * len(records[5].get("image", ["x"]))  # missing_image
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    cache = tmp_path / "cache"
    first = load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.5, cache_dir=cache)
    assert first.skipped == {"no_assistant_turn": 1, "missing_image": 1} and len(first) == 10
    assert len(list(cache.glob("records-*.arrow"))) == 1
    with pytest.raises(BadSampleError, match=r"id='r3' \(.*data.json:#3\) \[no_assistant_turn\]"):
        load_training_dataset(path, cache_dir=cache)

    def parse_again(*args, **kwargs):
        raise AssertionError("parsed again")

    for name in ("llava_to_messages", "_normalize_messages", "_check_against_images", "_read_json_records"):
        monkeypatch.setattr(ross.train.sources, name, parse_again)
    second = load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.5, cache_dir=cache)
    assert second.skipped == first.skipped and len(second) == len(first)
    for index in range(len(first)):
        a, b = first[index], second[index]
        assert (a["id"], a["source"], a["messages"], len(a["images"])) == (b["id"], b["source"], b["messages"],
                                                                          len(b["images"]))
    with pytest.raises(BadSampleError, match=r"id='r3' .*\[no_assistant_turn\]"):
        load_training_dataset(path, cache_dir=cache)
    # An image deleted since the store was built: found at load again, named.
    (tmp_path / "images" / "0.png").unlink()
    third = load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.9, cache_dir=cache)
    assert third.skipped["missing_image"] > 1 and len(third) < len(first)
    # Per sample the dataset holds numpy arrays, not Python objects.
    assert all(isinstance(getattr(second, name), np.ndarray)
               for name in ("_source_of", "_local", "_num_images", "_text_chars"))


def test_length_prepass_in_forked_processes_equals_one_process(varied_json, tiny_processor, tmp_path, monkeypatch):
    import ross.train.lengths as lengths_module
    from ross.train.lengths import check_lengths

    collator = RossDataCollator(tiny_processor, max_length=100_000)
    one = check_lengths(load_training_dataset(varied_json), collator, cache_dir=tmp_path / "one", num_proc=1)
    monkeypatch.setattr(lengths_module, "CHUNK", 3)  # many tasks for 2 processes
    two = check_lengths(load_training_dataset(varied_json), collator, cache_dir=tmp_path / "two", num_proc=2)
    assert one == two and all(isinstance(n, int) and n > 0 for n in one)
