"""ROSS demo (Gradio, Hugging Face Spaces): chat about an image, and see what the model's visual outputs reconstruct.

    python spaces/app.py --model runs/demo/model           # the tiny model of `make demo`, on CPU
    ROSS_MODEL=user/ross-qwen2-7b python spaces/app.py     # a Hub repo (bf16 on CUDA when there is a GPU)

The model is loaded with `trust_remote_code=True`: a ROSS model folder or Hub repo carries its own code
(`configuration_ross.py`, `modeling_ross.py`, ... and `auto_map` in `config.json`), so this app imports nothing from the
`ross` repository and runs on a Space with only `requirements.txt`.

Answers are streamed (`TextIteratorStreamer`, `generate` in a thread). The reconstruction panel runs
`model.reconstruct` (reverse diffusion with the trained denoiser conditioned on the LLM's visual outputs, then the
teacher's decoder); it needs the model loaded with `load_objective=True`. When that fails (a baseline model without a
denoiser, a teacher that cannot be fetched, a target that has no decoder), the model is loaded for chat only and the
panel says why.

An optional depth map (SpatialBot's RGB-D layout, the paper's Table 5) goes in as a second image after the RGB one: a
single-channel map in millimetres (a 16-bit PNG) is turned into 3 channels by the model's own depth rule
(`depth_to_rgb` in the checkpoint's `processing_ross.py`, the rule training and evaluation use); the reconstruction
panel shows the RGB image's.

A native VLM folder (a plain Qwen2.5-VL, llava-hf Llava, ... with `ross_head/`, as `RossForPreTraining` saves) loads
as transformers' own class for chat; its reconstruction panel needs this project's `modeling_ross` installed and a
local folder (`load_native_model`), else it says why.

An upload that cannot be decoded (corrupt, truncated, empty, not an image, a decompression bomb) is a message in the
page naming the file and the problem (`upload_image`); a `--model` folder that does not exist or holds no weights is
one `error: ...` line and status 2.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, TextIteratorStreamer


HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "runs" / "demo" / "model"  # written by `make demo`
EXAMPLES = sorted((HERE / "examples").glob("*.png"))
RECONSTRUCTION_PROMPT = "Describe the image briefly."  # text after the image does not change its visual outputs
DISPLAY_SIZE = 256  # the tiny model works at 32 px: show its images enlarged (nearest neighbour)
NATIVE_HEAD_FOLDER = "ross_head"  # RossForPreTraining's head folder next to a plain (native) VLM


@dataclass
class LoadedModel:
    """The model, its processor, and why reconstruction is unavailable (None when it works)."""

    model: torch.nn.Module
    processor: object
    name: str
    device: torch.device
    dtype: torch.dtype
    reconstruction_error: str | None = None
    # A native VLM (see `load_native_model`): its `RossForPreTraining` (VLM + ross_head/) when the head could be loaded.
    native_ross: torch.nn.Module | None = None

    def describe(self) -> str:
        config = self.model.config
        if config.model_type != "ross":
            objective = "ROSS head not loaded"
            if self.native_ross is not None:
                objective = f"objective `{self.native_ross.head_config.objective_config.objective}`"
            return (
                f"**Model** `{self.name}` · {self.device.type} · {str(self.dtype).replace('torch.', '')} · "
                f"native `{config.model_type}` trained with ROSS · {objective}"
            )
        objective = config.objective_config
        return (
            f"**Model** `{self.name}` · {self.device.type} · {str(self.dtype).replace('torch.', '')} · "
            f"objective `{objective.objective}` / target `{objective.target}` · "
            f"{config.vision_config.image_size} px images, {config.image_seq_length} visual tokens"
        )


def resolve_model(cli_value: str | None = None) -> str:
    """`--model`, else `$ROSS_MODEL`, else `runs/demo/model` if `make demo` wrote it."""
    value = cli_value or os.environ.get("ROSS_MODEL")
    if value:
        return value
    if (DEFAULT_MODEL / "config.json").is_file():
        return str(DEFAULT_MODEL)
    raise SystemExit(
        f"No model: pass --model PATH_OR_HUB_ID or set ROSS_MODEL (the default {DEFAULT_MODEL} is written by "
        "`make demo`)."
    )


def _objective_problem(model, missing_keys) -> str | None:
    """Why `model.reconstruct` cannot work on this model (None if it can)."""
    objective = model.config.objective_config
    if not model.can_reconstruct:
        if not objective.enabled:
            return f"the model has no denoiser (objective `{objective.objective}`: a baseline without the visual loss)."
        return f"target `{objective.target}` has no decoder back to pixels."
    if model.config.uses_queries:
        return "the model is the generative variant (`condition: queries`): it creates images from captions."
    if any(key.startswith("denoiser.") for key in missing_keys):
        return "the checkpoint holds no trained denoiser weights."
    return None


def display_name(name: str) -> str:
    """What the header calls the model: a Hub id as given; for a local folder the title of its model card
    (`README.md`'s first `# ` heading) when it has one, else its path relative to the working directory, else the
    folder's last two parts (never a long temporary path)."""
    folder = Path(name)
    if not folder.is_dir():
        return name
    card = folder / "README.md"
    if card.is_file():
        for line in card.read_text(errors="replace").splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    resolved = folder.resolve()
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(Path(*resolved.parts[-2:]))


class ModelPathError(ValueError):
    """The model path is no loadable model: the message names it and what is missing."""


WEIGHTS_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def model_path_problem(name: str) -> str | None:
    """Why `name` cannot be loaded, checked before loading (None when it may be a model): a folder needs
    `config.json` and weights; a path that is no folder and not shaped like a Hub id does not exist (huggingface_hub
    would call it a malformed repo id)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        missing = [] if (folder / "config.json").is_file() else ["config.json"]
        if not any((folder / weights).is_file() for weights in WEIGHTS_NAMES):
            missing.append(f"weights ({' or '.join(WEIGHTS_NAMES[:2])})")
        return f"model folder {folder} has no {' and no '.join(missing)}" if missing else None
    if folder.exists():
        return f"{name} is a file, not a model folder"
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name):
        return f"model folder {name} does not exist"
    return None


def load_model(name: str, device: str | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """Load `name` (folder or Hub id) with its remote code; bf16 on CUDA, fp32 on CPU unless `dtype` says otherwise.
    A path that is no model (`model_path_problem`) is a `ModelPathError`."""
    problem = model_path_problem(str(name))
    if problem is not None:
        raise ModelPathError(problem)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model_type = AutoConfig.from_pretrained(name, trust_remote_code=True).model_type
    if model_type != "ross":
        return load_native_model(name, device, dtype, model_type)
    kwargs = dict(trust_remote_code=True, dtype=dtype)
    try:
        # `load_objective=True` also builds the frozen teacher: from the checkpoint if it was saved there
        # (save_teacher), else from its own source (e.g. the FLUX VAE repo).
        model, info = AutoModelForImageTextToText.from_pretrained(
            name, load_objective=True, output_loading_info=True, **kwargs
        )
        problem = _objective_problem(model, info["missing_keys"])
    except Exception as error:  # noqa: BLE001 - the chat still works without the objective
        model = AutoModelForImageTextToText.from_pretrained(name, **kwargs)
        problem = f"the reconstructive objective could not be loaded ({type(error).__name__}: {error})."
    processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    model.to(device).eval()
    return LoadedModel(model, processor, display_name(str(name)), device, dtype, problem)


def load_native_model(name: str, device: torch.device, dtype: torch.dtype, model_type: str) -> LoadedModel:
    """A native VLM (a plain Qwen2.5-VL, llava-hf Llava, ... as `RossForPreTraining.save_pretrained` writes it, with
    the trained head in `ross_head/`): chat with transformers' own class. The reconstruction panel needs
    `RossForPreTraining` from this project's `modeling_ross` (the head has no remote code) and a local folder; without
    either the model is loaded for chat only and the panel says why."""
    problem, ross = None, None
    if not (Path(name) / NATIVE_HEAD_FOLDER / "config.json").is_file():
        problem = (
            f"this is a plain `{model_type}` checkpoint without a local `{NATIVE_HEAD_FOLDER}/` folder (the ROSS "
            "head); for a Hub repo, download it first (`hf download REPO --local-dir DIR`) and pass the folder."
        )
    else:
        try:
            from modeling_ross.modeling_ross_pretraining import RossForPreTraining
        except ImportError:
            problem = (
                f"the ROSS head of this native `{model_type}` checkpoint (`{NATIVE_HEAD_FOLDER}/`) runs with the ROSS "
                "project's `modeling_ross` code (`RossForPreTraining`), which is not installed here."
            )
        else:
            try:
                ross = RossForPreTraining.from_pretrained(name, dtype=dtype)
            except Exception as error:  # noqa: BLE001 - the chat still works without the head (e.g. no teacher)
                problem = (
                    f"the ROSS head in `{NATIVE_HEAD_FOLDER}/` could not be loaded ({type(error).__name__}: {error})."
                )
    if ross is not None:
        ross.to(device).eval()
        model = ross.model
    else:
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(name)
    return LoadedModel(model, processor, display_name(str(name)), device, dtype, problem, native_ross=ross)


# ---------------------------------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------------------------------


def upload_problem(error: Exception) -> str:
    """What is wrong with an upload that PIL could not open or decode, in words."""
    if isinstance(error, Image.DecompressionBombError):
        return f"the image is too large to decode safely ({error})"
    if isinstance(error, UnidentifiedImageError):
        return "it is not an image file PIL can read (empty, corrupt, or another kind of file)"
    return f"it cannot be decoded ({type(error).__name__}: {error})"


def upload_image(**kwargs) -> gr.Image:
    """`gr.Image(**kwargs)` that decodes each upload fully while reading it, so that a file Gradio or PIL cannot decode
    (corrupt, truncated, empty, not an image, a decompression bomb) is a message in the page naming the file and the
    problem (`gr.Error`), not a server traceback. (The component's own `preprocess` is wrapped: a subclass of a Gradio
    component would make Gradio write a `.pyi` stub next to this file.)"""
    component = gr.Image(**kwargs)
    read = component.preprocess

    def preprocess(payload):
        try:
            image = read(payload)
            if isinstance(image, Image.Image):
                image.load()  # a truncated file would otherwise fail later, deep in the processor
            return image
        except gr.Error:
            raise
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            name = getattr(payload, "orig_name", None) or "the uploaded file"
            raise gr.Error(f"{component.label}: cannot use {name}: {upload_problem(error)}.") from error

    component.preprocess = preprocess
    return component


# ---------------------------------------------------------------------------------------------------------------------
# Chat
# ---------------------------------------------------------------------------------------------------------------------


def _text(content) -> str:
    """The text of a Gradio message content (a string, a `{"type": "text", "text": ...}` part, or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    return "".join(_text(part) for part in content or [])


def to_model_messages(history: list[dict], with_image: bool, num_images: int = 1) -> list[dict]:
    """Gradio chat history -> chat-template messages; the image(s) go at the start of the first user turn."""
    messages = []
    for turn in history:
        content = [{"type": "text", "text": _text(turn["content"])}]
        if with_image and turn["role"] == "user" and not any(m["role"] == "user" for m in messages):
            content[:0] = [{"type": "image"} for _ in range(num_images)]
        messages.append({"role": turn["role"], "content": content})
    return messages


def depth_image(loaded: LoadedModel, depth: Image.Image) -> Image.Image:
    """An uploaded depth map -> the 3-channel image the model was trained on, by the model's own depth rule."""
    rule = getattr(inspect.getmodule(type(loaded.processor)), "depth_to_rgb", None)
    if rule is None:
        raise gr.Error("This model's processor code has no depth rule (depth_to_rgb): it cannot take a depth map.")
    try:
        return rule(depth)
    except ValueError as error:
        raise gr.Error(f"Depth map: {error}") from error


def model_images(loaded: LoadedModel, image: Image.Image | None, depth: Image.Image | None = None) -> list:
    """The images of the first user turn: the RGB image, then the depth map if one was uploaded."""
    if image is None:
        if depth is not None:
            raise gr.Error("A depth map goes with an RGB image: upload the image too.")
        return []
    return [image] if depth is None else [image, depth_image(loaded, depth)]


def stream_answer(loaded: LoadedModel, image: Image.Image | None, history: list[dict], max_new_tokens: int = 64,
                  depth: Image.Image | None = None):  # fmt: skip
    """Yield the history with the assistant's answer growing as tokens arrive (greedy decoding)."""
    processor, model = loaded.processor, loaded.model
    images = model_images(loaded, image, depth)
    messages = to_model_messages(history, with_image=bool(images), num_images=len(images))
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The images nested per prompt (one prompt here): Gemma 3 and Idefics3 / SmolVLM count placeholders per prompt.
    inputs = processor(text=[prompt], images=[images] if images else None, return_tensors="pt")
    inputs = inputs.to(loaded.device)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure = []

    def generate():
        try:
            with torch.inference_mode():
                model.generate(**inputs, streamer=streamer, max_new_tokens=int(max_new_tokens), do_sample=False)
        except Exception as error:  # surfaced below, after the streamer is released
            failure.append(error)
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    history = history + [{"role": "assistant", "content": ""}]
    answer = ""
    for piece in streamer:
        answer += piece
        history[-1] = {"role": "assistant", "content": answer}
        yield history
    thread.join()
    if failure:
        raise gr.Error(f"Generation failed: {failure[0]}")
    if not answer.strip():
        history[-1] = {"role": "assistant", "content": "(empty answer)"}
    yield history


# ---------------------------------------------------------------------------------------------------------------------
# Reconstruction
# ---------------------------------------------------------------------------------------------------------------------


def reconstruct_native(loaded: LoadedModel, batch, steps: int, seed: int, generator):
    """The panel for a native VLM: `RossForPreTraining.reconstruct` on the image's own token grid (not square for
    Qwen-VL), shown with its aspect ratio. No PSNR line: the native teacher decodes per grid, not the whole upload."""
    with torch.no_grad():
        frames = loaded.native_ross.reconstruct(
            num_inference_steps=int(steps), scheduler="ddim", generator=generator, output_type="pil", **batch
        )
    # One reconstruction per frame: one for most VLMs; Idefics3 / SmolVLM split the upload into tiles followed by the
    # global view (the whole upload resized), which is the one that shows all of it.
    result = frames[-1]
    width, height = result.size
    scale = DISPLAY_SIZE / max(height, width)
    shown = result.resize((round(width * scale), round(height * scale)), Image.NEAREST)
    objective = loaded.native_ross.head_config.objective_config
    info = (
        f"Reconstructed from the LLM's visual outputs: {int(steps)} DDIM steps (seed {int(seed)}) with the trained "
        f"denoiser of `{NATIVE_HEAD_FOLDER}/`, decoded by the `{objective.target}` teacher at {width}x{height} px"
        + (f" (the global view; the {len(frames) - 1} tiles are not shown)." if len(frames) > 1 else ".")
    )
    return shown, info


def reconstruct(loaded: LoadedModel, image: Image.Image | None, steps: int = 25, seed: int = 0):
    """(reconstruction image or None, a sentence for the panel)."""
    if image is None:
        return None, "Upload an image to see what the model's visual outputs reconstruct."
    if loaded.reconstruction_error:
        return None, f"**Reconstruction unavailable:** {loaded.reconstruction_error}"
    processor, model = loaded.processor, loaded.model
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": RECONSTRUCTION_PROMPT}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[prompt], images=[[image]], return_tensors="pt").to(loaded.device)
    generator = torch.Generator(device=loaded.device).manual_seed(int(seed))
    if loaded.native_ross is not None:
        return reconstruct_native(loaded, batch, steps, seed, generator)
    with torch.no_grad():
        result = model.reconstruct(
            batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            num_inference_steps=int(steps), scheduler="ddim", generator=generator, output_type="pt",
        )  # fmt: skip
        # What the reconstruction aims at: the teacher's decode of this upload's own latents (posterior mean).
        teacher = model.teacher
        target = teacher.decode(teacher.encode_distribution(batch["pixel_values"])[0]).float().clamp(0, 1)
    mse = (result.float() - target).square().mean().clamp(min=1e-10)
    psnr = (10 * torch.log10(1.0 / mse)).item()
    array = (result[0].permute(1, 2, 0).float().cpu().numpy() * 255).round().astype("uint8")
    size = array.shape[0]
    info = (
        f"Reconstructed from the LLM's visual outputs: {int(steps)} DDIM steps (seed {int(seed)}) with the trained "
        f"denoiser, decoded by the `{model.config.objective_config.target}` teacher at {size}x{size} px; "
        f"{psnr:.1f} dB PSNR against the teacher's own decode of this image."
    )
    return Image.fromarray(array).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.NEAREST), info


# ---------------------------------------------------------------------------------------------------------------------
# UI
# ---------------------------------------------------------------------------------------------------------------------

CSS = """
#input-image img, #input-depth img, #reconstruction img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
"""
DESCRIPTION = """# ROSS: Reconstructive Visual Instruction Tuning
Upload an image and ask about it. On the right of the image: what the model's **visual outputs** (the LLM's hidden
states at the image tokens) reconstruct through the denoiser it was trained with (ICLR 2025,
[paper](https://arxiv.org/abs/2410.09575))."""


def build_demo(loaded: LoadedModel) -> gr.Blocks:
    def on_image(image, steps, seed):
        reconstruction, info = reconstruct(loaded, image, steps, seed)
        return reconstruction, info, []  # a new image starts a new conversation

    def on_reconstruct(image, steps, seed):
        return reconstruct(loaded, image, steps, seed)

    def add_question(question, history):
        if not question or not question.strip():
            return question, history
        return "", (history or []) + [{"role": "user", "content": question.strip()}]

    def respond(image, depth, history, max_new_tokens):
        if not history or history[-1]["role"] != "user":
            yield history
            return
        yield from stream_answer(loaded, image, history, max_new_tokens, depth)

    with gr.Blocks(title="ROSS demo", analytics_enabled=False) as demo:
        gr.Markdown(DESCRIPTION)
        gr.Markdown(loaded.describe(), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=5):
                with gr.Row():
                    # image_mode=None: the upload reaches the processor in its own mode (16-bit, palette, alpha,
                    # CMYK), so the model's RGB conversion, the one training uses, sees the original pixels; Gradio's
                    # default "RGB" would convert first (a 16-bit grayscale photo arrives almost white).
                    image = upload_image(
                        label="Image", type="pil", image_mode=None, sources=["upload", "clipboard"], height=280,
                        elem_id="input-image",
                    )
                    reconstruction = gr.Image(
                        label="Reconstruction", type="pil", interactive=False, height=280,
                        elem_id="reconstruction",
                    )  # fmt: skip
                reconstruction_info = gr.Markdown(reconstruct(loaded, None)[1], elem_id="reconstruction-info")
                # Optional second image (SpatialBot's RGB-D layout): image_mode=None keeps a 16-bit depth PNG 16-bit.
                depth = upload_image(
                    label="Depth map (optional, millimetres, e.g. a 16-bit PNG)", type="pil", image_mode=None,
                    sources=["upload", "clipboard"], height=140, elem_id="input-depth",
                )  # fmt: skip
                if EXAMPLES:
                    gr.Examples(
                        examples=[[str(path)] for path in EXAMPLES], inputs=[image],
                        label="Example images (synthetic scenes)",
                        example_labels=[path.stem.replace("_", " ") for path in EXAMPLES],
                    )  # fmt: skip
                with gr.Accordion("Settings", open=False):
                    max_new_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens")
                    steps = gr.Slider(1, 100, value=25, step=1, label="Denoising steps (DDIM)")
                    seed = gr.Number(value=0, precision=0, label="Noise seed")
                    redo = gr.Button("Reconstruct again", size="sm")
            with gr.Column(scale=6):
                chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chatbot")
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="Ask about the image, e.g. What colour is the circle?", show_label=False,
                        scale=8, elem_id="question", submit_btn=False,
                    )  # fmt: skip
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                gr.ClearButton([chatbot, question], value="Clear chat", size="sm")

        image.change(on_image, [image, steps, seed], [reconstruction, reconstruction_info, chatbot])
        depth.change(lambda _: [], [depth], [chatbot])  # a new depth map starts a new conversation too
        redo.click(on_reconstruct, [image, steps, seed], [reconstruction, reconstruction_info])
        for trigger in (question.submit, send.click):
            trigger(add_question, [question, chatbot], [question, chatbot], queue=False).then(
                respond, [image, depth, chatbot, max_new_tokens], chatbot
            )
    return demo


def launch_kwargs() -> dict:
    """Options for `demo.launch` (Gradio 6 takes theme and CSS here); the examples folder is served."""
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"])  # no web fonts: works offline
    return dict(theme=theme, css=CSS, allowed_paths=[str(HERE / "examples")])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="ROSS model folder or Hub id (default: $ROSS_MODEL, else runs/demo/model)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--host", default=None, help="server address (default: Gradio's, 127.0.0.1 locally)")
    parser.add_argument("--port", type=int, default=None, help="server port (default: Gradio's, 7860)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        loaded = load_model(resolve_model(args.model), device=args.device)
    except ModelPathError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if loaded.reconstruction_error:
        print(f"[ross demo] reconstruction unavailable: {loaded.reconstruction_error}", flush=True)
    build_demo(loaded).queue().launch(server_name=args.host, server_port=args.port, **launch_kwargs())


if __name__ == "__main__":
    main()
