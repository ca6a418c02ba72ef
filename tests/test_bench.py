"""The benchmark scripts of `bench/` run end to end at smoke sizes and report what they promise (never timings)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from modeling_ross import from_components
from modeling_ross.testing import write_tiny_components


BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_script(name: str):
    """Import `bench/<name>.py` as running it would (its folder first on sys.path, for `bench/_common.py`)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_train_step_counts_flops_and_reports_every_arm(tmp_path):
    train_step = load_script("train_step")
    assert train_step.main(["--configs", "tiny", "--repeats", "1", "--depth", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "train_step.json").read_text())
    arms = payload["configs"][0]["arms"]
    assert set(arms) == {"none", "ross", "ross+cache", "none+depth", "ross+depth"}
    # The cache removes the teacher's FLOPs, the denoiser adds its own: none < ross+cache < ross.
    assert arms["none"]["flops"] < arms["ross+cache"]["flops"] < arms["ross"]["flops"]
    # A depth map per sample: more image tokens for the LLM, a second image for teacher and denoiser.
    depth = payload["overheads"]["tiny"]["ross+depth"]["one_image"]
    assert arms["ross+depth"]["flops"] > arms["ross"]["flops"] and depth["flop_ratio"] > 1
    assert arms["none+depth"]["flops"] > arms["none"]["flops"]
    assert "ross+depth vs ross" in (tmp_path / "train_step.md").read_text()
    account = {row["module"]: row for row in payload["flop_account_7b"]}
    assert abs(sum(row["share"] for row in account.values()) - 1) < 1e-9
    llm = next(row for name, row in account.items() if name.startswith("LLM"))
    assert 2 * 7e9 * 1152 * 0.9 < llm["forward_flops"] < 2 * 7.7e9 * 1152 * 1.2  # ~2 x parameters x tokens
    assert "| tiny |" in (tmp_path / "train_step.md").read_text()


def test_train_step_measures_the_generative_and_viral_arms_on_request(tmp_path):
    train_step = load_script("train_step")
    args = ["--configs", "tiny", "--repeats", "1", "--arms", "ross", "queries", "viral", "--out", str(tmp_path)]
    assert train_step.main(args) == 0
    payload = json.loads((tmp_path / "train_step.json").read_text())
    arms = payload["configs"][0]["arms"]
    assert list(arms) == ["none", "ross", "queries", "viral"]
    # VIRAL: the DINOv2 teacher and the MLP head add work to the baseline step; its row is also against ROSS^D.
    assert arms["none"]["flops"] < arms["viral"]["flops"]
    assert payload["overheads"]["tiny"]["viral"]["ross_time_ratio"] > 0
    assert "| tiny | viral |" in (tmp_path / "train_step.md").read_text()
    # The queries replace the image tokens one for one: the LLM's work is the same, the denoiser's and teacher's too.
    assert arms["none"]["flops"] < arms["queries"]["flops"]
    row = payload["overheads"]["tiny"]["queries"]
    assert row["ross_time_ratio"] > 0 and 0.8 < row["ross_flop_ratio"] < 1.2
    assert "| tiny | queries |" in (tmp_path / "train_step.md").read_text()


def test_inference_matches_transformers_llava_token_for_token(tmp_path):
    inference = load_script("inference")
    args = ["--config", "tiny", "--repeats", "1", "--new-tokens", "3", "--batch-size", "2", "--out", str(tmp_path)]
    assert inference.main(args) == 0
    payload = json.loads((tmp_path / "inference.json").read_text())
    assert payload["same_greedy_tokens"] is True
    assert payload["results"]["ross"]["state_bytes"] == payload["results"]["llava"]["state_bytes"]


def test_eval_batching_gives_the_same_answers_at_every_batch_size(tmp_path):
    eval_batching = load_script("eval_batching")
    args = ["--items", "6", "--repeats", "1", "--batch-sizes", "1", "4", "--max-new-tokens", "3", "--out", str(tmp_path)]
    assert eval_batching.main(args) == 0
    payload = json.loads((tmp_path / "eval_batching.json").read_text())
    assert payload["identical_answers"] is True and payload["items"] == 6


def test_patch_shuffle_permutes_the_visual_tokens(tmp_path):
    ablation = load_script("ablation")
    model = from_components(**write_tiny_components(tmp_path), objective="none").eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    plain = model.model.projector(model.model.vision_tower(pixel_values).last_hidden_state)
    shuffle = ablation.PatchShuffle(model, seed=0)
    shuffled = model.model.projector(model.model.vision_tower(pixel_values).last_hidden_state)
    shuffle.remove()
    assert not torch.equal(shuffle.permutation, torch.arange(len(shuffle.permutation)))
    torch.testing.assert_close(shuffled, plain[:, shuffle.permutation])
    torch.testing.assert_close(model.model.projector(model.model.vision_tower(pixel_values).last_hidden_state), plain)


SMOKE_PROTOCOL = {
    "protocol_version": 1,
    "primary_metric": "fine_grained_accuracy",
    "fine_grained": ["synthetic_pope", "synthetic_mmvp", "synthetic_count", "synthetic_position"],
    "controls": ["synthetic_colour"],
    "compare": ["baseline", "ross_d"],
    "arms": {"baseline": {"objective": "none", "target": "vae"}, "ross_d": {"objective": "denoise", "target": "vae"}},
    "components": {"num_fit_images": 64, "num_heldout_images": 32, "vision_steps": 4, "vae_steps": 4,
                   "vision_batch_size": 16, "vae_batch_size": 8},
    "model_overrides": {"denoiser_hidden_size": 32, "denoiser_depth": 1, "denoiser_num_heads": 2, "num_noise_draws": 2},
    "stage1": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3},
    "stage2": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3},
    "curve_steps": [2, 4],
    "data_sizes": {"large": 24},
    "plain_images": 24,
    "benchmark_items": 12,
    "seeds": [0],
    "eval_batch_size": 16,
    "eval_max_new_tokens": 3,
    "attention_items": 4,
    "latent_cache": True,
    "modes": {"quick": {"arms": ["baseline", "ross_d"], "seeds": [0], "data_sizes": ["large"]}},
}  # fmt: skip


def test_train_step_packing_compares_equal_losses_without_padding(tmp_path):
    """`--packing-only`: padded and packed layouts of the same batches, both arms and both orders, give equal losses,
    and the packed batches hold no padding."""
    train_step = load_script("train_step")
    args = ["--packing-only", "--repeats", "1", "--packing-batches", "2", "--packing-batch", "3", "--out", str(tmp_path)]
    assert train_step.main(args) == 0
    packing = json.loads((tmp_path / "train_step_packing.json").read_text())["packing"]
    assert set(packing) == {f"{arm}/{order}" for arm in ("ross", "none") for order in ("random", "length-grouped")}
    for row in packing.values():
        assert row["max_loss_diff"] < 1e-5 and row["padding_share_packed"] == 0
        assert row["padded_over_real"] >= 1 and 0 < row["token_share_padded"]
        assert row["token_part_speedup_over_padding_ratio"] > 0
    assert "tiny config" in (tmp_path / "train_step_packing.md").read_text()

def test_rgbd_ablation_trains_and_evaluates_each_arm_on_its_inputs(tmp_path):
    """bench/ablation_depth.yaml at smoke size: an `inputs: rgbd` arm trains on [RGB, depth map] samples and answers
    synthetic_depth with the depth map; an `rgb` arm sees the RGB image only. The registered protocol loads."""
    ablation = load_script("ablation")
    registered = ablation.load_protocol(BENCH / "ablation_depth.yaml", "quick")
    assert registered["depth"] and {arm for arm, _, _ in registered["runs"]} == set(registered["arms"])
    assert {spec["inputs"] for spec in registered["arms"].values()} == {"rgb", "rgbd"}
    assert registered["hash"] != ablation.load_protocol(ablation.PROTOCOL, "quick")["hash"]

    protocol = {**SMOKE_PROTOCOL, "depth": True, "fine_grained": ["synthetic_depth"],
                "controls": ["synthetic_pope", "synthetic_mmvp", "synthetic_count", "synthetic_position",
                             "synthetic_colour"],
                "compare": ["baseline_rgb", "ross_d_rgbd"],
                "arms": {"baseline_rgb": {"objective": "none", "target": "vae", "inputs": "rgb"},
                         "ross_d_rgbd": {"objective": "denoise", "target": "vae", "inputs": "rgbd"}},
                "curve_steps": [4],
                "modes": {"quick": {"arms": ["baseline_rgb", "ross_d_rgbd"], "seeds": [0], "data_sizes": ["large"]}}}
    protocol_file = tmp_path / "protocol.yaml"
    protocol_file.write_text(yaml.safe_dump(protocol))
    out = tmp_path / "out"
    assert ablation.main(["--protocol", str(protocol_file), "--out", str(out)]) == 0
    payload = json.loads((out / "ablation_quick.json").read_text())
    assert {run["run"] for run in payload["runs"]} == {"baseline_rgb-s0-large", "ross_d_rgbd-s0-large"}
    (data,) = [json.loads(f.read_text()) for f in (out / "data").glob("*/data.json")]
    assert data["benchmarks"]["synthetic_depth"] and data["stage2_data_rgbd"] != data["stage2_data"]
    for run, images in (("baseline_rgb-s0-large", 1), ("ross_d_rgbd-s0-large", 2)):
        log = (out / "runs" / run / "stage2" / "train.log").read_text()
        assert Path(data["stage2_data_rgbd" if images == 2 else "stage2_data"]).name in log
        predictions = (out / "runs" / run / "eval" / "step4" / "synthetic_depth" / "predictions.jsonl").read_text()
        rows = [json.loads(line) for line in predictions.splitlines()]
        assert len(rows) == 12 and all(r.get("depth_images", []) == ([1] if images == 2 else []) for r in rows)
        assert all(r["prompt"].count("<image>") <= 1 or images == 2 for r in rows)
    ross = next(run for run in payload["runs"] if run["arm"] == "ross_d_rgbd")
    assert ross["training"]["stage2"]["final_visual_loss"] is not None
    assert "synthetic_depth" in ross["final"] and "depth" in (out / "ablation_quick.md").read_text()



@pytest.mark.parametrize("pairs, verdict", [([0.0, 0.0], "uninformative"), ([0.4, 0.5], "positive")])
def test_rgbd_claim_is_uninformative_below_the_competence_floor(pairs, verdict):
    """bench/ablation_depth.yaml v2's floor: whatever the difference, a baseline whose depth pair accuracy is at or
    below chance (0.25) makes the verdict "uninformative" (v1's quick run: pairs 0.0 for every arm)."""
    ablation = load_script("ablation")
    registered = ablation.load_protocol(BENCH / "ablation_depth.yaml", "full")
    assert registered["competence"] == {"arm": "baseline_rgbd", "benchmark": "synthetic_depth",
                                        "pair_accuracy_min": 0.25}
    row = {"attention": [0.1, 0.2, 0.3], "synthetic_depth:pairs": pairs}
    table = {"baseline_rgbd@large": {**row, "fine_grained_accuracy": [0.50, 0.51]},
             "ross_d_rgbd@large": {**row, "fine_grained_accuracy": [0.70, 0.71]}}
    result = ablation.claim(registered, table)
    assert result["beats_by_two_std"] and result["verdict"] == verdict
    assert result["competence"]["pair_accuracy"] == pytest.approx(sum(pairs) / 2)
    assert f"Verdict: **{verdict}**" in ablation.markdown(registered, {}, result, {
        "vae": {"psnr_db": 20.0}, "vision_tower": {"probe_accuracy": 0.9, "probe_chance": 0.5}})

@pytest.mark.slow
def test_a_run_without_the_modes_curve_steps_is_not_reused():
    ablation = load_script("ablation")
    protocol = {"hash": "abc", "curve_steps": [250, 500, 1000]}
    quick_run = {"protocol_hash": "abc", "curve": {"1000": {}}}  # the quick mode evaluates only the last step
    assert not ablation.is_current(quick_run, protocol)
    assert ablation.is_current({"protocol_hash": "abc", "curve": {"250": {}, "500": {}, "1000": {}}}, protocol)
    assert not ablation.is_current({"protocol_hash": "other", "curve": {"250": {}, "500": {}, "1000": {}}}, protocol)
    assert ablation.is_current(quick_run, {"hash": "abc", "curve_steps": [1000]})


def test_extra_arms_leave_the_registered_protocol_alone():
    ablation = load_script("ablation")
    registered = ablation.load_protocol(ablation.PROTOCOL, "quick")
    extra = ablation.load_protocol(ablation.PROTOCOL, "quick", ablation.PROTOCOL.with_name("ablation_extra.yaml"))
    assert extra["hash"] == registered["hash"] and extra["runs"][: len(registered["runs"])] == registered["runs"]
    assert extra["runs"][len(registered["runs"]) :] == [("ross_d_generative", 0, "large")]
    assert extra["arms"]["ross_d_generative"]["model_overrides"] == {"condition": "queries"}
    assert ablation.run_hash(extra, "ross_d") == registered["hash"] != ablation.run_hash(extra, "ross_d_generative")


def test_ablation_runs_the_registered_runs_and_refuses_a_partial_table(tmp_path, capsys):
    ablation = load_script("ablation")
    protocol_file = tmp_path / "protocol.yaml"
    protocol_file.write_text(yaml.safe_dump(SMOKE_PROTOCOL))
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="2 of the 2 runs registered by mode 'quick' have no result"):
        ablation.main(["--protocol", str(protocol_file), "--out", str(out), "--report-only"])

    assert ablation.main(["--protocol", str(protocol_file), "--out", str(out)]) == 0
    payload = json.loads((out / "ablation_quick.json").read_text())
    assert {run["run"] for run in payload["runs"]} == {"baseline-s0-large", "ross_d-s0-large"}
    for run in payload["runs"]:
        assert set(run["curve"]) == {"2", "4"} and len(run["attention"]) == 4
        assert set(run["shuffled"]) >= set(SMOKE_PROTOCOL["fine_grained"]) | {"fine_grained_accuracy"}
        assert 0 <= run["final"]["fine_grained_accuracy"] <= 1
        assert not list((out / "runs" / run["run"] / "stage2").glob("checkpoint-*"))  # evaluated, then removed
    ross = next(run for run in payload["runs"] if run["arm"] == "ross_d")
    assert ross["parameters"]["denoiser"] > 0 and ross["training"]["stage2"]["final_visual_loss"] is not None
    assert payload["claim"]["attention"]["welch_t"]["p_value"] is not None
    report = (out / "ablation_quick.md").read_text()
    assert "Claim (ross_d vs baseline)" in report and "per-quadrant shape probe" in report
    assert any((out / "components").glob("*/latent_cache/*/settings.json"))  # ROSS^D read cached VAE targets

    # An extra, non-registered arm (the generative variant) runs next to them; the registered runs are reused and
    # their report is left as it was.
    extra = tmp_path / "extra.yaml"
    arm = {"objective": "denoise", "target": "vae", "model_overrides": {"condition": "queries"}, "creation_fraction": 0.5}
    extra.write_text(yaml.safe_dump({"arms": {"generative": arm}}))
    capsys.readouterr()
    assert ablation.main(["--protocol", str(protocol_file), "--out", str(out), "--extra", str(extra)]) == 0
    assert capsys.readouterr().out.count("done earlier") == 2
    assert (out / "ablation_quick.md").read_text() == report
    payload = json.loads((out / "ablation_quick_extra.json").read_text())
    generative = next(run for run in payload["runs"] if run["arm"] == "generative")
    assert generative["parameters"]["queries"] > 0 and generative["training"]["stage2"]["final_visual_loss"] is not None
    assert generative["protocol_hash"] == payload["protocol"]["hash"] + "+" + payload["protocol"]["extra_hash"]
    assert "| generative@large (extra) |" in (out / "ablation_quick_extra.md").read_text()

    # A finished run is reused; a changed protocol makes every result stale, so no table is reported.
    capsys.readouterr()
    assert ablation.main(["--protocol", str(protocol_file), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("done earlier") == 2
    protocol_file.write_text(yaml.safe_dump({**SMOKE_PROTOCOL, "protocol_version": 2}))
    with pytest.raises(SystemExit, match="have no result under this protocol"):
        ablation.main(["--protocol", str(protocol_file), "--out", str(out), "--report-only"])


def test_qwen25vl_flop_account_matches_the_flop_counter_and_the_image_processor(tmp_path):
    """The analytic Qwen2.5-VL-7B account: its formulas equal `torch.utils.flop_counter` on tiny random-weight models
    of the same classes (attention through the math kernel, which the counter sees as matmuls), its grids equal what
    transformers' Qwen2-VL image processor gives (`image_grid_thw`), and its totals add up."""
    from PIL import Image
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from modeling_ross.denoiser import RossDenoiser

    train_step = load_script("train_step")
    # Grids: 448 x 448 -> 32 x 32 patches (256 tokens); 1024 x 768 -> 756 x 1036 px, 54 x 74 patches (999 tokens).
    processor = Qwen2VLImageProcessorPil()
    grids = {}
    for width, height in train_step.QWEN25VL_INPUTS:
        grid = train_step.qwen25vl_grid(width, height)
        out = processor(images=Image.new("RGB", (width, height)), return_tensors="pt")
        assert out["image_grid_thw"].tolist() == [[1, *grid]], (width, height)
        grids[(width, height)] = grid
    assert grids == {(448, 448): (32, 32), (1024, 768): (54, 74)}

    with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        # Vision tower: same structure as the 7B one (window 112 px, merge 2, patch 14), tiny widths, 2 full blocks.
        vision = dict(depth=3, hidden_size=32, intermediate_size=40, num_heads=2, patch_size=14, temporal_patch_size=2,
                      in_channels=3, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[1],
                      out_hidden_size=48)  # fmt: skip
        tower = Qwen2_5_VisionTransformerPretrainedModel(Qwen2_5_VLVisionConfig(**vision)).eval()
        for grid_h, grid_w in [(54, 74), (32, 32), (6, 10)]:  # partial windows on both axes, exact, tiny
            pixels = torch.randn(grid_h * grid_w, 3 * 2 * 14 * 14)
            counted = train_step.count_flops(lambda: tower(pixels, grid_thw=torch.tensor([[1, grid_h, grid_w]])))
            assert counted == sum(train_step.qwen25vl_vision_flops(grid_h, grid_w, vision).values()), (grid_h, grid_w)
        # Decoder LM (GQA, gated MLP, lm_head), as Qwen2.5-7B.
        llm = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=300)  # fmt: skip
        model = Qwen2ForCausalLM(Qwen2Config(**llm)).eval()
        ids = torch.zeros(1, 37, dtype=torch.long)
        assert train_step.count_flops(lambda: model(input_ids=ids)) == train_step.decoder_flops(37, llm)
        # The reference denoiser at the 448 px grid (16 x 16 tokens), 4 draws.
        ref = train_step.QWEN25VL_7B["denoiser"]
        denoiser = RossDenoiser(**ref, grid_size=16)
        counted = train_step.count_flops(
            lambda: denoiser(torch.zeros(4, 256, 64), torch.zeros(4, dtype=torch.long), torch.zeros(4, 256, 3584))
        )
        assert counted == train_step.denoiser_flops(256, 4, ref)

    # The LLaVA-style account counts the same shapes with the counter: Qwen2-7B's LLM is Qwen2.5-7B's, same denoiser.
    llava = {row["module"].split(" (")[0]: row["forward_flops"] for row in train_step.flop_account_7b(1152)}
    assert llava["LLM"] == train_step.decoder_flops(1152, train_step.QWEN25VL_7B["llm"])
    assert llava["denoiser"] == train_step.denoiser_flops(729, 4, ref)

    assert train_step.main(["--qwen25vl-account-only", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "train_step_qwen25vl_flops.json").read_text())
    small, large = payload["flop_account"]
    assert (small["image_tokens"], large["image_tokens"]) == (256, 999) and large["token_grid"] == [27, 37]
    assert large["teacher_pixels"] == [432, 592]  # 16 px per token: FLUX f8 latents folded 2 x 2 onto the grid
    for entry in (small, large):
        steps = {row["module"].split(" (")[0]: row["step_flops"] for row in entry["modules"]}
        assert entry["step_flops_ross"] == sum(steps.values())
        assert entry["step_flops_none"] == entry["step_flops_ross"] - steps["teacher"] - steps["denoiser"]
        assert abs(sum(row["share_ross"] for row in entry["modules"]) - 1) < 1e-9
        # The LLM dominates (~2 x 7.6e9 parameters x tokens forward) and the ROSS head costs a few percent.
        assert 2 * 7e9 * entry["sequence"] < steps["LLM"] / 3 < 2 * 8e9 * entry["sequence"] * 1.3
        assert 0 < entry["ross_overhead_with_cache"] < entry["ross_overhead"] < 0.1
    assert large["ross_overhead"] > small["ross_overhead"]  # the head grows with the image, the LLM's text does not
    assert "27 x 37 = 999 image tokens" in (tmp_path / "train_step_qwen25vl_flops.md").read_text()


def test_data_scale_splits_a_first_start_into_serial_and_parallel_cpu(tmp_path):
    """At smoke sizes: the parse's parts (read, parsing, write), the fetch time and the first-start extrapolation
    `T(N, C) = N * (serial + parallel / C)` are reported for each first start."""
    data_scale = load_script("data_scale")
    data_scale.main(["--sizes", "150", "300", "--no-epoch", "--num-proc", "2", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "data_scale.json").read_text())
    firsts = [r for r in payload["rows"] if r["arm"] == "ross" and r["start"] == "first"]
    assert len(firsts) == 2 and all(r["fetch_us"] > 0 for r in payload["rows"])
    for r in firsts:
        assert r["build_records"] == r["n"] and r["build_parse_cpu_s"] > 0 and r["build_read_cpu_s"] >= 0
        split = data_scale.first_start_split(r)
        assert split["parallel"] > 0 and split["serial"] > 0
    assert "T(3.2M, 16)" in (tmp_path / "data_scale.md").read_text()


def test_train_step_qwen25vl_arms_compare_ross_with_none_on_uniform_and_mixed_grids(tmp_path):
    """The Qwen2.5-VL arms at their (tiny) size, one timed step each: ROSS^D and the plain VLM's text loss on a
    uniform-grid and a mixed-grid batch; the run's own check (grids, finite visual loss, loss = text + visual, text
    loss = the plain Qwen2.5-VL's) passed, and the FLOPs say where the work is."""
    train_step = load_script("train_step")
    assert train_step.main(["--qwen25vl-only", "--repeats", "1", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "train_step_qwen25vl.json").read_text())
    arms = payload["arms"]
    assert set(arms) == {"none/uniform", "ross/uniform", "none/mixed", "ross/mixed"}
    assert payload["grids"]["mixed"] == [[2, 4], [3, 4], [4, 5], [4, 6]]
    for kind in ("uniform", "mixed"):
        check = payload["checks"][kind]
        assert check["ok"] and check["grids"] == payload["grids"][kind] and check["visual_loss"] > 0
        assert check["text_loss_minus_plain_vlm"] < 1e-5 and check["loss_minus_text_plus_visual"] < 1e-5
        # The head (teacher + denoiser) adds work; the mixed batch's larger images and padding add more.
        assert arms[f"ross/{kind}"]["flops"] > arms[f"none/{kind}"]["flops"]
        assert payload["ratios"][f"ross/none {kind}"]["time_ratio"] > 0
    assert arms["ross/mixed"]["flops"] > arms["ross/uniform"]["flops"]
    report = (tmp_path / "train_step_qwen25vl.md").read_text()
    assert "| ROSS^D/none mixed |" in report and "load average" in report and payload["commit"] in report
    assert len(payload["load_average"][0]) == 3  # before the run, 1/5/15 min: whether the machine was shared
