"""Every path feeds the model the same pixels: the processor, a training item, the evaluation loader and the Space
(Gradio upload), for unusual modes (16-bit grey, palette, alpha, CMYK), for EXIF orientation and for depth maps (the
depth rule, 16-bit and 8-bit); and the processor names the image of a call that cannot be decoded."""

import base64
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from modeling_ross.processing_ross import depth_to_rgb, upright_rgb
from ross.eval.benchmarks import BENCHMARKS, decode_images, get_benchmark
from ross.train.dataset import load_training_dataset


APP_PATH = Path(__file__).resolve().parents[1] / "spaces" / "app.py"


def _pattern(width=24, height=16) -> np.ndarray:
    """An asymmetric RGB pattern: any rotation or flip changes it."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 10 % 256, y * 15 % 256, (x * y) % 256], axis=-1).astype(np.uint8)


def _write_mode(folder: Path, mode: str) -> Path:
    rgb = _pattern()
    grey = rgb[..., 0].astype(np.uint16)
    if mode == "I;16":
        image = Image.fromarray((grey * 250 + 1000).astype(np.uint16))  # 16-bit values well above 255
        image = image if image.mode == "I;16" else image.convert("I;16")
    elif mode == "P":
        image = Image.fromarray(rgb).quantize(16)
    elif mode == "LA":
        image = Image.fromarray(np.stack([rgb[..., 0], rgb[..., 1]], axis=-1), mode="LA")
    elif mode == "RGBA":
        image = Image.fromarray(np.concatenate([rgb, rgb[..., 1:2]], axis=-1), mode="RGBA")
    elif mode == "CMYK":
        image = Image.fromarray(rgb).convert("CMYK")
    assert image.mode == mode
    path = folder / f"{mode.replace(';', '_')}.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode, reopened.mode
    return path


def _write_rotated_photo(folder: Path) -> Path:
    """A JPEG stored sideways with EXIF orientation 6 ("rotate 90 degrees clockwise to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = folder / "sideways.jpg"
    Image.fromarray(_pattern()).save(path, exif=exif.tobytes(), quality=95)
    return path


def _pixels(processor, image) -> torch.Tensor:
    return processor(text=["<image>"], images=[image], return_tensors="pt")["pixel_values"]


def _load_app():
    if "ross_spaces_app" not in sys.modules:  # as tests/test_spaces.py loads it (the Space imports nothing of ours)
        spec = importlib.util.spec_from_file_location("ross_spaces_app", APP_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["ross_spaces_app"] = module
        spec.loader.exec_module(module)
    return sys.modules["ross_spaces_app"]


@pytest.fixture()
def space(tiny_model, tiny_processor):
    """upload(path) -> what the Space's image component hands our code for that uploaded file."""
    pytest.importorskip("gradio", reason="gradio is not installed (demo extra)")
    from gradio.data_classes import ImageData

    app = _load_app()
    demo = app.build_demo(app.LoadedModel(tiny_model, tiny_processor, "tiny", torch.device("cpu"), torch.float32))
    component = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "input-image")
    return lambda path: component.preprocess(ImageData(path=str(path), orig_name=path.name))


def _training_item_image(folder: Path, image_path: Path) -> Image.Image:
    data = folder / "data.json"
    data.write_text(json.dumps([{"id": "s", "image": image_path.name, "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a pattern"}]}]))
    (image,) = load_training_dataset(data, image_folder=str(folder))[0]["images"]
    return image


def _eval_row(folder: Path, image_path: Path) -> dict:
    tsv = folder / "pope.tsv"
    encoded = base64.b64encode(image_path.read_bytes()).decode()
    tsv.write_text(f"index\timage\tquestion\tanswer\tcategory\n0\t{encoded}\tIs there a dog?\tno\trandom\n")
    (row,) = BENCHMARKS["pope"].load(tsv)
    return row


@pytest.mark.parametrize("mode", ["I;16", "P", "LA", "CMYK", "RGBA"])
def test_space_sees_the_pixels_the_processor_sees(space, tiny_processor, tmp_path, mode):
    path = _write_mode(tmp_path, mode)
    with Image.open(path) as original:
        expected = _pixels(tiny_processor, original)
    uploaded = space(path)
    torch.testing.assert_close(_pixels(tiny_processor, uploaded), expected, rtol=0, atol=0)
    # ... and the training data path, which converts before the processor, agrees too.
    torch.testing.assert_close(_pixels(tiny_processor, _training_item_image(tmp_path, path)), expected, rtol=0, atol=0)


def test_exif_orientation_is_applied_on_every_path(space, tiny_processor, tmp_path):
    path = _write_rotated_photo(tmp_path)
    with Image.open(path) as raw:
        assert raw.size == (24, 16) and raw.getexif()[0x0112] == 6
        upright = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    assert upright.shape == (24, 16, 3)  # turned: 16 wide, 24 high

    with Image.open(path) as raw:
        assert np.array_equal(np.asarray(upright_rgb(raw)), upright)
        from_processor = _pixels(tiny_processor, raw)
    from_training = _training_item_image(tmp_path, path)
    row = _eval_row(tmp_path, path)
    (from_eval,) = decode_images(row, 0)
    from_space = space(path)

    assert np.array_equal(np.asarray(from_training), upright)
    assert np.array_equal(np.asarray(from_eval), upright)
    assert np.array_equal(np.asarray(upright_rgb(from_space)), upright)
    for image in (from_training, row["images"][0], from_eval, from_space):
        torch.testing.assert_close(_pixels(tiny_processor, image), from_processor, rtol=0, atol=0)
    # Applying the rule twice changes nothing (Gradio already turned the upload; the tag is gone).
    assert np.array_equal(np.asarray(upright_rgb(upright_rgb(Image.open(path)))), upright)


@pytest.mark.parametrize("bits", [16, 8])
def test_a_depth_map_reaches_the_model_as_the_same_pixels_on_every_path(tiny_model, tiny_processor, tmp_path, bits):
    pytest.importorskip("gradio", reason="gradio is not installed (demo extra)")
    from datasets import Dataset, Features, Image as ImageFeature, Value
    from gradio.data_classes import ImageData

    rgb_path, depth_path = tmp_path / "rgb.png", tmp_path / "depth.png"
    Image.fromarray(_pattern()).save(rgb_path)
    values = _pattern()[..., 0].astype(np.uint16) * 9 + 300  # millimetres: 300..2595, every bit of the packing used
    Image.fromarray(values if bits == 16 else (values % 256).astype(np.uint8)).save(depth_path)
    with Image.open(depth_path) as raw:
        assert raw.mode == ("I;16" if bits == 16 else "L")
        expected = np.asarray(depth_to_rgb(raw))
        expected_pixels = _pixels(tiny_processor, depth_to_rgb(raw))
    assert len(np.unique(expected.reshape(-1, 3), axis=0)) > 1

    # Training: an RGB-D record ([rgb, depth], depth_images [1]).
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "s", "image": [rgb_path.name, depth_path.name], "depth_images": [1],
                                 "conversations": [{"from": "human", "value": "<image>\n<image>\nWhich is closer?"},
                                                   {"from": "gpt", "value": "A"}]}]))  # fmt: skip
    training_rgb, training_depth = load_training_dataset(data, image_folder=str(tmp_path))[0]["images"]
    # Evaluation: the RGB-D benchmark's loader reads the stored PNG bytes.
    features = Features({"Index": Value("int64"), "Question": Value("string"), "Options": Value("string"),
                         "Correct Answer": Value("string"), "image": ImageFeature(), "depth": ImageFeature()})
    Dataset.from_dict({"Index": [1], "Question": ["Which object is closer to the camera?"],
                       "Options": ["(a) x (b) y"], "Correct Answer": ["(a)"],
                       "image": [{"bytes": rgb_path.read_bytes(), "path": None}],
                       "depth": [{"bytes": depth_path.read_bytes(), "path": None}]},
                      features=features).save_to_disk(str(tmp_path / "bench"))  # fmt: skip
    (row,) = get_benchmark("synthetic_depth_rgbd").load(tmp_path / "bench")
    eval_rgb, eval_depth = decode_images(row, 0)
    # The Space: its depth component hands over the upload, the app applies the model's own depth rule.
    app = _load_app()
    loaded = app.LoadedModel(tiny_model, tiny_processor, "tiny", torch.device("cpu"), torch.float32)
    demo = app.build_demo(loaded)
    component = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "input-depth")
    uploaded = component.preprocess(ImageData(path=str(depth_path), orig_name=depth_path.name))
    space_rgb, space_depth = app.model_images(loaded, Image.open(rgb_path), uploaded)

    for depth in (training_depth, eval_depth, space_depth):
        assert np.array_equal(np.asarray(depth), expected)
        torch.testing.assert_close(_pixels(tiny_processor, depth), expected_pixels, rtol=0, atol=0)
    for image in (training_rgb, eval_rgb, space_rgb):
        assert np.array_equal(np.asarray(upright_rgb(image)), _pattern())


# ---------------------------------------------------------------------------------------------------------------------
# The processor on images it cannot use
# ---------------------------------------------------------------------------------------------------------------------


def test_processor_names_the_truncated_image(tiny_processor, tmp_path):
    good = Image.fromarray(_pattern())
    buffer = io.BytesIO()
    good.save(buffer, format="PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    lazy = Image.open(cut)  # the header is intact: only decoding fails
    with pytest.raises(ValueError, match=r"images\[1\] \(PNG file .*cut\.png, RGB 24x16\): cannot decode the image: "
                                         r"OSError: image file is truncated"):
        tiny_processor(text=["<image> <image>"], images=[good, lazy], return_tensors="pt")


@pytest.mark.parametrize("bad", [42, {"bytes": b"x"}, None])
def test_processor_names_a_non_image(tiny_processor, bad):
    good = Image.fromarray(_pattern())
    with pytest.raises(TypeError, match=rf"images\[1\] is a {type(bad).__name__}, not an image"):
        tiny_processor(text=["<image> <image>"], images=[good, bad], return_tensors="pt")
