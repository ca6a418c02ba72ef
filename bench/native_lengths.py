"""What the length pre-pass costs on a native VLM (tiny Qwen2.5-VL): CPU per record, for N synthetic records.

    python bench/native_lengths.py [--records 10000] [--sizes 1000] [--out runs/bench/native_lengths]

The records are `bench/data_scale.py`'s LLaVA-665K-like ones (about 4.8 rounds and 160 words, 90% with one image),
the images `--sizes` blank PNGs of distinct random sizes (240 to 1024 px a side) that the records cycle through. The
processor is the tiny Qwen2.5-VL one (`modeling_ross.testing.tiny_qwen25_vl`: Qwen-style tokenizer and chat template)
with Qwen2.5-VL's usual pixel bounds (min 56 x 56, max 1280 tokens of 28 x 28 px), so each size gets its own grid.

Reported, all in this one process (`check_lengths(..., num_proc=1)`), CPU seconds (`time.process_time`):
- the first pre-pass (nothing cached: every header read, every distinct `(height, width, images)` run once through the
  real image processor on a blank image, every record rendered and tokenised), per record;
- its parts, measured alone: reading the image headers (`RossDataset.image_sizes`), and the memoised expansions
  (one blank image per distinct size through the real processor), per distinct size;
- the second pre-pass (a new collator, the lengths read from the cache), per record;
- for scale: the training collator's own encoding of a sample (`NativeVlmDataCollator._encode` of the loaded sample:
  image decoding and pixel processing included), per sample, on the first `--encode` records.
Timings on a shared machine are noisy: say so next to them.

Writes `native_lengths.json` and `native_lengths.md` under `--out`.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, git_commit, write_outputs  # noqa: E402
from data_scale import write_records  # noqa: E402


def cpu_seconds(function) -> tuple[float, object]:
    start = time.process_time()
    value = function()
    return time.process_time() - start, value


def run(records: int, sizes: int, encode: int, work: Path) -> dict:
    from modeling_ross.testing import tiny_qwen25_vl
    from ross.train.dataset import load_training_dataset
    from ross.train.lengths import check_lengths
    from ross.train.native_collator import NativeVlmDataCollator

    rng = random.Random(0)
    image_sizes = [(rng.randint(240, 1024), rng.randint(240, 1024)) for _ in range(sizes)]
    data = write_records(work, records, image_sizes=image_sizes)
    _, processor = tiny_qwen25_vl(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    dataset = load_training_dataset(str(data), cache_dir=work / "cache")

    def collator():
        return NativeVlmDataCollator(processor, max_length=100_000)

    first_collator = collator()
    first, lengths = cpu_seconds(lambda: check_lengths(dataset, first_collator, cache_dir=work / "cache", num_proc=1))
    distinct = len(first_collator._counting_processor()._process_images.memo)
    headers, _ = cpu_seconds(lambda: [dataset.image_sizes(k) for k in range(len(dataset))])
    expansions = collator()._counting_processor()._process_images
    memo_keys = list(first_collator._counting_processor()._process_images.memo)
    expand, _ = cpu_seconds(lambda: [expansions.replacement(h, w, n, False, {}) for h, w, n in memo_keys])
    second, again = cpu_seconds(lambda: check_lengths(dataset, collator(), cache_dir=work / "cache", num_proc=1))
    assert again == lengths
    training = collator()
    encoded, counts = cpu_seconds(lambda: [len(training._encode(dataset[k])["input_ids"]) for k in range(encode)])
    assert counts == lengths[:encode]  # the pre-pass's counts are the collator's
    return {
        "records": records,
        "distinct_sizes_used": distinct,
        "first_prepass_cpu_s": round(first, 3),
        "first_prepass_cpu_ms_per_record": round(1e3 * first / records, 4),
        "headers_cpu_ms_per_record": round(1e3 * headers / records, 4),
        "expansion_cpu_ms_per_distinct_size": round(1e3 * expand / max(1, distinct), 3),
        "second_prepass_cpu_s": round(second, 3),
        "second_prepass_cpu_ms_per_record": round(1e3 * second / records, 4),
        "collator_encode_cpu_ms_per_sample": round(1e3 * encoded / encode, 3),
        "encoded_samples": encode,
        "mean_length": round(sum(lengths) / len(lengths), 1),
        "max_length": max(lengths),
    }


def report(result: dict, machine: str, commit: str, dirty: bool) -> str:
    r = result
    return "\n".join([
        "# Native VLM length pre-pass (tiny Qwen2.5-VL)", "",
        f"`python bench/native_lengths.py --records {r['records']}`; {machine}, shared machine (noisy), one process; "
        f"commit {commit[:10]}{' (dirty)' if dirty else ''}.", "",
        "| what | CPU |", "|---|---|",
        f"| first pre-pass ({r['records']} records, {r['distinct_sizes_used']} distinct image sizes) | "
        f"{r['first_prepass_cpu_s']} s = {r['first_prepass_cpu_ms_per_record']} ms / record |",
        f"| of which: image headers (alone) | {r['headers_cpu_ms_per_record']} ms / record |",
        f"| of which: expansions, one blank image per distinct size (alone) | "
        f"{r['expansion_cpu_ms_per_distinct_size']} ms / size |",
        f"| second pre-pass (length cache) | {r['second_prepass_cpu_s']} s = "
        f"{r['second_prepass_cpu_ms_per_record']} ms / record |",
        f"| the training collator's `_encode` (decoding + pixels), {r['encoded_samples']} samples | "
        f"{r['collator_encode_cpu_ms_per_sample']} ms / sample |", "",
        f"Lengths: mean {r['mean_length']}, max {r['max_length']} tokens; the first {r['encoded_samples']} equal the "
        "collator's counts (checked).", "",
    ])  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--sizes", type=int, default=1000, help="distinct image sizes the records cycle through")
    parser.add_argument("--encode", type=int, default=300, help="samples encoded by the training collator, for scale")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/native_lengths"))
    parser.add_argument("--machine", default=None, help="named in the report (default: the CPU model)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        result = run(args.records, args.sizes, args.encode, Path(work))
    commit, dirty = git_commit()
    machine = args.machine or cpu_model()
    write_outputs(args.out, "native_lengths", {**result, "machine": machine, "commit": commit, "dirty": dirty},
                  report(result, machine, commit, dirty))  # fmt: skip


if __name__ == "__main__":
    main()
