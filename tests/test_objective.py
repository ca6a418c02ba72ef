"""The reconstructive objectives inside the model: losses, gradients, masking, loading, reconstruction."""

import numpy as np
import pytest
import torch
from conftest import TINY_OBJECTIVE
from PIL import Image

from modeling_ross import RossForConditionalGeneration, from_components
from modeling_ross.teacher import build_teacher, non_persistent_buffers


def _image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth-ish images (a few coloured blocks) so reconstructions can be compared meaningfully.
    blocks = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.NEAREST)


def _batch(processor, specs):
    """`specs`: list of image seeds per sample ([] = text-only sample). Right padding, answers supervised."""
    texts, images = [], []
    for seeds in specs:
        content = [{"type": "image"} for _ in seeds] + [{"type": "text", "text": "Describe."}]
        messages = [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        ]
        texts.append(processor.apply_chat_template(messages, tokenize=False))
        images += [_image(seed) for seed in seeds]
    batch = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def _model(components, **kwargs):
    torch.manual_seed(0)
    settings = {**TINY_OBJECTIVE, **kwargs}
    return from_components(**components, **settings)


OBJECTIVES = [
    dict(objective="denoise", target="vae"),
    dict(objective="denoise", target="pixel", pixel_patch_size=4),
    dict(objective="regress", target="pixel", pixel_patch_size=4),  # ROSS^R-Pixel, MSE
    dict(objective="regress", target="vae"),  # ROSS^R-Latent, cosine
    dict(objective="latent2pixel", target="vae"),
    dict(objective="denoise", target="vae", denoiser_self_attention=False),  # the ablation
]


@pytest.mark.parametrize("settings", OBJECTIVES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_each_objective_trains_the_right_modules(tiny_components, tiny_processor, settings):
    model = _model(tiny_components, **settings)
    model.train()
    batch = _batch(tiny_processor, [[1], [], [2, 3]])
    out = model(**batch)
    assert torch.isfinite(out.visual_loss) and out.visual_loss > 0
    assert torch.allclose(out.loss, out.text_loss + out.visual_loss)
    if settings["objective"] == "regress" and settings["target"] == "vae":
        assert model.config.objective_config.regress_loss == "cosine"
    # Make the zero-init final layer non-zero so gradients reach every denoiser parameter.
    with torch.no_grad():
        for parameter in model.denoiser.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    model.zero_grad()
    model(**batch).loss.backward()
    for name in ("model.projector", "model.language_model", "denoiser"):
        grads = [p.grad for p in model.get_submodule(name).parameters()]
        assert all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    for name in ("model.vision_tower", "teacher"):
        assert all(p.grad is None for p in model.get_submodule(name).parameters()), name


def test_baseline_objective_none_has_no_training_modules(tiny_components, tiny_processor):
    model = _model(tiny_components, objective="none")
    assert model.denoiser is None and model.teacher is None
    out = model.train()(**_batch(tiny_processor, [[1]]))
    assert out.visual_loss is None and torch.equal(out.loss, out.text_loss)


def test_text_only_samples_are_excluded_per_sample(tiny_components, tiny_processor):
    """A batch mixing text-only and image samples gives the visual loss of its image samples alone."""
    model = _model(tiny_components).train()
    with torch.no_grad():
        for parameter in model.denoiser.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    mixed = _batch(tiny_processor, [[], [4], [], [5, 6]])
    images_only = _batch(tiny_processor, [[4], [5, 6]])
    torch.manual_seed(123)
    loss_mixed = model(**mixed).visual_loss
    torch.manual_seed(123)
    loss_images = model(**images_only).visual_loss
    torch.testing.assert_close(loss_mixed, loss_images, rtol=1e-5, atol=1e-6)


def test_batch_without_images_still_runs_every_module(tiny_components, tiny_processor):
    """ZeRO-3/DDP safety: vision tower, projector, teacher and denoiser all run, at zero weight."""
    model = _model(tiny_components).train()
    called = set()
    for name in ("model.vision_tower", "model.projector", "teacher", "denoiser"):
        model.get_submodule(name).register_forward_hook(lambda *args, name=name: called.add(name))
    out = model(**_batch(tiny_processor, [[], []]))
    assert called == {"model.vision_tower", "model.projector", "teacher", "denoiser"}
    assert out.visual_loss.item() == 0.0
    out.loss.backward()
    assert all(p.grad is not None for p in model.denoiser.parameters())
    assert all(p.grad is not None for p in model.model.projector.parameters())


def test_eval_and_generate_never_run_teacher_or_denoiser(tiny_components, tiny_processor):
    model = _model(tiny_components).eval()
    for name in ("teacher", "denoiser"):
        model.get_submodule(name).register_forward_hook(lambda *args, name=name: pytest.fail(f"{name} ran"))
    batch = _batch(tiny_processor, [[1]])
    out = model(**batch)
    assert out.visual_loss is None
    model.generate(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], max_new_tokens=3)


def test_loading_for_training_restores_the_trained_denoiser(tiny_components, tmp_path):
    model = _model(tiny_components)
    with torch.no_grad():  # "train" it: the reference loader would silently re-initialise these
        for parameter in model.denoiser.parameters():
            parameter.copy_(torch.randn_like(parameter))
    model.save_pretrained(tmp_path)

    inference = RossForConditionalGeneration.from_pretrained(tmp_path)
    assert inference.denoiser is None and inference.teacher is None
    assert not any(name.startswith(("denoiser", "teacher")) for name, _ in inference.named_parameters())

    training = RossForConditionalGeneration.from_pretrained(tmp_path, load_objective=True)
    for key, value in model.denoiser.state_dict().items():
        assert torch.equal(training.denoiser.state_dict()[key], value), key
    # The teacher was not saved (save_teacher=False) and comes back from its own source, frozen.
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(training.teacher.state_dict()[key], value), key
    assert not any(p.requires_grad for p in training.teacher.parameters())


def test_save_teacher_keeps_it_in_the_checkpoint(tiny_components, tmp_path):
    from safetensors import safe_open

    model = _model(tiny_components, save_teacher=True)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert any(key.startswith("teacher.vae.") for key in f.keys())
    loaded = RossForConditionalGeneration.from_pretrained(tmp_path, load_objective=True)
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(loaded.teacher.state_dict()[key], value), key


def _psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    mse = ((images - reference) ** 2).mean().item()
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def test_overfitting_a_few_images_improves_reconstructions(tiny_components, tiny_processor):
    """ROSS^D on pixel targets: the loss falls well below its start and `reconstruct` gets measurably closer."""
    model = _model(tiny_components, target="pixel", pixel_patch_size=4, num_noise_draws=4)
    fresh = _model(tiny_components, target="pixel", pixel_patch_size=4)
    batch = _batch(tiny_processor, [[11], [12], [13], [14]])
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad and p.dtype.is_floating_point], lr=2e-3
    )
    model.train()
    losses = []
    torch.manual_seed(0)
    for _ in range(300):
        out = model(**batch)
        optimizer.zero_grad()
        out.visual_loss.backward()
        optimizer.step()
        losses.append(out.visual_loss.item())
    start, end = np.mean(losses[:10]), np.mean(losses[-10:])
    assert end < 0.5 * start, (start, end)

    targets = model.teacher.decode(model.teacher(batch["pixel_values"]))  # the inputs in [0, 1]
    kwargs = dict(num_inference_steps=20, scheduler="ddim", output_type="pt")
    trained = model.eval().reconstruct(batch["pixel_values"], generator=torch.Generator().manual_seed(0), **kwargs)
    untrained = fresh.eval().reconstruct(batch["pixel_values"], generator=torch.Generator().manual_seed(0), **kwargs)
    assert trained.shape == targets.shape == (4, 3, 32, 32)
    # About +3.6 dB after 300 steps here (8.4 vs 4.8 dB); assert a clear margin.
    assert _psnr(trained, targets) > _psnr(untrained, targets) + 2.5
    pil = model.reconstruct(batch["pixel_values"][:1], num_inference_steps=2)
    assert isinstance(pil[0], Image.Image) and pil[0].size == (32, 32)


def test_reconstruct_needs_the_objective(tiny_components, tiny_processor, tmp_path):
    model = _model(tiny_components)
    model.save_pretrained(tmp_path)
    inference = RossForConditionalGeneration.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="load_objective=True"):
        inference.reconstruct(_batch(tiny_processor, [[1]])["pixel_values"])


# ---- the objective modules and the model's parts ----
PREFIXES = ("model.", "lm_head.", "denoiser.", "teacher.")


@pytest.mark.parametrize("settings", OBJECTIVES[:5], ids=lambda s: "-".join(str(v) for v in s.values()))
def test_objective_module_adds_no_checkpoint_keys(tiny_components, tmp_path, settings):
    """The objective holds no state: the model's keys are its children's, under `denoiser.*` / `teacher.*` as the
    converter, `MODULE_PREFIXES` and the published folders expect."""
    from safetensors import safe_open

    from modeling_ross.objective import OBJECTIVES as OBJECTIVE_CLASSES

    model = _model(tiny_components, **settings)
    assert type(model.objective) is OBJECTIVE_CLASSES[settings["objective"]]
    assert list(model.objective.parameters()) == [] and list(model.objective.buffers()) == []
    assert model.objective.state_dict() == {}
    keys = set(model.state_dict())
    assert all(key.startswith(PREFIXES) for key in keys), sorted(k for k in keys if not k.startswith(PREFIXES))
    for name in ("denoiser", "teacher"):
        children = {f"{name}.{key}" for key in model.get_submodule(name).state_dict()}
        assert {key for key in keys if key.startswith(f"{name}.")} == children, name
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        saved = set(f.keys())
    assert saved == {key for key in keys if not key.startswith("teacher.")}  # save_teacher=False
    loaded = RossForConditionalGeneration.from_pretrained(tmp_path, load_objective=True)
    assert set(loaded.state_dict()) == keys


def test_modules_do_not_depend_on_how_the_model_was_built(tiny_components, tmp_path):
    """`__init__` and `from_pretrained` share one rule: the objective is built only with `load_objective=True`."""
    built = _model(tiny_components)
    built.save_pretrained(tmp_path)
    modules = lambda m: [name for name, _ in m.named_modules()]  # noqa: E731
    training = [
        RossForConditionalGeneration(built.config, load_objective=True),
        RossForConditionalGeneration.from_pretrained(tmp_path, load_objective=True),
    ]
    for model in training:
        assert modules(model) == modules(built) and set(model.state_dict()) == set(built.state_dict())
        assert model.can_reconstruct
    inference = [
        RossForConditionalGeneration(built.config),
        RossForConditionalGeneration.from_pretrained(tmp_path),
    ]
    for model in inference:
        assert model.objective is None and model.denoiser is None and model.teacher is None
        assert modules(model) == modules(inference[0]) and not model.can_reconstruct
    # The ignore lists are the class's, not an instance's choice.
    assert RossForConditionalGeneration._keys_to_ignore_on_load_missing == [r"^teacher\."]
    assert training[0]._keys_to_ignore_on_load_missing == inference[0]._keys_to_ignore_on_load_missing


def test_can_reconstruct_needs_a_decodable_teacher(tiny_components):
    assert _model(tiny_components, target="pixel", pixel_patch_size=4).can_reconstruct
    assert not _model(tiny_components, objective="none").can_reconstruct
    torch.manual_seed(0)
    components = {**tiny_components, "teacher": tiny_components["vision_model"], "teacher_subfolder": None}
    features = from_components(**components, **TINY_OBJECTIVE, objective="regress", target="features")
    assert features.objective is not None and not features.can_reconstruct


def test_save_teacher_checkpoint_without_teacher_falls_back_to_its_source(tiny_components, tmp_path):
    from safetensors.torch import load_file, save_file

    model = _model(tiny_components, save_teacher=True)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("teacher.")}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    loaded = RossForConditionalGeneration.from_pretrained(tmp_path, load_objective=True)
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(loaded.teacher.state_dict()[key], value), key


@pytest.mark.parametrize(
    "target, save_teacher", [("features", False), ("features", True), ("vae", False), ("vae", True), ("pixel", False)]
)
def test_reloaded_teacher_has_a_fresh_teachers_buffers_and_the_same_loss(
    tiny_components, tiny_processor, tmp_path, target, save_teacher
):
    """No checkpoint holds a non-persistent buffer (SigLIP's `embeddings.position_ids`), and transformers' loader
    leaves it to `_init_weights`, which skips the protected teacher: both load paths must still restore it."""
    if target == "features":  # a SigLIP teacher: the tiny vision tower's own repo
        tiny_components = {**tiny_components, "teacher": tiny_components["vision_model"], "teacher_subfolder": None}
    model = _model(tiny_components, target=target, save_teacher=save_teacher, pixel_patch_size=4).train()
    assert (target == "features") == ("model.embeddings.position_ids" in non_persistent_buffers(model.teacher))
    batch = _batch(tiny_processor, [[1], [2, 3]])
    torch.manual_seed(0)
    expected = model(**batch).visual_loss
    model.save_pretrained(tmp_path)

    loaded = RossForConditionalGeneration.from_pretrained(tmp_path, load_objective=True).train()
    fresh = dict(build_teacher(loaded.config.objective_config, loaded.config.grid_size).named_buffers())
    buffers = dict(loaded.teacher.named_buffers())
    assert buffers.keys() == fresh.keys()
    for name, buffer in buffers.items():
        assert torch.equal(buffer, fresh[name]), name
    torch.manual_seed(0)
    assert torch.equal(loaded(**batch).visual_loss, expected)


def test_num_images_in_batch_weights_the_visual_term(tiny_components, tiny_processor):
    """As `num_items_in_batch` for the text: the visual mean counts for this batch's share of the step's images."""
    model = _model(tiny_components, objective="regress", latent_sample="mode", weight=0.7).train()
    batch = _batch(tiny_processor, [[1], [], [2, 3]])  # 3 images
    plain = model(**batch)
    torch.testing.assert_close(plain.loss, plain.text_loss + 0.7 * plain.visual_loss)
    shared = model(**batch, num_images_in_batch=torch.tensor(12))
    torch.testing.assert_close(shared.visual_loss, plain.visual_loss)  # logged as the plain mean
    torch.testing.assert_close(shared.loss, shared.text_loss + 0.7 * plain.visual_loss * 3 / 12)
    text_only = model(**_batch(tiny_processor, [[], []]), num_images_in_batch=0)
    torch.testing.assert_close(text_only.loss, text_only.text_loss)
