"""lmms-eval adapter: ``lmms-eval --model ross --model_args pretrained=PATH --tasks pope ...``.

lmms-eval (>= 0.7) finds out-of-tree models through the ``lmms_eval.models`` entry-point
group; this package declares (setup.cfg)::

    [options.entry_points]
    lmms_eval.models =
        ross = eval.lmms_plugin:lmms_eval_manifest

``RossLmms`` is a *simple* lmms-eval model (``is_simple = True``): each request's ``args`` are
``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``; the images come from
``doc_to_visual(self.task_dict[task][split][doc_id])``. The context (the task's prompt,
suffixes included) is placed after the image(s) in the model's chat template and answered by
:func:`ross.eval.generation.generate_answers`, the same batched greedy path as ``python -m ross.eval.run``
(``batch_size`` requests at a time, left padding, KV cache). ``gen_kwargs`` are honoured:
``until`` (output cut before the first stop string), ``max_new_tokens`` (default 1024, as in
lmms-eval's ``llava_hf``), ``temperature`` (> 0 samples), ``top_p``, ``num_beams``.

``model_args``: ``pretrained`` (required), ``device`` (default: CUDA if available), ``dtype``
(``auto``: bf16/fp16 on GPU, fp32 on CPU), ``batch_size`` (default 1), ``attn_implementation``.

lmms-eval is optional: without it this module still imports (``lmms_eval_manifest`` and the
helpers work) and only ``RossLmms`` is missing, with an ImportError that says so.
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
DEFAULT_MAX_NEW_TOKENS = 1024


def lmms_eval_manifest():
    """The entry point's payload: ``ModelManifest("ross", simple_class_path="ross.eval.lmms_plugin.RossLmms")``."""
    from lmms_eval.models.registry_v2 import ModelManifest  # called by lmms-eval only, so it is importable here

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


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


if _LmmsBase is not None:
    try:
        from lmms_eval.api.registry import register_model
    except ImportError:  # pragma: no cover

        def register_model(*names):
            return lambda cls: cls

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
                raise TypeError(f"RossLmms got unknown model_args: {', '.join(sorted(kwargs))}")
            try:
                self.batch_size_per_gpu = int(batch_size)
            except (TypeError, ValueError):
                raise ValueError(f"batch_size must be an integer for ross, got {batch_size!r}") from None
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

        def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
            if doc_to_visual is None:
                return []
            return _as_images(doc_to_visual(self.task_dict[task][split][doc_id]))

        def generate_until(self, requests) -> list[str]:
            """One answer per request, in request order; requests with equal ``gen_kwargs`` are batched."""
            groups: dict[str, list[int]] = defaultdict(list)
            for i, request in enumerate(requests):
                groups[repr(sorted((request.args[1] or {}).items(), key=lambda kv: kv[0]))].append(i)
            answers: list[str | None] = [None] * len(requests)
            for indices in groups.values():
                max_new_tokens, until, overrides = generation_settings(requests[indices[0]].args[1])
                items = []
                for i in indices:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    items.append((self._visuals(doc_to_visual, doc_id, task, split), context))
                texts = generate_answers(
                    self._model, self.processor, items, max_new_tokens, self.batch_size, stop=until,
                    progress=self.rank == 0, description="ross", **overrides,
                )
                for i, text in zip(indices, texts):
                    answers[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args[:2], text)
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


def __getattr__(name):
    if name == "RossLmms":
        raise ImportError(
            "ross.eval.lmms_plugin.RossLmms needs lmms-eval (pip install lmms-eval); importing it failed: "
            f"{_IMPORT_ERROR}"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CLASS_PATH", "MODEL_ID", "generation_settings", "lmms_eval_manifest"] + (
    ["RossLmms"] if _LmmsBase is not None else []
)
