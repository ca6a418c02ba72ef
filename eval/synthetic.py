"""Synthetic fine-grained benchmarks built from held-out scenes of the synthetic world (``synthetic/world.py``).

Each benchmark is a ``datasets.Dataset`` with an ``Image()`` column ``image`` saved with
``save_to_disk`` to ``out_dir/<name>/`` (the on-disk form of lmms-lab's datasets, so the
real loaders read them with ``datasets.load_from_disk``):

* ``synthetic_pope``: ``question_id, question, answer ("yes"/"no"), category
  ("random"/"popular"/"adversarial"), image`` (+ ``scene_json``). Per image and category one
  positive and one negative question: 6 rows per image, balanced 50/50.
* ``synthetic_mmvp``: ``Index (1-based), Question, Options ("(a) x (b) y"), Correct Answer
  ("(a)"/"(b)"), image`` (+ ``pair_type``, ``scene_json``). Rows 2k and 2k+1 (0-based) are a
  pair: two images differing in one detail (an object's colour, a count, an object's
  position, or an object's presence), same question and options, opposite answers.
* ``synthetic_count``, ``synthetic_colour``, ``synthetic_position``: short-answer QA
  ``question_id, question, answer, image`` (+ ``question_type``, ``scene_json``), lowercase
  answers ("2", "red", "top left"), scored by (case-insensitive) exact match like GQA.

* ``synthetic_depth`` (not in :data:`BENCHMARKS`, the set the v2 protocol writes; ask for it by name): "Which
  object is closer to the camera?" in MMVP's layout, plus a ``depth`` column (the scene's 16-bit depth map, PNG
  bytes, millimetres). Rows 2k and 2k+1 are a pair: the SAME RGB image, question and options, and two depth maps
  in which the two asked objects swap depths, so opposite answers. The RGB image carries no depth cue (depths are
  drawn apart from size and position, see ``synthetic/world.py``): any model that does not read the depth map gives
  both rows the same answer and scores exactly 0.5 per question and 0 per pair (uniform chance: 0.5 / 0.25). The
  registry reads it as ``synthetic_depth`` (RGB only) and ``synthetic_depth_rgbd`` (RGB + depth map).

``question``/``Question`` hold the bare question; the evaluation prompt suffixes (as in
lmms-eval) are added by the loaders. Chance rates are stored as JSON in the dataset's
``info.description`` and in ``out_dir/<name>/chance.json`` (see :func:`read_benchmark_info`);
:func:`chance_rate` returns the uniform-guess chance without reading anything.

CLI: ``python -m ross.eval.synthetic --out DIR [--num-items N --seed S --size PX]``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import random
from collections import Counter, defaultdict
from typing import Callable, Sequence

from ross.synthetic.world import (
    COLOURS,
    POSITIONS,
    SHAPES,
    all_objects,
    assign_depths,
    closer_question,
    colour_questions,
    count_questions,
    existence_text,
    make_object,
    make_rng,
    make_scene,
    object_key,
    position_questions,
    present_objects,
    render,
    render_depth,
    restyle_object,
    SHAPE_PLURAL,
    sort_objects,
)

__all__ = [
    "BENCHMARKS",
    "CHANCE",
    "QUESTION_TYPE_CHANCE",
    "chance_rate",
    "read_benchmark_info",
    "make_pope",
    "make_mmvp",
    "make_short_answer",
    "make_depth",
    "DEPTH_BENCHMARKS",
    "write_benchmarks",
    "main",
]

BENCHMARKS = ("synthetic_pope", "synthetic_mmvp", "synthetic_count", "synthetic_colour",
              "synthetic_position")
DEPTH_BENCHMARKS = ("synthetic_depth",)  # written only when asked for (RGB-D data, bench/ablation_depth.yaml)

# Accuracy of a uniform random guess over each question type's answer set.
QUESTION_TYPE_CHANCE: dict[str, float] = {
    "exist": 1 / 2,  # yes / no
    "mcq": 1 / 2,  # two options
    "count": 1 / 5,  # "0".."4"
    "colour": 1 / len(COLOURS),
    "shape": 1 / len(SHAPES),
    "position": 1 / len(POSITIONS),
}
# Per benchmark (per question; ``synthetic_mmvp_pair`` = both items of a pair right).
CHANCE: dict[str, float] = {
    "synthetic_pope": 0.5,
    "synthetic_mmvp": 0.5,
    "synthetic_mmvp_pair": 0.25,
    "synthetic_depth": 0.5,
    "synthetic_depth_pair": 0.25,
    # synthetic_count / _colour / _position: set below from their subtypes' answer sets
}
_METRIC = {"synthetic_pope": "pope (accuracy / F1, 'yes' positive)",
           "synthetic_mmvp": "mmvp (per-question and pair accuracy)",
           "synthetic_count": "exact_match", "synthetic_colour": "exact_match",
           "synthetic_position": "exact_match",
           "synthetic_depth": "mmvp (per-question and pair accuracy)"}
_SHORT_FAMILY = {"synthetic_count": "count", "synthetic_colour": "colour",
                 "synthetic_position": "position"}


def chance_rate(name: str, question_type: str | None = None) -> float:
    """Uniform-guess accuracy of benchmark ``name`` (``"synthetic_mmvp_pair"`` for MMVP pair
    accuracy; a path to a saved benchmark also works), or of ``question_type`` when given:
    a family (``exist``, ``mcq``, ``count`` (over "0".."4"), ``colour``, ``shape``,
    ``position``) or a ``question_type`` column value such as ``"count:total"``.
    Data-dependent baselines of a generated file (``"majority"``: always the most common
    answer; ``"blind_per_question"``: the best answer per question text, in-sample) are in
    :func:`read_benchmark_info`."""
    if question_type is not None:
        if ":" in question_type:
            return _subtype_chance(question_type)
        return QUESTION_TYPE_CHANCE[question_type]
    key = name if name in CHANCE else os.path.basename(os.path.normpath(name))
    if key not in CHANCE:
        raise KeyError(f"unknown synthetic benchmark {name!r}; known: {sorted(CHANCE)}")
    return CHANCE[key]


def read_benchmark_info(path: str) -> dict:
    """The info dict stored with a saved benchmark (``chance.json`` in its folder)."""
    with open(os.path.join(path, "chance.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- helpers
def _scene_json(scene: dict) -> str:
    return json.dumps(scene, sort_keys=True)


def _near(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """True when the objects differ in exactly one attribute (colour or shape)."""
    return (a[0] == b[0]) != (a[1] == b[1])


def _majority(answers: Sequence[str]) -> float:
    return Counter(answers).most_common(1)[0][1] / len(answers) if answers else 0.0


def _save(rows: dict[str, list], path: str, info: dict) -> str:
    from datasets import Dataset, DatasetInfo, Features, Image, Value  # optional (`eval` extra): only writing needs it

    feats = {k: (Image() if k in ("image", "depth") else Value("int64") if k == "Index" else Value("string"))
             for k in rows}
    features = Features(feats)
    desc = json.dumps(info, sort_keys=True)
    ds = Dataset.from_dict(rows, features=features,
                           info=DatasetInfo(description=desc, features=features))
    os.makedirs(path, exist_ok=True)
    from datasets.utils import logging as ds_logging

    quiet = not ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        ds.save_to_disk(path)
    finally:
        if not quiet:
            ds_logging.enable_progress_bar()
    with open(os.path.join(path, "chance.json"), "w") as f:
        f.write(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return path


def _blind(keys: Sequence[str], answers: Sequence[str]) -> float:
    """Accuracy of the best image-blind answer per question text (in-sample upper bound of
    what language priors alone can score)."""
    by = defaultdict(Counter)
    for k, a in zip(keys, answers):
        by[k][a] += 1
    return sum(c.most_common(1)[0][1] for c in by.values()) / max(1, len(answers))


def _info(name: str, seed: int, size: int, answers: Sequence[str], qtypes: Sequence[str] | None = None,
          keys: Sequence[str] | None = None, **extra) -> dict:
    info = {"benchmark": name, "seed": seed, "size": size, "num_rows": len(answers),
            "chance": CHANCE[name], "majority": _majority(answers),
            "blind_per_question": _blind(keys, answers) if keys is not None else None,
            "answer_distribution": dict(sorted(Counter(answers).items())),
            "metric": _METRIC[name]}
    if qtypes is not None:
        by = defaultdict(list)
        for t, a in zip(qtypes, answers):
            by[t].append(a)
        info["question_types"] = {t: {"n": len(v), "chance": _subtype_chance(t),
                                      "majority": _majority(v)} for t, v in sorted(by.items())}
    info.update(extra)
    return info


# ----------------------------------------------------------------------------- POPE
def make_pope(num_items: int = 600, seed: int = 1, size: int = 48) -> tuple[dict[str, list], dict]:
    """POPE-style rows: ``num_items // 6`` held-out images (at least 1), and for each image and
    category ("random", "popular", "adversarial") one "yes" and one "no" question.

    Positives are present objects, chosen to balance yes/no per asked object within each
    category (the object asked "no" most often so far; random among ties).
    Negatives (the asked object is absent from the image):
    random = uniform over absent objects; popular = the absent object most frequent over
    all images of the benchmark; adversarial = an absent object differing from a present one
    in exactly one attribute (same colour or same shape), the one co-occurring most with the
    present objects over the benchmark's images.
    """
    rng = make_rng(seed, f"eval:pope:{size}")
    n_images = max(1, num_items // 6)
    scenes = [make_scene(rng, size) for _ in range(n_images)]
    presents = [present_objects(s) for s in scenes]
    freq = Counter(k for p in presents for k in p)
    cooc: Counter = Counter()
    for p in presents:
        for a in p:
            for b in p:
                if a != b:
                    cooc[(a, b)] += 1
    order = {k: i for i, k in enumerate(all_objects())}
    rows: dict[str, list] = {k: [] for k in ("question_id", "question", "answer", "category",
                                             "image", "scene_json")}
    images = [render(s) for s in scenes]
    qid = 0
    for category in ("random", "popular", "adversarial"):
        balance: Counter = Counter()  # per asked object: #yes - #no so far in this category
        for i, (scene, present) in enumerate(zip(scenes, presents)):
            absent = [k for k in all_objects() if k not in present]
            if category == "random":
                neg = rng.choice(absent)
            elif category == "popular":
                neg = max(absent, key=lambda k: (freq[k], -order[k]))
            else:
                near = [k for k in absent if any(_near(k, p) for p in present)]
                score = {k: sum(cooc[(k, p)] for p in present) for k in near}
                top = max(score.values())
                neg = rng.choice([k for k in near if score[k] == top])
            balance[neg] -= 1
            # positive: the present object asked "no" most often so far (random among ties),
            # so that the question text alone predicts the answer as little as possible
            low = min(balance[k] for k in present)
            pos = rng.choice(sorted(k for k in present if balance[k] == low))
            balance[pos] += 1
            pair = [(pos, "yes"), (neg, "no")]
            rng.shuffle(pair)
            for (c, s), ans in pair:
                rows["question_id"].append(f"{qid}")
                rows["question"].append(existence_text(c, s))
                rows["answer"].append(ans)
                rows["category"].append(category)
                rows["image"].append(images[i])
                rows["scene_json"].append(_scene_json(scene))
                qid += 1
    info = _info("synthetic_pope", seed, size, rows["answer"], keys=rows["question"],
                 num_images=n_images,
                 categories={c: {"chance": 0.5, "blind_per_question": _blind(
                     [q for q, k in zip(rows["question"], rows["category"]) if k == c],
                     [a for a, k in zip(rows["answer"], rows["category"]) if k == c])}
                     for c in ("random", "popular", "adversarial")})
    return rows, info


# ----------------------------------------------------------------------------- MMVP
def _mmvp_colour(scene, rng):
    shapes = Counter(o["shape"] for o in scene["objects"])
    cands = [i for i, o in enumerate(scene["objects"]) if shapes[o["shape"]] == 1]
    if not cands:
        return None
    i = rng.choice(cands)
    o = scene["objects"][i]
    new = copy.deepcopy(scene)
    c2 = rng.choice([c for c in COLOURS if c != o["colour"]])
    new["objects"][i]["colour"] = c2
    return new, f"What colour is the {o['shape']}?", o["colour"], c2


def _mmvp_count(scene, rng):
    objs = scene["objects"]
    free = [p for p in POSITIONS if p not in {o["position"] for o in objs}]
    shape = rng.choice(SHAPES)
    n = sum(o["shape"] == shape for o in objs)
    new = copy.deepcopy(scene)
    can_remove = n >= 1 and len(objs) > 1
    if free and (not can_remove or rng.random() < 0.5):
        new["objects"].append(make_object(rng, scene["size"], rng.choice(free), shape=shape))
        sort_objects(new)
        n2 = n + 1
    elif can_remove:
        idx = rng.choice([i for i, o in enumerate(objs) if o["shape"] == shape])
        del new["objects"][idx]
        n2 = n - 1
    else:
        return None
    return new, f"How many {SHAPE_PLURAL[shape]} are there?", str(n), str(n2)


def _mmvp_position(scene, rng):
    objs = scene["objects"]
    free = [p for p in POSITIONS if p not in {o["position"] for o in objs}]
    keys = Counter(object_key(o) for o in objs)
    cands = [i for i, o in enumerate(objs) if keys[object_key(o)] == 1]
    if not free or not cands:
        return None
    i = rng.choice(cands)
    o = objs[i]
    p2 = rng.choice(free)
    half = scene["size"] // 2
    (qx, qy), (qx2, qy2) = ([POSITIONS.index(p) % 2, POSITIONS.index(p) // 2] for p in (o["position"], p2))
    dx, dy = (qx2 - qx) * half, (qy2 - qy) * half
    new = copy.deepcopy(scene)
    m = new["objects"][i]
    m["position"] = p2
    m["bbox"] = [m["bbox"][0] + dx, m["bbox"][1] + dy, m["bbox"][2] + dx, m["bbox"][3] + dy]
    m["center"] = [m["center"][0] + dx, m["center"][1] + dy]
    sort_objects(new)
    return new, f"Where is the {o['colour']} {o['shape']}?", o["position"], p2


def _mmvp_exist(scene, rng):
    objs = scene["objects"]
    keys = Counter(object_key(o) for o in objs)
    cands = [i for i, o in enumerate(objs) if keys[object_key(o)] == 1]
    if not cands:
        return None
    i = rng.choice(cands)
    o = objs[i]
    new = copy.deepcopy(scene)
    m = new["objects"][i]
    if rng.random() < 0.5:
        restyle_object(m, colour=rng.choice([c for c in COLOURS if c != o["colour"]]))
    else:
        restyle_object(m, shape=rng.choice([s for s in SHAPES if s != o["shape"]]))
    return new, existence_text(o["colour"], o["shape"]), "yes", "no"


_MMVP_TYPES: dict[str, Callable] = {"colour": _mmvp_colour, "count": _mmvp_count,
                                    "position": _mmvp_position, "exist": _mmvp_exist}


def make_mmvp(num_items: int = 300, seed: int = 1, size: int = 48) -> tuple[dict[str, list], dict]:
    """MMVP-style rows: ``max(1, num_items // 2)`` pairs. Pair types cycle colour, count,
    position, exist; which image comes first and which option is (a) are random."""
    rng = make_rng(seed, f"eval:mmvp:{size}")
    rows: dict[str, list] = {k: [] for k in ("Index", "Question", "Options", "Correct Answer",
                                             "image", "pair_type", "scene_json")}
    types = list(_MMVP_TYPES)
    for k in range(max(1, num_items // 2)):
        ptype = types[k % len(types)]
        while True:
            scene = make_scene(rng, size)
            made = _MMVP_TYPES[ptype](scene, rng)
            if made is not None:
                break
        new, question, ans_a, ans_b = made
        opts = [ans_a, ans_b]
        rng.shuffle(opts)
        options = f"(a) {opts[0]} (b) {opts[1]}"
        items = [(scene, ans_a), (new, ans_b)]
        rng.shuffle(items)
        for sc, ans in items:
            rows["Index"].append(len(rows["Index"]) + 1)
            rows["Question"].append(question)
            rows["Options"].append(options)
            rows["Correct Answer"].append("(a)" if opts.index(ans) == 0 else "(b)")
            rows["image"].append(render(sc))
            rows["pair_type"].append(ptype)
            rows["scene_json"].append(_scene_json(sc))
    info = _info("synthetic_mmvp", seed, size, rows["Correct Answer"],
                 keys=[q + " " + o for q, o in zip(rows["Question"], rows["Options"])],
                 chance_pair=CHANCE["synthetic_mmvp_pair"], num_pairs=len(rows["Index"]) // 2,
                 pair_types=dict(Counter(rows["pair_type"][::2])))
    return rows, info


# ----------------------------------------------------------------------------- depth
def _png_bytes(image) -> dict:
    """An ``Image()`` cell holding the PNG itself: a 16-bit depth map stays 16-bit (``datasets`` would store a
    PIL ``I;16`` image as TIFF)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def make_depth(num_items: int = 300, seed: int = 1, size: int = 48) -> tuple[dict[str, list], dict]:
    """"Which object is closer?" rows (see the module docstring): ``max(1, num_items // 2)`` pairs, each one RGB
    scene of 2-4 objects with two depth maps in which the two asked objects swap depths. Which row comes first and
    which option is (a) are random."""
    rng = make_rng(seed, f"eval:depth:{size}")
    rows: dict[str, list] = {k: [] for k in ("Index", "Question", "Options", "Correct Answer", "image", "depth",
                                             "pair_type", "scene_json")}
    for _ in range(max(1, num_items // 2)):
        while True:
            scene = assign_depths(make_scene(rng, size, num_objects=rng.randint(2, 4)), rng)
            qa = closer_question(scene, rng)
            if qa is not None:
                break
        near, far = (next(o for o in scene["objects"] if f"{o['colour']} {o['shape']}" == name)
                     for name in (qa["answer"], qa["other"]))
        i, j = scene["objects"].index(near), scene["objects"].index(far)
        swapped = copy.deepcopy(scene)  # the same objects, the asked two at each other's depth
        swapped["objects"][i]["depth"], swapped["objects"][j]["depth"] = far["depth"], near["depth"]
        opts = [qa["answer"], qa["other"]]
        rng.shuffle(opts)
        items = [(scene, qa["answer"]), (swapped, qa["other"])]
        rng.shuffle(items)
        image = render(scene)  # one RGB image for both rows: render() ignores depth
        for sc, ans in items:
            rows["Index"].append(len(rows["Index"]) + 1)
            rows["Question"].append(qa["question"])
            rows["Options"].append(f"(a) {opts[0]} (b) {opts[1]}")
            rows["Correct Answer"].append("(a)" if opts.index(ans) == 0 else "(b)")
            rows["image"].append(image)
            rows["depth"].append(_png_bytes(render_depth(sc)))
            rows["pair_type"].append("closer")
            rows["scene_json"].append(_scene_json(sc))
    info = _info("synthetic_depth", seed, size, rows["Correct Answer"],
                 keys=[q + " " + o for q, o in zip(rows["Question"], rows["Options"])],
                 chance_pair=CHANCE["synthetic_depth_pair"], num_pairs=len(rows["Index"]) // 2,
                 rgb_only=("every pair shares its RGB image: a model that ignores the depth map scores exactly 0.5 "
                           "per question and 0 per pair"))  # fmt: skip
    return rows, info


# ----------------------------------------------------------------------------- short answer
def _other(rng: random.Random, values: Sequence[str], exclude: str) -> str:
    return rng.choice([v for v in values if v != exclude])


def _count_item(sub: str, target: str, scene_rng: random.Random, size: int):
    n = int(target)
    if sub == "total":
        scene = make_scene(scene_rng, size, num_objects=n)
        return scene, "How many objects are there?"
    k = scene_rng.randint(max(n, 1), 4)
    scene = make_scene(scene_rng, size, num_objects=k)
    objs = scene["objects"]
    chosen = set(scene_rng.sample(range(k), n))
    if sub == "shape":
        shape = scene_rng.choice(SHAPES)
        for i, o in enumerate(objs):
            restyle_object(o, shape=shape if i in chosen else _other(scene_rng, SHAPES, shape))
        return scene, f"How many {SHAPE_PLURAL[shape]} are there?"
    colour = scene_rng.choice(COLOURS)
    for i, o in enumerate(objs):
        restyle_object(o, colour=colour if i in chosen else _other(scene_rng, COLOURS, colour))
    return scene, f"How many {colour} objects are there?"


def _colour_item(sub: str, target: str, scene_rng: random.Random, size: int):
    scene = make_scene(scene_rng, size)
    objs = scene["objects"]
    i = scene_rng.randrange(len(objs))
    o = restyle_object(objs[i], colour=target)
    if sub == "at_position":
        return scene, f"What colour is the object at the {o['position']}?"
    for j, other in enumerate(objs):  # make the asked shape unique
        if j != i and other["shape"] == o["shape"]:
            restyle_object(other, shape=_other(scene_rng, SHAPES, o["shape"]))
    return scene, f"What colour is the {o['shape']}?"


def _position_item(sub: str, target: str, scene_rng: random.Random, size: int):
    while True:
        scene = make_scene(scene_rng, size)
        at = [o for o in scene["objects"] if o["position"] == target]
        if at:
            break
    o = at[0]
    for other in scene["objects"]:
        if other is o:
            continue
        if sub == "of_shape" and other["shape"] == o["shape"]:
            restyle_object(other, shape=_other(scene_rng, SHAPES, o["shape"]))
        if sub == "of_object" and object_key(other) == object_key(o):
            restyle_object(other, colour=_other(scene_rng, COLOURS, o["colour"]))
    if sub == "of_shape":
        return scene, f"Where is the {o['shape']}?"
    return scene, f"Where is the {o['colour']} {o['shape']}?"


# family -> (builder, {subtype: answer vocabulary})
_SHORT_SPECS: dict[str, tuple[Callable, dict[str, tuple[str, ...]]]] = {
    "count": (_count_item, {"shape": ("0", "1", "2", "3", "4"), "colour": ("1", "2", "3", "4"),
                            "total": ("1", "2", "3", "4")}),
    "colour": (_colour_item, {"of_shape": COLOURS, "at_position": COLOURS}),
    "position": (_position_item, {"of_object": POSITIONS, "of_shape": POSITIONS}),
}


def _subtype_chance(qtype: str) -> float:
    """``"count:total"`` -> 1 / number of possible answers of that subtype."""
    fam, sub = qtype.split(":")
    return 1.0 / len(_SHORT_SPECS[fam][1][sub])


# Subtypes take turns, so a benchmark's chance is the mean of its subtypes' chances.
for _name, _fam in _SHORT_FAMILY.items():
    _subs = _SHORT_SPECS[_fam][1]
    CHANCE[_name] = sum(1.0 / len(v) for v in _subs.values()) / len(_subs)

_CHECK = {"count": count_questions, "colour": colour_questions, "position": position_questions}


def make_short_answer(name: str, num_items: int = 300, seed: int = 1,
                      size: int = 48) -> tuple[dict[str, list], dict]:
    """GQA-like rows for ``synthetic_count`` / ``synthetic_colour`` / ``synthetic_position``,
    one question per held-out image. Question subtypes take turns, and each item's answer is
    the least-used one of its subtype so far (random among ties); the scene is then built to
    have that answer. So answers are balanced within every subtype, and a blind model that
    only learns answer priors stays near chance."""
    fam = _SHORT_FAMILY[name]
    builder, subtypes = _SHORT_SPECS[fam]
    rng = make_rng(seed, f"eval:{name}:{size}")
    rows: dict[str, list] = {k: [] for k in ("question_id", "question", "answer", "question_type",
                                             "image", "scene_json")}
    used: dict[str, Counter] = {t: Counter() for t in subtypes}
    names = list(subtypes)
    for i in range(max(1, num_items)):
        sub = names[i % len(names)]
        lo = min(used[sub][a] for a in subtypes[sub])
        target = rng.choice([a for a in subtypes[sub] if used[sub][a] == lo])
        used[sub][target] += 1
        scene, question = builder(sub, target, rng, size)
        sort_objects(scene)
        check = {q["question"]: q["answer"] for q in _CHECK[fam](scene)}
        if check.get(question) != target:  # the question must be valid and exact for the scene
            raise AssertionError(f"internal error: {question!r} -> {check.get(question)!r} != {target!r}")
        rows["question_id"].append(f"{i}")
        rows["question"].append(question)
        rows["answer"].append(target)
        rows["question_type"].append(f"{fam}:{sub}")
        rows["image"].append(render(scene))
        rows["scene_json"].append(_scene_json(scene))
    info = _info(name, seed, size, rows["answer"], rows["question_type"], keys=rows["question"])
    return rows, info


# ----------------------------------------------------------------------------- all
def write_benchmarks(out_dir: str, num_items: int = 300, seed: int = 1, size: int = 48,
                     names: Sequence[str] = BENCHMARKS) -> dict[str, str]:
    """Generate and save the benchmarks to ``out_dir/<name>/``; return ``{name: path}``.

    ``num_items`` is the row count per benchmark (POPE rounds down to a multiple of 6, MMVP
    to a multiple of 2). Use a ``seed`` different from the training data's (train defaults
    to 0, benchmarks to 1); streams are also separated by name, so scenes are held out.
    Also writes ``out_dir/chance.json`` (``{name: info}`` for all benchmarks written).
    """
    paths, infos = {}, {}
    makers = {"synthetic_pope": make_pope, "synthetic_mmvp": make_mmvp, "synthetic_depth": make_depth,
              **{n: functools.partial(make_short_answer, n) for n in _SHORT_FAMILY}}  # fmt: skip
    for name in names:
        if name not in makers:
            raise KeyError(f"unknown synthetic benchmark {name!r} (known: {', '.join(makers)})")
        rows, info = makers[name](num_items, seed, size)
        paths[name] = _save(rows, os.path.join(out_dir, name), info)
        infos[name] = info
    with open(os.path.join(out_dir, "chance.json"), "w") as f:
        f.write(json.dumps(infos, indent=1, sort_keys=True) + "\n")
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description="Write the synthetic benchmarks (HF save_to_disk).")
    p.add_argument("--out", required=True)
    p.add_argument("--num-items", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--names", nargs="*", default=list(BENCHMARKS), help=f"default: {' '.join(BENCHMARKS)}; also "
                   f"{' '.join(DEPTH_BENCHMARKS)}")
    a = p.parse_args(argv)
    paths = write_benchmarks(a.out, a.num_items, a.seed, a.size, a.names)
    for name, path in paths.items():
        info = read_benchmark_info(path)
        print(f"{name}: {info['num_rows']} rows, chance {info['chance']:.3f}, "
              f"majority {info['majority']:.3f}, blind {info['blind_per_question']:.3f} -> {path}")
    return paths


if __name__ == "__main__":
    main()
