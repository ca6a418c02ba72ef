"""Model cards of trained folders: metadata, model-index from scores.json, recipe, usage; parsed by ModelCard.load."""

import json

import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard

from ross.model_cards.card import build_model_card, eval_results_from_scores, find_scores


TINY_OBJECTIVE = {"denoiser_hidden_size": 64, "denoiser_depth": 2, "denoiser_num_heads": 4, "num_noise_draws": 2}


def scores(benchmark, primary, metrics, model, limit=None, rules="lmms-eval", chance=None):
    """A scores.json dict as eval/generation.py writes it."""
    return {
        "benchmark": benchmark, "rules": rules, "num_items": 40, "primary_metric": primary,
        "primary_value": metrics[primary], "metrics": metrics, "chance": chance, "model": str(model), "data": "x",
        "settings": {"batch_size": 8, "max_new_tokens": 4, "dtype": "float32", "device": "cpu", "limit": limit},
        "seconds": 1.0,
    }  # fmt: skip


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def training_args_json(tmp_path, **kwargs):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", **kwargs)
    return args.to_json_string()


@pytest.fixture(scope="module")
def run_dir(tiny_components, tmp_path_factory):
    """A two-stage tiny run as train/sft.py lays it out, with eval results next to the stage-2 model."""
    import torch

    from modeling_ross import RossProcessor, from_components

    root = tmp_path_factory.mktemp("run")
    stage1, stage2 = root / "stage1" / "model", root / "stage2" / "model"
    torch.manual_seed(0)
    model = from_components(**tiny_components, **TINY_OBJECTIVE)
    processor = RossProcessor.from_components(tiny_components["vision_model"], tiny_components["language_model"])
    for folder in (stage1, stage2):
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    tiny = {"root": "runs/tiny", "num_images": 64, "stage": "sft"}
    (stage1 / "train_config.yaml").write_text(yaml.safe_dump({
        "prepare_tiny": tiny, "stage": 1, "data_format": "plain", "image_aspect_ratio": "resize",
        "learning_rate": 1e-3, "denoiser_lr": 1e-4, "per_device_train_batch_size": 8, "output_dir": "x",
    }))  # fmt: skip
    (stage2 / "train_config.yaml").write_text(yaml.safe_dump({
        "prepare_tiny": tiny, "stage": 2, "data_format": "chat", "image_aspect_ratio": "pad",
        "model_name_or_path": str(stage1), "output_dir": "y",
    }))  # fmt: skip
    (stage2 / "training_args.json").write_text(
        training_args_json(root, learning_rate=2e-4, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                           max_steps=10, seed=0)
    )  # fmt: skip
    write_json(root / "stage2" / "summary.json", {"global_step": 10, "world_size": 1, "final_visual_loss": 0.75})
    # Inside the folder, in the sibling eval/ folder (this model), and a result of another model (left out).
    write_json(stage2 / "eval" / "synthetic_pope" / "scores.json", scores(
        "synthetic_pope", "accuracy", {"accuracy": 0.625, "f1": 0.6, "category_mean": {"f1": 0.5}}, stage2,
        chance={"accuracy": 0.5},
    ))  # fmt: skip
    write_json(root / "stage2" / "eval" / "synthetic_count" / "scores.json",
               scores("synthetic_count", "exact_match", {"exact_match": 0.3}, stage2))  # fmt: skip
    write_json(root / "stage2" / "eval" / "other" / "scores.json",
               scores("synthetic_colour", "exact_match", {"exact_match": 0.9}, root / "elsewhere"))  # fmt: skip
    return root


def load_back(card, tmp_path):
    path = tmp_path / "README.md"
    card.save(str(path))
    return ModelCard.load(str(path)), path.read_text()


def test_card_of_tiny_run_parses_back_with_metadata_and_model_index(run_dir, tmp_path):
    folder = run_dir / "stage2" / "model"
    assert [p.parent.name for p in find_scores(folder)] == ["synthetic_pope", "synthetic_count"]

    loaded, text = load_back(build_model_card(folder, repo_id="me/ross-tiny"), tmp_path)
    data = loaded.data
    assert data.pipeline_tag == "image-text-to-text" and data.library_name == "transformers"
    assert data.base_model is None  # local components are not Hub ids: left out (a folder name would be a dead link)
    assert "base_model" not in text.split("---")[1]
    assert data.license == "apache-2.0" and data.datasets is None  # synthetic data is not a Hub dataset
    assert {"ross", "multimodal", "synthetic-demo"} <= set(data.tags)
    assert data.model_name == "ross-tiny"
    got = [(r.dataset_type, r.dataset_name, r.metric_type, r.metric_value, r.task_type) for r in data.eval_results]
    assert got == [
        ("synthetic_pope", "synthetic_pope", "accuracy", 0.625, "image-text-to-text"),
        ("synthetic_pope", "synthetic_pope", "f1", 0.6, "image-text-to-text"),
        ("synthetic_count", "synthetic_count", "exact_match", 0.3, "image-text-to-text"),
    ]
    assert "model-index:" in text and "synthetic_colour" not in text  # another model's result is left out

    # Usage, recipe (both stages: stage 1 read through model_name_or_path), the demo note, results with chance.
    assert 'AutoModelForImageTextToText.from_pretrained("me/ross-tiny", trust_remote_code=True' in text
    assert 'AutoProcessor.from_pretrained("me/ross-tiny", trust_remote_code=True)' in text
    assert 'pipeline("image-text-to-text", model="me/ross-tiny", trust_remote_code=True)' in text
    assert "This is a tiny demo model, not a useful assistant" in text and "synthetic images" in text
    assert "| 1 | projector + denoiser | synthetic (tiny demo) | plain | resize | 8 per process | components |" in text
    stage2_row = "| 2 | projector + LLM + denoiser | synthetic (tiny demo) | chat | pad | 8 (global) | stage1/model |"
    assert stage2_row in text
    assert "**Stage 1 hyperparameters:** `learning_rate=0.001`, `denoiser_lr=0.0001`" in text
    assert "`learning_rate=0.0002`" in text and "`max_steps=10`" in text and "final_visual_loss 0.75" in text
    assert "teacher: vae-tiny (subfolder `vae`)" in text and "2 blocks, width 64, 4 heads" in text
    assert "| synthetic_pope | accuracy | 0.6250 | 0.5000 | 40 | lmms-eval | f1 0.6000 |" in text
    assert "| synthetic_count | exact_match | 0.3000 |  | 40 |" in text  # no chance given in this scores.json
    assert "None" not in text.split("## Training")[0]  # nothing unresolved in the header, usage and model sections


def test_card_of_a_full_size_recipe_with_explicit_results(run_dir, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    config = json.loads((run_dir / "stage2" / "model" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "train_config.yaml").write_text(yaml.safe_dump({
        "vision_model": "google/siglip-so400m-patch14-384", "language_model": "Qwen/Qwen2-7B-Instruct", "stage": 1,
        "data_path": "playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "learning_rate": 1e-3,
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, "deepspeed": "train/configs/zero2.json",
    }))  # fmt: skip
    pope = tmp_path / "pope.json"
    write_json(pope, scores("pope", "f1", {"f1": 0.88, "accuracy": 0.87, "yes_ratio": 0.45}, folder))
    mmvp = scores("mmvp", "pair_accuracy", {"pair_accuracy": 0.4, "accuracy": 0.6}, folder, limit=50)
    extra = EvalResult(task_type="image-text-to-text", dataset_type="lmms-lab/ai2d", dataset_name="AI2D",
                       metric_type="accuracy", metric_value=0.7)  # fmt: skip

    card = build_model_card(folder, eval_results=[pope, mmvp, extra], repo_id="org/ross-siglip-qwen2", demo=False)
    loaded, text = load_back(card, tmp_path)
    data = loaded.data
    assert data.base_model == ["google/siglip-so400m-patch14-384", "Qwen/Qwen2-7B-Instruct"]
    assert data.datasets == ["liuhaotian/LLaVA-Pretrain"] and data.license == "apache-2.0"
    assert "synthetic-demo" not in data.tags and "tiny demo model" not in text
    by_metric = {(r.dataset_type, r.metric_type): r for r in data.eval_results}
    assert by_metric[("lmms-lab/POPE", "f1")].metric_value == 0.88
    assert by_metric[("lmms-lab/POPE", "f1")].dataset_split == "test"
    assert by_metric[("lmms-lab-eval/MMVP", "pair_accuracy")].dataset_name == "mmvp (first 40 items)"
    assert by_metric[("lmms-lab/ai2d", "accuracy")].metric_value == 0.7
    assert len(data.eval_results) == 6
    assert "| 1 | projector + denoiser | blip_laion_cc_sbu_558k.json |" in text and "DeepSpeed `zero2.json`" in text
    assert "| 40 (subset) |" in text and "scored on the first items only" in text

    overridden = build_model_card(folder, eval_results=[], base_model="me/base", license="llama2", tags=["x"])
    assert overridden.data.base_model == ["me/base"] and overridden.data.license == "llama2"
    assert "x" in overridden.data.tags and overridden.data.eval_results is None


def test_eval_results_keep_the_primary_metric_first_and_refuse_duplicates(tmp_path):
    metrics = {"num_items": 3, "f1": 0.25, "exact_match": 0.5}  # counts are not scores
    results = eval_results_from_scores([scores("gqa", "exact_match", metrics, tmp_path)])
    assert [(r.metric_type, r.metric_value, r.dataset_config, r.dataset_split) for r in results] == [
        ("exact_match", 0.5, "testdev_balanced_instructions", "testdev"),
        ("f1", 0.25, "testdev_balanced_instructions", "testdev"),
    ]
    ocr = eval_results_from_scores([scores("ocrbench", "score", {"score": 612, "num_items": 1000}, tmp_path)])
    assert [(r.metric_type, r.metric_value) for r in ocr] == [("score", 612)]  # an integer primary metric stays
    vlmeval = eval_results_from_scores([scores("pope", "f1", {"f1": 0.8}, tmp_path, rules="vlmevalkit")])
    assert vlmeval[0].metric_name == "f1 (vlmevalkit rules)"
    with pytest.raises(ValueError, match="Two results for benchmark 'pope'"):
        eval_results_from_scores([scores("pope", "f1", {"f1": 0.8}, tmp_path)] * 2)


def test_card_errors_are_explicit(run_dir, tmp_path):
    folder = run_dir / "stage2" / "model"
    with pytest.raises(TypeError, match="Unknown card option"):
        build_model_card(folder, licence="mit")
    with pytest.raises(ValueError, match="no ROSS config.json"):
        build_model_card(tmp_path)
    bad = tmp_path / "scores.json"
    bad.write_text(json.dumps({"accuracy": 1.0}))
    with pytest.raises(ValueError, match="not a scores.json"):
        build_model_card(folder, eval_results=[bad])
