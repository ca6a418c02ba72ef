"""Tiny components laid out exactly like Hub repos, for tests and the default run (no download needed).

`write_tiny_components(root)` writes
    root/siglip-tiny/   SiglipVisionModel + SiglipImageProcessorPil   (like google/siglip-so400m-patch14-384)
    root/qwen2-tiny/    Qwen2ForCausalLM + a real byte-level BPE tokenizer (like Qwen/Qwen2-7B-Instruct)
    root/vae-tiny/vae/  AutoencoderKL (FLUX-like: 16 channels, downsample 8) (like a diffusers pipeline repo)
so `modeling_ross.from_components(root / "siglip-tiny", root / "qwen2-tiny",
teacher=root / "vae-tiny", teacher_subfolder="vae")` runs offline. Sizes follow transformers' own tests.
`write_tiny_dinov2(folder)` writes a `target="features"` teacher laid out like `facebook/dinov2-base`.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BitImageProcessorPil,
    Dinov2Config,
    Dinov2Model,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A small corpus so the byte-level BPE learns merges for the words the default run uses.
_CORPUS_WORDS = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. USER: ASSISTANT: Is there a in the image? "
    "What colour is the shape? How many are there? Where is the? Answer the question using a single word or phrase. "
    "Answer with the option's letter from the given choices directly. yes no Yes No red green blue yellow purple "
    "orange white black circle square triangle circles squares triangles top bottom left right top left top right "
    "bottom left bottom right centre one two three four zero 0 1 2 3 4 5 6 7 8 9 (a) (b) A. B. Options: a an the and "
    "of at on with is are this that what which how many where colour color shape count position image picture photo "
    "describe small large object objects there one two plus minus equals"
)


def build_tiny_tokenizer(vocab_size: int = 1024):
    """A real `PreTrainedTokenizerFast` (byte-level BPE trained with `tokenizers`) with Qwen2's chat special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS_WORDS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=2048,
        padding_side="right",
    )


def write_tiny_vision_tower(
    folder, image_size: int = 32, patch_size: int = 4, hidden_size: int = 32, num_layers: int = 2, seed: int = 0
) -> Path:
    """SiglipVisionModel + its image processor (PIL backend), saved like `google/siglip-so400m-patch14-384`."""
    folder = Path(folder)
    torch.manual_seed(seed)
    config = SiglipVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size + 5,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        vision_use_head=False,
    )
    SiglipVisionModel(config).save_pretrained(folder)
    SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return folder


def write_tiny_language_model(
    folder, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, seed: int = 0
) -> Path:
    """Qwen2ForCausalLM + tokenizer, saved like `Qwen/Qwen2-7B-Instruct` (embedding rows padded past the vocab)."""
    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    # Like Qwen2, keep spare embedding rows so adding `<image>` needs no resize.
    vocab_size = (len(tokenizer) // 64 + 1) * 64
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size + 5,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads // 2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_vae(
    folder, latent_channels: int = 16, block_out_channels=(8, 16, 16, 16), seed: int = 0, subfolder: str = "vae"
) -> Path:
    """A diffusers AutoencoderKL saved under `folder/subfolder` like a pipeline repo (FLUX-like by default)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    n = len(block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    vae.save_pretrained(folder / subfolder)
    return folder


def write_tiny_dinov2(
    folder, image_size: int = 32, patch_size: int = 4, hidden_size: int = 32, num_layers: int = 2, seed: int = 0
) -> Path:
    """Dinov2Model + its image processor (PIL backend, ImageNet statistics), saved like `facebook/dinov2-base`:
    a `target="features"` teacher (VIRAL's alignment target)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    config = Dinov2Config(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size + 5,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
    )
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


def write_tiny_components(root, vision_kwargs=None, language_kwargs=None, vae_kwargs=None) -> dict:
    """Write the three tiny component repos under `root`; returns their paths."""
    root = Path(root)
    return {
        "vision_model": str(write_tiny_vision_tower(root / "siglip-tiny", **(vision_kwargs or {}))),
        "language_model": str(write_tiny_language_model(root / "qwen2-tiny", **(language_kwargs or {}))),
        "teacher": str(write_tiny_vae(root / "vae-tiny", **(vae_kwargs or {}))),
        "teacher_subfolder": "vae",
    }
