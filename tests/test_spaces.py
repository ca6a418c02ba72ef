"""The Spaces demo (spaces/app.py): loading, streamed answers, the reconstruction panel, and the page in Chromium.

The browser test drives Debian's chromium (`/usr/bin/chromium`, installed by `make test` / `make browser`) with the
`playwright` Python package (dev extra); Playwright's own browser downloads are never used. It skips, saying why,
when either is missing. Set ROSS_SPACES_SCREENSHOT=PATH to keep its screenshot (the docs one is made that way).
"""

import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_OBJECTIVE, load_spaces_app
from PIL import Image

from modeling_ross import RossProcessor, from_components


REPO_ROOT = Path(__file__).resolve().parents[1]
# Debian chromium on this closed network: without the background-networking flags it keeps dialling out.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
QUESTION = "What colour is the circle?"

gradio = pytest.importorskip("gradio", reason="gradio is not installed (demo extra: pip install -e '.[demo]')")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


app = load_spaces_app()


def _save_model(components, folder: Path, **settings) -> Path:
    """A tiny ROSS model + processor as a Hub-ready folder (code files and auto_map included)."""
    torch.manual_seed(0)
    model = from_components(**{**components, **TINY_OBJECTIVE, **settings})
    if model.denoiser is not None:  # "train" it: the zero-init denoiser ignores its condition, i.e. the image
        with torch.no_grad():
            for parameter in model.denoiser.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    RossProcessor.from_components(components["vision_model"], components["language_model"]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tiny_components, tmp_path_factory):
    # ROSS_SPACES_MODEL=runs/demo/model: the tests (and the screenshot, with ROSS_SPACES_SCREENSHOT) on a trained model.
    if os.environ.get("ROSS_SPACES_MODEL"):
        return Path(os.environ["ROSS_SPACES_MODEL"])
    # save_teacher: the VAE travels in the checkpoint, so `load_objective=True` needs nothing else.
    return _save_model(tiny_components, tmp_path_factory.mktemp("ross-demo-model"), save_teacher=True)


@pytest.fixture(scope="module")
def loaded(model_dir):
    return app.load_model(str(model_dir))


def _example(name: str = "triangle_and_circle") -> Path:
    path = REPO_ROOT / "spaces" / "examples" / f"{name}.png"
    assert path.is_file(), f"missing example image {path}"
    return path


def _greedy_answer(loaded, image, question: str, max_new_tokens: int = 64) -> str:
    """The answer computed without the app's streaming code: one `generate` call, decoded at once."""
    processor = loaded.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        output = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------------------------------
# Without a browser
# ---------------------------------------------------------------------------------------------------------------------


def test_model_is_chosen_by_flag_then_env_then_make_demo(monkeypatch, tmp_path):
    monkeypatch.setenv("ROSS_MODEL", "user/from-env")
    assert app.resolve_model("from/flag") == "from/flag"
    assert app.resolve_model(None) == "user/from-env"
    monkeypatch.delenv("ROSS_MODEL")
    monkeypatch.setattr(app, "DEFAULT_MODEL", tmp_path / "runs" / "demo" / "model")
    with pytest.raises(SystemExit, match="make demo"):
        app.resolve_model(None)
    (tmp_path / "runs" / "demo" / "model").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "model" / "config.json").write_text("{}")
    assert app.resolve_model(None) == str(tmp_path / "runs" / "demo" / "model")
    assert app.parse_args(["--model", "m", "--port", "7000"]).port == 7000


def test_header_names_the_model_not_a_temporary_path(tmp_path, monkeypatch):
    folder = tmp_path / "a" / "b" / "ross-tiny"
    folder.mkdir(parents=True)
    assert app.display_name("user/ross-qwen2-7b") == "user/ross-qwen2-7b"  # a Hub id as given
    assert app.display_name(str(folder)) == str(Path("b", "ross-tiny"))  # outside the working directory
    monkeypatch.chdir(tmp_path)
    assert app.display_name(str(folder)) == str(Path("a", "b", "ross-tiny"))  # relative to it
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# ross-tiny-demo\n\nText.\n")
    assert app.display_name(str(folder)) == "ross-tiny-demo"  # the model card's title


def test_examples_are_synthetic_scenes():
    assert len(app.EXAMPLES) >= 3
    for path in app.EXAMPLES:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (48, 48)


def test_reconstruction_panel(loaded):
    assert loaded.reconstruction_error is None
    assert loaded.model.denoiser is not None and loaded.device.type == "cpu" and loaded.dtype == torch.float32
    image = Image.open(_example())
    result, info = app.reconstruct(loaded, image, steps=3, seed=1)
    assert isinstance(result, Image.Image) and result.size == (app.DISPLAY_SIZE, app.DISPLAY_SIZE)
    assert "3 DDIM steps" in info and "seed 1" in info
    again, _ = app.reconstruct(loaded, image, steps=3, seed=1)
    assert again.tobytes() == result.tobytes()  # seeded
    other, _ = app.reconstruct(loaded, Image.open(_example("red_triangle")), steps=3, seed=1)
    assert other.tobytes() != result.tobytes()  # conditioned on the image
    assert app.reconstruct(loaded, None)[0] is None


def _fit_head_to_uploads(loaded, images, steps: int = 300):
    """Calibrate the random teacher as a real VAE is (unit-variance latents), then train only the visual head on
    these images' visual outputs, so that it reads its condition as a trained model's does."""
    model, processor = loaded.model, loaded.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": app.RECONSTRUCTION_PROMPT}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[prompt] * len(images), images=images, return_tensors="pt")
    with torch.no_grad():
        latents = model.teacher.vae.encode(model.teacher.preprocess(batch["pixel_values"])).latent_dist.mean
        model.teacher.vae.register_to_config(shift_factor=latents.mean().item(), scaling_factor=1 / latents.std().item())
        outputs = model.model(**batch, output_hidden_states=model.condition_hidden_states_request())
        condition = model.get_visual_outputs(outputs)
        target = model.teacher.encode_distribution(batch["pixel_values"])[0]
    optimizer = torch.optim.Adam(model.denoiser.parameters(), lr=3e-3)
    with torch.enable_grad():
        for _ in range(steps):
            loss = model.objective.loss(model.denoiser, model.teacher, condition, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.denoiser.eval()
    return loss.item()


def test_reconstruction_panel_follows_the_upload(tiny_components, tmp_path):
    # ROSS^R-Latent (an MLP head regressing the VAE latents, deterministic): the panel's code path is the objective's
    # `reconstruct`, and a head fitted to two uploads in a second shows whether the panel follows the upload.
    folder = _save_model(tiny_components, tmp_path / "regress", save_teacher=True, objective="regress",
                         regress_loss="mse")  # fmt: skip
    loaded = app.load_model(str(folder))
    uploads = [Image.open(_example("red_triangle")).convert("RGB"), Image.open(_example("four_shapes")).convert("RGB")]
    _fit_head_to_uploads(loaded, uploads)
    shown = [app.reconstruct(loaded, image, steps=10, seed=0) for image in uploads]
    arrays = [torch.from_numpy(np.asarray(image, dtype=np.float32) / 255) for image, _ in shown]
    # the teacher's decode of each upload, at the panel's display size
    processor, model = loaded.processor, loaded.model
    with torch.no_grad():
        pixels = processor(images=uploads, return_tensors="pt")["pixel_values"]
        decodes = model.teacher.decode(model.teacher.encode_distribution(pixels)[0]).float().clamp(0, 1)
    decodes = [
        Image.fromarray((d.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).resize(
            (app.DISPLAY_SIZE, app.DISPLAY_SIZE), Image.NEAREST
        )
        for d in decodes
    ]
    decodes = [torch.from_numpy(np.asarray(d, dtype=np.float32) / 255) for d in decodes]
    # Two different uploads give clearly different reconstructions, about as different as their teacher decodes
    # (a denoiser that ignores its condition gives the same image up to ~1/255 whatever the upload)...
    difference = (arrays[0] - arrays[1]).abs().mean().item()
    decode_difference = (decodes[0] - decodes[1]).abs().mean().item()
    assert difference > 0.5 * decode_difference > 0.01, (difference, decode_difference)
    # ...each nearer its own upload's teacher decode than the other upload's.
    for own, other in ((0, 1), (1, 0)):
        errors = [(arrays[own] - decodes[k]).square().mean().item() for k in (own, other)]
        assert errors[0] < 0.5 * errors[1], errors
    for _, info in shown:
        assert "dB PSNR against the teacher's own decode of this image" in info


def test_answers_stream_and_match_greedy_generation(loaded):
    image = Image.open(_example())
    history = [{"role": "user", "content": QUESTION}]
    updates = [list(h) for h in app.stream_answer(loaded, image, history, max_new_tokens=16)]
    answers = [h[-1]["content"] for h in updates]
    assert all(h[:-1] == history and h[-1]["role"] == "assistant" for h in updates)
    if not os.environ.get("ROSS_SPACES_MODEL"):  # a trained model may answer in one word
        assert len(set(answers)) >= 3, "the answer should arrive in several pieces"
    assert all(b.startswith(a) for a, b in zip(answers, answers[1:]))  # it only grows
    assert answers[-1] == _greedy_answer(loaded, image, QUESTION, max_new_tokens=16)


def test_bfloat16_as_on_cuda(model_dir):
    """The GPU setting (bf16 weights, fp32 pixel inputs), here on the CPU: both panels still work."""
    loaded = app.load_model(str(model_dir), device="cpu", dtype=torch.bfloat16)
    assert loaded.model.dtype == torch.bfloat16 and next(loaded.model.denoiser.parameters()).dtype == torch.bfloat16
    image = Image.open(_example())
    result, _ = app.reconstruct(loaded, image, steps=2)
    assert result.size == (app.DISPLAY_SIZE, app.DISPLAY_SIZE)
    history = list(app.stream_answer(loaded, image, [{"role": "user", "content": QUESTION}], max_new_tokens=4))[-1]
    assert history[-1]["role"] == "assistant" and history[-1]["content"]


def test_image_goes_in_the_first_user_turn_only():
    history = [
        {"role": "user", "content": "What colour?"},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "Where?"}]},
    ]
    messages = app.to_model_messages(history, with_image=True)
    assert messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "What colour?"}]
    assert messages[1]["content"] == [{"type": "text", "text": "red"}]
    assert messages[2]["content"] == [{"type": "text", "text": "Where?"}]
    assert all(part["type"] == "text" for m in app.to_model_messages(history, False) for part in m["content"])


def test_a_depth_map_is_the_second_image_of_the_first_turn(loaded):
    """SpatialBot's layout: [RGB, depth map]; the map goes through the model's own depth rule (a 16-bit map here)."""
    import numpy as np

    from modeling_ross.processing_ross import depth_to_rgb

    image = Image.open(_example())
    depth = Image.fromarray((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 3 + 400))
    assert app.to_model_messages([{"role": "user", "content": "Q"}], True, num_images=2)[0]["content"] == [
        {"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q"}]  # fmt: skip
    rgb, encoded = app.model_images(loaded, image, depth)
    assert rgb is image and np.array_equal(np.asarray(encoded), np.asarray(depth_to_rgb(depth)))

    question = "Which object is closer to the camera?"
    history = list(app.stream_answer(loaded, image, [{"role": "user", "content": question}], 8, depth))[-1]
    processor = loaded.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[image, depth_to_rgb(depth)], return_tensors="pt")
    with torch.no_grad():
        output = loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    expected = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert history[-1]["content"] == (expected if expected.strip() else "(empty answer)")
    with pytest.raises(gradio.Error, match="goes with an RGB image"):
        app.model_images(loaded, None, depth)
    with pytest.raises(gradio.Error, match="got mode P"):
        app.model_images(loaded, image, Image.new("P", (8, 8)))


def test_baseline_model_chats_and_the_panel_says_why(tiny_components, tmp_path):
    loaded = app.load_model(str(_save_model(tiny_components, tmp_path / "baseline", objective="none")))
    assert "no denoiser" in loaded.reconstruction_error
    result, info = app.reconstruct(loaded, Image.open(_example()))
    assert result is None and info.startswith("**Reconstruction unavailable:**") and "baseline" in info


def test_unloadable_teacher_falls_back_to_chat_only(tiny_components, tmp_path):
    """The teacher was not saved and its source is gone: chat works, the panel reports the loading error."""
    teacher = shutil.copytree(tiny_components["teacher"], tmp_path / "vae-elsewhere")
    folder = _save_model({**tiny_components, "teacher": str(teacher)}, tmp_path / "model")
    shutil.rmtree(teacher)
    loaded = app.load_model(str(folder))
    assert loaded.model.denoiser is None
    assert loaded.reconstruction_error.startswith("the reconstructive objective could not be loaded")
    assert app.reconstruct(loaded, Image.open(_example()))[0] is None
    history = list(app.stream_answer(loaded, None, [{"role": "user", "content": "Hello"}], max_new_tokens=4))[-1]
    assert history[-1]["role"] == "assistant" and history[-1]["content"]


# ---------------------------------------------------------------------------------------------------------------------
# In the browser
# ---------------------------------------------------------------------------------------------------------------------


def _chromium_or_skip() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (dev extra: pip install -e '.[dev]')")
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make browser` installs it; Playwright's own are never used)")
    return chromium


@pytest.fixture()
def chromium():
    """Skip before any model is built when the browser or its driver is missing."""
    return _chromium_or_skip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_demo_in_chromium(chromium, loaded, model_dir, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    image_path = _example()
    expected = _greedy_answer(loaded, Image.open(image_path), QUESTION)
    assert expected.strip(), "the tiny model should say something"

    demo = app.build_demo(loaded).queue()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_kwargs())
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)  # a shared 2-core machine can be slow; a real failure still fails
            page.goto(f"http://127.0.0.1:{port}/")

            # The page: title, the model line, an empty reconstruction panel.
            expect(page).to_have_title("ROSS demo")
            expect(page.locator("#model-info")).to_contain_text(app.display_name(str(model_dir)))
            expect(page.locator("#model-info")).to_contain_text("objective denoise")
            expect(page.locator("#reconstruction-info")).to_contain_text("Upload an image")
            expect(page.locator("#reconstruction img")).to_have_count(0)

            # Upload: the image shows, and the reconstruction appears next to it.
            page.locator("#input-image input[type=file]").set_input_files(str(image_path))
            expect(page.locator("#input-image img")).to_have_count(1)
            reconstruction = page.locator("#reconstruction img")
            expect(reconstruction).to_have_count(1)
            page.wait_for_function(
                "() => { const i = document.querySelector('#reconstruction img'); return i && i.naturalWidth > 0; }"
            )
            assert reconstruction.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [app.DISPLAY_SIZE] * 2
            expect(page.locator("#reconstruction-info")).to_contain_text("Reconstructed from the LLM's visual outputs")

            # Ask: the question shows as the user's message and the streamed answer fills the bot's message.
            page.locator("#question textarea").fill(QUESTION)
            page.locator("#question textarea").press("Enter")
            expect(page.locator("#chatbot [data-testid=user]")).to_have_text(QUESTION)
            bot = page.locator("#chatbot [data-testid=bot]")
            squash = "".join(expected.split())
            page.wait_for_function(
                "([squash]) => { const b = document.querySelector('#chatbot [data-testid=bot]');"
                " return b && b.innerText.replace(/\\s+/g, '') === squash; }",
                arg=[squash],
            )
            assert "".join(bot.inner_text().split()) == squash
            expect(page.locator("#question textarea")).to_have_value("")

            screenshot = tmp_path / "spaces-demo.png"
            page.screenshot(path=str(screenshot), full_page=True)

            # An example image: served from spaces/examples, it replaces the image and starts a new conversation.
            first_src = reconstruction.get_attribute("src")
            page.get_by_text("red triangle", exact=True).click()
            expect(page.locator("#chatbot [data-testid=bot]")).to_have_count(0)
            expect(reconstruction).not_to_have_attribute("src", first_src)
            expect(page.locator("#reconstruction-info")).to_contain_text("Reconstructed from the LLM's visual outputs")
            browser.close()
        with Image.open(screenshot) as shot:
            assert shot.size[0] == 1280
        if os.environ.get("ROSS_SPACES_SCREENSHOT"):
            shutil.copyfile(screenshot, os.environ["ROSS_SPACES_SCREENSHOT"])
    finally:
        demo.close()
