"""Issue 23's cases run as a user would, printed as a Markdown table: exit code, whether a traceback was printed, and
the error line (else the last line of stdout). Not collected by pytest (the assertions are in test_reliability3.py).

    HF_HUB_OFFLINE=1 .venv/bin/python tests/reliability3_cases.py /tmp/issue23    # from the repo root, ~5-8 min on CPU
    ONLY=convert_official .venv/bin/python tests/reliability3_cases.py /tmp/issue23  # the cases whose name holds it

The Space rows call the upload component's `preprocess` directly, so its `gr.Error` shows as a traceback here; in the
running app Gradio shows that message in the page.
"""
import io, json, os, shutil, subprocess, sys, textwrap
from pathlib import Path

import numpy as np
from PIL import Image

W = Path(sys.argv[1])  # work folder
ROOT = Path.cwd()
PY = sys.executable
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
W.mkdir(parents=True, exist_ok=True)


def first_line(text):
    lines = [l for l in text.replace("\r", "\n").splitlines() if l.strip() and "Loading weights" not in l
             and not l.lstrip().startswith(("0%", "  0%")) and "it/s]" not in l]
    errs = [l for l in lines if l.startswith("error:") or "Error" in l.split(":")[0]]
    return (errs[-1] if errs else (lines[-1] if lines else ""))[:230]


def case(name, argv, show="stderr"):
    if os.environ.get("ONLY") and os.environ["ONLY"] not in name:
        return
    p = subprocess.run([PY, *argv], cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    trace = "Traceback" in p.stderr
    out = first_line(p.stderr) if (p.returncode or show == "stderr") and p.stderr.strip() else first_line(p.stdout)
    print(f"| {name} | {p.returncode} | {'yes' if trace else 'no'} | `{out.replace('|', '/')}` |", flush=True)


def jpeg_bytes(seed=0):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


trunc = jpeg_bytes()[: len(jpeg_bytes()) // 2]
(W / "trunc.jpg").write_bytes(trunc)
(W / "empty.png").write_bytes(b"")
(W / "text.png").write_bytes(b"hello, not an image\n")
(W / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)

# a tiny model folder + a model folder without weights
setup = textwrap.dedent(f"""
    import torch, sys
    sys.path.insert(0, "tests")
    from conftest import TINY_OBJECTIVE
    from modeling_ross import RossProcessor, from_components
    from modeling_ross.testing import write_tiny_components
    c = write_tiny_components("{W}/components")
    torch.manual_seed(0)
    from_components(**c, **TINY_OBJECTIVE).save_pretrained("{W}/model")
    RossProcessor.from_components(c["vision_model"], c["language_model"]).save_pretrained("{W}/model")
    from ross.eval.synthetic import write_benchmarks
    write_benchmarks("{W}/bench", num_items=4, names=["synthetic_pope"])
    import datasets
    d = datasets.load_from_disk("{W}/bench/synthetic_pope").cast_column("image", datasets.Image(decode=False))
    rows = d.to_dict()
    rows["question_id"][3] = rows["question_id"][1]
    rows["category"][3] = rows["category"][1]
    datasets.Dataset.from_dict(rows, features=d.features).save_to_disk("{W}/dup_pope")
    rows = d.to_dict()
    rows["image"][2] = {{"bytes": open("{W}/trunc.jpg", "rb").read(), "path": None}}
    datasets.Dataset.from_dict(rows, features=d.features).save_to_disk("{W}/trunc_pope")
""")
if not (W / "model" / "config.json").exists():
    subprocess.run([PY, "-c", setup], cwd=ROOT, env=ENV, check=True, capture_output=True)
noweights = W / "noweights"
if not noweights.exists():
    shutil.copytree(W / "model", noweights)
    (noweights / "model.safetensors").unlink()

# predictions: 4 items twice, the first run all wrong, the second 3 of 4 right
items = [("1", "yes"), ("2", "no"), ("3", "yes"), ("4", "no")]
flip = {"yes": "no", "no": "yes"}
lines = [dict(question_id=q, question="?", answer=a, category="random", prediction=flip[a]) for q, a in items]
lines += [dict(question_id=q, question="?", answer=a, category="random", prediction=a if q != "4" else flip[a])
          for q, a in items]
(W / "preds.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))

# authors' checkpoint with DiT block 1 missing (index and shards consistent, total_size kept)
partial = textwrap.dedent(f"""
    import json, sys
    sys.path.insert(0, "tests")
    from pathlib import Path
    from safetensors.torch import load_file, save_file
    from fixtures_official import write_tiny_official_checkpoint
    src = Path("{W}/official_partial")
    write_tiny_official_checkpoint(src, with_tokenizer=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        t = load_file(str(src / shard))
        keep = {{k: v for k, v in t.items() if ".net.blocks.1." not in k}}
        save_file(keep, str(src / shard), metadata={{"format": "pt"}})
    index["weight_map"] = {{k: v for k, v in index["weight_map"].items() if ".net.blocks.1." not in k}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    src = Path("{W}/official_last")
    write_tiny_official_checkpoint(src, with_tokenizer=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        t = load_file(str(src / shard))
        keep = {{k: v for k, v in t.items() if ".net.blocks.2." not in k}}
        save_file(keep, str(src / shard), metadata={{"format": "pt"}})
    index["weight_map"] = {{k: v for k, v in index["weight_map"].items() if ".net.blocks.2." not in k}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    src = Path("{W}/official_nodenoiser")
    write_tiny_official_checkpoint(src, with_tokenizer=True, with_denoiser=False)
    c = json.loads((src / "config.json").read_text()); c.update(ross_enable=True, mm_inv_projector_type="denoiser_vit3x")
    (src / "config.json").write_text(json.dumps(c))
""")
if not (W / "official_last").exists():
    subprocess.run([PY, "-c", partial], cwd=ROOT, env=ENV, check=True, capture_output=True)

# training data
rec = lambda i, img="trunc.jpg": {"id": f"r{i}", "image": img, "conversations": [
    {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]}
(W / "trunc.json").write_text(json.dumps([rec(0), rec(1)]))
good = json.loads(json.dumps([rec(i, "good.jpg") for i in range(4)]))
(W / "good.jpg").write_bytes(jpeg_bytes(1))
gpt_first = good[:3] + [{"id": "g", "image": "good.jpg", "conversations": [
    {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]}]
(W / "gpt_first.json").write_text(json.dumps(gpt_first))
text = json.dumps(good, indent=1)
(W / "truncated.json").write_text(text[: len(text) // 2])
(W / "empty.json").write_text("")
latin = json.dumps([{**rec(0, "good.jpg"), "conversations": [{"from": "human", "value": "<image>\nCafé?"},
                                                           {"from": "gpt", "value": "oui"}]}], ensure_ascii=False)
(W / "latin1.json").write_bytes(latin.encode("latin-1"))
(W / "utf16.json").write_bytes(json.dumps(good).encode("utf-16"))

SFT = ["train/sft.py", "--config", "train/configs/tiny_stage2.yaml", "--prepare_tiny",
       f"{{root: {W}/tiny, num_images: 8, stage: sft}}", "--image_folder", str(W), "--max_steps", "1",
       "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"]
RUN = ["-m", "ross.eval.run", "--benchmark", "synthetic_pope", "--max-new-tokens", "2", "--no-progress"]
SPACE = textwrap.dedent("""
    import importlib.util, sys
    from PIL import Image
    spec = importlib.util.spec_from_file_location("app", "spaces/app.py"); app = importlib.util.module_from_spec(spec)
    sys.modules["app"] = app; spec.loader.exec_module(app)
    from gradio.data_classes import FileData
    Image.MAX_IMAGE_PIXELS = 1000 if sys.argv[1] == "bomb" else Image.MAX_IMAGE_PIXELS
    path = {"bomb": "good.jpg"}.get(sys.argv[1], sys.argv[1])
    component = getattr(app, "upload_image", app.gr.Image)(label="Image", type="pil", image_mode=None)
    image = component.preprocess(FileData(path=sys.argv[2] + "/" + path, orig_name=path))
    loaded = app.LoadedModel.__new__(app.LoadedModel)
    import modeling_ross
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(sys.argv[2] + "/model", trust_remote_code=True)
    processor(text=["<image>\\nhi"], images=[image], return_tensors="pt")
    print("ok: the upload reached the model")
""")
(W / "space_case.py").write_text(SPACE)
PROC = textwrap.dedent(f"""
    from PIL import Image
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained("{W}/model", trust_remote_code=True)
    processor(text=["<image>\\nhi"], images=[Image.open("{W}/trunc.jpg")], return_tensors="pt")
""")

print("| case | exit | traceback | first line printed |\n|---|---|---|---|")
case("score: predictions with each item twice", ["-m", "ross.eval.score", "--benchmark", "pope", "--predictions",
                                                  str(W / "preds.jsonl")], show="stdout")
case("eval.run: benchmark data with a duplicated question_id", [*RUN, "--model", str(W / "model"), "--data",
                                                                 str(W / "dup_pope"), "--out", str(W / "o1")], "stdout")
case("convert_official: DiT block 1 of 0..2 missing", ["-m", "modeling_ross.convert_official", "--src",
                                                       str(W / "official_partial"), "--dst", str(W / "conv1")], "stdout")
case("convert_official: last DiT block (2) missing", ["-m", "modeling_ross.convert_official", "--src",
                                                      str(W / "official_last"), "--dst", str(W / "conv1b")], "stdout")
case("sft.py: a record whose first turn is gpt", [*SFT, "--data_path", str(W / "gpt_first.json"), "--output_dir",
                                                  str(W / "s1")], "stdout")
case("RossProcessor: truncated RGB JPEG", ["-c", PROC])
case("eval.run: truncated RGB JPEG (error)", [*RUN, "--model", str(W / "model"), "--data", str(W / "trunc_pope"),
                                              "--out", str(W / "o2")])
case("eval.run: truncated RGB JPEG (--on-bad-item skip)", [*RUN, "--model", str(W / "model"), "--data",
                                                           str(W / "trunc_pope"), "--out", str(W / "o3"),
                                                           "--on-bad-item", "skip"], "stdout")
case("Space: truncated RGB JPEG upload", [str(W / "space_case.py"), "trunc.jpg", str(W)])
case("sft.py: truncated RGB JPEG (error mode)", [*SFT, "--data_path", str(W / "trunc.json"), "--output_dir",
                                                 str(W / "s2")])
for name in ("truncated", "empty", "latin1", "utf16"):
    case(f"sft.py: {name} JSON data file", [*SFT, "--data_path", str(W / f"{name}.json"), "--output_dir",
                                            str(W / f"s-{name}")])
case("sft.py: model_name_or_path without weights", [*SFT, "--data_path", str(W / "gpt_first.json"),
                                                    "--model_name_or_path", str(noweights), "--output_dir",
                                                    str(W / "s3")])
case("eval.run: --model folder without weights", [*RUN, "--model", str(noweights), "--data",
                                                  str(W / "bench/synthetic_pope"), "--out", str(W / "o4")])
case("eval.run: --model folder that does not exist", [*RUN, "--model", str(W / "no/such/model"), "--data",
                                                      str(W / "bench/synthetic_pope"), "--out", str(W / "o5")])
case("Space: --model folder that does not exist", ["spaces/app.py", "--model", str(W / "no/such/model")])
case("convert_official: --src is a file", ["-m", "modeling_ross.convert_official", "--src", str(W / "good.jpg"),
                                           "--dst", str(W / "conv2")])
case("convert_official: no mm_inv_projector weights", ["-m", "modeling_ross.convert_official", "--src",
                                                       str(W / "official_nodenoiser"), "--dst", str(W / "conv3")])
for name in ("corrupt.png", "empty.png", "text.png", "bomb"):
    case(f"Space: upload {name}", [str(W / "space_case.py"), name, str(W)])
