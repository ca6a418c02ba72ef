"""Parameter count of the reference ROSS-7B denoiser (Qwen2-7B width 3584, FLUX latents 16 x 2 x 2 = 64 channels,
SigLIP-384/14 grid 27 x 27 = 729 tokens, width 1024, depth 3, 16 heads).

Built on the meta device (no memory). Exits 1 if the total leaves the 60-70M band of the reference design.

    python bench/denoiser_params.py
"""

import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from modeling_ross.denoiser import RossDenoiser  # noqa: E402


REFERENCE = dict(in_channels=64, condition_size=3584, hidden_size=1024, depth=3, num_heads=16, grid_size=27)


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def main() -> int:
    with torch.device("meta"):
        denoiser = RossDenoiser(**REFERENCE)  # position_embedding="sincos": the table is counted separately below
    parts = {
        "x_embedder (noisy tokens -> H)": denoiser.x_embedder,
        "t_embedder (timestep MLP)": denoiser.t_embedder,
        "z_embedder (condition -> H)": denoiser.z_embedder,
        **{f"blocks.{i}": block for i, block in enumerate(denoiser.blocks)},
        "final_layer": denoiser.final_layer,
    }
    total = count(denoiser)
    print("RossDenoiser(" + ", ".join(f"{key}={value}" for key, value in REFERENCE.items()) + ")")
    for name, module in parts.items():
        print(f"  {name:34s} {count(module):>12,}")
    assert sum(count(module) for module in parts.values()) == total
    pos_embed = denoiser.grid_size**2 * denoiser.hidden_size
    print(f"total without the position table: {total:,} (trained in both stages)")
    print(
        f"with the stored position table (denoiser_position_embedding='learned', the authors'): {total + pos_embed:,} "
        f"(+{pos_embed:,}; the table trains in stage 1 only, so stage 2 trains {total:,})."
    )
    if not 60e6 <= total <= 70e6:
        print(f"error: {total:,} parameters is outside the reference band 60M-70M", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
