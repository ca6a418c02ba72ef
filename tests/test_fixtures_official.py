"""Smoke tests of the tiny authors'-format checkpoint (`tests/fixtures_official.py`).

They check the fixture against itself (index <-> shards <-> config) and against the libraries whose module names the
authors' checkpoint inherits (transformers' Qwen2 / SigLIP, diffusers' AutoencoderKL), so a converter tested on it is
tested on the real key names.
"""

import json

import pytest
import torch
from safetensors import safe_open

from fixtures_official import (
    LLM,
    load_official_state_dict,
    official_qwen2_prompt,
    sincos_pos_embed_2d,
    write_tiny_official_checkpoint,
)


VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
KNOWN_PREFIXES = (
    "model.embed_tokens.",
    "model.layers.",
    "model.norm.",
    VISION_PREFIX,
    "model.mm_projector.",
    "model.pixel_decoder.pixel_decoder.",
    "model.mm_inv_projector.net.",
    "lm_head.",
)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return write_tiny_official_checkpoint(tmp_path_factory.mktemp("ross_official"))


def test_index_and_shards_are_consistent(official):
    folder = official["folder"]
    index = json.loads(official["index_file"].read_text())
    weight_map = index["weight_map"]
    assert list(weight_map) == sorted(weight_map)
    assert len(official["shard_files"]) >= 2

    seen = {}
    total = 0
    for filename in official["shard_files"]:
        with safe_open(str(folder / filename), "pt") as shard:
            keys = list(shard.keys())
            assert keys, f"{filename} is empty"
            assert shard.metadata() == {"format": "pt"}
            for key in keys:
                assert key not in seen, f"{key} is in both {seen.get(key)} and {filename}"
                seen[key] = filename
                tensor = shard.get_tensor(key)
                total += tensor.numel() * tensor.element_size()
                assert tuple(tensor.shape) == official["shapes"][key]
                assert tensor.dtype == official["dtype"]
    assert seen == weight_map
    assert set(seen) == set(official["shapes"])
    assert index["metadata"]["total_size"] == total
    assert set(weight_map.values()) == set(official["shard_files"])


def test_keys_use_only_the_authors_prefixes(official):
    shapes = official["shapes"]
    for key in shapes:
        assert key.startswith(KNOWN_PREFIXES), key
    assert not any(key.startswith("model.image_newline") for key in shapes)  # only with *unpad* merge types
    assert not any("ln_pre" in key for key in shapes)  # parameter-free LayerNorm in denoiser_dit.py
    for prefix in KNOWN_PREFIXES:
        assert any(key.startswith(prefix) for key in shapes), prefix


def test_shapes_agree_with_config(official):
    cfg, shapes, dims = official["config"], official["shapes"], official["dims"]
    assert cfg["model_type"] == "ross_qwen2" and cfg["architectures"] == ["RossQwen2ForCausalLM"]
    hidden, vocab = cfg["hidden_size"], cfg["vocab_size"]
    assert shapes["model.embed_tokens.weight"] == (vocab, hidden)
    assert shapes["lm_head.weight"] == (vocab, hidden)
    layers = {int(k.split(".")[2]) for k in shapes if k.startswith("model.layers.")}
    assert layers == set(range(cfg["num_hidden_layers"]))
    kv = cfg["num_key_value_heads"] * hidden // cfg["num_attention_heads"]
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (kv, hidden)

    # vision tower: width = mm_hidden_size, position table = image_embed_len, all layers + post_layernorm + head kept
    assert shapes[VISION_PREFIX + "embeddings.position_embedding.weight"] == (cfg["image_embed_len"], cfg["mm_hidden_size"])
    vision_layers = {int(k.split(".")[6]) for k in shapes if k.startswith(VISION_PREFIX + "encoder.layers.")}
    assert vision_layers == set(range(dims["vision_num_layers"]))
    assert VISION_PREFIX + "post_layernorm.weight" in shapes and VISION_PREFIX + "head.probe" in shapes

    # projector: mlp2x_gelu -> Sequential indices 0 and 2
    assert shapes["model.mm_projector.0.weight"] == (hidden, cfg["mm_hidden_size"])
    assert shapes["model.mm_projector.2.weight"] == (hidden, hidden)

    # denoiser: widths only in the weights, not recoverable from the name "denoiser_vit3x"
    net = "model.mm_inv_projector.net."
    width, _, _, _ = shapes[net + "x_embedder.proj.weight"]
    assert cfg["mm_inv_projector_type"] == "denoiser_vit3x" and width == dims["denoiser_width"] != 1024
    assert shapes[net + "x_embedder.proj.weight"] == (width, cfg["mm_inv_hidden_size"], 1, 1)
    assert shapes[net + "pos_embed"] == (1, cfg["image_embed_len"], width)
    assert shapes[net + "z_embedder.1.weight"] == (width, hidden)
    assert shapes[net + "t_embedder.mlp.0.weight"] == (width, 256)
    assert shapes[net + "final_layer.linear.weight"] == (cfg["mm_inv_hidden_size"], width)
    assert shapes[net + "blocks.0.adaLN_modulation.1.weight"] == (6 * width, width)
    assert shapes[net + "blocks.0.mlp.fc1.weight"] == (4 * width, width)
    blocks = {int(k.split(".")[4]) for k in shapes if k.startswith(net + "blocks.")}
    assert blocks == {0, 1, 2}  # "vit3x"

    # teacher geometry: grid * 16 pixels -> /8 VAE -> 2x2 fold -> grid x grid tokens of 4 * latent_channels
    assert cfg["decode_image_size"] == dims["grid_size"] * 16
    assert cfg["decode_image_size"] // dims["vae_downsample"] // 2 == dims["grid_size"]
    assert cfg["mm_inv_hidden_size"] == 4 * dims["vae_latent_channels"]


def test_names_match_the_libraries_the_authors_inherit_them_from(official):
    from diffusers import AutoencoderKL
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    shapes = official["shapes"]
    with torch.device("meta"):
        qwen = Qwen2ForCausalLM(
            Qwen2Config(
                **{k: LLM[k] for k in LLM},
                tie_word_embeddings=False,
            )
        )
    expected = {k: tuple(v.shape) for k, v in qwen.state_dict().items()}
    got = {k: v for k, v in shapes.items() if k.startswith(("model.embed_tokens", "model.layers", "model.norm", "lm_head"))}
    assert got == expected

    # authors: SiglipVisionModel(4.43).vision_model.X  ==  SiglipVisionModel(5.x).X
    vision_cfg = SiglipVisionConfig.from_pretrained(official["vision_tower_dir"])
    with torch.device("meta"):
        tower = SiglipVisionModel(vision_cfg)
    expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    got = {k[len(VISION_PREFIX) :]: v for k, v in shapes.items() if k.startswith(VISION_PREFIX)}
    assert got == expected

    vae = AutoencoderKL.from_pretrained(official["pixel_decoder_dir"])
    expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    prefix = "model.pixel_decoder.pixel_decoder."
    got = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
    assert got == expected
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) for k in got)  # FLUX VAE layout


def test_component_folders_load_and_match_the_checkpoint_copies(official):
    from diffusers import AutoencoderKL
    from transformers import SiglipImageProcessor, SiglipVisionModel

    state = load_official_state_dict(official["folder"])
    cfg = official["config"]
    vision_dir = official["folder"] / cfg["mm_vision_tower"]  # "./siglip-tiny", relative to the checkpoint folder
    assert vision_dir.resolve() == official["vision_tower_dir"].resolve()
    tower = SiglipVisionModel.from_pretrained(vision_dir, dtype=official["dtype"])
    for key, value in tower.state_dict().items():
        assert torch.equal(value, state[VISION_PREFIX + key]), key
    processor = SiglipImageProcessor.from_pretrained(vision_dir)
    assert list(processor.image_mean) == cfg["image_mean"]
    assert processor.size["height"] == official["dims"]["image_size"]

    vae = AutoencoderKL.from_pretrained(official["folder"] / cfg["mm_pixel_decoder"], torch_dtype=official["dtype"])
    assert vae.config.latent_channels * 4 == cfg["mm_inv_hidden_size"]
    assert vae.config.shift_factor == pytest.approx(0.1159)
    for key, value in vae.state_dict().items():
        assert torch.equal(value, state["model.pixel_decoder.pixel_decoder." + key]), key


def test_pos_embed_is_the_fixed_sincos_table(official):
    state = load_official_state_dict(official["folder"])
    dims = official["dims"]
    table = torch.from_numpy(sincos_pos_embed_2d(dims["denoiser_width"], dims["grid_size"])).float()
    pos_embed = state["model.mm_inv_projector.net.pos_embed"].float()[0]
    torch.testing.assert_close(pos_embed, table.to(official["dtype"]).float())
    # token 1 is (row 0, col 1): the first half of the channels encodes the column, the second half the row
    half = dims["denoiser_width"] // 2
    assert torch.equal(table[1, half:], table[0, half:]) and not torch.equal(table[1, :half], table[0, :half])


def test_tokenizer_and_template(official):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(official["folder"])
    ids = official["special_token_ids"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == ids["<|im_end|>"] == official["config"]["eos_token_id"]
    assert tokenizer.pad_token_id == ids["<|endoftext|>"] == official["config"]["pad_token_id"]
    assert len(tokenizer) <= official["config"]["vocab_size"]
    assert "<image>" not in tokenizer.get_vocab()  # the authors splice IMAGE_TOKEN_INDEX = -200 instead

    prompt = official_qwen2_prompt("What is it?")
    assert prompt.endswith(" ASSISTANT:") and "USER: <image>\nWhat is it?" in prompt
    text = official_qwen2_prompt("What is it?", "A cat.")
    encoded = tokenizer(text).input_ids
    assert encoded[-1] == ids["<|im_end|>"]
    assert tokenizer.decode(encoded) == text


def test_variants_and_determinism(tmp_path):
    llava = write_tiny_official_checkpoint(tmp_path / "llava", with_denoiser=False, with_tokenizer=False, num_shards=3)
    assert len(llava["shard_files"]) == 3
    assert not any(k.startswith(("model.mm_inv_projector", "model.pixel_decoder")) for k in llava["shapes"])
    assert llava["config"]["ross_enable"] is False and "mm_inv_projector_type" not in llava["config"]
    assert llava["pixel_decoder_dir"] is None and not (tmp_path / "llava" / "pretrained_vae").exists()

    no_tower = write_tiny_official_checkpoint(
        tmp_path / "no_tower", with_vision_weights=False, with_pixel_decoder_weights=False, denoiser_width=64
    )
    assert not any(k.startswith(("model.vision_tower", "model.pixel_decoder")) for k in no_tower["shapes"])
    assert no_tower["shapes"]["model.mm_inv_projector.net.x_embedder.proj.weight"][0] == 64
    assert (tmp_path / "no_tower" / "siglip-tiny" / "model.safetensors").exists()

    again = write_tiny_official_checkpoint(tmp_path / "again", with_tokenizer=False)
    first = write_tiny_official_checkpoint(tmp_path / "first", with_tokenizer=False)
    a, b = load_official_state_dict(again["folder"]), load_official_state_dict(first["folder"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = load_official_state_dict(write_tiny_official_checkpoint(tmp_path / "seed1", seed=1)["folder"])
    assert not torch.equal(a["lm_head.weight"], other["lm_head.weight"])


def authors_denoiser_key_to_ours(key: str) -> str | None:
    """The mapping table of docs/authors-format.md for `model.mm_inv_projector.*` (None: dropped, no parameter)."""
    name = key.removeprefix("model.mm_inv_projector.net.")
    if name == "pos_embed":
        return None
    name = name.replace("x_embedder.proj.", "x_embedder.")
    name = name.replace("t_embedder.mlp.0.", "t_embedder.linear_1.").replace("t_embedder.mlp.2.", "t_embedder.linear_2.")
    name = name.replace("z_embedder.1.", "z_embedder.").replace("adaLN_modulation.1.", "adaLN_modulation.")
    return "denoiser." + name


def test_denoiser_mapping_table_matches_our_denoiser(official):
    denoiser_module = pytest.importorskip("modeling_ross.denoiser")
    dims = official["dims"]
    ours = denoiser_module.RossDenoiser(
        in_channels=dims["latent_token_channels"],
        condition_size=dims["llm_hidden_size"],
        hidden_size=dims["denoiser_width"],
        depth=dims["denoiser_depth"],
        num_heads=dims["denoiser_num_heads"],
        grid_size=dims["grid_size"],
    )
    expected = {"denoiser." + k: tuple(v.shape) for k, v in ours.state_dict().items()}
    mapped = {}
    for key, shape in official["shapes"].items():
        if key.startswith("model.mm_inv_projector."):
            target = authors_denoiser_key_to_ours(key)
            if target is not None:
                mapped[target] = (shape[0], shape[1]) if key.endswith("x_embedder.proj.weight") else shape
    assert mapped == expected
    table = ours.position_embedding(torch.device("cpu"), torch.float32)
    reference = torch.from_numpy(sincos_pos_embed_2d(dims["denoiser_width"], dims["grid_size"])).float()
    torch.testing.assert_close(table, reference)
