"""Convert the ROSS authors' released checkpoints (`HaochenWang/ross-qwen2-7b`, `model_type: ross_qwen2`) to ROSS.

    python -m modeling_ross.convert_official --src PATH_OR_HUB_ID --dst DIR \
        [--tokenizer PATH] [--vision-tower PATH] [--vae PATH [--vae-subfolder vae]] [--dtype auto|bf16|fp32]
        [--save-teacher]

The output folder loads with `RossForConditionalGeneration.from_pretrained(DST)` and with
`AutoModelForImageTextToText.from_pretrained(DST, trust_remote_code=True)`. It holds the trained denoiser
(`from_pretrained(DST, load_objective=True)` restores it), the processor with the authors' Vicuna-style Qwen2 chat
template, and the flat code files + `auto_map` that `save_pretrained` writes.

How it works, in three steps (`docs/interop.md` has the full mapping table; `docs/authors-format.md` the input format):

1. *Plan*: read `config.json` and the safetensors **headers** only; map every source key to one of our keys or drop it
   with a reason; compare the result with the keys and shapes of a `RossForConditionalGeneration` built on the meta
   device. Any unmapped source key, missing target key or shape mismatch fails here, with the full list, before a
   single byte is written.
2. *Stream*: `safetensors_io.write_shards` plans output shards of at most `max_shard_size` bytes from the sizes alone
   (huggingface_hub's planner), then reads, converts and writes one shard at a time. Peak memory is about one
   output shard plus one tensor, so a 7B checkpoint converts in far less than twice its size.
3. *Write* the config, generation config, code files, and the processor (when a tokenizer is available).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from huggingface_hub import snapshot_download
from transformers import AutoConfig, AutoTokenizer, GenerationConfig
from transformers.dynamic_module_utils import custom_object_save

from .configuration_ross import RossConfig
from .modeling_ross import RossForConditionalGeneration, add_auto_map
from .processing_ross import VICUNA_QWEN2_CHAT_TEMPLATE, RossProcessor, add_image_token, load_image_processor
from .safetensors_io import OutputTensor, SafetensorsError, TensorInfo, read_headers, weight_files, write_shards


DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
          "fp16": torch.float16, "float16": torch.float16}

# Keys the authors' `RossConfig(Qwen2Config)` adds on top of the LLM's config (docs/authors-format.md, section 2).
AUTHORS_CONFIG_KEYS = frozenset(
    {
        "mm_vision_tower", "mm_hidden_size", "mm_vision_select_layer", "mm_vision_select_feature", "mm_projector_type",
        "use_mm_proj", "mm_patch_merge_type", "image_aspect_ratio", "image_embed_len", "image_mean", "image_std",
        "decode_image_size", "mm_pixel_decoder", "ross_enable", "mm_inv_hidden_size", "use_mm_inv_proj",
        "mm_inv_projector_type", "tokenizer_padding_side", "tokenizer_model_max_length", "mm_use_im_start_end",
        "mm_use_im_patch_token", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower",
        "mm_projector_lr", "mm_inv_projector_lr", "mm_vision_tower_lr", "mm_vision_tower_pretrained",
        "tune_mm_vision_resampler", "mm_vision_resampler_lr",
    }
)
SUPPORTED_LLMS = {"ross_qwen2": "qwen2"}

VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
PROJECTOR_PREFIX = "model.mm_projector."
DENOISER_PREFIX = "model.mm_inv_projector.net."
PIXEL_DECODER_PREFIX = "model.pixel_decoder.pixel_decoder."
# The DiT's head count is not stored anywhere: the authors' builder never passes it, so timm/DiT's default 16 is used.
AUTHORS_DENOISER_NUM_HEADS = 16
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")

DROP_HEAD = "SigLIP attention-pool head: unused (features are hidden_states[-2]); our tower has vision_use_head=False"
DROP_POS_EMBED = "fixed 2-D sin-cos table: RossDenoiser recomputes it (checked identical before dropping)"
DROP_VAE = "frozen teacher VAE: not saved (objective_config.save_teacher=False); loaded from objective_config.teacher"


class ConversionError(ValueError):
    """The source checkpoint cannot be converted; the message lists every problem found."""


@dataclass
class TensorSource:
    """One output tensor: where it is read from and how it is transformed."""

    info: TensorInfo
    target: str
    transform: str | None = None  # None | "conv1x1" (W, C, 1, 1) -> (W, C) | "pad_rows"


@dataclass
class ConversionReport:
    """What `convert_official` did. `mapped`: source key -> our key; `dropped`: source key -> reason;
    `from_components`: our key -> component file the tensor came from (weights absent from the checkpoint)."""

    dst: Path
    config: object
    mapped: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)
    from_components: dict = field(default_factory=dict)
    image_token_id: int | None = None
    vocab_size: int | None = None
    resized_vocab: bool = False
    dtype: torch.dtype | None = None
    # The denoiser's stored position table: "sincos" (identical to the fixed table, dropped and recomputed) or
    # "learned" (kept exactly as `denoiser.pos_embed`), its max |stored - sincos| and a sentence for the report.
    position_embedding: str | None = None
    position_embedding_deviation: float | None = None
    position_embedding_note: str | None = None
    vision_tower: str | None = None
    teacher: str | None = None
    processor_saved: bool = False
    shard_files: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------------
# Locating files
# ---------------------------------------------------------------------------------------------------------------------


def _looks_like_hub_id(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", value)) and not value.startswith(".")


def resolve_component(value, checkpoint_dir: Path, override: str | None = None, *, what: str, flag: str) -> str | None:
    """Resolve a component path of the authors' config (`mm_vision_tower`, `mm_pixel_decoder`).

    The authors' code passes these strings straight to `from_pretrained`, i.e. relative to the process CWD at training
    time. Order: the CLI override (as given, then as a Hub id); an absolute path; a folder relative to the checkpoint
    folder; a folder relative to the current directory; a Hub id. Returns an absolute folder path or a Hub id.
    """
    if override:
        path = Path(override).expanduser()
        if path.is_dir():
            return str(path.resolve())
        if _looks_like_hub_id(override):
            return override
        raise ConversionError(f"{flag} {override!r} is neither a folder nor a Hub id.")
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_absolute():
        if path.is_dir():
            return str(path)
        raise ConversionError(f"{what} {value!r} (from config.json) does not exist; pass {flag}.")
    tried = [Path(checkpoint_dir) / path, Path.cwd() / path]
    for candidate in tried:
        if candidate.is_dir():
            return str(candidate.resolve())
    if _looks_like_hub_id(value):
        return value
    raise ConversionError(
        f"{what} {value!r} (from config.json) was not found; looked in {[str(c) for c in tried]}. Pass {flag} "
        "with its folder or Hub id."
    )


def _weight_files(folder: Path, weights_name: str = "model.safetensors") -> list[Path]:
    try:
        return weight_files(folder, weights_name, any_name=True)
    except SafetensorsError as error:
        raise ConversionError(str(error)) from None


def _read_headers(files: list[Path]) -> "OrderedDict[str, TensorInfo]":
    try:
        return read_headers(files)
    except SafetensorsError as error:
        raise ConversionError(str(error)) from None


def _source_folder(src: str) -> Path:
    """The folder of `--src`: a local folder, or a Hub repo's files. A file, or a path that does not exist and is not
    shaped like a Hub id, is a `ConversionError` (not huggingface_hub's repo-id validation error)."""
    path = Path(src).expanduser()
    if path.is_file():
        raise ConversionError(f"--src {src} is a file; pass the checkpoint folder (config.json + safetensors shards) "
                              "or a Hub id")
    if not path.is_dir() and not _looks_like_hub_id(str(src)):
        raise ConversionError(f"--src {src}: no such folder (and not a Hub id)")
    folder = _local_folder(str(src))
    if not (folder / "config.json").is_file():
        raise ConversionError(f"--src {src}: no config.json in {folder}; is it the authors' checkpoint folder?")
    return folder


DENOISER_NAME = re.compile(r"denoiser_vit(\d+)x")  # the authors' `denoiser_vit{L}x`: L DiT blocks


def partial_source_problems(src_dir: Path, headers, official: dict) -> list[str]:
    """What the source lacks by its own account: tensors its index lists that no shard holds, fewer bytes in the shards
    than the index's `total_size`, and DiT blocks missing from 0..L-1 (L from `mm_inv_projector_type`
    `denoiser_vit{L}x`, else the highest block index present). Empty when the source is whole."""
    problems = []
    index_file = src_dir / "model.safetensors.index.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        absent = sorted(set(index.get("weight_map", {})) - set(headers))
        if absent:
            problems.append(f"{len(absent)} tensor(s) that {index_file.name} lists are in no shard: {absent}")
        declared = (index.get("metadata") or {}).get("total_size")
        present = sum(math.prod(info.shape) * info.dtype.itemsize for info in headers.values())
        if isinstance(declared, (int, float)) and present < declared:
            problems.append(f"the shards hold {present} bytes of tensors, {index_file.name} declares total_size "
                            f"{int(declared)} ({int(declared) - present} bytes missing)")
    blocks = {int(k.split(".")[4]) for k in headers if k.startswith(DENOISER_PREFIX + "blocks.")}
    named = DENOISER_NAME.fullmatch(str(official.get("mm_inv_projector_type", "")))
    if blocks or named:
        depth = int(named.group(1)) if named else max(blocks) + 1
        missing = sorted(set(range(depth)) - blocks)
        source = f"mm_inv_projector_type={official['mm_inv_projector_type']!r}" if named else "the block indices"
        if missing:
            problems.append(f"{source} gives a denoiser of {depth} DiT blocks; block(s) {missing} are missing "
                            f"({DENOISER_PREFIX}blocks.N.*)")
        extra = sorted(b for b in blocks if b >= depth)
        if extra:
            problems.append(f"{source} gives a denoiser of {depth} DiT blocks; the weights also hold block(s) {extra}")
    return problems


def _local_folder(path_or_id: str, subfolder: str | None = None, patterns=("*.json", "*.safetensors", "*.txt")) -> Path:
    """A local folder for `path_or_id` (downloading the matching files of a Hub repo if needed)."""
    if os.path.isdir(path_or_id):
        folder = Path(path_or_id)
    else:
        prefix = f"{subfolder}/" if subfolder else ""
        folder = Path(snapshot_download(path_or_id, allow_patterns=[prefix + p for p in patterns]))
    return folder / subfolder if subfolder else folder


# ---------------------------------------------------------------------------------------------------------------------
# Key mapping (docs/interop.md, "Import")
# ---------------------------------------------------------------------------------------------------------------------


_DENOISER_RENAMES = (
    ("x_embedder.proj.", "x_embedder."),
    ("t_embedder.mlp.0.", "t_embedder.linear_1."),
    ("t_embedder.mlp.2.", "t_embedder.linear_2."),
    ("z_embedder.1.", "z_embedder."),
    ("adaLN_modulation.1.", "adaLN_modulation."),
)


def map_official_key(
    key: str, projector_type: str, save_teacher: bool, keep_pos_embed: bool = False
) -> tuple[str | None, str | None]:
    """Map one key of the authors' state dict. Returns `(our_key, None)`, `(None, drop_reason)` or `(None, None)`
    for a key no rule knows (reported as unexpected). `keep_pos_embed`: the denoiser's table differs from the fixed
    sin-cos one (trained in the authors' stage 1) and is kept as `denoiser.pos_embed`."""
    if key.startswith("model.embed_tokens.") or key.startswith("model.layers.") or key.startswith("model.norm."):
        return "model.language_model." + key[len("model."):], None
    if key == "lm_head.weight":
        return key, None
    if key.startswith(VISION_PREFIX):
        rest = key[len(VISION_PREFIX):]
        if rest.startswith("head."):
            return None, DROP_HEAD
        return "model.vision_tower." + rest, None
    if key.startswith(PROJECTOR_PREFIX):
        rest = key[len(PROJECTOR_PREFIX):]
        if projector_type == "mlp2x_gelu":
            renames = {"0.weight": "linear_1.weight", "0.bias": "linear_1.bias",
                       "2.weight": "linear_2.weight", "2.bias": "linear_2.bias"}
        else:  # "linear": a bare nn.Linear
            renames = {"weight": "linear_1.weight", "bias": "linear_1.bias"}
        return ("model.projector." + renames[rest], None) if rest in renames else (None, None)
    if key.startswith(DENOISER_PREFIX):
        rest = key[len(DENOISER_PREFIX):]
        if rest == "pos_embed":
            return ("denoiser.pos_embed", None) if keep_pos_embed else (None, DROP_POS_EMBED)
        for old, new in _DENOISER_RENAMES:
            rest = rest.replace(old, new)
        return "denoiser." + rest, None
    if key.startswith(PIXEL_DECODER_PREFIX):
        if save_teacher:
            return "teacher.vae." + key[len(PIXEL_DECODER_PREFIX):], None
        return None, DROP_VAE
    return None, None


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


def _text_config(official: dict):
    model_type = official.get("model_type")
    if model_type not in SUPPORTED_LLMS:
        raise ConversionError(
            f"Unsupported authors' model_type {model_type!r}; supported: {sorted(SUPPORTED_LLMS)} (the chat template "
            "and the LLM mapping are only known for these)."
        )
    text = {k: v for k, v in official.items() if k not in AUTHORS_CONFIG_KEYS}
    text.update(model_type=SUPPORTED_LLMS[model_type])
    text.pop("auto_map", None)
    config = AutoConfig.for_model(**text)
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    return config


def _vision_config(tower: str, official: dict):
    config = AutoConfig.from_pretrained(tower)
    config = getattr(config, "vision_config", None) or config
    if config.model_type not in ("siglip_vision_model", "clip_vision_model"):
        raise ConversionError(f"Vision tower {tower!r} has model_type {config.model_type!r}; expected SigLIP or CLIP.")
    if config.model_type == "siglip_vision_model":
        config.vision_use_head = False
    problems = []
    if official.get("mm_hidden_size") not in (None, config.hidden_size):
        problems.append(f"mm_hidden_size={official['mm_hidden_size']} but the tower's hidden_size={config.hidden_size}")
    grid = config.image_size // config.patch_size
    if official.get("image_embed_len") not in (None, grid * grid):
        problems.append(f"image_embed_len={official['image_embed_len']} but the tower's grid is {grid}x{grid}")
    if problems:
        raise ConversionError(f"The vision tower {tower!r} does not match config.json: " + "; ".join(problems))
    return config, grid


def _vae_config(vae: str, subfolder: str | None) -> dict:
    try:
        raw = AutoencoderKL.load_config(vae, subfolder=subfolder)
    except (OSError, ValueError) as error:
        raise ConversionError(f"Could not read the AutoencoderKL config of {vae!r}: {error}") from error
    with torch.device("meta"):
        model = AutoencoderKL.from_config(raw)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()}
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _feature_strategy(official: dict, vision_config) -> tuple[int, str]:
    """(vision_feature_layer, vision_feature_select_strategy) of the authors' towers."""
    if vision_config.model_type == "siglip_vision_model":
        return -2, "full"  # SiglipVisionTower hard-codes select_layer=-2 and has no CLS token
    feature = official.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise ConversionError(f"mm_vision_select_feature={feature!r} is not supported (expected 'patch' or 'cls_patch').")
    return int(official.get("mm_vision_select_layer", -2)), "default" if feature == "patch" else "full"


def _mean_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` with extra rows equal to the mean of the existing rows (as transformers' mean resizing)."""
    if rows <= weight.shape[0]:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(rows - weight.shape[0], -1)], dim=0)


# ---------------------------------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------------------------------


def _expected_shapes(config) -> dict[str, tuple]:
    """Keys and shapes of `RossForConditionalGeneration(config, load_objective=True)`, built on the meta device."""
    with torch.device("meta"):
        model = RossForConditionalGeneration(config, load_objective=True)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _tokenizer_source(src_dir: Path, tokenizer: str | None) -> str | None:
    if tokenizer:
        return tokenizer
    if any((src_dir / name).is_file() for name in TOKENIZER_FILES):
        return str(src_dir)
    return None


def inspect_pos_embed(info: TensorInfo, width: int, grid: int) -> tuple[str, float, str]:
    """Compare the stored denoiser table with the fixed 2-D sin-cos table of DiT.

    Returns `(kind, max_deviation, note)`: `"sincos"` only when the stored values are the fp32 table exactly (then it
    is recomputed); anything else is kept exactly (`"learned"`), so the converted denoiser adds the very table the
    authors' forward adds. The authors' stage 1 trains the table, so a released checkpoint is expected to differ.
    """
    stored = info.load()
    table = get_2d_sincos_pos_embed(width, grid, base_size=grid, output_type="pt").float()
    if stored.numel() != table.numel():
        raise ConversionError(f"{info.key} has shape {tuple(stored.shape)}; the denoiser (width {width}, {grid}x{grid} grid) "
                              f"needs (1, {grid * grid}, {width}).")
    deviation = float((stored.float().reshape(table.shape) - table).abs().max())
    if deviation == 0.0:
        return "sincos", 0.0, "identical to the fixed 2-D sin-cos table: dropped, RossDenoiser recomputes it"
    rounding = float((table.to(stored.dtype).float() - table).abs().max())
    if deviation <= rounding:
        why = f"the sin-cos table rounded to {str(stored.dtype).removeprefix('torch.')} (not trained)"
    else:
        why = "trained (the authors' stage 1 trains every denoiser parameter)"
    return "learned", deviation, (f"differs from the fixed 2-D sin-cos table by up to {deviation:.3g}: {why}; kept "
                                  "exactly as denoiser.pos_embed (denoiser_position_embedding='learned')")


def _source_dtype(headers) -> torch.dtype:
    """The dtype of the checkpoint's floating tensors (the most common one if they are mixed)."""
    counts: dict = {}
    for info in headers.values():
        if info.dtype.is_floating_point:
            counts[info.dtype] = counts.get(info.dtype, 0) + 1
    if not counts:
        raise ConversionError("The checkpoint has no floating-point tensors.")
    return max(counts, key=counts.get)


def convert_official(
    src: str,
    dst,
    *,
    tokenizer: str | None = None,
    vision_tower: str | None = None,
    vae: str | None = None,
    vae_subfolder: str | None = None,
    dtype: torch.dtype | str | None = "auto",
    save_teacher: bool = False,
    image_token_id: int | None = None,
    denoiser_num_heads: int = AUTHORS_DENOISER_NUM_HEADS,
    max_shard_size: int | str = "5GB",
) -> ConversionReport:
    """Convert an authors' checkpoint folder (or Hub id) `src` into a ROSS folder `dst`.

    Args:
        tokenizer: tokenizer folder / Hub id; defaults to `src` when it holds tokenizer files. Without one, the model
            is converted, the processor is not (warning), and the `<image>` id is the config's largest special token
            id + 1 (or `image_token_id`).
        vision_tower / vae (+ `vae_subfolder`): override `mm_vision_tower` / `mm_pixel_decoder` of the config.
        dtype: output dtype; `"auto"` (default) keeps the source's dtype (the released weights are bf16), so an fp32
            source is never rounded.
        save_teacher: keep the frozen VAE in the output (`teacher.vae.*`, from the checkpoint's copy when present),
            making the folder self-contained for further training.
        denoiser_num_heads: the DiT head count, which the weights cannot tell (the authors always use 16).
        max_shard_size: output shard size (bytes or e.g. "5GB").
    """
    if isinstance(dtype, str) and dtype != "auto" and dtype not in DTYPES:
        raise ConversionError(f"dtype={dtype!r} is not one of auto, {', '.join(sorted(DTYPES))}.")
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise ConversionError(f"Destination {dst} exists and is not empty.")
    src_dir = _source_folder(str(src))
    try:
        official = json.loads((src_dir / "config.json").read_text())
    except ValueError as error:
        raise ConversionError(f"{src_dir / 'config.json'} is not valid JSON: {error}") from None
    headers = _read_headers(_weight_files(src_dir))
    # A partial source (a DiT block or any tensor fewer) would otherwise convert into a shallower model without a
    # word: reported with the key mapping's problems, in one error, before anything is written.
    partial = partial_source_problems(src_dir, headers, official)
    dtype = _source_dtype(headers) if dtype is None or dtype == "auto" else DTYPES.get(dtype, dtype)

    # 1. the authors' config, then the text and vision configs
    aspect, projector_type = check_authors_config(official)
    text_config = _text_config(official)
    tower = resolve_component(official.get("mm_vision_tower"), src_dir, vision_tower,
                              what="Vision tower", flag="--vision-tower")
    if tower is None:
        raise ConversionError("config.json has no mm_vision_tower; pass --vision-tower.")
    vision_config, grid = _vision_config(tower, official)
    # 2. the vocabulary and the <image> token
    vocabulary = resolve_vocabulary(official, src_dir, tokenizer, image_token_id, text_config.vocab_size)
    text_config.vocab_size = vocabulary.rows
    # 3. the objective, from the weights (denoiser geometry, position table) and mm_pixel_decoder (teacher)
    objective = infer_objective(official, headers, src_dir, grid, vae=vae, vae_subfolder=vae_subfolder,
                                save_teacher=save_teacher, denoiser_num_heads=denoiser_num_heads)
    config = _ross_config(official, text_config, vision_config, grid, vocabulary, objective, projector_type, dtype)
    report = ConversionReport(
        dst=dst, config=config, image_token_id=vocabulary.image_token_id, vocab_size=vocabulary.rows,
        resized_vocab=vocabulary.resized, dtype=dtype, vision_tower=tower, teacher=objective.teacher,
        position_embedding=objective.position[0], position_embedding_deviation=objective.position[1],
        position_embedding_note=objective.position[2],
    )  # fmt: skip
    # 4. the key mapping: every source key mapped or dropped, every target key filled, shapes checked
    sources = plan_tensors(src, headers, config, report, projector_type, tower, vae_subfolder, partial)
    # 5. the processor (before anything is written, so its errors also come first)
    processor = None
    if vocabulary.tokenizer is not None:
        processor = _build_processor(vocabulary.tokenizer, tower, vision_config, grid, aspect)
    # 6. write: tensors streamed shard by shard, then config, generation config, code and processor
    _write_folder(dst, src_dir, config, sources, vocabulary.rows, dtype, processor, max_shard_size, report)
    return report


def _ross_config(official, text_config, vision_config, grid, vocabulary, objective, projector_type, dtype):
    """The `RossConfig` of the converted folder (the vision feature layer and strategy from the authors' config)."""
    feature_layer, strategy = _feature_strategy(official, vision_config)
    config = RossConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        objective_config=objective.fields,
        image_token_id=vocabulary.image_token_id,
        image_seq_length=grid * grid,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
        projector_type=projector_type,
        projector_hidden_act="gelu",  # nn.GELU() in the authors' mlp2x_gelu
        tie_word_embeddings=bool(official.get("tie_word_embeddings", False)),
    )
    config.dtype = dtype
    return config


def _write_folder(dst, src_dir, config, sources, vocab_rows, dtype, processor, max_shard_size, report) -> None:
    """Weights shard by shard (streamed), then config + code, generation config and processor; fills `report`."""
    dst.mkdir(parents=True, exist_ok=True)
    outputs = [_output_tensor(source, vocab_rows, dtype) for source in sources]
    report.shard_files = write_shards(dst, outputs, max_shard_size, progress="converting tensors")
    _save_config_and_code(config, dst)
    if (src_dir / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(src_dir).save_pretrained(dst)
    if processor is not None:
        processor.save_pretrained(dst)
        report.processor_saved = True


def check_authors_config(official: dict) -> tuple[str, str]:
    """Refuse the LLaVA-fork options we do not support; return `(image_aspect_ratio, mm_projector_type)`."""
    if official.get("mm_patch_merge_type", "flat") != "flat":
        raise ConversionError(f"mm_patch_merge_type={official['mm_patch_merge_type']!r} is not supported (only 'flat').")
    if official.get("mm_use_im_start_end") or official.get("mm_use_im_patch_token"):
        raise ConversionError("mm_use_im_start_end / mm_use_im_patch_token checkpoints are not supported.")
    aspect = official.get("image_aspect_ratio") or "square"
    if aspect not in ("pad", "square", "resize"):
        raise ConversionError(f"image_aspect_ratio={aspect!r} is not supported (expected 'pad' or 'square').")
    projector_type = official.get("mm_projector_type", "linear")
    if projector_type not in ("mlp2x_gelu", "linear"):
        raise ConversionError(f"mm_projector_type={projector_type!r} is not supported ('mlp2x_gelu' or 'linear').")
    return aspect, projector_type


@dataclass
class Vocabulary:
    """The tokenizer (None without one), the `<image>` id and the embedding rows the output needs."""

    tokenizer: object | None
    image_token_id: int
    rows: int
    resized: bool


def resolve_vocabulary(official: dict, src_dir: Path, tokenizer: str | None, image_token_id: int | None,
                       rows: int) -> Vocabulary:
    """Add `<image>` to the tokenizer (the authors' vocabulary has none: they splice -200) and grow the embedding
    rows to a multiple of 64 only when the tokenizer no longer fits them (Qwen2-7B's 152064 rows fit 151647)."""
    tokenizer_path = _tokenizer_source(src_dir, tokenizer)
    loaded = None
    if tokenizer_path is not None:
        loaded = AutoTokenizer.from_pretrained(tokenizer_path)
        image_token_id = add_image_token(loaded, "<image>")
        needed = len(loaded)
    else:
        warnings.warn(
            f"No tokenizer in {src_dir} and no --tokenizer: the model is converted but no processor is written. "
            "Convert again with --tokenizer (or save a RossProcessor into the folder) to use it.",
            UserWarning,
            stacklevel=3,
        )
        if image_token_id is None:
            specials = [i for i in (official.get("bos_token_id"), official.get("eos_token_id"),
                                    official.get("pad_token_id")) for i in (i if isinstance(i, list) else [i])
                        if isinstance(i, int)]  # fmt: skip
            if not specials:
                raise ConversionError("Without a tokenizer, pass image_token_id (the config names no special token).")
            image_token_id = max(specials) + 1
        needed = image_token_id + 1
    resized = needed > rows
    return Vocabulary(loaded, image_token_id, -(-needed // 64) * 64 if resized else rows, resized)


@dataclass
class InferredObjective:
    """`RossObjectiveConfig` fields, the resolved teacher, and `(kind, max deviation, note)` of the position table."""

    fields: dict
    teacher: str | None = None
    position: tuple = (None, None, None)


def infer_objective(official: dict, headers, src_dir: Path, grid: int, *, vae, vae_subfolder, save_teacher: bool,
                    denoiser_num_heads: int) -> InferredObjective:
    """ROSS^D from the weights (width, depth, MLP ratio, channels, position table) and the teacher from
    `mm_pixel_decoder`, checked against each other; `objective="none"` for a checkpoint without a denoiser."""
    image_stats = dict(image_mean=list(official.get("image_mean", [0.5] * 3)),
                       image_std=list(official.get("image_std", [0.5] * 3)))  # fmt: skip
    denoiser_keys = [k for k in headers if k.startswith("model.mm_inv_projector.")]
    if not (official.get("ross_enable") or denoiser_keys):
        return InferredObjective(dict(objective="none", **image_stats))
    inv_type = str(official.get("mm_inv_projector_type", ""))
    if "model.mm_inv_projector.ln_pre.weight" in headers:
        raise ConversionError("This checkpoint uses the authors' unused `denoiser_vit.py` variant (ln_pre weights, "
                              "learned pos_embed, no adaLN); only the DiT denoiser of `denoiser_dit.py` is supported.")
    if not inv_type.startswith("denoiser"):
        raise ConversionError(f"mm_inv_projector_type={inv_type!r} (a ROSS^R regression head) is not supported; "
                              "only the ROSS^D denoiser ('denoiser_vit{L}x') is.")
    if DENOISER_PREFIX + "x_embedder.proj.weight" not in headers:
        raise ConversionError(f"ross_enable is set but the checkpoint has no denoiser weights "
                              f"({DENOISER_PREFIX}x_embedder.proj.weight is missing).")
    width, channels = headers[DENOISER_PREFIX + "x_embedder.proj.weight"].shape[:2]
    depth = len({k.split(".")[4] for k in denoiser_keys if k.startswith(DENOISER_PREFIX + "blocks.")})
    fc1 = sorted((k for k in headers if re.fullmatch(re.escape(DENOISER_PREFIX) + r"blocks\.\d+\.mlp\.fc1\.weight", k)),
                 key=lambda k: int(k.split(".")[4]))  # block 0's, unless it is missing (reported as partial)
    if not fc1:
        raise ConversionError(f"The checkpoint has no DiT block MLP weights ({DENOISER_PREFIX}blocks.N.mlp.fc1.weight).")
    mlp_ratio = headers[fc1[0]].shape[0] / width
    teacher = resolve_component(official.get("mm_pixel_decoder") or None, src_dir, vae, what="Pixel decoder (VAE)",
                                flag="--vae")
    if teacher is None:
        raise ConversionError("config.json has no mm_pixel_decoder; pass --vae with the teacher VAE.")
    teacher_config = _vae_config(teacher, vae_subfolder)
    downsample = 2 ** (len(teacher_config["block_out_channels"]) - 1)
    decode_size = int(official.get("decode_image_size", grid * 16))
    fold = decode_size // downsample // grid
    problems = []
    if fold < 1 or fold * downsample * grid != decode_size:
        problems.append(f"decode_image_size={decode_size} is not grid {grid} x VAE downsample {downsample} x fold")
    if teacher_config["latent_channels"] * max(fold, 1) ** 2 != channels:
        problems.append(f"the denoiser has {channels} channels but the VAE gives {teacher_config['latent_channels']}"
                        f" x {fold}^2")
    if official.get("mm_inv_hidden_size") not in (None, channels):
        problems.append(f"mm_inv_hidden_size={official['mm_inv_hidden_size']} but the weights have {channels}")
    if problems:
        raise ConversionError("The denoiser, VAE and config disagree: " + "; ".join(problems))
    if DENOISER_PREFIX + "pos_embed" in headers:
        position = inspect_pos_embed(headers[DENOISER_PREFIX + "pos_embed"], width, grid)
    else:  # not saved: the fixed table
        position = ("sincos", None, "not in the checkpoint: the fixed 2-D sin-cos table is recomputed")
    fields = dict(
        objective="denoise", target="vae", teacher=teacher, teacher_subfolder=vae_subfolder,
        teacher_config=teacher_config, vae_fold=fold, latent_sample="sample",
        denoiser_hidden_size=width, denoiser_depth=depth, denoiser_num_heads=denoiser_num_heads,
        denoiser_mlp_ratio=mlp_ratio, denoiser_position_embedding=position[0], num_noise_draws=4, weight=1.0,
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
        save_teacher=save_teacher, **image_stats,
    )  # fmt: skip
    return InferredObjective(fields, teacher, position)


def plan_tensors(src, headers, config, report: ConversionReport, projector_type: str, tower: str,
                 vae_subfolder: str | None, partial: list[str] = ()) -> list[TensorSource]:
    """Map every source key (`map_official_key`) or drop it with a reason (into `report`), take the weights the
    checkpoint lacks from its components, and compare with the keys and shapes of a meta-device model. Every problem
    (with `partial`, what `partial_source_problems` found) is collected and raised in one `ConversionError` before
    anything is written."""
    objective = config.objective_config
    save_vae = objective.enabled and objective.save_teacher
    keep_table = objective.enabled and objective.denoiser_position_embedding == "learned"
    rows = config.text_config.vocab_size
    sources, unexpected = [], []
    for key, info in headers.items():
        target, reason = map_official_key(key, projector_type, save_vae, keep_pos_embed=keep_table)
        if target is None and reason is None:
            unexpected.append(key)
        elif target is None:
            report.dropped[key] = reason
        else:
            report.mapped[key] = target
            transform = "conv1x1" if key.endswith("x_embedder.proj.weight") else None
            if target in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
                transform = "pad_rows"
            sources.append(TensorSource(info, target, transform))
    expected = _expected_shapes(config)
    if not save_vae:
        expected = {k: v for k, v in expected.items() if not k.startswith("teacher.")}
    # Weights a checkpoint may legitimately lack: the tower (from mm_vision_tower) and the VAE (from the teacher).
    produced = {s.target for s in sources}
    sources += _component_sources(expected, produced, tower, save_vae, report.teacher, vae_subfolder, report)
    produced = {s.target for s in sources}
    missing = sorted(set(expected) - produced)
    extra = sorted(produced - set(expected))
    shape_errors = [
        f"{s.info.key} {_output_shape(s, rows)} -> {s.target} {expected[s.target]}"
        for s in sources if s.target in expected and _output_shape(s, rows) != expected[s.target]
    ]  # fmt: skip
    lines = [f"the checkpoint is partial: {problem}" for problem in partial]
    if unexpected:
        lines.append(f"{len(unexpected)} unexpected source keys (no mapping rule): {unexpected}")
    if missing:
        lines.append(f"{len(missing)} missing keys (not in the checkpoint nor its components): {missing}")
    if extra:
        lines.append(f"{len(extra)} mapped keys that the ROSS model does not have: {extra}")
    if shape_errors:
        lines.append(f"{len(shape_errors)} shape mismatches: {shape_errors}")
    if lines:
        raise ConversionError("Cannot convert " + str(src) + ":\n" + "\n".join(lines))
    return sources


def _build_processor(tokenizer, tower: str, vision_config, grid: int, aspect: str):
    """The `RossProcessor` of the converted model: the tower's image processor, the authors' `qwen_2` template."""
    image_processor = load_image_processor(tower)
    side = image_processor.size.get("height") if isinstance(image_processor.size, dict) else None
    side = side or getattr(image_processor.size, "height", None)
    if side is not None and side != vision_config.image_size:
        raise ConversionError(f"The tower's image processor resizes to {side}, its config says "
                              f"image_size={vision_config.image_size}.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    return RossProcessor(
        image_processor, tokenizer, chat_template=VICUNA_QWEN2_CHAT_TEMPLATE, image_token="<image>",
        image_seq_length=grid * grid, image_aspect_ratio="pad" if aspect == "pad" else "resize",
    )


def _output_shape(source: TensorSource, rows: int) -> tuple:
    shape = source.info.shape
    if source.transform == "conv1x1":  # (W, C, 1, 1) -> (W, C)
        return shape[:2]
    if source.transform == "pad_rows":  # the vocabulary grown to `rows`
        return (rows, *shape[1:])
    return shape


def _output_tensor(source: TensorSource, rows: int, dtype: torch.dtype) -> OutputTensor:
    """What `write_shards` writes for `source`: reshaped / padded, floating tensors cast to `dtype`."""
    info = source.info
    out_dtype = dtype if info.dtype.is_floating_point else info.dtype

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        if source.transform == "conv1x1":
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
        elif source.transform == "pad_rows":
            tensor = _mean_rows(tensor, rows)
        return tensor.to(out_dtype)

    return OutputTensor(source.target, info, _output_shape(source, rows), out_dtype, convert)


def _component_sources(expected, produced, tower, save_vae, teacher, vae_subfolder, report) -> list[TensorSource]:
    """Tensors the checkpoint lacks but its components hold: the vision tower (a full CLIP/SigLIP repo has
    `vision_model.*`, a bare vision model flat keys) and, with `save_teacher`, the VAE."""
    sources = []
    need_tower = [k for k in expected if k.startswith("model.vision_tower.") and k not in produced]
    if need_tower:
        available = _read_headers(_weight_files(_local_folder(tower)))
        for target in need_tower:
            rest = target[len("model.vision_tower."):]
            for candidate in ("vision_model." + rest, rest):
                if candidate in available:
                    sources.append(TensorSource(available[candidate], target))
                    report.from_components[target] = f"{tower}:{candidate}"
                    break
    need_vae = [k for k in expected if k.startswith("teacher.vae.") and k not in produced] if save_vae else []
    if need_vae:
        folder = _local_folder(teacher, vae_subfolder)
        available = _read_headers(_weight_files(folder, "diffusion_pytorch_model.safetensors"))
        for target in need_vae:
            rest = target[len("teacher.vae."):]
            if rest in available:
                sources.append(TensorSource(available[rest], target))
                report.from_components[target] = f"{teacher}:{rest}"
    return sources


def _save_config_and_code(config, dst: Path) -> None:
    """Write config.json + the flat code files + auto_map, as `RossForConditionalGeneration.save_pretrained` does."""
    config.architectures = ["RossForConditionalGeneration"]
    config.save_pretrained(dst)  # copies configuration_ross.py (the config is registered for AutoConfig)
    for cls in (RossForConditionalGeneration, RossProcessor):  # modeling_ross.py + its relative imports; processing
        custom_object_save(cls, dst)
    add_auto_map(dst / "config.json")


def main(argv=None) -> ConversionReport:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_ross.convert_official",
        description="Convert the ROSS authors' checkpoint (e.g. HaochenWang/ross-qwen2-7b) to a ROSS folder.",
    )
    parser.add_argument("--src", required=True, help="authors' checkpoint folder or Hub id")
    parser.add_argument("--dst", required=True, help="output folder (must be empty or absent)")
    parser.add_argument("--tokenizer", help="tokenizer folder/Hub id (default: --src when it has tokenizer files)")
    parser.add_argument("--vision-tower", help="overrides mm_vision_tower (folder or Hub id)")
    parser.add_argument("--vae", "--pixel-decoder", dest="vae", help="overrides mm_pixel_decoder (folder or Hub id)")
    parser.add_argument("--vae-subfolder", help="subfolder of --vae holding the VAE (e.g. 'vae' for FLUX.1-dev)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *sorted(DTYPES)],
                        help="output dtype (default auto: the source's dtype, bf16 for the released weights)")
    parser.add_argument("--save-teacher", action="store_true", help="keep the frozen VAE weights in the output")
    parser.add_argument("--image-token-id", type=int, help="id of <image> when no tokenizer is available")
    parser.add_argument("--denoiser-num-heads", type=int, default=AUTHORS_DENOISER_NUM_HEADS)
    parser.add_argument("--max-shard-size", default="5GB")
    args = parser.parse_args(argv)
    try:
        report = convert_official(
            args.src, args.dst, tokenizer=args.tokenizer, vision_tower=args.vision_tower, vae=args.vae,
            vae_subfolder=args.vae_subfolder, dtype=args.dtype, save_teacher=args.save_teacher,
            image_token_id=args.image_token_id, denoiser_num_heads=args.denoiser_num_heads,
            max_shard_size=args.max_shard_size,
        )
    except (ConversionError, SafetensorsError) as error:  # bad input: one line (lists joined), status 2
        first, *rest = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        print(f"error: {first} {'; '.join(rest)}".rstrip(), file=sys.stderr)
        raise SystemExit(2) from None
    objective = report.config.objective_config
    print(f"Wrote {report.dst}: {len(report.mapped)} tensors mapped, {len(report.dropped)} dropped, "
          f"{len(report.from_components)} taken from components; {len(report.shard_files)} shard(s).")
    reasons = {}
    for reason in report.dropped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        print(f"  dropped {count}: {reason}")
    print(f"  dtype {str(report.dtype).removeprefix('torch.')}; <image> id {report.image_token_id}; vocab rows {report.vocab_size}"
          f"{' (resized)' if report.resized_vocab else ''}; vision tower {report.vision_tower}")
    if objective.enabled:
        print(f"  denoiser {objective.denoiser_hidden_size} wide x {objective.denoiser_depth} blocks; teacher "
              f"{objective.teacher}; save_teacher={objective.save_teacher}")
        print(f"  denoiser position table: {report.position_embedding_note}")
    print(f"  processor {'saved' if report.processor_saved else 'NOT saved (no tokenizer)'}")
    return report


if __name__ == "__main__":
    main()
