"""Training data from the synthetic world (``synthetic/world.py``): LLaVA-format JSON for stage 1 (captions) and
stage 2 (questions about colour, shape, count, position and existence, plus text-only turns), optionally with
caption -> image "creation" samples for the generative variant (`condition="queries"`, `--creation-fraction`).

    python -m ross.train.synthetic --out DIR --num-images N --stage {plain,sft} [--depth-questions] [--with-depth]

With ``--with-depth`` every image record is an RGB-D pair in SpatialBot's layout: ``"image": [rgb, depth]`` with two
``<image>`` placeholders and ``"depth_images": [1]`` (the depth map, a 16-bit PNG in millimetres, is read with the depth
rule ``depth_to_rgb``); ROSS reconstructs both images.

Benchmarks built on held-out scenes of the same world live in ``eval/synthetic.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Sequence

from ross.synthetic.world import (
    COLOURS,
    SHAPES,
    SHORT_ANSWER_PROMPT,
    as_mcq,
    assign_depths,
    caption,
    closer_question,
    colour_presence_labels,
    existence_question,
    make_rng,
    make_scene,
    render,
    render_depth,
    scene_questions,
)

__all__ = ["CREATION_PROMPT", "load_scenes", "write_llava_dataset", "main"]

# The user turn of a creation sample; the assistant turn is the image, reconstructed from the queries.
CREATION_PROMPT = "Create an image of {caption}."


def _sft_answer(qa: dict) -> str:
    a = qa["answer"]
    if qa["type"] in ("exist", "colour", "shape"):
        return a.capitalize()  # "Yes", "No", "Red", "Circle"
    return a  # "2", "top left", "A"



def load_scenes(json_path: str) -> list[dict]:
    """Read the ``<name>_scenes.jsonl`` written beside a LLaVA JSON by
    :func:`write_llava_dataset`: ``[{"id", "image" (absolute path), "scene", "colour_labels"}]`` (+ ``"depth"``, an
    absolute path, for RGB-D data)."""
    base = json_path[:-5] if json_path.endswith(".json") else json_path
    root = os.path.dirname(os.path.abspath(base))
    out = []
    with open(base + "_scenes.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            rec["image"] = os.path.join(root, rec["image"])
            if "depth" in rec:
                rec["depth"] = os.path.join(root, rec["depth"])
            out.append(rec)
    return out


# ----------------------------------------------------------------------------- text-only
def _text_only_turns(rng: random.Random) -> list[tuple[str, str]]:
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return [(f"What is {a} plus {b}?", str(a + b))]
    if kind == 1:
        a = rng.randint(2, 12)
        b = rng.randint(1, a)
        return [(f"What is {a} minus {b}?", str(a - b))]
    if kind == 2:
        word = rng.choice(COLOURS + SHAPES)
        ans = "Colour" if word in COLOURS else "Shape"
        return [(f"Is {word} a colour or a shape?", ans)]
    if kind == 3:
        return [("How many sides does a triangle have?", "3")] if rng.random() < 0.5 else \
               [("How many sides does a square have?", "4")]
    c = rng.choice(COLOURS)
    other = rng.choice(("table", "apple", "seven", "circle", "run"))
    opts = [c, other]
    rng.shuffle(opts)
    return [(f"Which word is a colour: {opts[0]} or {opts[1]}?", c.capitalize())]


# ----------------------------------------------------------------------------- LLaVA json
def _sft_turns(scene: dict, rng: random.Random, depth_questions: bool = False) -> list[tuple[str, str]]:
    n_turns = rng.randint(1, 3)
    families = ["exist", "colour", "shape", "count", "position", "mcq", "describe"]
    weights = [3, 2, 1, 2, 2, 1, 0.5]
    if depth_questions:  # "which object is closer?" (two-option MCQ), as often as the other frequent families
        families, weights = families + ["closer"], weights + [3]
    chosen: list[str] = []
    while len(chosen) < n_turns:
        f = rng.choices(families, weights=weights)[0]
        if f not in chosen:
            chosen.append(f)
    turns = []
    for fam in chosen:
        if fam == "describe":
            turns.append(("Describe the image briefly.", caption(scene).capitalize() + "."))
            continue
        if fam == "closer":
            qa = closer_question(scene, rng)
            if qa is not None:
                qa = as_mcq(qa, rng)
                turns.append((qa["question"], qa["answer"]))
            continue
        if fam == "mcq":
            base = scene_questions(scene, rng, [rng.choice(("exist", "colour", "count", "position"))])
            if not base:
                continue
            qa = as_mcq(base[0], rng)
            turns.append((qa["question"], qa["answer"]))
            continue
        qs = scene_questions(scene, rng, [fam])
        if not qs:
            continue
        turns.append((f"{qs[0]['question']}\n{SHORT_ANSWER_PROMPT}", _sft_answer(qs[0])))
    if not turns:  # every scene admits existence and count questions
        qa = existence_question(scene, rng)
        turns.append((f"{qa['question']}\n{SHORT_ANSWER_PROMPT}", _sft_answer(qa)))
    return turns


def _conversation(turns: Sequence[tuple[str, str]], with_image: bool, num_images: int = 1) -> list[dict]:
    conv = []
    for i, (q, a) in enumerate(turns):
        if i == 0 and with_image:
            images = "\n".join(["<image>"] * num_images)
            q = images + "\n" + q if q else images
        conv.append({"from": "human", "value": q})
        conv.append({"from": "gpt", "value": a})
    return conv


def write_llava_dataset(out_dir: str, num_images: int = 1000, seed: int = 0, size: int = 48,
                        stage: str = "sft", name: str | None = None,
                        text_only_fraction: float = 0.1, creation_fraction: float = 0.0,
                        with_depth: bool = False, depth_questions: bool | None = None) -> str:
    """Write ``num_images`` PNGs to ``out_dir/images/`` and ``out_dir/<name>.json`` (LLaVA
    format); return the JSON path. ``name`` defaults to ``synthetic_<stage>``.

    * ``stage="plain"``: one turn per image, human ``"<image>"``, gpt = :func:`caption`.
    * ``stage="sft"``: 1-3 short-answer QA turns per image (the first human turn starts
      with ``"<image>\\n"``; questions end with :data:`SHORT_ANSWER_PROMPT`, or are two-option
      MCQs ending with :data:`MCQ_PROMPT`), plus ``round(num_images * f / (1 - f))``
      text-only records (no ``image`` key), ``f = text_only_fraction``, and
      ``round(num_images * creation_fraction)`` creation records (generative variant, ``condition="queries"``): a new
      scene each, human :data:`CREATION_PROMPT` with its caption, gpt ``"<query>"``, the scene's image as the target.
      Creation scenes come from their own random stream, so the other records do not depend on it.

    Depth (SpatialBot-style RGB-D, the paper's Table 5):

    * ``depth_questions`` (default: ``with_depth``): every scene gets object depths (:func:`assign_depths`, drawn
      from their own random stream) and stage-2 records can ask "Which object is closer to the camera?" (two-option
      MCQ). The scene stream also draws the questions, so stage-2 scenes differ from those written without it.
    * ``with_depth``: every image record also carries the scene's depth map (:func:`render_depth`, a 16-bit PNG
      ``images/<id>_depth.png``): ``"image": [rgb, depth]``, ``"depth_images": [1]`` and two ``<image>``
      placeholders. The same arguments without ``with_depth`` give the same conversations on the RGB image only.

    ``name`` then defaults to ``synthetic_<stage>_depth_rgbd`` / ``synthetic_<stage>_depth_rgb``.

    Also writes ``out_dir/<name>_scenes.jsonl`` (one line per image: id, image, scene,
    colour_labels, and ``depth`` when written; comprehension images only), read back by :func:`load_scenes`.
    """
    if stage not in ("plain", "sft"):
        raise ValueError(f"stage must be 'plain' or 'sft', got {stage!r}")
    if creation_fraction and stage != "sft":
        raise ValueError(f"creation samples are chat turns: creation_fraction needs stage='sft', got {stage!r}")
    depth_questions = with_depth if depth_questions is None else depth_questions
    if with_depth and not depth_questions:
        raise ValueError("with_depth=True needs depth_questions (the depth map is drawn from the scene's depths)")
    suffix = ("_depth_rgbd" if with_depth else "_depth_rgb") if depth_questions else ""
    name = name or f"synthetic_{stage}{suffix}"
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    rng = make_rng(seed, f"train:{stage}:{size}")
    depth_rng = make_rng(seed, f"train:depth:{size}")  # its own stream: with or without the map, the same scenes
    records, scene_lines = [], []
    for i in range(num_images):
        scene = make_scene(rng, size)
        if depth_questions:
            assign_depths(scene, depth_rng)
        rid = f"{name}_{seed}_{i:06d}"
        rel = f"images/{rid}.png"
        render(scene).save(os.path.join(out_dir, rel), format="PNG")
        num_images_here = 2 if with_depth else 1
        if stage == "plain":
            conv = _conversation([("", caption(scene))], with_image=True, num_images=num_images_here)
        else:
            conv = _conversation(_sft_turns(scene, rng, depth_questions), with_image=True, num_images=num_images_here)
        record = {"id": rid, "image": rel, "conversations": conv}
        line = {"id": rid, "image": rel, "scene": scene, "colour_labels": colour_presence_labels(scene)}
        if with_depth:
            depth_rel = f"images/{rid}_depth.png"
            render_depth(scene).save(os.path.join(out_dir, depth_rel), format="PNG")
            record.update(image=[rel, depth_rel], depth_images=[1])
            line["depth"] = depth_rel
        records.append(record)
        scene_lines.append(json.dumps(line))
    if stage == "sft" and text_only_fraction > 0:
        f = float(text_only_fraction)
        n_text = round(num_images * f / (1.0 - f))
        trng = make_rng(seed, f"train:text:{size}")
        for j in range(n_text):
            rec = {"id": f"{name}_{seed}_text_{j:06d}",
                   "conversations": _conversation(_text_only_turns(trng), with_image=False)}
            # spread text-only records evenly through the file
            pos = min(len(records), round((j + 0.5) * len(records) / max(n_text, 1)) + j)
            records.insert(pos, rec)
    n_create = round(num_images * float(creation_fraction))
    crng = make_rng(seed, f"train:create:{size}")
    for j in range(n_create):
        scene = make_scene(crng, size)
        rid = f"{name}_{seed}_create_{j:06d}"
        rel = f"images/{rid}.png"
        render(scene).save(os.path.join(out_dir, rel), format="PNG")
        conv = [{"from": "human", "value": CREATION_PROMPT.format(caption=caption(scene))},
                {"from": "gpt", "value": "<query>"}]
        pos = min(len(records), round((j + 0.5) * len(records) / max(n_create, 1)) + j)
        records.insert(pos, {"id": rid, "image": rel, "conversations": conv})
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
    with open(os.path.join(out_dir, f"{name}_scenes.jsonl"), "w") as f:
        f.write("\n".join(scene_lines) + ("\n" if scene_lines else ""))
    return path


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description="Write synthetic LLaVA-format training data.")
    p.add_argument("--out", required=True)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--stage", choices=("plain", "sft"), default="sft")
    p.add_argument("--name", default=None)
    p.add_argument("--text-only-fraction", type=float, default=0.1)
    p.add_argument("--creation-fraction", type=float, default=0.0,
                   help="caption -> image creation records per image (generative variant, condition='queries')")
    p.add_argument("--depth-questions", action="store_true", help="scenes with depths, 'which is closer?' turns")
    p.add_argument("--with-depth", action="store_true", help="RGB + depth map per record (SpatialBot layout)")
    a = p.parse_args(argv)
    path = write_llava_dataset(a.out, a.num_images, a.seed, a.size, a.stage, a.name, a.text_only_fraction,
                               a.creation_fraction, with_depth=a.with_depth,
                               depth_questions=a.depth_questions or a.with_depth)
    print(path)
    return path


if __name__ == "__main__":
    main()
