"""Latent cache of teacher outputs: same objective as the teacher path, reuse, invalidation, clear misses."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_ross.configuration_ross import RossObjectiveConfig
from modeling_ross.teacher import build_teacher, sample_targets
from ross.train.collator import RossDataCollator
from ross.train.config import RossRunConfig
from ross.train.latent_cache import (
    LatentCache,
    LatentCacheMiss,
    build_latent_cache,
    cache_settings,
    image_key,
    settings_key,
)
from ross.train.sft import prepare_latent_cache


def _image(seed: int, shape=(24, 36, 3)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8))


def _item(index: int, images: list) -> dict:
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": "What colour is the shape?"}]
    return {
        "id": f"s{index}",
        "source": f"synthetic.json:#{index}",
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": ["red", "blue square", "two"][index % 3]}]},
        ],
        "images": images,
    }


@pytest.fixture()
def items():
    # 2, 0 and 1 images; image 1 appears twice (deduplicated by content), one sample is text-only.
    return [_item(0, [_image(1), _image(2)]), _item(1, []), _item(2, [_image(3)]), _item(3, [_image(1)])]


class CountCalls:
    """Count the images the teacher encodes (`encode_distribution`, which its `forward` calls too)."""

    def __init__(self, teacher, monkeypatch):
        self.images = 0
        original = teacher.encode_distribution

        def wrapped(pixel_values):
            self.images += pixel_values.shape[0]
            return original(pixel_values)

        monkeypatch.setattr(teacher, "encode_distribution", wrapped)


def _pixels(processor, images):
    return processor(images=images, return_tensors="pt")["pixel_values"]


# ---- the teacher's distribution ----
def test_forward_is_mean_plus_std_eps_of_the_vae_posterior(tiny_model, tiny_processor):
    teacher = tiny_model.teacher
    assert teacher.latent_sample == "sample"
    pixel_values = _pixels(tiny_processor, [_image(1), _image(2)])
    mean, std = teacher.encode_distribution(pixel_values)
    drawn = teacher(pixel_values, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(drawn, mean + std * eps, rtol=0, atol=0)
    # Against diffusers' posterior: scale / shift the mean, scale the std, fold 2x2 windows into channels.
    with torch.no_grad():
        posterior = teacher.vae.encode(teacher.preprocess(pixel_values)).latent_dist
    scale, shift = teacher.scaling_factor, teacher.shift_factor
    fold = lambda latents: F.pixel_unshuffle(latents, teacher.fold).flatten(2).transpose(1, 2)  # noqa: E731
    torch.testing.assert_close(mean, fold((posterior.mean - shift) * scale))
    torch.testing.assert_close(std, fold(posterior.std * scale))
    assert mean.shape == (2, tiny_model.config.image_seq_length, teacher.num_channels) and (std > 0).all()
    # "mode": deterministic, the target is the mean.
    teacher.latent_sample = "mode"
    mode_mean, mode_std = teacher.encode_distribution(pixel_values)
    assert mode_std is None
    torch.testing.assert_close(mode_mean, mean, rtol=0, atol=0)
    torch.testing.assert_close(teacher(pixel_values), mean, rtol=0, atol=0)
    assert torch.equal(sample_targets(mean, None), mean)


# ---- building and reading ----
def test_cache_round_trip_equals_the_teacher(tiny_model, tiny_processor, items, tmp_path, monkeypatch):
    teacher = tiny_model.teacher
    calls = CountCalls(teacher, monkeypatch)
    cache = build_latent_cache(teacher, tiny_processor, items, tmp_path, batch_size=2)
    assert cache.build_stats["images"] == 4 and cache.build_stats["unique"] == 3
    assert cache.build_stats["encoded"] == 3 and calls.images == 3  # the repeated image is encoded once
    assert len(cache) == 3 and cache.stochastic
    assert cache.directory == tmp_path / settings_key(cache_settings(teacher, tiny_processor))

    images = [_image(1), _image(2), _image(3)]
    mean, std = cache.lookup([image_key(image) for image in images])
    expected_mean, expected_std = teacher.encode_distribution(_pixels(tiny_processor, images))
    torch.testing.assert_close(mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(std, expected_std, rtol=1e-5, atol=1e-6)

    # The collator attaches (mean, std) per image in pixel_values order (row-major over the batch).
    collator = RossDataCollator(tiny_processor, max_length=512, latent_cache=LatentCache(cache.directory))
    batch = collator(items)
    targets = batch["teacher_targets"]
    assert batch["pixel_values"].shape[0] == targets["mean"].shape[0] == targets["std"].shape[0] == 4
    order = [image_key(image) for item in items for image in item["images"]]
    torch.testing.assert_close(targets["mean"], cache.lookup(order)[0], rtol=0, atol=0)
    torch.testing.assert_close(targets["mean"][0], targets["mean"][3], rtol=0, atol=0)  # same image twice
    direct, _ = teacher.encode_distribution(batch["pixel_values"])
    torch.testing.assert_close(targets["mean"], direct, rtol=1e-5, atol=1e-6)


def test_deterministic_teacher_stores_only_the_mean(tiny_processor, items, tmp_path):
    config = RossObjectiveConfig(target="pixel", objective="regress", pixel_patch_size=4)
    teacher = build_teacher(config, grid_size=8)
    cache = build_latent_cache(teacher, tiny_processor, items, tmp_path)
    assert not cache.stochastic
    targets = RossDataCollator(tiny_processor, max_length=512, latent_cache=cache)(items[2:3])["teacher_targets"]
    assert set(targets) == {"mean"}
    torch.testing.assert_close(targets["mean"], teacher(_pixels(tiny_processor, [_image(3)])), rtol=0, atol=0)


def test_second_build_reuses_the_cache(tiny_model, tiny_processor, items, tmp_path, monkeypatch):
    teacher = tiny_model.teacher
    first = build_latent_cache(teacher, tiny_processor, items, tmp_path)
    calls = CountCalls(teacher, monkeypatch)
    second = build_latent_cache(teacher, tiny_processor, items, tmp_path)
    assert calls.images == 0  # no teacher call
    assert second.build_stats["encoded"] == 0 and second.build_stats["reused"] == 3
    assert second.directory == first.directory and len(second.shards) == 1
    # New data: only the new image is encoded, into a new shard next to the old one.
    third = build_latent_cache(teacher, tiny_processor, [*items, _item(4, [_image(9)])], tmp_path)
    assert calls.images == 1 and third.build_stats["encoded"] == 1
    assert len(third) == 4 and len(third.shards) == 2
    # LatentCache.open finds it again from the settings alone.
    assert LatentCache.open(tmp_path, teacher, tiny_processor).directory == first.directory


def test_changing_settings_invalidates_the_cache(tiny_model, tiny_processor, items, tmp_path):
    teacher = tiny_model.teacher
    cache = build_latent_cache(teacher, tiny_processor, items, tmp_path)
    base = settings_key(cache_settings(teacher, tiny_processor))
    assert cache.directory.name == base

    def key_with(change, undo):
        change()
        try:
            return settings_key(cache_settings(teacher, tiny_processor))
        finally:
            undo()

    processor = tiny_processor
    keys = {
        "aspect ratio": key_with(
            lambda: setattr(processor, "image_aspect_ratio", "resize"),
            lambda: setattr(processor, "image_aspect_ratio", "pad"),
        ),
        "processor mean": key_with(
            lambda: setattr(processor.image_processor, "image_mean", [0.4, 0.5, 0.5]),
            lambda: setattr(processor.image_processor, "image_mean", [0.5, 0.5, 0.5]),
        ),
        "processor size": key_with(
            lambda: setattr(processor.image_processor, "size", {"height": 64, "width": 64}),
            lambda: setattr(processor.image_processor, "size", {"height": 32, "width": 32}),
        ),
        "latent_sample": key_with(
            lambda: setattr(teacher, "latent_sample", "mode"), lambda: setattr(teacher, "latent_sample", "sample")
        ),
        "fold": key_with(lambda: setattr(teacher, "fold", 1), lambda: setattr(teacher, "fold", 2)),
    }
    weight = next(teacher.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
        keys["teacher weights"] = settings_key(cache_settings(teacher, tiny_processor))
        weight.copy_(saved)
    assert settings_key(cache_settings(teacher, tiny_processor)) == base  # restored
    assert settings_key(cache_settings(teacher, tiny_processor, dtype="float16")) != base
    assert base not in keys.values() and len(set(keys.values())) == len(keys), keys

    processor.image_aspect_ratio = "resize"
    try:
        with pytest.raises(FileNotFoundError, match="No latent cache for these teacher / preprocessing settings"):
            LatentCache.open(tmp_path, teacher, processor)
    finally:
        processor.image_aspect_ratio = "pad"


def test_missing_image_is_a_clear_error(tiny_model, tiny_processor, items, tmp_path):
    cache = build_latent_cache(tiny_model.teacher, tiny_processor, items, tmp_path)
    collator = RossDataCollator(tiny_processor, max_length=512, on_bad_sample="skip", latent_cache=cache)
    unseen = _item(7, [_image(3), _image(42)])
    with pytest.raises(LatentCacheMiss) as error:
        collator([items[0], unseen])
    message = str(error.value)
    assert "image 1" in message and "id='s7'" in message and "synthetic.json:#7" in message
    assert str(cache.directory) in message and image_key(_image(42)) in message


# ---- the objective ----
def test_visual_loss_with_cached_targets_equals_the_teacher_loss(
    tiny_model, tiny_processor, items, tmp_path, monkeypatch
):
    cache = build_latent_cache(tiny_model.teacher, tiny_processor, items, tmp_path)
    batch = RossDataCollator(tiny_processor, max_length=512, latent_cache=cache)(items)
    uncached = {key: value for key, value in batch.items() if key != "teacher_targets"}
    tiny_model.train()
    calls = CountCalls(tiny_model.teacher, monkeypatch)
    torch.manual_seed(5)
    with_teacher = tiny_model(**uncached)
    assert calls.images == 4
    torch.manual_seed(5)
    with_cache = tiny_model(**batch)
    assert calls.images == 4  # the cached path never runs the teacher
    torch.testing.assert_close(with_cache.visual_loss, with_teacher.visual_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_cache.loss, with_teacher.loss, rtol=1e-5, atol=1e-6)
    # Gradients reach the denoiser through the cached path.
    tiny_model.zero_grad()
    with_cache.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.denoiser.parameters())

    # A batch without images: empty targets, no teacher call, a zero visual loss still connected to the graph.
    text_only = RossDataCollator(tiny_processor, max_length=512, latent_cache=cache)([items[1]])
    assert text_only["teacher_targets"]["mean"].shape == (0, 64, 64)
    out = tiny_model(**text_only)
    assert calls.images == 4 and out.visual_loss.item() == 0.0 and out.visual_loss.requires_grad

    # Misaligned targets are an error with the numbers.
    bad = {**batch, "teacher_targets": {"mean": batch["teacher_targets"]["mean"][:3]}}
    with pytest.raises(ValueError, match=r"shape \(3, 64, 64\), expected \(4, 64, 64\)"):
        tiny_model(**bad)


# ---- run config glue (train/sft.py) ----
def test_sft_builds_then_opens_the_cache(tiny_model, tiny_processor, items, tmp_path):
    def run_config(**values):
        return RossRunConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", **values)

    assert prepare_latent_cache(run_config(), tiny_model.teacher, tiny_processor, items) is None
    config = run_config(latent_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="build_latent_cache: true"):  # not built yet, not asked to build
        prepare_latent_cache(config, tiny_model.teacher, tiny_processor, items)
    config.build_latent_cache = True
    built = prepare_latent_cache(config, tiny_model.teacher, tiny_processor, items)
    assert built.build_stats["encoded"] == 3
    config.build_latent_cache = False
    opened = prepare_latent_cache(config, tiny_model.teacher, tiny_processor, items)
    assert opened.directory == built.directory and len(opened) == 3 and opened.build_stats is None
    with pytest.raises(ValueError, match="latent2pixel"):
        prepare_latent_cache(
            run_config(latent_cache_dir=str(tmp_path), objective="latent2pixel"), tiny_model.teacher,
            tiny_processor, items,
        )
