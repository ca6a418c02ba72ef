"""Padding-free (packed) batches: several samples in one row, position ids restarting per sample, attention kept
inside each sample; loss and gradients equal to the padded batch."""

import copy
import json

import pytest
import torch

from ross.train.collator import IGNORE_INDEX, RossDataCollator
from ross.train.dataset import load_training_dataset
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


@pytest.mark.parametrize("attn,pack_max_tokens", [("sdpa", None), ("sdpa", 10**9), ("eager", None)])
def test_packed_loss_and_gradients_equal_padded(features, tiny_processor, tiny_model, attn, pack_max_tokens):
    model = tiny_model.float()
    model.set_attn_implementation(attn)
    model.train()
    for module in model.modules():  # no dropout: the two layouts must see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    padded = RossDataCollator(tiny_processor, max_length=100_000)(copy.deepcopy(features))
    packed = _packer(tiny_processor, pack_max_tokens)(copy.deepcopy(features))
    out_padded, grads_padded = _loss_and_grads(model, padded)
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
