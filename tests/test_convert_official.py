"""`modeling_ross.convert_official`: the authors' checkpoint layout -> a ROSS folder.

The references below are computed from the authors' tensors with transformers' Qwen2 / SigLIP classes, a hand-written
projector and a hand-written DiT forward (docs/authors-format.md, section 4), using their own key names: they share
no code with the converter's key mapping. Loading the converted folder with remote code in a fresh process is
tested in tests/test_export_llava.py (one subprocess for both checks).
"""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from fixtures_official import (
    LLM,
    SYSTEM_PROMPT,
    load_official_state_dict,
    official_qwen2_prompt,
    sincos_pos_embed_2d,
    write_tiny_official_checkpoint,
)
from modeling_ross.convert_official import ConversionError, convert_official, main, resolve_component


VISION = "model.vision_tower.vision_tower.vision_model."
NET = "model.mm_inv_projector.net."
QUESTION = "What is in the image?"


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """An fp32 authors' checkpoint converted to fp32 (exact numerical comparisons)."""
    root = tmp_path_factory.mktemp("official_fp32")
    official = write_tiny_official_checkpoint(root / "src", dtype=torch.float32, seed=1)
    report = convert_official(str(root / "src"), root / "dst", dtype="fp32")
    return official, report


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    """The released layout (bf16) converted through the CLI with its defaults."""
    root = tmp_path_factory.mktemp("official_bf16")
    official = write_tiny_official_checkpoint(root / "src")
    report = main(["--src", str(root / "src"), "--dst", str(root / "dst")])
    return official, report


def _image(seed: int, size=(80, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _messages(question, answer=None):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


# ---- independent references from the authors' tensors -------------------------------------------------------------
def _authors_pixel_values(image: Image.Image, size: int) -> torch.Tensor:
    """expand2square (no-op for square images) + SigLIP preprocessing: PIL bicubic resize, /255, (x - .5) / .5."""
    assert image.width == image.height
    array = np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1)[None]


def _authors_input_ids(tokenizer, prompt: str) -> list[int]:
    """`tokenizer_image_token`: chunks split on "<image>" tokenised separately, joined by IMAGE_TOKEN_INDEX (-200)."""
    chunks = [tokenizer(chunk, add_special_tokens=False).input_ids for chunk in prompt.split("<image>")]
    ids = chunks[0]
    for chunk in chunks[1:]:
        ids = ids + [-200] + chunk
    return ids


def _authors_logits(folder, official, prompt: str, image: Image.Image) -> torch.Tensor:
    """LLaVA-style forward of the authors' model from their tensors (Qwen2ForCausalLM + SiglipVisionModel + a
    hand-written mlp2x_gelu projector), fp32."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    state = {k: v.float() for k, v in load_official_state_dict(folder).items()}
    cfg = official["config"]
    llm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg["num_key_value_heads"], rms_norm_eps=cfg["rms_norm_eps"],
            rope_theta=cfg["rope_theta"], max_position_embeddings=cfg["max_position_embeddings"],
            tie_word_embeddings=False,
        )
    ).eval()
    llm.load_state_dict({k: v for k, v in state.items() if k.startswith(("model.embed_tokens", "model.layers",
                                                                         "model.norm", "lm_head"))}, strict=True)
    tower = SiglipVisionModel(SiglipVisionConfig.from_pretrained(official["vision_tower_dir"])).eval()
    tower.load_state_dict({k[len(VISION):]: v for k, v in state.items() if k.startswith(VISION)}, strict=True)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = _authors_input_ids(tokenizer, prompt)
    pixel_values = _authors_pixel_values(image, official["dims"]["image_size"])
    with torch.no_grad():
        features = tower(pixel_values, output_hidden_states=True).hidden_states[-2][0]  # SigLIP: select_layer -2
        hidden = F.linear(features, state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"])
        features = F.linear(F.gelu(hidden), state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])
        cut = ids.index(-200)
        embed = llm.model.embed_tokens
        pieces = [embed(torch.tensor(ids[:cut])), features, embed(torch.tensor(ids[cut + 1:]))]
        inputs_embeds = torch.cat(pieces)[None]
        return llm(inputs_embeds=inputs_embeds).logits[0], ids


def _authors_dit(state, noisy, timesteps, condition, num_heads=16):
    """The authors' `RossDenoiser` + DiT forward (docs/authors-format.md section 4), from their tensors."""
    linear = lambda x, name: F.linear(x, state[NET + name + ".weight"], state[NET + name + ".bias"])
    batch, tokens, channels = noisy.shape
    grid = int(math.isqrt(tokens))
    width = state[NET + "x_embedder.proj.weight"].shape[0]
    cond = F.layer_norm(condition, (condition.shape[-1],), eps=1e-5)  # ln_pre (torch default eps)
    cond = cond.transpose(1, 2).reshape(batch, -1, grid, grid)  # 'b (h w) c -> b c h w'
    image = noisy.transpose(1, 2).reshape(batch, channels, grid, grid)
    x = F.conv2d(image, state[NET + "x_embedder.proj.weight"], state[NET + "x_embedder.proj.bias"])
    x = x.flatten(2).transpose(1, 2) + state[NET + "pos_embed"]
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = timesteps[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    t_emb = linear(F.silu(linear(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = t_emb[:, None] + linear(F.silu(cond.flatten(2).transpose(1, 2)), "z_embedder.1")
    norm = lambda h: F.layer_norm(h, (width,), eps=1e-6)
    head_dim = width // num_heads
    blocks = sorted({int(k.split(".")[4]) for k in state if k.startswith(NET + "blocks.")})
    for b in blocks:
        p = f"blocks.{b}."
        s1, g1, a1, s2, g2, a2 = linear(F.silu(c), p + "adaLN_modulation.1").chunk(6, dim=-1)
        y = norm(x) * (1 + g1) + s1
        qkv = linear(y, p + "attn.qkv").reshape(batch, tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attention = (q @ k.transpose(-2, -1) * head_dim**-0.5).softmax(dim=-1)
        attended = (attention @ v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + a1 * linear(attended, p + "attn.proj")
        y = norm(x) * (1 + g2) + s2
        x = x + a2 * linear(F.gelu(linear(y, p + "mlp.fc1"), approximate="tanh"), p + "mlp.fc2")
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=-1)
    return linear(norm(x) * (1 + scale) + shift, "final_layer.linear")


# ---- tests ----------------------------------------------------------------------------------------------------------
def test_every_source_tensor_is_mapped_or_dropped_with_a_reason(bf16):
    official, report = bf16
    source = set(official["shapes"])
    assert set(report.mapped) | set(report.dropped) == source
    assert not set(report.mapped) & set(report.dropped)
    assert not report.from_components
    dropped_head = {k for k in source if k.startswith(VISION + "head.")}
    dropped_vae = {k for k in source if k.startswith("model.pixel_decoder.pixel_decoder.")}
    assert set(report.dropped) == dropped_head | dropped_vae
    assert all(("head" in report.dropped[k]) for k in dropped_head)
    # The bf16 sin-cos table is not the fp32 one: kept exactly, so the denoiser adds what the authors' forward adds.
    assert report.mapped[NET + "pos_embed"] == "denoiser.pos_embed"
    assert report.position_embedding == "learned" and 0 < report.position_embedding_deviation < 4e-3
    assert "rounded to bfloat16 (not trained)" in report.position_embedding_note
    assert report.config.objective_config.denoiser_position_embedding == "learned"
    assert report.mapped[VISION + "post_layernorm.weight"] == "model.vision_tower.post_layernorm.weight"
    assert report.mapped["model.mm_projector.2.bias"] == "model.projector.linear_2.bias"
    assert report.mapped[NET + "blocks.1.adaLN_modulation.1.weight"] == "denoiser.blocks.1.adaLN_modulation.weight"

    # The written tensors are exactly the source tensors (bf16 kept), and nothing else was written.
    dst = report.dst
    written = {}
    for name in report.shard_files:
        written.update(load_file(str(dst / name)))
    assert set(written) == set(report.mapped.values())
    state = load_official_state_dict(official["folder"])
    for key, target in report.mapped.items():
        expected = state[key]
        if key.endswith("x_embedder.proj.weight"):
            expected = expected[:, :, 0, 0]
        assert written[target].dtype == torch.bfloat16
        assert torch.equal(written[target], expected), key


def test_config_reads_the_denoiser_from_the_weights_and_the_teacher_from_the_vae(bf16):
    official, report = bf16
    config = json.loads((report.dst / "config.json").read_text())
    objective = config["objective_config"]
    dims = official["dims"]
    assert objective["denoiser_hidden_size"] == dims["denoiser_width"] == 48  # not 1024 from "denoiser_vit3x"
    assert objective["denoiser_depth"] == 3 and objective["denoiser_num_heads"] == 16
    assert objective["denoiser_mlp_ratio"] == 4.0
    assert objective["target"] == "vae" and objective["vae_fold"] == 2 and objective["latent_sample"] == "sample"
    assert objective["teacher"] == str(official["pixel_decoder_dir"].resolve())
    assert objective["teacher_config"]["latent_channels"] == 4 and objective["teacher_config"]["shift_factor"] == 0.1159
    assert objective["num_noise_draws"] == 4 and objective["beta_schedule"] == "squaredcos_cap_v2"
    assert config["image_seq_length"] == dims["num_image_tokens"] and config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "full" and config["projector_type"] == "mlp2x_gelu"
    assert config["vision_config"]["vision_use_head"] is False
    assert config["text_config"]["model_type"] == "qwen2" and config["text_config"]["vocab_size"] == LLM["vocab_size"]
    # <image> is appended after the tokenizer's last id, inside Qwen2's spare embedding rows: no resize.
    assert report.image_token_id == max(official["special_token_ids"].values()) + 1 < LLM["vocab_size"]
    assert not report.resized_vocab
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoProcessor"}
    for name in ("configuration_ross.py", "modeling_ross.py", "processing_ross.py", "denoiser.py", "teacher.py",
                 "objective.py", "chat_template.jinja", "generation_config.json"):
        assert (report.dst / name).is_file(), name


def test_chat_template_and_tokens_equal_the_authors(bf16):
    from modeling_ross import RossProcessor
    from transformers import AutoTokenizer

    official, report = bf16
    processor = RossProcessor.from_pretrained(report.dst)
    prompt = processor.apply_chat_template(_messages(QUESTION), add_generation_prompt=True, tokenize=False)
    assert prompt == official_qwen2_prompt(QUESTION)
    training = processor.apply_chat_template(_messages(QUESTION, "A cat."), tokenize=False)
    assert training == official_qwen2_prompt(QUESTION, "A cat.")
    assert prompt.startswith(SYSTEM_PROMPT)

    # Token ids: ours with the image run collapsed == the authors' tokenizer_image_token ids.
    batch = processor(text=[prompt], images=[_image(0)], return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    n = official["dims"]["num_image_tokens"]
    first = ids.index(report.image_token_id)
    assert ids[first:first + n] == [report.image_token_id] * n
    collapsed = ids[:first] + [-200] + ids[first + n:]
    authors = _authors_input_ids(AutoTokenizer.from_pretrained(official["folder"]), prompt)
    assert collapsed == authors
    assert processor.image_aspect_ratio == "pad"


def test_logits_equal_an_independent_reference(fp32):
    from modeling_ross import RossForConditionalGeneration, RossProcessor

    official, report = fp32
    model = RossForConditionalGeneration.from_pretrained(report.dst).eval()
    assert model.dtype == torch.float32 and model.denoiser is None
    processor = RossProcessor.from_pretrained(report.dst)
    image = _image(1)
    prompt = processor.apply_chat_template(_messages(QUESTION), add_generation_prompt=True, tokenize=False)
    batch = processor(text=[prompt], images=[image], return_tensors="pt")
    torch.testing.assert_close(batch["pixel_values"], _authors_pixel_values(image, official["dims"]["image_size"]),
                               atol=1e-6, rtol=0)
    reference, _ = _authors_logits(official["folder"], official, prompt, image)
    with torch.no_grad():
        ours = model(**batch).logits[0]
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() < 1e-5


def test_denoiser_equals_the_authors_dit_and_drives_the_visual_loss(fp32):
    from modeling_ross import RossForConditionalGeneration, RossProcessor

    official, report = fp32
    model = RossForConditionalGeneration.from_pretrained(report.dst, load_objective=True)
    state = {k: v.float() for k, v in load_official_state_dict(official["folder"]).items()}
    dims = official["dims"]
    n, c, d = dims["num_image_tokens"], dims["latent_token_channels"], dims["llm_hidden_size"]
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(3, n, c, generator=generator)
    condition = torch.randn(3, n, d, generator=generator) * 3
    timesteps = torch.tensor([0, 417, 999])
    with torch.no_grad():
        ours = model.denoiser(noisy, timesteps, condition)
        theirs = _authors_dit(state, noisy, timesteps, condition)
    assert ours.abs().max() > 1e-3  # trained (random) weights, not the zero-initialised output
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

    # The frozen teacher came back from ./pretrained_vae (not saved in the folder), bit-exact.
    for key, value in model.teacher.vae.state_dict().items():
        assert torch.equal(value, state["model.pixel_decoder.pixel_decoder." + key]), key
    assert not any(p.requires_grad for p in model.teacher.parameters())

    # Training forward: a finite visual loss, computed by these weights and back-propagated into them.
    processor = RossProcessor.from_pretrained(report.dst)
    text = processor.apply_chat_template(_messages(QUESTION, "A cat."), tokenize=False)
    batch = processor(text=[text], images=[_image(2, (90, 60))], return_tensors="pt")
    model.train()
    torch.manual_seed(0)
    out = model(**batch, labels=batch["input_ids"])
    assert out.visual_loss is not None and torch.isfinite(out.visual_loss) and out.visual_loss > 0
    out.visual_loss.backward()
    assert model.denoiser.final_layer.linear.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.denoiser.final_layer.linear.weight.mul_(0.5)
    torch.manual_seed(0)
    changed = model(**batch, labels=batch["input_ids"]).visual_loss
    assert not torch.isclose(changed, out.visual_loss)


@pytest.fixture(scope="module")
def trained_table(tmp_path_factory):
    """An fp32 checkpoint whose denoiser `pos_embed` was trained (sin-cos + noise), converted with the CLI defaults."""
    root = tmp_path_factory.mktemp("official_trained_table")
    official = write_tiny_official_checkpoint(root / "src", dtype=torch.float32, seed=3, pos_embed_noise=0.05)
    report = main(["--src", str(root / "src"), "--dst", str(root / "dst")])
    return official, report


def test_a_trained_position_table_is_kept_exactly_and_gives_the_authors_prediction(trained_table, fp32):
    from modeling_ross import RossForConditionalGeneration

    official, report = trained_table
    state = load_official_state_dict(official["folder"])
    assert report.position_embedding == "learned" and 0.1 < report.position_embedding_deviation < 0.5
    assert "trained" in report.position_embedding_note and NET + "pos_embed" not in report.dropped
    assert report.config.objective_config.denoiser_position_embedding == "learned"
    # --dtype auto: an fp32 source stays fp32, and the stored table is written bit for bit.
    written = {}
    for name in report.shard_files:
        written.update(load_file(str(report.dst / name)))
    assert all(t.dtype == torch.float32 for t in written.values() if t.is_floating_point())
    assert torch.equal(written["denoiser.pos_embed"], state[NET + "pos_embed"])

    model = RossForConditionalGeneration.from_pretrained(report.dst, load_objective=True)
    assert torch.equal(model.denoiser.pos_embed.detach(), state[NET + "pos_embed"])  # not re-initialised on load
    dims = official["dims"]
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(3, dims["num_image_tokens"], dims["latent_token_channels"], generator=generator)
    condition = torch.randn(3, dims["num_image_tokens"], dims["llm_hidden_size"], generator=generator) * 3
    timesteps = torch.tensor([0, 417, 999])
    with torch.no_grad():
        ours = model.denoiser(noisy, timesteps, condition)
        theirs = _authors_dit(state, noisy, timesteps, condition)
        sincos_state = {**state, NET + "pos_embed": _sincos_like(state[NET + "pos_embed"])}
        with_fixed_table = _authors_dit(sincos_state, noisy, timesteps, condition)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # The table matters: replacing it by the fixed one (what the converter used to do) changes the prediction.
    assert (with_fixed_table - theirs).abs().max() > 1e-3

    # An exact fp32 sin-cos table is still recognised, dropped and recomputed.
    _, exact = fp32
    assert exact.position_embedding == "sincos" and exact.position_embedding_deviation == 0.0
    assert "recomputes" in exact.dropped[NET + "pos_embed"]
    assert exact.config.objective_config.denoiser_position_embedding == "sincos"


def _sincos_like(table: torch.Tensor) -> torch.Tensor:
    width, grid = table.shape[-1], math.isqrt(table.shape[1])
    return torch.from_numpy(sincos_pos_embed_2d(width, grid)).float()[None]


def _rewrite_shard(folder, drop: str, add: str):
    """Remove `drop` from its shard and add an unknown tensor `add` (index kept consistent)."""
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = folder / index["weight_map"].pop(drop)
    tensors = load_file(str(shard))
    del tensors[drop]
    tensors[add] = torch.zeros(3)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index["weight_map"][add] = shard.name
    index_file.write_text(json.dumps(index))


def test_missing_and_unexpected_keys_fail_with_the_full_list(tmp_path):
    src = tmp_path / "src"
    write_tiny_official_checkpoint(src, with_pixel_decoder_weights=False)
    _rewrite_shard(src, "model.layers.1.mlp.up_proj.weight", "model.mystery.weight")
    _rewrite_shard(src, NET + "blocks.2.attn.proj.bias", "model.mm_projector.5.weight")
    with pytest.raises(ConversionError) as error:
        convert_official(str(src), tmp_path / "dst")
    message = str(error.value)
    assert "2 unexpected source keys" in message and "model.mystery.weight" in message
    assert "model.mm_projector.5.weight" in message
    assert "2 missing keys" in message
    assert "model.language_model.layers.1.mlp.up_proj.weight" in message and "denoiser.blocks.2.attn.proj.bias" in message
    assert not (tmp_path / "dst").exists()  # planned before writing


def test_missing_tokenizer_converts_the_model_with_a_warning_and_resizes_if_needed(tmp_path):
    from modeling_ross import RossForConditionalGeneration

    official = write_tiny_official_checkpoint(tmp_path / "src", with_tokenizer=False, with_vision_weights=False,
                                              with_pixel_decoder_weights=False, dtype=torch.float32)
    with pytest.warns(UserWarning, match="No tokenizer"):
        report = convert_official(str(tmp_path / "src"), tmp_path / "dst", dtype="fp32")
    assert not report.processor_saved and not (tmp_path / "dst" / "tokenizer_config.json").exists()
    # Without a tokenizer the special ids sit in the last rows (157..159): <image> = 160 needs a resize to 192.
    assert report.image_token_id == LLM["vocab_size"] and report.resized_vocab and report.vocab_size == 192
    model = RossForConditionalGeneration.from_pretrained(report.dst)
    assert model.config.image_token_id == 160 and model.config.text_config.vocab_size == 192
    state = load_official_state_dict(official["folder"])
    embed = model.get_input_embeddings().weight
    assert torch.equal(embed[:160], state["model.embed_tokens.weight"])
    torch.testing.assert_close(embed[160:], state["model.embed_tokens.weight"].mean(0).expand(32, -1))
    assert torch.equal(model.lm_head.weight[:160], state["lm_head.weight"])
    # The tower weights were not in the checkpoint: they come from ./siglip-tiny, head dropped.
    tower = load_file(str(official["vision_tower_dir"] / "model.safetensors"))
    for key, value in model.model.vision_tower.state_dict().items():
        assert torch.equal(value, tower["vision_model." + key]), key
    assert all(k.startswith("model.vision_tower.") for k in report.from_components)


def test_save_teacher_keeps_the_checkpoint_vae(tmp_path):
    from modeling_ross import RossForConditionalGeneration

    official = write_tiny_official_checkpoint(tmp_path / "src", with_tokenizer=False)
    with pytest.warns(UserWarning):
        report = convert_official(str(tmp_path / "src"), tmp_path / "dst", save_teacher=True)
    assert not any(k.startswith("model.pixel_decoder") for k in report.dropped)
    shutil.rmtree(official["pixel_decoder_dir"])  # the folder is self-contained now
    model = RossForConditionalGeneration.from_pretrained(report.dst, load_objective=True)
    state = load_official_state_dict(official["folder"])
    for key, value in model.teacher.vae.state_dict().items():
        assert torch.equal(value, state["model.pixel_decoder.pixel_decoder." + key]), key


def test_component_paths_resolve_checkpoint_first_then_cwd_and_overrides_win(tmp_path, monkeypatch):
    checkpoint, elsewhere = tmp_path / "ckpt", tmp_path / "cwd"
    (checkpoint / "pretrained_vae").mkdir(parents=True)
    (elsewhere / "pretrained_vae").mkdir(parents=True)
    (elsewhere / "only_here").mkdir()
    monkeypatch.chdir(elsewhere)
    kwargs = dict(what="VAE", flag="--vae")
    assert resolve_component("./pretrained_vae", checkpoint, **kwargs) == str((checkpoint / "pretrained_vae").resolve())
    assert resolve_component("./only_here", checkpoint, **kwargs) == str((elsewhere / "only_here").resolve())
    assert resolve_component("./pretrained_vae", checkpoint, str(elsewhere / "only_here"), **kwargs) == str(
        (elsewhere / "only_here").resolve())
    assert resolve_component("google/siglip-so400m-patch14-384", checkpoint, **kwargs) == (
        "google/siglip-so400m-patch14-384")
    with pytest.raises(ConversionError, match="--vae"):
        resolve_component("./nowhere/vae", checkpoint, **kwargs)


def test_unsupported_variants_are_clear_errors(tmp_path):
    src = tmp_path / "src"
    write_tiny_official_checkpoint(src, with_tokenizer=False)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "mm_inv_projector_type": "mlp2x_gelu"}))
    with pytest.warns(UserWarning, match="No tokenizer"), pytest.raises(ConversionError, match="ROSS\\^R"):
        convert_official(str(src), tmp_path / "a")
    (src / "config.json").write_text(json.dumps({**config, "mm_patch_merge_type": "spatial_unpad"}))
    with pytest.raises(ConversionError, match="mm_patch_merge_type"):  # checked before the tokenizer
        convert_official(str(src), tmp_path / "b")


def test_output_is_streamed_into_bounded_shards(fp32, tmp_path):
    from modeling_ross import RossForConditionalGeneration

    official, report = fp32
    limit = 60_000
    small = convert_official(str(official["folder"]), tmp_path / "small", dtype="fp32", max_shard_size=limit)
    assert len(small.shard_files) > 3
    index = json.loads((small.dst / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(small.shard_files)
    largest_tensor = max(math.prod(s) * 4 for s in official["shapes"].values() if len(s))
    for name in small.shard_files:  # each shard holds at most `limit` bytes, or a single larger tensor
        tensors = load_file(str(small.dst / name))
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        assert size <= limit or (len(tensors) == 1 and size <= largest_tensor), (name, size)
    single = RossForConditionalGeneration.from_pretrained(report.dst).state_dict()
    sharded = RossForConditionalGeneration.from_pretrained(small.dst).state_dict()
    assert single.keys() == sharded.keys() and all(torch.equal(single[k], sharded[k]) for k in single)
