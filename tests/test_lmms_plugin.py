"""The lmms-eval adapter (eval.lmms_plugin). Tests that need lmms-eval skip cleanly without it."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from ross.eval import lmms_plugin

PLUGIN_FILE = Path(lmms_plugin.__file__)


def test_module_imports_without_lmms_eval(monkeypatch):
    for name in [n for n in sys.modules if n == "lmms_eval" or n.startswith("lmms_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # "import lmms_eval" now raises ImportError
    spec = importlib.util.spec_from_file_location("lmms_plugin_without_lmms_eval", PLUGIN_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "RossLmms" not in module.__all__
    with pytest.raises(ImportError, match="pip install lmms-eval"):
        module.RossLmms
    assert module.generation_settings({"max_new_tokens": 4})[0] == 4  # the rest still works


def test_generation_settings():
    assert lmms_plugin.generation_settings({}) == (1024, [], {})
    assert lmms_plugin.generation_settings({"until": "\n\n", "max_new_tokens": 16, "temperature": 0}) == (
        16, ["\n\n"], {})
    assert lmms_plugin.generation_settings({"temperature": 0.5, "top_p": 0.9, "num_beams": 2})[2] == {
        "do_sample": True, "temperature": 0.5, "top_p": 0.9, "num_beams": 2}
    with pytest.raises(ValueError, match="until"):
        lmms_plugin.generation_settings({"until": 3})


# ---- with lmms-eval installed ----


@pytest.fixture(scope="module")
def ross_lmms_class():
    pytest.importorskip("lmms_eval")
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    names = MODEL_REGISTRY_V2.list_model_names()
    if "ross" not in names:  # the package's entry point is not installed in this environment: register it here
        MODEL_REGISTRY_V2.register_manifest(lmms_plugin.lmms_eval_manifest(), overwrite=True)
    return get_model("ross")


@pytest.fixture(scope="module")
def plugin_setup(ross_lmms_class, tiny_components, tmp_path_factory):
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
    write_benchmarks(str(data), num_items=6, names=["synthetic_pope"])
    lm = ross_lmms_class.create_from_arg_string(f"pretrained={folder}", {"batch_size": 4, "device": "cpu"})
    return lm, data / "synthetic_pope"


def _requests(docs, prompts, gen_kwargs):
    from lmms_eval.api.instance import Instance

    def doc_to_visual(doc):
        return [doc["images"][0].convert("RGB")]

    return [
        Instance("generate_until", (prompt, dict(gen_kwargs), doc_to_visual, i, "synthetic_pope", "test"), idx=0,
                 metadata={"task": "synthetic_pope", "doc_id": i, "repeats": 1})
        for i, prompt in enumerate(prompts)
    ]


def test_registry_resolves_ross(ross_lmms_class):
    from lmms_eval.api.model import lmms

    assert ross_lmms_class.__name__ == "RossLmms" and issubclass(ross_lmms_class, lmms)
    assert ross_lmms_class.is_simple is True


def test_generate_until_matches_the_runner(plugin_setup):
    from ross.eval.generation import generate_answers, load_items

    lm, data = plugin_setup
    assert lm.batch_size == 4 and lm.device.type == "cpu"
    _, rows, prompts = load_items("synthetic_pope", data)
    lm.task_dict = {"synthetic_pope": {"test": rows}}
    answers = lm.generate_until(_requests(rows, prompts, {"max_new_tokens": 6, "temperature": 0}))
    reference = generate_answers(lm.model, lm.processor, [(r["images"], p) for r, p in zip(rows, prompts)], 6,
                                 batch_size=1, progress=False)
    assert answers == reference and len(answers) == 6

    # `until` cuts each answer before the stop string.
    stop = next(a[2:4] for a in reference if len(a) >= 4)
    cut = lm.generate_until(_requests(rows, prompts, {"max_new_tokens": 6, "until": [stop]}))
    assert all(stop not in c and r.startswith(c) for c, r in zip(cut, reference))


def test_loglikelihood_and_multi_round_say_unsupported(plugin_setup):
    lm, _ = plugin_setup
    with pytest.raises(NotImplementedError, match="generate_until only"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round([])


def test_unknown_model_args_are_rejected(ross_lmms_class):
    with pytest.raises(TypeError, match="unknown model_args: colour"):
        ross_lmms_class(pretrained="unused", colour="red")
