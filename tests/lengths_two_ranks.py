"""Run by tests/test_scale.py under `torchrun --nproc_per_node 2`: the length pre-pass sharded over 2 gloo ranks whose
process group times out after a few seconds, while rank 1 measures slowly (longer than that timeout in all)."""

import datetime
import json
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.distributed as dist  # noqa: E402

from modeling_ross import RossProcessor  # noqa: E402
from ross.train.collator import RossDataCollator  # noqa: E402
from ross.train.dataset import load_training_dataset  # noqa: E402
from ross.train.lengths import check_lengths  # noqa: E402


def main(data, vision, language, cache_dir, out_dir, timeout_s, slow_s):
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    rank = dist.get_rank()
    processor = RossProcessor.from_components(vision, language)
    collator = RossDataCollator(processor, max_length=100_000)
    if rank == 0:  # parse once; the other rank opens the store
        dataset = load_training_dataset(data, image_seq_length=processor.image_seq_length, cache_dir=cache_dir)
    dist.barrier()
    if rank != 0:
        dataset = load_training_dataset(data, image_seq_length=processor.image_seq_length, cache_dir=cache_dir)
    measured = []
    original = collator.sample_length

    def sample_length(messages, num_images):
        measured.append(1)
        if rank == 1:
            time.sleep(slow_s)  # rank 1's share takes longer than the process group's timeout
        return original(messages, num_images)

    collator.sample_length = sample_length
    lengths = check_lengths(dataset, collator, cache_dir=cache_dir, num_proc=1)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"lengths": lengths, "measured": len(measured)}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:6], float(sys.argv[6]), float(sys.argv[7]))
