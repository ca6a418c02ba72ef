"""`sdpa_varlen`: SDPA run causally on each packed sample, for padding-free batches on machines without flash-attention.

A padding-free batch (`RossDataCollator(padding_free=True)`) marks its samples only by `position_ids` restarting at
0. With `attn_implementation="sdpa"` transformers turns that into a dense block-causal mask over the whole row
(`masking_utils.packed_sequence_mask_function`), so attention costs L^2 of the row and SDPA can use neither `is_causal`
nor its fused kernels; with flash-attention 2/3 the same `position_ids` become varlen boundaries (cost sum(l_i^2)),
but flash-attention needs a GPU. This module registers one more implementation through transformers' own hooks:

- `AttentionInterface` "sdpa_varlen" -> `sdpa_varlen_attention_forward`: for a causal layer without a mask it splits
  the (flattened) row at the sample boundaries and calls transformers' `sdpa_attention_forward` with `is_causal=True`
  on each sample; otherwise (a padding mask, a bidirectional vision tower, decoding) it is `sdpa_attention_forward`
  unchanged. The boundaries come from `cu_seq_lens_q` when the batch carries them (as
  `DataCollatorWithFlattening(return_flash_attn_kwargs=True)` makes) or else from `position_ids`, through
  `prepare_fa_kwargs_from_position_ids`, flash-attention's own reader. Only the per-sample loop is written here.
- `AttentionMaskInterface` "sdpa_varlen" -> `sdpa_varlen_mask`: no mask at all for a causal decoder's batch without
  padding, packed or not (the attention function keeps each sample to itself), else transformers' `sdpa_mask`
  (padding, sliding windows, mask overlays: then the attention is `sdpa_attention_forward` with that mask).

Importing the module registers both (`train/build.py` does); then `model.set_attn_implementation("sdpa_varlen")`,
or the run key `attn_implementation: sdpa_varlen`. Loss and gradients equal the padded batch's (tests/test_packing.py).
"""

from __future__ import annotations

import sys

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids


SDPA_VARLEN = "sdpa_varlen"
# Implementations whose cost is per packed sample (no dense mask over the row): a micro-batch is best packed into one
# row for them (`RossDataCollator`'s capacity).
VARLEN_ATTENTION = (SDPA_VARLEN, "flash_attention_2", "flash_attention_3", "flash_attention_4")


def pack_capacity(attn_implementation: str | None, pack_max_tokens: int | None = None) -> int | None:
    """`RossDataCollator`'s `pack_max_tokens` for a run: the one asked for; else, with an attention whose cost is per
    packed sample (`VARLEN_ATTENTION`), no limit (the whole micro-batch in one row, no padding at all); else None (rows
    of at most the batch's longest sample, as a dense block mask costs the square of the row). flash-attention reads
    sample boundaries from `position_ids` only in a batch of one row (transformers' `_is_packed_sequence`); in several
    rows it would attend across the samples of a row, so there `pack_max_tokens` is refused."""
    if pack_max_tokens is not None:
        if str(attn_implementation).startswith("flash_attention"):
            raise ValueError(
                f"pack_max_tokens={pack_max_tokens} with {attn_implementation}: flash-attention keeps packed samples "
                "apart only in one row per batch; leave pack_max_tokens unset"
            )
        return pack_max_tokens
    return sys.maxsize if attn_implementation in VARLEN_ATTENTION else None


def sdpa_varlen_mask(
    mask_function=causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    use_vmap: bool = False,
    **kwargs,
):
    """`AttentionMaskInterface` entry: None (no L x L mask is built) for the two masks of a causal decoder without
    padding, which `sdpa_varlen_attention_forward` keeps itself: plain causal (`causal_mask_function`) and causal per
    packed sample (`packed_sequence_compatibility_function`, an `and_masks`; other `and_masks` come with `use_vmap`,
    a user's mask function, or `local_size`, sliding and chunked windows). Anything else (padding, windows, overlays
    such as Gemma 3's bidirectional image blocks) gets `sdpa_mask`, as for "sdpa"."""
    causal = mask_function is causal_mask_function or getattr(mask_function, "__name__", "") == "and_mask"
    if attention_mask is None and local_size is None and not use_vmap and causal:
        return None
    return sdpa_mask(
        mask_function=mask_function, attention_mask=attention_mask, local_size=local_size, use_vmap=use_vmap, **kwargs
    )


def sample_bounds(batch: int, length: int, position_ids=None, cu_seq_lens_q=None) -> list[int] | None:
    """Start offsets of the samples in the flattened `(batch * length)` tokens, plus the end, or None when no
    boundary is known. `position_ids`: `(batch or 1, length)`, each sample counting from 0; `cu_seq_lens_q`:
    `(num_samples + 1,)` cumulative lengths."""
    if cu_seq_lens_q is None:
        if position_ids is None:
            return None
        if position_ids.ndim != 2:  # e.g. multimodal RoPE's (3, batch, length): no sample boundaries to read
            raise ValueError(f"sdpa_varlen reads packed samples from 2-D position_ids, got {tuple(position_ids.shape)}")
        (cu_seq_lens_q, _), _ = prepare_fa_kwargs_from_position_ids(position_ids.expand(batch, length))
    bounds = cu_seq_lens_q.tolist()
    if bounds[0] != 0 or bounds[-1] != batch * length:
        raise ValueError(
            f"sdpa_varlen: cu_seq_lens_q covers tokens {bounds[0]}..{bounds[-1]}, the batch has {batch} x {length}"
        )
    return bounds


def sdpa_varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query `(batch, heads, length, head_dim)`, key / value `(batch, kv_heads, length, head_dim)` -> attention output
    `(batch, length, heads, head_dim)` (as `sdpa_attention_forward`), each packed sample attending causally to itself
    only."""
    batch, heads, length, head_dim = query.shape
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    bounds = None
    if attention_mask is None and causal and length > 1 and key.shape[2] == length:
        bounds = sample_bounds(batch, length, position_ids, cu_seq_lens_q)
    if bounds is None or len(bounds) - 1 == batch:  # no packing (one sample per row): plain SDPA, `is_causal` intact
        return sdpa_attention_forward(module, query, key, value, attention_mask, is_causal=is_causal, **kwargs)
    if sliding_window is not None and max(b - a for a, b in zip(bounds, bounds[1:])) > sliding_window:
        raise ValueError(
            f"sdpa_varlen keeps full causal attention per sample; this layer has sliding_window={sliding_window}"
        )

    def flat(x):  # (batch, h, length, d) -> (1, h, batch * length, d): samples never cross rows, so rows can join
        return x.transpose(0, 1).reshape(1, x.shape[1], batch * length, x.shape[3])

    # `split`, not one slice per sample: a slice's backward writes its gradient into a zero-filled copy of the whole
    # row, so n slices cost n rows of memory traffic per tensor and layer; split's backward is one concatenation.
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    queries, keys, values = (flat(x).split(lengths, dim=2) for x in (query, key, value))
    outputs = [  # each (1, l_i, heads, head_dim)
        sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]
        for q, k, v in zip(queries, keys, values)
    ]
    return torch.cat(outputs, dim=1).view(batch, length, heads, head_dim), None


AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_attention_forward)
AttentionMaskInterface.register(SDPA_VARLEN, sdpa_varlen_mask)

__all__ = [
    "SDPA_VARLEN", "VARLEN_ATTENTION", "pack_capacity", "sample_bounds", "sdpa_varlen_attention_forward",
    "sdpa_varlen_mask",
]  # fmt: skip
