"""Tests of the synthetic world (synthetic/world.py), its training data (train/synthetic.py) and its benchmarks
(eval/synthetic.py).

Answers are checked against the *rendered pixels*: a small independent parser below
recovers (colour, shape, quadrant) of every object from an image, and an oracle answers
each question template from that parse.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from ross.synthetic import world
from ross.train import synthetic as ts
from ross.eval import synthetic as es

QUADS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}


# ----------------------------------------------------------------------------- pixel oracle
def parse_image(img: Image.Image) -> list[tuple[str, str, str]]:
    """(colour, shape, quadrant) of every object, read from the pixels only."""
    a = np.asarray(img.convert("RGB")).astype(np.int16)
    size = a.shape[0]
    half = size // 2
    out = []
    for pos, (qx, qy) in QUADS.items():
        q = a[qy * half:(qy + 1) * half, qx * half:(qx + 1) * half]
        found = []
        for colour, rgb in world.COLOUR_RGB.items():
            m = (q == np.array(rgb)).all(-1)
            if m.sum() >= 4:
                found.append((colour, m))
        assert len(found) <= 1, f"several colours in quadrant {pos}"
        if not found:
            # the background is grey: nothing chromatic may be left in an empty quadrant
            assert (np.abs(q[..., 0] - q[..., 1]) <= 0).all() and (q[..., 1] == q[..., 2]).all()
            continue
        colour, m = found[0]
        ys, xs = np.nonzero(m)
        fill = m.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        shape = "square" if fill > 0.95 else "circle" if fill > 0.62 else "triangle"
        out.append((colour, shape, pos))
    return out


PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle"}


def oracle(question: str, objs: list[tuple[str, str, str]]) -> str:
    """Answer one question template (lowercase) from parsed objects."""
    if m := re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", question):
        return "yes" if any(o[:2] == m.groups() for o in objs) else "no"
    if m := re.fullmatch(r"What colour is the object at the (.+)\?", question):
        (hit,) = [o for o in objs if o[2] == m.group(1)]
        return hit[0]
    if m := re.fullmatch(r"What colour is the (\w+)\?", question):
        (hit,) = [o for o in objs if o[1] == m.group(1)]
        return hit[0]
    if m := re.fullmatch(r"What shape is the object at the (.+)\?", question):
        (hit,) = [o for o in objs if o[2] == m.group(1)]
        return hit[1]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        (hit,) = [o for o in objs if o[0] == m.group(1)]
        return hit[1]
    if question == "How many objects are there?":
        return str(len(objs))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(o[0] == m.group(1) for o in objs))
    if m := re.fullmatch(r"How many (\w+) are there\?", question):
        return str(sum(o[1] == PLURAL[m.group(1)] for o in objs))
    if m := re.fullmatch(r"Where is the (\w+) (\w+)\?", question):
        (hit,) = [o for o in objs if o[:2] == m.groups()]
        return hit[2]
    if m := re.fullmatch(r"Where is the (\w+)\?", question):
        (hit,) = [o for o in objs if o[1] == m.group(1)]
        return hit[2]
    raise AssertionError(f"unknown question template: {question!r}")


def oracle_turn(human: str, objs) -> str:
    """The expected gpt value for one SFT human turn."""
    human = human.removeprefix("<image>\n")
    if human == "Describe the image briefly.":
        parts = [f"a {c} {s} at the {p}" for c, s, p in objs]
        cap = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return cap.capitalize() + "."
    lines = human.split("\n")
    if lines[-1] == world.MCQ_PROMPT:
        q, a_opt, b_opt = lines[0], lines[1].removeprefix("A. "), lines[2].removeprefix("B. ")
        ans = oracle(q, objs)
        assert ans in (a_opt, b_opt) and a_opt != b_opt
        return "A" if ans == a_opt else "B"
    assert lines[-1] == world.SHORT_ANSWER_PROMPT and len(lines) == 2
    ans = oracle(lines[0], objs)
    words = {"yes", "no", *world.COLOURS, *world.SHAPES}
    return ans.capitalize() if ans in words else ans


def pixel_match(img, xy, colour) -> bool:
    return img.getpixel(tuple(xy)) == world.COLOUR_RGB[colour]


# ----------------------------------------------------------------------------- world
def test_colours_are_separable_and_not_grey():
    rgbs = list(world.COLOUR_RGB.values())
    assert 4 <= len(world.COLOURS) <= 6 and set(world.COLOURS) == set(world.COLOUR_RGB)
    for i, a in enumerate(rgbs):
        assert max(a) - min(a) >= 60  # far from the grey background
        for b in rgbs[i + 1:]:
            assert np.abs(np.subtract(a, b)).sum() >= 100


@pytest.mark.parametrize("size", [32, 48, 64])
def test_render_matches_scene(size):
    for scene, img in world.iter_scenes(150, seed=3, size=size):
        assert img.size == (size, size) and img.mode == "RGB"
        objs = scene["objects"]
        assert 1 <= len(objs) <= 4
        assert len({o["position"] for o in objs}) == len(objs)  # one per quadrant
        half = size // 2
        for o in objs:
            x0, y0, x1, y1 = o["bbox"]
            qx, qy = QUADS[o["position"]]
            # strictly inside its quadrant: no overlap, no touching
            assert qx * half < x0 <= x1 < (qx + 1) * half - 1
            assert qy * half < y0 <= y1 < (qy + 1) * half - 1
            assert pixel_match(img, o["center"], o["colour"])
            corner_is_colour = pixel_match(img, (x0, y0), o["colour"])
            assert corner_is_colour == (o["shape"] == "square")
        parsed = parse_image(img)
        assert parsed == [(o["colour"], o["shape"], o["position"]) for o in objs]
        assert world.colour_presence_labels(scene) == [int(any(p[0] == c for p in parsed)) for c in world.COLOURS]


def test_make_scene_deterministic_and_seeded():
    a = [world.make_scene(7, 48) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert world.make_scene(7, 48) != world.make_scene(8, 48)
    rng1, rng2 = world.make_rng(5, "x"), world.make_rng(5, "x")
    s1 = [world.make_scene(rng1) for _ in range(20)]
    s2 = [world.make_scene(rng2) for _ in range(20)]
    assert s1 == s2 and len({json.dumps(s) for s in s1}) == 20
    assert world.render(s1[0]).tobytes() == world.render(json.loads(json.dumps(s1[0]))).tobytes()
    with pytest.raises(ValueError):
        world.make_scene(0, 8)


def test_question_families_agree_with_pixels():
    rng = world.make_rng(11, "q")
    seen = Counter()
    for scene, img in world.iter_scenes(200, seed=11):
        objs = parse_image(img)
        qas = (world.colour_questions(scene) + world.shape_questions(scene) + world.count_questions(scene)
               + world.position_questions(scene) + [world.existence_question(scene, rng) for _ in range(4)])
        for qa in qas:
            assert oracle(qa["question"], objs) == qa["answer"], qa
            seen[qa["type"]] += 1
        assert world.caption(scene) == oracle_turn("Describe the image briefly.", objs)[:-1].lower()
    assert set(seen) == {"exist", "colour", "shape", "count", "position"}


def test_generation_speed():
    t = time.perf_counter()
    for _ in world.iter_scenes(1000, seed=0, size=48):
        pass
    assert time.perf_counter() - t < 10.0


# ----------------------------------------------------------------------------- LLaVA json
def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            h.update(os.path.relpath(p, root).encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    path = ts.write_llava_dataset(str(out), num_images=180, seed=0, size=48, stage="sft")
    return out, path


def test_llava_deterministic(tmp_path, sft):
    out, path = sft
    p2 = ts.write_llava_dataset(str(tmp_path / "a"), num_images=180, seed=0, size=48, stage="sft")
    assert open(path, "rb").read() == open(p2, "rb").read()
    assert _digest(out) == _digest(tmp_path / "a")
    p3 = ts.write_llava_dataset(str(tmp_path / "b"), num_images=180, seed=1, size=48, stage="sft")
    assert open(path, "rb").read() != open(p3, "rb").read()


def _check_schema(records, root):
    ids = set()
    for r in records:
        assert set(r) <= {"id", "image", "conversations"} and r["id"] not in ids
        ids.add(r["id"])
        conv = r["conversations"]
        assert conv and len(conv) % 2 == 0
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert all(isinstance(t["value"], str) and t["value"] for t in conv)
        n_placeholders = sum(t["value"].count("<image>") for t in conv)
        n_images = 1 if "image" in r else 0
        assert n_placeholders == n_images
        if n_images:
            assert conv[0]["value"].startswith("<image>")
            assert os.path.isfile(os.path.join(root, r["image"]))


def test_sft_schema_answers_and_text_only(sft):
    out, path = sft
    assert path == os.path.join(str(out), "synthetic_sft.json")
    records = json.load(open(path))
    _check_schema(records, str(out))
    with_img = [r for r in records if "image" in r]
    text = [r for r in records if "image" not in r]
    assert len(with_img) == 180
    assert 0.07 <= len(text) / len(records) <= 0.13
    n_turns = Counter()
    kinds = Counter()
    for r in with_img:
        img = Image.open(os.path.join(str(out), r["image"]))
        assert img.size == (48, 48) and img.mode == "RGB"
        objs = parse_image(img)
        conv = r["conversations"]
        n_turns[len(conv) // 2] += 1
        for h, g in zip(conv[::2], conv[1::2]):
            assert g["value"] == oracle_turn(h["value"], objs), (h, g)
            kinds["mcq" if world.MCQ_PROMPT in h["value"] else "short"] += 1
    assert set(n_turns) == {1, 2, 3}
    assert kinds["mcq"] > 0 and kinds["short"] > 0
    # text-only turns are self-consistent (arithmetic) and never mention an image
    for r in text:
        h, g = r["conversations"][0]["value"], r["conversations"][1]["value"]
        if m := re.fullmatch(r"What is (\d+) (plus|minus) (\d+)\?", h):
            a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
            assert int(g) == (a + b if op == "plus" else a - b)
    # the scene side file matches the images
    scenes = ts.load_scenes(path)
    assert len(scenes) == 180
    for rec in scenes[:30]:
        img = Image.open(rec["image"])
        assert parse_image(img) == [(o["colour"], o["shape"], o["position"]) for o in rec["scene"]["objects"]]
        assert rec["colour_labels"] == world.colour_presence_labels(rec["scene"])


def test_plain_stage_captions(tmp_path):
    path = ts.main(["--out", str(tmp_path), "--num-images", "40", "--stage", "plain", "--size", "32"])
    records = json.load(open(path))
    assert len(records) == 40 and os.path.basename(path) == "synthetic_plain.json"
    _check_schema(records, str(tmp_path))
    for r in records:
        assert r["conversations"][0]["value"] == "<image>"
        objs = parse_image(Image.open(os.path.join(str(tmp_path), r["image"])))
        assert r["conversations"][1]["value"] == oracle_turn("Describe the image briefly.", objs)[:-1].lower()


# ----------------------------------------------------------------------------- benchmarks
N_ITEMS = 120


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    paths = es.write_benchmarks(str(out), num_items=N_ITEMS, seed=1, size=48)
    return out, paths


def _load(path):
    from datasets import load_from_disk

    return load_from_disk(path)


def test_benchmarks_reload_with_pil_images(bench):
    out, paths = bench
    assert set(paths) == set(es.BENCHMARKS)
    expected_cols = {
        "synthetic_pope": {"question_id", "question", "answer", "category", "image"},
        "synthetic_mmvp": {"Index", "Question", "Options", "Correct Answer", "image"},
        "synthetic_count": {"question_id", "question", "answer", "image"},
        "synthetic_colour": {"question_id", "question", "answer", "image"},
        "synthetic_position": {"question_id", "question", "answer", "image"},
    }
    summary = json.load(open(os.path.join(str(out), "chance.json")))
    for name, path in paths.items():
        assert path == os.path.join(str(out), name)
        ds = _load(path)
        assert expected_cols[name] <= set(ds.column_names)
        assert type(ds.features["image"]).__name__ == "Image"
        assert len(ds) == N_ITEMS
        img = ds[0]["image"]
        assert isinstance(img, Image.Image) and img.size == (48, 48)
        info = json.loads(ds.info.description)
        assert info == es.read_benchmark_info(path) == summary[name]
        assert info["chance"] == pytest.approx(es.chance_rate(name))
        assert info["num_rows"] == N_ITEMS and info["seed"] == 1
    assert es.chance_rate("synthetic_pope") == 0.5
    assert es.chance_rate("synthetic_mmvp_pair") == 0.25
    assert es.chance_rate("synthetic_colour") == pytest.approx(1 / len(world.COLOURS))
    assert es.chance_rate("synthetic_position") == 0.25
    assert es.chance_rate("synthetic_count") == pytest.approx((1 / 5 + 1 / 4 + 1 / 4) / 3)
    assert es.chance_rate("x", question_type="count:total") == 0.25
    assert es.chance_rate(paths["synthetic_pope"]) == 0.5


def test_benchmarks_deterministic_and_held_out(tmp_path, bench, sft):
    out, paths = bench
    again = es.write_benchmarks(str(tmp_path), num_items=N_ITEMS, seed=1, size=48)
    for name in es.BENCHMARKS:
        a, b = _load(paths[name]), _load(again[name])
        for ra, rb in zip(a, b):
            assert {k: v for k, v in ra.items() if k != "image"} == {k: v for k, v in rb.items() if k != "image"}
            assert ra["image"].tobytes() == rb["image"].tobytes()
    other = es.make_pope(N_ITEMS, seed=2, size=48)[0]
    assert other["scene_json"] != _load(paths["synthetic_pope"])["scene_json"]
    # held out: no benchmark scene is a training scene of the default training seed
    train = {json.dumps(rec["scene"], sort_keys=True) for rec in ts.load_scenes(sft[1])}
    assert len(train) == 180
    for name in es.BENCHMARKS:
        assert not train & set(_load(paths[name])["scene_json"])


def test_pope_balance_and_negatives(bench):
    _, paths = bench
    ds = _load(paths["synthetic_pope"])
    rows = [{k: v for k, v in r.items()} for r in ds]
    assert Counter(r["answer"] for r in rows) == {"yes": N_ITEMS // 2, "no": N_ITEMS // 2}
    for cat in ("random", "popular", "adversarial"):
        sub = [r for r in rows if r["category"] == cat]
        assert len(sub) == N_ITEMS // 3
        assert Counter(r["answer"] for r in sub) == {"yes": len(sub) // 2, "no": len(sub) // 2}
    scenes = {r["scene_json"] for r in rows}
    freq = Counter(k for s in scenes for k in {(o["colour"], o["shape"]) for o in json.loads(s)["objects"]})
    for r in rows:
        objs = parse_image(r["image"])
        m = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", r["question"])
        asked = m.groups()
        present = {o[:2] for o in objs}
        assert r["answer"] == ("yes" if asked in present else "no")
        if r["answer"] == "no" and r["category"] == "adversarial":
            # differs from a present object in exactly one attribute
            assert any((asked[0] == p[0]) != (asked[1] == p[1]) for p in present)
        if r["answer"] == "no" and r["category"] == "popular":
            absent = [k for k in world.all_objects() if k not in present]
            assert freq[asked] == max(freq[k] for k in absent)


def test_mmvp_pairs(bench):
    _, paths = bench
    ds = _load(paths["synthetic_mmvp"])
    assert ds["Index"] == list(range(1, N_ITEMS + 1))
    types = Counter()
    for k in range(len(ds) // 2):
        a, b = ds[2 * k], ds[2 * k + 1]
        assert a["Question"] == b["Question"] and a["Options"] == b["Options"]
        assert {a["Correct Answer"], b["Correct Answer"]} == {"(a)", "(b)"}
        assert a["pair_type"] == b["pair_type"]
        types[a["pair_type"]] += 1
        assert a["image"].tobytes() != b["image"].tobytes()
        m = re.fullmatch(r"\(a\) (.+) \(b\) (.+)", a["Options"])
        assert m and m.group(1) != m.group(2)
        pa, pb = parse_image(a["image"]), parse_image(b["image"])
        for row, objs in ((a, pa), (b, pb)):
            truth = oracle(row["Question"], objs)
            assert truth == m.group(1 if row["Correct Answer"] == "(a)" else 2)
        # one small detail: at most one object differs (or one is added / removed)
        if len(pa) == len(pb):
            diff = [(x, y) for x, y in zip(sorted(pa, key=lambda o: o[2]), sorted(pb, key=lambda o: o[2])) if x != y]
            assert 1 <= len(diff) <= 2  # a moved object leaves one quadrant and fills another
            if a["pair_type"] in ("colour", "exist"):
                assert len(diff) == 1
        else:
            assert abs(len(pa) - len(pb)) == 1 and set(pa) ^ set(pb)
            assert len(set(pa) ^ set(pb)) == 1
    assert set(types) == {"colour", "count", "position", "exist"}


@pytest.mark.parametrize("name", ["synthetic_count", "synthetic_colour", "synthetic_position"])
def test_short_answer_benchmarks(bench, name):
    _, paths = bench
    ds = _load(paths[name])
    answers = Counter()
    for r in ds:
        assert oracle(r["question"], parse_image(r["image"])) == r["answer"]
        assert r["answer"] == r["answer"].lower()
        answers[r["answer"]] += 1
    vocab = {"synthetic_count": set(world.COUNT_ANSWERS), "synthetic_colour": set(world.COLOURS),
             "synthetic_position": set(world.POSITIONS)}[name]
    assert set(answers) == vocab
    # balanced: no answer dominates (a blind "majority" guess stays near chance)
    info = es.read_benchmark_info(paths[name])
    assert info["majority"] <= es.chance_rate(name) + 0.1
    for qt, v in info["question_types"].items():
        assert v["majority"] <= v["chance"] + 0.05
        assert es.chance_rate(name, qt) == v["chance"]


def test_eval_cli(tmp_path):
    paths = es.main(["--out", str(tmp_path), "--num-items", "12", "--size", "32",
                     "--names", "synthetic_pope", "synthetic_mmvp"])
    assert set(paths) == {"synthetic_pope", "synthetic_mmvp"}
    ds = _load(paths["synthetic_pope"])
    assert len(ds) == 12 and ds[0]["image"].size == (32, 32)
