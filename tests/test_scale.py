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


def _store_files(cache):
    (arrow,) = cache.glob("records-*.arrow")
    return arrow, arrow.with_suffix(".rows")


@pytest.mark.parametrize("name", ["data.json", "data.jsonl"])
def test_parallel_parse_writes_the_serial_store_row_by_row(tmp_path, monkeypatch, name):
    """Records parsed by 2 processes in chunks of 3 give the store of one process: the same key (file name), the same
    Arrow rows (reasons, details, `changed`) and the same rows file, byte for byte; bad records keep their reasons."""
    import pyarrow as pa

    import ross.train.records as records_module

    records = _varied_records(tmp_path, n=23)
    records[4]["conversations"] = [{"from": "human", "value": "no answer"}]  # no_assistant_turn
    records[7]["image"] = ["images/missing.png"] * len(records[7].get("image", ["x"]))  # missing_image
    records[11]["conversations"].insert(0, {"from": "gpt", "value": "hello"})  # changed: dropped_leading_gpt_turn
    records[16] = ["not", "a", "record"]  # invalid_record
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records) if name.endswith("l") else json.dumps(records))
    monkeypatch.setattr(records_module, "BATCH", 3)  # 8 chunks
    stores = {}
    for num_proc in (1, 2):
        cache = tmp_path / f"cache{num_proc}"
        dataset = load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.5, cache_dir=cache,
                                        num_proc=num_proc)  # fmt: skip
        assert records_module.LAST_BUILD["num_proc"] == num_proc
        stores[num_proc] = (dataset, *_store_files(cache))
    (one, arrow1, rows1), (two, arrow2, rows2) = stores[1], stores[2]
    assert arrow1.name == arrow2.name  # the store key does not depend on num_proc
    with pa.memory_map(str(arrow1)) as f1, pa.memory_map(str(arrow2)) as f2:
        table1, table2 = pa.ipc.open_stream(f1).read_all(), pa.ipc.open_stream(f2).read_all()
    assert table1.num_rows == len(records) and table1.equals(table2)
    assert rows1.read_bytes() == rows2.read_bytes()
    assert one.skipped == two.skipped == {"no_assistant_turn": 1, "missing_image": 1, "invalid_record": 1}
    assert one.sources[0].changes == two.sources[0].changes == {"dropped_leading_gpt_turn": 1}
    reasons = table1.column("reason").to_pylist()
    assert [reasons[k] for k in (4, 7, 16)] == ["no_assistant_turn", "missing_image", "invalid_record"]
    for index in range(len(one)):
        a, b = one[index], two[index]
        assert (a["id"], a["source"], a["messages"], len(a["images"])) == (b["id"], b["source"], b["messages"],
                                                                          len(b["images"]))
    # A second start with either setting opens the same store: nothing parsed.
    load_training_dataset(path, on_bad_sample="skip", max_bad_fraction=0.5, cache_dir=tmp_path / "cache1", num_proc=2)
    assert records_module.LAST_BUILD == {}


def test_parse_error_in_a_parsing_process_is_raised_in_the_caller(tmp_path, monkeypatch):
    import ross.train.records as records_module
    import ross.train.sources as sources_module

    path = tmp_path / "data.json"
    path.write_text(json.dumps(_varied_records(tmp_path, n=9)))
    monkeypatch.setattr(records_module, "BATCH", 3)

    def broken(*args, **kwargs):
        raise KeyError("boom in a parsing process")

    monkeypatch.setattr(sources_module, "_check_against_images", broken)
    with pytest.raises(KeyError, match="boom in a parsing process"):
        load_training_dataset(path, cache_dir=tmp_path / "cache", num_proc=2)
    assert not list((tmp_path / "cache").glob("records-*"))  # no half store left


def test_fetch_reads_rows_without_a_memory_map_and_a_fork_opens_its_own_file(varied_json, tmp_path):
    """A fetch reads its row with `pread`: the rows file is never mapped (its pages are not counted in the process's
    memory), and a forked process (a DataLoader worker) reads through a file handle of its own."""
    import os

    dataset = load_training_dataset(varied_json, cache_dir=tmp_path / "cache")
    _, rows_path = _store_files(tmp_path / "cache")
    items = [dataset[i] for i in range(len(dataset))]
    maps = open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else ""
    assert str(rows_path) not in maps
    rows = dataset.sources[0].rows
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own handle, the same rows
        ok = rows._pid != os.getpid() and [dataset[i]["messages"] for i in range(len(dataset))] == [
            item["messages"] for item in items] and rows._pid == os.getpid() and rows._fd is not None
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert rows._pid == os.getpid()


def test_parallel_parse_of_a_datasets_source_writes_the_serial_store(tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa

    import ross.train.records as records_module

    (tmp_path / "images").mkdir()
    _png(tmp_path / "images", "x.png", 0)
    good = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    no_answer = good[:1]
    messages = [no_answer if k % 5 == 2 else good for k in range(11)]
    images = [["images/missing.png"] if k == 8 else ["images/x.png"] for k in range(11)]
    hf = datasets.Dataset.from_dict({"id": [f"h{k}" for k in range(11)], "messages": messages, "images": images})
    monkeypatch.setattr(records_module, "BATCH", 3)
    stores = []
    for num_proc in (1, 2):
        cache = tmp_path / f"cache{num_proc}"
        dataset = load_training_dataset(hf, image_folder=tmp_path, on_bad_sample="skip", max_bad_fraction=0.9,
                                        cache_dir=cache, num_proc=num_proc)  # fmt: skip
        assert records_module.LAST_BUILD["num_proc"] == num_proc
        arrow, rows = _store_files(cache)
        with pa.memory_map(str(arrow)) as f:
            stores.append((dataset, arrow.name, pa.ipc.open_stream(f).read_all(), rows.read_bytes()))
    (one, name1, table1, rows1), (two, name2, table2, rows2) = stores
    assert name1 == name2 and table1.equals(table2) and rows1 == rows2
    assert one.skipped == two.skipped == {"no_assistant_turn": 2, "missing_image": 1}
    assert [one[i]["id"] for i in range(len(one))] == [two[i]["id"] for i in range(len(two))] == [
        f"h{k}" for k in range(11) if k % 5 != 2 and k != 8]
