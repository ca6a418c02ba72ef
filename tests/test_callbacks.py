"""ReconstructionPreviewCallback: the grid PNG, when it is written, train mode restored, rank handling, loggers."""

import sys
import types

import numpy as np
import pytest
import torch
from conftest import TINY_OBJECTIVE
from PIL import Image
from transformers import TrainerControl, TrainerState, TrainingArguments

import ross.train.callbacks as callbacks
from modeling_ross import from_components
from ross.train.callbacks import ReconstructionPreviewCallback, make_preview_grid
from ross.synthetic.world import make_scene, render


CELL, LABEL = 40, 100  # tile side used below; label column width of make_preview_grid


def _scenes(n: int) -> list[Image.Image]:
    return [render(make_scene(seed, size=48)) for seed in range(n)]


def _args(tmp_path, report_to="none") -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to=report_to, use_cpu=True)


def _args_ns(output_dir="unused", report_to=()):
    """A stand-in for TrainingArguments (which would check that the loggers are installed)."""
    return types.SimpleNamespace(output_dir=str(output_dir), report_to=list(report_to), fsdp=None)


def _state(step: int, main: bool = True) -> TrainerState:
    state = TrainerState(global_step=step)
    state.is_world_process_zero = state.is_local_process_zero = main
    return state


def _steps(callback, model, args, steps, processor=None, main=True):
    for step in steps:
        callback.on_step_end(
            args, _state(step, main), TrainerControl(), model=model, processing_class=processor
        )


def test_grid_size_and_rows():
    inputs = torch.zeros(3, 3, 32, 32)
    inputs[:, 0] = 1.0  # red inputs
    recon = torch.ones(3, 3, 16, 16)  # white reconstructions, at the teacher's smaller size
    grid = make_preview_grid(inputs, recon, cell_size=CELL)
    assert grid.size == (LABEL + 3 * CELL, 2 * CELL)
    pixels = np.asarray(grid)
    assert tuple(pixels[CELL // 2, LABEL + CELL // 2]) == (255, 0, 0)
    assert tuple(pixels[CELL + CELL // 2, LABEL + 2 * CELL + CELL // 2]) == (255, 255, 255)
    with pytest.raises(ValueError, match="3 inputs but 2 reconstructions"):
        make_preview_grid(inputs, recon[:2])


def test_writes_grids_at_every_k_steps_and_restores_modes(tiny_model, tiny_processor, tmp_path):
    model = tiny_model.train()
    model.teacher.eval()  # a mixed state, restored module by module (not by a blanket `model.train()`)
    modes = {name: module.training for name, module in model.named_modules()}
    callback = ReconstructionPreviewCallback(
        images=_scenes(3), every_n_steps=2, num_inference_steps=2, cell_size=CELL
    )
    args = _args(tmp_path / "run")
    seen_modes = []
    model.denoiser.register_forward_pre_hook(lambda module, _: seen_modes.append(module.training))
    _steps(callback, model, args, range(0, 6), processor=tiny_processor)

    written = sorted(p.name for p in (tmp_path / "run" / "previews").iterdir())
    assert written == ["step_000002.png", "step_000004.png"]
    grid = Image.open(tmp_path / "run" / "previews" / "step_000004.png")
    assert grid.size == (LABEL + 3 * CELL, 2 * CELL) and grid.mode == "RGB"
    # The denoiser ran in eval mode (2 previews x 2 sampling steps), and every module is back where it was.
    assert seen_modes == [False] * 4
    assert {name: module.training for name, module in model.named_modules()} == modes
    # The top row is the input as the tower saw it: compare one tile with the scene resized the same way.
    expected = np.asarray(_scenes(3)[1].resize((32, 32), Image.BICUBIC).resize((CELL, CELL), Image.NEAREST))
    tile = np.asarray(grid)[:CELL, LABEL + CELL : LABEL + 2 * CELL].astype(int)
    assert np.abs(tile - expected.astype(int)).mean() < 12


def test_same_seed_gives_the_same_preview_and_pixel_values_work(tiny_components, tiny_processor, tmp_path):
    torch.manual_seed(0)
    model = from_components(**tiny_components, **TINY_OBJECTIVE)
    with torch.no_grad():  # a non-trivial denoiser so the reconstruction depends on the noise
        for parameter in model.denoiser.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    pixel_values = tiny_processor(
        text=["<image>"] * 2, images=_scenes(2), return_tensors="pt"
    )["pixel_values"]
    with_processor = ReconstructionPreviewCallback(pixel_values=pixel_values, every_n_steps=1, num_inference_steps=3)
    from_images = ReconstructionPreviewCallback(images=_scenes(2), every_n_steps=1, num_inference_steps=3)
    a = np.asarray(with_processor.render(model, tiny_processor))
    b = np.asarray(from_images.render(model, tiny_processor))
    assert np.array_equal(a, np.asarray(with_processor.render(model, tiny_processor)))  # fixed seed
    # pixel_values + processor: the same chat prompt as for images, so the same reconstruction.
    assert np.array_equal(a, b)
    bare = ReconstructionPreviewCallback(pixel_values=pixel_values, every_n_steps=1, num_inference_steps=3)
    assert bare.build_inputs(None).keys() == {"pixel_values"}  # no processor: image tokens alone
    assert np.asarray(bare.render(model)).shape == a.shape


def test_ranks(tiny_model, tiny_processor, tmp_path, monkeypatch):
    """Not sharded: other ranks skip the forward. ZeRO-3/FSDP: every rank runs it, only rank 0 writes."""
    callback = ReconstructionPreviewCallback(images=_scenes(1), every_n_steps=1, num_inference_steps=1)
    calls = []
    render = callback.render
    monkeypatch.setattr(callback, "render", lambda *a: calls.append(1) or render(*a))
    args = _args(tmp_path)

    _steps(callback, tiny_model, args, [1], tiny_processor, main=False)
    assert calls == [] and not (tmp_path / "previews").exists()

    monkeypatch.setattr(callbacks, "weights_are_sharded", lambda args: True)
    _steps(callback, tiny_model, args, [1], tiny_processor, main=False)
    assert calls == [1] and not (tmp_path / "previews").exists()
    _steps(callback, tiny_model, args, [2], tiny_processor, main=True)
    assert calls == [1, 1] and (tmp_path / "previews" / "step_000002.png").is_file()


def test_validation_and_baseline_model(tiny_components, tiny_processor):
    with pytest.raises(ValueError, match="exactly one"):
        ReconstructionPreviewCallback(every_n_steps=1)
    with pytest.raises(ValueError, match="every_n_steps"):
        ReconstructionPreviewCallback(images=_scenes(1), every_n_steps=0)
    with pytest.raises(ValueError, match="RossProcessor"):
        ReconstructionPreviewCallback(images=_scenes(1)).build_inputs(None)
    baseline = from_components(**tiny_components, objective="none")
    callback = ReconstructionPreviewCallback(images=_scenes(1))
    with pytest.raises(ValueError, match="objective 'none'"):  # at the start of training, not at step K
        callback.on_train_begin(_args_ns(), _state(0), TrainerControl(), model=baseline)
    with pytest.raises(ValueError, match="objective 'none'"):
        callback.render(baseline, tiny_processor)


def test_preview_images_from_dataset():
    scenes = _scenes(3)
    dataset = [{"images": []}, {"images": [scenes[0], scenes[1]]}, {"images": []}, {"images": [scenes[2]]}]
    assert callbacks.preview_images_from_dataset(dataset, 4) == [scenes[0], scenes[2]]
    assert callbacks.preview_images_from_dataset(torch.utils.data.Subset(dataset, [0, 3]), 1) == [scenes[2]]
    with pytest.raises(ValueError, match="No sample"):
        callbacks.preview_images_from_dataset([{"images": []}])


def test_trackio_gets_the_grid(tiny_model, tiny_processor, tmp_path, monkeypatch):
    logged = []
    fake = types.SimpleNamespace(
        Image=lambda value, caption=None: ("image", value.size, caption),
        log=lambda metrics, step=None: logged.append((metrics, step)),
    )
    monkeypatch.setitem(sys.modules, "trackio", fake)
    args = _args_ns(tmp_path, report_to=["trackio"])
    callback = ReconstructionPreviewCallback(images=_scenes(2), every_n_steps=3, num_inference_steps=1, cell_size=CELL)
    _steps(callback, tiny_model, args, [3], tiny_processor)
    assert len(logged) == 1
    (metrics, step), = logged
    assert step == 3 and metrics["reconstructions"][:2] == ("image", (LABEL + 2 * CELL, 2 * CELL))
    assert "step 3" in metrics["reconstructions"][2]


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, n):
        self.images = _scenes(n)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_in_a_trainer_run_with_tensorboard(tiny_model, tiny_processor, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import Trainer

    def collate(images):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
        ]
        text = tiny_processor.apply_chat_template(messages, tokenize=False)
        batch = tiny_processor(text=[text] * len(images), images=images, padding=True, return_tensors="pt")
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to=["tensorboard"], use_cpu=True, save_strategy="no", logging_steps=1, remove_unused_columns=False,
        disable_tqdm=True,
    )  # fmt: skip
    preview = ReconstructionPreviewCallback(images=_scenes(2), every_n_steps=2, num_inference_steps=2, cell_size=CELL)
    visual_losses = []

    trainer = Trainer(
        model=tiny_model, args=args, train_dataset=_ListDataset(8), data_collator=collate,
        processing_class=tiny_processor, callbacks=[preview],
    )  # fmt: skip
    original_forward = tiny_model.forward

    def forward(*a, **kw):
        out = original_forward(*a, **kw)
        visual_losses.append(out.visual_loss)  # None if a step ran with the model left in eval mode
        return out

    monkeypatch.setattr(tiny_model, "forward", forward)
    trainer.train()

    assert sorted(p.name for p in (tmp_path / "out" / "previews").iterdir()) == ["step_000002.png", "step_000004.png"]
    assert Image.open(tmp_path / "out" / "previews" / "step_000002.png").size == (LABEL + 2 * CELL, 2 * CELL)
    assert len(visual_losses) == 4 and all(v is not None for v in visual_losses)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    images = events.Images("reconstructions")
    assert [image.step for image in images] == [2, 4]
    assert (images[0].width, images[0].height) == (LABEL + 2 * CELL, 2 * CELL)
