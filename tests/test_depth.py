"""RGB + depth inputs (SpatialBot's layout, the paper's Table 5): the depth rule, the depth world, RGB-D training
records, the "which object is closer?" benchmark, and one visual-loss term per image of a two-image sample."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_ross import from_components
from modeling_ross.processing_ross import depth_to_rgb
from ross.eval.benchmarks import SYNTHETIC_BENCHMARKS, BenchmarkDataError, decode_images, get_benchmark
from ross.eval.synthetic import BENCHMARKS, chance_rate, make_depth, read_benchmark_info, write_benchmarks
from ross.synthetic.world import (
    BACKGROUND_DEPTH_MM,
    DEPTH_LEVELS_MM,
    assign_depths,
    closer_question,
    make_rng,
    make_scene,
    render,
    render_depth,
)
from ross.train.dataset import load_training_dataset
from ross.train.sources import BadSampleError, JsonSource
from ross.train.synthetic import load_scenes, write_llava_dataset


def spatialbot_reference(depth: np.ndarray) -> np.ndarray:
    """SpatialBot's own lines (README / data loader), uint8 wrap-around included (on int64: NumPy 1, which SpatialBot
    ran, promoted an 8-bit map to int16 there; NumPy 2 refuses `uint8 // 1024`)."""
    img = np.asarray(depth).astype(np.int64)
    three_channel_array = np.zeros((*img.shape, 3), dtype=np.uint8)
    three_channel_array[:, :, 0] = (img // 1024) * 4
    three_channel_array[:, :, 1] = (img // 32) * 8
    three_channel_array[:, :, 2] = (img % 32) * 8
    return three_channel_array


# ---------------------------------------------------------------------------------------------------------------------
# The depth rule
# ---------------------------------------------------------------------------------------------------------------------


def test_depth_rule_is_spatialbots_packing():
    rng = np.random.default_rng(0)
    depth16 = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    depth16[0, :4] = [0, 1023, 1024, 65535]
    image = Image.fromarray(depth16)
    assert image.mode == "I;16"
    encoded = depth_to_rgb(image)
    assert encoded.mode == "RGB" and encoded.size == (10, 12)
    assert np.array_equal(np.asarray(encoded), spatialbot_reference(depth16))
    # Lossless: the 16 bits come back from the three channels.
    r, g, b = (np.asarray(encoded)[..., k].astype(np.int64) for k in range(3))
    assert np.array_equal((r >> 2) * 1024 + (g >> 3) * 32 + (b >> 3), depth16)

    depth8 = rng.integers(0, 256, (6, 6), dtype=np.uint8)  # an 8-bit map: the same values, the same packing
    assert np.array_equal(np.asarray(depth_to_rgb(Image.fromarray(depth8))), spatialbot_reference(depth8))
    wide = Image.fromarray(np.array([[-5, 70000, 700]], dtype=np.int32))  # 32-bit: clipped to uint16's range
    assert wide.mode == "I"
    assert np.array_equal(np.asarray(depth_to_rgb(wide)), spatialbot_reference(np.array([[0, 65535, 700]])))
    rgb = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))  # already encoded: kept as is
    assert np.array_equal(np.asarray(depth_to_rgb(rgb)), np.asarray(rgb))
    with pytest.raises(ValueError, match="depth map must be single-channel .* got mode P"):
        depth_to_rgb(Image.new("P", (4, 4)))


# ---------------------------------------------------------------------------------------------------------------------
# The depth world
# ---------------------------------------------------------------------------------------------------------------------


def test_depth_map_holds_each_objects_depth_and_the_rgb_image_none():
    scene = make_scene(make_rng(3), 48, num_objects=4)
    before = render(scene).tobytes()
    assign_depths(scene, make_rng(3, "depth"))
    assert render(scene).tobytes() == before  # render() ignores depth: the RGB image carries no depth cue
    depths = [o["depth"] for o in scene["objects"]]
    assert len(set(depths)) == 4 and set(depths) <= set(DEPTH_LEVELS_MM)
    depth_map = render_depth(scene)
    assert depth_map.mode == "I;16" and depth_map.size == (48, 48)
    pixels = np.asarray(depth_map)
    rgb = np.asarray(render(scene))
    background = np.all(rgb == np.asarray(render({**scene, "objects": []})), axis=-1)
    assert np.all(pixels[background] == BACKGROUND_DEPTH_MM)
    for o in scene["objects"]:
        x, y = o["center"]
        assert pixels[y, x] == o["depth"]
    # Levels below 1024 mm in steps of 32: the encoding's green channel alone orders them (R and B stay constant).
    encoded = spatialbot_reference(np.array([DEPTH_LEVELS_MM]))
    assert np.all(np.diff(encoded[0, :, 1].astype(int)) > 0) and not encoded[0, :, [0, 2]].any()
    with pytest.raises(ValueError, match="assign_depths"):
        render_depth(make_scene(make_rng(4), 48))


def test_closer_question_names_the_nearer_object():
    for seed in range(20):
        scene = assign_depths(make_scene(make_rng(seed), 48, num_objects=3), make_rng(seed, "depth"))
        qa = closer_question(scene, make_rng(seed, "q"))
        if qa is None:
            continue
        by_name = {f"{o['colour']} {o['shape']}": o["depth"] for o in scene["objects"]}
        assert by_name[qa["answer"]] < by_name[qa["other"]]


# ---------------------------------------------------------------------------------------------------------------------
# Training data
# ---------------------------------------------------------------------------------------------------------------------


def test_rgbd_records_pair_the_rgb_image_with_its_depth_map(tmp_path):
    plain_rgb = write_llava_dataset(str(tmp_path), 6, stage="sft")
    rgb = write_llava_dataset(str(tmp_path), 6, stage="sft", depth_questions=True)
    rgbd = write_llava_dataset(str(tmp_path), 6, stage="sft", with_depth=True)
    records = {name: json.loads(open(path).read()) for name, path in (("plain", plain_rgb), ("rgb", rgb), ("rgbd", rgbd))}
    with_image = {name: [r for r in recs if "image" in r] for name, recs in records.items()}
    # RGB-only records keep one image; the two depth arms see the same scenes (depths come from their own stream).
    assert all(isinstance(r["image"], str) and "depth_images" not in r for r in with_image["plain"] + with_image["rgb"])
    assert not any("closer" in json.dumps(r) for r in records["plain"])
    for b, c in zip(with_image["rgb"], with_image["rgbd"]):
        assert Image.open(tmp_path / b["image"]).tobytes() == Image.open(tmp_path / c["image"][0]).tobytes()
        # The two depth arms: the same conversations, the RGB-D one with two placeholders in front.
        first_rgb, first_rgbd = b["conversations"][0]["value"], c["conversations"][0]["value"]
        assert first_rgbd == "<image>\n" + first_rgb and first_rgb.startswith("<image>\n")
        assert b["conversations"][1:] == c["conversations"][1:]
        assert c["depth_images"] == [1] and c["image"][1].endswith("_depth.png")
    questions = [t["value"] for r in with_image["rgbd"] for t in r["conversations"] if t["from"] == "human"]
    assert any("closer to the camera" in q for q in questions)

    scenes = load_scenes(rgbd)
    items = load_training_dataset(rgbd, image_folder=str(tmp_path))
    index = next(i for i in range(len(items)) if items[i]["images"])
    item = items[index]
    scene = next(s for s in scenes if s["id"] == with_image["rgbd"][0]["id"])
    with Image.open(scene["depth"]) as stored:
        assert stored.mode == "I;16"
        assert np.array_equal(np.asarray(stored), np.asarray(render_depth(scene["scene"])))
        expected = depth_to_rgb(stored)
    assert len(item["images"]) == 2
    assert np.array_equal(np.asarray(item["images"][1]), np.asarray(expected))
    images_in_first_turn = [part for part in item["messages"][0]["content"] if part["type"] == "image"]
    assert len(images_in_first_turn) == 2


def test_bad_depth_images_name_the_record(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    conversations = [{"from": "human", "value": "<image>\n<image>\nQ"}, {"from": "gpt", "value": "A"}]
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "s0", "image": ["a.png", "a.png"], "depth_images": [2],
                                 "conversations": conversations}]))  # fmt: skip
    ((_, error),) = list(JsonSource(str(data), None, "llava").parse_all(check_files=True))
    assert isinstance(error, BadSampleError) and error.reason == "invalid_record"
    assert "'depth_images' must be a list of image positions in 0..1, got [2]" in str(error)


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def depth_benchmark(tmp_path_factory):
    return write_benchmarks(str(tmp_path_factory.mktemp("bench")), 16, names=["synthetic_depth"])["synthetic_depth"]


def test_depth_benchmark_pairs_share_the_rgb_image_and_swap_the_answer(depth_benchmark):
    assert "synthetic_depth" not in BENCHMARKS  # the v2 protocol's benchmark set is unchanged
    assert {"synthetic_depth", "synthetic_depth_rgbd"} <= set(SYNTHETIC_BENCHMARKS)
    assert chance_rate("synthetic_depth") == 0.5 and chance_rate("synthetic_depth_pair") == 0.25
    info = read_benchmark_info(depth_benchmark)
    assert info["num_pairs"] == 8 and info["chance"] == 0.5

    rgb_rows = get_benchmark("synthetic_depth").load(depth_benchmark)
    rgbd_rows = get_benchmark("synthetic_depth_rgbd").load(depth_benchmark)
    assert all(len(r["images"]) == 1 for r in rgb_rows) and all(r["depth_images"] == [1] for r in rgbd_rows)
    for k in range(0, len(rgbd_rows), 2):
        a, b = rgbd_rows[k], rgbd_rows[k + 1]
        assert (a["Question"], a["Options"]) == (b["Question"], b["Options"])
        assert a["images"][0].tobytes() == b["images"][0].tobytes()  # the same RGB image
        assert a["images"][1].mode == "I;16" and a["images"][1].tobytes() != b["images"][1].tobytes()
        assert {a["Correct Answer"], b["Correct Answer"]} == {"(a)", "(b)"}

    # An answer that does not read the depth map is right exactly once per pair; reading it gets every row right.
    bench = get_benchmark("synthetic_depth_rgbd")
    blind = bench.score([{**r, "prediction": "A"} for r in rgbd_rows])
    assert blind["accuracy"] == 0.5 and blind["pair_accuracy"] == 0.0

    def read_depth(row):
        rgb, depth = decode_images(row)
        scene = json.loads(row["scene_json"])
        encoded = np.asarray(depth).astype(int)

        def unpack(x, y):  # SpatialBot's packing, inverted
            r, g, b = encoded[y, x]
            return (r >> 2) * 1024 + (g >> 3) * 32 + (b >> 3)

        depth_mm = {f"{o['colour']} {o['shape']}": unpack(*o["center"]) for o in scene["objects"]}
        options = row["Options"].replace("(a) ", "").split(" (b) ")
        return "AB"[int(depth_mm[options[1]] < depth_mm[options[0]])]

    oracle = bench.score([{**r, "prediction": read_depth(r)} for r in rgbd_rows])
    assert oracle["accuracy"] == 1.0 and oracle["pair_accuracy"] == 1.0


def test_rgbd_benchmark_without_depth_column_is_a_clear_error(tmp_path):
    from datasets import Dataset

    rows, _ = make_depth(4, seed=2)
    del rows["depth"]
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "rgb_only"))
    assert len(get_benchmark("synthetic_depth").load(tmp_path / "rgb_only")) == 4  # RGB alone needs no depth map
    with pytest.raises(BenchmarkDataError, match="rgb_only: missing depth-map column 'depth' .*synthetic_depth_rgbd"):
        get_benchmark("synthetic_depth_rgbd").load(tmp_path / "rgb_only")


# ---------------------------------------------------------------------------------------------------------------------
# The model: each image of a two-image sample has its own visual-loss term
# ---------------------------------------------------------------------------------------------------------------------


def test_rgb_and_depth_images_each_get_their_own_visual_loss(tiny_components, tiny_processor):
    torch.manual_seed(0)
    model = from_components(**tiny_components, objective="regress", target="pixel", pixel_patch_size=8)
    with torch.no_grad():  # a head that depends on its condition (the zero init predicts 0 for every image)
        for parameter in model.denoiser.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    scene = assign_depths(make_scene(make_rng(5), 48, num_objects=3), make_rng(5, "depth"))
    rgb, depth = render(scene), depth_to_rgb(render_depth(scene))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A"}]}]  # fmt: skip
    text = tiny_processor.apply_chat_template(messages, tokenize=False)
    batch = tiny_processor(text=[text], images=[rgb, depth], return_tensors="pt")
    assert batch["pixel_values"].shape[0] == 2
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == tiny_processor.image_token_id, -100)
    model.train()
    out = model(**batch, labels=labels)
    n = model.config.image_seq_length
    assert out.visual_outputs.shape == (2, n, model.config.text_config.hidden_size)
    # visual_outputs[k] are the hidden states of the k-th block of image tokens, in the sample's order.
    positions = (batch["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    for k in range(2):
        torch.testing.assert_close(model.lm_head(out.visual_outputs[k]), out.logits[0, positions[k * n : (k + 1) * n]])

    def term(condition, pixels):
        return model.objective(condition, pixels, denoiser=model.denoiser, teacher=model.teacher)

    terms = [term(out.visual_outputs[k : k + 1], batch["pixel_values"][k : k + 1]) for k in range(2)]
    torch.testing.assert_close(out.visual_loss, (terms[0] + terms[1]) / 2)  # one term per image, averaged
    assert not torch.isclose(terms[0], terms[1])
    swapped = term(out.visual_outputs, batch["pixel_values"].flip(0))  # each image's outputs -> its own target
    assert not torch.isclose(swapped, out.visual_loss)
