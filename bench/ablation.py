"""Does ROSS beat its LLaVA baseline on fine-grained questions? The paper's Table 3 / Figure 5 / Figure 7 in miniature,
under the pre-registered protocol `bench/ablation.yaml`.

    python bench/ablation.py --mode quick|full|cuda [--device cpu|cuda] [--out runs/ablation] [--report-only]
                             [--extra bench/ablation_extra.yaml]
    python bench/ablation.py --protocol bench/ablation_depth.yaml --mode quick --out runs/ablation_depth

RGB-D (the paper's Table 5; `bench/ablation_depth.yaml`): a protocol with `depth: true` trains on the depth world's
data, and an arm with `inputs: rgbd` gets every stage-2 sample as RGB + depth map (SpatialBot's layout, both images
reconstructed by ROSS) and is evaluated on `synthetic_depth` with the depth map (`synthetic_depth_rgbd`); the other
benchmarks have RGB images only, for every arm.

Every run trains the default run's two stages (`train/sft.py` via `train/demo.py`'s stage runner) on the same
fitted components (a SigLIP tower fitted with a coarse colour-presence objective, a KL autoencoder fitted on the
synthetic scenes: `train/pretrain_components.py`), the same data and seeds; only the objective differs (the arms
of the protocol: `none` = LLaVA, ROSS^R-Pixel, ROSS^R-Latent, ROSS^D-Pixel, ROSS^D). Per run it writes
`<out>/runs/<arm>-s<seed>-<data size>/result.json`:

- accuracy per benchmark and question type at each of `curve_steps` (stage-2 checkpoints: the learning curves);
- the same at the end with **patch shuffle**: the visual tokens of every image permuted across positions (a
  forward hook on the projector, one permutation per seed); an answer that survives it is not fine-grained;
- the last prompt token's attention to the visual tokens on `attention_items` MMVP items (`ross.eval.attention`).

A finished run is not run again (its result records the protocol's hash; a changed protocol reruns it, and so does a
mode with curve steps the stored run was not evaluated at). The report
(`ablation_<mode>.md` / `.json`) is refused while any run the mode registers lacks a result: no table from a subset.
It gives mean +/- std over seeds per arm, the shuffle drop, learning curves, the data-size sweep (full mode), the
attention comparison (Welch t and Mann-Whitney U on per-item scores, seeds pooled), and the protocol's claim checked.

`--extra FILE` adds arms that the protocol does not register (`bench/ablation_extra.yaml`: the generative variant,
`condition: queries`): each runs with the mode's seeds and data sizes next to the registered runs, records the
protocol's hash plus the file's, and the report is written as `ablation_<mode>_extra` with those arms marked. An extra
arm may give `model_overrides` (added to the protocol's) and `creation_fraction` (caption -> image records added to
stage 2's data). The registered protocol, its runs and their reports are untouched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import safe_open

from ross.eval.attention import VisualAttention, compare, visual_attention
from ross.eval.benchmarks import benchmark_names
from ross.eval.generation import evaluate_model, get_benchmark, load_items, load_model
from ross.train.demo import DemoSettings, StageSettings, benchmark_report, prepare_data, run_stage
from ross.train.pretrain_components import ComponentSettings, component_paths, format_detail, prepare_components
from ross.train.synthetic import write_llava_dataset


PROTOCOL = Path(__file__).with_name("ablation.yaml")


def log(message: str) -> None:
    print(f"[ablation] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Protocol
# ---------------------------------------------------------------------------------------------------------------------


EXTRA_ARM_KEYS = {"objective", "target", "model_overrides", "creation_fraction"}


def load_protocol(path: Path, mode: str, extra: Path | None = None) -> dict:
    """The protocol with the mode's settings applied, its hash, and the runs the mode registers (then those of the
    `extra` file's arms, which the protocol does not register)."""
    text = path.read_text()
    protocol = yaml.safe_load(text)
    if mode not in protocol["modes"]:
        raise SystemExit(f"error: {path}: no mode {mode!r}; modes: {', '.join(protocol['modes'])}")
    spec = protocol["modes"][mode]
    for key in ("stage2", "curve_steps"):
        protocol[key] = spec.get(key, protocol[key])
    unknown = sorted(set(spec["arms"]) - set(protocol["arms"]))
    if unknown:
        raise SystemExit(f"error: {path}: mode {mode!r} names unknown arms {unknown}")
    runs = [(arm, seed, size) for size in spec["data_sizes"] for arm in spec["arms"] for seed in spec["seeds"]]
    if "sweep" in spec:
        sweep = spec["sweep"]
        runs += [(arm, seed, size) for size in sweep["data_sizes"] for arm in sweep["arms"] for seed in spec["seeds"]]
    protocol.update(mode=mode, runs=runs, hash=hashlib.sha256(text.encode()).hexdigest()[:12], extra_arms=[])
    if extra is not None:
        add_extra_arms(protocol, extra, spec)
    return protocol


def add_extra_arms(protocol: dict, path: Path, spec: dict) -> None:
    """The arms of an extra file, run with the mode's seeds and data sizes; their hash covers both files."""
    text = path.read_text()
    arms = (yaml.safe_load(text) or {}).get("arms") or {}
    for name, arm in arms.items():
        if name in protocol["arms"]:
            raise SystemExit(f"error: {path}: arm {name!r} is registered by the protocol; name the extra arm otherwise")
        unknown = sorted(set(arm) - EXTRA_ARM_KEYS)
        if unknown or not {"objective", "target"} <= set(arm):
            raise SystemExit(f"error: {path}: arm {name!r} needs objective and target and may have "
                             f"{sorted(EXTRA_ARM_KEYS)}; unknown keys: {unknown}")  # fmt: skip
    protocol["arms"].update(arms)
    protocol["extra_arms"] = list(arms)
    protocol["extra_hash"] = hashlib.sha256(text.encode()).hexdigest()[:12]
    protocol["runs"] += [(arm, seed, size) for size in spec["data_sizes"] for arm in arms for seed in spec["seeds"]]


def run_hash(protocol: dict, arm: str | None) -> str:
    """The hash a run's result records: the protocol's, plus the extra file's for an extra arm."""
    if arm in protocol.get("extra_arms", ()):
        return f"{protocol['hash']}+{protocol['extra_hash']}"
    return protocol["hash"]


def run_id(arm: str, seed: int, size: str) -> str:
    return f"{arm}-s{seed}-{size}"


def is_current(result: dict | None, protocol: dict) -> bool:
    """Whether a stored result counts for this protocol and mode: the same protocol file (hash) and a learning curve
    at every curve step of the mode (a quick-mode run, evaluated only at its last step, is rerun for the full table)."""
    return (
        result is not None
        and result.get("protocol_hash") == run_hash(protocol, result.get("arm"))
        and all(str(step) in result.get("curve", {}) for step in protocol["curve_steps"])
    )


# ---------------------------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------------------------


class PatchShuffle:
    """Permutes each image's visual tokens across positions at the projector's output: `(M, N, D)` -> `(M, N, D)`."""

    def __init__(self, model, seed: int):
        num_tokens = model.config.image_seq_length
        self.permutation = torch.randperm(num_tokens, generator=torch.Generator().manual_seed(seed))
        self.handle = model.model.projector.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        return output[:, self.permutation.to(output.device)]

    def remove(self) -> None:
        self.handle.remove()


def benchmark_for(name: str, inputs: str) -> str:
    """The registry entry an arm is evaluated with: its `_rgbd` variant (depth map as a second image) if it has one
    and the arm's inputs are `rgbd`, else `name`."""
    return f"{name}_rgbd" if inputs == "rgbd" and f"{name}_rgbd" in benchmark_names() else name


def evaluate_folder(model_dir: Path, data_root: Path, data: dict, out_dir: Path, protocol: dict, device: str,
                    shuffle_seed: int | None = None, inputs: str = "rgb") -> dict:  # fmt: skip
    """Every synthetic benchmark, per question type (as `make demo` reports them); optionally patch-shuffled."""
    model, processor = load_model(model_dir, dtype="auto", device=device)
    shuffle = PatchShuffle(model, shuffle_seed) if shuffle_seed is not None else None
    results = {}
    try:
        for name, rel_path in data["benchmarks"].items():
            bench = get_benchmark(benchmark_for(name, inputs))  # results keep the plain name: one column per arm
            scores = evaluate_model(
                model, processor, bench, data_root / rel_path, batch_size=protocol["eval_batch_size"],
                out_dir=out_dir / name, max_new_tokens=protocol["eval_max_new_tokens"], progress=False,
                model_name=str(model_dir),
            )  # fmt: skip
            records = [json.loads(line) for line in (out_dir / name / "predictions.jsonl").read_text().splitlines()]
            results[name] = benchmark_report(bench, records, scores)
    finally:
        if shuffle is not None:
            shuffle.remove()
    results["fine_grained_accuracy"] = statistics.mean(results[n]["accuracy"] for n in protocol["fine_grained"])
    return results


def attention_scores(model_dir: Path, data_root: Path, data: dict, protocol: dict, device: str) -> list[float]:
    """Per-item attention of the last prompt token to the visual tokens on MMVP items (the paper's Table 1 number)."""
    model, processor = load_model(model_dir, dtype="auto", device=device, attn_implementation="eager")
    _, rows, prompts = load_items("synthetic_mmvp", data_root / data["benchmarks"]["synthetic_mmvp"],
                                  limit=protocol["attention_items"])  # fmt: skip
    items = [(row["images"], prompt) for row, prompt in zip(rows, prompts)]
    return visual_attention(model, processor, items, progress=False).item_scores.tolist()


def parameter_counts(model_dir: Path) -> dict:
    """Parameters of the LLM, of the denoiser and of the learnable queries (`condition: queries` only), read from the
    safetensors headers."""
    counts = {"language_model": 0, "denoiser": 0, "queries": 0}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                size = math.prod(handle.get_slice(key).get_shape())
                if key.startswith("denoiser."):
                    counts["denoiser"] += size
                elif key.startswith("queries."):
                    counts["queries"] += size
                elif key.startswith("model.language_model."):
                    counts["language_model"] += size
    return counts


def train_run(arm: str, seed: int, paths: dict, manifest: dict, data_root: Path, data: dict, run_dir: Path,
              protocol: dict, device: str) -> dict:  # fmt: skip
    """Stage 1 then stage 2 (checkpoints at the curve steps) of one arm; returns both stages' summaries."""
    spec = protocol["arms"][arm]
    common = {"prepare_tiny": "null", "image_folder": str(data_root / data["image_folder"]), "seed": seed,
              "objective": spec["objective"], "target": spec["target"], "disable_tqdm": "true",
              "dataloader_num_workers": 0, "logging_steps": max(1, min(10, protocol["stage2"]["max_steps"] // 20))}
    overrides = {**protocol["model_overrides"], **manifest["objective_overrides"], **spec.get("model_overrides", {})}
    stage1 = StageSettings(**{k: protocol["stage1"][k] for k in ("max_steps", "batch_size", "learning_rate")})
    stage2 = StageSettings(**{k: protocol["stage2"][k] for k in ("max_steps", "batch_size", "learning_rate")})
    queries = overrides.get("condition") == "queries"  # its targets are creation images, which the cache lacks
    if protocol.get("latent_cache") and spec["objective"] != "none" and spec["target"] == "vae" and not queries:
        # the frozen teacher's (mean, std) per image, encoded once for every run of these components and data
        common.update(latent_cache_dir=str(Path(paths["vision_model"]).parent / "latent_cache"), build_latent_cache="true")
    cpu = torch.device(device).type == "cpu"
    if not cpu:  # the tiny configs set use_cpu; on a GPU train in bf16 as the recipe does
        common.update(use_cpu="false", bf16="true")
    stage2_data = data["stage2_data_rgbd"] if spec.get("inputs", "rgb") == "rgbd" else data["stage2_data"]
    first = run_stage(1, run_dir / "stage1", {
        **common, **paths, "model_overrides": overrides, "data_path": str(data_root / data["stage1_data"]),
        "output_dir": str(run_dir / "stage1"), **stage1.overrides()}, run_dir / "stage1" / "train.log", cpu=cpu)
    every = math.gcd(*protocol["curve_steps"])
    second = run_stage(2, run_dir / "stage2", {
        **common, "model_name_or_path": str(run_dir / "stage1" / "model"),
        "data_path": str(data_root / stage2_data), "output_dir": str(run_dir / "stage2"),
        "save_strategy": "steps", "save_steps": every, "save_only_model": "true", **stage2.overrides(),
    }, run_dir / "stage2" / "train.log", cpu=cpu)  # fmt: skip
    return {"stage1": first, "stage2": second}


def with_creation_data(spec: dict, data_root: Path, data: dict, settings: DemoSettings) -> dict:
    """The data manifest, its stage-2 data replaced for an arm with `creation_fraction` by the same records plus
    caption -> image creation records (written once beside them: the same instruction scenes, the creation scenes
    from their own random stream; the JSON, written last, marks a complete set)."""
    fraction = spec.get("creation_fraction")
    if not fraction:
        return data
    name = f"synthetic_sft_create{fraction:g}"
    path = data_root / data["image_folder"] / f"{name}.json"
    if not path.is_file():
        write_llava_dataset(str(path.parent), settings.sft_images, seed=0, size=settings.image_size, stage="sft",
                            name=name, creation_fraction=fraction)  # fmt: skip
    return {**data, "stage2_data": str(path.relative_to(data_root))}


def run_one(arm: str, seed: int, size: str, out: Path, protocol: dict, device: str) -> dict:
    """Train, evaluate (curve, shuffle, attention) and record one registered run; reuse a finished one."""
    run_dir = out / "runs" / run_id(arm, seed, size)
    result_file = run_dir / "result.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        if is_current(result, protocol):
            log(f"{run_id(arm, seed, size)}: done earlier, reusing {result_file}")
            return result
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    components_root = out / "components"
    manifest = prepare_components(components_root, ComponentSettings(**protocol["components"]), log=log, probe=True)
    paths = component_paths(components_root, manifest)
    settings = DemoSettings(plain_images=protocol["plain_images"], sft_images=protocol["data_sizes"][size],
                            benchmark_items=protocol["benchmark_items"], depth=protocol.get("depth", False))  # fmt: skip
    data = prepare_data(out / "data", settings)
    data_root = out / "data" / data["key"]
    data = with_creation_data(protocol["arms"][arm], data_root, data, settings)

    log(f"{run_id(arm, seed, size)}: training ({protocol['stage2']['max_steps']} stage-2 steps)")
    training = train_run(arm, seed, paths, manifest, data_root, data, run_dir, protocol, device)
    curve, inputs = {}, protocol["arms"][arm].get("inputs", "rgb")
    for step in protocol["curve_steps"]:
        folder = run_dir / "stage2" / f"checkpoint-{step}"
        curve[step] = evaluate_folder(folder, data_root, data, run_dir / "eval" / f"step{step}", protocol, device,
                                      inputs=inputs)  # fmt: skip
        log(f"{run_id(arm, seed, size)}: step {step}: fine-grained accuracy {curve[step]['fine_grained_accuracy']:.3f}")
    model_dir = run_dir / "stage2" / "model"
    shuffled = evaluate_folder(model_dir, data_root, data, run_dir / "eval" / "shuffled", protocol, device, seed, inputs)
    result = {
        "run": run_id(arm, seed, size), "arm": arm, "seed": seed, "data_size": size,
        "protocol_hash": run_hash(protocol, arm),
        "protocol_version": protocol["protocol_version"], "curve": curve, "final": curve[max(curve)],
        "shuffled": shuffled, "attention": attention_scores(model_dir, data_root, data, protocol, device),
        "parameters": parameter_counts(model_dir), "training": training,
        "components": {k: manifest.get(k) for k in ("vision_tower", "vae", "detail_probe")},
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    for checkpoint in (run_dir / "stage2").glob("checkpoint-*"):  # evaluated: the curve keeps what they showed
        shutil.rmtree(checkpoint)
    result_file.write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def _cell(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} +/- {std:.3f}"


def collect(protocol: dict, out: Path) -> dict:
    """Every registered run's result, or SystemExit naming the missing ones (no table from a subset)."""
    results, missing = {}, []
    for arm, seed, size in protocol["runs"]:
        file = out / "runs" / run_id(arm, seed, size) / "result.json"
        result = json.loads(file.read_text()) if file.is_file() else None
        if not is_current(result, protocol):
            missing.append(run_id(arm, seed, size))
        else:
            results[(arm, seed, size)] = result
    if missing:
        raise SystemExit(f"error: no report: {len(missing)} of the {len(protocol['runs'])} runs registered by mode "
                         f"{protocol['mode']!r} have no result under this protocol: {', '.join(missing)}")  # fmt: skip
    return results


def _accuracy(evaluation: dict, key: str) -> float:
    return evaluation[key] if key == "fine_grained_accuracy" else evaluation[key]["accuracy"]


def summarize(protocol: dict, results: dict) -> dict:
    """Per (arm, data size): final, shuffled and curve metrics over seeds; the protocol's claim."""
    groups: dict = {}
    for (arm, seed, size), result in results.items():
        groups.setdefault((arm, size), []).append(result)
    benchmarks = [*protocol["fine_grained"], *protocol["controls"]]
    table = {}
    for (arm, size), runs in groups.items():
        row = {"seeds": [r["seed"] for r in runs]}
        for key in ("fine_grained_accuracy", *benchmarks):
            row[key] = [_accuracy(r["final"], key) for r in runs]
            row[f"{key}:shuffled"] = [_accuracy(r["shuffled"], key) for r in runs]
            if key != "fine_grained_accuracy" and "pair_accuracy" in runs[0]["final"][key]:
                row[f"{key}:pairs"] = [r["final"][key]["pair_accuracy"] for r in runs]
        row["curve"] = {step: [r["curve"][str(step)]["fine_grained_accuracy"] for r in runs]
                        for step in protocol["curve_steps"]}  # fmt: skip
        row["attention"] = [score for r in runs for score in r["attention"]]
        row["parameters"] = runs[0]["parameters"]
        table[f"{arm}@{size}"] = row
    return table


def _attention(label: str, scores: list[float]) -> VisualAttention:
    """Per-item scores (seeds pooled) in the container `ross.eval.attention.compare` reads."""
    n = len(scores)
    return VisualAttention(label, np.asarray(scores), np.zeros((n, 0)), np.zeros(n), np.zeros((n, 0)), grid_size=0)


def claim(protocol: dict, table: dict) -> dict | None:
    """The pre-registered comparison on the primary metric and on attention, at the first data size."""
    size = protocol["modes"][protocol["mode"]]["data_sizes"][0]
    base, ross = (table.get(f"{arm}@{size}") for arm in protocol["compare"])
    if base is None or ross is None:
        return None
    (mb, sb), (mr, sr) = _mean_std(base["fine_grained_accuracy"]), _mean_std(ross["fine_grained_accuracy"])
    spread = max(sb, sr)

    attention = compare(_attention(protocol["compare"][0], base["attention"]),
                        _attention(protocol["compare"][1], ross["attention"]))  # fmt: skip
    beats = (not math.isnan(spread)) and mr - mb > 2 * spread
    result = {
        "difference": mr - mb, "larger_seed_std": spread, "beats_by_two_std": beats,
        "attention": attention,
        "attends_more": attention["mean_difference_b_minus_a"] > 0 and attention["welch_t"]["p_value"] < 0.01,
        "verdict": "positive" if beats else "null",
    }  # fmt: skip
    floor = protocol.get("competence")
    if floor:  # a baseline that cannot do the task makes the comparison uninformative, whatever the difference
        pairs = float(np.mean(table[f"{floor['arm']}@{size}"][f"{floor['benchmark']}:pairs"]))
        result["competence"] = {**floor, "pair_accuracy": pairs, "met": pairs > floor["pair_accuracy_min"]}
        if not result["competence"]["met"]:
            result["verdict"] = "uninformative"
    return result


def markdown(protocol: dict, table: dict, verdict: dict | None, components: dict) -> str:
    benchmarks = [*protocol["fine_grained"], *protocol["controls"]]
    short = {n: n.replace("synthetic_", "") for n in benchmarks}
    vae, tower = components["vae"], components["vision_tower"]
    lines = [f"Protocol v{protocol['protocol_version']} ({protocol['hash']}), mode `{protocol['mode']}`, "
             f"{protocol['stage2']['max_steps']} stage-2 steps. Tower colour probe {tower['probe_accuracy']:.3f} "
             f"(majority {tower['probe_chance']:.3f}); teacher VAE PSNR {vae['psnr_db']:.1f} dB.",
             f"Components, {format_detail(components['detail_probe'])}." if "detail_probe" in components else "", "",
             "| arm @ data | denoiser / LLM | fine-grained (primary) | shuffled | "
             + " | ".join(short[n] for n in benchmarks) + " |",
             "|---|---|---|---|" + "---|" * len(benchmarks)]  # fmt: skip
    for name, row in table.items():
        params = row["parameters"]
        ratio = params["denoiser"] / params["language_model"] if params["language_model"] else 0
        cells = [_cell(row["fine_grained_accuracy"]), _cell(row["fine_grained_accuracy:shuffled"])]
        cells += [_cell(row[n]) for n in benchmarks]
        lines.append(f"| {_label(protocol, name)} | {ratio:.1%} | " + " | ".join(cells) + " |")
    lines += ["", "Learning curves (fine-grained accuracy, mean over seeds):", "",
              "| arm @ data | " + " | ".join(f"step {s}" for s in protocol["curve_steps"]) + " |",
              "|---|" + "---|" * len(protocol["curve_steps"])]  # fmt: skip
    for name, row in table.items():
        lines.append(f"| {_label(protocol, name)} | "
                     + " | ".join(_cell(row["curve"][s]) for s in protocol["curve_steps"]) + " |")  # fmt: skip
    if verdict:
        a = verdict["attention"]
        lines += ["", f"Claim ({protocol['compare'][1]} vs {protocol['compare'][0]}): difference "
                  f"{verdict['difference']:+.3f}, larger seed std {verdict['larger_seed_std']:.3f} -> beats by 2 std: "
                  f"{'yes' if verdict['beats_by_two_std'] else 'no'}. Last-token attention to visual tokens "
                  f"{a['mean_a']:.3e} vs {a['mean_b']:.3e} (Welch p = {a['welch_t']['p_value']:.2g}, Mann-Whitney p = "
                  f"{a['mann_whitney_u']['p_value']:.2g}) -> attends more (p < 0.01): "
                  f"{'yes' if verdict['attends_more'] else 'no'}."]  # fmt: skip
        floor = verdict.get("competence")
        if floor:
            lines += ["", f"Competence floor ({floor['arm']}: {floor['benchmark']} pair accuracy above "
                      f"{floor['pair_accuracy_min']}): {floor['pair_accuracy']:.3f} -> "
                      f"{'met' if floor['met'] else 'not met'}."]  # fmt: skip
        lines += ["", f"Verdict: **{verdict['verdict']}**."]
    return "\n".join(lines) + "\n"


def _label(protocol: dict, name: str) -> str:
    """`arm@size`, marked when the protocol does not register the arm."""
    return f"{name} (extra)" if name.split("@")[0] in protocol.get("extra_arms", ()) else name


def report(protocol: dict, out: Path) -> dict:
    results = collect(protocol, out)
    table = summarize(protocol, results)
    verdict = claim(protocol, table)
    components = next(iter(results.values()))["components"]
    text = markdown(protocol, table, verdict, components)
    payload = {"protocol": {k: v for k, v in protocol.items() if k != "runs"}, "runs": [r for r in results.values()],
               "table": table, "claim": verdict}  # fmt: skip
    stem = f"ablation_{protocol['mode']}" + ("_extra" if protocol.get("extra_arms") else "")
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str))
    (out / f"{stem}.md").write_text(text)
    print(text)
    return payload


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default="quick", choices=["quick", "full", "cuda"])
    parser.add_argument("--protocol", type=Path, default=PROTOCOL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--report-only", action="store_true", help="report the runs already there; train nothing")
    parser.add_argument("--extra", type=Path, default=None,
                        help="extra, non-registered arms (bench/ablation_extra.yaml: the generative variant)")
    args = parser.parse_args(argv)
    protocol = load_protocol(args.protocol, args.mode, args.extra)
    out = args.out.resolve()
    if not args.report_only:
        for number, (arm, seed, size) in enumerate(protocol["runs"], 1):
            log(f"run {number}/{len(protocol['runs'])}: {run_id(arm, seed, size)}")
            run_one(arm, seed, size, out, protocol, args.device)
    report(protocol, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
