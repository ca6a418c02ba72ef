"""Padding-free (packed) batches: several samples in one row, position ids restarting per sample, attention kept
inside each sample (transformers' block-causal mask, or `sdpa_varlen`: SDPA per sample, no mask); loss and
gradients equal to the padded batch."""

import copy
import json

import pytest
import torch

from ross.train.collator import IGNORE_INDEX, RossDataCollator
from ross.train.dataset import load_training_dataset
from ross.train.packed_attention import SDPA_VARLEN, pack_capacity, sdpa_varlen_attention_forward
from test_scale import _varied_records


@pytest.fixture()
def features(tmp_path, tiny_processor):
    path = tmp_path / "varied.json"
    path.write_text(json.dumps(_varied_records(tmp_path, n=10, seed=1)))
    dataset = load_training_dataset(path, image_seq_length=tiny_processor.image_seq_length)
    return [dataset[i] for i in range(6)]  # 0-3 images each, one text-only, different lengths


def _packer(processor, pack_max_tokens):
    return RossDataCollator(processor, max_length=100_000, padding_free=True, pack_max_tokens=pack_max_tokens)


def test_packed_batch_layout(features, tiny_processor):
    """One row (a large `pack_max_tokens`): every sample in order, no padding, positions restarting per sample."""
    padded = RossDataCollator(tiny_processor, max_length=100_000)(copy.deepcopy(features))
    packed = _packer(tiny_processor, 10**9)(copy.deepcopy(features))
    lengths = padded["attention_mask"].sum(-1).tolist()
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    assert packed["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    rows = [padded["input_ids"][r, :n] for r, n in enumerate(lengths)]
    assert torch.equal(packed["input_ids"][0], torch.cat(rows))
    assert torch.equal(packed["pixel_values"], padded["pixel_values"])  # images in the same (row-major) order
    labels = [padded["labels"][r, :n].clone() for r, n in enumerate(lengths)]
    for row in labels:
        assert row[0] == IGNORE_INDEX  # the first token is never supervised: packing changes no label
    assert torch.equal(packed["labels"][0], torch.cat(labels))


def test_packed_rows_never_longer_than_the_longest_sample(features, tiny_processor):
    """Default capacity (the longest sample): fewer rows than samples, none longer than the padded batch's rows; the
    samples in order across rows, each row's end a padding block of its own."""
    padded = RossDataCollator(tiny_processor, max_length=100_000)(copy.deepcopy(features))
    packed = _packer(tiny_processor, None)(copy.deepcopy(features))
    lengths = padded["attention_mask"].sum(-1).tolist()
    rows, width = packed["input_ids"].shape
    assert width <= max(lengths)
    assert rows < len(lengths) and packed["input_ids"].numel() < padded["input_ids"].numel()
    samples = []
    for r in range(rows):
        starts = (packed["position_ids"][r] == 0).nonzero().flatten().tolist() + [width]
        for a, b in zip(starts, starts[1:]):
            samples.append(packed["input_ids"][r, a:b])
    real = [s for s in samples if not (s == tiny_processor.tokenizer.pad_token_id).all()]
    assert [len(s) for s in real] == lengths
    assert all(torch.equal(s, padded["input_ids"][k, : lengths[k]]) for k, s in enumerate(real))


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same noise draws and timesteps for the visual loss
    # As `RossTrainer.compute_loss` calls it: no KV cache in a training forward (a packed batch needs none for
    # transformers to keep attention inside each sample).
    out = model(**batch, use_cache=False)
    out.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize(
    "attn,pack_max_tokens",
    [("sdpa", None), ("sdpa", 10**9), ("eager", None), (SDPA_VARLEN, None), (SDPA_VARLEN, 10**9)],
)
def test_packed_loss_and_gradients_equal_padded(features, tiny_processor, tiny_model, attn, pack_max_tokens):
    """The padded batch under `attn` (for sdpa_varlen: transformers' SDPA path, unchanged) against the packed one,
    in rows of at most the longest sample (None) or in one row (10**9)."""
    model = tiny_model.float()
    model.set_attn_implementation(attn)
    model.train()
    for module in model.modules():  # no dropout: the two layouts must see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    padded = RossDataCollator(tiny_processor, max_length=100_000)(copy.deepcopy(features))
    packed = _packer(tiny_processor, pack_max_tokens)(copy.deepcopy(features))
    if attn == SDPA_VARLEN:  # the padded reference is plain SDPA's
        model.set_attn_implementation("sdpa")
    out_padded, grads_padded = _loss_and_grads(model, padded)
    model.set_attn_implementation(attn)
    out_packed, grads_packed = _loss_and_grads(model, packed)
    assert out_padded.visual_loss is not None
    for key in ("loss", "text_loss", "visual_loss"):
        torch.testing.assert_close(getattr(out_packed, key), getattr(out_padded, key), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_packed.visual_outputs, out_padded.visual_outputs, atol=1e-5, rtol=1e-5)
    assert not torch.equal(out_packed.visual_outputs, torch.zeros_like(out_packed.visual_outputs))
    assert grads_packed.keys() == grads_padded.keys() and len(grads_padded) > 10
    assert any(name.startswith("denoiser") or ".denoiser." in name for name in grads_padded)
    for name in grads_padded:
        torch.testing.assert_close(grads_packed[name], grads_padded[name], atol=1e-5, rtol=1e-5, msg=name)


def test_trainer_turns_the_cache_off_for_packed_batches(features, tiny_processor, tiny_model, tmp_path):
    """Through `RossTrainer.compute_loss` (which adds `use_cache=False` to a packed batch) the loss equals the padded
    batch's; without it transformers would not see the packing."""
    from transformers import TrainingArguments

    from ross.train.trainer import RossTrainer

    model = tiny_model.float()
    model.train()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, remove_unused_columns=False)
    trainer = RossTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    padded = RossDataCollator(tiny_processor, max_length=100_000)(copy.deepcopy(features))
    packed = RossDataCollator(tiny_processor, max_length=100_000, padding_free=True)(copy.deepcopy(features))
    losses = []
    for batch in (padded, packed):
        torch.manual_seed(0)
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()  # the same supervised tokens in both layouts
        losses.append(trainer.compute_loss(model, batch, num_items_in_batch=tokens))
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)


def test_sdpa_varlen_builds_no_mask_and_attends_per_sample(tiny_model):
    """`sdpa_varlen` on packed rows: `create_causal_mask` returns None (no L x L mask), and the attention (grouped
    query heads, two rows, a one-token sample), its boundaries read from `position_ids` or `cu_seq_lens_q`, equals
    SDPA under transformers' block-causal mask, values and gradients; with a padding mask, a sliding window or a
    bidirectional overlay it builds SDPA's mask as "sdpa" does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    language_model = tiny_model.model.language_model
    layer = language_model.layers[0].self_attn
    assert layer.num_key_value_groups > 1
    lengths = [[5, 1, 7], [4, 9]]  # samples per row; both rows 13 tokens
    position_ids = torch.tensor([[p for n in row for p in range(n)] for row in lengths])
    embeds = torch.zeros(2, 13, language_model.config.hidden_size)

    def mask(attn, attention_mask=None):
        language_model.set_attn_implementation(attn)
        return create_causal_mask(language_model.config, embeds, attention_mask, None, position_ids=position_ids)

    block_mask = mask("sdpa")
    assert block_mask.shape == (2, 1, 13, 13) and not block_mask[0, 0, 5, 4]  # sample 2 does not see sample 1
    assert mask(SDPA_VARLEN) is None
    padding = torch.ones(2, 13, dtype=torch.long)
    padding[1, -2:] = 0
    torch.testing.assert_close(mask(SDPA_VARLEN, padding), mask("sdpa", padding), rtol=0, atol=0)
    # What the attention could not keep by itself gets SDPA's own mask: a sliding window, a bidirectional overlay.
    config = copy.deepcopy(language_model.config)
    config.sliding_window = 3
    blocks = torch.full((2, 13), -1)
    blocks[:, 8:11] = 0
    overlays = ((create_sliding_window_causal_mask, {}), (create_causal_mask, {"block_sequence_ids": blocks}))
    for make, kwargs in overlays:
        masks = []
        for attn in ("sdpa", SDPA_VARLEN):
            config._attn_implementation = attn
            masks.append(make(config, embeds, None, None, position_ids=position_ids, **kwargs))
        assert masks[0] is not None
        torch.testing.assert_close(masks[1], masks[0], rtol=0, atol=0)

    torch.manual_seed(0)
    heads, kv_heads, dim = layer.config.num_attention_heads, layer.config.num_key_value_heads, layer.head_dim
    q = torch.randn(2, heads, 13, dim, requires_grad=True)
    k = torch.randn(2, kv_heads, 13, dim, requires_grad=True)
    v = torch.randn(2, kv_heads, 13, dim, requires_grad=True)
    weights = torch.randn(2, 13, heads, dim)
    outputs, grads = [], []
    dense = (sdpa_attention_forward, {"attention_mask": block_mask})
    varlen = (sdpa_varlen_attention_forward, {"attention_mask": None, "position_ids": position_ids})
    for forward, kwargs in (dense, varlen):
        out, _ = forward(layer, q, k, v, scaling=layer.scaling, **kwargs)
        (out * weights).sum().backward()
        outputs.append(out.detach())
        grads.append([t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    assert outputs[1].shape == (2, 13, heads, dim)
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-6, rtol=1e-5)
    for varlen, dense in zip(grads[1], grads[0]):
        torch.testing.assert_close(varlen, dense, atol=1e-6, rtol=1e-5)
    # The boundaries as `DataCollatorWithFlattening(return_flash_attn_kwargs=True)` passes them: the same output.
    cu_seq_lens = torch.tensor([0, 5, 6, 13, 17, 26], dtype=torch.int32)
    with torch.no_grad():
        out, _ = sdpa_varlen_attention_forward(layer, q, k, v, None, scaling=layer.scaling, cu_seq_lens_q=cu_seq_lens)
    torch.testing.assert_close(out, outputs[0], atol=1e-6, rtol=1e-5)


def test_pack_capacity_is_one_row_for_per_sample_attention():
    """The collator's default capacity: the whole micro-batch for attention costing per sample, the longest sample
    (None) for a dense block mask; an explicit `pack_max_tokens` wins, except with flash-attention (one row only)."""
    assert pack_capacity(SDPA_VARLEN) >= 10**12 and pack_capacity("flash_attention_2") >= 10**12
    assert pack_capacity("sdpa") is None and pack_capacity(None) is None
    assert pack_capacity(SDPA_VARLEN, 512) == 512
    with pytest.raises(ValueError, match="flash_attention_2: flash-attention keeps packed samples apart only"):
        pack_capacity("flash_attention_2", 512)  # several rows: transformers would attend across samples
