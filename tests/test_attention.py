"""Attention analysis (eval.attention, paper Table 1) on two saved tiny models."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ross.eval import attention
from ross.eval.generation import load_items, load_model


@pytest.fixture(scope="module")
def model_dirs(tiny_components, tmp_path_factory):
    from conftest import TINY_OBJECTIVE
    from modeling_ross import RossProcessor, from_components

    processor = RossProcessor.from_components(tiny_components["vision_model"], tiny_components["language_model"])
    folders = []
    for seed in (0, 1):  # different projector / denoiser initialisations
        folder = tmp_path_factory.mktemp(f"ross-tiny-{seed}")
        torch.manual_seed(seed)
        from_components(**tiny_components, **TINY_OBJECTIVE).eval().save_pretrained(folder)
        processor.save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    from ross.eval.synthetic import write_benchmarks

    root = tmp_path_factory.mktemp("synthetic-att")
    write_benchmarks(str(root), num_items=6, names=["synthetic_pope"])
    _, rows, prompts = load_items("synthetic_pope", root / "synthetic_pope")
    return [(row["images"], prompt) for row, prompt in zip(rows, prompts)], root


@pytest.fixture(scope="module")
def results(model_dirs, items):
    out = []
    for folder, label in zip(model_dirs, ("llava", "ross")):
        model, processor = load_model(folder, attn_implementation="eager")
        att = attention.visual_attention(model, processor, items[0], label, batch_size=3, progress=False)
        out.append((att, model, processor))
    return out


def test_shapes_and_ranges(results):
    att, model, _ = results[0]
    n, layers = 6, model.config.text_config.num_hidden_layers
    assert att.item_scores.shape == (n,) and att.visual_share.shape == (n,)
    assert att.layer_scores.shape == (n, layers)
    assert att.token_scores.shape == (n, model.config.image_seq_length)
    assert att.grid.shape == (att.grid_size, att.grid_size) == (8, 8)
    for values in (att.item_scores, att.layer_scores, att.token_scores, att.visual_share):
        assert np.all(values >= 0) and np.all(values <= 1)
    # One scalar per item = mean over layers and visual tokens, whichever way it is folded.
    np.testing.assert_allclose(att.item_scores, att.layer_scores.mean(1), rtol=1e-6)
    np.testing.assert_allclose(att.item_scores, att.token_scores.mean(1), rtol=1e-6)
    np.testing.assert_allclose(att.visual_share, att.item_scores * model.config.image_seq_length, rtol=1e-5)


def test_batched_equals_one_by_one_and_matches_a_direct_forward(results, items):
    att, model, processor = results[0]
    single = attention.visual_attention(model, processor, items[0], "one", batch_size=1, progress=False)
    np.testing.assert_allclose(att.item_scores, single.item_scores, rtol=1e-4)
    np.testing.assert_allclose(att.token_scores, single.token_scores, rtol=1e-4, atol=1e-8)
    # Independent computation for item 0: one unpadded forward, attention read off directly.
    from ross.eval.generation import build_batch

    batch = build_batch(processor, items[0][:1])
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    visual = batch["input_ids"][0] == model.config.image_token_id
    expected = torch.stack([a[0, :, -1, visual].mean() for a in out.attentions]).mean().item()
    assert att.item_scores[0] == pytest.approx(expected, rel=1e-4)


def test_compare_report_and_heatmaps(results, tmp_path):
    a, b = results[0][0], results[1][0]
    comparison = attention.compare(a, b)
    for test in ("welch_t", "mann_whitney_u", "paired_wilcoxon"):
        assert 0.0 <= comparison[test]["p_value"] <= 1.0, test
    assert comparison["mean_difference_b_minus_a"] == pytest.approx(b.item_scores.mean() - a.item_scores.mean())

    report = attention.write_report([a, b], tmp_path, {"benchmark": "synthetic_pope"})
    assert [m["label"] for m in report["models"]] == ["llava", "ross"]
    summary = report["models"][0]
    assert set(summary["percentiles"]) == {"p5", "p25", "p50", "p75", "p95"}
    assert summary["percentiles"]["p5"] <= summary["percentiles"]["p50"] <= summary["percentiles"]["p95"]
    assert len(summary["layer_means"]) == a.layer_scores.shape[1]
    saved = json.loads((tmp_path / "attention.json").read_text())
    assert saved["comparisons"][0]["welch_t"]["p_value"] == comparison["welch_t"]["p_value"]
    for name in ("heatmap_llava.png", "heatmap_ross.png", "heatmap_difference.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width >= 8 * 8
    assert "Welch t p =" in (tmp_path / "attention.md").read_text()


def test_identical_models_give_no_difference(results):
    a = results[0][0]
    comparison = attention.compare(a, a)
    assert comparison["mean_difference_b_minus_a"] == 0.0
    assert comparison["mann_whitney_u"]["p_value"] == pytest.approx(1.0)
    assert "paired_wilcoxon" not in comparison  # all differences are zero


def test_non_eager_model_is_a_clear_error(model_dirs, items):
    model, processor = load_model(model_dirs[0], attn_implementation="sdpa")
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        attention.visual_attention(model, processor, items[0][:1], progress=False)


def test_items_without_image_are_rejected(results):
    _, model, processor = results[0]
    with pytest.raises(ValueError, match="no image"):
        attention.visual_attention(model, processor, [([], "Hello?")], progress=False)
    single = attention.visual_attention(model, processor, [(Image.new("RGB", (40, 30), "red"), "Colour?")],
                                        progress=False)
    assert single.item_scores.shape == (1,)  # a bare PIL image is accepted as one image


def test_cli(model_dirs, items, tmp_path, capsys):
    code = attention.main(["--models", *map(str, model_dirs), "--labels", "base", "ross", "--benchmark",
                           "synthetic_pope", "--data", str(items[1] / "synthetic_pope"), "--out", str(tmp_path),
                           "--limit", "4", "--batch-size", "2", "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "attention.json").read_text())
    assert report["benchmark"] == "synthetic_pope" and [m["num_items"] for m in report["models"]] == [4, 4]
    assert (tmp_path / "heatmap_base.png").is_file() and "| base | 4 |" in capsys.readouterr().out
