"""Training-step time with and without the latent cache, side by side, on the tiny offline components (CPU, < 2 min).

Same model, same batches: each repetition runs one training step (forward, backward, optimizer step) per mode on the
same batch, the mode order alternating between repetitions so that drift (other processes, caches warming) hits both
alike. Reported: median / min step time per mode, their ratio, the teacher's share of the uncached step (timed
around `teacher.encode_distribution` inside the step), and the collator's extra cost with the cache (hashing the
decoded images + the Arrow lookup), which a real run pays in dataloader workers, off the training loop.

    python bench/latent_cache.py [--reps 12] [--batch_size 4] [--image_size 64]

The tiny teacher (a 90k-parameter VAE at 128 px) is far cheaper than the reference FLUX VAE at 432 px, so the
teacher's share here is a lower bound of what the cache saves at full scale.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from modeling_ross import RossProcessor, from_components  # noqa: E402
from modeling_ross.testing import write_tiny_components  # noqa: E402
from ross.train.collator import RossDataCollator  # noqa: E402
from ross.train.latent_cache import build_latent_cache  # noqa: E402


TINY_OBJECTIVE = {"denoiser_hidden_size": 64, "denoiser_depth": 2, "denoiser_num_heads": 4, "num_noise_draws": 2}


def make_items(count: int, image_size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for index in range(count):
        height, width = image_size, int(image_size * 1.5)  # not square: exercises the padding
        images = [Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))]
        content = [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]
        answer = [{"type": "text", "text": ["red", "blue square", "two circles"][index % 3]}]
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
        items.append({"id": str(index), "source": f"bench:#{index}", "messages": messages, "images": images})
    return items


class TeacherTimer:
    """Accumulates the wall time of `teacher.encode_distribution` (its `forward` goes through it)."""

    def __init__(self, teacher):
        self.seconds = 0.0
        self.original = teacher.encode_distribution

        def timed(pixel_values):
            start = time.perf_counter()
            result = self.original(pixel_values)
            self.seconds += time.perf_counter() - start
            return result

        teacher.encode_distribution = timed


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_batches", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=64)
    return parser.parse_args()


def build_tiny_model(root: Path):
    """The tiny offline components -> (processor, model in train mode)."""
    components = write_tiny_components(root / "components")
    processor = RossProcessor.from_components(components["vision_model"], components["language_model"])
    torch.manual_seed(0)
    model = from_components(**components, **TINY_OBJECTIVE)
    model.train()
    return processor, model


def time_cache_builds(teacher, processor, items, cache_dir: Path):
    """(cache, build seconds, rebuild: the second build's cache, rebuild seconds)."""
    start = time.perf_counter()
    cache = build_latent_cache(teacher, processor, items, cache_dir, batch_size=8)
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rebuild = build_latent_cache(teacher, processor, items, cache_dir, batch_size=8)
    return cache, build_seconds, rebuild, time.perf_counter() - start


def time_collation(processor, cache, chunks) -> dict[str, list[float]]:
    """Seconds per batch of the plain collator and of what the cache adds to it (hash the images, read the rows)."""
    plain_collator = RossDataCollator(processor, max_length=512)
    plain_collator(chunks[0])  # warm-up
    collate = {"plain": [], "lookup": []}
    for _ in range(5):
        for chunk in chunks:
            start = time.perf_counter()
            plain_collator(chunk)
            collate["plain"].append(time.perf_counter() - start)
            start = time.perf_counter()
            cache.targets_for(chunk)
            collate["lookup"].append(time.perf_counter() - start)
    return collate


def time_steps(model, teacher, batches, reps: int) -> tuple[dict[str, list[float]], list[float]]:
    """Interleaved training steps with and without `teacher_targets`: (step seconds per mode, teacher seconds per
    uncached step)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    timer = TeacherTimer(teacher)

    def step(batch, cached: bool) -> float:
        inputs = batch if cached else {k: v for k, v in batch.items() if k != "teacher_targets"}
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for batch in batches:  # warm-up, both paths
        step(batch, False), step(batch, True)
    times = {"teacher every step": [], "latent cache": []}
    teacher_seconds = []
    for rep in range(reps):
        batch = batches[rep % len(batches)]
        for cached in (False, True) if rep % 2 == 0 else (True, False):
            timer.seconds = 0.0
            times["latent cache" if cached else "teacher every step"].append(step(batch, cached))
            if cached:
                assert timer.seconds == 0.0, "the cached step called the teacher"
            else:
                teacher_seconds.append(timer.seconds)
    return times, teacher_seconds


def report(args, model, teacher, builds, collate, times, teacher_seconds) -> None:
    cache, build_seconds, rebuild, rebuild_seconds = builds
    uncached = statistics.median(times["teacher every step"])
    cached = statistics.median(times["latent cache"])
    print(f"tiny components: {model.config.image_seq_length} tokens/image, teacher {type(teacher).__name__} "
          f"({sum(p.numel() for p in teacher.parameters()):,} params, {teacher.image_size}px input, "
          f"latent_sample={teacher.latent_sample}), batch {args.batch_size} samples x 1 image, "
          f"{args.reps} interleaved reps, torch threads {torch.get_num_threads()}")
    print(f"cache build: {len(cache)} images in {build_seconds:.2f}s; rebuild (no teacher call, "
          f"encoded={rebuild.build_stats['encoded']}) {rebuild_seconds:.2f}s")
    print(f"{'mode':22s} {'median step s':>14s} {'min step s':>11s}")
    for name, values in times.items():
        print(f"{name:22s} {statistics.median(values):14.4f} {min(values):11.4f}")
    print(f"speed-up (median uncached / median cached step): {uncached / cached:.2f}x")
    print(f"teacher share of the uncached step: {statistics.median(teacher_seconds) / uncached:.1%} "
          f"(median teacher {statistics.median(teacher_seconds):.4f}s per step)")
    print(f"collator per batch: {statistics.median(collate['plain']) * 1e3:.1f} ms, + cache lookup "
          f"{statistics.median(collate['lookup']) * 1e3:.2f} ms (hash + Arrow read; paid in dataloader workers)")


def main() -> None:
    args = parse_args()
    start_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ross-bench-cache-") as workdir:
        root = Path(workdir)
        processor, model = build_tiny_model(root)
        teacher = model.teacher
        items = make_items(args.batch_size * args.num_batches, args.image_size)
        builds = time_cache_builds(teacher, processor, items, root / "cache")
        cache = builds[0]
        chunks = [items[k : k + args.batch_size] for k in range(0, len(items), args.batch_size)]
        cached_collator = RossDataCollator(processor, max_length=512, latent_cache=cache)
        batches = [cached_collator(chunk) for chunk in chunks]  # the uncached step drops teacher_targets
        collate = time_collation(processor, cache, chunks)
        times, teacher_seconds = time_steps(model, teacher, batches, args.reps)
        report(args, model, teacher, builds, collate, times, teacher_seconds)
    print(f"total bench time {time.perf_counter() - start_all:.1f}s")


if __name__ == "__main__":
    main()
