"""The length pre-pass for native VLMs (`NativeVlmDataCollator.sample_length`, `RossDataset.image_sizes`,
`train/lengths.py`, `train/sft.py`): each sample's count equals the collator's own `input_ids` length on every
supported architecture, from the image files' headers; a too-long sample stops `sft.py` before step 1."""

import json

import pytest
from PIL import Image

from modeling_ross.testing import (
    tiny_gemma3,
    tiny_idefics3,
    tiny_llava,
    tiny_llava_onevision,
    tiny_qwen3_vl,
    tiny_qwen25_vl,
    tiny_smolvlm,
)
from ross.train.dataset import load_training_dataset
from ross.train.lengths import check_lengths, lengths_key
from ross.train.native_collator import NativeVlmDataCollator
from ross.train.sources import BadSampleError, image_size
from tests.native_sft import random_image, save_base, sft_argv, write_native_data


EXIF_ORIENTATION = 0x0112
# (file, stored (height, width), EXIF orientation): the last is stored sideways and loads as 84 x 56 (upright).
IMAGES = [("a.png", (56, 84), 1), ("b.png", (84, 56), 1), ("c.png", (30, 200), 1), ("d.png", (300, 420), 1),
          ("e.jpg", (56, 84), 6)]  # fmt: skip


def write_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for k, (name, (height, width), orientation) in enumerate(IMAGES):
        image = random_image(height, width, k)
        if orientation != 1:
            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = orientation
            image.save(folder / name, exif=exif.tobytes(), quality=95)
        else:
            image.save(folder / name)
    return folder


def write_records(root, fmt: str):
    """Varied records: each image size alone, the sideways JPEG, two and three images, text-only, multi-turn with an
    image, in LLaVA JSON or HF messages JSONL."""
    samples = [  # (id, images, turns: [(question, answer)])
        ("a", ["a.png"], [("What colour is it?", "red")]),
        ("b", ["b.png"], [("Describe it.", "A tall\n\npicture.")]),
        ("c", ["c.png"], [("Is it wide?", "yes")]),
        ("d", ["d.png"], [("What is big?", "the image")]),
        ("exif", ["e.jpg"], [("Which way is up?", "this way")]),
        ("two", ["b.png", "c.png"], [("How many?", "two")]),
        ("three", ["a.png", "d.png", "e.jpg"], [("Compare them.", "they differ")]),
        ("text", [], [("Is there a circle?", "yes"), ("How many?", "two")]),
        ("turns", ["d.png"], [("What is it?", "noise"), ("Sure?", "quite\nsure"), ("Colour?", "many")]),
    ]
    records = []
    for sample_id, images, turns in samples:
        if fmt == "llava":
            conversations = []
            for k, (question, answer) in enumerate(turns):
                value = "<image>\n" * len(images) + question if k == 0 else question
                conversations += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
            record = {"id": sample_id, "conversations": conversations}
            if images:
                record["image"] = images if len(images) > 1 else images[0]
        else:
            messages = []
            for k, (question, answer) in enumerate(turns):
                content = [{"type": "image"}] * (len(images) if k == 0 else 0) + [{"type": "text", "text": question}]
                messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
            record = {"id": sample_id, "messages": messages, **({"images": images} if images else {})}
        records.append(record)
    path = root / ("data.json" if fmt == "llava" else "data.jsonl")
    text = json.dumps(records) if fmt == "llava" else "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text)
    return path


def move_exif_after_the_pixels(path):
    """Rewrite a PNG with its eXIf chunk just before IEND (allowed by the PNG spec; PIL writes it before IDAT)."""
    data, chunks, at = path.read_bytes(), [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunks.append(data[at : at + 12 + length])
        at += 12 + length
    exif = [chunk for chunk in chunks if chunk[4:8] == b"eXIf"]
    rest = [chunk for chunk in chunks if chunk[4:8] != b"eXIf"]
    assert len(exif) == 1 and rest[-1][4:8] == b"IEND"
    path.write_bytes(data[:8] + b"".join(rest[:-1]) + exif[0] + rest[-1])


def test_image_size_is_the_decoded_images_upright_size(tmp_path):
    """From the header: EXIF orientation applied as `decode_image` applies it, also a PNG's eXIf chunk after the
    pixel data (which PIL's `getexif` would decode the image to reach)."""
    from ross.train.sources import decode_image

    folder = write_images(tmp_path / "images")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    for name in ("f.png", "g.png"):
        random_image(48, 80, 5).save(folder / name, exif=exif.tobytes())
    move_exif_after_the_pixels(folder / "g.png")
    for name, (height, width), orientation in [*IMAGES, ("f.png", (48, 80), 6), ("g.png", (48, 80), 6)]:
        size = image_size(folder / name)
        assert size == decode_image(folder / name).size[::-1]
        assert size == ((width, height) if orientation == 6 else (height, width))
    with pytest.raises(BadSampleError, match="missing_image|does not exist"):
        image_size(folder / "absent.png")


ALL_ARCHITECTURES = [tiny_qwen25_vl, tiny_qwen3_vl, tiny_llava, tiny_llava_onevision, tiny_gemma3, tiny_idefics3,
                     tiny_smolvlm]  # fmt: skip


@pytest.mark.parametrize("build", ALL_ARCHITECTURES, ids=lambda build: build.__name__.removeprefix("tiny_"))
def test_sample_length_equals_the_collators_count(build, tmp_path):
    """For every record of both formats: the pre-pass count (sizes from the files' headers, no pixels) equals the
    length of the `input_ids` the collator makes of the loaded sample, and `check_lengths` returns those counts."""
    _, processor = build()
    images = write_images(tmp_path / "images")
    collator = NativeVlmDataCollator(processor, max_length=100_000)
    for fmt in ("llava", "messages"):
        dataset = load_training_dataset(write_records(tmp_path, fmt), image_folder=images, cache_dir=tmp_path / fmt)
        expected = [len(collator._encode(dataset[index])["input_ids"]) for index in range(len(dataset))]
        counted = [collator.sample_length(dataset.messages(k), dataset.image_sizes(k)) for k in range(len(dataset))]
        assert counted == expected, fmt
        assert check_lengths(dataset, collator, cache_dir=tmp_path / fmt, num_proc=1) == expected
        assert dataset.lengths == expected
    # No image was processed per sample: one blank image per distinct (height, width, images in the sample): 4 sizes
    # alone (e.jpg loads as b.png's 84 x 56), 2 in "two", 3 in "three".
    assert len(collator._counting_processor()._process_images.memo) == 9
    if build in (tiny_qwen25_vl, tiny_qwen3_vl):  # the count follows each image's size: a, b, c, d differ
        assert len(set(expected[:4])) == 4


def test_length_cache_key_follows_the_image_settings(tmp_path):
    """The cached lengths are keyed by what decides the expansion: Qwen2.5-VL's max_pixels changes the key."""
    images = write_images(tmp_path / "images")
    dataset = load_training_dataset(write_records(tmp_path, "llava"), image_folder=images, cache_dir=tmp_path)
    keys = {
        lengths_key(dataset, NativeVlmDataCollator(tiny_qwen25_vl(max_pixels=max_pixels)[1], max_length=512))
        for max_pixels in (28 * 28 * 36, 28 * 28 * 36, 28 * 28 * 64)
    }
    assert len(keys) == 2


def write_too_long_data(root):
    """`write_native_data`'s records plus "big": the one-image question with a 280 x 280 px image (36 image tokens at
    the tiny processor's max_pixels, against 6 for a.png)."""
    data, images = write_native_data(root, "llava")
    random_image(280, 280, 3).save(images / "big.png")
    records = json.loads(data.read_text())
    records.insert(1, {**records[0], "id": "big", "image": "big.png"})
    data.write_text(json.dumps(records))
    return data, images


def too_long_run(tmp_path, kl16_vae, monkeypatch, **settings):
    """`sft.py` on a tiny Qwen2.5-VL, `model_max_length` the longest normal record's count: only "big" is too long."""
    import ross.train.build
    from modeling_ross.testing import load_native_processor_without_torchvision
    from ross.train.sft import main

    base = tmp_path / "base"
    _, processor = save_base(tiny_qwen25_vl, base)
    monkeypatch.setattr(ross.train.build, "load_native_processor", load_native_processor_without_torchvision)
    data, images = write_too_long_data(tmp_path)
    dataset = load_training_dataset(data, image_folder=images, cache_dir=tmp_path / "probe")
    collator = NativeVlmDataCollator(processor, max_length=512)
    lengths = {dataset[k]["id"]: len(collator._encode(dataset[k])["input_ids"]) for k in range(len(dataset))}
    limit = max(length for sample_id, length in lengths.items() if sample_id != "big")
    assert lengths["big"] > limit and lengths["big"] - lengths["one"] == 30
    steps = []

    class Steps(__import__("transformers").TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    argv = sft_argv(base, data, images, kl16_vae, tmp_path / "out", model_max_length=limit, **settings)
    return lambda: main(argv, callbacks=[Steps()]), steps, lengths, limit


def test_sft_native_too_long_sample_fails_before_step_1(kl16_vae, tmp_path, monkeypatch):
    run, steps, lengths, limit = too_long_run(tmp_path, kl16_vae, monkeypatch)
    with pytest.raises(ValueError, match="found by the length pre-pass") as error:
        run()
    assert f"id='big' (" in str(error.value) and f"{lengths['big']} tokens > max_length {limit}" in str(error.value)
    assert "1 sample(s)" in str(error.value) and steps == []


def test_sft_native_too_long_sample_is_a_counted_skip(kl16_vae, tmp_path, monkeypatch):
    run, steps, _, _ = too_long_run(
        tmp_path, kl16_vae, monkeypatch, on_bad_sample="skip", max_bad_fraction=0.5, max_steps=1
    )
    summary = run()
    assert summary["skipped"] == {"too_long": 1} and summary["num_train_samples"] == 6
    assert summary["global_step"] == 1 and steps == [0]


def test_datasets_source_sizes_without_decoding(tmp_path):
    """A `datasets` source (images column of `datasets.Image`, stored as bytes): the sizes come from the undecoded
    column and equal the JSON source's; the counts equal the collator's on the decoded samples."""
    import datasets

    images = write_images(tmp_path / "images")
    from_json = load_training_dataset(write_records(tmp_path, "messages"), image_folder=images, cache_dir=tmp_path)
    rows = {"messages": [], "images": []}
    for k in range(len(from_json)):
        sample = from_json.load(k)
        rows["messages"].append(json.dumps(sample["messages"]))
        paths = from_json.sources[0].rows[k]["images"] or []
        rows["images"].append([{"bytes": (images / path).read_bytes(), "path": None} for path in paths])
    assert rows["images"][4]  # the sideways JPEG's record
    features = datasets.Features({"messages": datasets.Value("string"), "images": datasets.List(datasets.Image())})
    hf = datasets.Dataset.from_dict(rows, features=features)
    hf = hf.map(lambda row: {"messages": json.loads(row["messages"])}, features=None)
    from_hf = load_training_dataset(hf, cache_dir=tmp_path / "hf")
    sizes = [from_hf.image_sizes(k) for k in range(len(from_hf))]
    assert sizes == [from_json.image_sizes(k) for k in range(len(from_json))]
    assert from_hf.sources[0]._image_refs.features["images"].feature.decode is False  # read without decoding
    assert sizes == [[image.size[::-1] for image in from_hf[k]["images"]] for k in range(len(from_hf))]
    collator = NativeVlmDataCollator(tiny_qwen25_vl()[1], max_length=100_000)
    expected = [len(collator._encode(from_hf[k])["input_ids"]) for k in range(len(from_hf))]
    assert [collator.sample_length(from_hf.messages(k), sizes[k]) for k in range(len(from_hf))] == expected
