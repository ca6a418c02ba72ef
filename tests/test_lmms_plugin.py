"""The lmms-eval adapter (eval.lmms_plugin). Tests that need lmms-eval skip cleanly without it."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ross.eval import lmms_plugin

PLUGIN_FILE = Path(lmms_plugin.__file__)


def test_module_imports_without_lmms_eval(monkeypatch):
    for name in [n for n in sys.modules if n == "lmms_eval" or n.startswith("lmms_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # "import lmms_eval" now raises ImportError
    spec = importlib.util.spec_from_file_location("lmms_plugin_without_lmms_eval", PLUGIN_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "RossLmms" not in module.__all__ and "RossLmmsChat" not in module.__all__
    for name in ("RossLmms", "RossLmmsChat"):
        with pytest.raises(ImportError, match=f"{name} needs lmms-eval"):
            getattr(module, name)
    # The rest still works, the entry point's payload included (its fields as a dict).
    assert module.lmms_eval_manifest() == {"model_id": "ross", "simple_class_path": "ross.eval.lmms_plugin.RossLmms",
                                           "chat_class_path": "ross.eval.lmms_plugin.RossLmmsChat"}
    assert module.generation_settings({"max_new_tokens": 4})[0] == 4
    assert module.chat_conversation([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]) == (
        [], [{"role": "user", "content": [{"type": "text", "text": "hi"}]}])


def test_generation_settings():
    assert lmms_plugin.generation_settings({}) == (1024, [], {})
    assert lmms_plugin.generation_settings({"until": "\n\n", "max_new_tokens": 16, "temperature": 0}) == (
        16, ["\n\n"], {})
    assert lmms_plugin.generation_settings({"temperature": 0.5, "top_p": 0.9, "num_beams": 2})[2] == {
        "do_sample": True, "temperature": 0.5, "top_p": 0.9, "num_beams": 2}
    with pytest.raises(ValueError, match="until"):
        lmms_plugin.generation_settings({"until": 3})


def test_chat_conversation(tmp_path):
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    blue.save(tmp_path / "blue.png")
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image", "url": red}, {"type": "text", "text": "And"},
                                     {"type": "image", "url": str(tmp_path / "blue.png")},
                                     {"type": "text", "text": "?"}]},
    ]
    images, conversation = lmms_plugin.chat_conversation(messages)
    assert images[0] is red and images[1].getpixel((0, 0)) == (0, 0, 255)  # in placeholder order; paths opened
    assert conversation == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And"}, {"type": "image"},
                                     {"type": "text", "text": "?"}]},
    ]
    video = [{"role": "user", "content": [{"type": "video", "url": "clip.mp4"}]}]
    with pytest.raises(ValueError, match="doc 3: ROSS takes images and text only, got a 'video' part"):
        lmms_plugin.chat_conversation(video, where="doc 3")
    missing = [{"role": "user", "content": [{"type": "image", "url": str(tmp_path / "none.png")}]}]
    with pytest.raises(ValueError, match="doc 4: cannot open image .*none.png"):
        lmms_plugin.chat_conversation(missing, where="doc 4")


def test_a_conversation_renders_like_the_single_turn_prompt(tiny_processor):
    from ross.eval.generation import chat_text

    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it red?"}]}]
    assert chat_text(tiny_processor, conversation, 1) == chat_text(tiny_processor, "Is it red?", 1)
    system = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}] + conversation
    assert chat_text(tiny_processor, system, 1).startswith("Be brief. USER: <image>\nIs it red? ASSISTANT:")


# ---- with lmms-eval installed (`make test-lmms` runs this file in .venv-lmms) ----

# A local lmms-eval task over our synthetic POPE items, scored by lmms-eval's own POPE functions. lmms-eval loads a
# `load_from_disk` dataset as a DatasetDict and reads the split `test_split` names.
TASK = "ross_synthetic_pope"
TASK_YAML = """\
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
task: ross_synthetic_pope
test_split: test
output_type: generate_until
doc_to_visual: !function utils.pope_doc_to_visual
doc_to_text: !function utils.pope_doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
process_results: !function utils.pope_process_results
metric_list:
  - metric: pope_accuracy
    aggregation: !function utils.pope_aggregate_accuracy
  - metric: pope_precision
    aggregation: !function utils.pope_aggregate_precision
  - metric: pope_recall
    aggregation: !function utils.pope_aggregate_recall
  - metric: pope_f1_score
    aggregation: !function utils.pope_aggregate_f1_score
  - metric: pope_yes_ratio
    aggregation: !function utils.pope_aggregate_yes_ratio
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\nAnswer the question using a single word or phrase."
"""
NUM_ITEMS, MAX_NEW_TOKENS = 6, 8


@pytest.fixture(autouse=True, scope="module")
def keep_pillow_settings():
    """Importing lmms_eval.api.task sets Pillow's LOAD_TRUNCATED_IMAGES for the whole process; put it back."""
    from PIL import ImageFile

    setting = ImageFile.LOAD_TRUNCATED_IMAGES
    yield
    ImageFile.LOAD_TRUNCATED_IMAGES = setting


def test_installed_add_ons_match_the_pins():
    """.venv-lmms holds exactly the versions of eval/lmms-eval-requirements.txt, and torch 2.13."""
    from importlib.metadata import version

    pytest.importorskip("lmms_eval")
    pins_file = Path(__file__).resolve().parents[1] / "eval" / "lmms-eval-requirements.txt"
    pins = [line.split("==") for line in pins_file.read_text().splitlines()
            if line and not line.startswith("#")]
    assert len(pins) > 10 and all(len(pin) == 2 for pin in pins)
    assert {name: version(name) for name, _ in pins} == dict(pins)
    assert version("torch").startswith("2.13.0")


@pytest.fixture(scope="module")
def lmms_registry():
    pytest.importorskip("lmms_eval")
    from lmms_eval.models import MODEL_REGISTRY_V2

    if "ross" not in MODEL_REGISTRY_V2.list_model_names():  # the package's entry point is not installed here
        MODEL_REGISTRY_V2.register_manifest(lmms_plugin.lmms_eval_manifest(), overwrite=True)
    return MODEL_REGISTRY_V2


@pytest.fixture(scope="module")
def saved_model(lmms_registry, tiny_components, tmp_path_factory):
    """A tiny saved checkpoint and a synthetic POPE benchmark of NUM_ITEMS rows."""
    from conftest import TINY_OBJECTIVE
    from modeling_ross import RossProcessor, from_components

    from ross.eval.synthetic import write_benchmarks

    folder = tmp_path_factory.mktemp("ross-tiny-lmms")
    torch.manual_seed(0)
    from_components(**tiny_components, **TINY_OBJECTIVE).eval().save_pretrained(folder)
    RossProcessor.from_components(tiny_components["vision_model"], tiny_components["language_model"]).save_pretrained(
        folder
    )
    data = tmp_path_factory.mktemp("synthetic-lmms")
    write_benchmarks(str(data), num_items=NUM_ITEMS, names=["synthetic_pope"])
    return folder, data / "synthetic_pope"


@pytest.fixture(scope="module")
def plugin_models(saved_model):
    from lmms_eval.models import get_model

    folder, data = saved_model
    settings = {"batch_size": 4, "device": "cpu"}
    return (get_model("ross", force_simple=True).create_from_arg_string(f"pretrained={folder}", settings),
            get_model("ross").create_from_arg_string(f"pretrained={folder}", settings), data)


def _simple_requests(prompts, gen_kwargs):
    from lmms_eval.api.instance import Instance

    def doc_to_visual(doc):
        return [doc["images"][0].convert("RGB")]

    return [
        Instance("generate_until", (prompt, dict(gen_kwargs), doc_to_visual, i, TASK, "test"), idx=0,
                 metadata={"task": TASK, "doc_id": i, "repeats": 1})
        for i, prompt in enumerate(prompts)
    ]


def _chat_requests(prompts, gen_kwargs):
    """As lmms-eval's ConfigurableMessagesTask builds them: ``(ctx, doc_to_messages, gen_kwargs, doc_id, task,
    split)``."""
    from lmms_eval.api.instance import Instance

    def messages(prompt):
        return lambda doc: [{"role": "user", "content": [{"type": "image", "url": doc["images"][0].convert("RGB")},
                                                         {"type": "text", "text": prompt}]}]

    return [
        Instance("generate_until", (prompt, messages(prompt), dict(gen_kwargs), i, TASK, "test"), idx=0,
                 metadata={"task": TASK, "doc_id": i, "repeats": 1})
        for i, prompt in enumerate(prompts)
    ]


def test_registry_resolves_ross(lmms_registry):
    from lmms_eval.api.model import lmms
    from lmms_eval.models import get_model
    from lmms_eval.models.registry_v2 import ModelManifest

    assert lmms_plugin.lmms_eval_manifest() == ModelManifest(
        "ross", simple_class_path="ross.eval.lmms_plugin.RossLmms",
        chat_class_path="ross.eval.lmms_plugin.RossLmmsChat")
    chat, simple = get_model("ross"), get_model("ross", force_simple=True)  # lmms-eval 0.7 prefers chat
    assert chat.__name__ == "RossLmmsChat" and chat.is_simple is False and issubclass(chat, lmms)
    assert simple.__name__ == "RossLmms" and simple.is_simple is True and issubclass(simple, lmms)


def test_generate_until_matches_the_runner(plugin_models):
    """Both interfaces, batch size 4: the answers of the runner at batch size 1, in request order."""
    from ross.eval.generation import generate_answers, load_items

    simple, chat, data = plugin_models
    assert simple.batch_size == chat.batch_size == 4 and simple.device.type == "cpu"
    _, rows, prompts = load_items("synthetic_pope", data)
    reference = generate_answers(simple.model, simple.processor, [(r["images"], p) for r, p in zip(rows, prompts)],
                                 6, batch_size=1, progress=False)
    for lm, make_requests in ((simple, _simple_requests), (chat, _chat_requests)):
        lm.task_dict = {TASK: {"test": rows}}
        answers = lm.generate_until(make_requests(prompts, {"max_new_tokens": 6, "temperature": 0}))
        assert answers == reference and len(answers) == NUM_ITEMS

    # `until` cuts each answer before the stop string.
    stop = next(a[2:4] for a in reference if len(a) >= 4)
    cut = chat.generate_until(_chat_requests(prompts, {"max_new_tokens": 6, "until": [stop]}))
    assert all(stop not in c and r.startswith(c) for c, r in zip(cut, reference))


def test_chat_rejects_a_video_part(plugin_models):
    from lmms_eval.api.instance import Instance

    _, chat, _ = plugin_models
    chat.task_dict = {TASK: {"test": [{}]}}
    video = Instance("generate_until", ("q", lambda doc: [{"role": "user", "content": [
        {"type": "video", "url": "clip.mp4"}, {"type": "text", "text": "q"}]}], {}, 0, TASK, "test"), idx=0,
        metadata={"task": TASK, "doc_id": 0, "repeats": 1})
    with pytest.raises(ValueError, match="task 'ross_synthetic_pope' split 'test' doc 0: .*got a 'video' part"):
        chat.generate_until([video])


def test_loglikelihood_and_multi_round_say_unsupported(plugin_models):
    for lm in plugin_models[:2]:
        with pytest.raises(NotImplementedError, match="generate_until only"):
            lm.loglikelihood([])
        with pytest.raises(NotImplementedError, match="multi-round"):
            lm.generate_until_multi_round([])


def test_unknown_model_args_are_rejected(lmms_registry):
    from lmms_eval.models import get_model

    with pytest.raises(TypeError, match="unknown model_args: colour"):
        get_model("ross")(pretrained="unused", colour="red")
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        get_model("ross")(pretrained="unused", batch_size="auto")


def _run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def cli_env(saved_model, tmp_path_factory):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path_factory.mktemp("hf-home")))
    env.pop("PYTHONPATH", None)  # what the installed package provides, as in a user's shell
    return env


@pytest.fixture(scope="module")
def runner_results(saved_model, cli_env, tmp_path_factory):
    """``python -m ross.eval.run`` on the benchmark: ``(predictions, scores)``."""
    folder, data = saved_model
    out = tmp_path_factory.mktemp("runner")
    _run([sys.executable, "-m", "ross.eval.run", "--model", str(folder), "--benchmark", "synthetic_pope", "--data",
          str(data), "--out", str(out), "--batch-size", "1", "--max-new-tokens", str(MAX_NEW_TOKENS), "--device",
          "cpu", "--no-progress"], cli_env)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return predictions, json.loads((out / "scores.json").read_text())


@pytest.mark.parametrize("interface", ["chat", "simple"])
def test_lmms_eval_cli_matches_the_runner(interface, saved_model, cli_env, runner_results, tmp_path):
    """``lmms-eval eval --model ross`` on a local task: exit 0, one results file, every sample, the runner's answers
    and scores."""
    import datasets

    folder, data = saved_model
    task_dir, out = tmp_path / "task", tmp_path / "out"
    task_dir.mkdir()
    datasets.DatasetDict({"test": datasets.load_from_disk(str(data))}).save_to_disk(str(tmp_path / "dataset"))
    (task_dir / f"{TASK}.yaml").write_text(TASK_YAML.format(data=tmp_path / "dataset", max_new_tokens=MAX_NEW_TOKENS))
    (task_dir / "utils.py").write_text("from lmms_eval.tasks.pope.utils import *  # noqa: F401,F403\n")
    lmms_eval = Path(sys.executable).with_name("lmms-eval")
    assert lmms_eval.exists(), f"{lmms_eval}: lmms-eval's console script is missing"
    # DEBUG: otherwise the CLI logs an evaluation error and still exits 0.
    command = [str(lmms_eval), "eval", "--model", "ross", "--model_args", f"pretrained={folder}", "--device", "cpu",
               "--tasks", TASK, "--include_path", str(task_dir), "--batch_size", "4", "--output_path", str(out),
               "--log_samples", "--verbosity", "DEBUG"] + (["--force_simple"] if interface == "simple" else [])
    _run(command, cli_env)

    (results_file,) = out.glob("*/*_results.json")
    (samples_file,) = out.glob(f"*/*_samples_{TASK}.jsonl")
    results = json.loads(results_file.read_text())
    backend = {"chat": "RossLmmsChat (chat)", "simple": "RossLmms (simple)"}[interface]
    assert results["config"]["model_backend"] == f"ross.eval.lmms_plugin.{backend}"
    assert results["n-samples"][TASK] == {"original": NUM_ITEMS, "effective": NUM_ITEMS}
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(NUM_ITEMS))

    predictions, scores = runner_results
    assert [s["input"] for s in samples] == [p["prompt"] for p in predictions]
    answers = [s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0]
               for s in samples]
    assert answers == [p["prediction"] for p in predictions]
    metrics, lmms_metrics = scores["metrics"], results["results"][TASK]
    for ours, theirs in [("accuracy", "pope_accuracy"), ("precision", "pope_precision"), ("recall", "pope_recall"),
                         ("f1", "pope_f1_score"), ("gt_yes_ratio", "pope_yes_ratio")]:  # lmms-eval's yes-ratio quirk
        assert lmms_metrics[f"{theirs},none"] == pytest.approx(metrics[ours]), theirs


@pytest.fixture(scope="module", params=["llava", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "gemma3", "idefics3",
                                        "smolvlm"])  # fmt: skip
def native_plugin_models(request, saved_model, tmp_path_factory):
    """Both interfaces on a native VLM folder (RossForPreTraining's: a plain VLM of each architecture with an adapter
    + ross_head/), and the class the folder names."""
    from lmms_eval.models import get_model

    from modeling_ross import testing
    from modeling_ross.modeling_ross_pretraining import RossForPreTraining
    from modeling_ross.testing import load_native_processor_without_torchvision, write_tiny_vae
    from ross.eval import generation

    root = tmp_path_factory.mktemp(f"native-lmms-{request.param}")
    vae = write_tiny_vae(root / "vae", block_out_channels=(8, 16, 16, 16, 16))
    torch.manual_seed(0)
    build = {"llava": testing.tiny_llava, "qwen2_5_vl": testing.tiny_qwen25_vl, "qwen3_vl": testing.tiny_qwen3_vl,
             "llava_onevision": testing.tiny_llava_onevision, "gemma3": testing.tiny_gemma3,
             "idefics3": testing.tiny_idefics3, "smolvlm": testing.tiny_smolvlm}[request.param]  # fmt: skip
    vlm, processor = build()
    objective = {"teacher": str(vae), "teacher_subfolder": "vae", "denoiser_hidden_size": 64, "denoiser_depth": 2,
                 "denoiser_num_heads": 4}  # fmt: skip
    image_processor = processor.image_processor
    ross = RossForPreTraining.from_vlm(
        vlm, objective, image_mean=image_processor.image_mean, image_std=image_processor.image_std
    )
    ross.save_pretrained(root / "ckpt")
    processor.save_pretrained(root / "ckpt")
    settings = {"batch_size": 4, "device": "cpu"}
    arg = f"pretrained={root / 'ckpt'}"
    with pytest.MonkeyPatch.context() as patch:
        # No torchvision here: the AutoProcessor of Qwen-VL, LLaVA-OneVision and SmolVLM needs it (their video
        # processors); the plugin loads through ross.eval.generation.load_processor, swapped for the loader that
        # builds those from the folder's saved parts.
        patch.setattr(generation, "load_processor", load_native_processor_without_torchvision)
        return (get_model("ross", force_simple=True).create_from_arg_string(arg, settings),
                get_model("ross").create_from_arg_string(arg, settings), saved_model[1], type(vlm).__name__)


def test_native_vlm_folder_matches_the_runner(native_plugin_models):
    """A native VLM loads as its own class; both interfaces give the runner's batch-size-1 answers."""
    from ross.eval.generation import generate_answers, load_items

    simple, chat, data, model_class = native_plugin_models
    assert type(simple.model).__name__ == type(chat.model).__name__ == model_class
    _, rows, prompts = load_items("synthetic_pope", data)
    reference = generate_answers(simple.model, simple.processor, [(r["images"], p) for r, p in zip(rows, prompts)],
                                 6, batch_size=1, progress=False)
    for lm, make_requests in ((simple, _simple_requests), (chat, _chat_requests)):
        lm.task_dict = {TASK: {"test": rows}}
        assert lm.generate_until(make_requests(prompts, {"max_new_tokens": 6, "temperature": 0})) == reference
