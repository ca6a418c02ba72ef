"""Newer backbones: Qwen2.5 / Qwen3 LLMs and a SigLIP 2 tower, each with the existing tiny components.

For each combination: `from_components` builds a ROSS^D model, `RossProcessor.from_components` expands `<image>`, a
training forward gives finite text + visual losses with gradients in the projector and the LLM, `save_pretrained` +
`AutoModelForImageTextToText.from_pretrained(..., trust_remote_code=True)` gives equal logits and greedy tokens, and
`export_llava` gives a plain `LlavaForConditionalGeneration` with equal logits. Then the converter's vocabulary handling
with Qwen2.5 / Qwen3 tokenizers, and the refusal of SigLIP 2 NaFlex towers.
"""

import json

import numpy as np
import pytest
from conftest import REPO_ROOT, TINY_OBJECTIVE
import torch
import yaml
from PIL import Image

from modeling_ross import RossProcessor, from_components
from modeling_ross.testing import (
    QWEN3_ADDED_TOKENS,
    write_tiny_qwen3,
    write_tiny_qwen25,
    write_tiny_siglip2,
    write_tiny_siglip2_naflex,
)


# name -> (vision tower, language model, expected LLM model_type, tied embeddings)
BACKBONES = {
    "siglip+qwen2.5": ("siglip", "qwen2.5", "qwen2", False),
    "siglip+qwen3": ("siglip", "qwen3", "qwen3", False),
    "siglip2+qwen2": ("siglip2", "qwen2", "qwen2", False),
    "siglip2+qwen3-tied": ("siglip2", "qwen3-tied", "qwen3", True),  # Qwen3-0.6B/1.7B/4B tie their embeddings
}


@pytest.fixture(scope="module")
def repos(tiny_components, tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {
        "siglip": tiny_components["vision_model"],
        "siglip2": str(write_tiny_siglip2(root / "siglip2-tiny")),
        "qwen2": tiny_components["language_model"],
        "qwen2.5": str(write_tiny_qwen25(root / "qwen2.5-tiny")),
        "qwen3": str(write_tiny_qwen3(root / "qwen3-tiny")),
        "qwen3-tied": str(write_tiny_qwen3(root / "qwen3-tied-tiny", tie_word_embeddings=True)),
        "teacher": {"teacher": tiny_components["teacher"], "teacher_subfolder": tiny_components["teacher_subfolder"]},
    }


@pytest.fixture(scope="module", params=list(BACKBONES))
def built(request, repos):
    vision, language, model_type, tied = BACKBONES[request.param]
    torch.manual_seed(0)
    model = from_components(repos[vision], repos[language], **repos["teacher"], **TINY_OBJECTIVE)
    processor = RossProcessor.from_components(repos[vision], repos[language])
    return request.param, model, processor, model_type, tied


def _image(seed: int, size=(32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _batch(processor, answer: str | None = "Yes", size=(32, 32)):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red circle?"}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)
    return processor(text=[text], images=[_image(1, size)], return_tensors="pt")


def test_from_components_and_processor(built):
    name, model, processor, model_type, tied = built
    config = model.config
    assert config.text_config.model_type == model_type, name
    assert config.vision_config.model_type == "siglip_vision_model"
    assert type(model.model.vision_tower).__name__ == "SiglipVisionModel"
    assert config.tie_word_embeddings is tied
    assert (model.lm_head.weight is model.get_input_embeddings().weight) is tied
    # `<image>` is appended after every Qwen2.5 / Qwen3 added token and fits the spare embedding rows (no resize).
    tokenizer = processor.tokenizer
    assert processor.image_token_id == config.image_token_id == len(tokenizer) - 1
    assert len(tokenizer) <= config.text_config.vocab_size
    assert config.image_seq_length == processor.image_seq_length == 64  # 32 px / 4 px patches, no CLS
    batch = _batch(processor)
    assert int((batch["input_ids"] == config.image_token_id).sum()) == 64
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    if "qwen3" in name:  # Qwen3's thinking markers stay single tokens, not special (kept by decode)
        assert all(len(tokenizer(token, add_special_tokens=False).input_ids) == 1 for token in QWEN3_ADDED_TOKENS)
        assert tokenizer.decode(tokenizer("<think>", add_special_tokens=False).input_ids, skip_special_tokens=True)


def test_training_forward_reaches_projector_and_llm(built):
    name, model, processor, _, _ = built
    model.train()
    model.zero_grad(set_to_none=True)
    batch = _batch(processor)
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss) and out.text_loss is not None and torch.isfinite(out.text_loss)
    assert out.visual_loss is not None and torch.isfinite(out.visual_loss) and out.visual_loss > 0, name
    out.loss.backward()

    def grad_norm(module):
        return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)

    assert grad_norm(model.model.projector) > 0
    layer = model.model.language_model.layers[0]
    assert grad_norm(layer.self_attn.q_proj) > 0 and grad_norm(layer.mlp) > 0
    if "qwen3" in name:
        assert grad_norm(layer.self_attn.q_norm) > 0 and grad_norm(layer.self_attn.k_norm) > 0
    assert grad_norm(model.denoiser) > 0
    assert all(p.grad is None for p in model.model.vision_tower.parameters())
    model.zero_grad(set_to_none=True)


def test_save_reload_generate_and_export(built, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    from modeling_ross.export_llava import export_llava

    name, model, processor, _, tied = built
    model.eval()
    folder = tmp_path / "ross"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    batch = _batch(processor, answer=None)
    with torch.no_grad():
        reference = model(**batch).logits
        tokens = model.generate(**batch, max_new_tokens=4, do_sample=False)
    prompt_length = batch["input_ids"].shape[1]
    assert tokens.shape[0] == 1 and prompt_length < tokens.shape[1] <= prompt_length + 4
    assert torch.equal(tokens[:, :prompt_length], batch["input_ids"])

    reloaded = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(reloaded).__name__ == "RossForConditionalGeneration" and reloaded.config.tie_word_embeddings is tied
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, reference), name
        assert torch.equal(reloaded.generate(**batch, max_new_tokens=4, do_sample=False), tokens)

    report = export_llava(str(folder), tmp_path / "llava")
    assert report.processor_saved
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    assert llava.config.text_config.model_type == model.config.text_config.model_type
    llava_processor = AutoProcessor.from_pretrained(tmp_path / "llava", backend="pil")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red circle?"}]}],
        tokenize=False, add_generation_prompt=True,
    )
    theirs = llava_processor(text=[text], images=[_image(1)], return_tensors="pt")
    assert torch.equal(theirs["input_ids"], batch["input_ids"])
    assert torch.allclose(theirs["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        assert (llava(**batch).logits - reference).abs().max().item() < 1e-5, name


def test_siglip2_naflex_tower_is_refused(repos, tmp_path):
    naflex = str(write_tiny_siglip2_naflex(tmp_path / "siglip2-naflex"))
    with pytest.raises(ValueError, match="NaFlex.*google/siglip2-so400m-patch14-384"):
        from_components(naflex, repos["qwen2"], **repos["teacher"], **TINY_OBJECTIVE)
    with pytest.raises(ValueError, match="NaFlex"):
        RossProcessor.from_components(naflex, repos["qwen2"])


@pytest.mark.parametrize("language", ["qwen2.5", "qwen3"])
def test_converter_vocabulary_with_newer_tokenizers(repos, language, tmp_path):
    """`<image>` after every added token; the embedding grows (to a multiple of 64) only when it no longer fits."""
    from transformers import AutoConfig

    from modeling_ross.convert_official import resolve_vocabulary

    path = repos[language]
    rows = AutoConfig.from_pretrained(path).vocab_size
    fits = resolve_vocabulary({}, tmp_path, path, None, rows)
    assert fits.image_token_id == len(fits.tokenizer) - 1 and fits.tokenizer.convert_ids_to_tokens(
        fits.image_token_id
    ) == "<image>"
    assert (fits.rows, fits.resized) == (rows, False)
    exact = len(fits.tokenizer) - 1  # a checkpoint without spare rows: no room for <image>
    grown = resolve_vocabulary({}, tmp_path, path, None, exact)
    assert grown.resized and grown.rows % 64 == 0 and grown.rows > grown.image_token_id
    # The released checkpoints all have room: Qwen2.5-7B 152064 rows for 151665 tokens, Qwen3-8B 151936 for 151669.


def test_converter_refuses_a_qwen3_authors_checkpoint():
    """The authors released Qwen2 (and Vicuna) models only; a `ross_qwen3` config names what is supported."""
    from modeling_ross.convert_official import ConversionError, _text_config

    with pytest.raises(ConversionError, match="'ross_qwen3'.*ross_qwen2"):
        _text_config({"model_type": "ross_qwen3", "hidden_size": 64})


def test_converter_with_a_qwen25_tokenizer(repos, tmp_path):
    """An authors' Qwen2-architecture checkpoint (a Qwen2.5 LLM has `model_type: qwen2` too) converted with a
    Qwen2.5 tokenizer: the vocabulary grows past the fixture's rows and the result loads and runs."""
    from fixtures_official import write_tiny_official_checkpoint

    from modeling_ross import RossForConditionalGeneration
    from modeling_ross.convert_official import convert_official

    write_tiny_official_checkpoint(tmp_path / "official", dtype=torch.float32, seed=3)
    report = convert_official(str(tmp_path / "official"), tmp_path / "ross", tokenizer=repos["qwen2.5"], dtype="fp32")
    processor = RossProcessor.from_pretrained(tmp_path / "ross")
    assert report.resized_vocab and report.vocab_size % 64 == 0
    assert report.image_token_id == processor.image_token_id == len(processor.tokenizer) - 1 < report.vocab_size
    assert processor.tokenizer.convert_tokens_to_ids("<|vision_start|>") < report.image_token_id
    model = RossForConditionalGeneration.from_pretrained(tmp_path / "ross").eval()
    batch = _batch(processor, answer=None, size=(40, 30))
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == report.vocab_size and torch.isfinite(logits).all()


@pytest.mark.parametrize("language", ["qwen2.5", "qwen3"])
def test_lora_24gb_recipe_settings_train_a_step(repos, language):
    """What siglip2_qwen2.5_stage2_lora24gb.yaml does, on tiny models: bf16 weights, stage 2 + LoRA on the LLM,
    gradient checkpointing with input grads, teacher targets given (as the latent cache's collator does), one step;
    the adapters are fp32, the LLM base weights get no gradient, and the merged model is a plain ROSS model."""
    from ross.train.trainer import apply_lora, apply_stage

    torch.manual_seed(0)
    model = from_components(
        repos["siglip2"], repos[language], **repos["teacher"], dtype=torch.bfloat16, **TINY_OBJECTIVE
    )
    processor = RossProcessor.from_components(repos["siglip2"], repos[language])
    apply_stage(model, 2)
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.05)
    model.config.use_cache = False
    peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.enable_input_require_grads()
    peft_model.train()
    batch = _batch(processor)
    with torch.no_grad():  # the latent cache stores the teacher's (mean, std); here taken from the teacher itself
        mean, std = model.teacher.encode_distribution(batch["pixel_values"].to(torch.bfloat16))
    out = peft_model(**batch, labels=batch["input_ids"], teacher_targets=(mean, std))
    assert torch.isfinite(out.loss) and torch.isfinite(out.visual_loss)
    out.loss.backward()
    lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    # lora_B starts at zero, so the first step's gradient reaches lora_B (lora_A's is zero until B moves).
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    projector = [p for n, p in peft_model.named_parameters() if ".projector." in n and p.requires_grad]
    assert projector and all(p.grad is not None for p in projector)
    base = [p for n, p in peft_model.named_parameters() if "language_model" in n and "lora_" not in n]
    assert all(not p.requires_grad and p.grad is None for p in base)
    merged = peft_model.merge_and_unload()
    assert type(merged).__name__ == "RossForConditionalGeneration"
    assert not any("lora_" in n for n, _ in merged.named_parameters())


@pytest.mark.slow
def test_lora_24gb_recipe_runs_through_sft(tmp_path):
    """train/sft.py with the LoRA-24GB recipe's own settings (read from its YAML: bf16 weights, LoRA, latent cache
    built before training, gradient checkpointing, batch 1 + accumulation, per-module lrs) on the tiny default
    components and synthetic data: two steps, finite losses, the teacher run once per image (cache), merged output."""
    from ross.train.sft import main

    recipe = yaml.safe_load((REPO_ROOT / "train" / "configs" / "siglip2_qwen2.5_stage2_lora24gb.yaml").read_text())
    keys = ["weights_dtype", "lora", "lora_r", "lora_alpha", "lora_dropout", "build_latent_cache", "bf16",
            "gradient_checkpointing", "per_device_train_batch_size", "projector_lr", "denoiser_lr", "on_bad_sample"]
    argv = [
        "--config", str(REPO_ROOT / "train" / "configs" / "tiny_stage2.yaml"),
        "--prepare_tiny", f"{{root: {tmp_path / 'tiny'}, num_images: 12, stage: sft}}",
        "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--gradient_accumulation_steps", "2",
        "--latent_cache_dir", str(tmp_path / "cache"), "--save_strategy", '"no"',
    ]  # fmt: skip
    for key in keys:
        value = recipe[key]
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    summary = main(argv)
    assert summary["global_step"] == 2 and np.isfinite(summary["final_text_loss"])
    assert np.isfinite(summary["final_visual_loss"]) and summary["final_visual_loss"] > 0
    counts = summary["trainable_parameters"]
    assert counts["vision_tower"] == counts["teacher"] == 0 and counts["projector"] > 0 and counts["denoiser"] > 0
    settings = json.loads(next((tmp_path / "cache").glob("*/settings.json")).read_text())
    assert settings  # the cache was built
    model = tmp_path / "out" / "model"
    assert (model / "model.safetensors").is_file() and not list(model.glob("adapter_*"))  # adapters merged
