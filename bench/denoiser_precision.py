"""What computing the ROSS^D denoiser in bf16 instead of fp32 changes: predictions and the denoising loss, side by side.

    python bench/denoiser_precision.py [--size 7b|tiny] [--seed 0]

Under DeepSpeed bf16 the denoiser's weights are bf16. The authors run it under `torch.autocast("cuda", float32)`, so
its maths stay fp32; `compute_dtype="float32"` (our default) does the same on every device, `compute_dtype="weights"`
computes in bf16. One denoiser with random (non-zero) weights, one image with the reference 4 noise draws, the same
inputs for every row:

- `fp32`: fp32 weights, fp32 maths (the reference);
- `bf16 weights, fp32 maths` (authors, our default);
- `bf16 weights, bf16 maths` (`compute_dtype="weights"`).

`--size 7b` is the reference geometry (3584-wide condition, width 1024, depth 3, 16 heads, 64 channels, 27x27 tokens);
`tiny` a small one. Prints the relative error (L2) of the predictions against the fp32 reference and against fp32
maths on the same bf16 weights (the part due to the maths alone), and the loss with its relative error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modeling_ross.denoiser import RossDenoiser, build_noise_scheduler  # noqa: E402


SIZES = {
    "7b": dict(in_channels=64, condition_size=3584, hidden_size=1024, depth=3, num_heads=16, grid_size=27),
    "tiny": dict(in_channels=16, condition_size=64, hidden_size=64, depth=2, num_heads=4, grid_size=4),
}


def make_denoiser(size: str, seed: int, compute_dtype: str) -> RossDenoiser:
    torch.manual_seed(seed)
    denoiser = RossDenoiser(**SIZES[size], position_embedding="learned", compute_dtype=compute_dtype)
    with torch.no_grad():  # a trained-looking denoiser: the fresh one outputs exact zeros (adaLN-Zero)
        generator = torch.Generator().manual_seed(seed + 1)
        for param in denoiser.parameters():
            fan_in = param.shape[-1] if param.ndim > 1 else 1
            param.add_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
    return denoiser.eval()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="7b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dims = SIZES[args.size]
    tokens, draws = dims["grid_size"] ** 2, 4

    generator = torch.Generator().manual_seed(args.seed)
    target = torch.randn(1, tokens, dims["in_channels"], generator=generator).repeat(draws, 1, 1)
    condition = (torch.randn(1, tokens, dims["condition_size"], generator=generator) * 2).repeat(draws, 1, 1)
    noise = torch.randn(target.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (draws,), generator=generator)
    noisy = build_noise_scheduler().add_noise(target, noise, timesteps)

    reference = make_denoiser(args.size, args.seed, "float32")
    rows = {"fp32 weights, fp32 maths (reference)": reference}
    for compute, name in (("float32", "bf16 weights, fp32 maths (authors, default)"),
                          ("weights", "bf16 weights, bf16 maths (compute_dtype=weights)")):
        low = make_denoiser(args.size, args.seed, compute).to(torch.bfloat16)
        low.load_state_dict(reference.state_dict())  # the same weights, rounded to bf16
        rows[name] = low

    print(f"denoiser {args.size}: {sum(p.numel() for p in reference.parameters()):,} parameters, "
          f"{draws} rows x {tokens} tokens")
    relative = lambda a, b: ((a - b).norm() / b.norm()).item()
    results = {}
    with torch.no_grad():
        expected = reference(noisy, timesteps, condition).float()
        expected_loss = F.mse_loss(expected, noise)
        same_weights = list(rows.values())[1](noisy, timesteps, condition).float()  # bf16 weights, fp32 maths
        print(f"  {'':<50} {'vs fp32':>9} {'vs fp32 maths on the bf16 weights':>35}   loss (rel. error)")
        for name, denoiser in rows.items():
            prediction = denoiser(noisy, timesteps, condition).float()
            loss = F.mse_loss(prediction, noise)
            error, maths_error = relative(prediction, expected), relative(prediction, same_weights)
            loss_error = abs(loss.item() - expected_loss.item()) / expected_loss.item()
            results[name] = {"prediction_rel_error": error, "maths_rel_error": maths_error, "loss": loss.item(),
                             "loss_rel_error": loss_error}
            print(f"  {name:<50} {error:9.2e} {maths_error:35.2e}   {loss.item():.6f} ({loss_error:.2e})")
    return results


if __name__ == "__main__":
    main()
