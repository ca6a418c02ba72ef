"""What ROSS costs per training step: ROSS^D vs `objective: none` on the same model, side by side, and where a step
of the real 7B recipe spends its arithmetic.

    python bench/train_step.py [--device cpu|cuda] [--dtype float32|bfloat16] [--configs tiny scaled] [--repeats 6]
                               [--arms none ross ross+cache queries none+depth ross+depth viral] [--depth]
                               [--qwen25vl-only | --qwen25vl-account-only | --packing-only]
                               [--out runs/bench/train_step]

Measured part. For each configuration one ROSS^D model is built from tiny component repos (`modeling_ross.testing`)
and a baseline copy with `objective: none` shares its weights. Three arms run interleaved in one process, A/B/C/A/B/C,
each a full optimizer step of the stage-2 recipe (vision tower and teacher frozen; AdamW):

- `none`: the LLaVA baseline (text loss only);
- `ross`: ROSS^D with the teacher run on every step (the VAE encoder is part of the step);
- `ross+cache`: ROSS^D with cached teacher targets (`teacher_targets`, as `train/latent_cache.py` provides).

`--arms` adds an arm that is off by default: `queries`, the generative variant (`condition="queries"`, paper Table 2)
on creation samples of the same length (each sample's image tokens become `image_seq_length` query tokens at the end
of its answer, and its image the target the queries reconstruct; one newline token fewer); it shares the ROSS^D model's weights. Its row also
gives `x ROSS^D`, the paired time ratio to the `ross` arm.

`none+depth` and `ross+depth` (`--depth` adds both) are the RGB-D arms (the paper's Table 5, SpatialBot's layout):
every sample holds an RGB image and its depth map (a 16-bit map turned into 3 channels by `depth_to_rgb`), each
reconstructed by ROSS with its own visual-loss term. They are also compared with their one-image arms (`x 1 image`:
`none` and `ross`), so the report says what the depth map costs per step; `ross+depth` also gets `x ROSS^D`.

`viral` is the VIRAL-style alignment of `train/configs/siglip_qwen2_stage{1,2}_viral.yaml`: an MLP head on a middle
decoder layer (`condition_layer` = 16/28 of the layers, as layer 16 of Qwen2-7B's 28) regresses a frozen DINOv2's
patch features (a tiny `Dinov2Model`, cosine loss, weight 0.5); it shares every LLM weight with ROSS^D and gets
`x ROSS^D` as well.

Time is the median over `--repeats` steps after warm-up; peak memory is `torch.cuda.max_memory_allocated` per arm
(CUDA only: CPU allocations are not tracked per arm). The FLOPs of each arm's step are counted once by
`torch.utils.flop_counter` (forward and backward), so every row shows the measured overhead next to the arithmetic
overhead; `x none` is the median of the paired (interleaved) time ratios, with their range; `waste` = measured
overhead / FLOP overhead (1.0: the extra time is all arithmetic; the goal is <= 1.25). Where the FLOP overhead is a
few percent, `waste` is a ratio of two small numbers and the range of `x none` says how far to trust it.

`tiny` is the default run's geometry; `scaled` keeps the 7B recipe's proportions at a size a CPU can step: denoiser
about 1% of the LLM's parameters, image tokens about 63% of the sequence (729 of 1152), 4 noise draws.

`TFLOP/s` is the counted FLOPs of a step over its median time; with `--peak-tflops` (the device's dense peak at the
dtype) the table adds the model FLOP utilisation (MFU).

FLOP account. The real recipe (Qwen2-7B + SigLIP-so400m/14 at 384 px = 729 image tokens, an SFT sequence of
`--sft-length` tokens, the 65M-parameter denoiser with 4 draws, the FLUX VAE encoder at 432 px) is built on the meta
device (no memory) and its forward FLOPs counted the same way; the denoiser, whose forward needs real tensors, runs
once on the CPU. Backward = 2x forward for trained modules (LLM, projector, denoiser); the frozen tower and teacher
need none (no gradient flows into them). Printed as a table of each module's share of the step.

Qwen2.5-VL-7B FLOP account (`--qwen25vl-account-only` writes it alone, as `train_step_qwen25vl_flops.{md,json}`;
every run adds it to its report). Fine-tuning `Qwen/Qwen2.5-VL-7B-Instruct` without ROSS and with ROSS^D (the
reference denoiser, 1024 wide, 3 deep, 4 draws; the FLUX VAE teacher at 16 px per image token), one sample of one
image plus the LLaVA account's text (`--sft-length` - 729 tokens), at 448 x 448 and 1024 x 768 px input (sides
rounded to multiples of 28 px by transformers' `smart_resize`). Analytic, no model is built: each matmul counted as
`torch.utils.flop_counter` counts it (the window attention of 28 of the 32 vision blocks over 8 x 8-patch windows,
the 4 others over the image); `tests/test_bench.py` checks the formulas against that counter on tiny random-weight
Qwen2.5-VL vision towers, Qwen2 LMs and denoisers, and the grids against the image processor's `image_grid_thw`.
Only the teacher is counted by the counter itself, on the meta device, as above. Trained: LLM, merger, denoiser
(vision blocks frozen, as Qwen's own fine-tuning default).

Qwen2.5-VL arms (`--qwen25vl-only` writes `train_step_qwen25vl.{md,json}`). A tiny random-weight
`Qwen2_5_VLForConditionalGeneration` (`modeling_ross.testing.tiny_qwen25_vl`) wrapped in `RossForPreTraining` (ROSS^D:
a KL-16 teacher, the `tiny` denoiser, 4 draws) against an equal copy of the plain VLM (`none`: its own text loss),
both with the stage-2 trainable set (`ross.train.trainer.apply_stage(model, 2)`: vision blocks and teacher frozen,
merger, LLM and denoiser trained). Each arm is timed on two batches of four one-image samples, 64 image tokens per
batch: uniform grids (4 x 4 tokens each) and mixed grids (2 x 4, 3 x 4, 4 x 5, 4 x 6: different `image_grid_thw` in
one batch, which the denoiser pads and key-masks). The four (arm, batch) pairs run interleaved, a full AdamW step
each; reported: ms/step, FLOPs, the paired ROSS^D / none ratio per batch and the mixed / uniform ratio per arm, and
the load average before and after (a shared machine inflates times). Before the first step, on the arms' equal
weights, the run checks ROSS^D's grids, a finite positive visual loss, loss = text + weight x visual and text loss =
the plain VLM's loss, and stops if any fails.

Packing (`--packing`, or `--packing-only`). On the `tiny` configuration (`--packing-config scaled`: the 7B
proportions; CPU, SDPA), batches of `--packing-batch` samples drawn from a LLaVA-665K-like length mix (90% one-image
samples: the image tokens plus a log-normal number of text tokens, median 180 and the tail of multi-round records,
scaled by image tokens / 729 as the tiny tower has fewer image tokens than SigLIP at 384 px; 10% text-only) are
collated by `RossDataCollator` padded (right padding) and packed (`padding_free=True`, position ids restarting per
sample). With `--packed-attention sdpa_varlen` (default; `train/packed_attention.py`: SDPA causal per packed sample,
no dense mask) the whole batch is one row; with `sdpa` (transformers' dense block-causal mask over each row) rows are
no longer than the longest sample, and the padding left at row ends is reported. Each batch's forward + backward of
ROSS^D (the optimizer step, equal for both, left out) is timed interleaved, padded then packed, with the same seed, so
their losses must agree. Batches come in random order and length-grouped (`ross.train.samplers`). Reported: real
(non-padding) tokens per second each way, the share of padding tokens of the padded batches, the speed-up next to the
padding ratio (padded tokens / real tokens: the most packing can gain), and the largest loss difference. Also the
share of the padded step that scales with tokens (the language model, LM head and text loss alone, forward + backward,
on the padded batches' shape) and the speed-up bound it sets (Amdahl: only that part shrinks, by the padding ratio):
per-image costs (vision tower, denoiser, teacher) are the same whatever the layout; and that token part's own
speed-up, timed on the packed batches too (how close the layout comes where it can gain). `--threads N` sets torch's
intra-op threads (small matrix products scale differently with 1 and 2 threads).

Writes `train_step.json` and `train_step.md` under `--out`.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from _common import cpu_model, git_commit, noise_images, processor_side, synchronize, write_outputs
from modeling_ross import RossForPreTraining, RossProcessor, from_components
from modeling_ross.denoiser import RossDenoiser
from modeling_ross.processing_ross import depth_to_rgb
from modeling_ross.testing import tiny_qwen25_vl, write_tiny_components, write_tiny_dinov2, write_tiny_vae
from ross.train.packed_attention import SDPA_VARLEN, pack_capacity


CONFIGS = {
    # The default run's components (modeling_ross.testing defaults) and objective (train/configs/demo.yaml).
    "tiny": dict(vision=dict(), language=dict(), objective=dict(denoiser_hidden_size=64, denoiser_depth=2,
                                                                 denoiser_num_heads=4), text_tokens=24, batch_size=4),
    # 7B proportions: denoiser ~1% of the LLM, 256 image tokens of ~400 (63%), 4 draws.
    "scaled": dict(vision=dict(image_size=64, patch_size=4, hidden_size=96, num_layers=2),
                   language=dict(hidden_size=512, num_layers=12, num_heads=8),
                   objective=dict(denoiser_hidden_size=64, denoiser_depth=2, denoiser_num_heads=4),
                   text_tokens=120, batch_size=2),
}  # fmt: skip
ARMS = ("none", "ross", "ross+cache")
# Measured with `--arms`: the generative variant (condition="queries") and the RGB-D arms (two images per sample).
EXTRA_ARMS = ("queries", "none+depth", "ross+depth", "viral")
DEPTH_ARMS = ("none+depth", "ross+depth")
ONE_IMAGE_ARM = {"none+depth": "none", "ross+depth": "ross"}
REFERENCE_7B = dict(
    llm=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4, vocab_size=152064),
    vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=384, patch_size=14),
    vae=dict(block_out_channels=[128, 256, 512, 512], latent_channels=16, layers_per_block=2),
    denoiser=dict(in_channels=64, condition_size=3584, hidden_size=1024, depth=3, num_heads=16, grid_size=27),
    image_tokens=729, vae_image_size=432, num_noise_draws=4,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Models and batches
# ---------------------------------------------------------------------------------------------------------------------


def build_arms(name: str, root: Path, device, dtype, queries: bool = False, viral: bool = False) -> tuple[dict, dict]:
    """`{"none": baseline, "ross": ROSS^D}` (and `"queries"`: the generative variant; `"viral"`: DINOv2 alignment at a
    middle layer) sharing every weight they have in common, and their processors (`"queries"`'s adds the `<query>`
    token)."""
    spec = CONFIGS[name]
    paths = write_tiny_components(root / name, vision_kwargs=spec["vision"], language_kwargs=spec["language"])
    torch.manual_seed(0)
    ross = from_components(**paths, objective="denoise", num_noise_draws=4, **spec["objective"])
    baseline = from_components(paths["vision_model"], paths["language_model"], objective="none")
    missing, unexpected = baseline.load_state_dict(ross.state_dict(), strict=False)
    assert not missing and all(k.startswith(("denoiser.", "teacher.")) for k in unexpected), (missing, unexpected)
    models = {"none": baseline.to(device, dtype), "ross": ross.to(device, dtype)}
    processors = {"ross": RossProcessor.from_components(paths["vision_model"], paths["language_model"])}
    if queries:
        generative = from_components(**paths, objective="denoise", num_noise_draws=4, condition="queries",
                                     **spec["objective"])  # fmt: skip
        missing, _ = generative.load_state_dict(ross.state_dict(), strict=False)
        assert missing == ["queries.weight"], missing
        models["queries"] = generative.to(device, dtype)
        processors["queries"] = RossProcessor.from_components(
            paths["vision_model"], paths["language_model"], query_token="<query>"
        )
    if viral:
        num_layers = ross.config.text_config.num_hidden_layers
        aligned = from_components(paths["vision_model"], paths["language_model"], objective="regress",
                                  target="features", teacher=str(write_tiny_dinov2(root / name / "dinov2-tiny")),
                                  teacher_subfolder=None, regress_loss="cosine", weight=0.5,
                                  condition_layer=max(1, round(num_layers * 16 / 28)))  # fmt: skip
        shared = {k: v for k, v in ross.state_dict().items() if not k.startswith(("denoiser.", "teacher."))}
        missing, _ = aligned.load_state_dict(shared, strict=False)
        assert all(k.startswith(("denoiser.", "teacher.")) for k in missing), missing
        models["viral"] = aligned.to(device, dtype)
    return models, processors


def depth_maps(num: int, side: int, seed: int = 0) -> list[Image.Image]:
    """`num` random 16-bit depth maps (millimetres) in the 3 channels the depth rule gives them."""
    rng = np.random.default_rng(seed)
    return [depth_to_rgb(Image.fromarray(rng.integers(300, 5000, (side, side), dtype=np.uint16))) for _ in range(num)]


def make_batch(processor, spec: dict, device, dtype, creation: bool = False, depth: bool = False) -> dict:
    """`batch_size` one-image conversations of about `text_tokens` text tokens; labels on the answers only.
    `creation`: the same conversations with the image as a creation target instead (`<query>` tokens at the end of
    the answer, the image in `target_pixel_values`): the same length but for the image's newline. `depth`: each
    sample's image is followed by a depth map (two images per sample, row-major in `pixel_values`)."""
    side = processor_side(processor)
    rgb, texts = noise_images(spec["batch_size"], side), []
    images = [image for pair in zip(rgb, depth_maps(len(rgb), side)) for image in pair] if depth else rgb
    for i in range(spec["batch_size"]):
        words = " ".join(["colour shape count position"] * (spec["text_tokens"] // 8))
        question = [{"type": "text", "text": f"Describe {i}: {words}"}]
        answer = [{"type": "text", "text": words}]
        placeholders = [{"type": "image"}] * (2 if depth else 1)
        messages = [
            {"role": "user", "content": question if creation else [*placeholders, *question]},
            {"role": "assistant", "content": [*answer, {"type": "query"}] if creation else answer},
        ]
        texts.append(processor.apply_chat_template(messages, tokenize=False))
    batch = processor(text=texts, images=None if creation else images, return_tensors="pt", padding=True)
    placeholder = processor.query_token_id if creation else processor.image_token_id
    labels = batch["input_ids"].clone()
    labels[(batch["attention_mask"] == 0) | (labels == placeholder)] = -100
    batch["labels"] = labels
    key = "target_pixel_values" if creation else "pixel_values"
    batch[key] = (processor.preprocess_targets(rgb) if creation else batch["pixel_values"]).to(dtype)
    return {k: v.to(device) for k, v in batch.items()}


def cached_targets(model, batch) -> dict:
    """The teacher's `(mean, std)` for the batch's images, as a latent cache stores them."""
    with torch.no_grad():
        mean, std = model.teacher.encode_distribution(batch["pixel_values"])
    return {"mean": mean, "std": std}


def make_step(arm: str, models: dict, batch: dict):
    """A closure running one optimizer step of `arm` (stage 2: vision tower and teacher frozen)."""
    model = models[{"ross+cache": "ross", **ONE_IMAGE_ARM}.get(arm, arm)]
    model.train()
    model.model.vision_tower.requires_grad_(False)
    inputs = dict(batch)
    if arm == "ross+cache":
        inputs["teacher_targets"] = cached_targets(model, batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


# ---------------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------------


def count_flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def measure_config(name: str, root: Path, device, dtype, repeats: int, arms=ARMS) -> dict:
    """Interleaved step times, peak memory and FLOPs of the arms of one configuration."""
    models, processors = build_arms(name, root, device, dtype, queries="queries" in arms, viral="viral" in arms)
    processor = processors["ross"]
    batch = make_batch(processor, CONFIGS[name], device, dtype)
    batches = {arm: batch for arm in arms}
    if "queries" in arms:
        batches["queries"] = make_batch(processors["queries"], CONFIGS[name], device, dtype, creation=True)
    if any(arm in DEPTH_ARMS for arm in arms):
        depth_batch = make_batch(processor, CONFIGS[name], device, dtype, depth=True)
        batches.update({arm: depth_batch for arm in arms if arm in DEPTH_ARMS})
    steps = {arm: make_step(arm, models, batches[arm]) for arm in arms}
    flops = {arm: count_flops(steps[arm]) for arm in arms}  # also the warm-up step
    times, peaks = {arm: [] for arm in arms}, {arm: 0 for arm in arms}
    for _ in range(repeats):
        for arm in arms:
            if torch.device(device).type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            synchronize(device)
            start = time.perf_counter()
            steps[arm]()
            synchronize(device)
            times[arm].append(time.perf_counter() - start)
            if torch.device(device).type == "cuda":
                peaks[arm] = max(peaks[arm], torch.cuda.max_memory_allocated())
    llm = sum(p.numel() for p in models["ross"].model.language_model.parameters())
    denoiser = sum(p.numel() for p in models["ross"].denoiser.parameters())
    image_tokens = int((batch["input_ids"] == processor.image_token_id).sum()) // batch["input_ids"].shape[0]
    return {
        "config": name, "batch_size": batch["input_ids"].shape[0], "sequence_length": batch["input_ids"].shape[1],
        "image_tokens": image_tokens, "llm_parameters": llm, "denoiser_parameters": denoiser,
        "denoiser_to_llm": denoiser / llm,
        "arms": {arm: {"median_s": statistics.median(times[arm]), "times_s": times[arm], "flops": flops[arm],
                       "peak_memory_bytes": peaks[arm] or None} for arm in arms},
    }  # fmt: skip


def overheads(result: dict) -> dict:
    """Per ROSS arm: measured time ratio to `none`, FLOP ratio, and waste = measured overhead / FLOP overhead."""
    base = result["arms"]["none"]
    rows = {}
    for arm in [arm for arm in result["arms"] if arm != "none"]:
        run = result["arms"][arm]
        time_ratio, time_range = paired_ratio(run, base)
        flop_ratio = run["flops"] / base["flops"]
        memory = run["peak_memory_bytes"] / base["peak_memory_bytes"] if base["peak_memory_bytes"] else None
        waste = (time_ratio - 1) / (flop_ratio - 1) if flop_ratio > 1 else None
        rows[arm] = {"time_ratio": time_ratio, "time_ratio_range": time_range, "flop_ratio": flop_ratio,
                     "memory_ratio": memory, "waste": waste}
        if arm in EXTRA_ARMS and arm != "none+depth" and "ross" in result["arms"]:
            ratio, ratio_range = paired_ratio(run, result["arms"]["ross"])
            rows[arm].update(ross_time_ratio=ratio, ross_time_ratio_range=ratio_range,
                             ross_flop_ratio=run["flops"] / result["arms"]["ross"]["flops"])
        if ONE_IMAGE_ARM.get(arm) in result["arms"]:  # what the depth map adds to the same objective's step
            one = result["arms"][ONE_IMAGE_ARM[arm]]
            ratio, ratio_range = paired_ratio(run, one)
            memory = run["peak_memory_bytes"] / one["peak_memory_bytes"] if one["peak_memory_bytes"] else None
            rows[arm]["one_image"] = {"time_ratio": ratio, "time_ratio_range": ratio_range,
                                      "flop_ratio": run["flops"] / one["flops"], "memory_ratio": memory}
    return rows


def paired_ratio(run: dict, base: dict) -> tuple[float, list[float]]:
    """Median and range of the paired ratios of the interleaved steps: the machine's drift cancels within a pair."""
    paired = sorted(a / b for a, b in zip(run["times_s"], base["times_s"]))
    return statistics.median(paired), [paired[0], paired[-1]]


# ---------------------------------------------------------------------------------------------------------------------
# Packing: padded vs padding-free batches on a LLaVA-665K-like length mix
# ---------------------------------------------------------------------------------------------------------------------


def length_mix(num: int, image_tokens: int, seed: int = 0) -> list[int]:
    """Text tokens per sample, LLaVA-665K-like (see the docstring), negative for the 10% text-only samples."""
    rng = np.random.default_rng(seed)
    scale = image_tokens / REFERENCE_7B["image_tokens"]
    text = np.maximum(4, np.round(rng.lognormal(np.log(180), 0.8, num) * scale * 2)).astype(int)
    text_only = rng.random(num) < 0.1
    text[text_only] = np.maximum(4, np.round(text[text_only] * 3))  # text-only records are the long multi-round ones
    return [-int(t) if only else int(t) for t, only in zip(text, text_only)]


def packing_samples(processor, mix: list[int]) -> list[dict]:
    """Collator items (one conversation, one image or none) of about the mix's text tokens."""
    side = processor_side(processor)
    images = noise_images(8, side)
    items = []
    for i, signed in enumerate(mix):
        words = max(1, abs(signed) // 2)
        question = " ".join(["what colour"] * max(1, words // 4))
        answer = " ".join(["a red square on the left"] * max(1, words // 6))
        user = [{"type": "text", "text": question}]
        if signed > 0:
            user = [{"type": "image"}, *user]
        items.append({"id": str(i), "source": "mix", "images": [images[i % 8]] if signed > 0 else [],
                      "messages": [{"role": "user", "content": user},
                                   {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})
    return items


def measure_packing(
    root: Path, repeats: int, num_batches: int, batch_size: int, device, dtype, arm="ross", pack_max_tokens=None,
    attention=SDPA_VARLEN, config="tiny",
) -> dict:
    """Real tokens per second, padded vs packed, random and length-grouped batches (see the docstring); `arm`:
    `ross` (ROSS^D) or `none` (the LLaVA baseline: no per-image denoiser cost, which packing cannot reduce);
    `attention`: the model's attention implementation, `sdpa` or `sdpa_varlen` (on padded batches both are
    transformers' SDPA path, unchanged)."""
    import copy

    from ross.train.collator import RossDataCollator
    from ross.train.samplers import length_grouped_indices

    models, processors = build_arms(config, root, device, dtype)
    model, processor = models[arm], processors["ross"]
    model.set_attn_implementation(attention)
    pack_max_tokens = pack_capacity(attention, pack_max_tokens)
    model.train()
    model.model.vision_tower.requires_grad_(False)
    mix = length_mix(num_batches * batch_size * 4, processor.image_seq_length)
    items = packing_samples(processor, mix)
    padded_collator = RossDataCollator(processor, max_length=100_000)
    packed_collator = RossDataCollator(processor, max_length=100_000, padding_free=True,
                                       pack_max_tokens=pack_max_tokens)  # fmt: skip
    lengths = [padded_collator.sample_length(item["messages"], len(item["images"])) for item in items]
    orders = {
        "random": torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist(),
        "length-grouped": length_grouped_indices(lengths, batch_size, torch.Generator().manual_seed(0)),
    }

    def run(batch, seed):
        torch.manual_seed(seed)
        loss = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    hidden = model.config.text_config.hidden_size

    def run_language_model(batch):
        """The part of a step that scales with the tokens: the language model, the LM head and the text loss,
        forward + backward, on embeddings of the batch's shape (the vision tower, projector, denoiser and teacher
        left out: their cost is per image, which no layout changes)."""
        embeds = torch.randn(*batch["input_ids"].shape, hidden, device=device, dtype=dtype, requires_grad=True)
        layout = {key: batch[key].to(device) for key in ("attention_mask", "position_ids") if key in batch}
        hidden_states = model.model.language_model(inputs_embeds=embeds, use_cache=False, **layout).last_hidden_state
        logits = model.lm_head(hidden_states).float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].to(device).flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)

    results = {}
    for name, order in orders.items():
        chosen = [order[i * batch_size : (i + 1) * batch_size] for i in range(num_batches)]
        padded = [padded_collator(copy.deepcopy([items[i] for i in batch])) for batch in chosen]
        packed = [packed_collator(copy.deepcopy([items[i] for i in batch])) for batch in chosen]
        for batch in padded + packed:  # pixel values in the model's dtype
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(dtype)

        def interleaved(step):
            """`step(batch, k)` on each batch pair, padded then packed, `repeats` times: seconds per layout and the
            step's return values per pair."""
            seconds, returned = {"padded": 0.0, "packed": 0.0}, []
            for _ in range(repeats):
                for k in range(num_batches):
                    values = {}
                    for layout, batch in (("padded", padded[k]), ("packed", packed[k])):
                        synchronize(device)
                        start = time.perf_counter()
                        values[layout] = step(batch, k)
                        synchronize(device)
                        seconds[layout] += time.perf_counter() - start
                    returned.append(values)
            return seconds, returned

        run(padded[0], 0), run(packed[0], 0)  # warm-up
        times, losses = interleaved(run)
        diffs = [abs(pair["padded"] - pair["packed"]) for pair in losses]
        run_language_model(padded[0]), run_language_model(packed[0])  # warm-up
        language_model_s, _ = interleaved(lambda batch, k: run_language_model(batch))
        real = sum(int(b["attention_mask"].sum()) for b in padded) * repeats
        padded_tokens = sum(b["input_ids"].numel() for b in padded) * repeats
        speed = {layout: real / t for layout, t in times.items()}
        packed_tokens = sum(b["input_ids"].numel() for b in packed) * repeats
        ratio = padded_tokens / real
        # The most any layout can gain: only the token part shrinks, by the padding ratio (Amdahl).
        token_share = language_model_s["padded"] / times["padded"]
        # The token part's own gain (language model alone, packed vs padded): what the layout achieves where it can.
        token_speedup = language_model_s["padded"] / language_model_s["packed"]
        bound = 1 / ((1 - token_share) + token_share / ratio)
        results[f"{arm}/{name}"] = {
            "token_share_padded": token_share, "speedup_bound": bound, "bound_over_padding_ratio": bound / ratio,
            "token_part_speedup_over_padding_ratio": token_speedup / ratio, "threads": torch.get_num_threads(),
            "real_tokens_per_s": speed, "padding_share_padded": 1 - real / padded_tokens, "padding_share_packed": 1 - real / packed_tokens,
            "padded_over_real": ratio, "speedup": speed["packed"] / speed["padded"],
            "speedup_over_padding_ratio": speed["packed"] / speed["padded"] / ratio, "max_loss_diff": max(diffs),
            "mean_sequence": real / repeats / (num_batches * batch_size), "batches": num_batches,
            "batch_size": batch_size, "repeats": repeats, "arm": arm,
        }  # fmt: skip
    return results


def run_stamp() -> dict:
    """The machine and commit a stored result names."""
    sha, dirty = git_commit()
    return {"machine": f"{cpu_model()}, {os.cpu_count()} cores", "commit": sha[:7] + ("+dirty" if dirty else "")}


def packing_markdown(packing: dict, args) -> str:
    stamp = run_stamp()
    capacity = args.pack_max_tokens or ("one row per batch" if args.packed_attention == SDPA_VARLEN
                                        else "rows of at most the longest sample")  # fmt: skip
    lines = [f"Packing ({stamp['machine']}, commit {stamp['commit']}): {args.packing_config} config, {args.device}, "
             f"attention {args.packed_attention}, packed {capacity}, torch threads {torch.get_num_threads()}, "
             f"forward + backward, "
             f"{args.packing_batches} batches of {args.packing_batch} x {args.repeats} (interleaved)", "",
             "| arm | batches | mean sample (tokens) | padding share, padded | padding share, packed | "
             "real tokens/s padded | real tokens/s packed | "
             "speed-up | padded / real tokens | speed-up / (padded / real) | max loss diff | "
             "token part of the padded step | bound | bound / (padded / real) | "
             "token part alone: speed-up / (padded / real) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, r in packing.items():
        arm, name = key.split("/")
        lines.append(
            f"| {arm} | {name} | {r['mean_sequence']:.0f} | {r['padding_share_padded']:.1%} | "
            f"{r['padding_share_packed']:.1%} | "
            f"{r['real_tokens_per_s']['padded']:,.0f} | {r['real_tokens_per_s']['packed']:,.0f} | {r['speedup']:.2f} | "
            f"{r['padded_over_real']:.2f} | {r['speedup_over_padding_ratio']:.0%} | {r['max_loss_diff']:.1e} | "
            f"{r['token_share_padded']:.0%} | {r['speedup_bound']:.2f} | {r['bound_over_padding_ratio']:.0%} | "
            f"{r['token_part_speedup_over_padding_ratio']:.0%} |"
        )
    lines += ["", "Token part: the language model + LM head + text loss alone (forward + backward) on the padded "
              "batches, over the padded step; bound: the speed-up if only that part shrank by padded / real tokens "
              "(no padding left, attention at no extra cost), `1 / ((1 - share) + share / (padded / real))`; "
              "token part alone: that part timed on the packed batches too, its own speed-up over the padding ratio."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# The 7B recipe's FLOP account
# ---------------------------------------------------------------------------------------------------------------------


def flop_account_7b(sft_length: int) -> list[dict]:
    """Forward FLOPs of each module of the 7B recipe for one sample, and its training-step FLOPs (see docstring)."""
    ref = REFERENCE_7B
    with torch.device("meta"):
        llm = Qwen2ForCausalLM(Qwen2Config(**ref["llm"]))
        tower = SiglipVisionModel(SiglipVisionConfig(**ref["vision"]))
        vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            **ref["vae"])  # fmt: skip
        ids = torch.zeros(1, sft_length, dtype=torch.long)
        side = ref["vision"]["image_size"]
        with torch.no_grad():
            forward = {
                "vision tower (SigLIP-so400m, frozen)": count_flops(lambda: tower(torch.zeros(1, 3, side, side))),
                "LLM (Qwen2-7B, trained)": count_flops(lambda: llm(input_ids=ids)),
                "teacher (FLUX VAE encoder, frozen)": count_flops(
                    lambda: vae.encode(torch.zeros(1, 3, ref["vae_image_size"], ref["vae_image_size"]))
                ),
            }
    denoiser = RossDenoiser(**ref["denoiser"])  # its autocast guard needs a real device
    draws, tokens = ref["num_noise_draws"], ref["image_tokens"]
    # The math kernel, whose matmuls the counter sees: it does not count the CPU flash-attention kernel (the
    # denoiser's attention would be missing, 7% of its FLOPs at 729 tokens).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        forward["denoiser (65M, 4 draws, trained)"] = count_flops(
            lambda: denoiser(torch.zeros(draws, tokens, 64), torch.zeros(draws, dtype=torch.long),
                             torch.zeros(draws, tokens, ref["llm"]["hidden_size"]))
        )  # fmt: skip
    rows = [{"module": name, "forward_flops": value, "step_flops": value * (3 if "trained" in name else 1)}
            for name, value in forward.items()]  # fmt: skip
    total = sum(row["step_flops"] for row in rows)
    without_teacher = total - rows[2]["step_flops"]
    for row in rows:
        row["share"] = row["step_flops"] / total
        row["share_with_cache"] = 0.0 if "teacher" in row["module"] else row["step_flops"] / without_teacher
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# The Qwen2.5-VL-7B FLOP account (analytic)
# ---------------------------------------------------------------------------------------------------------------------

# Qwen/Qwen2.5-VL-7B-Instruct's config.json. transformers' `Qwen2_5_VLConfig()` defaults are NOT the 7B model (its
# text defaults are 72B-sized, its vision `hidden_size` 3584), so the numbers are written out; the module shapes
# match the 7B checkpoint's printed module tree (vision: Conv3d(3, 1280, (2, 14, 14)), 32 blocks of qkv 1280->3840,
# proj 1280->1280, gated MLP 1280->3420->1280; merger 5120->5120->3584; LLM: q 3584->3584, k/v 3584->512, o, gated
# MLP 3584->18944, 28 layers, embeddings / lm_head 152064 x 3584).
QWEN25VL_7B = dict(
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, temporal_patch_size=2,
                in_channels=3, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                out_hidden_size=3584),
    llm=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4, vocab_size=152064),
    # ROSS^D's reference denoiser on the Qwen2.5 LLM's width; FLUX VAE latents, 2x2 folded (16 x 4 channels).
    denoiser=dict(in_channels=64, condition_size=3584, hidden_size=1024, depth=3, num_heads=16, mlp_ratio=4.0),
    teacher_pixels_per_token=16, num_noise_draws=4,
)  # fmt: skip
# (width, height) in pixels of the two inputs of the account.
QWEN25VL_INPUTS = ((448, 448), (1024, 768))


def qwen25vl_grid(width: int, height: int, vision: dict = QWEN25VL_7B["vision"]) -> tuple[int, int]:
    """The patch grid `(grid_h, grid_w)` Qwen2.5-VL's image processor gives a `width x height` px image:
    transformers' own `smart_resize` (sides to multiples of patch x merge = 28 px, pixel count within the
    processor's default bounds), then one patch per 14 x 14 px. The LLM sees `grid_h * grid_w / 4` image tokens."""
    factor = vision["patch_size"] * vision["spatial_merge_size"]
    resized_h, resized_w = smart_resize(height, width, factor=factor)
    return resized_h // vision["patch_size"], resized_w // vision["patch_size"]


def _window_sides(length: int, window: int) -> list[int]:
    """Sides of the windows along one axis of merged tokens: full windows, then the remainder (as
    `transformers.vision_utils.get_vision_window_index`, which drops the empty padding windows)."""
    return [window] * (length // window) + ([length % window] if length % window else [])


def qwen25vl_vision_flops(grid_h: int, grid_w: int, vision: dict) -> dict[str, int]:
    """Forward FLOPs of Qwen2.5-VL's vision tower for one image of `grid_h x grid_w` patches, `{"blocks": patch
    embedding + blocks, "merger": the patch merger}`, counted as `torch.utils.flop_counter` counts them (2 per
    multiply-add of each matmul, attention as its two matmuls over the whole key range; norms, rotary and activations
    not counted). Window blocks attend within windows of `window_size / patch / merge` (= 4) x 4 merged tokens
    (8 x 8 patches), the `fullatt_block_indexes` blocks over the whole image."""
    patches, width, inner = grid_h * grid_w, vision["hidden_size"], vision["intermediate_size"]
    merge = vision["spatial_merge_size"]
    patch_in = vision["in_channels"] * vision["temporal_patch_size"] * vision["patch_size"] ** 2
    flops = 2 * patches * patch_in * width  # patch embedding (a Conv3d = one matmul per patch)
    window = vision["window_size"] // merge // vision["patch_size"]
    rows, cols = _window_sides(grid_h // merge, window), _window_sides(grid_w // merge, window)
    # Each window holds (rows x cols) merged tokens of merge^2 patches; sum of squared window lengths factorises.
    window_square_sum = merge**4 * sum(r * r for r in rows) * sum(c * c for c in cols)
    for block in range(vision["depth"]):
        square_sum = patches**2 if block in vision["fullatt_block_indexes"] else window_square_sum
        flops += 2 * patches * (3 * width * width + width * width + 3 * width * inner)  # qkv, proj, gate/up/down
        flops += 4 * square_sum * width  # q k^T and attn v, all heads
    merged, merged_width = patches // merge**2, width * merge**2
    return {"blocks": flops, "merger": 2 * merged * merged_width * (merged_width + vision["out_hidden_size"])}


def decoder_flops(tokens: int, llm: dict) -> int:
    """Forward FLOPs of a Qwen2-style decoder LM (GQA, gated MLP, untied lm_head over every position) on one sequence
    of `tokens`, counted as `torch.utils.flop_counter` counts them (attention over all `tokens` keys: a kernel that
    skips the causal half does about `2 * layers * tokens^2 * hidden` fewer)."""
    hidden, inner = llm["hidden_size"], llm["intermediate_size"]
    kv = hidden // llm["num_attention_heads"] * llm["num_key_value_heads"]
    per_layer = 2 * tokens * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner) + 4 * tokens**2 * hidden
    return llm["num_hidden_layers"] * per_layer + 2 * tokens * hidden * llm["vocab_size"]


def denoiser_flops(tokens: int, rows: int, denoiser: dict) -> int:
    """Forward FLOPs of `RossDenoiser` on `rows` noisy copies of a `tokens`-token image (one row per noise draw)."""
    hidden, channels, depth = denoiser["hidden_size"], denoiser["in_channels"], denoiser["depth"]
    inner = int(hidden * denoiser["mlp_ratio"])
    per_row = 2 * tokens * (channels * hidden + denoiser["condition_size"] * hidden)  # x and condition embeddings
    per_row += 2 * (256 * hidden + hidden * hidden)  # timestep MLP, once per row
    per_row += depth * (2 * tokens * (6 * hidden * hidden + 4 * hidden * hidden + 2 * hidden * inner)
                        + 4 * tokens**2 * hidden)  # adaLN, qkv + proj, MLP; attention  # fmt: skip
    per_row += 2 * tokens * (2 * hidden * hidden + hidden * channels)  # final adaLN + linear
    return rows * per_row


def flop_account_qwen25vl(text_tokens: int, inputs=QWEN25VL_INPUTS, ref: dict = QWEN25VL_7B) -> list[dict]:
    """Per input size: the training-step FLOPs of one sample (one image + `text_tokens`) of Qwen2.5-VL-7B fine-tuned
    without ROSS and with ROSS^D, module by module. Trained (step = 3 x forward): LLM and merger; the denoiser with
    ROSS^D. Frozen (step = forward, no gradient flows into them): the vision blocks and the FLUX VAE encoder (the
    teacher, at `grid * 16` px so that its 2 x 2-folded f8 latents lie on the token grid)."""
    vision, merge = ref["vision"], ref["vision"]["spatial_merge_size"]
    results = []
    for width, height in inputs:
        grid_h, grid_w = qwen25vl_grid(width, height, vision)
        token_h, token_w = grid_h // merge, grid_w // merge
        image_tokens = token_h * token_w
        sequence = image_tokens + text_tokens
        tower = qwen25vl_vision_flops(grid_h, grid_w, vision)
        side = ref["teacher_pixels_per_token"]
        forward = {
            "vision blocks (frozen)": tower["blocks"],
            "merger (trained)": tower["merger"],
            "LLM (Qwen2.5-7B, trained)": decoder_flops(sequence, ref["llm"]),
            "teacher (FLUX VAE encoder, frozen)": _vae_encoder_flops(token_h * side, token_w * side),
            f"denoiser ({ref['denoiser']['hidden_size']} wide, {ref['denoiser']['depth']} deep, "
            f"{ref['num_noise_draws']} draws, trained)": denoiser_flops(image_tokens, ref["num_noise_draws"],
                                                                        ref["denoiser"]),
        }  # fmt: skip
        rows = [{"module": name, "forward_flops": value, "step_flops": value * (3 if "trained" in name else 1)}
                for name, value in forward.items()]  # fmt: skip
        ross_head = sum(row["step_flops"] for row in rows if row["module"].startswith(("teacher", "denoiser")))
        teacher = next(row["step_flops"] for row in rows if row["module"].startswith("teacher"))
        total_ross = sum(row["step_flops"] for row in rows)
        total_none = total_ross - ross_head
        for row in rows:
            row["share_ross"] = row["step_flops"] / total_ross
        patch = vision["patch_size"]
        results.append({
            "input": f"{width} x {height}", "resized": f"{grid_w * patch} x {grid_h * patch}",
            "patch_grid": [grid_h, grid_w], "token_grid": [token_h, token_w], "image_tokens": image_tokens,
            "text_tokens": text_tokens, "sequence": sequence, "teacher_pixels": [token_h * side, token_w * side],
            "modules": rows, "step_flops_none": total_none, "step_flops_ross": total_ross,
            "ross_head_share": ross_head / total_ross, "ross_overhead": total_ross / total_none - 1,
            "ross_overhead_with_cache": (total_ross - teacher) / total_none - 1,
        })  # fmt: skip
    return results


def _vae_encoder_flops(height: int, width: int) -> int:
    """Forward FLOPs of the FLUX VAE encoder (`REFERENCE_7B["vae"]`) on one `height x width` image, built on the meta
    device (no weights) and counted by `torch.utils.flop_counter`, as the LLaVA-style account does."""
    with torch.device("meta"):
        vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            **REFERENCE_7B["vae"])  # fmt: skip
        with torch.no_grad():
            return count_flops(lambda: vae.encode(torch.zeros(1, 3, height, width)))


def qwen25vl_markdown(account: list[dict]) -> str:
    lines = ["Qwen2.5-VL-7B fine-tuning, one sample (one image + text), FLOPs per training step (analytic; trained "
             "modules 3 x forward, frozen 1 x; attention counted over all keys as `torch.utils.flop_counter` does, "
             "also the LLM's causal attention; text tokens as the LLaVA-style account's sample):", ""]  # fmt: skip
    for entry in account:
        lines += [f"Input {entry['input']} px -> smart_resize {entry['resized']} px, {entry['patch_grid'][0]} x "
                  f"{entry['patch_grid'][1]} patches, {entry['token_grid'][0]} x {entry['token_grid'][1]} = "
                  f"{entry['image_tokens']} image tokens + {entry['text_tokens']} text tokens = {entry['sequence']}; "
                  f"teacher input {entry['teacher_pixels'][1]} x {entry['teacher_pixels'][0]} px.", "",
                  "| module | forward TFLOPs | step TFLOPs | share of the ROSS^D step |",
                  "|---|---|---|---|"]  # fmt: skip
        for row in entry["modules"]:
            lines.append(f"| {row['module']} | {row['forward_flops'] / 1e12:.3f} | {row['step_flops'] / 1e12:.3f} | "
                         f"{row['share_ross']:.1%} |")  # fmt: skip
        lines += ["", f"Step: no ROSS {entry['step_flops_none'] / 1e12:.2f} TFLOPs, ROSS^D "
                  f"{entry['step_flops_ross'] / 1e12:.2f} TFLOPs (+{entry['ross_overhead']:.1%}; the ROSS head, "
                  f"teacher + denoiser, is {entry['ross_head_share']:.1%} of the step; "
                  f"+{entry['ross_overhead_with_cache']:.1%} with the latent cache).", ""]  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Qwen2.5-VL arms (RossForPreTraining around transformers' own class): ROSS^D vs none, mixed vs uniform grids
# ---------------------------------------------------------------------------------------------------------------------

# Token grids (rows, cols) of the four one-image samples of a batch; 28 px per token, so a `rows * 28` x `cols * 28` px
# image keeps its size through `smart_resize`. Both batches hold 64 image tokens; the mixed one's images differ in
# size, so the denoiser pads them to the longest (24 tokens) and masks the padding, as a real Qwen-VL batch needs.
QWEN25VL_BATCH_GRIDS = {"uniform": [(4, 4)] * 4, "mixed": [(2, 4), (3, 4), (4, 5), (4, 6)]}
QWEN25VL_ARMS = ("none", "ross")


def build_qwen25vl_arms(root: Path, device, dtype) -> tuple[dict, object]:
    """`{"none": the plain tiny Qwen2.5-VL (its own text loss), "ross": RossForPreTraining around an equal copy}`
    (ROSS^D: KL-16 teacher, the `tiny` denoiser, 4 draws), both with the stage-2 trainable set (vision blocks and
    teacher frozen; merger, LLM and denoiser trained), and the processor."""
    import copy

    from ross.train.trainer import apply_stage

    vae = write_tiny_vae(root / "vae-kl16", block_out_channels=(8, 16, 16, 16, 16))  # downsample 16: 16 px per token
    vlm, processor = tiny_qwen25_vl(vision_depth=1, max_pixels=28 * 28 * 36)
    image_processor = processor.image_processor
    torch.manual_seed(0)
    ross = RossForPreTraining.from_vlm(
        vlm, {"teacher": str(vae), "teacher_subfolder": "vae", "num_noise_draws": 4, **CONFIGS["tiny"]["objective"]},
        image_mean=image_processor.image_mean, image_std=image_processor.image_std,
    )  # fmt: skip
    apply_stage(ross, 2)
    baseline = copy.deepcopy(ross.model)  # the same weights and trainable set, without the head
    return {"none": baseline.to(device, dtype), "ross": ross.to(device, dtype)}, processor


def make_qwen25vl_batch(processor, grids: list[tuple[int, int]], device, dtype, text_tokens: int = 24) -> dict:
    """One one-image conversation per grid (an image of `rows * 28` x `cols * 28` px, about `text_tokens` text
    tokens), labels on everything but padding and image tokens."""
    texts, images = [], []
    words = " ".join(["colour shape count position"] * (text_tokens // 8))
    for i, (rows, cols) in enumerate(grids):
        images += noise_images(1, 28 * max(rows, cols), seed=i)
        images[-1] = images[-1].crop((0, 0, 28 * cols, 28 * rows))
        question = [{"type": "image"}, {"type": "text", "text": f"Describe {i}: {words}"}]
        messages = [{"role": "user", "content": question},
                    {"role": "assistant", "content": [{"type": "text", "text": words}]}]  # fmt: skip
        texts.append(processor.apply_chat_template(messages, tokenize=False))
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    merge = processor.image_processor.merge_size
    got = [(int(h) // merge, int(w) // merge) for _, h, w in batch["image_grid_thw"].tolist()]
    if got != list(grids):
        raise RuntimeError(f"the processor gave token grids {got}, not {list(grids)} (smart_resize bounds?)")
    labels = batch["input_ids"].clone()
    labels[(batch["attention_mask"] == 0) | (labels == processor.image_token_id)] = -100
    batch["labels"] = labels
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return {k: v.to(device) for k, v in batch.items()}


def check_qwen25vl_forward(models: dict, batch: dict, grids: list[tuple[int, int]]) -> dict:
    """The correctness line of one batch, on the arms' equal starting weights: ROSS^D's grids are the batch's, its
    visual loss is finite and positive, its loss is text + weight x visual, and its text loss is the plain VLM's own
    loss on the same batch. Raises if any fails (a timing of a wrong step is no result)."""
    ross = models["ross"].train()
    with torch.no_grad():
        outputs = ross(**batch)
        plain = models["none"].train()(**batch).loss
    weight = ross.head_config.objective_config.weight
    check = {
        "grids": [list(grid) for grid in outputs.image_grids],
        "text_loss": float(outputs.text_loss), "visual_loss": float(outputs.visual_loss), "loss": float(outputs.loss),
        "loss_minus_text_plus_visual": float((outputs.loss - outputs.text_loss - weight * outputs.visual_loss).abs()),
        "text_loss_minus_plain_vlm": float((outputs.text_loss - plain).abs()),
    }  # fmt: skip
    check["ok"] = (
        outputs.image_grids == list(grids) and math.isfinite(check["visual_loss"]) and check["visual_loss"] > 0
        and check["loss_minus_text_plus_visual"] <= 1e-5 * max(1.0, abs(check["loss"]))
        and check["text_loss_minus_plain_vlm"] <= 1e-5 * max(1.0, check["text_loss"])
    )  # fmt: skip
    if not check["ok"]:
        raise RuntimeError(f"Qwen2.5-VL ROSS^D forward check failed: {check}")
    return check


def measure_qwen25vl(root: Path, device, dtype, repeats: int) -> dict:
    """Interleaved optimizer steps (AdamW, forward + backward + step) of `none` and `ross` on a uniform-grid and a
    mixed-grid batch, four arms in turn; FLOPs counted once per arm (also the warm-up step)."""
    models, processor = build_qwen25vl_arms(root, device, dtype)
    batches = {kind: make_qwen25vl_batch(processor, grids, device, dtype)
               for kind, grids in QWEN25VL_BATCH_GRIDS.items()}  # fmt: skip
    checks = {kind: check_qwen25vl_forward(models, batches[kind], QWEN25VL_BATCH_GRIDS[kind]) for kind in batches}
    optimizers = {arm: torch.optim.AdamW([p for p in models[arm].parameters() if p.requires_grad], lr=1e-5)
                  for arm in QWEN25VL_ARMS}  # fmt: skip

    def make(arm, kind):
        def step():
            loss = models[arm](**batches[kind]).loss
            loss.backward()
            optimizers[arm].step()
            optimizers[arm].zero_grad(set_to_none=True)
            return loss

        return step

    runs = [(arm, kind) for kind in QWEN25VL_BATCH_GRIDS for arm in QWEN25VL_ARMS]
    steps = {run: make(*run) for run in runs}
    flops = {run: count_flops(steps[run]) for run in runs}
    times = {run: [] for run in runs}
    for _ in range(repeats):
        for run in runs:
            synchronize(device)
            start = time.perf_counter()
            steps[run]()
            synchronize(device)
            times[run].append(time.perf_counter() - start)
    arms = {f"{arm}/{kind}": {"median_s": statistics.median(times[arm, kind]), "times_s": times[arm, kind],
                              "flops": flops[arm, kind]} for arm, kind in runs}  # fmt: skip
    ratios = {}
    for kind in QWEN25VL_BATCH_GRIDS:
        ross, none = arms[f"ross/{kind}"], arms[f"none/{kind}"]
        ratio, spread = paired_ratio(ross, none)
        ratios[f"ross/none {kind}"] = {"time_ratio": ratio, "time_ratio_range": spread,
                                       "flop_ratio": ross["flops"] / none["flops"]}  # fmt: skip
    for arm in QWEN25VL_ARMS:
        mixed, uniform = arms[f"{arm}/mixed"], arms[f"{arm}/uniform"]
        ratio, spread = paired_ratio(mixed, uniform)
        ratios[f"{arm} mixed/uniform"] = {"time_ratio": ratio, "time_ratio_range": spread,
                                          "flop_ratio": mixed["flops"] / uniform["flops"]}  # fmt: skip
    return {
        "model": "tiny Qwen2_5_VLForConditionalGeneration (modeling_ross.testing.tiny_qwen25_vl)",
        "grids": {kind: [list(g) for g in grids] for kind, grids in QWEN25VL_BATCH_GRIDS.items()},
        "sequence_length": {kind: batch["input_ids"].shape[1] for kind, batch in batches.items()},
        "parameters": {"llm": sum(p.numel() for p in models["none"].model.language_model.parameters()),
                       "denoiser": sum(p.numel() for p in models["ross"].denoiser.parameters())},
        "checks": checks, "arms": arms, "ratios": ratios,
    }  # fmt: skip


def qwen25vl_arms_markdown(result: dict, args, load: tuple[list[float], list[float]]) -> str:
    stamp = run_stamp()
    before, after = (", ".join(f"{v:.1f}" for v in values) for values in load)
    # Other jobs on the machine show in the load average before the run starts (the run itself adds about 1).
    machine = "**shared machine**: other jobs ran, " if load[0][0] >= 0.5 else "idle machine, "
    lines = [f"Qwen2.5-VL arms ({stamp['machine']}, commit {stamp['commit']}; {machine}load average {before} "
             f"(1/5/15 min) before, {after} after): "
             f"{result['model']}, {args.device}, {args.dtype}, one AdamW step (forward + backward + step) per timing, "
             f"{args.repeats} interleaved steps per arm (median). LLM {result['parameters']['llm']:,} parameters, "
             f"denoiser {result['parameters']['denoiser']:,}: a tiny model, where the head is large next to the LLM "
             "(the 7B share is in the FLOP account).", "",
             "Batches of four one-image samples, 64 image tokens per batch: uniform grids " +
             " ".join("x".join(map(str, g)) for g in result["grids"]["uniform"]) + ", mixed grids " +
             " ".join("x".join(map(str, g)) for g in result["grids"]["mixed"]) + " (tokens, 28 px each; "
             f"sequences {result['sequence_length']['uniform']} / {result['sequence_length']['mixed']} tokens).", "",
             "| arm | grids | ms/step | GFLOPs/step |", "|---|---|---|---|"]  # fmt: skip
    for name, run in result["arms"].items():
        arm, kind = name.split("/")
        lines.append(f"| {'ROSS^D' if arm == 'ross' else 'none'} | {kind} | {run['median_s'] * 1e3:.1f} | "
                     f"{run['flops'] / 1e9:.3f} |")  # fmt: skip
    lines += ["", "| ratio | time (paired median, min-max) | FLOPs |", "|---|---|---|"]
    for name, r in result["ratios"].items():
        lines.append(f"| {name.replace('ross', 'ROSS^D')} | {r['time_ratio']:.2f} "
                     "({:.2f}-{:.2f}) | {:.2f} |".format(*r["time_ratio_range"], r["flop_ratio"]))  # fmt: skip
    lines += ["", "Check (before the first step, equal weights; the run stops if it fails):"]
    for kind, c in result["checks"].items():
        lines.append(f"- {kind}: grids {c['grids']}; visual loss {c['visual_loss']:.4f} (finite, > 0); "
                     f"|loss - (text + visual)| = {c['loss_minus_text_plus_visual']:.1e}; |text loss - plain "
                     f"Qwen2.5-VL loss| = {c['text_loss_minus_plain_vlm']:.1e}.")  # fmt: skip
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def _fmt(value, spec=".2f", missing="n/a") -> str:
    return missing if value is None else format(value, spec)


def markdown(results: list[dict], account: list[dict], args) -> str:
    lines = [f"Device {args.device}, dtype {args.dtype}, {args.repeats} interleaved steps per arm (median).", "",
             "| config | seq (image tokens) | denoiser / LLM | arm | step s | TFLOP/s (MFU) | x none (min-max) | "
             "FLOPs x none | waste | memory x none |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    extra, depth = [], []
    for result in results:
        ratios = overheads(result)
        for arm in result["arms"]:
            r = ratios.get(arm, {})
            spread = " ({:.2f}-{:.2f})".format(*r["time_ratio_range"]) if r else ""
            run = result["arms"][arm]
            achieved = run["flops"] / run["median_s"] / 1e12
            mfu = f" ({achieved / args.peak_tflops:.1%})" if args.peak_tflops else ""
            lines.append(
                f"| {result['config']} | {result['sequence_length']} ({result['image_tokens']}) | "
                f"{result['denoiser_to_llm']:.2%} | {arm} | {run['median_s']:.3f} | {achieved:.3f}{mfu} | "
                f"{_fmt(r.get('time_ratio', 1.0))}{spread} | {_fmt(r.get('flop_ratio', 1.0))} | {_fmt(r.get('waste'))} | "
                f"{_fmt(r.get('memory_ratio'))} |"
            )
            if "ross_time_ratio" in r:
                extra.append(f"| {result['config']} | {arm} | {r['ross_time_ratio']:.2f} "
                             "({:.2f}-{:.2f}) | {:.2f} |".format(*r["ross_time_ratio_range"], r["ross_flop_ratio"]))
            if "one_image" in r:
                one = r["one_image"]
                depth.append(f"| {result['config']} | {arm} vs {ONE_IMAGE_ARM[arm]} | {_fmt(one['time_ratio'])} "
                             "({:.2f}-{:.2f}) | ".format(*one["time_ratio_range"])
                             + f"{_fmt(one['flop_ratio'])} | {_fmt(one['memory_ratio'])} |")  # fmt: skip
    if extra:
        lines += ["", "Extra arms against ROSS^D (paired time ratio, its range, FLOP ratio):", "",
                  "| config | arm | x ROSS^D (min-max) | FLOPs x ROSS^D |", "|---|---|---|---|", *extra]
    if depth:
        lines += ["", "RGB + depth map (two images per sample) against the same objective with one image:", "",
                  "| config | arm | x 1 image (min-max) | FLOPs x 1 image | memory x 1 image |", "|---|---|---|---|---|",
                  *depth]  # fmt: skip
    lines += ["", f"7B recipe, one sample of {args.sft_length} tokens (729 image tokens): FLOPs per training step",
              "", "| module | forward TFLOPs | step TFLOPs | share | share with latent cache |", "|---|---|---|---|---|"]
    for row in account:
        lines.append(f"| {row['module']} | {row['forward_flops'] / 1e12:.2f} | {row['step_flops'] / 1e12:.2f} | "
                     f"{row['share']:.1%} | {row['share_with_cache']:.1%} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=[*ARMS, *EXTRA_ARMS],
                        help="arms to measure (`none`, the baseline, always is); `queries` is the generative variant, "
                        "`none+depth` / `ross+depth` the RGB-D arms, `viral` the DINOv2 alignment")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s at --dtype, for the MFU column (e.g. 989 for H100/H200 bf16)")
    parser.add_argument("--sft-length", type=int, default=1152, help="tokens of one SFT sample of the 7B account")
    parser.add_argument("--depth", action="store_true", help="add the RGB + depth-map arms (two images per sample)")
    parser.add_argument("--packing", action="store_true", help="add the padded vs packed comparison (tiny config)")
    parser.add_argument("--packing-only", action="store_true", help="only the padded vs packed comparison")
    parser.add_argument("--qwen25vl-account-only", action="store_true",
                        help="only the analytic Qwen2.5-VL-7B FLOP account (no model is built or timed)")
    parser.add_argument("--qwen25vl-only", action="store_true",
                        help="only the Qwen2.5-VL arms (a tiny Qwen2.5-VL, ROSS^D vs none, uniform vs mixed grids)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--packing-batches", type=int, default=12)
    parser.add_argument("--packing-config", default="tiny", choices=list(CONFIGS),
                        help="configuration of the packing comparison: tiny (the default run's, where per-image work "
                        "is most of a ROSS^D step) or scaled (the 7B recipe's proportions); `--packing-only` writes "
                        "train_step_packing.* for tiny, train_step_packing_scaled.* for scaled")
    parser.add_argument("--packing-batch", type=int, default=8)
    parser.add_argument("--pack-max-tokens", type=int, default=None,
                        help="the packed rows' capacity (default: the whole batch in one row with sdpa_varlen, each "
                        "batch's longest sample with sdpa)")
    parser.add_argument("--packed-attention", default=SDPA_VARLEN, choices=["sdpa", SDPA_VARLEN],
                        help="attention of the packing comparison: sdpa_varlen (SDPA per packed sample, "
                        "train/packed_attention.py) or sdpa (transformers' dense block-causal mask over each row)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/train_step"))
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.sft_length <= REFERENCE_7B["image_tokens"]:
        parser.error(f"--sft-length must exceed the {REFERENCE_7B['image_tokens']} image tokens")
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    qwen_account = flop_account_qwen25vl(args.sft_length - REFERENCE_7B["image_tokens"])
    if args.qwen25vl_account_only:
        payload = {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "commit": git_commit()[0], "config": QWEN25VL_7B,
                   "flop_account": qwen_account}
        write_outputs(args.out, "train_step_qwen25vl_flops", payload, qwen25vl_markdown(qwen_account))
        return 0
    if args.qwen25vl_only:
        load = os.getloadavg()
        with tempfile.TemporaryDirectory() as tmp:
            result = measure_qwen25vl(Path(tmp), args.device, dtype, args.repeats)
        load = (list(load), list(os.getloadavg()))
        write_outputs(args.out, "train_step_qwen25vl",
                      {**run_stamp(), "device": args.device, "dtype": args.dtype, "repeats": args.repeats,
                       "load_average": load, **result}, qwen25vl_arms_markdown(result, args, load))  # fmt: skip
        return 0
    if args.packing_only:
        with tempfile.TemporaryDirectory() as tmp:
            packing = {key: value for arm in ("ross", "none") for key, value in measure_packing(
                Path(tmp) / arm, args.repeats, args.packing_batches, args.packing_batch, args.device, dtype, arm,
                args.pack_max_tokens, args.packed_attention, args.packing_config).items()}
        name = "train_step_packing" + ("" if args.packing_config == "tiny" else f"_{args.packing_config}")
        write_outputs(args.out, name,
                      {**run_stamp(), "device": args.device, "dtype": args.dtype, "packing": packing},
                      packing_markdown(packing, args))  # fmt: skip
        return 0
    requested = [*args.arms, *(DEPTH_ARMS if args.depth else ())]
    arms = ["none", *[arm for arm in dict.fromkeys(requested) if arm != "none"]]
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure_config(name, Path(tmp), args.device, dtype, args.repeats, arms) for name in args.configs]
        packing = {key: value for arm in ("ross", "none") for key, value in measure_packing(
            Path(tmp) / "packing" / arm, args.repeats, args.packing_batches, args.packing_batch, args.device, dtype,
            arm, args.pack_max_tokens, args.packed_attention, args.packing_config).items()} if args.packing else None
    account = flop_account_7b(args.sft_length)
    report = markdown(results, account, args) + "\n" + qwen25vl_markdown(qwen_account)
    report += "\n" + packing_markdown(packing, args) if packing else ""
    payload = {"device": args.device, "dtype": args.dtype, "repeats": args.repeats, "configs": results,
               "overheads": {r["config"]: overheads(r) for r in results}, "flop_account_7b": account,
               "flop_account_qwen25vl_7b": qwen_account, "packing": packing}
    write_outputs(args.out, "train_step", payload, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
