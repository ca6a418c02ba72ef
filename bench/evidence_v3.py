"""The harness of evidence protocol v3 (`bench/evidence_v3.yaml`, pre-registered; docs/evidence.md).

    python bench/evidence_v3.py --mode smoke|full [--out runs/evidence_v3] [--report-only | --progress]

What is implemented and tested (`tests/test_evidence_v3.py`):
- the protocol, loaded with its sha256 and the mode's overrides;
- provenance on every stored result: protocol version and hash, git commit (and a dirty tree), CPU model, torch
  version, UTC start / end; per-item predictions of every benchmark stored as `predictions.jsonl.gz`;
- the report: refuses results of different commits, CPU models or protocol hashes, then the registered gates in
  order (ROSS active, baseline competence, convergence) and the verdict from seed-level one-sided Welch tests
  (positive / null / inconclusive, SESOI +0.03); attention compared on per-run means;
- the stage-2 data of the protocol's regime: fine-grained questions kept on `fine_grained_fraction` of the images
  (`scarce_fine_grained`), data and benchmark items drawn per seed.

Training (`run_one`): per seed, components fitted with that seed, data and benchmark items drawn with it, the LLM
text-pretrained once (`pretrain_llm`: text renderings of scenes with the questions' turns, objective none, the LLM
exported as a plain Qwen2 folder that replaces the components' `qwen2-tiny`), then each arm's two stages
(`bench/ablation.py`'s `train_run`), evaluation at the curve steps, the ROSS-active check (`make demo`'s), the
attention per run and the compressed predictions. Only the smoke mode has been run (its test is marked slow); the
full table has not.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import math
import platform
import random
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml
from scipy import stats


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bench"))
from _common import cpu_model, git_commit  # noqa: E402  (bench/'s shared helpers; this file also runs as a script)

PROTOCOL = REPO_ROOT / "bench" / "evidence_v3.yaml"
# Question prefixes of the synthetic worlds' fine-grained types (existence, count, position; MMVP-style pairs are
# existence / position questions). Colour and shape questions and captions stay on every image.
FINE_GRAINED_PREFIXES = ("Is there", "How many", "Where is", "Is the", "Are there", "Which")


class ProvenanceError(RuntimeError):
    """Results that must not be mixed in one table."""


def log(message: str) -> None:
    print(f"[evidence_v3] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Protocol and provenance
# ---------------------------------------------------------------------------------------------------------------------


def load_protocol(path: Path = PROTOCOL, mode: str = "full") -> dict:
    """The protocol with `modes[mode]`'s overrides applied (dicts merged one level deep), plus `hash` (sha256 of the
    file, first 16 hex digits) and `mode`."""
    text = Path(path).read_text()
    protocol = yaml.safe_load(text)
    if mode not in protocol["modes"]:
        raise SystemExit(f"{path}: no mode {mode!r}; modes: {sorted(protocol['modes'])}")
    for key, value in (protocol["modes"][mode] or {}).items():
        protocol[key] = {**protocol[key], **value} if isinstance(value, dict) and isinstance(protocol.get(key), dict) else value
    protocol["hash"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    protocol["mode"] = mode
    return protocol


def provenance(protocol: dict, started: float | None = None) -> dict:
    import torch

    commit, dirty = git_commit()
    now = datetime.now(timezone.utc)
    return {
        "protocol_version": protocol["protocol_version"],
        "protocol_hash": protocol["hash"],
        "commit": commit,
        "dirty": dirty,
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "started_utc": datetime.fromtimestamp(started, timezone.utc).isoformat() if started else now.isoformat(),
        "finished_utc": now.isoformat(),
    }


def store_result(run_dir: Path, result: dict, predictions: dict[str, list[dict]]) -> Path:
    """`run_dir/result.json` (which must hold `provenance`) and `run_dir/predictions/<benchmark>.jsonl.gz`."""
    if "provenance" not in result:
        raise ValueError(f"{run_dir}: a result without provenance is not stored")
    folder = Path(run_dir) / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    for name, records in predictions.items():
        with gzip.open(folder / f"{name}.jsonl.gz", "wt", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, sort_keys=True) + "\n")
    path = Path(run_dir) / "result.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def load_predictions(run_dir: Path, name: str) -> list[dict]:
    with gzip.open(Path(run_dir) / "predictions" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load_results(out: Path) -> list[dict]:
    results = []
    for path in sorted(Path(out).glob("runs/*/result.json")):
        result = json.loads(path.read_text())
        result["_dir"] = str(path.parent)
        results.append(result)
    return results


def check_provenance(results: list[dict], protocol: dict) -> None:
    """Refuse a table that mixes commits, CPU models or protocol versions (or holds a result without provenance)."""
    for key, label in (("commit", "commits"), ("cpu_model", "CPU models"), ("protocol_hash", "protocol hashes")):
        values = {r.get("provenance", {}).get(key) for r in results}
        if None in values:
            missing = [r.get("run", r.get("_dir")) for r in results if r.get("provenance", {}).get(key) is None]
            raise ProvenanceError(f"results without provenance {key!r}: {missing}")
        if len(values) > 1:
            raise ProvenanceError(f"refusing to mix {label} in one table: {sorted(values)}")
    hashes = {r["provenance"]["protocol_hash"] for r in results}
    if hashes and hashes != {protocol["hash"]}:
        raise ProvenanceError(f"results are of protocol {sorted(hashes)}, this protocol is {protocol['hash']}")


# ---------------------------------------------------------------------------------------------------------------------
# The regime's data: fine-grained questions scarce
# ---------------------------------------------------------------------------------------------------------------------


def is_fine_grained(question: str) -> bool:
    text = question.replace("<image>", "").strip()
    return text.startswith(FINE_GRAINED_PREFIXES)


def scarce_fine_grained(records: list[dict], fraction: float, seed: int) -> list[dict]:
    """LLaVA records with the fine-grained (question, answer) turns kept on `fraction` of the image records (drawn
    with `seed`) and dropped from the others; a record left without a turn is dropped. Text-only records are kept
    as they are. The `<image>` tag moves to the first remaining question."""
    rng = random.Random(seed)
    image_records = [i for i, r in enumerate(records) if r.get("image")]
    keep = set(rng.sample(image_records, round(fraction * len(image_records))))
    out = []
    for index, record in enumerate(records):
        if not record.get("image") or index in keep:
            out.append(record)
            continue
        turns = record["conversations"]
        pairs = [(turns[i], turns[i + 1]) for i in range(0, len(turns) - 1, 2)]
        pairs = [(q, a) for q, a in pairs if not is_fine_grained(q["value"])]
        if not pairs:
            continue
        conversations = [dict(t) for pair in pairs for t in pair]
        if not conversations[0]["value"].startswith("<image>"):
            conversations[0]["value"] = "<image>\n" + conversations[0]["value"].replace("<image>\n", "")
        out.append({**record, "conversations": conversations})
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Statistics and the verdict
# ---------------------------------------------------------------------------------------------------------------------


def welch_greater(a: list[float], b: list[float], delta: float = 0.0) -> float:
    """One-sided Welch t-test p-value for mean(a) - mean(b) > delta."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    shifted = [x - delta for x in a]
    if statistics.pstdev(shifted) == 0 and statistics.pstdev(b) == 0:
        return 0.0 if statistics.mean(shifted) > statistics.mean(b) else 1.0
    return float(stats.ttest_ind(shifted, b, equal_var=False, alternative="greater").pvalue)


def chance_se(chance: float, n: int) -> float:
    return math.sqrt(chance * (1 - chance) / max(1, n))


def _by_arm(results: list[dict]) -> dict[str, list[dict]]:
    arms: dict[str, list[dict]] = {}
    for r in sorted(results, key=lambda r: (r["arm"], r["seed"])):
        arms.setdefault(r["arm"], []).append(r)
    return arms


def _mean(values):
    return statistics.mean(values) if values else float("nan")


def verdict(protocol: dict, results: list[dict]) -> dict:
    """The registered gates in order, then the verdict on the primary metric. Each result holds `arm`, `seed`,
    `final` (benchmark -> {accuracy, chance, num_items, yes_ratio?, pair_accuracy?}, and `fine_grained_accuracy`),
    `curve` (step -> fine_grained_accuracy), `check` (ross arms: the ROSS-active check, `passed`) and
    `attention_mean`."""
    try:
        check_provenance(results, protocol)
    except ProvenanceError as error:
        return {"verdict": "refused", "reason": str(error)}
    arms = _by_arm(results)
    expected = {(arm, seed) for arm in protocol["arms"] for seed in protocol["seeds"]}
    have = {(r["arm"], r["seed"]) for r in results}
    if have != expected:
        return {"verdict": "refused", "reason": f"missing runs: {sorted(expected - have)}; no table from a subset"}
    primary = {arm: [r["final"]["fine_grained_accuracy"] for r in runs] for arm, runs in arms.items()}
    out = {"primary": {arm: {"mean": _mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}
                       for arm, v in primary.items()}}  # fmt: skip

    active = [bool(r.get("check", {}).get("passed")) for r in arms["ross_d"]]
    out["ross_active_runs"] = sum(active)
    if sum(active) < protocol["ross_active"]["min_active_runs"]:
        return {**out, "verdict": "ross_inactive",
                "reason": f"{sum(active)} of {len(active)} ROSS^D runs pass the end-of-run check "
                          f"(needs {protocol['ross_active']['min_active_runs']})"}  # fmt: skip

    floors, base = protocol["competence"], arms["baseline"]
    misses = []
    yes = _mean([r["final"]["synthetic_pope"].get("yes_ratio", 1.0) for r in base])
    if not yes < floors["pope_yes_ratio_max"]:
        misses.append(f"POPE yes-ratio {yes:.3f} (needs < {floors['pope_yes_ratio_max']})")
    pairs = _mean([r["final"]["synthetic_mmvp"].get("pair_accuracy", 0.0) for r in base])
    if not pairs > floors["mmvp_pair_accuracy_min"]:
        misses.append(f"MMVP pair accuracy {pairs:.3f} (needs > {floors['mmvp_pair_accuracy_min']})")
    for name in protocol["fine_grained"]:
        accuracy = _mean([r["final"][name]["accuracy"] for r in base])
        chance, n = base[0]["final"][name]["chance"], base[0]["final"][name]["num_items"]
        if not accuracy - chance > floors["above_chance_se"] * chance_se(chance, n):
            misses.append(f"{name} {accuracy:.3f} not above chance {chance:.3f} by {floors['above_chance_se']} SE")
    out["competence_misses"] = misses
    if misses:
        return {**out, "verdict": "uninformative", "reason": "the baseline misses its floors: " + "; ".join(misses)}

    steps = sorted(protocol["curve_steps"], key=int)
    if len(steps) > 1:
        last = [_mean([r["curve"][str(s)] if str(s) in r["curve"] else r["curve"][s] for r in base]) for s in steps[-2:]]
        out["baseline_last_curve_change"] = last[1] - last[0]
        if abs(last[1] - last[0]) >= protocol["flat_tolerance"]:
            return {**out, "verdict": "not_converged",
                    "reason": f"baseline moved {last[1] - last[0]:+.3f} between steps {steps[-2]} and {steps[-1]}"}

    alpha, sesoi = protocol["test"]["alpha"], protocol["test"]["sesoi"]
    ross, control, baseline = primary["ross_d"], primary["ross_d_shuffled"], primary["baseline"]
    tests = {
        "ross_d_vs_baseline_p": welch_greater(ross, baseline),
        "ross_d_vs_control_p": welch_greater(ross, control),
        # H0: ross_d - control >= sesoi (rejected -> the effect of reconstruction is below the SESOI)
        "control_effect_below_sesoi_p": welch_greater(control, ross, delta=-sesoi),
        "ross_d_minus_control": _mean(ross) - _mean(control),
        "ross_d_minus_baseline": _mean(ross) - _mean(baseline),
    }
    out["tests"] = tests
    attention = {arm: [r.get("attention_mean") for r in runs] for arm, runs in arms.items()}
    if all(v is not None for values in attention.values() for v in values):
        out["attention_per_run_p_two_sided"] = float(stats.ttest_ind(attention["ross_d"], attention["baseline"],
                                                                    equal_var=False).pvalue)  # fmt: skip
    if (tests["ross_d_vs_baseline_p"] < alpha and tests["ross_d_vs_control_p"] < alpha
            and tests["ross_d_minus_control"] >= sesoi):  # fmt: skip
        return {**out, "verdict": "positive"}
    if tests["control_effect_below_sesoi_p"] < alpha:
        return {**out, "verdict": "null"}
    return {**out, "verdict": "inconclusive"}


def markdown(protocol: dict, result: dict) -> str:
    lines = [f"# Evidence v3 ({protocol['mode']} mode), protocol {protocol['hash']}", "",
             f"**Verdict: {result['verdict']}**" + (f": {result['reason']}" if result.get("reason") else ""), ""]  # fmt: skip
    if "primary" in result:
        lines += ["| arm | fine-grained (primary), mean +/- seed std | seeds |", "|---|---|---|"]
        for arm, row in result["primary"].items():
            lines.append(f"| {arm} | {row['mean']:.3f} +/- {row['std']:.3f} | {len(row['values'])} |")
    if "tests" in result:
        t = result["tests"]
        lines += ["", f"ROSS^D - baseline {t['ross_d_minus_baseline']:+.3f} (one-sided Welch p = "
                  f"{t['ross_d_vs_baseline_p']:.3g}); ROSS^D - matched control {t['ross_d_minus_control']:+.3f} "
                  f"(p = {t['ross_d_vs_control_p']:.3g}); effect below SESOI p = {t['control_effect_below_sesoi_p']:.3g}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def progress(protocol: dict, out: Path) -> str:
    """A row per finished run (same provenance refusals as the report), for a table still being run: the figures each
    run shows, never a verdict, which needs every (arm, seed)."""
    results = load_results(out)
    check_provenance(results, protocol)
    steps = [str(s) for s in protocol["curve_steps"]]
    others = [name for name in protocol["fine_grained"] if name not in ("synthetic_pope", "synthetic_mmvp")]
    outcome = {(True, False): "passed", (False, False): "**failed**", (False, True): "failed, as a control should",
               (True, True): "**passed** (a control should not)"}  # (check passed, arm is the control)  # fmt: skip
    lines = [f"Evidence v3 ({protocol['mode']} mode): {len(results)} of "
             f"{len(protocol['arms']) * len(protocol['seeds'])} runs finished; no verdict until all are.", "",
             f"| run | fine-grained (primary) | curve {' / '.join(steps)} | POPE (yes-ratio) | MMVP (pairs) | "
             + " | ".join(name.removeprefix("synthetic_") for name in others) + " | ROSS-active check |",
             "|---" * (6 + len(others)) + "|"]  # fmt: skip
    for r in sorted(results, key=lambda r: (r["seed"], list(protocol["arms"]).index(r["arm"]))):
        f = r["final"]
        check, control = r.get("check"), protocol["arms"][r["arm"]].get("shuffle_condition", False)
        verdict = "-" if check is None else (
            f"{outcome[bool(check['passed']), control]} (loss {check['visual_loss_true']:.3f} vs "
            f"{check['visual_loss_shuffled']:.3f}; PSNR {check['psnr_ross_vs_teacher_db']:.2f} own, "
            f"{check['psnr_ross_vs_other_teacher_db']:.2f} other, {check['psnr_constant_vs_teacher_db']:.2f} constant)")
        row = [r["run"], f"{f['fine_grained_accuracy']:.3f}", " / ".join(f"{r['curve'][s]:.3f}" for s in steps),
               f"{f['synthetic_pope']['accuracy']:.3f} ({f['synthetic_pope']['yes_ratio']:.3f})",
               f"{f['synthetic_mmvp']['accuracy']:.3f} ({f['synthetic_mmvp']['pair_accuracy']:.3f})"]
        row += [f"{f[name]['accuracy']:.3f}" for name in others]
        lines.append("| " + " | ".join(row + [verdict]) + " |")
    return "\n".join(lines) + "\n"


def report(protocol: dict, out: Path) -> dict:
    results = load_results(out)
    result = verdict(protocol, results)
    if results and result["verdict"] != "refused":
        result["provenance"] = {k: results[0]["provenance"][k] for k in ("commit", "cpu_model", "protocol_hash")}
    (Path(out) / f"evidence_v3_{protocol['mode']}.json").write_text(json.dumps(result, indent=1) + "\n")
    (Path(out) / f"evidence_v3_{protocol['mode']}.md").write_text(markdown(protocol, result))
    print(markdown(protocol, result))
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Training (per seed: components, data, text-pretrained LLM; per arm: two stages, evaluation, check)
# ---------------------------------------------------------------------------------------------------------------------


def seed_data(out: Path, protocol: dict, seed: int) -> tuple[Path, dict]:
    """Training data drawn with `seed`, fine-grained turns made scarce in stage 2, benchmarks drawn with 1000 + seed."""
    from ross.eval.synthetic import BENCHMARKS, write_benchmarks
    from ross.train.synthetic import write_llava_dataset

    root = Path(out) / "data" / f"s{seed}"
    manifest_file = root / "data.json"
    if manifest_file.is_file():
        return root, json.loads(manifest_file.read_text())
    d, train = protocol["data"], root / "train"
    plain = write_llava_dataset(str(train), d["plain_images"], seed=seed, size=48, stage="plain")
    sft = write_llava_dataset(str(train), d["sft_images"], seed=seed, size=48, stage="sft")
    records = scarce_fine_grained(json.loads(Path(sft).read_text()), d["fine_grained_fraction"], seed)
    scarce = train / "synthetic_sft_scarce.json"
    scarce.write_text(json.dumps(records))
    benchmarks = write_benchmarks(str(root / "benchmarks"), protocol["benchmark_items"], seed=1000 + seed,
                                  size=48, names=BENCHMARKS)  # fmt: skip
    manifest = {
        "key": f"s{seed}", "image_folder": "train",
        "stage1_data": str(Path(plain).relative_to(root)), "stage2_data": str(scarce.relative_to(root)),
        "benchmarks": {name: str(Path(path).relative_to(root)) for name, path in benchmarks.items()},
    }  # fmt: skip
    manifest_file.write_text(json.dumps(manifest, indent=1))
    return root, manifest


def text_records(protocol: dict, seed: int) -> list[dict]:
    """Text-only chat records: a scene written out, then the questions' turns about it (their own seed stream)."""
    from ross.synthetic.world import caption, make_rng, make_scene
    from ross.train.synthetic import _sft_turns

    rng = make_rng(seed, "evidence_v3:text")
    records = []
    for i in range(protocol["text_pretraining"]["scenes"]):
        scene = make_scene(rng, size=48)
        turns = _sft_turns(scene, rng)
        conversations = []
        for j, (question, answer) in enumerate(turns):
            text = f"Scene: {caption(scene)}\n{question}" if j == 0 else question
            conversations += [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]
        records.append({"id": f"text_{seed}_{i:06d}", "conversations": conversations})
    return records


def pretrain_llm(out: Path, protocol: dict, seed: int, paths: dict, manifest: dict) -> str:
    """Text-pretrain the components' LLM (objective none, text-only records) once per seed; returns the folder of
    the pretrained LLM as a plain `Qwen2ForCausalLM` (tokenizer files copied from the original)."""
    from transformers import AutoModelForCausalLM

    from modeling_ross import RossForConditionalGeneration
    from ross.train.demo import StageSettings, run_stage

    folder = Path(out) / "llm" / f"s{seed}"
    if (folder / "pretrained.json").is_file():
        return str(folder / "model")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    data = folder / "text.json"
    data.write_text(json.dumps(text_records(protocol, seed)))
    t = protocol["text_pretraining"]
    stage = StageSettings(max_steps=t["steps"], batch_size=t["batch_size"], learning_rate=t["learning_rate"])
    log(f"s{seed}: text pretraining of the LLM ({t['steps']} steps on {t['scenes']} scenes)")
    summary = run_stage(2, folder / "run", {
        "prepare_tiny": "null", **paths, "objective": "none", "data_path": str(data), "image_folder": str(folder),
        "output_dir": str(folder / "run"), "seed": seed, "disable_tqdm": "true", "dataloader_num_workers": 0,
        "logging_steps": max(1, min(10, t["steps"] // 20)), **stage.overrides(),
    }, folder / "run" / "train.log")  # fmt: skip
    ross = RossForConditionalGeneration.from_pretrained(folder / "run" / "model")
    original = Path(paths["language_model"])
    llm = AutoModelForCausalLM.from_pretrained(original)
    llm.model.load_state_dict(ross.language_model.state_dict())
    llm.lm_head.load_state_dict(ross.lm_head.state_dict())
    shutil.copytree(original, folder / "model", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    llm.save_pretrained(folder / "model")
    shutil.rmtree(folder / "run" / "model")
    (folder / "pretrained.json").write_text(json.dumps({"final_text_loss": summary.get("final_text_loss"),
                                                        "steps": t["steps"]}) + "\n")  # fmt: skip
    return str(folder / "model")


def _ablation():
    spec = importlib.util.spec_from_file_location("ross_bench_ablation", REPO_ROOT / "bench" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ross_bench_ablation", module)
    spec.loader.exec_module(module)
    return module


def run_one(arm: str, seed: int, out: Path, protocol: dict, device: str = "cpu") -> dict:
    """Train, evaluate and store one (arm, seed) run with provenance and compressed predictions."""
    from ross.train.demo import DemoSettings, save_reconstructions
    from ross.train.pretrain_components import ComponentSettings, component_paths, prepare_components

    ablation = _ablation()
    started = time.time()
    run_dir = Path(out) / "runs" / f"{arm}-s{seed}"
    if (run_dir / "result.json").is_file():
        result = json.loads((run_dir / "result.json").read_text())
        if result.get("provenance", {}).get("protocol_hash") == protocol["hash"]:
            log(f"{arm}-s{seed}: done earlier, reusing it")
            return result
    components_root = Path(out) / "components"
    manifest = prepare_components(components_root, ComponentSettings(**protocol["components"], seed=seed), log=log)
    paths = component_paths(components_root, manifest)
    paths["language_model"] = pretrain_llm(out, protocol, seed, paths, manifest)
    data_root, data = seed_data(out, protocol, seed)
    spec = protocol["arms"][arm]
    arm_protocol = {**protocol, "latent_cache": True, "arms": {arm: {
        "objective": spec["objective"], "target": spec.get("target", "vae"),
        "model_overrides": {k: v for k, v in spec.items() if k not in ("objective", "target")}}}}  # fmt: skip
    log(f"{arm}-s{seed}: training ({protocol['stage2']['max_steps']} stage-2 steps)")
    training = ablation.train_run(arm, seed, paths, manifest, data_root, data, run_dir, arm_protocol, device)
    curve, final = {}, None
    for step in protocol["curve_steps"]:
        folder = run_dir / "stage2" / f"checkpoint-{step}"
        final = ablation.evaluate_folder(folder, data_root, data, run_dir / "eval" / f"step{step}", arm_protocol,
                                         device)  # fmt: skip
        curve[str(step)] = final["fine_grained_accuracy"]
    model_dir = run_dir / "stage2" / "model"
    result = {"run": f"{arm}-s{seed}", "arm": arm, "seed": seed, "final": final, "curve": curve,
              "training": training}  # fmt: skip
    if spec["objective"] != "none":
        settings = DemoSettings(check_loss_margin=protocol["ross_active"]["loss_margin"],
                                check_psnr_margin_db=protocol["ross_active"]["psnr_margin_db"])  # fmt: skip
        result["check"] = save_reconstructions(model_dir, data_root, data, run_dir / "reconstructions.png",
                                               settings)["check"]  # fmt: skip
    scores = ablation.attention_scores(model_dir, data_root, data, arm_protocol, device)
    result["attention_mean"] = statistics.mean(scores) if scores else None
    last = run_dir / "eval" / f"step{protocol['curve_steps'][-1]}"
    predictions = {
        name: [json.loads(line) for line in (last / name / "predictions.jsonl").read_text().splitlines()]
        for name in data["benchmarks"]
    }
    for checkpoint in (run_dir / "stage2").glob("checkpoint-*"):  # evaluated: the curve keeps what they showed
        shutil.rmtree(checkpoint)
    result["provenance"] = provenance(protocol, started)
    store_result(run_dir, result, predictions)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="full")
    parser.add_argument("--protocol", type=Path, default=PROTOCOL)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "evidence_v3")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--progress", action="store_true", help="a row per finished run (no verdict), then exit")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    protocol = load_protocol(args.protocol, args.mode)
    if args.progress:
        print(progress(protocol, args.out))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in protocol["seeds"]:
            for arm in protocol["arms"]:
                run_one(arm, seed, args.out, protocol, args.device)
    result = report(protocol, args.out)
    return 0 if result["verdict"] != "refused" else 2


if __name__ == "__main__":
    sys.exit(main())
