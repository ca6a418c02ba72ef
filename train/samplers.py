"""Length-grouped samplers, deterministic given a seed and the epoch.

Both group samples of similar estimated length (`RossDataset.lengths` / `modality_lengths`) with transformers'
`get_length_grouped_indices` (shuffle, mega-batches of `mega_batch_mult * batch_size` sorted longest first, the longest
sample moved to the very front so that out-of-memory shows at once). `ModalityLengthGroupedSampler` does it per
modality, as LLaVA's `group_by_modality_length`. The order depends only on `seed + epoch` (`set_epoch`), never on the
global torch RNG.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices


__all__ = [
    "LengthGroupedSampler",
    "ModalityLengthGroupedSampler",
    "length_grouped_indices",
    "modality_length_grouped_indices",
]


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, mega_batch_mult: int | None = None
) -> list[int]:
    """A permutation of `range(len(lengths))` grouped by `abs(length)` (transformers' `get_length_grouped_indices`)."""
    if not lengths:
        return []
    return get_length_grouped_indices([abs(length) for length in lengths], batch_size, mega_batch_mult, generator)


def modality_length_grouped_indices(
    modality_lengths: Sequence[int], batch_size: int, generator: torch.Generator, mega_batch_mult: int | None = None
) -> list[int]:
    """A permutation of `range(len(modality_lengths))` whose consecutive chunks of `batch_size` are all-image
    (length > 0) or all-text (length < 0) samples, length-grouped within each modality, chunks in random order.

    As LLaVA's `get_modality_length_grouped_indices`, except that only the leftovers (fewer than `batch_size` per
    modality: image samples, then text samples) come last, so at most one batch per epoch mixes modalities (and a
    final partial batch is the last one)."""
    if any(length == 0 for length in modality_lengths):
        raise ValueError("modality lengths must be non-zero (positive: with images, negative: text-only)")
    batches, leftovers = [], []
    for in_modality in (lambda length: length > 0, lambda length: length < 0):
        subset = [i for i, length in enumerate(modality_lengths) if in_modality(length)]
        if not subset:
            continue
        order = length_grouped_indices([modality_lengths[i] for i in subset], batch_size, generator, mega_batch_mult)
        order = [subset[i] for i in order]
        full = len(order) // batch_size * batch_size
        batches += [order[i : i + batch_size] for i in range(0, full, batch_size)]
        leftovers += order[full:]
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [i for k in permutation for i in batches[k]] + leftovers


class _SeededSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_mult: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int):
        """Reshuffle per epoch (called by accelerate's dataloader wrapper and by hand in custom loops)."""
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + self.epoch)

    def __len__(self) -> int:
        return len(self.lengths)


class LengthGroupedSampler(_SeededSampler):
    """Batches of similar estimated length (`dataset.lengths`), as transformers' `LengthGroupedSampler` but
    deterministic given `seed` and `set_epoch`. `batch_size`: the per-device batch size of the dataloader (batches
    are consecutive chunks of the order, which accelerate deals out to the ranks whole)."""

    def __iter__(self) -> Iterator[int]:
        return iter(length_grouped_indices(self.lengths, self.batch_size, self._generator(), self.mega_batch_mult))


class ModalityLengthGroupedSampler(_SeededSampler):
    """Batches of only image samples or only text samples (`dataset.modality_lengths`), length-grouped within each
    modality, as LLaVA's `group_by_modality_length`.

    Trade-off with ROSS: an all-text batch has no image, so the visual loss has nothing to reconstruct; the model still
    runs the denoiser on a dummy input at zero weight (needed so every rank runs the same modules under DDP / ZeRO-3).
    Those steps cost a denoiser pass and carry no reconstruction signal, and the visual-loss curve gets gaps; in
    exchange image and text samples are not padded to each other's lengths. Mixed batches (plain
    `LengthGroupedSampler`) give every step some reconstruction signal.
    """

    def __iter__(self) -> Iterator[int]:
        return iter(
            modality_length_grouped_indices(self.lengths, self.batch_size, self._generator(), self.mega_batch_mult)
        )
