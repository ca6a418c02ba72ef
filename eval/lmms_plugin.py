"""lmms-eval adapter: ``lmms-eval eval --model ross --model_args pretrained=PATH --tasks pope ...``.

lmms-eval (>= 0.7) finds out-of-tree models through the ``lmms_eval.models`` entry-point
group; this package declares (setup.cfg)::

    [options.entry_points]
    lmms_eval.models =
        ross = ross.eval.lmms_plugin:lmms_eval_manifest

The manifest names two classes, as lmms-eval 0.7's own models do:

* ``RossLmmsChat`` (``is_simple = False``), what ``--model ross`` resolves to (lmms-eval 0.7 prefers the chat
  interface): each request's ``args`` are ``(context, doc_to_messages, gen_kwargs, doc_id, task, split)`` and
  ``doc_to_messages(doc)`` is a conversation (``lmms_eval.protocol.ChatMessages``: system/user/assistant turns of
  image and text parts). It is rendered by the model's chat template as it is, images at their places.
* ``RossLmms`` (``is_simple = True``), with ``--force_simple``: ``args`` are ``(context, gen_kwargs,
  doc_to_visual, doc_id, task, split)``; the images come from ``doc_to_visual(self.task_dict[task][split][doc_id])``
  and the context (the task's prompt, suffixes included) is placed after them as one user turn.

For a single-turn task both give the same prompt as ``python -m ross.eval.run``, and both answer through
:func:`ross.eval.generation.generate_answers`, the same batched greedy path (``--batch_size N`` requests at a
time, left padding, KV cache; on CPU in fp32 a batch gives the answers of batch size 1). ``gen_kwargs`` are
honoured: ``until`` (output cut before the first stop string), ``max_new_tokens`` (default 1024, as in
lmms-eval's ``llava_hf``), ``temperature`` (> 0 samples), ``top_p``, ``num_beams``; requests with different
``gen_kwargs`` are never batched together.

``model_args``: ``pretrained`` (required), ``dtype`` (``auto``: bf16/fp16 on GPU, fp32 on CPU),
``attn_implementation``; lmms-eval passes ``--batch_size`` (an integer; default 1) and ``--device`` (default:
CUDA if available). Image parts only: a video or audio part is an error naming the task and doc.

lmms-eval is optional: without it this module still imports, ``lmms_eval_manifest()`` returns the manifest's
fields as a dict and the helpers work; only the two classes are missing, with an ImportError that says so.
"""

from __future__ import annotations

from collections import defaultdict

from PIL import Image

from ross.eval.generation import generate_answers, load_model

try:  # lmms-eval is an optional extra
    from lmms_eval.api.model import lmms as _LmmsBase
except ImportError as err:  # pragma: no cover - depends on the environment
    _LmmsBase = None
    _IMPORT_ERROR = err
else:
    _IMPORT_ERROR = None

MODEL_ID = "ross"
CLASS_PATH = "ross.eval.lmms_plugin.RossLmms"
CHAT_CLASS_PATH = "ross.eval.lmms_plugin.RossLmmsChat"
MANIFEST = {"model_id": MODEL_ID, "simple_class_path": CLASS_PATH, "chat_class_path": CHAT_CLASS_PATH}
DEFAULT_MAX_NEW_TOKENS = 1024


def lmms_eval_manifest():
    """The entry point's payload: ``ModelManifest(**MANIFEST)`` (chat and simple class paths).

    Without lmms-eval importable, the same fields as a plain dict (nothing else could use a ``ModelManifest``).
    """
    try:
        from lmms_eval.models.registry_v2 import ModelManifest
    except ImportError:
        return dict(MANIFEST)
    return ModelManifest(**MANIFEST)


def generation_settings(gen_kwargs: dict | None) -> tuple[int, list[str], dict]:
    """lmms-eval ``gen_kwargs`` -> ``(max_new_tokens, until, overrides for eval.generation.greedy_config)``."""
    gen_kwargs = dict(gen_kwargs or {})
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, (list, tuple)):
        raise ValueError(f"gen_kwargs['until'] must be a string or a list, got {type(until).__name__}")
    max_new_tokens = int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
    overrides = {}
    temperature = float(gen_kwargs.get("temperature") or 0)
    if temperature > 0:
        overrides.update(do_sample=True, temperature=temperature)
        if gen_kwargs.get("top_p") is not None:
            overrides["top_p"] = float(gen_kwargs["top_p"])
    if int(gen_kwargs.get("num_beams") or 1) > 1:
        overrides["num_beams"] = int(gen_kwargs["num_beams"])
    return max_new_tokens, list(until), overrides


def _as_images(visuals) -> list:
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    images = []
    for v in visuals:
        if isinstance(v, (list, tuple)):
            images += _as_images(v)
        elif isinstance(v, Image.Image):
            images.append(v)
        elif v is not None:
            raise ValueError(f"ROSS takes images only; got a {type(v).__name__} visual (video/audio tasks unsupported)")
    return images


def _open_image(url, where: str) -> Image.Image:
    if isinstance(url, Image.Image):
        return url
    if isinstance(url, str):
        try:
            with Image.open(url) as image:
                return image.convert("RGB")
        except OSError as err:
            raise ValueError(f"{where}: cannot open image {url!r}: {err}") from None
    raise ValueError(f"{where}: an image part must be a PIL image or a file path, got {type(url).__name__}")


def chat_conversation(messages: list[dict], where: str = "request") -> tuple[list, list[dict]]:
    """lmms-eval chat messages -> ``(images, conversation)`` for :func:`ross.eval.generation.chat_text`.

    ``messages``: ``[{"role", "content": [{"type": "text", "text"} | {"type": "image", "url": PIL or path}]}]``
    (``ChatMessages.model_dump()``); each image part becomes an ``{"type": "image"}`` placeholder, and the images
    are returned in the order of their placeholders. ``where`` names the request in errors.
    """
    images, conversation = [], []
    for message in messages:
        content = []
        for part in message["content"]:
            kind = part["type"]
            if kind == "text":
                content.append({"type": "text", "text": part["text"]})
            elif kind == "image":
                images.append(_open_image(part["url"], where))
                content.append({"type": "image"})
            else:
                raise ValueError(f"{where}: ROSS takes images and text only, got a {kind!r} part")
        conversation.append({"role": message["role"], "content": content})
    return images, conversation


if _LmmsBase is not None:
    from lmms_eval.api.registry import register_model
    from lmms_eval.protocol import ChatMessages

    @register_model(MODEL_ID)
    class RossLmms(_LmmsBase):
        """ROSS (any ``AutoModelForImageTextToText`` checkpoint with a chat-template processor) for lmms-eval."""

        is_simple = True

        def __init__(
            self,
            pretrained: str,
            device: str | None = None,
            dtype: str = "auto",
            batch_size: int | str = 1,
            attn_implementation: str | None = None,
            max_batch_size=None,
            **kwargs,
        ) -> None:
            super().__init__()
            if kwargs:
                raise TypeError(f"{type(self).__name__} got unknown model_args: {', '.join(sorted(kwargs))}")
            try:
                self.batch_size_per_gpu = int(batch_size)
            except (TypeError, ValueError):
                raise ValueError(f"batch_size must be an integer for ross, got {batch_size!r}") from None
            if self.batch_size_per_gpu < 1:
                raise ValueError(f"batch_size must be >= 1 for ross, got {batch_size!r}")
            self.pretrained = pretrained
            self._model, self.processor = load_model(pretrained, dtype, device, attn_implementation)
            self._rank, self._world_size = 0, 1

        @property
        def model(self):
            return self._model

        @property
        def tokenizer(self):
            return self.processor.tokenizer

        @property
        def batch_size(self) -> int:
            return self.batch_size_per_gpu

        @property
        def device(self):
            return self._model.device

        def parse_request(self, request) -> tuple[str, dict | None, list, str | list[dict]]:
            """``(context, gen_kwargs, images, prompt)``: images from ``doc_to_visual``; the prompt is the context."""
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            images = _as_images(doc_to_visual(doc)) if doc_to_visual is not None else []
            return context, gen_kwargs, images, context

        def generate_until(self, requests) -> list[str]:
            """One answer per request, in request order; requests with equal ``gen_kwargs`` are batched."""
            parsed = [self.parse_request(request) for request in requests]
            groups: dict[str, list[int]] = defaultdict(list)
            for i, (_, gen_kwargs, _, _) in enumerate(parsed):
                groups[repr(sorted((gen_kwargs or {}).items(), key=lambda kv: kv[0]))].append(i)
            answers: list[str | None] = [None] * len(requests)
            for indices in groups.values():
                max_new_tokens, until, overrides = generation_settings(parsed[indices[0]][1])
                texts = generate_answers(
                    self._model, self.processor, [parsed[i][2:] for i in indices], max_new_tokens, self.batch_size,
                    stop=until, progress=self.rank == 0, description="ross", **overrides,
                )
                for i, text in zip(indices, texts):
                    answers[i] = text
                    self.cache_hook.add_partial("generate_until", parsed[i][:2], text)
            return answers

        def loglikelihood(self, requests):
            raise NotImplementedError(
                "The ross lmms-eval model implements generate_until only; loglikelihood tasks (e.g. seedbench_ppl) "
                "are not supported. Use the task's generation variant (e.g. seedbench)."
            )

        def generate_until_multi_round(self, requests):
            raise NotImplementedError(
                "The ross lmms-eval model does not implement multi-round generation; use single-turn tasks."
            )

    class RossLmmsChat(RossLmms):
        """The chat interface of :class:`RossLmms`: the task's ``doc_to_messages`` conversation, rendered as it is."""

        is_simple = False

        def parse_request(self, request) -> tuple[str, dict | None, list, str | list[dict]]:
            """``(context, gen_kwargs, images, conversation)`` from ``doc_to_messages(doc)``."""
            context, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            where = f"task {task!r} split {split!r} doc {doc_id}"
            try:
                messages = ChatMessages(messages=doc_to_messages(self.task_dict[task][split][doc_id]))
            except ValueError as err:  # pydantic's ValidationError is a ValueError
                raise ValueError(f"{where}: doc_to_messages did not give lmms-eval chat messages: {err}") from None
            images, conversation = chat_conversation(messages.model_dump()["messages"], where)
            return context, gen_kwargs, images, conversation


def __getattr__(name):
    if name in ("RossLmms", "RossLmmsChat"):
        raise ImportError(
            f"ross.eval.lmms_plugin.{name} needs lmms-eval (see docs/evaluation.md, 'lmms-eval plugin': "
            f"eval/lmms-eval-requirements.txt); "
            f"importing it failed: {_IMPORT_ERROR}"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CHAT_CLASS_PATH", "CLASS_PATH", "MANIFEST", "MODEL_ID", "chat_conversation", "generation_settings",
           "lmms_eval_manifest"] + (["RossLmms", "RossLmmsChat"] if _LmmsBase is not None else [])
