"""The training-only heads of ROSS: the ROSS^D denoiser, the ROSS^R MLP head, the noise schedule and sampling.

`RossDenoiser` is the reference "DiT-style" denoiser J(z_t ; x_{i<=N}, t) of ROSS^D: per-token adaLN-Zero blocks
conditioned on c_i = TimestepEmbed(t) + Linear(SiLU(LayerNorm(x_i))), where x_i is the LLM's final-norm hidden state
at image position i and token i of the condition sits on the same grid cell as latent token i. It is numerically
equivalent to `DiT` in the authors' `ross/model/multimodal_denoiser/denoiser_dit.py` (itself
facebookresearch/DiT `models.py` with patch size 1 and a per-token condition instead of a class label), with the
condition LayerNorm (`ln_pre` of their `RossDenoiser`, applied in `compute_vm_loss` of `ross/model/ross_arch.py`)
moved inside `forward`.

Parameter names, reference checkpoint (prefix `model.mm_inv_projector.`) -> this module, for hidden size H, condition
size D, latent channels C and depth L:

| reference key (`.weight` and `.bias` each)  | weight shape  | ours                               |
|---------------------------------------------|---------------|------------------------------------|
| `net.x_embedder.proj`  (1x1 Conv2d)         | (H, C, 1, 1)  | `x_embedder` (Linear, weight (H, C)) |
| `net.t_embedder.mlp.0`                      | (H, 256)      | `t_embedder.linear_1`              |
| `net.t_embedder.mlp.2`                      | (H, H)        | `t_embedder.linear_2`              |
| `net.z_embedder.1`                          | (H, D)        | `z_embedder`                       |
| `net.blocks.{l}.attn.qkv`                   | (3H, H)       | `blocks.{l}.attn.qkv`              |
| `net.blocks.{l}.attn.proj`                  | (H, H)        | `blocks.{l}.attn.proj`             |
| `net.blocks.{l}.mlp.fc1`                    | (4H, H)       | `blocks.{l}.mlp.fc1`               |
| `net.blocks.{l}.mlp.fc2`                    | (H, 4H)       | `blocks.{l}.mlp.fc2`               |
| `net.blocks.{l}.adaLN_modulation.1`         | (6H, H)       | `blocks.{l}.adaLN_modulation`      |
| `net.final_layer.adaLN_modulation.1`        | (2H, H)       | `final_layer.adaLN_modulation`     |
| `net.final_layer.linear`                    | (C, H)        | `final_layer.linear`               |
| `net.pos_embed` (nn.Parameter)              | (1, N, H)     | `pos_embed` with `position_embedding="learned"`; none with `"sincos"` (recomputed in `forward`) |
| `ln_pre`, `norm1`, `norm2`, `norm_final`    | no parameters | none (parameter-free LayerNorms)   |

Biases have the weight's first dimension. With `self_attention=False` a block has no `attn` and its
`adaLN_modulation` is (3H, H) (the reference code has no such variant).

The SiLU that precedes `z_embedder` and every `adaLN_modulation` linear is applied functionally, so the index-free
names above replace the reference's `nn.Sequential` indices. The denoiser is agnostic to what the C channels hold (e.g.
2x2 latent windows folded into channels by the teacher).

Position table. The reference creates `pos_embed` as a frozen sin-cos table, but its stage 1 (`tune_mm_mlp_adapter`)
sets `requires_grad=True` on every denoiser parameter, so the table is trained in stage 1 and then kept frozen in
stage 2 (built frozen, then loaded). `position_embedding="learned"` stores it as a parameter initialised to the
sin-cos table (needed to load the released weights exactly); `"sincos"` recomputes the fixed table on each call.

Precision. The reference runs the whole visual loss under `torch.autocast("cuda", dtype=torch.float32)`: with bf16
weights (DeepSpeed bf16) every matmul still runs in fp32. `compute_dtype="float32"` does the same on every device
(CPU autocast has no fp32 mode): autocast is switched off inside the denoiser, its inputs are cast to fp32, and its
linears (`RossLinear`) cast their weights to the input's dtype. `compute_dtype="weights"` computes in the weights'
dtype instead.

`RossMLPHead` is the per-token MLP of the `regress` / `latent2pixel` objectives (ROSS^R). `build_noise_scheduler`
and `sample_tokens` wrap diffusers' schedulers, which own all the noise arithmetic.

diffusers is imported inside a `try`: this file (and `RossMLPHead`) work without it; building `RossDenoiser` or a
scheduler then raises an `ImportError` that says what to install.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_ross import RossObjectiveConfig


try:
    from diffusers import DDPMScheduler
    from diffusers.models.embeddings import Timesteps, get_2d_sincos_pos_embed, get_2d_sincos_pos_embed_from_grid
    from diffusers.utils.torch_utils import randn_tensor

    _DIFFUSERS_IMPORT_ERROR = None
except ImportError as error:  # inference-only installs
    _DIFFUSERS_IMPORT_ERROR = error


# The reference's condition LayerNorm (`ln_pre`) keeps torch's default eps; the DiT norms use 1e-6.
CONDITION_NORM_EPS = 1e-5
DIT_NORM_EPS = 1e-6
# Width of the sinusoidal timestep features fed to the timestep MLP (DiT: `frequency_embedding_size`).
TIMESTEP_FREQUENCY_SIZE = 256


def is_diffusers_available() -> bool:
    return _DIFFUSERS_IMPORT_ERROR is None


def _require_diffusers(what: str) -> None:
    if _DIFFUSERS_IMPORT_ERROR is not None:
        raise ImportError(
            f"{what} needs diffusers (>=0.42.1,<0.43); it is only used to train ROSS^D or to call `reconstruct`. "
            f"Install it with `pip install 'diffusers>=0.42.1,<0.43'`."
        ) from _DIFFUSERS_IMPORT_ERROR


class RossLinear(nn.Linear):
    """`nn.Linear` computed in the dtype of its input: bf16 weights meet fp32 activations in fp32, as under the
    reference's fp32 autocast. Parameters and state-dict keys are those of `nn.Linear`; gradients reach the weights
    through the cast."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(input.dtype)
        return F.linear(input, self.weight.to(input.dtype), bias)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation; `1 + scale` so that a zero-initialised modulation is the identity."""
    return x * (1 + scale) + shift


class RossAttention(nn.Module):
    """Bidirectional multi-head self-attention over the latent tokens, with a fused `qkv` projection.

    The `qkv` output is laid out as (3, num_heads, head_dim) along the last axis, as in timm's `Attention`, so the
    reference weights load unchanged.
    """

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = RossLinear(hidden_size, 3 * hidden_size)
        self.proj = RossLinear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, H) -> (B, N, H). `token_mask` `(B, N)` bool: padding tokens (False) are never attended to."""
        batch_size, num_tokens, hidden_size = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch_size, num_tokens, 3, self.num_heads, -1)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        attn_mask = None if token_mask is None else token_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)  # scale = head_dim ** -0.5
        return self.proj(attended.transpose(1, 2).reshape(batch_size, num_tokens, hidden_size))


class RossMLP(nn.Module):
    """Linear -> GELU(tanh) -> Linear, DiT's block MLP."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = RossLinear(hidden_size, intermediate_size)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = RossLinear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class RossDenoiserBlock(nn.Module):
    """A DiT block with per-token adaLN-Zero conditioning.

    With `self_attention=True`: x += gate_msa * Attn(modulate(LN(x))) ; x += gate_mlp * MLP(modulate(LN(x))), with the
    six modulation vectors (in the reference order shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)
    computed per token from c. With `self_attention=False` (the paper's ablation) the attention branch is absent and
    only (shift_mlp, scale_mlp, gate_mlp) are produced: every token is denoised independently.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, self_attention: bool = True):
        super().__init__()
        self.self_attention = self_attention
        if self_attention:
            self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=DIT_NORM_EPS)
            self.attn = RossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=DIT_NORM_EPS)
        self.mlp = RossMLP(hidden_size, int(hidden_size * mlp_ratio))
        num_modulations = 6 if self_attention else 3
        self.adaLN_modulation = RossLinear(hidden_size, num_modulations * hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, conditioning: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden_states (B, N, H), conditioning (B, N, H), token_mask (B, N) bool or None -> (B, N, H)."""
        modulation = self.adaLN_modulation(F.silu(conditioning)).chunk(6 if self.self_attention else 3, dim=-1)
        if self.self_attention:
            shift_msa, scale_msa, gate_msa, *modulation = modulation
            attended = self.attn(modulate(self.norm1(hidden_states), shift_msa, scale_msa), token_mask)
            hidden_states = hidden_states + gate_msa * attended
        shift_mlp, scale_mlp, gate_mlp = modulation
        return hidden_states + gate_mlp * self.mlp(modulate(self.norm2(hidden_states), shift_mlp, scale_mlp))


class RossDenoiserFinalLayer(nn.Module):
    """Final adaLN (shift, scale) + Linear from the hidden size to the latent channels."""

    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=DIT_NORM_EPS)
        self.adaLN_modulation = RossLinear(hidden_size, 2 * hidden_size)
        self.linear = RossLinear(hidden_size, out_channels)

    def forward(self, hidden_states: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """hidden_states (B, N, H), conditioning (B, N, H) -> (B, N, C)."""
        shift, scale = self.adaLN_modulation(F.silu(conditioning)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(hidden_states), shift, scale))


class RossTimestepEmbedding(nn.Module):
    """DiT's timestep MLP, Linear -> SiLU -> Linear, on the 256 sinusoidal features (diffusers' `TimestepEmbedding`
    with the same parameter names, built from `RossLinear` so that it also computes in fp32 with bf16 weights)."""

    def __init__(self, in_channels: int, hidden_size: int):
        super().__init__()
        self.linear_1 = RossLinear(in_channels, hidden_size)
        self.act = nn.SiLU()
        self.linear_2 = RossLinear(hidden_size, hidden_size)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, 256) -> (B, H)."""
        return self.linear_2(self.act(self.linear_1(sample)))


class RossDenoiser(nn.Module):
    """The ROSS^D denoiser: predicts the noise (or velocity) of noisy latent tokens given the LLM's visual outputs.

    Args:
        in_channels (`int`): Channels C of a latent token (64 for FLUX latents with 2x2 windows folded in).
        condition_size (`int`): Width D of the LLM hidden states (3584 for Qwen2-7B).
        hidden_size (`int`, defaults to 1024): Width H of the denoiser.
        depth (`int`, defaults to 3): Number of blocks.
        num_heads (`int`, defaults to 16): Attention heads (unused when `self_attention=False`).
        mlp_ratio (`float`, defaults to 4.0): MLP width / H.
        grid_size (`int`, defaults to 27): Side of the square token grid; N must equal `grid_size ** 2`.
        self_attention (`bool`, defaults to `True`): `False` gives the ablation with per-token MLP blocks only.
        position_embedding (`str`, defaults to `"sincos"`): `"sincos"` (fixed table, recomputed) or `"learned"`
            (a `pos_embed` parameter of shape `(1, N, H)` initialised to the sin-cos table, as stored by the reference).
        compute_dtype (`str`, defaults to `"float32"`): `"float32"` (the reference: fp32 maths whatever the weights'
            dtype) or `"weights"` (compute in the weights' dtype).

    Requires diffusers (timestep embedding and position table). A freshly initialised denoiser outputs exactly 0.
    """

    def __init__(
        self,
        in_channels: int,
        condition_size: int,
        hidden_size: int = 1024,
        depth: int = 3,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        grid_size: int = 27,
        self_attention: bool = True,
        position_embedding: str = "sincos",
        compute_dtype: str = "float32",
    ):
        super().__init__()
        _require_diffusers("RossDenoiser")
        if position_embedding not in ("sincos", "learned"):
            raise ValueError(f"position_embedding must be 'sincos' or 'learned', got {position_embedding!r}")
        if compute_dtype not in ("float32", "weights"):
            raise ValueError(f"compute_dtype must be 'float32' or 'weights', got {compute_dtype!r}")
        if self_attention and hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}.")
        if hidden_size % 4 != 0:
            raise ValueError(f"hidden_size={hidden_size} must be a multiple of 4 for the 2-D sin-cos position table.")
        self.in_channels = in_channels
        self.condition_size = condition_size
        self.hidden_size = hidden_size
        self.grid_size = grid_size
        self.position_embedding_type = position_embedding
        self.compute_dtype = compute_dtype

        self.x_embedder = RossLinear(in_channels, hidden_size)
        if position_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, grid_size**2, hidden_size))
        # DiT's TimestepEmbedder == diffusers' sinusoid with (cos, sin) order and frequencies exp(-ln(1e4) * k / 128).
        self.time_proj = Timesteps(TIMESTEP_FREQUENCY_SIZE, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.t_embedder = RossTimestepEmbedding(TIMESTEP_FREQUENCY_SIZE, hidden_size)
        self.z_embedder = RossLinear(condition_size, hidden_size)
        self.blocks = nn.ModuleList(
            [RossDenoiserBlock(hidden_size, num_heads, mlp_ratio, self_attention) for _ in range(depth)]
        )
        self.final_layer = RossDenoiserFinalLayer(hidden_size, in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation. Call it again if an outer `post_init` re-initialised the linears.

        Uses `nn.init` functions only, so transformers' init guard skips weights that were loaded from a checkpoint.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.z_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(self.t_embedder.linear_2.weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the output as 0.
        for module in [*(block.adaLN_modulation for block in self.blocks), self.final_layer.adaLN_modulation]:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        # The learned table starts as the sin-cos one; like transformers' init functions, leave a loaded one alone.
        if self.position_embedding_type == "learned" and not getattr(self.pos_embed, "_is_hf_initialized", False):
            with torch.no_grad():
                self.pos_embed.copy_(self.sincos_table(self.pos_embed.device)[None])

    def sincos_table(self, device: torch.device | None = None) -> torch.Tensor:
        """The fixed 2-D sin-cos table of DiT/MAE, `(grid_size ** 2, H)` in fp32, row-major over the grid.

        diffusers' table equals DiT's when `base_size` is the grid side (positions are then 0..grid-1, not rescaled).
        """
        return get_2d_sincos_pos_embed(
            self.hidden_size, self.grid_size, base_size=self.grid_size, device=device, output_type="pt"
        ).float()

    def position_embedding(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """`(N, H)`: the stored table (`"learned"`) or the sin-cos table recomputed on each call (`"sincos"`)."""
        if self.position_embedding_type == "learned":
            return self.pos_embed[0].to(dtype)
        return self.sincos_table(device).to(dtype)

    def embed_condition(self, condition: torch.Tensor, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """c = TimestepEmbed(t) + Linear(SiLU(LN(x))), per token: (B, N, D), (B,) -> (B, N, H).

        The parameter-free LayerNorm runs in fp32 because the reference computes it under fp32 autocast.
        """
        normed = F.layer_norm(condition.float(), (self.condition_size,), eps=CONDITION_NORM_EPS).to(dtype)
        condition_embeds = self.z_embedder(F.silu(normed))
        time_embeds = self.t_embedder(self.time_proj(timesteps).to(dtype))
        return condition_embeds + time_embeds[:, None, :]

    def forward(
        self,
        noisy_tokens: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor,
        grid_sizes: list[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        """Predict the noise (or velocity) of `noisy_tokens`.

        Args:
            noisy_tokens (`torch.Tensor` of shape `(B, N, C)`): z_t, tokens in row-major grid order.
            timesteps (`torch.Tensor` of shape `(B,)` or a scalar): diffusion step of each row (0..T-1).
            condition (`torch.Tensor` of shape `(B, N, D)`): the LLM's final-norm hidden states at the image
                positions, token i aligned with latent token i (not yet normalised: the LayerNorm is applied here).
            grid_sizes (`list[tuple[int, int]]`, *optional*): the `(rows, cols)` token grid of each row, for images
                whose grids differ (native VLMs such as Qwen2.5-VL). Row b then holds `rows * cols <= N` real tokens
                followed by padding: each row gets the sin-cos table of its own grid, padding tokens are never
                attended to, and their outputs are meaningless (mask them out of any loss). Needs
                `position_embedding="sincos"` (a learned table exists for one grid only). Without it every row is
                the square `grid_size x grid_size` grid.

        Returns:
            `torch.Tensor` of shape `(B, N, C)` in the compute dtype (fp32 by default).
        """
        batch_size, num_tokens, channels = noisy_tokens.shape
        if channels != self.in_channels:
            raise ValueError(f"noisy_tokens have {channels} channels, the denoiser expects {self.in_channels}.")
        if grid_sizes is None and num_tokens != self.grid_size**2:
            raise ValueError(
                f"noisy_tokens have {num_tokens} tokens, the denoiser's grid is {self.grid_size}x{self.grid_size} "
                f"= {self.grid_size**2}."
            )
        if grid_sizes is not None:
            self._check_grid_sizes(grid_sizes, batch_size, num_tokens)
        if condition.shape != (batch_size, num_tokens, self.condition_size):
            raise ValueError(
                f"condition has shape {tuple(condition.shape)}, expected ({batch_size}, {num_tokens}, "
                f"{self.condition_size}) to match noisy_tokens {tuple(noisy_tokens.shape)}."
            )
        timesteps = torch.as_tensor(timesteps, device=noisy_tokens.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch_size)
        if timesteps.shape != (batch_size,):
            raise ValueError(f"timesteps has shape {tuple(timesteps.shape)}, expected ({batch_size},).")

        if self.compute_dtype == "weights":
            return self._denoise(noisy_tokens, timesteps, condition, self.x_embedder.weight.dtype, grid_sizes)
        # fp32 maths as the reference's fp32 autocast; an outer bf16 autocast would otherwise cast every matmul down.
        with torch.autocast(device_type=noisy_tokens.device.type, enabled=False):
            return self._denoise(noisy_tokens, timesteps, condition, torch.float32, grid_sizes)

    def _check_grid_sizes(self, grid_sizes, batch_size: int, num_tokens: int) -> None:
        if self.position_embedding_type != "sincos":
            raise ValueError(
                "Per-image grids (grid_sizes) need denoiser_position_embedding='sincos': a learned table "
                f"exists only for the {self.grid_size}x{self.grid_size} grid."
            )
        if len(grid_sizes) != batch_size:
            raise ValueError(f"grid_sizes has {len(grid_sizes)} entries for a batch of {batch_size} rows.")
        too_large = [(rows, cols) for rows, cols in grid_sizes if rows * cols > num_tokens]
        if too_large:
            raise ValueError(f"grids {too_large} hold more tokens than the {num_tokens} token slots given.")

    def _denoise(self, noisy_tokens, timesteps, condition, dtype: torch.dtype, grid_sizes=None) -> torch.Tensor:
        token_mask = None
        if grid_sizes is None:
            positions = self.position_embedding(noisy_tokens.device, dtype)
        else:
            positions, token_mask = self.padded_position_tables(grid_sizes, noisy_tokens.shape[1], noisy_tokens.device)
            positions = positions.to(dtype)
        hidden_states = self.x_embedder(noisy_tokens.to(dtype)) + positions
        conditioning = self.embed_condition(condition, timesteps, dtype)
        for block in self.blocks:
            hidden_states = block(hidden_states, conditioning, token_mask)
        return self.final_layer(hidden_states, conditioning)

    def padded_position_tables(
        self, grid_sizes: list[tuple[int, int]], num_tokens: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, N, H)` sin-cos tables, row b the table of `grid_sizes[b]` followed by zeros, and the `(B, N)` bool
        mask of real tokens."""
        tables = torch.zeros(len(grid_sizes), num_tokens, self.hidden_size, device=device)
        token_mask = torch.zeros(len(grid_sizes), num_tokens, dtype=torch.bool, device=device)
        for row, (rows, cols) in enumerate(grid_sizes):
            tables[row, : rows * cols] = grid_sincos_table(self.hidden_size, rows, cols, device)
            token_mask[row, : rows * cols] = True
        return tables, token_mask


def grid_sincos_table(hidden_size: int, rows: int, cols: int, device: torch.device | None = None) -> torch.Tensor:
    """DiT's 2-D sin-cos table for a `rows x cols` grid, `(rows * cols, hidden_size)` fp32, row-major, integer
    positions (first half of the channels encodes the column, second half the row, as diffusers'
    `get_2d_sincos_pos_embed`, which it equals for a square grid with `base_size` = the side)."""
    _require_diffusers("grid_sincos_table")
    row_positions = torch.arange(rows, device=device, dtype=torch.float32)
    col_positions = torch.arange(cols, device=device, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(col_positions, row_positions, indexing="xy"))  # (2, rows, cols): x, then y
    return get_2d_sincos_pos_embed_from_grid(hidden_size, grid, output_type="pt").float()


class RossMLPHead(nn.Module):
    """The per-token MLP head of ROSS^R (`regress` / `latent2pixel`): LN(x) -> Linear -> GELU -> Linear.

    The reference `mlp2x_gelu` inverse projector has no LayerNorm; the parameter-free one here puts the head's input
    on the same footing as the denoiser's. It adds no parameters: reference weights `0.*` / `2.*` map to `fc1` / `fc2`.

    Args:
        condition_size (`int`): Width D of the LLM hidden states.
        out_channels (`int`): Channels C of a target token (3 * P^2 for pixels, the latent channels otherwise).
        hidden_size (`int`, *optional*): Hidden width; defaults to `condition_size` as in the reference
            `mlp2x_gelu` inverse projector.
        compute_dtype (`str`, defaults to `"float32"`): as for `RossDenoiser`.
    """

    def __init__(
        self, condition_size: int, out_channels: int, hidden_size: int | None = None, compute_dtype: str = "float32"
    ):
        super().__init__()
        if compute_dtype not in ("float32", "weights"):
            raise ValueError(f"compute_dtype must be 'float32' or 'weights', got {compute_dtype!r}")
        hidden_size = condition_size if hidden_size is None else hidden_size
        self.condition_size = condition_size
        self.compute_dtype = compute_dtype
        self.fc1 = RossLinear(condition_size, hidden_size)
        self.act = nn.GELU()
        self.fc2 = RossLinear(hidden_size, out_channels)

    def initialize_weights(self) -> None:
        """torch's default Linear initialisation (what the reference's inverse projector gets: it is built outside
        `post_init`). `RossPreTrainedModel._init_weights` calls it; transformers' load guard skips loaded weights."""
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, C)."""
        if condition.shape[-1] != self.condition_size:
            raise ValueError(f"condition has width {condition.shape[-1]}, the head expects {self.condition_size}.")
        if self.compute_dtype == "weights":
            normed = F.layer_norm(condition.float(), (self.condition_size,), eps=CONDITION_NORM_EPS)
            return self.fc2(self.act(self.fc1(normed.to(self.fc1.weight.dtype))))
        with torch.autocast(device_type=condition.device.type, enabled=False):
            normed = F.layer_norm(condition.float(), (self.condition_size,), eps=CONDITION_NORM_EPS)
            return self.fc2(self.act(self.fc1(normed)))


def build_noise_scheduler(objective_config: RossObjectiveConfig | None = None) -> "DDPMScheduler":
    """The training noise schedule of ROSS^D as a diffusers `DDPMScheduler` (defaults: 1000 steps, cosine, epsilon).

    `clip_sample=False` because latents are not confined to [-1, 1], and `variance_type="fixed_large"` (sigma_t^2 =
    beta_t) because that is the sampler of the reference code (`learn_sigma=False` -> FIXED_LARGE, no clipping).
    """
    _require_diffusers("build_noise_scheduler")
    config = RossObjectiveConfig() if objective_config is None else objective_config
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=False,
        variance_type="fixed_large",
    )


@torch.no_grad()
def sample_tokens(
    denoiser: RossDenoiser,
    condition: torch.Tensor,
    num_channels: int,
    scheduler=None,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    grid_sizes: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Reverse diffusion: draw latent tokens z_0 ~ J(. ; condition).

    Args:
        denoiser (`RossDenoiser`): Any module with `denoiser(noisy (B, N, C), timesteps (B,), condition (B, N, D))`.
        condition (`torch.Tensor` of shape `(B, N, D)`): The (un-normalised) LLM visual outputs.
        num_channels (`int`): C, the channels of a latent token.
        scheduler (diffusers scheduler, *optional*): e.g. `build_noise_scheduler(cfg)` or
            `DDIMScheduler.from_config(that.config)`. It is copied from its config, so the caller's object is not
            mutated. Defaults to `build_noise_scheduler()`. Whether the denoiser predicts epsilon or velocity is the
            scheduler's `prediction_type`.
        num_inference_steps (`int`, defaults to 50): Reverse steps.
        generator (`torch.Generator`, *optional*): For reproducible draws.
        grid_sizes (`list[tuple[int, int]]`, *optional*): per-row token grids, passed to the denoiser (see
            `RossDenoiser.forward`); padding rows come back as noise and are to be dropped by the caller.

    Returns:
        `torch.Tensor` of shape `(B, N, C)`, float32.
    """
    _require_diffusers("sample_tokens")
    scheduler = build_noise_scheduler() if scheduler is None else scheduler.__class__.from_config(scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=condition.device)
    batch_size, num_tokens, _ = condition.shape
    dtype = next(denoiser.parameters()).dtype
    # The reverse chain is kept in fp32 whatever the denoiser's dtype; only its inputs are cast.
    sample = randn_tensor(
        (batch_size, num_tokens, num_channels), generator=generator, device=condition.device, dtype=torch.float32
    )
    sample = sample * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, timestep)
        timesteps = timestep.expand(batch_size).to(condition.device)
        extra = {} if grid_sizes is None else {"grid_sizes": grid_sizes}
        prediction = denoiser(model_input.to(dtype), timesteps, condition, **extra).float()
        sample = scheduler.step(prediction, timestep, sample, generator=generator).prev_sample
    return sample


__all__ = [
    "RossDenoiser",
    "RossLinear",
    "RossMLPHead",
    "build_noise_scheduler",
    "grid_sincos_table",
    "sample_tokens",
]
