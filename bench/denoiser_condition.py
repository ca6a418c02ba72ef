"""Can a trained model's denoiser read its condition? Fit a copy of it, alone, on the model's visual outputs.

    python bench/denoiser_condition.py runs/demo/stage1/model [--data runs/data/<key>] [--steps 1000]

The model's LLM and projector are frozen: the visual outputs of `--images` synthetic training scenes (their own seed
stream) are computed once, then a copy of the denoiser is trained on them with the model's visual loss (AdamW, batch
16, `--lr`). Every 250 steps it prints the visual loss on held-out images (synthetic_colour's benchmark images, or
fresh scenes without `--data`) with each image's own visual outputs and with the visual outputs shuffled across the
images (the same noise and timesteps: `make demo`'s ROSS-active check). A denoiser that reads its condition gets a
lower loss with the true ones. Used in docs/evidence.md's default-run numbers (issue 22).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from transformers import AutoProcessor

from modeling_ross import RossForConditionalGeneration
from modeling_ross.objective import shuffle_across_images
from ross.eval.generation import get_benchmark
from ross.synthetic.world import iter_scenes


PROMPT = "Describe the image briefly."


@torch.no_grad()
def visual_outputs(model, processor, images, batch_size: int = 64):
    """(conditions `(M, N, D)`, teacher target means `(M, N, C)`) of `images`."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    conditions, targets = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = processor(text=[text] * len(chunk), images=chunk, padding=True, return_tensors="pt")
        outputs = model.model(
            input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"],
            output_hidden_states=model.condition_hidden_states_request(),
        )  # fmt: skip
        conditions.append(model.get_visual_outputs(outputs))
        targets.append(model.teacher.encode_distribution(batch["pixel_values"])[0])
    return torch.cat(conditions), torch.cat(targets)


@torch.no_grad()
def true_vs_shuffled(model, denoiser, conditions, targets, rounds: int = 4) -> tuple[float, float]:
    """Mean visual loss over `rounds` shared noise draws, true vs shuffled conditions."""
    true, wrong = [], []
    for r in range(rounds):
        for values, cond in ((true, conditions), (wrong, shuffle_across_images(conditions))):
            generator = torch.Generator().manual_seed(r)
            values.append(model.objective.loss(denoiser, model.teacher, cond, targets, generator=generator).item())
    return sum(true) / rounds, sum(wrong) / rounds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="a `make demo` data folder (its benchmarks)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--heldout", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--draws", type=int, default=None, help="noise draws per image (default: the model's)")
    args = parser.parse_args(argv)
    model = RossForConditionalGeneration.from_pretrained(args.model, load_objective=True).eval()
    if args.draws is not None:
        model.config.objective_config.num_noise_draws = args.draws
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    size = 48
    train = [image for _, image in iter_scenes(args.images, seed=5, size=size, stream="bench:denoiser_condition")]
    if args.data is not None:
        manifest = json.loads((args.data / "data.json").read_text())
        rows = get_benchmark("synthetic_colour").load(args.data / manifest["benchmarks"]["synthetic_colour"])
        heldout = [row["images"][0] for row in rows[: args.heldout]]
    else:
        heldout = [image for _, image in iter_scenes(args.heldout, seed=6, size=size, stream="bench:heldout")]
    conditions, targets = visual_outputs(model, processor, train)
    test_conditions, test_targets = visual_outputs(model, processor, heldout)
    denoiser = copy.deepcopy(model.denoiser).train()
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    start, rows_out = time.perf_counter(), []
    rows_out.append((0, *true_vs_shuffled(model, denoiser, test_conditions, test_targets)))
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(conditions), (16,), generator=generator)
        loss = model.objective.loss(denoiser, model.teacher, conditions[index], targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 250 == 0 or step == args.steps:
            rows_out.append((step, *true_vs_shuffled(model, denoiser, test_conditions, test_targets)))
            print(f"step {step}: held-out visual loss true {rows_out[-1][1]:.4f}, shuffled {rows_out[-1][2]:.4f}, "
                  f"{time.perf_counter() - start:.0f}s", flush=True)  # fmt: skip
    print("| denoiser steps (alone) | true | shuffled | true below shuffled |\n|---|---|---|---|")
    for step, true, wrong in rows_out:
        print(f"| {step} | {true:.4f} | {wrong:.4f} | {100 * (wrong - true) / wrong:.1f}% |")
    return {"model": str(args.model), "rows": rows_out}


if __name__ == "__main__":
    main()
