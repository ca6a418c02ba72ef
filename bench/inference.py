"""Inference cost of ross vs transformers' own `LlavaForConditionalGeneration` with identical weights.

    python bench/inference.py [--device cpu|cuda] [--dtype float32|bfloat16] [--config tiny|scaled]
                              [--new-tokens 32] [--repeats 5] [--out runs/bench/inference]

A ROSS model built from tiny component repos (`modeling_ross.testing`) is saved, exported with
`modeling_ross.export_llava`, and both folders are loaded the way users load them: ross with
`AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)` (no objective modules at inference),
LLaVA with `LlavaForConditionalGeneration.from_pretrained(path)`. Both get the same batch (the ross processor's
`input_ids`, `attention_mask`, `pixel_values`), interleaved A/B/A/B:

- prefill: one forward over the prompt with the KV cache (tokens/s = prompt tokens / time);
- decode: greedy `generate` of exactly `--new-tokens` tokens minus a 1-token `generate`, so the prefill cancels
  (tokens/s = (new tokens - 1) x batch / time difference);
- memory: peak `torch.cuda.max_memory_allocated` during generation on CUDA; on CPU the bytes of parameters and
  buffers (per-call CPU peaks are not tracked).

The greedy tokens must be identical (exit 1 otherwise). Goals: tokens/s ratio ross / llava >= 0.98, memory ratio
<= 1.01. Writes `inference.json` and `inference.md` under `--out`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

from _common import noise_images, processor_side, synchronize, write_outputs
from modeling_ross import RossProcessor, from_components
from modeling_ross.export_llava import export_llava
from modeling_ross.testing import write_tiny_components


CONFIGS = {
    "tiny": dict(vision=dict(), language=dict(), batch_size=4),
    "scaled": dict(vision=dict(image_size=64, patch_size=4, hidden_size=96, num_layers=2),
                   language=dict(hidden_size=512, num_layers=12, num_heads=8), batch_size=4),
}  # fmt: skip
PROMPTS = ["What is in the image?", "Which colour is the large object?", "How many shapes are there?",
           "Is there a circle at the top left?"]  # fmt: skip


def build_folders(name: str, root: Path) -> tuple[Path, Path]:
    """A saved ROSS folder (model + processor) and its LLaVA export."""
    spec = CONFIGS[name]
    paths = write_tiny_components(root / "components", vision_kwargs=spec["vision"], language_kwargs=spec["language"])
    torch.manual_seed(0)
    model = from_components(paths["vision_model"], paths["language_model"], objective="none")
    with torch.no_grad():  # a non-trivial projector, so the image changes the tokens
        for param in model.model.projector.parameters():
            param.normal_(0, 0.5)
    model.save_pretrained(root / "ross")
    RossProcessor.from_components(paths["vision_model"], paths["language_model"]).save_pretrained(root / "ross")
    export_llava(root / "ross", root / "llava")
    return root / "ross", root / "llava"


def make_batch(processor, batch_size: int, device) -> dict:
    images, texts = noise_images(batch_size, processor_side(processor)), []
    for i in range(batch_size):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[i % 4]}]}]
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
    return batch.to(device)


def _timed(fn, device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def _generate(model, batch, new_tokens: int, pad_token_id: int):
    return model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          num_beams=1, pad_token_id=pad_token_id)  # fmt: skip


def measure(models: dict, batch: dict, new_tokens: int, repeats: int, device, pad_token_id: int) -> dict:
    """Interleaved prefill / decode timings and peak memory of each model; the greedy tokens of each."""
    results = {name: {"prefill_s": [], "decode_s": [], "peak_memory_bytes": None} for name in models}
    tokens = {}
    with torch.inference_mode():
        for name, model in models.items():  # warm-up, and the tokens to compare
            tokens[name] = _generate(model, batch, new_tokens, pad_token_id)
        for _ in range(repeats):
            for name, model in models.items():
                if torch.device(device).type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                prefill, _ = _timed(lambda: model(**batch, use_cache=True), device)
                one, _ = _timed(lambda: _generate(model, batch, 1, pad_token_id), device)
                full, _ = _timed(lambda: _generate(model, batch, new_tokens, pad_token_id), device)
                results[name]["prefill_s"].append(prefill)
                results[name]["decode_s"].append(full - one)
                if torch.device(device).type == "cuda":
                    peak = torch.cuda.max_memory_allocated()
                    results[name]["peak_memory_bytes"] = max(results[name]["peak_memory_bytes"] or 0, peak)
    prompt_tokens = int(batch["attention_mask"].sum())
    batch_size = batch["input_ids"].shape[0]
    for name, model in models.items():
        run = results[name]
        run["prefill_tokens_per_s"] = prompt_tokens / statistics.median(run["prefill_s"])
        run["decode_tokens_per_s"] = (new_tokens - 1) * batch_size / statistics.median(run["decode_s"])
        if run["peak_memory_bytes"] is None:
            run["state_bytes"] = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return results, tokens


def markdown(results: dict, same_tokens: bool, args, prompt_tokens: int) -> str:
    ross, llava = results["ross"], results["llava"]
    memory_key = "peak_memory_bytes" if ross["peak_memory_bytes"] is not None else "state_bytes"
    memory_label = "peak memory" if memory_key == "peak_memory_bytes" else "parameter + buffer bytes"
    lines = [
        f"Config {args.config}, device {args.device}, dtype {args.dtype}, batch {args.batch_size}, "
        f"{prompt_tokens} prompt tokens, {args.new_tokens} new tokens, {args.repeats} interleaved repeats (median). "
        f"Greedy tokens identical: {'yes' if same_tokens else 'NO'}.",
        "",
        "| | ross | llava (transformers) | ross / llava | goal |",
        "|---|---|---|---|---|",
    ]
    for key, label, goal in (("prefill_tokens_per_s", "prefill tokens/s", ">= 0.98"),
                             ("decode_tokens_per_s", "decode tokens/s", ">= 0.98"),
                             (memory_key, memory_label, "<= 1.01")):  # fmt: skip
        lines.append(f"| {label} | {ross[key]:,.1f} | {llava[key]:,.1f} | {ross[key] / llava[key]:.3f} | {goal} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--config", default="scaled", choices=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/inference"))
    args = parser.parse_args(argv)
    if args.new_tokens < 2 or args.repeats < 1:
        parser.error("--new-tokens must be >= 2 and --repeats >= 1")
    args.batch_size = args.batch_size or CONFIGS[args.config]["batch_size"]
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        ross_dir, llava_dir = build_folders(args.config, Path(tmp))
        processor = RossProcessor.from_pretrained(ross_dir)
        models = {
            "ross": AutoModelForImageTextToText.from_pretrained(ross_dir, trust_remote_code=True, dtype=dtype),
            "llava": LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=dtype),
        }
    models = {name: model.to(args.device).eval() for name, model in models.items()}
    batch = make_batch(processor, args.batch_size, args.device)
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    pad = processor.tokenizer.pad_token_id
    results, tokens = measure(models, batch, args.new_tokens, args.repeats, args.device, pad)
    same_tokens = torch.equal(tokens["ross"], tokens["llava"])
    report = markdown(results, same_tokens, args, int(batch["attention_mask"].sum()))
    payload = {"config": args.config, "device": args.device, "dtype": args.dtype, "batch_size": args.batch_size,
               "new_tokens": args.new_tokens, "repeats": args.repeats, "same_greedy_tokens": same_tokens,
               "results": results}  # fmt: skip
    write_outputs(args.out, "inference", payload, report)
    if not same_tokens:
        print("error: ross and llava generated different greedy tokens", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
