"""Tiny components laid out exactly like Hub repos, for tests and the default run (no download needed).

`write_tiny_components(root)` writes
    root/siglip-tiny/   SiglipVisionModel + SiglipImageProcessorPil   (like google/siglip-so400m-patch14-384)
    root/qwen2-tiny/    Qwen2ForCausalLM + a real byte-level BPE tokenizer (like Qwen/Qwen2-7B-Instruct)
    root/vae-tiny/vae/  AutoencoderKL (FLUX-like: 16 channels, downsample 8) (like a diffusers pipeline repo)
so `modeling_ross.from_components(root / "siglip-tiny", root / "qwen2-tiny",
teacher=root / "vae-tiny", teacher_subfolder="vae")` runs offline. Sizes follow transformers' own tests.
`write_tiny_dinov2(folder)` writes a `target="features"` teacher laid out like `facebook/dinov2-base`.

Newer backbones (tests/test_backbones.py), the same way:
    `write_tiny_qwen25(folder)`  Qwen2ForCausalLM, Qwen2.5-style tokenizer        (like Qwen/Qwen2.5-7B-Instruct)
    `write_tiny_qwen3(folder)`   Qwen3ForCausalLM (q/k-norm, explicit head_dim)  (like Qwen/Qwen3-8B)
    `write_tiny_siglip2(folder)` a full SiglipModel repo, `model_type: siglip`
                                 (like google/siglip2-so400m-patch14-384: the fixed-resolution SigLIP 2
                                 checkpoints are published as SigLIP v1 graphs)
    `write_tiny_siglip2_naflex(folder)` Siglip2VisionModel, `model_type: siglip2`
                                 (like google/siglip2-base-patch16-naflex; `from_components` refuses it)
"""

import contextlib
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
    Qwen3Config,
    Qwen3ForCausalLM,
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5 adds these after Qwen2's three (tokenizer_config.json `added_tokens_decoder`, ids 151646-151664): eleven
# special tokens, then eight that are not (`special: false`, so `decode(skip_special_tokens=True)` keeps them).
QWEN25_SPECIAL_TOKENS = [
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
QWEN25_ADDED_TOKENS = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]
# Qwen3 keeps Qwen2.5's tokens and adds four more (ids 151665-151668), none of them special.
QWEN3_ADDED_TOKENS = QWEN25_ADDED_TOKENS + ["<tool_response>", "</tool_response>", "<think>", "</think>"]

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


def build_tiny_tokenizer(vocab_size: int = 1024, extra_special_tokens=(), added_tokens=(), named_special_tokens=None,
                         eos_token: str = "<|im_end|>"):
    """A real `PreTrainedTokenizerFast` (byte-level BPE trained with `tokenizers`) with Qwen2's chat special tokens;
    `extra_special_tokens` / `added_tokens` are appended after the learned vocabulary, as the Qwen2.5 / Qwen3
    tokenizers list them (special / not special). `named_special_tokens` (`{"image_token": "<image_soft_token>"}`)
    become attributes (`tokenizer.image_token`, `tokenizer.image_token_id`) saved in `tokenizer_config.json`, as the
    Gemma 3 tokenizer's; `eos_token` is added when it is not one of Qwen2's three."""
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
    named = {"extra_special_tokens": dict(named_special_tokens)} if named_special_tokens else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=eos_token,
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=2048,
        padding_side="right",
        **named,  # a dict: named tokens, each added to the vocabulary
    )
    if extra_special_tokens:
        fast.add_tokens(list(extra_special_tokens), special_tokens=True)
    if added_tokens:
        fast.add_tokens(list(added_tokens), special_tokens=False)
    return fast


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


def _write_causal_lm(folder, model_class, config_class, tokenizer, seed: int, hidden_size: int, num_layers: int,
                     num_heads: int, **config_kwargs) -> Path:
    """`model_class` with a tiny `config_class` and `tokenizer`, saved like a Qwen Hub repo. Like the Qwen
    checkpoints, the embedding keeps spare rows past the tokenizer, so adding `<image>` needs no resize."""
    folder = Path(folder)
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=(len(tokenizer) // 64 + 1) * 64,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size + 5,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads // 2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **config_kwargs,
    )
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_language_model(
    folder, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, seed: int = 0
) -> Path:
    """Qwen2ForCausalLM + tokenizer, saved like `Qwen/Qwen2-7B-Instruct` (embedding rows padded past the vocab)."""
    return _write_causal_lm(
        folder, Qwen2ForCausalLM, Qwen2Config, build_tiny_tokenizer(), seed, hidden_size, num_layers, num_heads,
        max_position_embeddings=2048, tie_word_embeddings=False,
    )  # fmt: skip


def write_tiny_qwen25(
    folder, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, tie_word_embeddings: bool = False,
    seed: int = 0,
) -> Path:
    """Qwen2ForCausalLM + a Qwen2.5-style tokenizer, saved like `Qwen/Qwen2.5-7B-Instruct`.

    Qwen2.5 is the qwen2 architecture (`model_type: qwen2`, biased q/k/v); what differs from Qwen2 is the tokenizer
    (19 more added tokens: vision/box/tool/FIM markers), RoPE base 1e6 and a 32768 context in `config.json`, and
    `tie_word_embeddings: true` for the 0.5B / 1.5B / 3B sizes (`tie_word_embeddings=True` here writes that variant).
    """
    tokenizer = build_tiny_tokenizer(extra_special_tokens=QWEN25_SPECIAL_TOKENS, added_tokens=QWEN25_ADDED_TOKENS)
    return _write_causal_lm(
        folder, Qwen2ForCausalLM, Qwen2Config, tokenizer, seed, hidden_size, num_layers, num_heads,
        max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False, tie_word_embeddings=tie_word_embeddings,
    )  # fmt: skip


def write_tiny_qwen3(
    folder, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, head_dim: int = 24,
    tie_word_embeddings: bool = False, seed: int = 0,
) -> Path:
    """Qwen3ForCausalLM + a Qwen3-style tokenizer, saved like `Qwen/Qwen3-8B`.

    Qwen3 is its own architecture (`model_type: qwen3`): RMS-norm on q and k per head, no q/k/v bias, and an explicit
    `head_dim` that need not be hidden_size / heads (Qwen3-0.6B: 1024 wide, 16 heads of 128); 24 here so a code path
    that assumes hidden_size / heads fails. Tokenizer: Qwen2.5's plus `<tool_response>`, `</tool_response>`,
    `<think>`, `</think>`. `tie_word_embeddings=True` writes the 0.6B / 1.7B / 4B variant.
    """
    tokenizer = build_tiny_tokenizer(extra_special_tokens=QWEN25_SPECIAL_TOKENS, added_tokens=QWEN3_ADDED_TOKENS)
    return _write_causal_lm(
        folder, Qwen3ForCausalLM, Qwen3Config, tokenizer, seed, hidden_size, num_layers, num_heads,
        head_dim=head_dim, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=tie_word_embeddings,
    )  # fmt: skip


def write_tiny_siglip2(
    folder, image_size: int = 32, patch_size: int = 4, hidden_size: int = 32, num_layers: int = 2, seed: int = 0
) -> Path:
    """A full SiglipModel repo (text + vision towers, `model_type: siglip`) + its image processor, saved like the
    fixed-resolution SigLIP 2 checkpoints (`google/siglip2-so400m-patch14-384`): those are SigLIP v1 graphs with
    SigLIP 2 weights, so `from_components` takes the vision config out of the full config and loads a
    SiglipVisionModel. The vision head is kept in the config (`vision_use_head: true`, as on the Hub)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config={"vocab_size": 64, "hidden_size": 16, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"image_size": image_size, "patch_size": patch_size, "hidden_size": hidden_size,
                       "intermediate_size": 2 * hidden_size + 5, "num_hidden_layers": num_layers,
                       "num_attention_heads": 4},
    )
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return folder


def write_tiny_siglip2_naflex(folder, patch_size: int = 4, hidden_size: int = 32, seed: int = 0) -> Path:
    """Siglip2VisionModel (`model_type: siglip2_vision_model`), the NaFlex variant: patchified pixel values with
    `pixel_attention_mask` and `spatial_shapes`, a variable token count per image. Only to check the refusal."""
    folder = Path(folder)
    torch.manual_seed(seed)
    config = Siglip2VisionConfig(
        patch_size=patch_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size + 5, num_hidden_layers=1,
        num_attention_heads=4, num_patches=64,
    )
    Siglip2VisionModel(config).save_pretrained(folder)
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


# ---------------------------------------------------------------------------------------------------------------------
# Native transformers VLMs (RossForPreTraining): tiny random-weight configs of the real classes, saved like Hub repos.
# ---------------------------------------------------------------------------------------------------------------------

# Qwen2-VL's chat template, reduced to what the tests use (images, text, generation prompt); the same markers.
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma 3's chat template, reduced like the others: turns as <start_of_turn>user / model, an image as <start_of_image>
# (which Gemma3Processor expands to "\n\n<start_of_image>" + the soft image tokens + "<end_of_image>\n\n").
GEMMA3_CHAT_TEMPLATE = (
    "{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA3_IMAGE_TOKENS = {
    "boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"
}
# SmolVLM's chat template ("User:<image>...<end_of_utterance>\nAssistant: ..."), reduced like the others; Idefics3 /
# SmolVLM processors expand each <image> into its frames.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
# llava-hf's template shape: "USER: <image>\n... ASSISTANT: ..."
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if message['role'] != 'user' %}<|im_end|>{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@contextlib.contextmanager
def absent_subprocessors_unchecked():
    """While active, `ProcessorMixin` skips its class check of sub-processors that are absent (None).

    transformers 5.23 checks every sub-processor's class, an absent one too, and without torchvision the check of
    `video_processor=None` fails (`'VIDEO_PROCESSOR_MAPPING' has no attribute '_extra_content'`): `Qwen2_5_VLProcessor`
    / `Qwen3VLProcessor` can then be neither constructed nor loaded with `AutoProcessor.from_pretrained`. For tests on
    machines without torchvision only; users (with torchvision, as every GPU install of these models has) call
    `AutoProcessor.from_pretrained` as usual, and nothing in the training code depends on this.
    """
    from unittest import mock

    from transformers import ProcessorMixin

    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, argument_name, argument):
        return None if argument is None else original(self, argument_name, argument)

    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", check):
        yield


def build_processor_without_torchvision(processor_class, **parts):
    """`processor_class(**parts)` with an absent (None) sub-processor, e.g. `video_processor=None` without
    torchvision (see `absent_subprocessors_unchecked`). Its `save_pretrained` writes the parts that exist (the stock
    one fails on the absent one)."""
    with absent_subprocessors_unchecked():
        processor = processor_class(**parts)
    present = [name for name in processor_class.get_attributes() if getattr(processor, name, None) is not None]
    processor.get_attributes = lambda: present  # read by save_pretrained as `self.get_attributes()`
    return processor


def load_qwen_vl_processor_without_torchvision(path):
    """What `AutoProcessor.from_pretrained(path)` gives with torchvision, for a Qwen2/2.5/3-VL folder, built here from
    its saved parts (tokenizer, PIL image processor, chat template) because the video processor needs torchvision."""
    import json

    from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, Qwen3VLProcessor

    path = Path(path)
    model_type = json.loads((path / "config.json").read_text())["model_type"]
    processor_class = Qwen3VLProcessor if model_type == "qwen3_vl" else Qwen2_5_VLProcessor
    template = path / "chat_template.jinja"
    return build_processor_without_torchvision(
        processor_class, image_processor=Qwen2VLImageProcessorPil.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path), video_processor=None,
        chat_template=template.read_text() if template.is_file() else None,
    )  # fmt: skip


def tiny_qwen25_vl(seed: int = 0, vision_depth: int = 1, min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 36):
    """A random-weight `Qwen2_5_VLForConditionalGeneration` (LLM 64 wide, 2 layers; vision tower 32 wide, window
    attention, patch 14, merge 2) and its `Qwen2_5_VLProcessor` (PIL image processor, Qwen-style tokenizer, no video
    processor: see `build_processor_without_torchvision`). `vision_depth=0` gives a tower without attention, whose
    token features depend on their own 28 x 28 px cell only (the grid-mapping tests)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

    tokenizer = build_tiny_tokenizer(extra_special_tokens=QWEN25_SPECIAL_TOKENS, added_tokens=QWEN25_ADDED_TOKENS)
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": (len(tokenizer) // 64 + 1) * 64, "hidden_size": 64, "intermediate_size": 133,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None,
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": vision_depth, "hidden_size": 32, "intermediate_size": 40, "num_heads": 4, "out_hidden_size": 64,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = Qwen2_5_VLForConditionalGeneration(config)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    processor = build_processor_without_torchvision(
        Qwen2_5_VLProcessor, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )  # fmt: skip
    return model, processor


def _tiny_llava_family_configs(tokenizer, vision_layers: int, image_size: int, patch_size: int) -> dict:
    """`vision_config` (SigLIP, 32 wide) and `text_config` (Qwen2, 64 wide) shared by the tiny Llava and
    LLaVA-OneVision models."""
    return {
        "vision_config": {
            "model_type": "siglip_vision_model", "image_size": image_size, "patch_size": patch_size,
            "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": vision_layers, "num_attention_heads": 4,
            "vision_use_head": False,
        },
        "text_config": {
            "model_type": "qwen2", "vocab_size": (len(tokenizer) // 64 + 1) * 64, "hidden_size": 64,
            "intermediate_size": 133, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None,
        },
    }  # fmt: skip


def tiny_llava(seed: int = 0, vision_layers: int = 1, image_size: int = 32, patch_size: int = 4,
               vision_feature_layer: int = -1):
    """A random-weight llava-hf `LlavaForConditionalGeneration` (SigLIP tower 32 px / patch 4 = 8 x 8 tokens, Qwen2
    LLM 64 wide) and its `LlavaProcessor` (SigLIP PIL image processor). `vision_feature_layer=0` takes the tower's
    embeddings (patch + position), before any attention mixes tokens (the grid-mapping tests)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = build_tiny_tokenizer(extra_special_tokens=["<image>"])
    torch.manual_seed(seed)
    config = LlavaConfig(
        **_tiny_llava_family_configs(tokenizer, vision_layers, image_size, patch_size),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="full",
        vision_feature_layer=vision_feature_layer, image_seq_length=(image_size // patch_size) ** 2,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlavaForConditionalGeneration(config)
    image_processor = SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="full", chat_template=LLAVA_CHAT_TEMPLATE,
    )  # fmt: skip
    return model, processor


def tiny_qwen3_vl(seed: int = 0, vision_depth: int = 1, min_pixels: int = 32 * 32 * 4, max_pixels: int = 32 * 32 * 36):
    """A random-weight `Qwen3VLForConditionalGeneration` (patch 16, merge 2: one token = 32 x 32 px; DeepStack on
    the tower's layer 0 when `vision_depth > 0`) and its `Qwen3VLProcessor` (PIL image processor with patch 16, same
    torchvision trap and workaround as `tiny_qwen25_vl`)."""
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    tokenizer = build_tiny_tokenizer(extra_special_tokens=QWEN25_SPECIAL_TOKENS, added_tokens=QWEN3_ADDED_TOKENS)
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(seed)
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": (len(tokenizer) // 64 + 1) * 64, "hidden_size": 64, "intermediate_size": 133,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3],
                                "mrope_interleaved": True},
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None,
        },
        vision_config={
            "depth": vision_depth, "hidden_size": 32, "intermediate_size": 40, "num_heads": 4, "out_hidden_size": 64,
            "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0] if vision_depth > 0 else [],
        },
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )  # fmt: skip
    model = Qwen3VLForConditionalGeneration(config)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, min_pixels=min_pixels, max_pixels=max_pixels,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )  # fmt: skip
    processor = build_processor_without_torchvision(
        Qwen3VLProcessor, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )  # fmt: skip
    return model, processor


def tiny_gemma3(seed: int = 0, vision_layers: int = 1, image_size: int = 32, patch_size: int = 4, tokens_per_side: int = 4):
    """A random-weight `Gemma3ForConditionalGeneration` (SigLIP tower 32 px / patch 4 = 8 x 8 patches, average-pooled
    to `tokens_per_side` ** 2 = 16 image tokens; Gemma 3 text model 64 wide, 2 layers) and its `Gemma3Processor`
    (`Gemma3ImageProcessorPil`; a tokenizer with Gemma 3's turn markers and its three named image tokens, which the
    processor reads as attributes: `boi_token` `<start_of_image>`, the chat template's image placeholder;
    `image_token` `<image_soft_token>`, the soft token the model scatters features into; `eoi_token`
    `<end_of_image>`). `vision_layers=0` gives a tower without attention (the grid-mapping tests)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    tokenizer = build_tiny_tokenizer(
        extra_special_tokens=["<start_of_turn>"], named_special_tokens=GEMMA3_IMAGE_TOKENS, eos_token="<end_of_turn>"
    )
    torch.manual_seed(seed)
    config = Gemma3Config(
        text_config={
            "vocab_size": (len(tokenizer) // 64 + 1) * 64, "hidden_size": 64, "intermediate_size": 133,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "sliding_window": 16, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": None,
        },
        vision_config={
            "model_type": "siglip_vision_model", "image_size": image_size, "patch_size": patch_size,
            "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": vision_layers, "num_attention_heads": 4,
            "vision_use_head": False,
        },
        mm_tokens_per_image=tokens_per_side**2, boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id, image_token_index=tokenizer.image_token_id,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    model = Gemma3ForConditionalGeneration(config)
    # Real checkpoints start the projector from trained weights; its zero init would make every image feature 0.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=tokens_per_side**2,
    )  # fmt: skip
    return model, processor


# Idefics3 / SmolVLM: the tokens their processors expand an image into (`<fake_token_around_image>` around each
# frame, `<row_i_col_j>` before each tile, `<global-img>` before the whole image) and the end of a turn.
IDEFICS3_SPECIAL_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)
]


def _tiny_idefics3_family(model_type: str, seed: int, vision_layers: int, frame_size: int, patch_size: int,
                          scale_factor: int, longest_edge: int):
    """A tiny `Idefics3ForConditionalGeneration` or `SmolVLMForConditionalGeneration` (SigLIP-like tower 32 wide,
    Llama LLM 64 wide), and the keyword arguments of its processor (PIL image processor, tokenizer, chat template,
    image tokens per frame)."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
    )

    config_class, model_class, image_processor_class = {
        "idefics3": (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil),
        "smolvlm": (SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil),
    }[model_type]
    tokenizer = build_tiny_tokenizer(extra_special_tokens=IDEFICS3_SPECIAL_TOKENS, eos_token="<end_of_utterance>")
    torch.manual_seed(seed)
    config = config_class(
        text_config={
            "model_type": "llama", "vocab_size": (len(tokenizer) // 64 + 1) * 64, "hidden_size": 64,
            "intermediate_size": 133, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None,
        },
        vision_config={
            "image_size": frame_size, "patch_size": patch_size, "hidden_size": 32, "intermediate_size": 37,
            "num_hidden_layers": vision_layers, "num_attention_heads": 4,
        },
        scale_factor=scale_factor, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    image_processor = image_processor_class(
        size={"longest_edge": longest_edge}, max_image_size={"longest_edge": frame_size},
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )  # fmt: skip
    parts = {
        "image_processor": image_processor, "tokenizer": tokenizer, "chat_template": SMOLVLM_CHAT_TEMPLATE,
        "image_seq_len": (frame_size // patch_size // scale_factor) ** 2,  # tokens per frame after pixel_shuffle
    }  # fmt: skip
    return model_class(config), parts


def tiny_idefics3(seed: int = 0, vision_layers: int = 1, frame_size: int = 32, patch_size: int = 4,
                  scale_factor: int = 2, longest_edge: int = 64):
    """A random-weight `Idefics3ForConditionalGeneration` (the class of the SmolVLM v1 checkpoints, e.g.
    `HuggingFaceTB/SmolVLM-Instruct`) and its `Idefics3Processor`. An image is resized to at most `longest_edge` px,
    split into `frame_size` px tiles (up to 2 x 2 here) plus the whole image at `frame_size` px; each frame is
    8 x 8 patches, pixel-shuffled by 2 into 4 x 4 = 16 tokens. `vision_layers=0`: a tower without attention."""
    from transformers import Idefics3Processor

    model, parts = _tiny_idefics3_family(
        "idefics3", seed, vision_layers, frame_size, patch_size, scale_factor, longest_edge
    )
    return model, Idefics3Processor(**parts)


def tiny_smolvlm(seed: int = 0, vision_layers: int = 1, frame_size: int = 32, patch_size: int = 4,
                 scale_factor: int = 2, longest_edge: int = 64):
    """A random-weight `SmolVLMForConditionalGeneration` (SmolVLM2, e.g. `HuggingFaceTB/SmolVLM2-2.2B-Instruct`) laid
    out like `tiny_idefics3`, and its `SmolVLMProcessor` without the video processor, which needs torchvision (see
    `build_smolvlm_processor_without_torchvision`)."""
    model, parts = _tiny_idefics3_family(
        "smolvlm", seed, vision_layers, frame_size, patch_size, scale_factor, longest_edge
    )
    return model, build_smolvlm_processor_without_torchvision(**parts)


def build_smolvlm_processor_without_torchvision(**parts):
    """`SmolVLMProcessor(**parts)` without its video processor (`SmolVLMVideoProcessor` needs torchvision), built with
    `build_processor_without_torchvision`. `SmolVLMProcessor.apply_chat_template` reads `video_processor.num_frames`
    and `.fps` for every conversation, with or without a video (transformers 5.23), so this instance's
    `apply_chat_template` is `ProcessorMixin`'s, which it only adds those video defaults to. For tests on machines
    without torchvision only, like the Qwen-VL workaround."""
    from transformers import ProcessorMixin, SmolVLMProcessor

    processor = build_processor_without_torchvision(SmolVLMProcessor, video_processor=None, **parts)

    def apply_chat_template(conversation, chat_template=None, **kwargs):
        return ProcessorMixin.apply_chat_template(processor, conversation, chat_template, **kwargs)

    processor.apply_chat_template = apply_chat_template  # a plain function: not saved by `to_dict`, not deep-copied
    return processor


def load_smolvlm_processor_without_torchvision(path):
    """`SmolVLMProcessor` from a folder's saved parts (what `AutoProcessor.from_pretrained` gives with torchvision)."""
    import json

    from transformers import AutoTokenizer, SmolVLMImageProcessorPil

    path = Path(path)
    settings = json.loads((path / "processor_config.json").read_text())
    template = path / "chat_template.jinja"
    return build_smolvlm_processor_without_torchvision(
        image_processor=SmolVLMImageProcessorPil.from_pretrained(path), tokenizer=AutoTokenizer.from_pretrained(path),
        image_seq_len=settings["image_seq_len"], chat_template=template.read_text() if template.is_file() else None,
    )  # fmt: skip


def load_native_processor_without_torchvision(path):
    """`AutoProcessor.from_pretrained(path)`, except for the Qwen-VL, LLaVA-OneVision and SmolVLM folders, whose video
    processors need torchvision (built from their saved parts by the loaders above)."""
    import json

    from transformers import AutoProcessor

    model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
    if model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        return load_qwen_vl_processor_without_torchvision(path)
    if model_type == "llava_onevision":
        return load_llava_onevision_processor_without_torchvision(path)
    if model_type == "smolvlm":
        return load_smolvlm_processor_without_torchvision(path)
    return AutoProcessor.from_pretrained(path)


def load_llava_onevision_processor_without_torchvision(path):
    """`LlavaOnevisionProcessor` from a folder's saved parts (its video processor needs torchvision)."""
    import json

    from transformers import AutoTokenizer, LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor

    path = Path(path)
    settings = json.loads((path / "processor_config.json").read_text())
    template = path / "chat_template.jinja"
    return build_processor_without_torchvision(
        LlavaOnevisionProcessor, image_processor=LlavaOnevisionImageProcessorPil.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path), video_processor=None,
        num_image_tokens=settings.get("num_image_tokens"),
        vision_feature_select_strategy=settings.get("vision_feature_select_strategy"),
        chat_template=template.read_text() if template.is_file() else None,
    )  # fmt: skip


def tiny_llava_onevision(seed: int = 0, vision_layers: int = 1, image_size: int = 32, patch_size: int = 4,
                         vision_feature_layer: int = -1):
    """A random-weight `LlavaOnevisionForConditionalGeneration` (SigLIP 32 px / patch 4: an 8 x 8 base view; any-res
    tiles on pinpoints up to 64 x 64 px) and its `LlavaOnevisionProcessor` (PIL image processor, no video processor:
    see `build_processor_without_torchvision`)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    tokenizer = build_tiny_tokenizer(extra_special_tokens=["<image>", "<video>"])
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        **_tiny_llava_family_configs(tokenizer, vision_layers, image_size, patch_size),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"), vision_feature_select_strategy="full",
        vision_feature_layer=vision_feature_layer, image_grid_pinpoints=pinpoints, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlavaOnevisionForConditionalGeneration(config)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )  # fmt: skip
    processor = build_processor_without_torchvision(
        LlavaOnevisionProcessor, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
        num_image_tokens=(image_size // patch_size) ** 2, vision_feature_select_strategy="full",
        chat_template=LLAVA_CHAT_TEMPLATE,
    )  # fmt: skip
    return model, processor


def without_torchvision_preamble() -> str:
    """Python source to run first in a fresh process where this project cannot be imported (`publish`'s
    verification): it defines the loaders above and makes `AutoProcessor.from_pretrained` use
    `load_native_processor_without_torchvision` for Qwen-VL, LLaVA-OneVision and SmolVLM folders, the stock loader for
    any other. For tests on machines without torchvision only: `publish` itself calls
    `AutoProcessor.from_pretrained`, as a user's machine (with torchvision) does."""
    import inspect

    loaders = (
        absent_subprocessors_unchecked, build_processor_without_torchvision, load_qwen_vl_processor_without_torchvision,
        load_llava_onevision_processor_without_torchvision, build_smolvlm_processor_without_torchvision,
        load_smolvlm_processor_without_torchvision, load_native_processor_without_torchvision,
    )  # fmt: skip
    swap = (
        "_stock_from_pretrained = transformers.AutoProcessor.from_pretrained\n\n\n"
        "def _from_pretrained(path, *args, **kwargs):\n"
        "    model_type = json.loads((Path(path) / 'config.json').read_text()).get('model_type')\n"
        "    if model_type in ('qwen2_vl', 'qwen2_5_vl', 'qwen3_vl', 'llava_onevision', 'smolvlm'):\n"
        "        return load_native_processor_without_torchvision(path)\n"
        "    return _stock_from_pretrained(path, *args, **kwargs)\n\n\n"
        "transformers.AutoProcessor.from_pretrained = staticmethod(_from_pretrained)\n"
    )
    header = "import contextlib\nimport json\nfrom pathlib import Path\n\nimport transformers"
    return "\n\n\n".join([header, *(inspect.getsource(function) for function in loaders), swap])
