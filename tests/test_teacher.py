"""Tests of the frozen teacher tokenizers (modeling_ross/teacher.py), with tiny models built from configs."""

import os

import pytest
import torch
import torch.nn.functional as F


os.environ.setdefault("HF_HUB_OFFLINE", "1")

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402
from transformers import (  # noqa: E402
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedConfig,
    PreTrainedModel,
)

from modeling_ross.configuration_ross import RossObjectiveConfig  # noqa: E402
from modeling_ross.teacher import (  # noqa: E402
    RossFeatureTeacher,
    RossVaeTeacher,
    build_teacher,
    freeze,
    protect_from_init,
)
from modeling_ross.teacher_source import load_teacher_source  # noqa: E402


TOWER_MEAN, TOWER_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def vae_config(levels: int, latent_channels: int, shift_factor=None, scaling_factor=0.18215) -> dict:
    """A tiny AutoencoderKL config with downsample 2 ** (levels - 1)."""
    return {
        "block_out_channels": [8] * levels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "latent_channels": latent_channels,
        "shift_factor": shift_factor,
        "scaling_factor": scaling_factor,
    }


VAES = {
    # name: (config, expected fold, expected channels per token)
    "flux": (vae_config(4, 16, shift_factor=0.1159, scaling_factor=0.3611), 2, 64),
    "kl16": (vae_config(5, 8), 1, 8),
    "sd": (vae_config(4, 4), 2, 16),
}


def objective(**kwargs) -> RossObjectiveConfig:
    kwargs.setdefault("image_mean", TOWER_MEAN)
    kwargs.setdefault("image_std", TOWER_STD)
    return RossObjectiveConfig(**kwargs)


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random images normalised like the tower (mean/std 0.5)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, size, size, generator=generator) - 0.5) / 0.5


def vae_teacher(name: str, grid_size: int, **kwargs) -> RossVaeTeacher:
    torch.manual_seed(0)
    return build_teacher(objective(target="vae", teacher_config=VAES[name][0], **kwargs), grid_size)


# ---------------------------------------------------------------------------------------------------------------------
# VAE teacher
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid_size", [2, 3])
@pytest.mark.parametrize("name", list(VAES))
def test_vae_latent_grid_equals_token_grid(name, grid_size):
    teacher = vae_teacher(name, grid_size, latent_sample="mode")
    _, fold, channels = VAES[name]
    assert teacher.fold == fold
    assert teacher.num_channels == channels
    assert teacher.image_size == grid_size * 16  # downsample * fold = 16 for all three
    tokens = teacher(images(2, 14 * grid_size))  # tower resolution differs from the VAE input
    assert tokens.shape == (2, grid_size**2, channels)
    assert tokens.dtype == torch.float32


def test_vae_input_size_for_siglip_grid():
    assert vae_teacher("flux", 27).image_size == 432
    assert vae_teacher("kl16", 27).image_size == 432
    assert vae_teacher("sd", 24, vae_fold=1).image_size == 192  # explicit fold overrides the default


def test_vae_folding_channel_order_matches_reference():
    teacher = vae_teacher("flux", 3, latent_sample="mode")
    pixel_values = images(2, 48)
    latents = teacher.encode_latents(pixel_values)
    tokens = teacher(pixel_values)
    assert latents.shape == (2, 16, 6, 6)
    # Reference order: channel = c * 4 + row_offset * 2 + col_offset, token = row * grid + col.
    for b, c, row, col, dr, dc in [(0, 0, 0, 0, 0, 1), (0, 3, 1, 2, 1, 0), (1, 15, 2, 2, 1, 1), (1, 7, 2, 0, 0, 1)]:
        assert tokens[b, row * 3 + col, c * 4 + dr * 2 + dc] == latents[b, c, 2 * row + dr, 2 * col + dc]
    # The full tensor, against an explicit loop.
    reference = torch.empty_like(tokens)
    for c in range(16):
        for dr in range(2):
            for dc in range(2):
                window = latents[:, c, dr::2, dc::2]  # (B, 3, 3)
                reference[:, :, c * 4 + dr * 2 + dc] = window.reshape(2, 9)
    torch.testing.assert_close(tokens, reference, rtol=0, atol=0)


def test_vae_latents_equal_manual_mode_shift_scale():
    teacher = vae_teacher("flux", 2, latent_sample="mode")
    pixel_values = images(2, 28)
    vae = teacher.vae
    with torch.no_grad():
        unit = (pixel_values * 0.5 + 0.5) * 2 - 1
        unit = F.interpolate(unit, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        mode = vae.encode(unit).latent_dist.mode()
    expected = (mode - 0.1159) * 0.3611
    torch.testing.assert_close(teacher.encode_latents(pixel_values), expected)


def test_vae_sample_is_reproducible_with_generator():
    teacher = vae_teacher("sd", 2, latent_sample="sample")
    pixel_values = images(1, 32)
    first = teacher(pixel_values, generator=torch.Generator().manual_seed(1))
    again = teacher(pixel_values, generator=torch.Generator().manual_seed(1))
    other = teacher(pixel_values, generator=torch.Generator().manual_seed(2))
    teacher.latent_sample = "mode"
    mode = teacher(pixel_values)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, mode)


def test_vae_decode_unfolds_unscales_and_maps_to_unit_range():
    teacher = vae_teacher("flux", 2, latent_sample="mode")
    tokens = teacher(images(2, 32))
    with torch.no_grad():
        decoded = teacher.decode(tokens)
        latents = teacher.encode_latents(images(2, 32)) / 0.3611 + 0.1159
        expected = ((teacher.vae.decode(latents).sample + 1) / 2).clamp(0, 1)
    assert decoded.shape == (2, 3, 32, 32)
    assert decoded.min() >= 0 and decoded.max() <= 1
    torch.testing.assert_close(decoded, expected)


def test_vae_decode_lets_gradient_reach_tokens_but_not_parameters():
    teacher = vae_teacher("sd", 2, latent_sample="mode")
    tokens = teacher(images(1, 32)).requires_grad_(True)
    teacher.decode(tokens, clamp=False).square().mean().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in teacher.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# Pixel teacher
# ---------------------------------------------------------------------------------------------------------------------


def test_pixel_decode_inverts_patchify():
    teacher = build_teacher(objective(target="pixel", pixel_patch_size=4), grid_size=3)
    pixel_values = images(2, 12)
    tokens = teacher(pixel_values)
    assert tokens.shape == (2, 9, 48)
    assert list(teacher.parameters()) == []
    unit = pixel_values * 0.5 + 0.5
    torch.testing.assert_close(teacher.decode(tokens), unit, rtol=0, atol=1e-6)
    # Channel order (row, col, rgb) and raster token order, on a few entries.
    for b, token_row, token_col, row, col, rgb in [(0, 0, 0, 0, 0, 0), (1, 2, 1, 3, 0, 2), (0, 1, 2, 2, 3, 1)]:
        channel = (row * 4 + col) * 3 + rgb
        pixel = pixel_values[b, rgb, token_row * 4 + row, token_col * 4 + col]
        assert tokens[b, token_row * 3 + token_col, channel] == pixel


def test_pixel_norm_normalises_each_patch_and_decodes_with_reference():
    teacher = build_teacher(objective(target="pixel", pixel_patch_size=4, pixel_norm=True), grid_size=2)
    pixel_values = images(2, 8)
    tokens = teacher(pixel_values)
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, 4), rtol=0, atol=1e-5)
    torch.testing.assert_close(tokens.var(-1), torch.ones(2, 4), rtol=0, atol=1e-3)
    restored = teacher.decode(tokens, pixel_values=pixel_values)
    torch.testing.assert_close(restored, pixel_values * 0.5 + 0.5, rtol=0, atol=1e-4)
    display = teacher.decode(tokens)
    assert display.shape == (2, 3, 8, 8) and display.min() >= 0 and display.max() <= 1


# ---------------------------------------------------------------------------------------------------------------------
# Feature teacher
# ---------------------------------------------------------------------------------------------------------------------

TINY_VIT = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
TINY_VIT_28 = {"image_size": 28, "patch_size": 7, **TINY_VIT}  # a 4x4 patch grid
FEATURE_TEACHERS = {
    # name: (config, number of prefix tokens): CLS + 4 registers, CLS, CLS + distillation token
    "dinov2_registers": ({"model_type": "dinov2_with_registers", "num_register_tokens": 4, **TINY_VIT_28}, 5),
    "clip_vision": ({"model_type": "clip_vision_model", **TINY_VIT_28}, 1),
    "deit": ({"model_type": "deit", **TINY_VIT_28}, 2),
}


def feature_teacher(name: str, grid_size: int, **kwargs) -> RossFeatureTeacher:
    torch.manual_seed(0)
    config = objective(
        target="features",
        teacher_config=FEATURE_TEACHERS[name][0],
        teacher_image_mean=CLIP_MEAN,
        teacher_image_std=CLIP_STD,
        **kwargs,
    )
    return build_teacher(config, grid_size)


@pytest.mark.parametrize("name", list(FEATURE_TEACHERS))
def test_feature_teacher_drops_prefix_tokens(name):
    teacher = feature_teacher(name, grid_size=4, feature_layer=-2)
    pixel_values = images(2, 16)
    features = teacher(pixel_values)
    assert features.shape == (2, 16, 16)
    # Manual: re-normalise to the teacher's statistics at its own size, take the layer, drop the prefix.
    unit = F.interpolate(pixel_values * 0.5 + 0.5, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = teacher.model(pixel_values=(unit - mean) / std, output_hidden_states=True).hidden_states[-2]
    num_prefix = FEATURE_TEACHERS[name][1]
    assert hidden.shape[1] == 16 + num_prefix
    torch.testing.assert_close(features, hidden[:, num_prefix:])


def test_feature_teacher_interpolates_to_token_grid():
    teacher = feature_teacher("clip_vision", grid_size=3)
    features = teacher(images(2, 21))
    assert features.shape == (2, 9, teacher.num_channels)
    teacher_grid = feature_teacher("clip_vision", grid_size=4)(images(2, 21))  # the teacher's own 4x4 grid
    teacher_grid = teacher_grid.transpose(1, 2).reshape(2, 16, 4, 4)
    expected = F.interpolate(teacher_grid, size=(3, 3), mode="bilinear", align_corners=False)
    torch.testing.assert_close(features, expected.flatten(2).transpose(1, 2))


def test_feature_teacher_requires_normalisation():
    config = objective(target="features", teacher_config=FEATURE_TEACHERS["clip_vision"][0])
    with pytest.raises(ValueError, match="teacher_image_mean"):
        build_teacher(config, 4)


# ---------------------------------------------------------------------------------------------------------------------
# Frozen, no graph, fp32
# ---------------------------------------------------------------------------------------------------------------------


def all_teachers():
    return {
        "vae": (vae_teacher("sd", 2, latent_sample="mode"), 32),
        "pixel": (build_teacher(objective(target="pixel", pixel_patch_size=4), 2), 8),
        "features": (feature_teacher("dinov2_registers", 4), 28),
    }


def test_no_gradient_or_graph_reaches_teachers():
    for name, (teacher, size) in all_teachers().items():
        assert not teacher.training, name
        assert all(not parameter.requires_grad for parameter in teacher.parameters()), name
        # Even if a loader re-enabled gradients on the parameters, the forward keeps no graph.
        teacher.requires_grad_(True)
        pixel_values = images(1, size).requires_grad_(True)
        tokens = teacher(pixel_values)
        assert not tokens.requires_grad and tokens.grad_fn is None, name


@pytest.mark.parametrize("name", ["vae", "features"])
def test_bf16_teacher_returns_fp32(name):
    teacher, size = all_teachers()[name]
    pixel_values = images(2, size)
    reference = teacher(pixel_values)
    teacher.to(torch.bfloat16)
    tokens = teacher(pixel_values.to(torch.bfloat16))
    assert tokens.dtype == torch.float32
    assert (tokens - reference).abs().mean() < 0.1 * reference.abs().mean()


def test_autocast_is_disabled_inside_teachers():
    for name, (teacher, size) in all_teachers().items():
        pixel_values = images(2, size)
        reference = teacher(pixel_values)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tokens = teacher(pixel_values)
        assert tokens.dtype == torch.float32, name
        torch.testing.assert_close(tokens, reference, rtol=0, atol=0)


def test_build_teacher_disabled_and_bad_inputs():
    assert build_teacher(objective(objective="none"), 4) is None
    teacher = build_teacher(objective(target="pixel", pixel_patch_size=2), 2)
    with pytest.raises(ValueError, match=r"\(2, 4, 4\)"):
        teacher(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="teacher_config"):
        build_teacher(objective(target="vae"), 2)


class _WrapperConfig(PreTrainedConfig):
    model_type = "ross_teacher_wrapper_test"


class _Wrapper(PreTrainedModel):
    config_class = _WrapperConfig

    def __init__(self, config, teacher):
        super().__init__(config)
        self.head = torch.nn.Linear(2, 2)
        self.teacher = teacher

    def _init_weights(self, module):
        for parameter in module.parameters(recurse=False):
            torch.nn.init.zeros_(parameter)


def test_protect_from_init_survives_post_init():
    teacher = vae_teacher("sd", 2)
    before = {key: value.clone() for key, value in teacher.state_dict().items()}
    wrapper = _Wrapper(_WrapperConfig(), protect_from_init(teacher))
    wrapper.post_init()
    assert torch.count_nonzero(wrapper.head.weight) == 0  # the wrapper's own init did run
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    freeze(wrapper.teacher)
    assert not wrapper.teacher.training and not any(p.requires_grad for p in wrapper.teacher.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# Loading the real teacher
# ---------------------------------------------------------------------------------------------------------------------


def test_load_vae_source_from_hub_like_folder(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAES["flux"][0])
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "config.json").is_file()
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()

    config = objective(target="vae", teacher=str(tmp_path), teacher_subfolder="vae", latent_sample="mode")
    teacher_config, state_dict, extra = load_teacher_source(config)
    assert extra == {}
    assert teacher_config["latent_channels"] == 16 and teacher_config["shift_factor"] == 0.1159
    expected = vae.state_dict()
    assert set(state_dict) == {f"vae.{key}" for key in expected}
    for key, value in expected.items():
        assert torch.equal(state_dict[f"vae.{key}"], value), key

    # The config round-trips through RossObjectiveConfig and the weights load strictly into the built teacher.
    config.teacher_config = teacher_config
    teacher = build_teacher(RossObjectiveConfig.from_dict(config.to_dict()), grid_size=2)
    teacher.load_state_dict(state_dict, strict=True)
    pixel_values = images(1, 32)
    with torch.no_grad():
        mode = vae.encode(pixel_values.clamp(-1, 1)).latent_dist.mode()
    torch.testing.assert_close(teacher.encode_latents(pixel_values), (mode - 0.1159) * 0.3611)


def test_load_feature_source_with_image_processor(tmp_path):
    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(image_size=28, patch_size=7, **TINY_VIT))
    model.save_pretrained(tmp_path)
    CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(tmp_path)

    config = objective(target="features", teacher=str(tmp_path))
    teacher_config, state_dict, extra = load_teacher_source(config)
    assert teacher_config["model_type"] == "clip_vision_model"
    assert extra["teacher_image_size"] == 28
    torch.testing.assert_close(torch.tensor(extra["teacher_image_mean"]), torch.tensor(CLIP_MEAN))
    for key, value in model.state_dict().items():
        assert torch.equal(state_dict[f"model.{key}"], value), key
    teacher = build_teacher(objective(target="features", teacher_config=teacher_config, **extra), grid_size=4)
    teacher.load_state_dict(state_dict, strict=True)
    assert teacher(images(1, 16)).shape == (1, 16, 16)


def test_load_teacher_source_errors(tmp_path):
    with pytest.raises(ValueError, match="needs `objective_config.teacher`"):
        load_teacher_source(objective(target="vae"))
    missing = str(tmp_path / "does-not-exist")
    with pytest.raises(ValueError, match="does-not-exist"):
        load_teacher_source(objective(target="vae", teacher=missing))
    with pytest.raises(ValueError, match="vae.*does not exist"):
        load_teacher_source(objective(target="vae", teacher=str(tmp_path), teacher_subfolder="vae"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_teacher_source(objective(target="features", teacher=str(tmp_path / "empty")))
    assert load_teacher_source(objective(target="pixel")) == (None, {}, {})
    assert load_teacher_source(objective(objective="none", teacher="anything")) == (None, {}, {})
