"""The latent cache for native VLMs (`RossForPreTraining`): entries keyed by image content and token grid, the same loss
as the teacher path, and `train/sft.py` building then reusing it. Tiny random-weight configs, offline."""

import pytest
import torch

from modeling_ross.teacher import RossVaeTeacher
from modeling_ross.testing import tiny_llava, tiny_llava_onevision, tiny_qwen3_vl, tiny_qwen25_vl
from ross.train.latent_cache import (
    LatentCache,
    LatentCacheMiss,
    build_latent_cache,
    cache_settings,
    grid_image_key,
    image_key,
    settings_key,
)
from ross.train.native_collator import NativeVlmDataCollator
from tests.native_sft import random_image, write_native_data
from tests.test_native_vlms import ross_for


def item(index: int, images: list, answer: str = "red") -> dict:
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": "What colour is it?"}]
    return {
        "id": f"s{index}",
        "source": f"data.json:#{index}",
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": images,
    }


def mixed_items() -> list[dict]:
    """Three sizes (Qwen2.5-VL grids 2x3, 3x2, 2x2), a two-image sample, a text-only one, an image seen twice."""
    a, b, c = random_image(56, 84, 0), random_image(84, 56, 1), random_image(56, 56, 2)
    return [item(0, [a]), item(1, [b, c], "two"), item(2, []), item(3, [a], "blue")]


class CountEncodes:
    """Images the teacher encodes on a grid (`encode_grid_distribution`: the cache's builder and the model's uncached
    path), patched on the class so that every teacher instance counts."""

    def __init__(self, monkeypatch):
        self.images = 0
        original = RossVaeTeacher.encode_grid_distribution

        def counted(teacher, images, grid):
            self.images += images.shape[0]
            return original(teacher, images, grid)

        monkeypatch.setattr(RossVaeTeacher, "encode_grid_distribution", counted)


QWEN_GRIDS = [(2, 3), (3, 2), (2, 2), (2, 3)]  # Qwen3-VL rounds 56 / 84 px to multiples of 32 px: the same grids


@pytest.mark.parametrize(
    "build, grids",
    [(tiny_qwen25_vl, QWEN_GRIDS), (tiny_qwen3_vl, QWEN_GRIDS), (tiny_llava, [(8, 8)] * 4),
     (tiny_llava_onevision, [(8, 8)] * 4)],
    ids=["qwen2_5_vl", "qwen3_vl", "llava", "llava_onevision"],
)  # fmt: skip
def test_cached_loss_equals_the_teacher_loss(build, grids, kl16_vae, tmp_path, monkeypatch):
    """The same seed gives the same loss with cached targets as with the teacher (1e-5), images of three sizes in one
    batch (three grids on Qwen-VL; the fixed 8 x 8 of Llava and of LLaVA-OneVision's base view), and the cached path
    never calls the teacher."""
    torch.manual_seed(0)
    ross, processor = ross_for(build, kl16_vae)
    items = mixed_items()
    calls = CountEncodes(monkeypatch)
    cache = build_latent_cache(ross.teacher, processor, items, tmp_path, batch_size=2, adapter=ross.adapter)
    assert cache.per_image_grid and cache.build_stats["images"] == 4 and cache.build_stats["unique"] == 3
    assert calls.images == cache.build_stats["encoded"] == len(cache) == 3  # image a (twice) is encoded once

    collator = NativeVlmDataCollator(processor, max_length=512, adapter=ross.adapter, latent_cache=cache)
    batch = collator(items)
    assert ross.adapter.image_grids(batch) == grids
    targets = batch["teacher_targets"]
    assert [tuple(t["mean"].shape) for t in targets] == [(r * c, ross.teacher.num_channels) for r, c in grids]
    # Each entry is the teacher's distribution of the image the VLM saw, on that image's grid.
    for entry, image, grid in zip(targets, ross.adapter.images_seen(batch), grids):
        mean, std = ross.teacher.encode_grid_distribution(image[None], grid)
        torch.testing.assert_close(entry["mean"], mean[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(entry["std"], std[0], rtol=1e-5, atol=1e-6)

    ross.train()
    uncached = {key: value for key, value in batch.items() if key != "teacher_targets"}
    calls.images = 0
    torch.manual_seed(5)
    with_teacher = ross(**uncached)
    assert calls.images == 4
    torch.manual_seed(5)
    with_cache = ross(**batch)
    assert calls.images == 4  # the cached path never runs the teacher
    assert with_cache.visual_loss > 0
    torch.testing.assert_close(with_cache.visual_loss, with_teacher.visual_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_cache.loss, with_teacher.loss, rtol=1e-5, atol=1e-5)
    with_cache.loss.backward()
    assert ross.denoiser.final_layer.linear.weight.grad.abs().sum() > 0

    # A batch without images: an empty list, no teacher call, a zero visual loss still in the graph.
    text_only = collator([item(2, [])])
    assert text_only["teacher_targets"] == []
    out = ross(**text_only)
    assert calls.images == 4 and out.visual_loss.item() == 0.0 and out.visual_loss.requires_grad
    # Targets that do not fit the grids are an error with the shapes.
    short = {key: value[1:] for key, value in targets[0].items()}
    with pytest.raises(ValueError, match="do not match the images' grids"):
        ross(**{**batch, "teacher_targets": [short, *targets[1:]]})


def test_the_grid_is_part_of_the_key(kl16_vae, tmp_path):
    """The same picture at two sizes is two entries, one per grid; the same content under another grid is a miss; the
    processor's min / max pixels (which decide the grid) are in the settings key."""
    ross, processor = ross_for(tiny_qwen25_vl, kl16_vae)
    small = random_image(56, 84, 0)
    large = small.resize((112, 84))  # (width, height): 3 x 4 tokens instead of 2 x 3
    items = [item(0, [small]), item(1, [large])]
    cache = build_latent_cache(ross.teacher, processor, items, tmp_path, adapter=ross.adapter)
    assert sorted(cache.keys) == sorted([grid_image_key(small, (2, 3)), grid_image_key(large, (3, 4))])
    assert grid_image_key(small, (2, 3)) == f"{image_key(small)}-2x3"
    entries = cache.lookup_each([grid_image_key(small, (2, 3)), grid_image_key(large, (3, 4))])
    assert [tuple(e["mean"].shape) for e in entries] == [(6, 16), (12, 16)]
    with pytest.raises(LatentCacheMiss, match=r"image 0 .* id='s0' \(data.json:#0\)"):
        cache.grid_targets_for([item(0, [small])], [(3, 4)])
    with pytest.raises(ValueError, match="grid_targets_for"):
        cache.targets_for([item(0, [small])])

    base = settings_key(cache_settings(ross.teacher, processor, adapter=ross.adapter))
    assert cache.directory.name == base != settings_key(cache_settings(ross.teacher, processor))  # the adapter counts
    processor.image_processor.size = {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 4}  # max 4 tokens
    assert settings_key(cache_settings(ross.teacher, processor, adapter=ross.adapter)) != base
    with pytest.raises(FileNotFoundError, match="No latent cache for these teacher / preprocessing settings"):
        LatentCache.open(tmp_path, ross.teacher, processor, adapter=ross.adapter)


def test_sft_builds_then_reuses_the_native_cache(kl16_vae, tmp_path, monkeypatch):
    """train/sft.py on a native Qwen2.5-VL with latent_cache_dir: the first run encodes each image once before
    training and the teacher is never called while training; the second run encodes nothing and trains the same."""
    from transformers import TrainerCallback

    import ross.train.build
    from modeling_ross.testing import load_native_processor_without_torchvision
    from ross.train.sft import main

    vlm, processor = tiny_qwen25_vl()
    base = tmp_path / "base"
    vlm.save_pretrained(base)
    processor.save_pretrained(base)
    monkeypatch.setattr(ross.train.build, "load_native_processor", load_native_processor_without_torchvision)
    data, images = write_native_data(tmp_path, "llava")
    calls = CountEncodes(monkeypatch)

    class EncodesWhileTraining(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            self.before = calls.images

        def on_train_end(self, *args, **kwargs):
            self.during = calls.images - self.before

    def run(name: str):
        counter = EncodesWhileTraining()
        summary = main([
            "--model_name_or_path", str(base), "--objective", "denoise", "--teacher", kl16_vae,
            "--teacher_subfolder", "vae", "--model_overrides",
            "{denoiser_hidden_size: 64, denoiser_depth: 2, denoiser_num_heads: 4, num_noise_draws: 2}",
            "--data_path", str(data), "--image_folder", str(images), "--data_format", "chat", "--stage", "2",
            "--latent_cache_dir", str(tmp_path / "cache"), "--build_latent_cache", "true",
            "--output_dir", str(tmp_path / name), "--max_steps", "2", "--per_device_train_batch_size", "3",
            "--learning_rate", "1e-3", "--logging_steps", "1", "--save_strategy", '"no"', "--report_to", "none",
            "--use_cpu", "true", "--model_max_length", "512", "--seed", "7",
        ], callbacks=[counter])  # fmt: skip
        return summary, counter

    first, first_counter = run("first")
    assert first_counter.before == 3 and first_counter.during == 0  # a.png, b.png, c.png; none while training
    assert first["global_step"] == 2 and first["final_visual_loss"] > 0
    (folder,) = (tmp_path / "cache").iterdir()
    assert len(LatentCache(folder)) == 3
    calls.images = 0
    second, second_counter = run("second")
    assert calls.images == 0 and second_counter.during == 0  # the cache is hit: nothing re-encoded
    assert second["first_logged"] == first["first_logged"] and second["last_logged"] == first["last_logged"]


def test_llava_onevision_multi_image_view_is_its_own_entry(kl16_vae, tmp_path):
    """LLaVA-OneVision pads the images of a multi-image sample to squares (no tiles), so the same image on the same
    8 x 8 grid is seen differently alone and next to another: two entries (`-8x8`, `-8x8-square`), each the teacher's
    targets of what the VLM saw in that sample."""
    ross, processor = ross_for(tiny_llava_onevision, kl16_vae)
    b, c = random_image(84, 56, 1), random_image(56, 56, 2)
    items = [item(0, [b]), item(1, [b, c], "two")]
    cache = build_latent_cache(ross.teacher, processor, items, tmp_path, adapter=ross.adapter)
    expected = [f"{image_key(b)}-8x8", f"{image_key(b)}-8x8-square", f"{image_key(c)}-8x8-square"]
    assert sorted(cache.keys) == sorted(expected)
    batch = NativeVlmDataCollator(processor, max_length=512, adapter=ross.adapter, latent_cache=cache)(items)
    assert ross.adapter.image_views(batch) == ["", "square", "square"]
    seen = ross.adapter.images_seen(batch)
    assert (seen[0] - seen[1]).abs().max() > 0.1  # image b, alone and in the pair
    for entry, image in zip(batch["teacher_targets"], seen):
        torch.testing.assert_close(entry["mean"], ross.teacher.encode_grid_distribution(image[None], (8, 8))[0][0])


def test_cli_builds_then_reuses_a_native_checkpoints_cache(kl16_vae, tmp_path, monkeypatch, capsys):
    """`python -m ross.train.latent_cache --model CHECKPOINT` on a Qwen2.5-VL folder with `ross_head/` (as
    `train/sft.py` saves it): the first run encodes the 3 images of 6 references, the second encodes none and reuses
    them; a folder without `ross_head/config.json` and a data file naming a missing image are one-line errors."""
    import shutil

    from modeling_ross.modeling_ross_pretraining import HEAD_FOLDER
    from modeling_ross.testing import load_native_processor_without_torchvision
    from ross.train import latent_cache

    monkeypatch.setattr(latent_cache, "load_native_processor", load_native_processor_without_torchvision)
    ross, processor = ross_for(tiny_qwen25_vl, kl16_vae)
    ross.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    data, images = write_native_data(tmp_path, "llava")
    arguments = ["--data", str(data), "--image_folder", str(images), "--out", str(tmp_path / "cache")]
    calls = CountEncodes(monkeypatch)

    assert latent_cache.cli(["--model", str(tmp_path / "ckpt"), *arguments]) == 0
    first = capsys.readouterr().out
    assert '"images": 6, "unique": 3, "encoded": 3, "reused": 0' in first and calls.images == 3
    assert latent_cache.cli(["--model", str(tmp_path / "ckpt"), *arguments]) == 0
    assert '"encoded": 0, "reused": 3' in capsys.readouterr().out and calls.images == 3
    (folder,) = (tmp_path / "cache").iterdir()
    assert len(LatentCache(folder)) == 3

    def error_of(argv) -> str:
        assert latent_cache.cli(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("error: "), lines
        return lines[-1]

    shutil.copytree(tmp_path / "ckpt", tmp_path / "plain")
    (tmp_path / "plain" / HEAD_FOLDER / "config.json").unlink()
    err = error_of(["--model", str(tmp_path / "plain"), *arguments])
    assert f"{tmp_path / 'plain'} is a plain qwen2_5_vl folder without {HEAD_FOLDER}/config.json" in err, err
    err = error_of(["--model", str(tmp_path / "none"), *arguments])
    assert f"model folder {tmp_path / 'none'} does not exist" in err, err
    (images / "b.png").unlink()
    err = error_of(["--model", str(tmp_path / "ckpt"), *arguments])
    assert f"id='two' ({data}:#1)" in err and f"{images / 'b.png'} does not exist" in err, err
