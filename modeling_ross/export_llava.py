"""Export a ROSS folder as a plain transformers LLaVA (`LlavaForConditionalGeneration` + `LlavaProcessor`).

    python -m modeling_ross.export_llava --src ROSS_DIR --dst LLAVA_DIR [--dtype bf16|fp32|auto]

At inference ROSS *is* LLaVA (vision tower -> Linear-GELU-Linear projector -> LLM), so the export is a renaming of the
inference weights; the training-only `denoiser.*`, `teacher.*` (and the generative variant's `queries.*`) tensors are
dropped. The result has no remote code
(`model_type: llava`), loads with `AutoModelForImageTextToText.from_pretrained(DST)` and can be served by engines that
support LLaVA (e.g. `vllm serve DST`). Tensors are streamed shard by shard, as in `convert_official`.

Weights are written in the layout of the `llava-hf/*` Hub repos (what transformers 4.x wrote and 5.x still reads):
`language_model.model.*`, `language_model.lm_head.weight`, `vision_tower.vision_model.*`, `multi_modal_projector.*`.

Images: `RossProcessor` pads to a square with the mean colour before resizing (`image_aspect_ratio="pad"`, the
reference SFT setting). The export reproduces this with `LlavaImageProcessorPil(do_pad=True, do_center_crop=False)`,
which pads with `int(255 * mean)` (127 for SigLIP, as the authors' `expand2square`); `RossProcessor` uses
`round(255 * mean)` (128), so padded pixels differ by one grey level. Square images give identical `pixel_values`.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
)

from .configuration_ross import RossConfig
from .convert_official import DTYPES, _local_folder, _read_headers, _weight_files
from .processing_ross import RossProcessor
from .safetensors_io import OutputTensor, write_shards


class LlavaExportError(ValueError):
    """The ROSS model uses something `LlavaForConditionalGeneration` cannot represent."""


@dataclass
class ExportReport:
    dst: Path
    config: object
    mapped: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)
    shard_files: list = field(default_factory=list)
    processor_saved: bool = False


def ross_key_to_llava(key: str) -> str | None:
    """Our key -> the llava-hf checkpoint key; None for training-only tensors."""
    if key.startswith(("denoiser.", "teacher.", "queries.")):  # queries: the generative variant's, training-only
        return None
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    if key.startswith("model.vision_tower."):
        return "vision_tower.vision_model." + key[len("model.vision_tower."):]
    if key.startswith("model.projector."):
        return "multi_modal_projector." + key[len("model.projector."):]
    raise LlavaExportError(f"No LLaVA equivalent for the ROSS key {key!r}.")


def llava_config_from_ross(config):
    """The `LlavaConfig` with the same inference behaviour as a `RossConfig`, or `LlavaExportError`."""
    if config.projector_type != "mlp2x_gelu":
        raise LlavaExportError(
            f"projector_type={config.projector_type!r} cannot be represented by LlavaForConditionalGeneration, whose "
            "projector is always Linear -> act -> Linear (mlp2x_gelu). Export is only possible for mlp2x_gelu models."
        )
    llava = LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.image_seq_length,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        projector_hidden_act=config.projector_hidden_act,
        multimodal_projector_bias=True,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    llava.architectures = ["LlavaForConditionalGeneration"]
    return llava


def strip_generation_markers(template: str | None) -> str | None:
    """Drop transformers' `{% generation %}` / `{% endgeneration %}` tags (training-only; other Jinja engines and
    serving stacks may not know them)."""
    if template is None:
        return None
    return re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)


def llava_processor_from_ross(processor, config):
    """A `LlavaProcessor` that produces the same `input_ids` (and, for square images, the same `pixel_values`)."""
    source = processor.image_processor
    if processor.image_aspect_ratio == "pad":
        size = config.vision_config.image_size
        image_processor = LlavaImageProcessorPil(
            do_pad=True, do_resize=True, size={"height": size, "width": size}, do_center_crop=False,
            resample=source.resample, do_rescale=source.do_rescale, rescale_factor=source.rescale_factor,
            do_normalize=source.do_normalize, image_mean=list(source.image_mean), image_std=list(source.image_std),
            do_convert_rgb=True,
        )
    else:
        image_processor = source
    clip_like = config.vision_feature_select_strategy == "default"
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=processor.tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=strip_generation_markers(processor.chat_template),
        image_token=processor.image_token,
        num_additional_image_tokens=1 if clip_like else 0,
    )


def _remove_remote_code_traces(folder: Path) -> None:
    """The tokenizer and image processor were loaded from a ROSS folder: drop their `auto_map` / `RossProcessor`."""
    for name in ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())

        def clean(node):
            if isinstance(node, dict):
                node.pop("auto_map", None)
                if node.get("processor_class") == "RossProcessor":
                    node["processor_class"] = "LlavaProcessor"
                for value in node.values():
                    clean(value)

        clean(data)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def export_llava(src, dst, *, dtype: str | torch.dtype = "auto", max_shard_size="5GB") -> ExportReport:
    """Export the ROSS folder (or Hub id) `src` to a plain LLaVA folder `dst` (see the module docstring)."""
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise LlavaExportError(f"Destination {dst} exists and is not empty.")
    src_dir = _local_folder(str(src), patterns=("*.json", "*.safetensors", "*.jinja", "*.txt"))
    config = RossConfig.from_pretrained(src_dir)
    llava_config = llava_config_from_ross(config)
    dtype = None if dtype == "auto" else DTYPES[dtype] if isinstance(dtype, str) else dtype

    headers = _read_headers(_weight_files(src_dir))
    report = ExportReport(dst=dst, config=llava_config)
    for key in headers:
        target = ross_key_to_llava(key)
        if target is None:
            report.dropped[key] = "training-only (ROSS objective)"
        else:
            report.mapped[key] = target
    with torch.device("meta"):
        reference = LlavaForConditionalGeneration(llava_config)
    # The llava-hf layout, as `save_pretrained` writes it (conversion rules reversed), with the tower's
    # `vision_model.` prefix that transformers 4.x and serving engines expect.
    expected = {}
    for key, value in reference.state_dict().items():
        if key == "lm_head.weight" and llava_config.tie_word_embeddings:
            continue
        expected[ross_key_to_llava(_llava_module_key_to_ross(key))] = tuple(value.shape)
    produced = {target: headers[key].shape for key, target in report.mapped.items()}
    missing = sorted(set(expected) - set(produced))
    unexpected = sorted(set(produced) - set(expected))
    shapes = sorted(f"{k}: {produced[k]} vs {expected[k]}" for k in set(produced) & set(expected)
                    if produced[k] != expected[k])
    if missing or unexpected or shapes:
        raise LlavaExportError(
            f"The ROSS weights do not fit LlavaForConditionalGeneration: missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {shapes}"
        )

    processor = None
    if any((src_dir / name).is_file() for name in ("processor_config.json", "tokenizer_config.json")):
        processor = llava_processor_from_ross(RossProcessor.from_pretrained(src_dir), config)

    dst.mkdir(parents=True, exist_ok=True)
    outputs = []
    for key, target in report.mapped.items():
        info = headers[key]
        out_dtype = dtype if dtype is not None and info.dtype.is_floating_point else info.dtype
        outputs.append(OutputTensor(target, info, info.shape, out_dtype, lambda tensor, d=out_dtype: tensor.to(d)))
    report.shard_files = write_shards(dst, outputs, max_shard_size, progress="exporting tensors")

    if dtype is not None:
        llava_config.dtype = dtype
    else:
        llava_config.dtype = getattr(config, "dtype", None)
    llava_config.save_pretrained(dst)
    _add_legacy_config_keys(dst / "config.json")
    if (src_dir / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(src_dir).save_pretrained(dst)
    if processor is not None:
        processor.save_pretrained(dst)
        _remove_remote_code_traces(dst)
        report.processor_saved = True
    return report


def _add_legacy_config_keys(path: Path) -> None:
    """Also write the transformers 4.x spellings (`rope_theta`, `torch_dtype`) next to the 5.x ones (`rope_parameters`,
    `dtype`): a 4.x reader (e.g. a serving engine pinned to transformers 4) would otherwise silently fall back to the
    default RoPE base (10000 instead of Qwen2's 1e6). transformers 5.23 accepts and ignores the duplicates."""
    data = json.loads(path.read_text())
    for section in (data, data.get("text_config") or {}, data.get("vision_config") or {}):
        if section.get("dtype") and "torch_dtype" not in section:
            section["torch_dtype"] = section["dtype"]
        rope = section.get("rope_parameters") or {}
        if "rope_theta" in rope and "rope_theta" not in section:
            section["rope_theta"] = rope["rope_theta"]
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _llava_module_key_to_ross(key: str) -> str:
    """`LlavaForConditionalGeneration.state_dict()` key -> our key (used to build the expected key set)."""
    return key.replace("model.multi_modal_projector.", "model.projector.")


def main(argv=None) -> ExportReport:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_ross.export_llava",
        description="Export a ROSS folder as a plain transformers LLaVA folder (no remote code).",
    )
    parser.add_argument("--src", required=True, help="ROSS folder or Hub id")
    parser.add_argument("--dst", required=True, help="output folder (must be empty or absent)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *sorted(DTYPES)])
    parser.add_argument("--max-shard-size", default="5GB")
    args = parser.parse_args(argv)
    report = export_llava(args.src, args.dst, dtype=args.dtype, max_shard_size=args.max_shard_size)
    print(f"Wrote {report.dst}: {len(report.mapped)} tensors, {len(report.dropped)} training-only tensors dropped, "
          f"{len(report.shard_files)} shard(s); processor {'saved' if report.processor_saved else 'NOT saved'}.")
    return report


if __name__ == "__main__":
    main()
