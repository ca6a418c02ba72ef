"""The evidence-v3 harness (bench/evidence_v3.py) on stored results of the smoke setting: provenance, per-item
predictions, the refusal to mix commits / CPU models, the registered gates and the seed-level verdict."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("evidence_v3", REPO_ROOT / "bench" / "evidence_v3.py")
ev = importlib.util.module_from_spec(spec)
sys.modules["evidence_v3"] = ev
spec.loader.exec_module(ev)


@pytest.fixture()
def protocol():
    protocol = ev.load_protocol(mode="smoke")
    # the smoke setting has 2 seeds, not 8: the registered "6 of 8 ROSS^D runs active" becomes "2 of 2" here
    protocol["ross_active"] = {**protocol["ross_active"], "min_active_runs": 2}
    return protocol


def _final(fine: float, pope_yes: float = 0.6, pairs: float = 0.4, n: int = 300) -> dict:
    final = {name: {"accuracy": fine, "chance": 0.25 if name != "synthetic_pope" else 0.5, "num_items": n}
             for name in ("synthetic_pope", "synthetic_mmvp", "synthetic_count", "synthetic_position")}  # fmt: skip
    final["synthetic_pope"].update(accuracy=fine + 0.15, yes_ratio=pope_yes)  # two options: chance 0.5
    final["synthetic_mmvp"]["pair_accuracy"] = pairs
    final["fine_grained_accuracy"] = fine
    return final


def _store(out: Path, protocol: dict, values: dict, cpu: str = "AMD EPYC", passed: bool = True, **final_kw):
    for arm, per_seed in values.items():
        for seed, fine in zip(protocol["seeds"], per_seed):
            result = {
                "run": f"{arm}-s{seed}", "arm": arm, "seed": seed, "final": _final(fine, **final_kw),
                "curve": {str(protocol["curve_steps"][-1]): fine}, "attention_mean": 0.01 + fine / 100,
                "provenance": {**ev.provenance(protocol), "cpu_model": cpu},
            }  # fmt: skip
            if arm != "baseline":
                result["check"] = {"passed": passed}
            predictions = {"synthetic_pope": [{"id": i, "prediction": "Yes", "answer": "No"} for i in range(3)]}
            ev.store_result(out / "runs" / f"{arm}-s{seed}", result, predictions)


def test_protocol_and_provenance(protocol):
    assert protocol["protocol_version"] == 3 and len(protocol["hash"]) == 16 and protocol["seeds"] == [0, 1]
    assert set(protocol["arms"]) == {"baseline", "ross_d", "ross_d_shuffled"}
    assert protocol["arms"]["ross_d_shuffled"]["shuffle_condition"] is True
    assert ev.load_protocol(mode="full")["seeds"] == list(range(8))
    assert ev.load_protocol(mode="full")["benchmark_items"] == 300
    record = ev.provenance(protocol)
    assert len(record["commit"]) == 40 and record["cpu_model"] and record["finished_utc"].endswith("+00:00")


def test_predictions_are_stored_compressed_and_round_trip(tmp_path, protocol):
    _store(tmp_path, protocol, {"baseline": [0.5, 0.5]})
    run = tmp_path / "runs" / "baseline-s0"
    assert (run / "predictions" / "synthetic_pope.jsonl.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert ev.load_predictions(run, "synthetic_pope")[1] == {"id": 1, "prediction": "Yes", "answer": "No"}
    with pytest.raises(ValueError, match="without provenance"):
        ev.store_result(tmp_path / "x", {"arm": "baseline"}, {})


def test_stored_full_runs_are_committed_with_provenance_and_predictions():
    """The full table's finished runs live in bench/results/evidence_v3/runs/ and must be tracked by git: a run that
    exists only in an ignored folder is lost with the machine (this happened once: `runs/` in .gitignore matched it)."""
    stored = REPO_ROOT / "bench" / "results" / "evidence_v3"
    if shutil.which("git") and (REPO_ROOT / ".git").exists():
        probe = "bench/results/evidence_v3/runs/baseline-s0/result.json"
        ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO_ROOT).returncode == 0
        assert not ignored, f"{probe} is git-ignored: finished runs would never be committed"
    protocol = ev.load_protocol(mode="full")
    results = ev.load_results(stored)
    ev.check_provenance(results, protocol)  # one commit, one CPU model, the registered protocol
    for result in results:
        run = Path(result["_dir"])
        assert run.name == f"{result['arm']}-s{result['seed']}" and result["arm"] in protocol["arms"]
        for name in result["final"]:
            if name.startswith("synthetic_"):
                items = ev.load_predictions(run, name)
                assert len(items) == result["final"][name]["num_items"] == protocol["benchmark_items"]


def test_progress_table_of_a_partial_table(tmp_path, protocol, capsys):
    check = {"visual_loss_true": 0.25, "visual_loss_shuffled": 0.4, "psnr_ross_vs_teacher_db": 23.0,
             "psnr_ross_vs_other_teacher_db": 19.0, "psnr_constant_vs_teacher_db": 22.0}  # fmt: skip
    _store(tmp_path, protocol, {"baseline": [0.45, 0.48], "ross_d": [0.47, 0.49]})
    _store(tmp_path, protocol, {"ross_d_shuffled": [0.46]})
    for run, passed in (("ross_d-s0", True), ("ross_d-s1", False), ("ross_d_shuffled-s0", False)):
        path = tmp_path / "runs" / run / "result.json"
        result = json.loads(path.read_text())
        path.write_text(json.dumps({**result, "check": {**check, "passed": passed}}))
    assert ev.main(["--mode", "smoke", "--out", str(tmp_path), "--progress"]) == 0
    table = capsys.readouterr().out
    assert "5 of 6 runs finished; no verdict" in table and "Verdict" not in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "-s" in line.split("|")[1]]
    assert [row.split("|")[1].strip() for row in rows] == [
        "baseline-s0", "ross_d-s0", "ross_d_shuffled-s0", "baseline-s1", "ross_d-s1"]  # by seed, then arm
    assert "| 0.450 |" in rows[0] and rows[0].rstrip().endswith("| - |")
    assert "passed (loss 0.250 vs 0.400" in rows[1] and "**failed**" in rows[4]
    assert "failed, as a control should" in rows[2]
    _store(tmp_path, protocol, {"ross_d_shuffled": [0.46, 0.47]}, cpu="Intel(R) Xeon(R)")
    with pytest.raises(ev.ProvenanceError, match="CPU models"):
        ev.progress(protocol, tmp_path)


def test_report_refuses_mixed_cpu_models_and_subsets(tmp_path, protocol):
    _store(tmp_path, protocol, {"baseline": [0.5, 0.5], "ross_d": [0.6, 0.6]})
    _store(tmp_path, protocol, {"ross_d_shuffled": [0.5, 0.5]}, cpu="Intel(R) Xeon(R)")
    result = ev.verdict(protocol, ev.load_results(tmp_path))
    assert result["verdict"] == "refused" and "CPU models" in result["reason"]
    other = tmp_path / "subset"
    _store(other, protocol, {"baseline": [0.5, 0.5], "ross_d": [0.6, 0.6]})
    result = ev.verdict(protocol, ev.load_results(other))
    assert result["verdict"] == "refused" and "missing runs" in result["reason"]


@pytest.mark.parametrize(
    "values, kwargs, expected",
    [
        ({"baseline": [0.50, 0.51], "ross_d": [0.60, 0.61], "ross_d_shuffled": [0.50, 0.51]}, {}, "positive"),
        ({"baseline": [0.500, 0.501], "ross_d": [0.500, 0.501], "ross_d_shuffled": [0.500, 0.501]}, {}, "null"),
        ({"baseline": [0.50, 0.60], "ross_d": [0.52, 0.61], "ross_d_shuffled": [0.49, 0.60]}, {}, "inconclusive"),
        ({"baseline": [0.50, 0.51], "ross_d": [0.60, 0.61], "ross_d_shuffled": [0.50, 0.51]},
         {"passed": False}, "ross_inactive"),
        ({"baseline": [0.50, 0.51], "ross_d": [0.60, 0.61], "ross_d_shuffled": [0.50, 0.51]},
         {"pope_yes": 0.95}, "uninformative"),
        ({"baseline": [0.26, 0.26], "ross_d": [0.60, 0.61], "ross_d_shuffled": [0.50, 0.51]}, {}, "uninformative"),
    ],
)
def test_gates_and_verdicts(tmp_path, protocol, values, kwargs, expected):
    _store(tmp_path, protocol, values, **kwargs)
    result = ev.report(protocol, tmp_path)
    assert result["verdict"] == expected, result
    assert (tmp_path / "evidence_v3_smoke.md").read_text().startswith("# Evidence v3 (smoke mode)")
    if expected in ("positive", "null", "inconclusive"):
        assert result["provenance"]["cpu_model"] == "AMD EPYC"


def test_welch_is_seed_level_and_one_sided():
    assert ev.welch_greater([0.6, 0.61, 0.62], [0.5, 0.51, 0.52]) < 0.01
    assert ev.welch_greater([0.5, 0.51, 0.52], [0.6, 0.61, 0.62]) > 0.99
    # the smallest effect of interest: +0.03 is not shown by a +0.01 difference
    assert ev.welch_greater([0.51, 0.52, 0.53], [0.5, 0.51, 0.52], delta=0.03) > 0.5


def test_fine_grained_questions_are_made_scarce():
    records = [
        {"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nIs there a red circle?"}, {"from": "gpt", "value": "Yes"},
            {"from": "human", "value": "What colour is the square?"}, {"from": "gpt", "value": "Blue"}]}
        for i in range(100)
    ] + [{"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]  # fmt: skip
    out = ev.scarce_fine_grained(records, 0.15, seed=0)
    with_fine = [r for r in out if any(ev.is_fine_grained(t["value"]) for t in r["conversations"][::2])]
    assert len(with_fine) == 15 and len(out) == 101  # every image keeps its colour question; text-only kept
    for record in out:
        if record.get("image"):
            assert record["conversations"][0]["value"].startswith("<image>\n")
            assert sum("<image>" in t["value"] for t in record["conversations"]) == 1
    assert ev.scarce_fine_grained(records, 0.15, seed=0) == out  # seeded


@pytest.mark.slow
def test_smoke_setting_trains_every_run_and_reports(tmp_path):
    # the whole path at smoke size: per-seed components, data and text-pretrained LLM; 3 arms x 2 seeds; the report
    # the registered file's smoke mode keeps the full components (2,000 images, 500 VAE steps): a copy with the
    # component fits shrunk as `ComponentSettings.fast()` does (its own hash: a test, not a registered run)
    import yaml

    spec = yaml.safe_load(ev.PROTOCOL.read_text())
    spec["modes"]["smoke"]["components"] = {"num_fit_images": 64, "num_heldout_images": 32, "vision_steps": 4,
                                            "vae_steps": 4, "vision_batch_size": 16, "vae_batch_size": 8}  # fmt: skip
    protocol_file = tmp_path / "evidence_v3_smoke.yaml"
    protocol_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert ev.main(["--mode", "smoke", "--protocol", str(protocol_file), "--out", str(out)]) == 0
    tmp_path = out
    results = ev.load_results(tmp_path)
    assert {(r["arm"], r["seed"]) for r in results} == {(a, s) for a in ("baseline", "ross_d", "ross_d_shuffled")
                                                         for s in (0, 1)}  # fmt: skip
    for r in results:
        assert r["provenance"]["cpu_model"] and len(r["provenance"]["commit"]) == 40
        assert set(r["curve"]) == {"2"} and 0 <= r["final"]["fine_grained_accuracy"] <= 1
        assert len(ev.load_predictions(r["_dir"], "synthetic_pope")) == r["final"]["synthetic_pope"]["num_items"] > 0
        assert ("check" in r) == (r["arm"] != "baseline")
    assert (tmp_path / "llm" / "s0" / "pretrained.json").is_file()
    report = (tmp_path / "evidence_v3_smoke.md").read_text()
    assert "**Verdict: " in report  # a 2-step smoke run means nothing: whatever gate it stops at, it says which
