"""The collator: dataset items -> a right-padded batch with assistant-only labels (and cached teacher targets).

:class:`RossDataCollator` renders the chat template, lets the processor expand every image to `image_seq_length`
image tokens, supervises only the assistant answers (each answer's end-of-turn token included) and pads on the right
through the tokenizer. Nothing is ever truncated: a sample longer than `max_length` is an error or a counted skip.
Image tokens are counted here once per sample, against the sample's image count from parsing; the model checks its
own input again at its boundary (`get_placeholder_mask`).
"""

from __future__ import annotations

import bisect
import copy
import json
import logging
import os
import re
from collections.abc import Sequence

import torch
from PIL import Image
from transformers import BatchFeature

from ross.train.dataset import check_on_bad_sample
from ross.train.latent_cache import image_key
from ross.train.sources import SKIP_REASONS, BadSampleError, is_creation


logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")

__all__ = ["IGNORE_INDEX", "RossDataCollator"]

# The stand-in image of `sample_length` (never processed: the counting processor has no pixels to make).
_STAND_IN = Image.new("RGB", (1, 1))


class _NoPixels:
    """The counting processor's image processor: the real one (its settings, its image loading) whose call returns
    nothing (the image token count never depends on the pixels)."""

    def __init__(self, image_processor):
        self._image_processor = image_processor

    def __getattr__(self, name):
        return getattr(self._image_processor, name)

    def __call__(self, images, **kwargs):
        return BatchFeature({})


class _EventCounter:
    """Counts per reason in shared memory, one row per dataloader worker (no lost updates between workers)."""

    ROWS = 65

    def __init__(self):
        self._counts = torch.zeros(self.ROWS, len(SKIP_REASONS), dtype=torch.int64).share_memory_()

    def add(self, reason: str):
        info = torch.utils.data.get_worker_info()
        row = 0 if info is None else 1 + info.id % (self.ROWS - 1)
        self._counts[row, SKIP_REASONS.index(reason)] += 1

    def as_dict(self) -> dict[str, int]:
        totals = self._counts.sum(0).tolist()
        return {reason: count for reason, count in zip(SKIP_REASONS, totals) if count}


def _content_key(feature) -> tuple[str, ...] | None:
    """What a sample's encoding depends on: its messages and each image's content (the latent cache's `image_key`:
    mode, size, pixels); None when an image is not a PIL image (then it is not cached)."""
    if not all(isinstance(image, Image.Image) for image in feature["images"]):
        return None
    return (json.dumps(feature["messages"], sort_keys=True), *(image_key(image) for image in feature["images"]))


class RossDataCollator:
    r"""
    Turn `ross.train.dataset.RossDataset` items into a right-padded training batch with assistant-only labels.

    Output: `input_ids`, `attention_mask`, `labels` (`(batch, longest)`), and `pixel_values`
    (`(total images, 3, H, W)`, images in row-major order: sample 0's images, then sample 1's, ...) when the batch has
    at least one image. Text-only samples stay in the batch. Labels are -100 on the system prompt, user turns, role
    headers, image tokens and padding; each assistant answer and its end-of-turn token (`<|im_end|>` in the
    Vicuna-style template) are supervised.

    Masking (`format="chat"`):
      * if the chat template has `{% generation %}` markers, `processor.apply_chat_template(...,
        return_assistant_tokens_mask=True)` gives the assistant tokens;
      * otherwise (fallback) the answer spans are found by rendering prefixes: for the k-th message (an assistant
        one) the span runs from the end of `render(messages[:k], add_generation_prompt=True)` (the part it shares
        with `render(messages[:k+1])`) to the end of `render(messages[:k+1])`, which must be a prefix of the full
        rendering (a `ValueError` says so when a template rewrites earlier turns). Tokens overlapping a span are
        supervised. `masking="prefix"` forces the fallback.

    `latent_cache` (a `ross.train.latent_cache.LatentCache`, optional): every batch also gets `teacher_targets`,
    `{"mean", "std"}` of each kept sample's images in `pixel_values` order, looked up by image content; an image
    missing from the cache raises `LatentCacheMiss` (never skipped, never a silent fallback to the teacher).

    `format="plain"` (stage 1, LLaVA's `plain` template): the text is the image tokens followed directly by the
    caption (the single assistant turn) and `plain_end` (default: the tokenizer's EOS token); no system prompt, no
    roles; the user's words are dropped; only the caption and `plain_end` are supervised.

    Never truncates. A sample longer than `max_length` after image expansion (or whose rendering supervises nothing)
    raises `ValueError` naming its id and file, or with `on_bad_sample="skip"` is dropped from the batch, logged and
    counted in `skipped` (shared by dataloader workers). A batch left with no sample becomes a one-token placeholder
    marked `ross_empty_batch`, which `RossTrainer` trains at zero weight (`_placeholder_batch`).

    `padding_free=True`: instead of padding, the samples are packed into rows of at most `pack_max_tokens` tokens
    (default: the batch's longest sample; a run picks it per attention with `packed_attention.pack_capacity`) with
    `position_ids` restarting per sample and no `attention_mask` (see `_pack`); loss and gradients equal the padded
    batch's (tests/test_packing.py). `RossTrainer` runs such batches without a KV cache, which transformers needs to
    see the packing.

    `cache_encodings=True`: each sample's encoding (tokens, labels, pixel values) is kept, keyed by its content (the
    messages and each image's pixels), and reused when the sample comes again: for runs of several epochs over a
    small dataset, where the chat template, tokenizer and image processor are a large part of a step's CPU (the
    default run). It holds every distinct sample's encoding in memory (pixel values as float32: 12 KB per 32 px image,
    1.7 MB at 384 px), so it is off by default.

    Creation samples (caption -> image, `ross.train.sources.is_creation`; for `condition="queries"`): the processor
    (built with `query_token`) expands the query item to `image_seq_length` query tokens, labelled -100 like image
    tokens; the sample's image is not an input but its target, and goes to `target_pixel_values`
    (`(num_creations, 3, H, W)`, row-major, preprocessed as input images). A creation sample raises `BadSampleError`
    (`template`) with a processor without `query_token`, in `format="plain"`, or with the latent cache.
    """

    def __init__(
        self,
        processor,
        max_length: int,
        format: str = "chat",
        on_bad_sample: str = "error",
        masking: str = "auto",
        plain_end: str | None = None,
        pad_to_multiple_of: int | None = None,
        latent_cache=None,
        padding_free: bool = False,
        pack_max_tokens: int | None = None,
        cache_encodings: bool = False,
    ):
        if format not in ("chat", "plain"):
            raise ValueError(f"format must be 'chat' or 'plain', got {format!r}")
        if masking not in ("auto", "generation", "prefix"):
            raise ValueError(f"masking must be 'auto', 'generation' or 'prefix', got {masking!r}")
        has_markers = bool(_GENERATION_MARKER.search(processor.chat_template or ""))
        if masking == "generation" and not has_markers:
            raise ValueError("masking='generation' needs {% generation %} markers in the chat template")
        if processor.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token")
        self.processor = processor
        self.max_length = int(max_length)
        self.format = format
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        self.masking = ("generation" if has_markers else "prefix") if masking == "auto" else masking
        self.plain_end = processor.tokenizer.eos_token if plain_end is None else plain_end
        self.pad_to_multiple_of = pad_to_multiple_of
        self.image_token_id = processor.image_token_id
        self.query_token_id = getattr(processor, "query_token_id", None)
        self.latent_cache = latent_cache
        self.padding_free = bool(padding_free)
        self.pack_max_tokens = pack_max_tokens
        self._skips = _EventCounter()
        self._counter = None
        # Encodings by content (`_content_key`), kept for the run: None when off.
        self._encodings: dict[tuple[str, ...], dict] | None = {} if cache_encodings else None

    @property
    def skipped(self) -> dict[str, int]:
        """Samples dropped by the collator, by reason (events: a sample drawn in two epochs counts twice)."""
        return self._skips.as_dict()

    # -- encoding one sample
    def _tokenize_with_spans(self, text: str, spans, images, processor) -> tuple[dict, torch.Tensor]:
        """Tokenize `text` (placeholders expanded by the processor) and mark the tokens overlapping `spans`,
        character spans of the unexpanded text. Python lists until the end: indexing tensors element by element
        costs several times the tokenization."""
        out = processor(
            text=[text],
            images=[images] if images else None,
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
        )
        replacements = (out.pop("text_replacement_offsets", None) or [[]])[0]
        ends = [r["span"][1] for r in replacements]
        gained = [0]
        for r in replacements:
            gained.append(r["new_span"][1] - r["span"][1])
        offsets = out.pop("offset_mapping")[0]
        mask = [False] * len(offsets)
        for start, end in spans:
            start, end = (c + gained[bisect.bisect_right(ends, c)] for c in (start, end))
            for position, (token_start, token_end) in enumerate(offsets):
                if token_start < end and token_end > start:
                    mask[position] = True
        return out.convert_to_tensors("pt"), torch.tensor(mask, dtype=torch.bool)

    def _render(self, messages, processor=None, **kwargs) -> str:
        return (processor or self.processor).apply_chat_template(messages, tokenize=False, **kwargs)

    def _prefix_spans(self, messages, processor) -> tuple[str, list[tuple[int, int]]]:
        full = self._render(messages, processor)
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(messages[:k], processor, add_generation_prompt=True) if k else ""
            upto = self._render(messages[: k + 1], processor)
            if not full.startswith(upto):
                raise BadSampleError(
                    "template",
                    "the chat template renders earlier turns differently once later turns are added; prefix masking "
                    "cannot locate the answers; add {% generation %} markers to the template",
                )
            start = len(os.path.commonprefix([prompt, upto]))
            spans.append((start, len(upto)))
        return full, spans

    def _tokenize(self, messages, images, processor=None) -> tuple[dict, torch.Tensor]:
        """The processor's output for one sample (tensors) and its `(sequence,)` mask of supervised (assistant)
        tokens. `processor`: `self.processor`, or the counting one of `sample_length`."""
        processor = processor or self.processor
        if self.format == "plain":
            answers = [m for m in messages if m["role"] == "assistant"]
            if len(answers) != 1:
                raise BadSampleError("template", f"plain format needs exactly one caption turn, got {len(answers)}")
            caption = "".join(item["text"] for item in answers[0]["content"] if item["type"] == "text")
            prefix = processor.image_token * len(images)
            text = prefix + caption + self.plain_end
            return self._tokenize_with_spans(text, [(len(prefix), len(text))], images, processor)
        if self.masking == "generation":
            # No `return_tensors` here: with tensors, transformers' assistant mask walks the offsets one tensor
            # element at a time (about 6x the CPU of the whole encoding); converted once below instead.
            out = processor.apply_chat_template(
                [messages],
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                processor_kwargs={"images": [images]} if images else {},
            )
            mask = torch.tensor(out.pop("assistant_masks")[0], dtype=torch.bool)
            return out.convert_to_tensors("pt"), mask
        text, spans = self._prefix_spans(messages, processor)
        return self._tokenize_with_spans(text, spans, images, processor)

    def _encode(self, feature) -> dict:
        """One item -> `input_ids` and `labels` `(sequence,)`, `pixel_values` `(num_images, 3, H, W)` or None.
        With `cache_encodings`, a sample seen before (same messages, same image pixels) is not encoded again; a bad
        sample is never cached, so it raises (or is skipped and counted) at every draw."""
        key = _content_key(feature) if self._encodings is not None else None
        if key is not None and key in self._encodings:
            return self._encodings[key]
        encoded = self._encode_any_length(feature)
        if len(encoded["input_ids"]) > self.max_length:
            raise BadSampleError(
                "too_long",
                f"{len(encoded['input_ids'])} tokens ({encoded['num_image_tokens']} of them image tokens) > max_length "
                f"{self.max_length}; image tokens are never truncated, raise max_length or drop the sample",
            )
        if key is not None:
            self._encodings[key] = encoded  # never modified later: batches copy from it (`_pad`, `_pack`, `cat`)
        return encoded

    # The length pre-pass hands `sample_length` the sample's image count (a native VLM's collator: its image sizes).
    counts_image_sizes = False

    def length_settings(self) -> dict:
        """What decides the image token count, for the length cache's key (`train/lengths.py`)."""
        return {"image_seq_length": self.processor.image_seq_length}

    def sample_length(self, messages, num_images: int) -> int:
        """The number of tokens `_encode` makes of a sample, without its images; raises `BadSampleError`
        (`template`, `image_count_mismatch`) as training would. Used by the length pre-pass (`train/lengths.py`).

        The same template, tokenizer call, masking and checks as `_encode`, through a counting copy of the processor
        (`_counting_processor`) that expands each image / query placeholder to one token and processes no pixels;
        each placeholder then adds its known `image_seq_length - 1` tokens. Placeholders are added special tokens,
        which the tokenizer splits out before anything else, so the count is exact (tested against `_encode`)."""
        counter = self._counting_processor()
        encoded = self._encode_any_length(
            {"messages": messages, "images": [_STAND_IN] * num_images}, processor=counter, count_only=True
        )
        placeholders = encoded["num_image_tokens"] + encoded["num_query_tokens"]
        return len(encoded["input_ids"]) + placeholders * (self.processor.image_seq_length - 1)

    def _counting_processor(self):
        """A shallow copy of the processor whose image and query placeholders expand to one token and whose image
        processor returns nothing (the pixels never matter to a count)."""
        if self._counter is None:
            counter = copy.copy(self.processor)
            counter.image_seq_length = 1
            counter.image_processor = _NoPixels(self.processor.image_processor)
            self._counter = counter
        return self._counter

    def _check_creation(self) -> None:
        if self.query_token_id is None:
            raise BadSampleError(
                "template",
                "a creation sample (<query>) needs a processor with query_token='<query>', for a model built with "
                "condition='queries'",
            )
        if self.format == "plain":
            raise BadSampleError("template", "plain format (stage 1 captions) has no creation turns; use format='chat'")
        if self.latent_cache is not None:
            raise BadSampleError("template", "the latent cache does not cover creation targets (condition='queries')")

    def _encode_any_length(self, feature, processor=None, count_only: bool = False) -> dict:
        processor = processor or self.processor
        images = feature["images"]
        creation = is_creation(feature["messages"])
        if creation:
            self._check_creation()
        inputs = [] if creation else images  # a creation sample's image is its target, not shown to the LLM
        out, mask = self._tokenize(feature["messages"], inputs, processor)
        input_ids = out["input_ids"][0]
        # The one count of image tokens on the data path: checked against the parsed image count, reused below.
        is_image = input_ids == self.image_token_id
        num_image_tokens, expected = int(is_image.sum()), len(inputs) * processor.image_seq_length
        if num_image_tokens != expected:  # e.g. a literal image token inside the text
            raise BadSampleError(
                "image_count_mismatch", f"{num_image_tokens} image tokens in the text, expected {expected}"
            )
        is_query = input_ids == self.query_token_id if self.query_token_id is not None else torch.zeros_like(is_image)
        num_query_tokens, expected = int(is_query.sum()), processor.image_seq_length if creation else 0
        if num_query_tokens != expected:  # e.g. a literal query token inside the text
            raise BadSampleError(
                "image_count_mismatch", f"{num_query_tokens} query tokens in the text, expected {expected}"
            )
        labels = input_ids.masked_fill(~mask | is_image | is_query, IGNORE_INDEX)
        if not (labels != IGNORE_INDEX).any():
            raise BadSampleError("template", "the rendered conversation supervises no token")
        pixel_values = out.get("pixel_values") if inputs and not count_only else None
        target_pixel_values = self.processor.preprocess_targets(images) if creation and not count_only else None
        return {
            "input_ids": input_ids,
            "labels": labels,
            "pixel_values": pixel_values,
            "target_pixel_values": target_pixel_values,
            "num_image_tokens": num_image_tokens,
            "num_query_tokens": num_query_tokens,
        }

    # -- the batch
    def _encode_or_skip(self, features: Sequence[dict]) -> tuple[list[dict], list[dict]]:
        """(encoded samples, the features they came from); bad samples raise or are skipped per `on_bad_sample`."""
        encoded, kept = [], []
        for feature in features:
            try:
                encoded.append(self._encode(feature))
                kept.append(feature)
            except BadSampleError as error:
                error = error.located(feature.get("id"), feature.get("source"))
                if self.on_bad_sample == "error":
                    raise error from None
                self._skips.add(error.reason)
                logger.warning("Dropping %s", error)
            except Exception as error:  # not a known data problem: never skipped, but say which sample
                raise ValueError(
                    f"could not encode sample id={feature.get('id')!r} ({feature.get('source')}): {error}"
                ) from error
        return encoded, kept

    def _pad(self, encoded: list[dict]) -> dict[str, torch.Tensor]:
        """Right padding by the tokenizer (`input_ids`, `attention_mask`); `labels` padded with -100 to match."""
        batch = self.processor.tokenizer.pad(
            {"input_ids": [e["input_ids"] for e in encoded]},
            padding="longest",
            pad_to_multiple_of=self.pad_to_multiple_of,
            padding_side="right",
            return_attention_mask=True,
            return_tensors="pt",
        )
        labels = torch.full(batch["input_ids"].shape, IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(encoded):
            labels[row, : len(e["labels"])] = e["labels"]
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}

    def _pack(self, encoded: list[dict]) -> dict[str, torch.Tensor]:
        """Padding-free: the batch's samples, in their order, packed into rows of at most `capacity` tokens (next
        fit), `position_ids` restarting at 0 for each sample and no `attention_mask`, from which transformers builds
        attention kept inside each sample (SDPA, eager, flex; flash-attention and `sdpa_varlen` read the same
        `position_ids` as sample boundaries).

        `capacity` is `pack_max_tokens`, or by default the batch's longest sample: no row is longer than the padded
        batch's, so attention (quadratic in the row on SDPA / eager) never costs more than padded, while the rows are
        fewer. A huge `pack_max_tokens` gives one row: no padding at all, for attention that costs per sample
        (`sdpa_varlen` of `ross.train.packed_attention`, flash-attention). The end of a shorter row is padded as a
        sequence of its own (positions from 0, labels -100), which no real token attends to. Each sample's first
        label is -100, so no token learns to predict the next sample. The order of samples, hence of images, is
        kept: the visual outputs are gathered per image as when padded."""
        longest = max(len(e["input_ids"]) for e in encoded)
        capacity = max(longest, self.pack_max_tokens or longest)
        rows, used = [[]], 0
        for e in encoded:
            if rows[-1] and used + len(e["input_ids"]) > capacity:
                rows.append([])
                used = 0
            rows[-1].append(e)
            used += len(e["input_ids"])
        width = max(sum(len(e["input_ids"]) for e in row) for row in rows)
        pad = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for e in row:
                n = len(e["input_ids"])
                input_ids[r, at : at + n] = e["input_ids"]
                labels[r, at + 1 : at + n] = e["labels"][1:]
                position_ids[r, at : at + n] = torch.arange(n)
                at += n
            position_ids[r, at:] = torch.arange(width - at)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}

    def _placeholder_batch(self, num_drawn: int) -> dict[str, torch.Tensor]:
        """Every sample of the batch was dropped (skip mode). Training cannot skip the step (on several processes
        every rank must run the same forward, backward and collectives), so `RossTrainer` trains on a one-token
        placeholder at zero weight, marked `ross_empty_batch`: no sample is repeated and nothing is learned."""
        logger.warning("Every sample of this batch (%d) was dropped; this micro-batch trains on nothing", num_drawn)
        pad = self.processor.tokenizer.pad_token_id
        batch = {
            "input_ids": torch.tensor([[pad]]),
            "attention_mask": torch.ones(1, 1, dtype=torch.long),
            "labels": torch.full((1, 1), IGNORE_INDEX, dtype=torch.long),
            "ross_empty_batch": torch.tensor(True),
        }
        if self.latent_cache is not None:
            batch["teacher_targets"] = self.latent_cache.empty_targets()
        return batch

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        # `None`: a sample the dataset found bad at fetch (skip mode; counted there), dropped from the batch.
        num_drawn = len(features)
        features = [feature for feature in features if feature is not None]
        encoded, kept = self._encode_or_skip(features)
        if not encoded:
            return self._placeholder_batch(num_drawn)
        batch = self._pack(encoded) if self.padding_free else self._pad(encoded)
        pixel_values = [e["pixel_values"] for e in encoded if e["pixel_values"] is not None]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values, dim=0)
        targets = [e["target_pixel_values"] for e in encoded if e["target_pixel_values"] is not None]
        if targets:
            batch["target_pixel_values"] = torch.cat(targets, dim=0)
        # Cached teacher (mean, std) per image, in pixel_values order; also (empty) for a batch without images, so
        # every rank skips the teacher. A miss raises LatentCacheMiss.
        if self.latent_cache is not None:
            batch["teacher_targets"] = self.latent_cache.targets_for(kept)
        return batch
