"""One optimizer step of `RossTrainer` under `torchrun` (gloo DDP on CPU, or a single process), for
`test_distributed.py::test_two_ranks_give_the_gradients_of_one_process_with_twice_the_batch`.

    torchrun --nproc_per_node N tests/ddp_rank_equivalence.py COMPONENTS_JSON PER_DEVICE_BATCH OUTPUT_DIR

The model is the deterministic ROSS^R-Latent of test_trainer.py (posterior mode, weight 0.7), the data its in-memory
samples with 1/0/2 images each, dealt out sequentially, two accumulation steps. Rank 0 writes `result.pt`: the
gradients right before the optimizer step (after DDP's all-reduce), the first log entry, and every rank's
per-micro-batch image counts.
"""

import json
import os
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_trainer import CountingCollator, GradCapture, ListDataset, _args  # noqa: E402

from modeling_ross import RossProcessor, from_components  # noqa: E402
from ross.train.trainer import RossTrainer  # noqa: E402


def main(components_json: str, batch_size: str, output_dir: str) -> None:
    components = json.loads(components_json)
    torch.manual_seed(0)
    model = from_components(
        **components, objective="regress", latent_sample="mode", weight=0.7
    )
    processor = RossProcessor.from_components(components["vision_model"], components["language_model"])
    args = _args(
        Path(output_dir), per_device_train_batch_size=int(batch_size), gradient_accumulation_steps=2,
        train_sampling_strategy="sequential", ddp_find_unused_parameters=False, ddp_backend="gloo",
    )  # fmt: skip
    capture, collator = GradCapture(), CountingCollator(processor)
    trainer = RossTrainer(
        model=model, args=args, train_dataset=ListDataset(), data_collator=collator, callbacks=[capture.callback]
    )
    trainer.train()
    counts = [collator.image_counts]
    if trainer.args.world_size > 1:
        counts = [None] * trainer.args.world_size
        torch.distributed.all_gather_object(counts, collator.image_counts)
    if trainer.is_world_process_zero():
        grads = {name: grad.cpu() for name, grad in capture.grads.items()}
        result = {"grads": grads, "log": trainer.state.log_history[0], "image_counts": counts}
        torch.save(result, Path(output_dir) / "result.pt")
    if torch.distributed.is_initialized():
        # Tear gloo down explicitly: left to interpreter exit, its threads can abort the process ("terminate called
        # without an active exception", exit code -6) after the work is done. The DDP wrapper the trainer keeps still
        # holds the group, so that abort was seen once more (rank 1, 1 run in a loaded full suite; 0 in 6 alone):
        # leave without the interpreter's teardown once every rank is past the barrier and the result is written.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
