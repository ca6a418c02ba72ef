"""Tests of the ROSS^D denoiser, the ROSS^R MLP head, the noise schedule and sampling (`modeling_ross/denoiser.py`).

The reference formulas below (DiT/MAE sin-cos table, DiT timestep sinusoid, iDDPM cosine betas, and a functional DiT
forward over the authors' checkpoint keys) are written independently of the module under test.
"""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeling_ross.configuration_ross import RossObjectiveConfig
from modeling_ross.denoiser import RossDenoiser, RossMLPHead, build_noise_scheduler, sample_tokens


REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_denoiser(self_attention=True, **kwargs):
    defaults = dict(in_channels=8, condition_size=24, hidden_size=32, depth=2, num_heads=4, grid_size=4)
    defaults.update(kwargs)
    return RossDenoiser(self_attention=self_attention, **defaults)


def perturb_(module, std=0.05, seed=0):
    """Give every parameter (including the zero-initialised ones) random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return module


# ---------------------------------------------------------------------------------------------------------------
# Independent reference formulas
# ---------------------------------------------------------------------------------------------------------------


def reference_sincos_table(dim, grid):
    """MAE/DiT 2-D sin-cos table in numpy float64: first half encodes the column (w), second half the row (h)."""

    def one_axis(d, positions):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        angles = positions.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32), indexing="ij")
    table = np.concatenate([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], axis=1)
    return torch.from_numpy(table).float()  # (grid * grid, dim), row-major over (row, col)


def reference_timestep_features(t, dim=256, max_period=10000):
    """DiT's TimestepEmbedder.timestep_embedding (GLIDE): [cos(t f_k), sin(t f_k)], f_k = max_period^(-k / half)."""
    half = dim // 2
    freqs = torch.tensor([math.exp(-math.log(max_period) * k / half) for k in range(half)], dtype=torch.float64)
    angles = t.double()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


def reference_cosine_betas(num_steps, max_beta=0.999):
    """iDDPM cosine schedule: beta_i = min(1 - abar((i + 1) / T) / abar(i / T), max_beta)."""

    def alpha_bar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor(
        [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)],
        dtype=torch.float64,
    )


def random_reference_state_dict(in_channels, condition_size, hidden, depth, grid, mlp_ratio=4.0, seed=0):
    """A random state dict with the authors' keys and shapes (`ross/model/multimodal_denoiser/denoiser_dit.py`)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(shape, generator=generator) * 0.1

    mlp = int(hidden * mlp_ratio)
    state = {
        "net.pos_embed": reference_sincos_table(hidden, grid)[None],
        "net.x_embedder.proj.weight": rand(hidden, in_channels, 1, 1),
        "net.x_embedder.proj.bias": rand(hidden),
        "net.t_embedder.mlp.0.weight": rand(hidden, 256),
        "net.t_embedder.mlp.0.bias": rand(hidden),
        "net.t_embedder.mlp.2.weight": rand(hidden, hidden),
        "net.t_embedder.mlp.2.bias": rand(hidden),
        "net.z_embedder.1.weight": rand(hidden, condition_size),
        "net.z_embedder.1.bias": rand(hidden),
        "net.final_layer.linear.weight": rand(in_channels, hidden),
        "net.final_layer.linear.bias": rand(in_channels),
        "net.final_layer.adaLN_modulation.1.weight": rand(2 * hidden, hidden),
        "net.final_layer.adaLN_modulation.1.bias": rand(2 * hidden),
    }
    for i in range(depth):
        for name, shape in [
            ("attn.qkv", (3 * hidden, hidden)),
            ("attn.proj", (hidden, hidden)),
            ("mlp.fc1", (mlp, hidden)),
            ("mlp.fc2", (hidden, mlp)),
            ("adaLN_modulation.1", (6 * hidden, hidden)),
        ]:
            state[f"net.blocks.{i}.{name}.weight"] = rand(*shape)
            state[f"net.blocks.{i}.{name}.bias"] = rand(shape[0])
    return state


def convert_reference_state_dict(reference):
    """The mapping table of the `denoiser.py` docstring, as code."""
    converted = {}
    for key, value in reference.items():
        key = key.removeprefix("net.")
        if key == "pos_embed":  # recomputed in forward
            continue
        if key.startswith("x_embedder.proj."):
            key = key.replace("x_embedder.proj.", "x_embedder.")
            value = value.flatten(1) if value.ndim == 4 else value  # (H, C, 1, 1) 1x1 conv -> (H, C) linear
        key = key.replace("t_embedder.mlp.0.", "t_embedder.linear_1.")
        key = key.replace("t_embedder.mlp.2.", "t_embedder.linear_2.")
        key = key.replace("z_embedder.1.", "z_embedder.").replace("adaLN_modulation.1.", "adaLN_modulation.")
        converted[key] = value
    return converted


def reference_forward(state, noisy, t, condition, grid, num_heads):
    """DiT forward of the reference code, written functionally: images as (B, C, h, w), 1x1 conv embed, explicit
    softmax attention, ln_pre (eps 1e-5) on the condition before `z_embedder`."""

    def linear(x, name):
        return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    def ln(x, eps=1e-6):
        return F.layer_norm(x, x.shape[-1:], eps=eps)

    batch, tokens, channels = noisy.shape
    image = noisy.transpose(1, 2).reshape(batch, channels, grid, grid)
    x = F.conv2d(image, state["net.x_embedder.proj.weight"], state["net.x_embedder.proj.bias"])
    x = x.flatten(2).transpose(1, 2) + state["net.pos_embed"]
    hidden = x.shape[-1]
    t_emb = linear(F.silu(linear(reference_timestep_features(t), "net.t_embedder.mlp.0")), "net.t_embedder.mlp.2")
    z = linear(F.silu(ln(condition, eps=1e-5)), "net.z_embedder.1")
    c = t_emb[:, None, :] + z
    block_index = 0
    while f"net.blocks.{block_index}.attn.qkv.weight" in state:
        prefix = f"net.blocks.{block_index}"
        mods = linear(F.silu(c), f"{prefix}.adaLN_modulation.1").chunk(6, dim=-1)
        h = ln(x) * (1 + mods[1]) + mods[0]
        qkv = linear(h, f"{prefix}.attn.qkv").reshape(batch, tokens, 3, num_heads, hidden // num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hidden // num_heads), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, tokens, hidden)
        x = x + mods[2] * linear(attended, f"{prefix}.attn.proj")
        h = ln(x) * (1 + mods[4]) + mods[3]
        h = linear(F.gelu(linear(h, f"{prefix}.mlp.fc1"), approximate="tanh"), f"{prefix}.mlp.fc2")
        x = x + mods[5] * h
        block_index += 1
    shift, scale = linear(F.silu(c), "net.final_layer.adaLN_modulation.1").chunk(2, dim=-1)
    return linear(ln(x) * (1 + scale) + shift, "net.final_layer.linear")


# ---------------------------------------------------------------------------------------------------------------
# Denoiser
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize(
    "batch, grid, channels, condition_size", [(1, 2, 4, 16), (3, 3, 16, 40), (2, 4, 64, 24), (5, 1, 3, 8)]
)
def test_output_shape(self_attention, batch, grid, channels, condition_size):
    denoiser = tiny_denoiser(self_attention, in_channels=channels, condition_size=condition_size, grid_size=grid)
    perturb_(denoiser)
    tokens = grid * grid
    noisy, condition = torch.randn(batch, tokens, channels), torch.randn(batch, tokens, condition_size)
    out = denoiser(noisy, torch.randint(0, 1000, (batch,)), condition)
    assert out.shape == (batch, tokens, channels)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_fresh_denoiser_outputs_exact_zeros_and_gradients_reach_every_parameter():
    denoiser = tiny_denoiser()
    noisy, condition = torch.randn(2, 16, 8), torch.randn(2, 16, 24)
    t = torch.tensor([0, 999])
    assert torch.equal(denoiser(noisy, t, condition), torch.zeros(2, 16, 8))

    perturb_(denoiser)
    denoiser(noisy, t, condition).pow(2).mean().backward()
    for name, parameter in denoiser.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_initialisation_follows_dit():
    denoiser = RossDenoiser(8, 24, hidden_size=64, depth=2, num_heads=4, grid_size=4)
    assert torch.equal(denoiser.x_embedder.bias, torch.zeros(64))
    bound = math.sqrt(6 / (64 + 3 * 64))  # xavier_uniform on the fused qkv (fan_in H, fan_out 3H)
    qkv = denoiser.blocks[0].attn.qkv.weight
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    assert 0.015 < denoiser.z_embedder.weight.std() < 0.025  # normal(0.02)
    for block in denoiser.blocks:
        assert not block.adaLN_modulation.weight.any() and not block.adaLN_modulation.bias.any()


def test_matches_reference_dit_forward_through_the_key_mapping():
    in_channels, condition_size, hidden, depth, grid, heads = 12, 20, 32, 2, 3, 4
    reference = random_reference_state_dict(in_channels, condition_size, hidden, depth, grid)
    denoiser = RossDenoiser(in_channels, condition_size, hidden, depth, heads, grid_size=grid)
    denoiser.load_state_dict(convert_reference_state_dict(reference), strict=True)

    generator = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, grid * grid, in_channels, generator=generator)
    condition = torch.randn(2, grid * grid, condition_size, generator=generator) * 3 + 1
    t = torch.tensor([7, 613])
    expected = reference_forward(reference, noisy, t, condition, grid, heads)
    actual = denoiser(noisy, t, condition)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_position_embedding_equals_dit_sincos_table():
    for hidden, grid in [(32, 4), (1024, 27), (64, 24)]:
        denoiser = RossDenoiser(4, 8, hidden_size=hidden, depth=0, num_heads=4, grid_size=grid)
        table = denoiser.position_embedding(torch.device("cpu"), torch.float32)
        assert table.shape == (grid * grid, hidden)
        torch.testing.assert_close(table, reference_sincos_table(hidden, grid), rtol=0, atol=1e-6)


def test_timestep_embedding_equals_dit_formula():
    denoiser = tiny_denoiser()
    perturb_(denoiser)
    t = torch.tensor([0, 1, 17, 500, 999])
    features = denoiser.time_proj(t)
    expected = reference_timestep_features(t)  # float64 angles; DiT and diffusers both form t * f_k in float32,
    # whose rounding at t ~ 1000 (ulp(999) ~ 6e-5) bounds any float32 implementation's agreement.
    torch.testing.assert_close(features[:3], expected[:3], rtol=0, atol=2e-6)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-4)
    # DiT's own float32 recipe, exp(-ln(1e4) * k / 128) then t * f in float32, gives the very same bits.
    dit_freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    dit_angles = t.float()[:, None] * dit_freqs[None, :]
    assert torch.equal(features, torch.cat([dit_angles.cos(), dit_angles.sin()], dim=-1))
    mlp = denoiser.t_embedder
    expected = F.silu(features @ mlp.linear_1.weight.T + mlp.linear_1.bias) @ mlp.linear_2.weight.T + mlp.linear_2.bias
    torch.testing.assert_close(mlp(features), expected)


def test_condition_is_layer_normed_inside_the_denoiser():
    """Scaling and shifting a token's condition leaves the output unchanged: LN(a x + b) == LN(x)."""
    denoiser = perturb_(tiny_denoiser())
    noisy, condition, t = torch.randn(2, 16, 8), torch.randn(2, 16, 24), torch.tensor([5, 50])
    expected = denoiser(noisy, t, condition)
    torch.testing.assert_close(denoiser(noisy, t, 4.0 * condition + 3.0), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("self_attention", [True, False])
def test_self_attention_mixes_tokens(self_attention):
    denoiser = perturb_(tiny_denoiser(self_attention), std=0.2)
    noisy, condition, t = torch.randn(1, 16, 8), torch.randn(1, 16, 24), torch.tensor([300])
    order = torch.cat([torch.tensor([0]), torch.randperm(15, generator=torch.Generator().manual_seed(0)) + 1])
    token0 = denoiser(noisy, t, condition)[:, 0]
    token0_permuted = denoiser(noisy[:, order], t, condition[:, order])[:, 0]
    if self_attention:
        assert (token0 - token0_permuted).abs().max() > 1e-4
    else:
        torch.testing.assert_close(token0, token0_permuted, rtol=0, atol=0)
        assert not hasattr(denoiser.blocks[0], "attn")
        assert denoiser.blocks[0].adaLN_modulation.out_features == 3 * 32


def test_shape_errors_name_the_numbers():
    denoiser = tiny_denoiser()
    with pytest.raises(ValueError, match="9 tokens.*4x4 = 16"):
        denoiser(torch.randn(1, 9, 8), torch.tensor([1]), torch.randn(1, 9, 24))
    with pytest.raises(ValueError, match="7 channels.*expects 8"):
        denoiser(torch.randn(1, 16, 7), torch.tensor([1]), torch.randn(1, 16, 24))
    with pytest.raises(ValueError, match=r"\(1, 16, 24\)"):
        denoiser(torch.randn(1, 16, 8), torch.tensor([1]), torch.randn(1, 16, 20))


def test_scalar_timestep_is_broadcast():
    denoiser = perturb_(tiny_denoiser())
    noisy, condition = torch.randn(3, 16, 8), torch.randn(3, 16, 24)
    expected = denoiser(noisy, torch.full((3,), 42), condition)
    torch.testing.assert_close(denoiser(noisy, torch.tensor(42), condition), expected)


def test_overfits_a_fixed_condition_target_pair():
    torch.manual_seed(0)
    denoiser = tiny_denoiser(grid_size=3)
    scheduler = build_noise_scheduler()
    condition, target = torch.randn(2, 9, 24), torch.randn(2, 9, 8)

    def epsilon_loss(draws, t, noise):
        """Repeat the pair `draws` times along the batch (as the reference's 4 noise draws), noise, predict, MSE."""
        noisy = scheduler.add_noise(target.repeat(draws, 1, 1), noise, t)
        return F.mse_loss(denoiser(noisy, t, condition.repeat(draws, 1, 1)), noise)

    generator = torch.Generator().manual_seed(1)
    eval_t, eval_noise = torch.randint(0, 1000, (64,), generator=generator), torch.randn(64, 9, 8, generator=generator)

    def evaluate():
        with torch.no_grad():
            return epsilon_loss(32, eval_t, eval_noise).item()

    start = evaluate()
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=2e-3, weight_decay=0)
    for _ in range(100):
        loss = epsilon_loss(4, torch.randint(0, 1000, (8,)), torch.randn(8, 9, 8))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = evaluate()
    assert start > 0.8  # a fresh denoiser predicts 0, so the loss is E[eps^2] ~ 1
    assert end < 0.5 * start, (start, end)


# ---------------------------------------------------------------------------------------------------------------
# Schedule and sampling
# ---------------------------------------------------------------------------------------------------------------


def test_noise_scheduler_from_objective_config():
    scheduler = build_noise_scheduler(RossObjectiveConfig())
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.clip_sample is False  # latents are not in [-1, 1]
    torch.testing.assert_close(scheduler.betas.double(), reference_cosine_betas(1000), rtol=0, atol=1e-6)

    config = RossObjectiveConfig(num_train_timesteps=50, beta_schedule="linear", prediction_type="v_prediction")
    custom = build_noise_scheduler(config).config
    assert (custom.num_train_timesteps, custom.beta_schedule, custom.prediction_type) == (50, "linear", "v_prediction")


def test_add_noise_round_trip_and_velocity():
    scheduler = build_noise_scheduler()
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 9, 5, generator=generator), torch.randn(6, 9, 5, generator=generator)
    t = torch.tensor([0, 1, 250, 500, 900, 999])
    noisy = scheduler.add_noise(x0, noise, t)
    alpha_bar = scheduler.alphas_cumprod[t].view(-1, 1, 1)
    torch.testing.assert_close(noisy, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise)
    recovered = (noisy - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()
    torch.testing.assert_close(recovered, x0, rtol=1e-4, atol=2e-3)  # 1/sqrt(alpha_bar_999) ~ 160 amplifies rounding
    torch.testing.assert_close(recovered[:-1], x0[:-1], rtol=1e-5, atol=1e-5)
    velocity = scheduler.get_velocity(x0, noise, t)
    torch.testing.assert_close(velocity, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0)


def test_sample_tokens_shape_and_determinism():
    from diffusers import DDIMScheduler

    denoiser = perturb_(tiny_denoiser(), std=0.02)
    condition = torch.randn(2, 16, 24)
    first = sample_tokens(denoiser, condition, 8, num_inference_steps=4, generator=torch.Generator().manual_seed(3))
    second = sample_tokens(denoiser, condition, 8, num_inference_steps=4, generator=torch.Generator().manual_seed(3))
    other = sample_tokens(denoiser, condition, 8, num_inference_steps=4, generator=torch.Generator().manual_seed(4))
    assert first.shape == (2, 16, 8) and first.dtype == torch.float32 and torch.isfinite(first).all()
    assert torch.equal(first, second) and not torch.equal(first, other)

    ddpm = build_noise_scheduler(RossObjectiveConfig(prediction_type="v_prediction"))
    ddim = DDIMScheduler.from_config(ddpm.config)
    generator = torch.Generator().manual_seed(0)
    draw = sample_tokens(denoiser, condition, 8, scheduler=ddim, num_inference_steps=3, generator=generator)
    assert draw.shape == (2, 16, 8) and torch.isfinite(draw).all()
    assert ddim.num_inference_steps is None  # the caller's scheduler is not mutated


def test_sample_tokens_with_a_perfect_epsilon_predictor_recovers_the_target():
    """If J returns the true noise, DDIM (eta=0) lands on x0 exactly: checks the sampler wiring end to end."""
    from diffusers import DDIMScheduler

    target = torch.randn(1, 4, 3)
    scheduler = DDIMScheduler.from_config(build_noise_scheduler().config)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))

        def forward(self, noisy, t, condition):
            alpha_bar = scheduler.alphas_cumprod[t].view(-1, 1, 1)
            return (noisy - alpha_bar.sqrt() * target) / (1 - alpha_bar).sqrt()

    draw = sample_tokens(Oracle(), torch.zeros(1, 4, 2), 3, scheduler=scheduler, num_inference_steps=10)
    torch.testing.assert_close(draw, target, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# MLP head, optional dependency, parameter budget
# ---------------------------------------------------------------------------------------------------------------


def test_learned_position_table_starts_as_sincos_is_trainable_and_is_what_forward_adds():
    denoiser = tiny_denoiser(position_embedding="learned")
    assert denoiser.pos_embed.shape == (1, 16, 32) and denoiser.pos_embed.requires_grad
    torch.testing.assert_close(denoiser.pos_embed[0].detach(), reference_sincos_table(32, 4), rtol=0, atol=1e-6)
    assert "pos_embed" not in dict(tiny_denoiser().named_parameters())  # "sincos": nothing stored

    perturb_(denoiser)
    noisy, condition, t = torch.randn(2, 16, 8), torch.randn(2, 16, 24), torch.tensor([3, 800])
    out = denoiser(noisy, t, condition)
    out.pow(2).mean().backward()
    assert denoiser.pos_embed.grad.abs().sum() > 0
    # Forward adds the stored table: shifting it shifts the prediction; a fixed-table twin differs.
    fixed = tiny_denoiser()
    fixed.load_state_dict({k: v for k, v in denoiser.state_dict().items() if k != "pos_embed"})
    assert (fixed(noisy, t, condition) - out).abs().max() > 1e-3
    with torch.no_grad():
        denoiser.pos_embed.copy_(fixed.sincos_table()[None])
    torch.testing.assert_close(denoiser(noisy, t, condition), fixed(noisy, t, condition), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="position_embedding"):
        tiny_denoiser(position_embedding="rope")


@pytest.mark.parametrize("head", ["denoiser", "mlp"])
def test_fp32_compute_with_bf16_weights_equals_fp32_maths_on_the_rounded_weights(head):
    """compute_dtype="float32" (the authors' fp32 autocast): bf16 weights, fp32 maths, also under a bf16 autocast."""
    torch.manual_seed(0)
    if head == "denoiser":
        make = lambda **kw: perturb_(tiny_denoiser(position_embedding="learned", **kw), std=0.2)
        noisy, condition, t = torch.randn(3, 16, 8), torch.randn(3, 16, 24) * 2, torch.tensor([0, 500, 999])
        call = lambda m: m(noisy, t, condition)
    else:
        make = lambda **kw: perturb_(RossMLPHead(24, 8, hidden_size=40, **kw), std=0.2)
        condition = torch.randn(3, 16, 24) * 2
        call = lambda m: m(condition)
    model = make().to(torch.bfloat16)
    reference = make().float()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})  # the rounded weights, in fp32
    expected = call(reference)
    out = call(model)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = call(model)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, expected, rtol=1e-5, atol=1e-6)
    out.pow(2).mean().backward()  # gradients reach the bf16 weights through the casts
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters())

    # compute_dtype="weights": bf16 maths, visibly further from the fp32 result.
    lowered = make(compute_dtype="weights").to(torch.bfloat16)
    lowered.load_state_dict(model.state_dict())
    low = call(lowered)
    assert low.dtype == torch.bfloat16
    assert (low.float() - expected).abs().max() > 10 * (out - expected).abs().max()


def test_mlp_head():
    head = RossMLPHead(24, 12, hidden_size=40)
    condition = torch.randn(2, 9, 24) * 5 + 2
    out = head(condition)
    assert out.shape == (2, 9, 12)
    variance = condition.var(-1, unbiased=False, keepdim=True)
    normed = (condition - condition.mean(-1, keepdim=True)) / torch.sqrt(variance + 1e-5)
    expected = F.gelu(normed @ head.fc1.weight.T + head.fc1.bias) @ head.fc2.weight.T + head.fc2.bias
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert RossMLPHead(24, 12).fc1.out_features == 24  # hidden defaults to the LLM width
    assert not any("norm" in name for name, _ in head.named_parameters())  # parameter-free LayerNorm
    # initialize_weights is torch's default Linear init (kaiming-uniform bound 1/sqrt(fan_in)), as the authors' head.
    with torch.no_grad():
        head.fc1.weight.zero_()
    head.initialize_weights()
    assert 0.9 / math.sqrt(24) < head.fc1.weight.abs().max() <= 1 / math.sqrt(24)


def test_importable_without_diffusers(monkeypatch):
    """The file imports diffusers lazily: the MLP head works without it and the denoiser says what is missing."""
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers...` raise ImportError
    spec = importlib.util.spec_from_file_location(
        "modeling_ross._denoiser_without_diffusers", REPO_ROOT / "modeling_ross" / "denoiser.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not module.is_diffusers_available()
    assert module.RossMLPHead(8, 4)(torch.randn(1, 2, 8)).shape == (1, 2, 4)
    with pytest.raises(ImportError, match="diffusers"):
        module.RossDenoiser(4, 8)


def test_reference_7b_parameter_budget_script(capsys):
    spec = importlib.util.spec_from_file_location("denoiser_params", REPO_ROOT / "bench" / "denoiser_params.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main() == 0
    printed = capsys.readouterr().out
    assert "total without the position table: 63,884,352" in printed
    assert "'learned', the authors'): 64,630,848" in printed
    with torch.device("meta"):  # the stored table is exactly the difference
        learned = RossDenoiser(**script.REFERENCE, position_embedding="learned")
    assert sum(p.numel() for p in learned.parameters()) == 64_630_848


def test_precision_bench_shows_fp32_maths_closer_to_fp32(capsys):
    spec = importlib.util.spec_from_file_location("denoiser_precision", REPO_ROOT / "bench" / "denoiser_precision.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = script.main(["--size", "tiny"])
    fp32, authors, low = results.values()
    assert fp32["prediction_rel_error"] == 0 and authors["maths_rel_error"] == 0
    assert 0 < authors["prediction_rel_error"] < low["prediction_rel_error"] and low["maths_rel_error"] > 0
