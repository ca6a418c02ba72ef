"""What the data path costs at scale: parse, exact lengths, memory per rank and per DataLoader worker, first and
second start, next to the authors' loading scheme, for N synthetic LLaVA-665K-like records.

    python bench/data_scale.py [--sizes 10000 50000 200000] [--workers 4] [--num-proc 2] [--out runs/bench/data_scale]

Records are like LLaVA-665K's: about 4.8 rounds and 160 words per record, 90% with one image, 10% text-only; the
images are a few small PNGs that the records share (the cost measured is the records', not image decoding; the
processor's 384 px never matters to a length). The
tokenizer is the tiny Qwen2 one, the processor the 384 px SigLIP-style one of 729 image tokens (patch 14).

Every (N, arm, start) runs in a fresh Python process, so its peak RSS is its own:

- `ross`: `load_training_dataset` (parse into the records store, `train/records.py`, in `--num-proc` processes) then
  `check_lengths` (exact lengths, `--num-proc` processes); the second start opens the store and reads the length
  cache;
- `authors`: LLaVA's `LazySupervisedDataset` scheme: `json.load` of the whole file kept as a list of dicts, a deep
  copy per fetch, and LLaVA's `modality_lengths` estimate (words + 128 per image) as its only pre-pass.

Reported per run: wall and CPU seconds (this process and its children) of the parse and of the pre-pass, the memory
the records hold (RSS after loading minus before), the peak RSS, the cache size on disk, the time to fetch a stored
sample (`dataset.load` without decoding its images, 20K random samples, microseconds), and the total PSS of the main
process + `--workers` DataLoader workers (fork) at the start and at the end of one full epoch (items fetched with
images decoded, no collation), and its growth. A linear fit `a + b N` of each per-start figure extrapolates to 665K
and 3.2M records (shown with its coefficients). Timings on a shared machine are noisy: say so next to them.

First start on a node of C cores: the CPU of a first start is split into a serial part (reading the JSON file and
writing the store, in the parse's parent process; the pre-pass's own process: cache, merging) and a parallel part
(parsing the chunks; measuring the lengths), each per record from the largest size run. The node's wall time is
then extrapolated as `T(N, C) = N * (serial + parallel / C)` (Amdahl; the store is written while the chunks are
parsed, so the sum is an upper bound there; it assumes the C processes scale linearly, which hyperthreads and
memory bandwidth may not give).

`--collator N`: also the training collator's rate on N samples of the same records with 384 px images (batches of
8, samples per CPU second of this process), today's collator next to the same collator with the chat template
called with `return_tensors="pt"` (the collator before this change; its batches are equal: tests/test_scale.py).

Writes `data_scale.json` and `data_scale.md` under `--out`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = (
    "the a of and to in is on what which where how many there this that image picture person people man woman "
    "left right top bottom color red blue green white black wearing holding sitting standing table street car "
    "building sign dog cat tree sky water two three small large background front behind near answer question "
    "describe detail briefly word phrase"
).split()
IMAGES = 8


def write_records(folder: Path, n: int, seed: int = 0, image_sizes=None) -> Path:
    """N LLaVA-format records like LLaVA-665K's (see the module docstring) in `folder/data.json`. `image_sizes`: one
    blank PNG per `(height, width)`, which the records cycle through (default: `IMAGES` of 64 x 64 px)."""
    from PIL import Image

    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    image_sizes = image_sizes or [(64, 64)] * IMAGES
    for k, (height, width) in enumerate(image_sizes):
        Image.new("RGB", (width, height), (k * 30 % 256, 90, 160)).save(folder / "images" / f"{k}.png")
    words = lambda m: " ".join(rng.choice(WORDS) for _ in range(m))  # noqa: E731
    with open(folder / "data.json", "w") as f:
        f.write("[")
        for i in range(n):
            rounds = max(1, min(12, round(rng.gauss(4.8, 3))))
            per_turn = max(2, round(160 / rounds / 2))
            turns = []
            for r in range(rounds):
                turns.append({"from": "human", "value": words(max(2, round(rng.gauss(per_turn * 0.6, 3)))) + "?"})
                turns.append({"from": "gpt", "value": words(max(1, round(rng.gauss(per_turn * 1.4, 8)))) + "."})
            record = {"id": f"{i:08d}", "conversations": turns}
            if i % 10:
                record["image"] = f"images/{i % len(image_sizes)}.png"
                turns[0]["value"] = "<image>\n" + turns[0]["value"]
            f.write(("," if i else "") + json.dumps(record))
        f.write("]")
    return folder / "data.json"


# ---- one run, in its own process -----------------------------------------------------------------------------------
def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _pss_kb(pid: int) -> dict:
    """`Pss` and its anonymous / file-backed / shared-memory parts (KB) of one process."""
    out = {"Pss": 0, "Pss_Anon": 0, "Pss_File": 0, "Pss_Shmem": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(":")[0]
                if key in out:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class AuthorsDataset:
    """LLaVA's `LazySupervisedDataset` storage: the JSON list of dicts, a deep copy per fetch, images opened there."""

    def __init__(self, path: str):
        self.list_data_dict = json.load(open(path))
        self.folder = os.path.dirname(path)

    def __len__(self):
        return len(self.list_data_dict)

    @property
    def modality_lengths(self):
        out = []
        for sample in self.list_data_dict:
            length = sum(len(c["value"].split()) for c in sample["conversations"])
            out.append(length if "image" in sample else -length)
        return out

    def __getitem__(self, i):
        from PIL import Image

        sources = copy.deepcopy(self.list_data_dict[i])
        if "image" in sources:
            Image.open(os.path.join(self.folder, sources["image"])).convert("RGB")
        return sources


def _epoch_pss(dataset, workers: int) -> tuple[dict, dict, float]:
    """Total PSS (KB, and its parts) of this process + its DataLoader workers after the first batches and at the end
    of an epoch."""
    import psutil
    import torch

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=16, num_workers=workers, collate_fn=len, multiprocessing_context="fork",
        prefetch_factor=2, persistent_workers=False,
    )  # fmt: skip

    def total():
        me = psutil.Process()
        parts = [_pss_kb(me.pid)] + [_pss_kb(child.pid) for child in me.children(recursive=True)]
        return {key: sum(part[key] for part in parts) for key in parts[0]}

    start = time.perf_counter()
    first = last = None
    steps = len(loader)
    for step, _ in enumerate(loader):
        if step == min(8, steps - 1):
            first = total()
        if step == steps - 2 or steps == 1:
            last = total()
    return first, last or first, time.perf_counter() - start


def _fetch_us(dataset, count: int = 20_000) -> float:
    """Microseconds per `dataset[i]` of `count` random samples, images not decoded (the records' read only)."""
    import ross.train.sources

    decode = ross.train.sources.decode_image
    order = random.Random(0).sample(range(len(dataset)), min(count, len(dataset)))
    ross.train.sources.decode_image = lambda path, depth=False: path
    fetch = dataset.__getitem__
    if isinstance(dataset, AuthorsDataset):  # its fetch without the image: a deep copy of the record
        fetch = lambda index: copy.deepcopy(dataset.list_data_dict[index])  # noqa: E731
    try:
        start = time.perf_counter()
        for index in order:
            fetch(index)
        return 1e6 * (time.perf_counter() - start) / len(order)
    finally:
        ross.train.sources.decode_image = decode


def run_one(arm: str, data: str, components: str, cache: str, workers: int, num_proc: int, epoch: bool) -> dict:
    from modeling_ross import RossProcessor

    processor = RossProcessor.from_components(f"{components}/siglip-tiny", f"{components}/qwen2-tiny")
    import datasets  # noqa: F401 (imported before the baseline, as training has it)
    import numpy  # noqa: F401

    from ross.train.collator import RossDataCollator
    from ross.train.dataset import load_training_dataset
    from ross.train.lengths import check_lengths

    base_rss = _rss_kb()
    out = {"arm": arm}
    t, c = time.perf_counter(), _cpu()
    if arm == "ross":
        from ross.train.records import LAST_BUILD

        dataset = load_training_dataset(
            data, image_seq_length=processor.image_seq_length, cache_dir=cache, num_proc=num_proc
        )
        # The parse's parts (in its own processes): reading the file, parsing the chunks, writing the store.
        out.update({f"build_{key}": value for key, value in LAST_BUILD.items()})
    else:
        dataset = AuthorsDataset(data)
    out["parse_s"], out["parse_cpu_s"] = time.perf_counter() - t, _cpu() - c
    t, c, own = time.perf_counter(), _cpu(), time.process_time()
    if arm == "ross":
        collator = RossDataCollator(processor, max_length=100_000)
        check_lengths(dataset, collator, cache_dir=cache, num_proc=num_proc)
        lengths = dataset.lengths
    else:
        lengths = dataset.modality_lengths
    out["prepass_s"], out["prepass_cpu_s"] = time.perf_counter() - t, _cpu() - c
    out["prepass_own_cpu_s"] = time.process_time() - own  # this process's share (the rest: measuring processes)
    out["records"], out["mean_length"] = len(lengths), sum(abs(x) for x in lengths) / len(lengths)
    del lengths
    out["records_mb"] = (_rss_kb() - base_rss) / 1024
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["cache_mb"] = sum(p.stat().st_size for p in Path(cache).glob("*") if p.is_file()) / 2**20 if arm == "ross" else 0
    out["fetch_us"] = _fetch_us(dataset)
    if epoch:
        first, last, seconds = _epoch_pss(dataset, workers)
        out.update(pss_start_mb=first["Pss"] / 1024, pss_end_mb=last["Pss"] / 1024, epoch_s=seconds,
                   pss_growth=(last["Pss"] - first["Pss"]) / first["Pss"],
                   pss_anon_start_mb=first["Pss_Anon"] / 1024, pss_anon_end_mb=last["Pss_Anon"] / 1024,
                   pss_anon_growth=(last["Pss_Anon"] - first["Pss_Anon"]) / first["Pss_Anon"],
                   pss_file_start_mb=first["Pss_File"] / 1024, pss_file_end_mb=last["Pss_File"] / 1024)  # fmt: skip
    return out


def collator_rate(components: Path, work: Path, n: int) -> dict:
    """Samples per CPU second of `RossDataCollator` (batches of 8, 384 px noise images), now and with tensors out of
    the chat template (the previous collator)."""
    import torch
    from PIL import Image

    from modeling_ross import RossProcessor
    from ross.train.collator import RossDataCollator
    from ross.train.dataset import load_training_dataset

    processor = RossProcessor.from_components(f"{components}/siglip-tiny", f"{components}/qwen2-tiny")
    data = write_records(work / "collator", n)
    for k in range(IMAGES):  # 384 px images, as the processor's input size
        Image.fromarray(torch.randint(0, 256, (384, 384, 3), dtype=torch.uint8).numpy()).save(
            work / "collator" / "images" / f"{k}.png"
        )
    dataset = load_training_dataset(str(data), cache_dir=work / "collator" / "cache")
    items = [dataset[i] for i in range(n)]

    class WithTensors(RossDataCollator):
        def _tokenize(self, messages, images, processor=None):
            if (processor is not None and processor is not self.processor) or self.masking != "generation":
                return super()._tokenize(messages, images, processor)
            out = self.processor.apply_chat_template(
                [messages], tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt",
                processor_kwargs={"images": [images]} if images else {},
            )  # fmt: skip
            return out, out["assistant_masks"][0].bool()

    rates = {}
    for name, cls in (("now", RossDataCollator), ("return_tensors_pt", WithTensors)):
        collator = cls(processor, max_length=100_000)
        start = time.process_time()
        for i in range(0, n, 8):
            collator(copy.deepcopy(items[i : i + 8]))
        rates[name] = n / (time.process_time() - start)
    return rates


# ---- the driver ----------------------------------------------------------------------------------------------------
def _fit(xs, ys):
    """Least-squares `a + b x`."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else (my / mx if mx else 0.0)
    return my - b * mx, b


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--no-epoch", action="store_true", help="skip the DataLoader epoch (PSS) part")
    parser.add_argument("--collator", type=int, default=0, help="also measure the collator on this many samples")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/data_scale"))
    parser.add_argument("--machine", default=None, help="named in the report (default: the CPU model)")
    parser.add_argument("--_run", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._run:
        arm, data, components, cache, epoch, num_proc = args._run
        print(json.dumps(run_one(arm, data, components, cache, args.workers, int(num_proc), epoch == "1")))
        return

    from modeling_ross.testing import write_tiny_components

    work = Path(tempfile.mkdtemp(prefix="ross-data-scale-"))
    components = work / "components"
    write_tiny_components(components, vision_kwargs=dict(image_size=384, patch_size=14))
    rows, rates = [], None
    try:
        if args.collator:
            rates = collator_rate(components, work, args.collator)
            print(json.dumps({"collator_samples_per_cpu_s": rates}), flush=True)
        for n in args.sizes:
            data = write_records(work / f"n{n}", n)
            for arm in ("ross", "authors"):
                cache = work / f"n{n}" / f"cache-{arm}"
                for start in ("first", "second") if arm == "ross" else ("first",):
                    command = [sys.executable, __file__, "--workers", str(args.workers), "--_run", arm, str(data),
                               str(components), str(cache), "0" if args.no_epoch else "1", str(args.num_proc)]
                    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                           "OMP_NUM_THREADS": "1"}  # fmt: skip
                    done = subprocess.run(command, capture_output=True, text=True, env=env)
                    if done.returncode:
                        raise SystemExit(f"run {arm} n={n} {start} failed:\n{done.stderr[-3000:]}")
                    row = {"n": n, "start": start, **json.loads(done.stdout.strip().splitlines()[-1])}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            shutil.rmtree(work / f"n{n}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows, args, rates)


def first_start_split(r: dict) -> dict:
    """CPU ms per record of a `ross` first start, serial vs parallel (see the module docstring)."""
    n = r["n"]
    parallel = r["build_parse_cpu_s"] + r["prepass_cpu_s"] - r["prepass_own_cpu_s"]
    serial = r["parse_cpu_s"] - r["build_parse_cpu_s"] + r["prepass_own_cpu_s"]  # read, write, forks, pre-pass own
    return {"read": 1e3 * r["build_read_cpu_s"] / n, "write": 1e3 * r["build_write_cpu_s"] / n,
            "parse": 1e3 * r["build_parse_cpu_s"] / n, "lengths": 1e3 * (r["prepass_cpu_s"] - r["prepass_own_cpu_s"]) / n,
            "serial": 1e3 * serial / n, "parallel": 1e3 * parallel / n}  # fmt: skip


def first_start_lines(rows) -> list[str]:
    firsts = [r for r in rows if r["arm"] == "ross" and r["start"] == "first" and "build_parse_cpu_s" in r]
    if not firsts:
        return []
    lines = ["", "First start, CPU ms per record (`ross`): serial = reading the JSON + writing the store + the rest of the "
             "parse's parent and the pre-pass's own process; parallel = parsing the chunks + measuring the lengths. "
             "Extrapolated wall time of a first start on one node of C cores: `T(N, C) = N * (serial + parallel / C)` "
             "(upper bound for the overlap of writing and parsing; assumes linear scaling over the C processes).", "",
             "| records | parse processes | read | write | serial in all | parse | lengths | parallel in all | "
             "parallel fraction | T(665K, 16) | T(3.2M, 16) | T(3.2M, 32) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in firsts:
        f = first_start_split(r)
        time_s = lambda n, c: n * (f["serial"] + f["parallel"] / c) / 1e3  # noqa: E731
        lines.append(
            f"| {r['n']:,} | {r['build_num_proc']} | {f['read']:.3f} | {f['write']:.3f} | {f['serial']:.3f} | "
            f"{f['parse']:.3f} | {f['lengths']:.3f} | {f['parallel']:.3f} | "
            f"{f['parallel'] / (f['serial'] + f['parallel']):.1%} | {time_s(665_000, 16) / 60:.1f} min | "
            f"{time_s(3_200_000, 16) / 60:.1f} min | {time_s(3_200_000, 32) / 60:.1f} min |"
        )
    return lines


def report(rows, args, rates=None):
    from _common import cpu_model, git_commit, write_outputs

    machine = args.machine or f"{cpu_model()}, {os.cpu_count()} cores"
    sha, dirty = git_commit()
    commit = sha[:7] + ("+dirty" if dirty else "")
    columns = ["parse_cpu_s", "prepass_s", "prepass_cpu_s", "records_mb", "peak_rss_mb", "cache_mb"]
    lines = [
        f"# Data path at scale ({machine}, commit {commit})", "",
        f"`python bench/data_scale.py --sizes {' '.join(map(str, args.sizes))} --workers {args.workers} "
        f"--num-proc {args.num_proc}`", "",
        "| records | arm | start | parse (s) | parse CPU (s) | pre-pass (s) | pre-pass CPU (s) | CPU ms / record | "
        "records' memory (MB) | peak RSS (MB) | cache (MB) | fetch (us) | PSS main + workers, epoch start -> end (MB) | "
        "growth | of it anonymous (MB) | growth | of it file-backed (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        per = 1000 * (r["parse_cpu_s"] + r["prepass_cpu_s"]) / r["n"]
        pss = (f"{r['pss_start_mb']:.0f} -> {r['pss_end_mb']:.0f}" if "pss_start_mb" in r else "-")
        growth = f"{100 * r['pss_growth']:+.1f}%" if r.get("pss_growth") is not None else "-"
        anon = f"{r['pss_anon_start_mb']:.0f} -> {r['pss_anon_end_mb']:.0f}" if "pss_anon_start_mb" in r else "-"
        anon_growth = f"{100 * r['pss_anon_growth']:+.1f}%" if r.get("pss_anon_growth") is not None else "-"
        file = f"{r['pss_file_start_mb']:.0f} -> {r['pss_file_end_mb']:.0f}" if "pss_file_start_mb" in r else "-"
        lines.append(
            f"| {r['n']:,} | {r['arm']} | {r['start']} | {r['parse_s']:.2f} | {r['parse_cpu_s']:.2f} | "
            f"{r['prepass_s']:.2f} | {r['prepass_cpu_s']:.2f} | {per:.3f} | {r['records_mb']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['cache_mb']:.0f} | {r.get('fetch_us', float('nan')):.0f} | {pss} | {growth} | "
            f"{anon} | {anon_growth} | {file} |"
        )
    lines += first_start_lines(rows)
    lines += ["", "Linear fit `a + b N` (b per record) and extrapolation:", "",
              "| arm | start | figure | a | b (per record) | at 665K | at 3.2M |", "|---|---|---|---|---|---|---|"]
    fits = {}
    for arm, start in (("ross", "first"), ("ross", "second"), ("authors", "first")):
        subset = [r for r in rows if r["arm"] == arm and r["start"] == start]
        if len(subset) < 2:
            continue
        for figure in ("parse_cpu_s", "prepass_cpu_s", "prepass_s", "records_mb", "peak_rss_mb", "cache_mb"):
            a, b = _fit([r["n"] for r in subset], [r[figure] for r in subset])
            fits[f"{arm}/{start}/{figure}"] = {"a": a, "b": b, "665K": a + b * 665_000, "3.2M": a + b * 3_200_000}
            lines.append(f"| {arm} | {start} | {figure} | {a:.3g} | {b:.3g} | {a + b * 665_000:,.1f} | "
                         f"{a + b * 3_200_000:,.1f} |")  # fmt: skip
    if rates:
        lines += ["", f"Training collator, {args.collator} samples with 384 px images, batches of 8: "
                  f"{rates['now']:.0f} samples per CPU second (with `return_tensors=\"pt\"` in the chat template, "
                  f"the previous collator: {rates['return_tensors_pt']:.0f})."]  # fmt: skip
    lines.append("")
    payload = {"machine": machine, "commit": commit, "rows": rows, "fits": fits, "collator_samples_per_cpu_s": rates}
    write_outputs(args.out, "data_scale", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
