"""A tiny checkpoint in the exact layout of the ROSS authors' released models (`HaochenWang/ross-qwen2-7b`).

The authors' code (github.com/Haochen-Wang409/ross, transformers 4.43.1, diffusers 0.30.0, timm 0.6.13, saved by
`transformers.Trainer` under DeepSpeed ZeRO-3) writes a LLaVA-fork folder. `docs/authors-format.md` records every
fact used here with the file it comes from; in short:

    <folder>/
      config.json                    model_type "ross_qwen2", Qwen2 keys + mm_* / ROSS keys
      generation_config.json         inherited from Qwen2-7B-Instruct
      model-0000i-of-0000n.safetensors + model.safetensors.index.json   (sorted weight_map, metadata.total_size)
      vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json, added_tokens.json   (slow Qwen2 tokenizer)
      siglip-tiny/                   the vision tower named by `mm_vision_tower` (a full SigLIP repo, like
                                     google/siglip-so400m-patch14-384: vision_model.* + text_model.* keys)
      pretrained_vae/                the diffusers AutoencoderKL named by `mm_pixel_decoder` (FLUX.1 VAE layout)

State-dict prefixes (module registration order of `RossQwen2ForCausalLM`):
`model.embed_tokens`, `model.layers.N`, `model.norm`, `model.vision_tower.vision_tower.vision_model` (SigLIP incl. its
last layer, `post_layernorm` and the attention-pool `head`), `model.mm_projector.{0,2}`,
`model.pixel_decoder.pixel_decoder` (the frozen VAE), `model.mm_inv_projector.net` (the DiT denoiser), `lm_head`.

The authors' code derives the denoiser width from the *name* `denoiser_vit3x` (-> 1024); this fixture deliberately
uses another width (48 by default) so a converter must read widths from the weights. The head count (16) is not in
the weights: the authors' DiT always uses its default `num_heads=16`.

Only what tests need is here; it is a plain module (not collected by pytest).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


# ---- tiny dimensions -------------------------------------------------------------------------------------------
LLM = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=160,  # > len(tokenizer), as Qwen2's 152064 > 151646
    max_position_embeddings=256,
)
VISION = dict(
    hidden_size=24,
    intermediate_size=48,
    num_hidden_layers=3,  # the authors feed hidden_states[-2]: the last layer is saved but unused
    num_attention_heads=2,
    image_size=56,
    patch_size=14,  # grid 4 x 4 = 16 visual tokens
    layer_norm_eps=1e-6,
    hidden_act="gelu_pytorch_tanh",
)
SIGLIP_TEXT = dict(
    hidden_size=24,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=2,
    vocab_size=50,
    max_position_embeddings=16,
    layer_norm_eps=1e-6,
    hidden_act="gelu_pytorch_tanh",
)
VAE = dict(  # FLUX.1 VAE structure (no quant convs, shift factor), shrunk: downsample 8, 4 latent channels
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 8, 8, 8],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=64,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=True,
    force_upcast=True,
    act_fn="silu",
)
DENOISER_DEPTH = 3  # matches the config name "denoiser_vit3x"
DENOISER_NUM_HEADS = 16  # implicit in the authors' code (DiT default), not stored anywhere
DENOISER_MLP_RATIO = 4
TIMESTEP_FREQUENCY_SIZE = 256
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VISION_TOWER_DIRNAME = "siglip-tiny"
PIXEL_DECODER_DIRNAME = "pretrained_vae"


def grid_size() -> int:
    return VISION["image_size"] // VISION["patch_size"]


def vae_downsample() -> int:
    return 2 ** (len(VAE["block_out_channels"]) - 1)


# ---- key/shape specifications (the names the authors' modules produce) --------------------------------------------
def llm_shapes(prefix: str = "model.") -> "OrderedDict[str, tuple[int, ...]]":
    """Qwen2Model keys (identical in transformers 4.43 and 5.x); `lm_head.weight` is added by the caller."""
    h, i, v = LLM["hidden_size"], LLM["intermediate_size"], LLM["vocab_size"]
    head_dim = h // LLM["num_attention_heads"]
    kv = LLM["num_key_value_heads"] * head_dim
    shapes = OrderedDict()
    shapes[f"{prefix}embed_tokens.weight"] = (v, h)
    for n in range(LLM["num_hidden_layers"]):
        p = f"{prefix}layers.{n}."
        shapes[p + "self_attn.q_proj.weight"] = (h, h)
        shapes[p + "self_attn.q_proj.bias"] = (h,)
        shapes[p + "self_attn.k_proj.weight"] = (kv, h)
        shapes[p + "self_attn.k_proj.bias"] = (kv,)
        shapes[p + "self_attn.v_proj.weight"] = (kv, h)
        shapes[p + "self_attn.v_proj.bias"] = (kv,)
        shapes[p + "self_attn.o_proj.weight"] = (h, h)
        shapes[p + "mlp.gate_proj.weight"] = (i, h)
        shapes[p + "mlp.up_proj.weight"] = (i, h)
        shapes[p + "mlp.down_proj.weight"] = (h, i)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    shapes[f"{prefix}norm.weight"] = (h,)
    return shapes


def projector_shapes(prefix: str = "model.mm_projector.") -> "OrderedDict[str, tuple[int, ...]]":
    """`mlp2x_gelu`: nn.Sequential(Linear(mm_hidden, H), GELU(), Linear(H, H)) -> indices 0 and 2."""
    h, m = LLM["hidden_size"], VISION["hidden_size"]
    return OrderedDict(
        [
            (f"{prefix}0.weight", (h, m)),
            (f"{prefix}0.bias", (h,)),
            (f"{prefix}2.weight", (h, h)),
            (f"{prefix}2.bias", (h,)),
        ]
    )


def denoiser_shapes(width: int, prefix: str = "model.mm_inv_projector.") -> "OrderedDict[str, tuple[int, ...]]":
    """`RossDenoiser` of `ross/model/multimodal_denoiser/denoiser_dit.py`: everything lives under `.net` (the DiT);
    `ln_pre` and all DiT LayerNorms are parameter-free; `pos_embed` is a frozen nn.Parameter, hence saved."""
    c = VAE["latent_channels"] * 4  # mm_inv_hidden_size: 2x2 latent windows folded into channels
    z = LLM["hidden_size"]
    n = grid_size() ** 2
    f = width * DENOISER_MLP_RATIO
    p = f"{prefix}net."
    shapes = OrderedDict()
    shapes[p + "pos_embed"] = (1, n, width)
    shapes[p + "x_embedder.proj.weight"] = (width, c, 1, 1)  # timm PatchEmbed: a 1x1 Conv2d
    shapes[p + "x_embedder.proj.bias"] = (width,)
    shapes[p + "t_embedder.mlp.0.weight"] = (width, TIMESTEP_FREQUENCY_SIZE)
    shapes[p + "t_embedder.mlp.0.bias"] = (width,)
    shapes[p + "t_embedder.mlp.2.weight"] = (width, width)
    shapes[p + "t_embedder.mlp.2.bias"] = (width,)
    shapes[p + "z_embedder.1.weight"] = (width, z)  # nn.Sequential(SiLU, Linear)
    shapes[p + "z_embedder.1.bias"] = (width,)
    for b in range(DENOISER_DEPTH):
        q = f"{p}blocks.{b}."
        shapes[q + "attn.qkv.weight"] = (3 * width, width)
        shapes[q + "attn.qkv.bias"] = (3 * width,)
        shapes[q + "attn.proj.weight"] = (width, width)
        shapes[q + "attn.proj.bias"] = (width,)
        shapes[q + "mlp.fc1.weight"] = (f, width)
        shapes[q + "mlp.fc1.bias"] = (f,)
        shapes[q + "mlp.fc2.weight"] = (width, f)
        shapes[q + "mlp.fc2.bias"] = (width,)
        shapes[q + "adaLN_modulation.1.weight"] = (6 * width, width)
        shapes[q + "adaLN_modulation.1.bias"] = (6 * width,)
    shapes[p + "final_layer.linear.weight"] = (c, width)  # patch_size 1 -> out = C
    shapes[p + "final_layer.linear.bias"] = (c,)
    shapes[p + "final_layer.adaLN_modulation.1.weight"] = (2 * width, width)
    shapes[p + "final_layer.adaLN_modulation.1.bias"] = (2 * width,)
    return shapes


def _siglip_configs():
    from transformers import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(**VISION)
    text = SiglipTextConfig(**SIGLIP_TEXT)
    return SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict()), vision, text


def siglip_full_shapes() -> "OrderedDict[str, tuple[int, ...]]":
    """Keys of a full SigLIP repo (`SiglipModel`): `vision_model.*`, `text_model.*`, `logit_scale`, `logit_bias`.

    The names are the same under 4.43 (`vision_model` = SiglipVisionTransformer) and 5.x (`vision_model` =
    SiglipVisionModel, flattened): embeddings / encoder / post_layernorm / head.
    """
    from transformers import SiglipModel

    full, _, _ = _siglip_configs()
    with torch.device("meta"):
        model = SiglipModel(full)
    return OrderedDict((k, tuple(t.shape)) for k, t in model.state_dict().items())


def vision_tower_shapes(prefix: str = "model.vision_tower.vision_tower.vision_model.") -> "OrderedDict[str, tuple]":
    """The SigLIP vision keys as the authors' `SiglipVisionTower` nests them (SiglipVisionModel.vision_model.*)."""
    return OrderedDict(
        (prefix + k[len("vision_model.") :], s) for k, s in siglip_full_shapes().items() if k.startswith("vision_model.")
    )


def _vae_config_dict() -> dict:
    return dict(VAE)


def vae_shapes(prefix: str = "model.pixel_decoder.pixel_decoder.") -> "OrderedDict[str, tuple[int, ...]]":
    """diffusers AutoencoderKL keys (same names in diffusers 0.30 and 0.42): encoder.* / decoder.*; FLUX has no
    quant_conv / post_quant_conv."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**_vae_config_dict())
    return OrderedDict((prefix + k, tuple(t.shape)) for k, t in vae.state_dict().items())


# ---- values --------------------------------------------------------------------------------------------------------
def sincos_pos_embed_2d(width: int, grid: int) -> np.ndarray:
    """The fixed DiT/MAE table `pos_embed[0]`, (grid*grid, width), tokens row-major.

    First half of the channels encodes the *column* index, second half the *row* index (MAE's meshgrid(w, h) quirk);
    each half is [sin(pos * omega_k), cos(pos * omega_k)], omega_k = 10000 ** (-k / (width / 4)), k < width / 4.
    """
    quarter = width // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def encode(positions: np.ndarray) -> np.ndarray:
        angles = positions.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(cols), encode(rows)], axis=1)


def _random_tensors(shapes, generator: torch.Generator, dtype: torch.dtype) -> "OrderedDict[str, torch.Tensor]":
    tensors = OrderedDict()
    for name, shape in shapes.items():
        values = torch.randn(shape, generator=generator) * 0.05
        module = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        if "norm" in module and name.endswith(".weight") and len(shape) == 1:
            values = values + 1.0  # norm scales near 1, so forward passes stay tame
        tensors[name] = values.to(dtype)
    return tensors


def _denoiser_tensors(width: int, generator: torch.Generator, dtype: torch.dtype, pos_embed_noise: float = 0.0):
    tensors = _random_tensors(denoiser_shapes(width), generator, dtype)
    key = "model.mm_inv_projector.net.pos_embed"
    table = torch.from_numpy(sincos_pos_embed_2d(width, grid_size())).float()[None]
    if pos_embed_noise:  # a table trained in stage 1 (the authors' stage 1 unfreezes every denoiser parameter)
        table = table + pos_embed_noise * torch.randn(table.shape, generator=generator)
    tensors[key] = table.to(dtype)
    return tensors


# ---- file writers --------------------------------------------------------------------------------------------------
def _write_shards(folder: Path, tensors: "OrderedDict[str, torch.Tensor]", num_shards: int) -> tuple[list, dict]:
    """Split in state-dict order into `num_shards` contiguous, non-empty, roughly equal-byte shards, named and
    indexed as transformers 4.43 `save_pretrained(safe_serialization=True)` does."""
    names = list(tensors)
    if not 2 <= num_shards <= len(names):
        raise ValueError(f"num_shards={num_shards} must be in [2, {len(names)}].")
    sizes = [tensors[n].numel() * tensors[n].element_size() for n in names]
    total = sum(sizes)
    groups, current, acc = [], [], 0
    for idx, (name, size) in enumerate(zip(names, sizes)):
        current.append(name)
        acc += size
        remaining_names = len(names) - idx - 1
        remaining_groups = num_shards - len(groups) - 1
        target = total * (len(groups) + 1) / num_shards
        if remaining_groups and (acc >= target or remaining_names == remaining_groups):
            groups.append(current)
            current = []
    groups.append(current)
    assert len(groups) == num_shards and all(groups), [len(g) for g in groups]

    files, weight_map = [], {}
    for i, group in enumerate(groups, start=1):
        filename = f"model-{i:05d}-of-{num_shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in group}, str(folder / filename), metadata={"format": "pt"})
        files.append(filename)
        weight_map.update({n: filename for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return files, weight_map


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _write_vision_tower(folder: Path, generator: torch.Generator, dtype: torch.dtype) -> "OrderedDict":
    """A full-SigLIP repo as on the Hub (config with text+vision sub-configs, `preprocessor_config.json`)."""
    folder.mkdir(parents=True, exist_ok=True)
    full, _, _ = _siglip_configs()
    tensors = _random_tensors(siglip_full_shapes(), generator, dtype)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = full.to_dict()
    config.update(architectures=["SiglipModel"], model_type="siglip", transformers_version="4.37.0.dev0")
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    config.pop("dtype", None)
    _write_json(folder / "config.json", config)
    _write_json(
        folder / "preprocessor_config.json",
        {
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor",
            "image_std": [0.5, 0.5, 0.5],
            "processor_class": "SiglipProcessor",
            "resample": 3,
            "rescale_factor": 1 / 255,
            "size": {"height": VISION["image_size"], "width": VISION["image_size"]},
        },
    )
    return tensors


def _write_pixel_decoder(folder: Path, tensors: "OrderedDict[str, torch.Tensor]") -> None:
    """`./pretrained_vae` as downloaded from FLUX.1-dev/vae: diffusers config + diffusion_pytorch_model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0.dev0", **_vae_config_dict()}
    config.update(latents_mean=None, latents_std=None)
    _write_json(folder / "config.json", config)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "diffusion_pytorch_model.safetensors"))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / Qwen2 byte-level alphabet (byte -> printable unicode char)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars


TOKENIZER_MERGES = [("A", "S"), ("S", "I"), ("Ġ", "A"), ("U", "S"), ("E", "R"), ("Ġ", "t"), ("h", "e"), ("i", "n")]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _write_tokenizer(folder: Path) -> dict:
    """A tiny byte-level BPE in the layout a *slow* Qwen2Tokenizer (use_fast=False, as the authors load it) saves:
    vocab.json, merges.txt, added_tokens.json, special_tokens_map.json, tokenizer_config.json (no tokenizer.json).

    Alphabet: printable ASCII + space + newline (byte-level chars); then a few merges; then the three Qwen2 special
    tokens. There is no `<image>` token: the authors split prompts on the literal "<image>" and splice
    IMAGE_TOKEN_INDEX = -200 in (`tokenizer_image_token`).
    """
    alphabet = _bytes_to_unicode()
    base = [alphabet[b] for b in [10] + list(range(32, 127))]
    vocab = {token: i for i, token in enumerate(base)}
    for left, right in TOKENIZER_MERGES:
        vocab.setdefault(left + right, len(vocab))
    special_ids = {token: len(vocab) + i for i, token in enumerate(SPECIAL_TOKENS)}
    if len(vocab) + len(special_ids) > LLM["vocab_size"]:
        raise AssertionError("tiny tokenizer does not fit the tiny vocab")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in TOKENIZER_MERGES))
    _write_json(folder / "added_tokens.json", special_ids)
    special = lambda token: {"content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    _write_json(
        folder / "special_tokens_map.json",
        {
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "eos_token": special("<|im_end|>"),
            "pad_token": special("<|endoftext|>"),
        },
    )
    _write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "added_tokens_decoder": {str(i): {**special(t), "special": True} for t, i in special_ids.items()},
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 32768,  # training's --model_max_length
            "pad_token": "<|endoftext|>",
            "padding_side": "right",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    return special_ids


def official_config(*, special_ids: dict, with_denoiser: bool, dtype: torch.dtype) -> dict:
    """`config.json` as the authors' `ross.train.py` + `RossMetaModel.initialize_vision_modules` leave it (4.43 writes the
    diff against `PretrainedConfig()` defaults, so e.g. `output_hidden_states` is absent)."""
    grid = grid_size()
    config = {
        # Qwen2 (from Qwen2-7B-Instruct's config, tiny sizes)
        "_name_or_path": "Qwen/Qwen2-7B-Instruct",
        "architectures": ["RossQwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": special_ids["<|endoftext|>"],
        "eos_token_id": special_ids["<|im_end|>"],
        "hidden_act": "silu",
        "hidden_size": LLM["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": LLM["intermediate_size"],
        "max_position_embeddings": LLM["max_position_embeddings"],
        "max_window_layers": LLM["num_hidden_layers"],
        "model_type": "ross_qwen2",
        "num_attention_heads": LLM["num_attention_heads"],
        "num_hidden_layers": LLM["num_hidden_layers"],
        "num_key_value_heads": LLM["num_key_value_heads"],
        "pad_token_id": special_ids["<|endoftext|>"],
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.43.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": LLM["vocab_size"],
        # initialize_vision_modules (ross/model/ross_arch.py)
        "mm_vision_tower": f"./{VISION_TOWER_DIRNAME}",
        "mm_pixel_decoder": f"./{PIXEL_DECODER_DIRNAME}",
        "image_embed_len": grid * grid,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "decode_image_size": grid * 16,
        "use_mm_proj": True,
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": VISION["hidden_size"],
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "flat",
        "ross_enable": True,
        "mm_inv_hidden_size": VAE["latent_channels"] * 4,
        "use_mm_inv_proj": True,
        "mm_inv_projector_type": "denoiser_vit3x",
        # train() (train.py)
        "image_aspect_ratio": "pad",
        "tokenizer_padding_side": "right",
        "tokenizer_model_max_length": 32768,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "unfreeze_mm_vision_tower": False,
        "mm_use_im_start_end": False,
        "mm_projector_lr": None,
        "mm_inv_projector_lr": None,
        "mm_vision_tower_lr": None,
        "mm_use_im_patch_token": False,
    }
    if not with_denoiser:  # a LLaVA-style (ROSS disabled) checkpoint: mm_pixel_decoder=False in train.py
        config.update(mm_pixel_decoder=False, ross_enable=False)
        for key in ("mm_inv_hidden_size", "use_mm_inv_proj", "mm_inv_projector_type"):
            config.pop(key)
    return config


def write_tiny_official_checkpoint(
    folder,
    *,
    with_denoiser: bool = True,
    with_vision_weights: bool = True,
    with_pixel_decoder_weights: bool = True,
    with_tokenizer: bool = True,
    denoiser_width: int = 48,
    num_shards: int = 2,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    pos_embed_noise: float = 0.0,
) -> dict:
    """Write a tiny ROSS checkpoint in the authors' exact layout into `folder` (created if needed).

    Args:
        with_denoiser: include `model.mm_inv_projector.net.*` (the released checkpoint has it) and the ROSS config keys.
            `False` gives the LLaVA-style baseline (no denoiser, no pixel decoder, `ross_enable=False`).
        with_vision_weights: include `model.vision_tower.vision_tower.vision_model.*` (a full-model save has them;
            `False` mimics a checkpoint that relies on `mm_vision_tower` for the tower weights).
        with_pixel_decoder_weights: include the frozen VAE under `model.pixel_decoder.pixel_decoder.*` (a full-model
            save has them; only meaningful with `with_denoiser`).
        with_tokenizer: write the slow-Qwen2 tokenizer files.
        denoiser_width: the DiT width (deliberately not the 1024 the name `denoiser_vit3x` implies). Multiple of 16
            (16 heads, hence also of 4 for the sin-cos table).
        num_shards: >= 2 safetensors shards.
        dtype: tensor dtype (the released model is bfloat16 throughout).
        seed: seeds the generator of every random tensor.
        pos_embed_noise: std of Gaussian noise added to the denoiser's sin-cos `pos_embed` (0: the untrained table),
            as in a released checkpoint whose table was trained in stage 1.

    Returns:
        dict with `folder`, `config` (the written config.json), `shapes` ({key: shape}, state-dict order),
        `weight_map`, `shard_files`, `index_file`, `vision_tower_dir`, `vision_tower_shapes` (the tower folder's own
        keys), `pixel_decoder_dir` (None without denoiser), `tokenizer_files`, `special_token_ids`, `dims`
        (every width a converter must recover) and `dtype`.
    """
    if denoiser_width % 16:
        raise ValueError(f"denoiser_width={denoiser_width} must be a multiple of 16.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)

    # Frozen components first, so the checkpoint copies equal the component folders (as after real training).
    vision_dir = folder / VISION_TOWER_DIRNAME
    vision_folder_tensors = _write_vision_tower(vision_dir, generator, dtype)
    vae_tensors = None
    pixel_dir = None
    if with_denoiser:
        vae_tensors = _random_tensors(vae_shapes(prefix=""), generator, dtype)
        pixel_dir = folder / PIXEL_DECODER_DIRNAME
        _write_pixel_decoder(pixel_dir, vae_tensors)

    tensors: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    tensors.update(_random_tensors(llm_shapes(), generator, dtype))
    if with_vision_weights:
        for key, value in vision_folder_tensors.items():
            if key.startswith("vision_model."):
                tensors["model.vision_tower.vision_tower." + key] = value
    tensors.update(_random_tensors(projector_shapes(), generator, dtype))
    if with_denoiser and with_pixel_decoder_weights:
        tensors.update(("model.pixel_decoder.pixel_decoder." + k, v) for k, v in vae_tensors.items())
    if with_denoiser:
        tensors.update(_denoiser_tensors(denoiser_width, generator, dtype, pos_embed_noise))
    tensors["lm_head.weight"] = (
        torch.randn((LLM["vocab_size"], LLM["hidden_size"]), generator=generator) * 0.05
    ).to(dtype)

    shard_files, weight_map = _write_shards(folder, tensors, num_shards)

    tokenizer_files, special_ids = [], {
        token: LLM["vocab_size"] - len(SPECIAL_TOKENS) + i for i, token in enumerate(SPECIAL_TOKENS)
    }
    if with_tokenizer:
        special_ids = _write_tokenizer(folder)
        tokenizer_files = [
            "vocab.json",
            "merges.txt",
            "added_tokens.json",
            "special_tokens_map.json",
            "tokenizer_config.json",
        ]

    config = official_config(special_ids=special_ids, with_denoiser=with_denoiser, dtype=dtype)
    _write_json(folder / "config.json", config)
    _write_json(
        folder / "generation_config.json",
        {
            "bos_token_id": special_ids["<|endoftext|>"],
            "do_sample": True,
            "eos_token_id": [special_ids["<|im_end|>"], special_ids["<|endoftext|>"]],
            "pad_token_id": special_ids["<|endoftext|>"],
            "repetition_penalty": 1.05,
            "temperature": 0.7,
            "top_k": 20,
            "top_p": 0.8,
            "transformers_version": "4.43.1",
        },
    )

    grid = grid_size()
    return {
        "folder": folder,
        "config": config,
        "shapes": OrderedDict((k, tuple(v.shape)) for k, v in tensors.items()),
        "weight_map": weight_map,
        "shard_files": shard_files,
        "index_file": folder / "model.safetensors.index.json",
        "vision_tower_dir": vision_dir,
        "vision_tower_shapes": OrderedDict((k, tuple(v.shape)) for k, v in vision_folder_tensors.items()),
        "pixel_decoder_dir": pixel_dir,
        "tokenizer_files": tokenizer_files,
        "special_token_ids": special_ids,
        "dtype": dtype,
        "dims": {
            "llm_hidden_size": LLM["hidden_size"],
            "llm_num_layers": LLM["num_hidden_layers"],
            "vocab_size": LLM["vocab_size"],
            "vision_hidden_size": VISION["hidden_size"],
            "vision_num_layers": VISION["num_hidden_layers"],
            "vision_num_heads": VISION["num_attention_heads"],
            "image_size": VISION["image_size"],
            "patch_size": VISION["patch_size"],
            "grid_size": grid,
            "num_image_tokens": grid * grid,
            "decode_image_size": grid * 16,
            "vae_latent_channels": VAE["latent_channels"],
            "vae_downsample": vae_downsample(),
            "fold": 2,
            "latent_token_channels": VAE["latent_channels"] * 4,
            "denoiser_width": denoiser_width if with_denoiser else None,
            "denoiser_depth": DENOISER_DEPTH if with_denoiser else None,
            "denoiser_num_heads": DENOISER_NUM_HEADS if with_denoiser else None,
            "denoiser_mlp_ratio": DENOISER_MLP_RATIO if with_denoiser else None,
        },
    }


def load_official_state_dict(folder) -> "dict[str, torch.Tensor]":
    """Read every tensor of a sharded checkpoint through its `model.safetensors.index.json`."""
    folder = Path(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    state = {}
    for filename in sorted(set(index["weight_map"].values())):
        state.update(load_file(str(folder / filename)))
    return state


def official_qwen2_prompt(question: str, answer: str | None = None) -> str:
    """The authors' `qwen_2` template (SeparatorStyle.TWO, sep " ", sep2 "<|im_end|>") for one image turn.

    Generation prompt (answer=None): "<system> USER: <image>\\n{q} ASSISTANT:" (no trailing space);
    training text: "<system> USER: <image>\\n{q} ASSISTANT: {a}<|im_end|>".
    """
    prompt = f"{SYSTEM_PROMPT} USER: <image>\n{question} ASSISTANT:"
    return prompt if answer is None else f"{prompt} {answer}<|im_end|>"


__all__ = [
    "write_tiny_official_checkpoint",
    "load_official_state_dict",
    "official_qwen2_prompt",
    "sincos_pos_embed_2d",
    "llm_shapes",
    "projector_shapes",
    "denoiser_shapes",
    "vision_tower_shapes",
    "vae_shapes",
    "siglip_full_shapes",
]
