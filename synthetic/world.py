"""A small synthetic "fine-grained world" for training and testing ROSS offline.

Every image is a ``size x size`` RGB picture (default 48x48) on a grey, plain or lightly
textured background, holding 1-4 small objects. An object has a shape (circle, square,
triangle), a colour (one of :data:`COLOURS`) and a position: the quadrant it lies in
(``"top left"``, ``"top right"``, ``"bottom left"``, ``"bottom right"``). There is at most one
object per quadrant, and objects keep a one-pixel margin inside their quadrant, so they
never overlap or touch. A scene is a plain JSON-serialisable dict, so every question about
it has an exact answer, and :func:`render` draws it deterministically (no anti-aliasing:
object pixels carry exactly the colour's RGB value).

Scene dict::

    {"size": 48, "background": [118, 118, 118], "texture": 6, "texture_seed": 123456,
     "objects": [{"shape": "circle", "colour": "red", "position": "top left",
                  "bbox": [x0, y0, x1, y1],      # inclusive pixel box
                  "center": [x, y]},              # a pixel guaranteed inside the shape
                 ...]}                            # objects in reading (quadrant) order

Depth (optional, SpatialBot-style RGB-D): :func:`assign_depths` gives every object a distance to the camera in
millimetres (``"depth"``, distinct per scene, one of :data:`DEPTH_LEVELS_MM`) and the scene a background depth;
:func:`render_depth` draws the single-channel 16-bit depth map (nearer objects over farther ones). Depth is drawn
independently of an object's size and position, and :func:`render` ignores it, so the RGB image says nothing about
which object is nearer: only the depth map does. Levels are multiples of 32 mm below 1024 mm, so SpatialBot's
3-channel packing (``modeling_ross.processing_ross.depth_to_rgb``) orders them by its green channel alone.

This module is the world only (scenes, rendering, questions with exact answers); it imports nothing of ours, so
both sides use it without depending on each other: ``train/synthetic.py`` writes training data in the LLaVA JSON
format from it, ``eval/synthetic.py`` builds the held-out benchmarks.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "COLOUR_RGB",
    "SHAPES",
    "POSITIONS",
    "COUNT_ANSWERS",
    "SHORT_ANSWER_PROMPT",
    "MCQ_PROMPT",
    "make_rng",
    "make_scene",
    "make_object",
    "restyle_object",
    "render",
    "object_key",
    "present_objects",
    "all_objects",
    "caption",
    "existence_question",
    "colour_questions",
    "shape_questions",
    "count_questions",
    "position_questions",
    "scene_questions",
    "colour_presence_labels",
    "iter_scenes",
    "as_mcq",
    "DEPTH_LEVELS_MM",
    "BACKGROUND_DEPTH_MM",
    "assign_depths",
    "render_depth",
    "closer_question",
]

# ----------------------------------------------------------------------------- the world
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SHAPE_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
# Quadrants in reading order; the value is (column, row) of the quadrant.
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
_QUADRANT = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
COUNT_ANSWERS: tuple[str, ...] = ("0", "1", "2", "3", "4")

# A mild, fixed prior over attributes, so that "popular" objects exist (as in POPE, where
# frequent COCO objects are the most hallucinated ones). Uniform would make them meaningless.
COLOUR_WEIGHTS = (0.28, 0.22, 0.20, 0.17, 0.13)
SHAPE_WEIGHTS = (0.40, 0.33, 0.27)

# Prompt suffixes as used by LLaVA-1.5's instruction data and by lmms-eval's POPE/GQA/MMVP tasks.
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MCQ_PROMPT = "Answer with the option's letter from the given choices directly."

MIN_SIZE = 16

# Depth (millimetres): multiples of 32 below 1024, so the 3-channel packing is monotonic in its green channel.
DEPTH_LEVELS_MM: tuple[int, ...] = tuple(range(320, 993, 32))
BACKGROUND_DEPTH_MM = 1023  # a wall behind every object


def make_rng(seed: int | str | random.Random, stream: str = "") -> random.Random:
    """A ``random.Random`` seeded from ``(seed, stream)``; deterministic across processes
    (string seeds are hashed with SHA-512, not with the randomised ``hash()``)."""
    if isinstance(seed, random.Random):
        return seed
    return random.Random(f"ross-synthetic:{seed}:{stream}")


def _as_rng(rng: int | random.Random | None) -> random.Random:
    if rng is None:
        return make_rng(0)
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, (int, np.integer, str)):
        return make_rng(int(rng) if not isinstance(rng, str) else rng)
    raise TypeError(f"rng must be a random.Random or an int seed, got {type(rng)!r}")


def _object_bbox(rng: random.Random, size: int, position: str) -> list[int]:
    half = size // 2
    qx, qy = _QUADRANT[position]
    lo = max(5, round(0.20 * size))
    hi = max(lo, min(round(0.30 * size), half - 2))
    s = rng.randint(lo, hi)
    # one-pixel margin inside the quadrant: objects never touch across quadrant borders
    x0 = qx * half + 1 + rng.randint(0, half - 2 - s)
    y0 = qy * half + 1 + rng.randint(0, half - 2 - s)
    return [x0, y0, x0 + s - 1, y0 + s - 1]


def _center(shape: str, bbox: Sequence[int]) -> list[int]:
    x0, y0, x1, y1 = bbox
    cx = (x0 + x1) // 2
    if shape == "triangle":  # apex up: the centroid (2/3 down) is well inside
        cy = y0 + (2 * (y1 - y0)) // 3
    else:
        cy = (y0 + y1) // 2
    return [cx, cy]


def make_object(rng: random.Random, size: int, position: str,
                colour: str | None = None, shape: str | None = None) -> dict:
    """One object in quadrant ``position`` with a random (or given) colour and shape."""
    if colour is None:
        colour = rng.choices(COLOURS, weights=COLOUR_WEIGHTS)[0]
    if shape is None:
        shape = rng.choices(SHAPES, weights=SHAPE_WEIGHTS)[0]
    bbox = _object_bbox(rng, size, position)
    return {"shape": shape, "colour": colour, "position": position, "bbox": bbox,
            "center": _center(shape, bbox)}


def restyle_object(o: dict, colour: str | None = None, shape: str | None = None) -> dict:
    """Change an object's colour and/or shape in place (same box; centre recomputed)."""
    if colour is not None:
        o["colour"] = colour
    if shape is not None:
        o["shape"] = shape
        o["center"] = _center(shape, o["bbox"])
    return o


def make_scene(rng: int | random.Random | None = None, size: int = 48,
               num_objects: int | None = None) -> dict:
    """A random scene (see the module docstring for the dict layout).

    ``rng`` is a ``random.Random`` (advanced in place) or an int seed. ``num_objects``
    (1-4) defaults to a uniform draw.
    """
    rng = _as_rng(rng)
    size = int(size)
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    k = rng.randint(1, 4) if num_objects is None else int(num_objects)
    if not 1 <= k <= 4:
        raise ValueError("num_objects must be in 1..4")
    grey = rng.randint(96, 140)
    texture = rng.choice((0, 0, 4, 8))
    texture_seed = rng.getrandbits(32)
    positions = sorted(rng.sample(POSITIONS, k), key=POSITIONS.index)
    objects = [make_object(rng, size, p) for p in positions]
    return {"size": size, "background": [grey, grey, grey], "texture": texture,
            "texture_seed": texture_seed, "objects": objects}


def sort_objects(scene: dict) -> dict:
    scene["objects"].sort(key=lambda o: POSITIONS.index(o["position"]))
    return scene


def render(scene: dict) -> Image.Image:
    """Draw ``scene`` as an RGB ``PIL.Image`` (deterministic: same scene -> same pixels)."""
    size = scene["size"]
    bg = np.empty((size, size, 3), dtype=np.int16)
    bg[:] = np.asarray(scene["background"], dtype=np.int16)
    amp = int(scene.get("texture", 0))
    if amp:
        noise = np.random.default_rng(scene["texture_seed"]).integers(-amp, amp + 1, (size, size, 1))
        bg += noise.astype(np.int16)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        _draw_shape(draw, o, COLOUR_RGB[o["colour"]])
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, o: dict, fill) -> None:
    x0, y0, x1, y1 = o["bbox"]
    if o["shape"] == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif o["shape"] == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif o["shape"] == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {o['shape']!r}")


# ----------------------------------------------------------------------------- depth
def assign_depths(scene: dict, rng: random.Random) -> dict:
    """Give every object a distinct ``"depth"`` (mm, from :data:`DEPTH_LEVELS_MM`, drawn with ``rng`` independently
    of size and position) and the scene its ``"background_depth"``; in place, returns ``scene``."""
    for o, depth in zip(scene["objects"], rng.sample(DEPTH_LEVELS_MM, len(scene["objects"]))):
        o["depth"] = depth
    scene["background_depth"] = BACKGROUND_DEPTH_MM
    return scene


def render_depth(scene: dict) -> Image.Image:
    """The scene's depth map: a ``size x size`` 16-bit single-channel image (``I;16``, millimetres, as SpatialBot
    stores depth), every object's pixels at its depth, farther objects drawn first. Needs :func:`assign_depths`."""
    if "background_depth" not in scene or any("depth" not in o for o in scene["objects"]):
        raise ValueError("the scene has no depths: call assign_depths(scene, rng) first")
    size = scene["size"]
    depth = np.full((size, size), scene["background_depth"], dtype=np.uint16)
    for o in sorted(scene["objects"], key=lambda o: -o["depth"]):
        mask = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask), o, 255)  # the very pixels render() colours
        depth[np.asarray(mask) > 0] = o["depth"]
    return Image.fromarray(depth)


# ----------------------------------------------------------------------------- questions
def object_key(o: dict) -> tuple[str, str]:
    """``(colour, shape)``: an object's identity for existence questions."""
    return (o["colour"], o["shape"])


def all_objects() -> list[tuple[str, str]]:
    """Every ``(colour, shape)`` pair of the world, in a fixed order."""
    return [(c, s) for c in COLOURS for s in SHAPES]


def present_objects(scene: dict) -> set[tuple[str, str]]:
    return {object_key(o) for o in scene["objects"]}


def _phrase(o: dict) -> str:
    return f"a {o['colour']} {o['shape']} at the {o['position']}"


def caption(scene: dict) -> str:
    """E.g. "a red circle at the top left and a blue square at the bottom right"."""
    parts = [_phrase(o) for o in sorted(scene["objects"], key=lambda o: POSITIONS.index(o["position"]))]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _qa(qtype: str, question: str, answer: str, **extra) -> dict:
    return {"type": qtype, "question": question, "answer": answer, **extra}


def existence_text(colour: str, shape: str) -> str:
    return f"Is there a {colour} {shape} in the image?"


def existence_question(scene: dict, rng: random.Random, positive: bool | None = None,
                       hard_negative: bool | None = None) -> dict:
    """A yes/no existence question. Negatives are either random absent objects or
    "hard" ones that differ from a present object in exactly one attribute."""
    present = present_objects(scene)
    if positive is None:
        positive = rng.random() < 0.5
    if positive:
        c, s = rng.choice(sorted(present))
        return _qa("exist", existence_text(c, s), "yes", colour=c, shape=s)
    absent = [k for k in all_objects() if k not in present]
    if hard_negative is None:
        hard_negative = rng.random() < 0.5
    if hard_negative:
        near = [k for k in absent if any((k[0] == p[0]) != (k[1] == p[1]) for p in present)]
        absent = near or absent
    c, s = rng.choice(absent)
    return _qa("exist", existence_text(c, s), "no", colour=c, shape=s)


def colour_questions(scene: dict) -> list[dict]:
    """"What colour is the square?" (shape unique in the scene) and
    "What colour is the object at the top left?"."""
    out = []
    shapes = Counter(o["shape"] for o in scene["objects"])
    for o in scene["objects"]:
        if shapes[o["shape"]] == 1:
            out.append(_qa("colour", f"What colour is the {o['shape']}?", o["colour"]))
        out.append(_qa("colour", f"What colour is the object at the {o['position']}?", o["colour"]))
    return out


def shape_questions(scene: dict) -> list[dict]:
    """"What shape is the red object?" (colour unique) and "What shape is the object at
    the top left?"."""
    out = []
    colours = Counter(o["colour"] for o in scene["objects"])
    for o in scene["objects"]:
        if colours[o["colour"]] == 1:
            out.append(_qa("shape", f"What shape is the {o['colour']} object?", o["shape"]))
        out.append(_qa("shape", f"What shape is the object at the {o['position']}?", o["shape"]))
    return out


def count_questions(scene: dict) -> list[dict]:
    """Counts of every shape (0 included), of every present colour and of all objects."""
    objs = scene["objects"]
    out = [_qa("count", f"How many {SHAPE_PLURAL[s]} are there?",
               str(sum(o["shape"] == s for o in objs))) for s in SHAPES]
    out += [_qa("count", f"How many {c} objects are there?", str(sum(o["colour"] == c for o in objs)))
            for c in COLOURS if any(o["colour"] == c for o in objs)]
    out.append(_qa("count", "How many objects are there?", str(len(objs))))
    return out


def position_questions(scene: dict) -> list[dict]:
    """"Where is the blue circle?" (colour+shape unique) and "Where is the square?" (shape
    unique) -> a quadrant name."""
    out = []
    keys = Counter(object_key(o) for o in scene["objects"])
    shapes = Counter(o["shape"] for o in scene["objects"])
    for o in scene["objects"]:
        if keys[object_key(o)] == 1:
            out.append(_qa("position", f"Where is the {o['colour']} {o['shape']}?", o["position"]))
        if shapes[o["shape"]] == 1:
            out.append(_qa("position", f"Where is the {o['shape']}?", o["position"]))
    return out


CLOSER_QUESTION = "Which object is closer to the camera?"


def closer_question(scene: dict, rng: random.Random) -> dict | None:
    """"Which object is closer to the camera?" between two objects named by colour and shape (each unique in the
    scene), or None when fewer than two are. The answer is the nearer one's name (e.g. ``"red circle"``); ``other``
    is the farther one's. Needs :func:`assign_depths`."""
    keys = Counter(object_key(o) for o in scene["objects"])
    named = [o for o in scene["objects"] if keys[object_key(o)] == 1]
    if len(named) < 2:
        return None
    a, b = sorted(rng.sample(named, 2), key=lambda o: o["depth"])
    return _qa("closer", CLOSER_QUESTION, f"{a['colour']} {a['shape']}", other=f"{b['colour']} {b['shape']}")


ANSWER_VOCAB: dict[str, tuple[str, ...]] = {
    "exist": ("yes", "no"),
    "colour": COLOURS,
    "shape": SHAPES,
    "count": COUNT_ANSWERS,
    "position": POSITIONS,
}


def scene_questions(scene: dict, rng: random.Random, families: Sequence[str] | None = None) -> list[dict]:
    """One random question per family (``exist``, ``colour``, ``shape``, ``count``,
    ``position``); families with no valid question for this scene are skipped."""
    families = families or ("exist", "colour", "shape", "count", "position")
    builders = {"colour": colour_questions, "shape": shape_questions,
                "count": count_questions, "position": position_questions}
    out = []
    for fam in families:
        if fam == "exist":
            out.append(existence_question(scene, rng))
            continue
        cands = builders[fam](scene)
        if cands:
            out.append(rng.choice(cands))
    return out


def as_mcq(qa: dict, rng: random.Random) -> dict:
    """Two-option multiple choice in the lmms-eval MMVP prompt format:
    "Q\\nA. x\\nB. y\\nAnswer with the option's letter..." -> "A"/"B"."""
    if "other" in qa:  # a comparison: the other option is given
        wrong = qa["other"]
    else:
        wrong = rng.choice([v for v in ANSWER_VOCAB[qa["type"]] if v != qa["answer"]])
    opts = [qa["answer"], wrong]
    rng.shuffle(opts)
    letter = "AB"[opts.index(qa["answer"])]
    q = f"{qa['question']}\nA. {opts[0]}\nB. {opts[1]}\n{MCQ_PROMPT}"
    return {"type": "mcq", "question": q, "answer": letter, "short": True}


def colour_presence_labels(scene: dict) -> list[int]:
    """Multi-hot over :data:`COLOURS`: 1 where an object of that colour is present."""
    present = {o["colour"] for o in scene["objects"]}
    return [int(c in present) for c in COLOURS]


def iter_scenes(num: int, seed: int = 0, size: int = 48, stream: str = "vision",
                with_images: bool = True) -> Iterator[tuple[dict, Image.Image | None]]:
    """Yield ``(scene, image)`` pairs (image ``None`` if ``with_images=False``), e.g. to fit
    a tiny vision tower on :func:`colour_presence_labels` or a tiny VAE as an autoencoder."""
    rng = make_rng(seed, f"{stream}:{size}")
    for _ in range(num):
        scene = make_scene(rng, size)
        yield scene, (render(scene) if with_images else None)
