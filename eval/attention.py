"""How much the last prompt token attends to the visual tokens (ROSS paper, Table 1).

The paper reports that "the last token attends more to visual tokens with ROSS": a mean
attention value of 2.36e-4 (ROSS) vs 2.03e-4 (LLaVA baseline). The quantity here is the same
scalar, per item:

    score = mean over layers l, heads h and visual tokens v of  A[l, h, last, v]

where ``A[l, h]`` is layer ``l``'s softmax attention of head ``h`` (eager attention), ``last``
is the last prompt token (the ``ASSISTANT:`` generation prompt, whose output predicts the first
answer token) and ``v`` runs over all image-token positions. It is an attention *per visual
token* (a probability, so in [0, 1]; with 729 SigLIP tokens in an ~800-token prompt, uniform
attention would be ~1.2e-3). Averaging over layers rather than picking one matches the single
number of the paper; the per-layer profile (``layer_scores``) and the share of attention mass
on the image (``visual_share``, the sum over visual tokens) are kept too.

Items are aggregated by mean and percentiles of the per-item scores; two models are compared
with Welch's t-test and the Mann-Whitney U test on those per-item scores (one number per item,
so the samples are independent; the ~729 tokens of one image are not), plus a paired Wilcoxon
signed-rank test when both models saw the same items. The heat map is the per-token mean over
items (and over the images of multi-image items) laid out on the image's ``grid x grid`` patch
grid (matplotlib if installed, else PIL).

CLI: ``python -m ross.eval.attention --models A B --benchmark NAME --data PATH --out DIR`` writes
``attention.json``, ``attention.md``, ``heatmap_<label>.png`` and ``heatmap_difference.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ross.eval.generation import benchmark_names, build_batch, load_items, load_model
from ross.eval.scoring import RULES


@dataclass
class VisualAttention:
    """Attention of the last prompt token to the visual tokens, for ``n`` items of one model.

    item_scores: ``(n,)`` mean over layers, heads and visual tokens (the paper's number).
    layer_scores: ``(n, num_layers)`` mean over heads and visual tokens, per layer.
    visual_share: ``(n,)`` attention mass on all visual tokens (sum over them), mean over layers and heads.
    token_scores: ``(n, image_seq_length)`` mean over layers and heads per visual-token position
        (averaged over the images of a multi-image item).
    grid_size: the image's patch grid side (``image_seq_length == grid_size ** 2``).
    """

    label: str
    item_scores: np.ndarray
    layer_scores: np.ndarray
    visual_share: np.ndarray
    token_scores: np.ndarray
    grid_size: int
    item_ids: list = field(default_factory=list)

    @property
    def grid(self) -> np.ndarray:
        """``(grid_size, grid_size)`` mean attention per visual token over items (row-major patches)."""
        return self.token_scores.mean(0).reshape(self.grid_size, self.grid_size)


def _check_eager(model, attentions) -> None:
    if not attentions or any(a is None for a in attentions):
        impl = getattr(model.config.get_text_config(), "_attn_implementation", None)
        raise ValueError(
            f"The model returned no attention weights (attention implementation: {impl!r}); load it with "
            "attn_implementation='eager', e.g. eval.generation.load_model(path, attn_implementation='eager')."
        )


@torch.no_grad()
def visual_attention(
    model,
    processor,
    items: Sequence[tuple],
    label: str = "model",
    batch_size: int = 1,
    item_ids: Sequence | None = None,
    progress: bool = True,
) -> VisualAttention:
    """Attention statistics over ``items`` = ``[(images, prompt), ...]`` (``images``: a PIL image or a list of them).

    Each prompt is placed after its image(s) in the chat template with the generation prompt,
    as for generation (:func:`ross.eval.generation.build_batch`); batches are left-padded with
    position ids from the attention mask, so the last position is every row's last prompt token.
    """
    items = [((images if isinstance(images, (list, tuple)) else [images]), prompt) for images, prompt in items]
    for i, (images, _) in enumerate(items):
        if not images:
            raise ValueError(f"item {i} has no image: attention to visual tokens needs one")
    image_token_id = model.config.image_token_id
    n_tokens = model.config.image_seq_length
    grid = int(round(math.sqrt(n_tokens)))
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    was_training = model.training
    model.eval()
    items_out, layers_out, share_out, tokens_out = [], [], [], []
    try:
        starts = range(0, len(items), batch_size)
        for start in tqdm(starts, desc=f"attention {label}", unit="batch", disable=not progress):
            batch = build_batch(processor, items[start : start + batch_size], device=model.device, dtype=dtype)
            mask = batch["attention_mask"]
            position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
            out = model(**batch, position_ids=position_ids, output_attentions=True, logits_to_keep=1)
            _check_eager(model, out.attentions)
            # (batch, layers, heads, seq): the last query row of every layer, in float32.
            last = torch.stack([a[:, :, -1, :].float() for a in out.attentions], dim=1)
            last = last.mean(2)  # heads -> (batch, layers, seq)
            for b in range(last.shape[0]):
                visual = batch["input_ids"][b] == image_token_id
                values = last[b][:, visual]  # (layers, num_images * n_tokens)
                if values.shape[1] % n_tokens:
                    raise ValueError(f"item {start + b}: {values.shape[1]} image tokens, not a multiple of {n_tokens}")
                items_out.append(values.mean().item())
                layers_out.append(values.mean(1).cpu().numpy())
                share_out.append(values.sum(1).mean().item())
                per_image = values.mean(0).view(-1, n_tokens)  # (num_images, n_tokens)
                tokens_out.append(per_image.mean(0).cpu().numpy())
    finally:
        model.train(was_training)
    return VisualAttention(
        label=label,
        item_scores=np.asarray(items_out, dtype=np.float64),
        layer_scores=np.stack(layers_out).astype(np.float64),
        visual_share=np.asarray(share_out, dtype=np.float64),
        token_scores=np.stack(tokens_out).astype(np.float64),
        grid_size=grid,
        item_ids=list(item_ids) if item_ids is not None else list(range(len(items))),
    )


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------

PERCENTILES = (5, 25, 50, 75, 95)


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def summarize(att: VisualAttention) -> dict:
    """Mean, std and percentiles of the per-item scores; token-level percentiles; visual share; per-layer means."""
    scores = att.item_scores
    tokens = att.token_scores.ravel()
    return {
        "label": att.label,
        "num_items": int(scores.size),
        "mean": _finite(scores.mean()),
        "std": _finite(scores.std(ddof=1)) if scores.size > 1 else None,
        "percentiles": {f"p{q}": _finite(np.percentile(scores, q)) for q in PERCENTILES},
        "token_percentiles": {f"p{q}": _finite(np.percentile(tokens, q)) for q in (*PERCENTILES, 99)},
        "visual_share_mean": _finite(att.visual_share.mean()),
        "layer_means": [_finite(v) for v in att.layer_scores.mean(0)],
    }


def compare(a: VisualAttention, b: VisualAttention) -> dict:
    """``b`` vs ``a`` on per-item scores: difference of means, Welch t, Mann-Whitney U (two-sided), paired Wilcoxon."""
    from scipy import stats  # optional (the `eval` extra): only comparisons need it

    x, y = a.item_scores, b.item_scores
    result = {
        "a": a.label,
        "b": b.label,
        "mean_a": _finite(x.mean()),
        "mean_b": _finite(y.mean()),
        "mean_difference_b_minus_a": _finite(y.mean() - x.mean()),
        "ratio_b_over_a": _finite(y.mean() / x.mean()) if x.mean() else None,
    }
    t = stats.ttest_ind(y, x, equal_var=False)
    result["welch_t"] = {"statistic": _finite(t.statistic), "p_value": _finite(t.pvalue)}
    u = stats.mannwhitneyu(y, x, alternative="two-sided")
    result["mann_whitney_u"] = {"statistic": _finite(u.statistic), "p_value": _finite(u.pvalue)}
    if len(x) == len(y) and list(a.item_ids) == list(b.item_ids) and len(x) > 1 and np.any(x != y):
        w = stats.wilcoxon(y, x)
        result["paired_wilcoxon"] = {"statistic": _finite(w.statistic), "p_value": _finite(w.pvalue)}
    return result


# ---------------------------------------------------------------------------------------
# Heat maps
# ---------------------------------------------------------------------------------------

# viridis at 0, .25, .5, .75, 1 and a blue-white-red diverging map, for the PIL fallback.
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
_DIVERGING = np.array([[59, 76, 192], [221, 221, 221], [180, 4, 38]], dtype=np.float64)


def _colourize(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    positions = np.clip(values, 0, 1) * (len(anchors) - 1)
    low = np.floor(positions).astype(int).clip(0, len(anchors) - 2)
    frac = (positions - low)[..., None]
    return ((1 - frac) * anchors[low] + frac * anchors[low + 1]).round().astype(np.uint8)


def save_heatmap(
    grid: np.ndarray, path: str | Path, title: str = "", vmin: float | None = None, vmax: float | None = None,
    diverging: bool = False, cell: int = 24,
) -> Path:
    """Write ``grid`` (2-D) as a PNG heat map; ``diverging`` centres the colour scale on 0 (for differences)."""
    grid = np.asarray(grid, dtype=np.float64)
    if diverging:
        bound = float(np.abs(grid).max()) or 1.0
        vmin, vmax = -bound, bound
    vmin = float(grid.min()) if vmin is None else vmin
    vmax = float(grid.max()) if vmax is None else vmax
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        fig, ax = plt.subplots(figsize=(4.8, 4.2))
        image = ax.imshow(grid, cmap="coolwarm" if diverging else "viridis", vmin=vmin, vmax=vmax)
        fig.colorbar(image, ax=ax, format="%.2e")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path
    scaled = (grid - vmin) / (vmax - vmin) if vmax > vmin else np.full_like(grid, 0.5)
    rgb = _colourize(scaled, _DIVERGING if diverging else _VIRIDIS)
    heat = Image.fromarray(rgb, "RGB").resize((grid.shape[1] * cell, grid.shape[0] * cell), Image.NEAREST)
    canvas = Image.new("RGB", (heat.width, heat.height + 30), "white")
    canvas.paste(heat, (0, 30))
    ImageDraw.Draw(canvas).text((4, 2), f"{title}\nmin {vmin:.2e}  max {vmax:.2e}", fill="black")
    canvas.save(path)
    return path


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model"


def write_report(results: Sequence[VisualAttention], out_dir: str | Path, meta: dict | None = None) -> dict:
    """``attention.json`` / ``attention.md`` / heat maps for one or more models (each compared with the first)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        **(meta or {}),
        "statistic": "attention of the last prompt token per visual token, mean over heads and layers",
        "models": [summarize(r) for r in results],
        "comparisons": [compare(results[0], r) for r in results[1:]],
        "item_scores": {r.label: r.item_scores.tolist() for r in results},
        "heatmaps": {},
    }
    vmin = min(float(r.grid.min()) for r in results)
    vmax = max(float(r.grid.max()) for r in results)
    for r in results:
        path = save_heatmap(r.grid, out / f"heatmap_{_slug(r.label)}.png", f"{r.label}: last-token attention",
                            vmin, vmax)
        report["heatmaps"][r.label] = path.name
    if len(results) > 1:
        path = save_heatmap(results[-1].grid - results[0].grid, out / "heatmap_difference.png",
                            f"{results[-1].label} - {results[0].label}", diverging=True)
        report["heatmaps"]["difference"] = path.name
    (out / "attention.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "attention.md").write_text(report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    def fmt(x):
        return "n/a" if x is None else f"{x:.3e}"

    lines = [
        "| Model | Items | Mean | Median | p5 | p95 | Visual share |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in report["models"]:
        p = m["percentiles"]
        lines.append(f"| {m['label']} | {m['num_items']} | {fmt(m['mean'])} | {fmt(p['p50'])} | {fmt(p['p5'])} | "
                     f"{fmt(p['p95'])} | {m['visual_share_mean']:.4f} |")
    for c in report["comparisons"]:
        lines += [
            "",
            f"{c['b']} vs {c['a']}: mean difference {fmt(c['mean_difference_b_minus_a'])}, "
            f"Welch t p = {fmt(c['welch_t']['p_value'])}, Mann-Whitney U p = {fmt(c['mann_whitney_u']['p_value'])}"
            + (f", paired Wilcoxon p = {fmt(c['paired_wilcoxon']['p_value'])}" if "paired_wilcoxon" in c else ""),
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ross.eval.attention", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="checkpoints; each is compared with the first")
    parser.add_argument("--labels", nargs="+", default=None, help="names for the models (default: folder names)")
    parser.add_argument("--benchmark", required=True, help=f"one of: {', '.join(benchmark_names())}")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rules", default="lmms-eval", choices=RULES, help="prompt rules")
    parser.add_argument("--limit", type=int, default=None, help="first N items only")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(m).name or m for m in args.models]
    if len(labels) != len(args.models) or len(set(labels)) != len(labels):
        print("error: --labels must give one distinct label per model", file=sys.stderr)
        return 2

    try:
        bench, rows, prompts = load_items(args.benchmark, args.data, args.rules, args.limit)
    except (KeyError, ValueError, FileNotFoundError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    items = [(row["images"], prompt) for row, prompt in zip(rows, prompts)]
    results = []
    for path, label in zip(args.models, labels):
        model, processor = load_model(path, args.dtype, args.device, attn_implementation="eager")
        results.append(visual_attention(model, processor, items, label, args.batch_size, progress=not args.no_progress))
        del model
    meta = {"benchmark": bench.name, "rules": args.rules, "data": str(args.data), "models_paths": args.models}
    report = write_report(results, args.out, meta)
    print(report_markdown(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
