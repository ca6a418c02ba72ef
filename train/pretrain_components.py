"""Make the tiny components of the default run *pretrained*, as a real user's would be.

`modeling_ross.testing` writes randomly initialised Hub-style component repos. A real ROSS run starts from a
pretrained CLIP/SigLIP tower and a pretrained VAE teacher, so before training we fit both, briefly, on synthetic
scenes from `ross.synthetic.world` (held-out seeds and streams, never the benchmark scenes):

- the SigLIP vision tower with a *coarse*, global objective: a linear probe on its mean-pooled last hidden state
  predicts which colours are present (`colour_presence_labels`, multi-label BCE). Like CLIP/SigLIP's image-level
  contrastive objective, nothing asks the tower to keep where things are or what shape they have;
- the teacher `AutoencoderKL` as an autoencoder (pixel MSE + a small KL term), then its `shift_factor` /
  `scaling_factor` are set from the latent statistics (as for the SD / FLUX VAEs), so scaled latents have
  zero mean and unit variance.

Both are saved back in their Hub layouts (`siglip-tiny/`, `vae-tiny/vae/`) next to an untouched tiny Qwen2
(`qwen2-tiny/`, the LLM is trained by the SFT stages) under `root/<key>/`, where `key` hashes every setting.
A second run with the same settings finds `root/<key>/fit.json` and skips the fitting.

    python -m ross.train.pretrain_components --root runs/components [--fast]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from transformers import AutoImageProcessor, SiglipVisionConfig, SiglipVisionModel

from modeling_ross.testing import write_tiny_components
from ross.train.build import quiet_deepspeed_on_cpu
from ross.synthetic.world import COLOURS, POSITIONS, SHAPES, colour_presence_labels, iter_scenes


CACHE_VERSION = 2  # bump when the fitting code changes the weights or what fit.json records


@dataclass
class ComponentSettings:
    """Sizes of the tiny components and how long to fit them. Every field is part of the cache key."""

    # synthetic images (synthetic.world renders `scene_size` px) and the tower's input
    scene_size: int = 48
    tower_image_size: int = 32
    patch_size: int = 8  # 32 / 8 -> a 4 x 4 grid = 16 visual tokens (each covers about a quadrant's object)
    vision_hidden_size: int = 64
    # 1 layer: the LLM reads layer -2 (`vision_feature_layer`), the fitted patch embedding, which keeps each object's
    # shape (an MLP probe recovers it, a linear one barely: `probe_detail`). A 3-layer tower fitted on colour presence
    # lost the shapes (MLP probe 0.78 vs 0.99), so no objective could answer the existence questions.
    vision_layers: int = 1
    # the language model (random init: the SFT stages train it)
    llm_hidden_size: int = 128
    llm_layers: int = 4
    llm_heads: int = 4
    # the teacher VAE: 3 levels -> downsample 4: a 32-px image gives 8 x 8 latents, folded 2 x 2 into the 4 x 4 token grid
    vae_block_out_channels: tuple = (8, 16, 16)
    vae_latent_channels: int = 8
    # fitting
    num_fit_images: int = 2000
    num_heldout_images: int = 300
    vision_steps: int = 100
    vision_batch_size: int = 32
    vae_steps: int = 500  # 200 left colour poorly recoverable from the latents (linear probe 0.84, PSNR 21 dB)
    vae_batch_size: int = 32
    vision_lr: float = 2e-3
    vae_lr: float = 3e-3
    vae_kl_weight: float = 1e-4
    # bf16 autocast for the fitting. Off: at these sizes it was not faster on a 2-core AMX Xeon
    # (`python -m ross.train.pretrain_components --measure-bf16`: tower 0.46x, VAE 0.96x the fp32 speed).
    bf16: bool = False
    seed: int = 0

    @classmethod
    def fast(cls) -> "ComponentSettings":
        """Seconds instead of minutes, for tests: same shapes, few images and steps."""
        return cls(
            num_fit_images=64, num_heldout_images=32, vision_steps=4, vae_steps=4, vision_batch_size=16, vae_batch_size=8
        )

    def key(self) -> str:
        blob = json.dumps({"version": CACHE_VERSION, **dataclasses.asdict(self)}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def grid_size(self) -> int:
        return self.tower_image_size // self.patch_size

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)

    @property
    def vae_fold(self) -> int:
        """Fold so the teacher's latent grid equals the token grid on the tower's own input size."""
        fold = self.tower_image_size // (self.grid_size * self.vae_downsample)
        if fold < 1 or self.grid_size * self.vae_downsample * fold != self.tower_image_size:
            raise ValueError(
                f"The VAE's downsample {self.vae_downsample} does not tile a {self.grid_size} x {self.grid_size} grid "
                f"on {self.tower_image_size}-px images."
            )
        return fold


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def synthetic_pixels(num: int, settings: ComponentSettings, stream: str, image_processor):
    """`num` synthetic scenes -> (pixel_values `(num, 3, S, S)` in [-1, 1] as the tower sees them, colour-presence
    labels `(num, 5)`, per-quadrant labels `(num, 4, 2)`: the object's shape and colour index + 1, 0 when empty)."""
    scenes, images = zip(*iter_scenes(num, seed=settings.seed, size=settings.scene_size, stream=stream))
    pixel_values = image_processor(list(images), return_tensors="pt")["pixel_values"].float()
    labels = torch.tensor([colour_presence_labels(s) for s in scenes], dtype=torch.float32)
    quadrants = torch.zeros(num, len(POSITIONS), 2, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for o in scene["objects"]:
            quadrants[i, POSITIONS.index(o["position"])] = torch.tensor([1 + SHAPES.index(o["shape"]),
                                                                          1 + COLOURS.index(o["colour"])])  # fmt: skip
    return pixel_values, labels, quadrants


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _cosine_lr(step: int, total: int, base: float, warmup: int = 20) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


PROGRESS_SECONDS = 10.0  # a fit prints a progress line at most this often (and at its last step)


class _FitProgress:
    """Throttled progress lines of a fitting loop: `components: VAE step 120/500, loss 0.0312, 24s (ETA 76s)`."""

    def __init__(self, name: str, total: int, log):
        self.name, self.total, self.log = name, total, log
        self.start = self.last = time.perf_counter()

    def step(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        done = step + 1
        if self.log is None or (now - self.last < PROGRESS_SECONDS and done != self.total):
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / done * (self.total - done)
        self.log(f"components:   {self.name} step {done}/{self.total}, loss {loss:.4f}, {elapsed:.0f}s (ETA {eta:.0f}s)")


def _batches(num: int, batch_size: int, steps: int, generator: torch.Generator):
    """`steps` index batches drawn epoch by epoch from a fresh permutation."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(num, generator=generator)])
        batch, order = order[:batch_size], order[batch_size:]
        yield batch


# ---------------------------------------------------------------------------------------------------------------------
# The vision tower: a coarse, global objective
# ---------------------------------------------------------------------------------------------------------------------


def _pooled(tower, pixel_values: torch.Tensor) -> torch.Tensor:
    return tower(pixel_values=pixel_values).last_hidden_state.mean(1)


def fit_vision_tower(folder: Path, settings: ComponentSettings, train, heldout, log=None) -> dict:
    """Fit `folder`'s SiglipVisionModel with a linear probe on mean-pooled features predicting colour presence;
    save it back. Returns held-out probe metrics (the probe itself is thrown away)."""
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    tower = SiglipVisionModel.from_pretrained(folder).train()
    (pixels, labels, _), (test_pixels, test_labels, _) = train, heldout
    probe = torch.nn.Linear(tower.config.hidden_size, labels.shape[1])
    params = list(tower.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.vision_lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(settings.seed)
    losses, progress = [], _FitProgress("tower", settings.vision_steps, log)
    for step, index in enumerate(_batches(len(pixels), settings.vision_batch_size, settings.vision_steps, generator)):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, settings.vision_steps, settings.vision_lr)
        with _autocast(settings.bf16):
            logits = probe(_pooled(tower, pixels[index]))
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        progress.step(step, losses[-1])
    tower.eval()
    with torch.no_grad(), _autocast(settings.bf16):
        predictions = (probe(_pooled(tower, test_pixels)).float() > 0).float()
    tower.save_pretrained(folder)  # fp32 weights, Hub layout (the image processor files are left as written)
    return {
        "objective": "linear probe on mean-pooled features: which colours are present (multi-label)",
        "steps": settings.vision_steps,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "probe_accuracy": (predictions == test_labels).float().mean().item(),  # per (image, colour)
        "probe_exact_match": (predictions == test_labels).all(1).float().mean().item(),  # all 5 colours right
        "probe_chance": max(test_labels.mean().item(), 1 - test_labels.mean().item()),  # majority per label
        "heldout_images": len(test_pixels),
        "seconds": round(time.perf_counter() - start, 2),
    }


# ---------------------------------------------------------------------------------------------------------------------
# The teacher: a KL autoencoder
# ---------------------------------------------------------------------------------------------------------------------


def psnr(reconstruction: torch.Tensor, image: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (computed on the [0, 1] scale)."""
    mse = F.mse_loss((reconstruction.float().clamp(-1, 1) + 1) / 2, (image.float() + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def fit_vae(folder: Path, settings: ComponentSettings, train, heldout, log=None) -> dict:
    """Fit `folder`'s AutoencoderKL on the tower's view of the images (pixel MSE + small KL), set its latent
    shift/scale from the training latents, save it back. Returns held-out PSNR."""
    start = time.perf_counter()
    torch.manual_seed(settings.seed + 1)
    vae = AutoencoderKL.from_pretrained(folder).train()
    pixels, test_pixels = train[0], heldout[0]
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    losses, progress = [], _FitProgress("VAE", settings.vae_steps, log)
    for step, index in enumerate(_batches(len(pixels), settings.vae_batch_size, settings.vae_steps, generator)):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, settings.vae_steps, settings.vae_lr)
        images = pixels[index]
        with _autocast(settings.bf16):
            posterior = vae.encode(images).latent_dist
            reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        kl = posterior.kl().float().mean() / posterior.mean[0].numel()  # per latent element
        loss = F.mse_loss(reconstruction.float(), images) + settings.vae_kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        progress.step(step, losses[-1])
    vae.eval()
    with torch.no_grad():  # evaluate and calibrate in fp32
        latents = vae.encode(pixels[:512]).latent_dist.sample(generator=generator)
        shift, scale = latents.mean().item(), 1.0 / latents.std().item()
        test_posterior = vae.encode(test_pixels).latent_dist
        mode_psnr = psnr(vae.decode(test_posterior.mode()).sample, test_pixels)
        sample_psnr = psnr(vae.decode(test_posterior.sample(generator=generator)).sample, test_pixels)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    vae.save_pretrained(folder)
    return {
        "objective": f"autoencoder: pixel MSE + {settings.vae_kl_weight:g} x KL per latent element",
        "steps": settings.vae_steps,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "psnr_db": round(mode_psnr, 2),  # decode(posterior mean), held-out images
        "psnr_sample_db": round(sample_psnr, 2),  # decode(posterior sample), what ROSS targets are drawn from
        "shift_factor": shift,
        "scaling_factor": scale,
        "heldout_images": len(test_pixels),
        "seconds": round(time.perf_counter() - start, 2),
    }


# ---------------------------------------------------------------------------------------------------------------------
# What the components keep: probes of each quadrant's object
# ---------------------------------------------------------------------------------------------------------------------

FEATURE_LAYER = -2  # the tower layer RossConfig reads by default (`vision_feature_layer`, LLaVA's penultimate layer)


def _quadrant_rows(grid: torch.Tensor) -> torch.Tensor:
    """`(n, C, H, W)` feature map -> `(n * 4, C * H/2 * W/2)`: one row per quadrant (the scene's object slots)."""
    n, c, h, w = grid.shape
    rows = grid.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5)
    return rows.reshape(n * 4, c * (h // 2) * (w // 2))


def _probe_accuracy(train_x, train_y, test_x, test_y, hidden: int = 0, steps: int = 300) -> float:
    """Held-out accuracy of a linear (`hidden=0`) or one-hidden-layer MLP probe, full-batch Adam on standardised rows."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(train_y.max()) + 1
    torch.manual_seed(0)
    if hidden:
        probe = torch.nn.Sequential(torch.nn.Linear(train_x.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, classes))
    else:
        probe = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=3e-3, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(probe(train_x), train_y).backward()
            optimizer.step()
    with torch.no_grad():
        return (probe(test_x).argmax(-1) == test_y).float().mean().item()


@torch.no_grad()
def probe_detail(tower_folder: Path, vae_folder: Path, train, heldout) -> dict:
    """Which object is in each quadrant (shape: 3 + empty; colour: 5 + empty), read by linear and MLP probes from the
    tower's features at `FEATURE_LAYER` (what the LLM gets) and from the teacher's latents (what ROSS^D reconstructs).
    The question types that need detail (existence, MMVP, position) are answerable only from what these keep."""
    tower = SiglipVisionModel.from_pretrained(tower_folder).eval()
    vae = AutoencoderKL.from_pretrained(vae_folder).eval()

    def tower_grid(pixels):
        tokens = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[FEATURE_LAYER]
        side = math.isqrt(tokens.shape[1])
        return tokens.transpose(1, 2).reshape(len(pixels), -1, side, side)

    def vae_grid(pixels):
        return vae.encode(pixels).latent_dist.mode()

    labels, test_labels = train[2].reshape(-1, 2), heldout[2].reshape(-1, 2)
    result = {"rows": "one per quadrant of the held-out scenes", "heldout_rows": len(test_labels),
              "shape_majority": max((test_labels[:, 0] == k).float().mean().item() for k in range(len(SHAPES) + 1))}
    for name, grid in (("tower", tower_grid), ("teacher", vae_grid)):
        x, test_x = _quadrant_rows(grid(train[0])), _quadrant_rows(grid(heldout[0]))
        for target, column in (("shape", 0), ("colour", 1)):
            for kind, hidden in (("linear", 0), ("mlp", 256)):
                accuracy = _probe_accuracy(x, labels[:, column], test_x, test_labels[:, column], hidden)
                result[f"{name}_{target}_{kind}"] = round(accuracy, 3)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# bf16 on CPU: measure instead of assuming
# ---------------------------------------------------------------------------------------------------------------------


def measure_bf16_speedup(settings: ComponentSettings, steps: int = 3) -> dict:
    """Seconds per training step of the tiny tower and VAE in fp32 and under bf16 autocast (random weights)."""
    tower = SiglipVisionModel(
        SiglipVisionConfig(
            image_size=settings.tower_image_size,
            patch_size=settings.patch_size,
            hidden_size=settings.vision_hidden_size,
            intermediate_size=2 * settings.vision_hidden_size + 5,
            num_hidden_layers=settings.vision_layers,
            num_attention_heads=4,
            vision_use_head=False,
        )
    )
    n = len(settings.vae_block_out_channels)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(settings.vae_block_out_channels),
        latent_channels=settings.vae_latent_channels,
        norm_num_groups=8,
    )
    images = torch.rand(settings.vae_batch_size, 3, settings.tower_image_size, settings.tower_image_size) * 2 - 1

    def tower_step():
        _pooled(tower, images).square().mean().backward()

    def vae_step():
        vae(images).sample.square().mean().backward()

    result = {}
    for name, step in (("vision_tower", tower_step), ("vae", vae_step)):
        for bf16 in (False, True):
            with _autocast(bf16):
                step()  # warm-up
                start = time.perf_counter()
                for _ in range(steps):
                    step()
            result[f"{name}_{'bf16' if bf16 else 'fp32'}_s_per_step"] = round((time.perf_counter() - start) / steps, 4)
        result[f"{name}_bf16_speedup"] = round(
            result[f"{name}_fp32_s_per_step"] / result[f"{name}_bf16_s_per_step"], 2
        )
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Entry point with the cache
# ---------------------------------------------------------------------------------------------------------------------


def write_components(folder: Path, settings: ComponentSettings) -> dict:
    """The three Hub-style repos with `modeling_ross.testing`'s writers, at `settings`' sizes (random weights)."""
    return write_tiny_components(
        folder,
        vision_kwargs={
            "image_size": settings.tower_image_size,
            "patch_size": settings.patch_size,
            "hidden_size": settings.vision_hidden_size,
            "num_layers": settings.vision_layers,
            "seed": settings.seed,
        },
        language_kwargs={
            "hidden_size": settings.llm_hidden_size,
            "num_layers": settings.llm_layers,
            "num_heads": settings.llm_heads,
            "seed": settings.seed,
        },
        vae_kwargs={
            "latent_channels": settings.vae_latent_channels,
            "block_out_channels": tuple(settings.vae_block_out_channels),
            "seed": settings.seed,
        },
    )


def prepare_components(root, settings: ComponentSettings | None = None, log=print, probe: bool = False) -> dict:
    """Write and fit the tiny components under `root/<settings.key()>/`, or reuse them if already there.

    `probe`: also run `probe_detail` (a diagnostic of what the tower and the teacher keep of each quadrant's object;
    it takes longer than the fits on 2 cores, so it is off unless asked for; its result is added to a cached
    `fit.json` when asked for later). The manifest's `detail_probe` is None without it.

    Returns the manifest (also in `fit.json`): component paths for `from_components`, the objective overrides that
    make the teacher's latent grid match the token grid (`vae_fold`), fitting metrics, and `cached`.
    """
    settings = settings or ComponentSettings()
    folder = Path(root) / settings.key()
    manifest_file = folder / "fit.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        log(f"components: reusing {folder} (settings hash {settings.key()})")
        if probe and manifest.get("detail_probe") is None:
            manifest["detail_probe"] = _run_probe(folder, manifest["components"], settings, log)
            manifest_file.write_text(json.dumps(manifest, indent=1) + "\n")
        manifest["cached"] = True
        return manifest

    start = time.perf_counter()
    torch.set_flush_denormal(True)  # a cheap guard: subnormal floats can make CPU kernels many times slower
    tmp = Path(root) / f".{settings.key()}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    paths = write_components(tmp, settings)
    image_processor = AutoImageProcessor.from_pretrained(paths["vision_model"], backend="pil")
    log(f"components: rendering {settings.num_fit_images} + {settings.num_heldout_images} synthetic scenes")
    train = synthetic_pixels(settings.num_fit_images, settings, "components:fit", image_processor)
    heldout = synthetic_pixels(settings.num_heldout_images, settings, "components:heldout", image_processor)
    data_seconds = time.perf_counter() - start

    log(f"components: fitting the vision tower ({settings.vision_steps} steps, bf16={settings.bf16})")
    vision = fit_vision_tower(Path(paths["vision_model"]), settings, train, heldout, log=log)
    log(
        f"components:   colour-presence probe accuracy {vision['probe_accuracy']:.3f} "
        f"(majority {vision['probe_chance']:.3f}), {vision['seconds']:.0f}s"
    )
    log(f"components: fitting the VAE teacher ({settings.vae_steps} steps, bf16={settings.bf16})")
    vae = fit_vae(Path(paths["teacher"]) / paths["teacher_subfolder"], settings, train, heldout, log=log)
    log(f"components:   reconstruction PSNR {vae['psnr_db']:.1f} dB, {vae['seconds']:.0f}s")
    detail = _run_probe(tmp, None, settings, log, data=(train, heldout)) if probe else None

    manifest = {
        "key": settings.key(),
        "settings": dataclasses.asdict(settings),
        # relative to the keyed folder, so the cache survives being moved
        "components": {
            "vision_model": "siglip-tiny",
            "language_model": "qwen2-tiny",
            "teacher": "vae-tiny",
            "teacher_subfolder": "vae",
        },
        "objective_overrides": {"vae_fold": settings.vae_fold},
        "vision_tower": vision,
        "vae": vae,
        "detail_probe": detail,
        "data_seconds": round(data_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    (tmp / "fit.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    manifest["cached"] = False
    return manifest


def _run_probe(folder: Path, parts: dict | None, settings: ComponentSettings, log, data=None) -> dict:
    """`probe_detail` on the components in `folder` (re-rendering the fit's scenes unless `data` is given)."""
    parts = parts or {"vision_model": "siglip-tiny", "teacher": "vae-tiny", "teacher_subfolder": "vae"}
    tower, teacher = Path(folder) / parts["vision_model"], Path(folder) / parts["teacher"] / parts["teacher_subfolder"]
    log("components: per-quadrant probes of the tower's features and the teacher's latents (diagnostic, --probe) ...")
    start = time.perf_counter()
    if data is None:
        image_processor = AutoImageProcessor.from_pretrained(tower, backend="pil")
        data = (synthetic_pixels(settings.num_fit_images, settings, "components:fit", image_processor),
                synthetic_pixels(settings.num_heldout_images, settings, "components:heldout", image_processor))  # fmt: skip
    detail = probe_detail(tower, teacher, *data)
    detail["seconds"] = round(time.perf_counter() - start, 2)
    log(f"components:   {format_detail(detail)}, {detail['seconds']:.0f}s")
    return detail


def format_detail(detail: dict | None) -> str:
    """One line of `probe_detail`'s result."""
    if detail is None:
        return "per-quadrant probes not run (diagnostic: --probe)"
    return (
        f"per-quadrant shape probe (linear / MLP; majority {detail['shape_majority']:.2f}): tower features "
        f"{detail['tower_shape_linear']:.2f} / {detail['tower_shape_mlp']:.2f}, teacher latents "
        f"{detail['teacher_shape_linear']:.2f} / {detail['teacher_shape_mlp']:.2f}; colour: tower "
        f"{detail['tower_colour_linear']:.2f} / {detail['tower_colour_mlp']:.2f}, teacher "
        f"{detail['teacher_colour_linear']:.2f} / {detail['teacher_colour_mlp']:.2f}"
    )


def component_paths(root, manifest: dict) -> dict:
    """Absolute component paths of a manifest, as keyword arguments for `from_components`."""
    folder = Path(root).resolve() / manifest["key"]
    parts = manifest["components"]
    return {
        "vision_model": str(folder / parts["vision_model"]),
        "language_model": str(folder / parts["language_model"]),
        "teacher": str(folder / parts["teacher"]),
        "teacher_subfolder": parts["teacher_subfolder"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/components")
    parser.add_argument("--fast", action="store_true", help="few images and steps (tests)")
    parser.add_argument("--no-bf16", action="store_true", help="fit in fp32")
    parser.add_argument("--probe", action="store_true", help="also run the per-quadrant probes (diagnostic)")
    parser.add_argument("--measure-bf16", action="store_true", help="only time fp32 vs bf16 training steps")
    args = parser.parse_args(argv)
    quiet_deepspeed_on_cpu()
    settings = ComponentSettings.fast() if args.fast else ComponentSettings()
    if args.no_bf16:
        settings.bf16 = False
    if args.measure_bf16:
        result = measure_bf16_speedup(settings)
    else:
        result = prepare_components(args.root, settings, probe=args.probe)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
