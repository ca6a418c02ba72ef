"""README's two images, drawn with PIL (no plotting library, nothing downloaded):

    python docs/make_figures.py        # writes docs/ross-overview.png and docs/example.png

- `docs/ross-overview.png`: the ROSS^D training graph (what README's first paragraph says, as boxes and arrows).
- `docs/example.png`: a scene of the synthetic world `make demo` trains on (held out: seed 2026, not a training seed),
  the image README's quick start asks about.
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ross.synthetic.world import make_scene, render


HERE = Path(__file__).resolve().parent
EXAMPLE_SEED = 2026  # the demo's training scenes use seed 0 and its benchmarks seed 1

BOX = {"fill": (242, 244, 250), "outline": (70, 80, 120), "width": 2}
TRAIN_ONLY = {"fill": (255, 243, 230), "outline": (200, 110, 40), "width": 2}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:
        return ImageFont.load_default()


def _box(draw, xy, text, style, font):
    draw.rounded_rectangle(xy, radius=10, **style)
    x0, y0, x1, y1 = xy
    draw.multiline_text(((x0 + x1) / 2, (y0 + y1) / 2), text, fill=(20, 20, 30), font=font, anchor="mm",
                        align="center")  # fmt: skip


def _arrow(draw, start, end, colour=(60, 60, 60)):
    draw.line([start, end], fill=colour, width=3)
    (x0, y0), (x1, y1) = start, end
    length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    left = (x1 - 12 * ux + 6 * uy, y1 - 12 * uy - 6 * ux)
    right = (x1 - 12 * ux - 6 * uy, y1 - 12 * uy + 6 * ux)
    draw.polygon([end, left, right], fill=colour)


def overview(example: Image.Image) -> Image.Image:
    """Image -> tower -> projector -> LLM -> text loss; the LLM's outputs at the image tokens -> denoiser, which
    recovers the teacher's latents of the same image from noise -> visual loss. Orange: training only."""
    font, small = _font(17), _font(14)
    canvas = Image.new("RGB", (1060, 430), "white")
    draw = ImageDraw.Draw(canvas)
    canvas.paste(example.resize((96, 96), Image.NEAREST), (20, 40))
    draw.text((68, 145), "image", fill=(20, 20, 30), font=small, anchor="mm")
    _box(draw, (150, 48, 290, 128), "vision tower\n(SigLIP / CLIP)", BOX, font)
    _box(draw, (330, 48, 450, 128), "projector\n(MLP)", BOX, font)
    _box(draw, (490, 28, 700, 148), "causal LLM\n(Qwen2 / Vicuna)\n[image tokens | text]", BOX, font)
    _box(draw, (760, 48, 1040, 128), "text loss\n(answer tokens)", BOX, font)
    _arrow(draw, (116, 88), (150, 88))
    _arrow(draw, (290, 88), (330, 88))
    _arrow(draw, (450, 88), (490, 88))
    _arrow(draw, (700, 88), (760, 88))
    # the training-only branch
    _box(draw, (150, 250, 330, 330), "teacher (frozen)\nKL VAE encoder", TRAIN_ONLY, font)
    _box(draw, (380, 250, 560, 330), "latent tokens z0\n+ noise -> z_t", TRAIN_ONLY, font)
    _box(draw, (610, 250, 800, 330), "denoiser\n(DiT blocks, adaLN\nper token)", TRAIN_ONLY, font)
    _box(draw, (850, 250, 1040, 330), "visual loss\n||eps_pred - eps||^2", TRAIN_ONLY, font)
    _arrow(draw, (68, 160), (68, 290))
    _arrow(draw, (68, 290), (150, 290))
    _arrow(draw, (330, 290), (380, 290))
    _arrow(draw, (560, 290), (610, 290))
    _arrow(draw, (800, 290), (850, 290))
    _arrow(draw, (595, 148), (700, 250), colour=(200, 110, 40))
    draw.text((718, 182), "visual outputs: the LLM's hidden states\nat the image tokens condition the denoiser",
              fill=(150, 80, 20), font=small)  # fmt: skip
    draw.text((20, 370), "loss = text loss + weight x visual loss. Orange parts are used in training only: at inference "
              "a ROSS model is exactly LLaVA.", fill=(20, 20, 30), font=small)  # fmt: skip
    draw.text((20, 395), "ROSS^D (the paper's default): denoise the teacher's latents of the same image the LLM saw.",
              fill=(20, 20, 30), font=small)  # fmt: skip
    return canvas


def main() -> None:
    example = render(make_scene(EXAMPLE_SEED))
    example.save(HERE / "example.png")
    overview(example).save(HERE / "ross-overview.png", optimize=True)
    print(f"wrote {HERE / 'example.png'} and {HERE / 'ross-overview.png'}")


if __name__ == "__main__":
    main()
