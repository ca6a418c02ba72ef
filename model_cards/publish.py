"""Publish a trained ROSS folder to the Hub as a complete, loadable repo (verified before anything is uploaded).

    python -m ross.model_cards.publish --model runs/tiny/stage2/model --repo-id me/ross-tiny [--private] [--revision REV]
        [--token TOKEN] [--dry-run DIR] [--eval PATH ...] [--max-shard-size 5GB] [--base-model ID ...] [--license ID]

Steps (the same from the CLI, from Python with `publish_folder`, and from a Trainer with `push_from_trainer`):

1. **Stage** the repo in a new folder (``--dry-run DIR``, else a temporary one): the files a user needs and nothing
   else: safetensors weights (re-sharded when a file is over ``--max-shard-size``), ``config.json`` with ``auto_map``,
   the code files (a native VLM folder, as ``RossForPreTraining`` saves: its own ``config.json``, no code files, and
   ``ross_head/`` with the trained head; the card names the base model and the objective from
   ``ross_head/config.json``), the processor (``processor_config.json``, tokenizer files, ``chat_template.jinja``),
   ``generation_config.json``, ``training_args.json`` / ``train_config.yaml`` (tokens masked), and a generated
   ``README.md`` (`ross.model_cards.card.build_model_card`, eval results from ``scores.json``).
2. **Verify** the staged folder in a fresh Python process that cannot import this project (the repo and the
   editable-install finder are removed from ``sys.path`` / ``sys.meta_path``): load it with
   ``AutoModelForImageTextToText`` / ``AutoProcessor`` and ``trust_remote_code=True`` (no missing weights allowed; a
   native VLM must load as transformers' own class),
   and generate a few tokens for a drawn image through the chat template. A folder that fails is never uploaded.
3. **Upload** (skipped by ``--dry-run``): ``HfApi.create_repo(exist_ok=True)``, ``create_branch`` for a revision other
   than ``main``, then one ``upload_folder`` commit that also removes stale weight/code files of an older upload.

Exit status: 0 on success, 1 when the folder is refused (the reason is printed), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import HfApi

from modeling_ross.safetensors_io import (
    OutputTensor,
    SafetensorsError,
    parse_size,
    read_headers,
    weight_files,
    write_shards,
)
from ross.model_cards.card import NATIVE_HEAD_FOLDER, build_model_card, read_native_head


# Top-level files of a trained folder that belong in the repo (besides the weights and `*.py` code files).
CONFIG_FILES = ("config.json", "generation_config.json")
PROCESSOR_FILES = (
    "processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
    "chat_template.jinja", "chat_template.json",
)  # fmt: skip
TRAINING_FILES = ("training_args.json", "train_config.yaml")
WEIGHTS_NAME, WEIGHTS_INDEX_NAME = "model.safetensors", "model.safetensors.index.json"
REQUIRED_AUTO_MAP = ("AutoConfig", "AutoModelForImageTextToText", "AutoProcessor")
# Remote files an upload replaces: a new upload with fewer shards must not leave old shards behind.
DELETE_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.bin", "*.py"]
DEFAULT_MAX_SHARD_SIZE = "5GB"


class PublishError(RuntimeError):
    """The folder cannot be published (what is wrong is in the message); nothing was uploaded."""


@dataclass
class PublishResult:
    repo_id: str
    folder: Path  # the staged folder (the `--dry-run` folder, or a temporary one already removed)
    files: list[str]  # every file of the repo, sorted
    skipped: list[str]  # files of the trained folder left out of the repo
    verification: dict = field(default_factory=dict)
    revision: str | None = None
    commit: object | None = None  # `CommitInfo` of the upload, None for a dry run
    dry_run: bool = False


# ---------------------------------------------------------------------------------------
# 1. Staging
# ---------------------------------------------------------------------------------------


def _weight_files(folder: Path) -> list[Path]:
    try:
        return weight_files(folder, WEIGHTS_NAME)
    except SafetensorsError as error:
        raise PublishError(str(error)) from None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def reshard_safetensors(files: list[Path], out_dir: Path, max_shard_size: int | str) -> list[str]:
    """
    Rewrite the tensors of ``files`` into ``model-0000i-of-0000n.safetensors`` shards of at most ``max_shard_size``
    bytes each (a single larger tensor gets a shard of its own) plus ``model.safetensors.index.json``; a single shard
    is written as ``model.safetensors``. Tensor sizes come from the file headers and one shard is in memory at a time.
    """
    tensors = [OutputTensor(key, info, info.shape, info.dtype) for key, info in read_headers(files).items()]
    names = write_shards(out_dir, tensors, max_shard_size)
    return [*names, WEIGHTS_INDEX_NAME] if len(names) > 1 else names


def _mask_tokens(value):
    """Mask every ``*_token`` value (a Hub token typed on the command line ends up in the saved run config)."""
    if isinstance(value, dict):
        return {
            k: f"<{k.upper()}>" if k.endswith("_token") and v is not None else _mask_tokens(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask_tokens(v) for v in value]
    return value


def check_folder(folder: Path) -> dict:
    """Fast checks with clear messages before the slow load: the ROSS config, its `auto_map` code files, a chat
    template and weights. Returns the parsed config."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise PublishError(f"{folder}: no config.json")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as error:
        raise PublishError(f"{config_file} is not valid JSON: {error}") from error
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "ross" and (folder / NATIVE_HEAD_FOLDER).is_dir():
        return check_native_folder(folder, config)
    if model_type != "ross":
        raise PublishError(
            f"{config_file}: model_type is {model_type!r}, expected 'ross' (or a native VLM folder with "
            f"{NATIVE_HEAD_FOLDER}/, as RossForPreTraining.save_pretrained writes)"
        )
    auto_map = config.get("auto_map") or {}
    missing = [name for name in REQUIRED_AUTO_MAP if name not in auto_map]
    if missing:
        raise PublishError(f"{config_file}: auto_map lacks {missing}; re-save with RossForConditionalGeneration")
    for name, reference in auto_map.items():
        module = reference.split(".")[0] if isinstance(reference, str) else None
        if module is None or not (folder / f"{module}.py").is_file():
            raise PublishError(f"{folder}: code file {module}.py (auto_map {name}: {reference}) is missing")
    for code_file in sorted(folder.glob("*.py")):
        # The relative imports transformers copies along with a remote-code module (`from .denoiser import ...`).
        for module in re.findall(r"^\s*from\s+\.(\w+)\s+import", code_file.read_text(), flags=re.MULTILINE):
            if not (folder / f"{module}.py").is_file():
                raise PublishError(f"{folder}: code file {module}.py (imported by {code_file.name}) is missing")
    _check_processor_files(folder)
    _weight_files(folder)
    return config


def _check_processor_files(folder: Path) -> None:
    if not ((folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file()):
        raise PublishError(f"{folder}: no chat template (chat_template.jinja); save the processor into the folder")
    if not (folder / "processor_config.json").is_file() and not (folder / "preprocessor_config.json").is_file():
        raise PublishError(f"{folder}: no processor_config.json; save the processor into the folder")


def check_native_folder(folder: Path, config: dict) -> dict:
    """`check_folder` for a native VLM trained with `RossForPreTraining`: the VLM's own config (no remote code), the
    processor, weights, and a complete ``ross_head/`` (``config.json`` naming the objective, ``model.safetensors``)."""
    if config.get("auto_map"):
        raise PublishError(f"{folder / 'config.json'}: a native VLM folder should not carry an auto_map (remote code)")
    head = read_native_head(folder)
    if head is None:
        raise PublishError(f"{folder / NATIVE_HEAD_FOLDER / 'config.json'}: missing or not a ross_head config")
    if not (folder / NATIVE_HEAD_FOLDER / WEIGHTS_NAME).is_file():
        raise PublishError(f"{folder / NATIVE_HEAD_FOLDER}: no {WEIGHTS_NAME} (the trained reconstruction head)")
    _check_processor_files(folder)
    _weight_files(folder)
    return config


def stage_folder(
    model_folder: str | Path,
    out_dir: str | Path,
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    eval_results=None,
    **card_overrides,
) -> tuple[list[str], list[str]]:
    """Write the repo of ``model_folder`` into the empty (or new) ``out_dir``; returns ``(files, skipped)``."""
    src, out = Path(model_folder), Path(out_dir)
    if not src.is_dir():
        raise PublishError(f"{src}: no such folder")
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} is not empty: the staged repo must contain exactly the published files")
    config = check_folder(src)
    out.mkdir(parents=True, exist_ok=True)

    weights = _weight_files(src)
    limit = parse_size(max_shard_size)
    if any(f.stat().st_size > limit for f in weights):
        written = reshard_safetensors(weights, out, limit)
    else:
        written = [f.name for f in weights]
        for f in weights:
            _link_or_copy(f, out / f.name)
        if (src / WEIGHTS_INDEX_NAME).is_file():
            shutil.copy2(src / WEIGHTS_INDEX_NAME, out / WEIGHTS_INDEX_NAME)
            written.append(WEIGHTS_INDEX_NAME)

    for name in (*CONFIG_FILES, *PROCESSOR_FILES, *sorted(p.name for p in src.glob("*.py"))):
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
            written.append(name)
    if config.get("model_type") != "ross":  # a native VLM: its trained ROSS head goes along (for further training)
        (out / NATIVE_HEAD_FOLDER).mkdir()
        for name in ("config.json", WEIGHTS_NAME):
            _link_or_copy(src / NATIVE_HEAD_FOLDER / name, out / NATIVE_HEAD_FOLDER / name)
            written.append(f"{NATIVE_HEAD_FOLDER}/{name}")
    try:
        if (src / "training_args.json").is_file():
            args = json.loads((src / "training_args.json").read_text())
            (out / "training_args.json").write_text(json.dumps(_mask_tokens(args), indent=2, sort_keys=True) + "\n")
            written.append("training_args.json")
        if (src / "train_config.yaml").is_file():
            run = yaml.safe_load((src / "train_config.yaml").read_text()) or {}
            with open(out / "train_config.yaml", "w") as f:
                yaml.safe_dump(_mask_tokens(run), f, sort_keys=True)
            written.append("train_config.yaml")
        # The card is built from the trained folder (its summary, eval results and earlier stages live around it).
        card = build_model_card(src, eval_results=eval_results, **card_overrides)
    except (ValueError, yaml.YAMLError, FileNotFoundError) as error:  # JSONDecodeError is a ValueError
        raise PublishError(f"{src}: {error}") from error
    card.save(str(out / "README.md"))
    written.append("README.md")

    used = {*written, WEIGHTS_INDEX_NAME, *(f.name for f in weights)}  # re-sharded weights are not left out
    skipped = sorted(p.name for p in src.iterdir() if p.is_file() and p.name not in used)
    skipped += sorted(f"{p.name}/" for p in src.iterdir() if p.is_dir() and f"{p.name}/config.json" not in used)
    return sorted(written), skipped


# ---------------------------------------------------------------------------------------
# 2. Verification in a fresh process
# ---------------------------------------------------------------------------------------

# Runs with `python -c SCRIPT FOLDER DEVICE MAX_NEW_TOKENS` in an empty working directory.
VERIFY_SCRIPT = r"""
import json, os, sys

folder, device, max_new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
# A native VLM (RossForPreTraining's) loads as transformers' own class; a ROSS checkpoint through its remote code.
native = os.path.isdir(os.path.join(folder, "ross_head"))
# A user's machine: this project is not installed, only the folder's own code files can be used.
sys.path = [p for p in sys.path if p not in ("", ".") and not os.path.isdir(os.path.join(p, "modeling_ross"))]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
try:
    import modeling_ross
except ImportError:
    pass
else:
    raise SystemExit(f"verification is not isolated: modeling_ross imports from {modeling_ross.__file__}")

import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor

if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
model, info = AutoModelForImageTextToText.from_pretrained(
    folder, trust_remote_code=True, dtype="auto", output_loading_info=True
)
problems = {k: sorted(v)[:10] for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
if problems:
    raise SystemExit(f"the weights do not fill the model: {problems}")
if native and not type(model).__module__.startswith("transformers.models."):
    raise SystemExit(f"the native model class came from {type(model).__module__}, not from transformers")
if not native and not type(model).__module__.startswith("transformers_modules"):
    raise SystemExit(f"the model class came from {type(model).__module__}, not from the folder's code files")
model.to(device).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
if not getattr(processor, "chat_template", None):
    raise SystemExit("the processor has no chat template")

image = Image.new("RGB", (64, 48), "white")
ImageDraw.Draw(image).ellipse((16, 8, 48, 40), fill="red")
messages = [{"role": "user", "content": [
    {"type": "image", "image": image}, {"type": "text", "text": "Is there a red circle in the image?"},
]}]
inputs = processor.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
).to(device=device, dtype=model.dtype)
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
new_tokens = output[0, inputs["input_ids"].shape[1]:]
if new_tokens.numel() == 0:
    raise SystemExit("generation returned no new token")
print("ROSS_VERIFY " + json.dumps({
    "model_class": type(model).__name__, "model_module": type(model).__module__,
    "processor_class": type(processor).__name__, "device": device, "dtype": str(model.dtype),
    "new_tokens": int(new_tokens.numel()), "text": processor.decode(new_tokens, skip_special_tokens=True),
}))
"""


def verify_folder(
    folder: str | Path, *, device: str = "auto", max_new_tokens: int = 4, timeout: float = 1800
) -> dict:
    """
    Load ``folder`` as a user would (fresh process, remote code only, offline) and generate ``max_new_tokens`` for a
    drawn image. Returns what the check saw (classes, device, decoded text); raises `PublishError` with the
    process's output when anything fails.
    """
    folder = Path(folder).resolve()
    with tempfile.TemporaryDirectory(prefix="ross-verify-") as work:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # Offline (everything is local), and a private modules cache so no earlier copy of the code can be used.
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(work) / "modules"), TOKENIZERS_PARALLELISM="false")
        try:
            result = subprocess.run(
                [sys.executable, "-c", VERIFY_SCRIPT, str(folder), device, str(max_new_tokens)],
                cwd=work, env=env, capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired as error:
            raise PublishError(f"verification of {folder} did not finish in {timeout:.0f} s") from error
    report = [line for line in result.stdout.splitlines() if line.startswith("ROSS_VERIFY ")]
    if result.returncode != 0 or not report:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise PublishError(
            f"{folder} does not load and generate in a fresh process with trust_remote_code=True "
            f"(exit code {result.returncode}); nothing was uploaded.\n{tail}"
        )
    return json.loads(report[-1][len("ROSS_VERIFY ") :])


# ---------------------------------------------------------------------------------------
# 3. Upload
# ---------------------------------------------------------------------------------------


def upload_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    api=None,
):
    """`create_repo` (exist_ok), `create_branch` for a revision other than main, one `upload_folder` commit."""
    api = api or HfApi(token=token)
    url = api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
    # `create_repo` resolves a bare name to the token's namespace (the Trainer's default `hub_model_id`).
    repo_id = url.repo_id if isinstance(getattr(url, "repo_id", None), str) else repo_id
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        revision=revision,
        commit_message=commit_message or "Upload ROSS model (model_cards.publish)",
        delete_patterns=DELETE_PATTERNS,
    )


def publish_folder(
    model_folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
    dry_run: str | Path | None = None,
    commit_message: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    eval_results=None,
    verify_device: str = "auto",
    verify_timeout: float = 1800,
    api=None,
    **card_overrides,
) -> PublishResult:
    """
    Stage, verify and (unless ``dry_run``) upload the repo of a trained ROSS folder; see the module docstring.

    ``dry_run``: a folder to write the repo into (empty or new); nothing is uploaded and no Hub call is made.
    ``eval_results`` / ``card_overrides``: passed to `ross.model_cards.card.build_model_card` (``repo_id`` is set here).
    ``api``: an `HfApi` (default: ``HfApi(token=token)``).
    Raises `PublishError` (nothing uploaded) when the folder is incomplete or does not load and generate.
    """
    card_overrides.setdefault("repo_id", repo_id)
    with tempfile.TemporaryDirectory(prefix="ross-publish-") as tmp:
        staged = Path(dry_run) if dry_run is not None else Path(tmp) / "repo"
        files, skipped = stage_folder(
            model_folder, staged, max_shard_size=max_shard_size, eval_results=eval_results, **card_overrides
        )
        try:
            verification = verify_folder(staged, device=verify_device, timeout=verify_timeout)
        except PublishError as error:
            raise PublishError(f"the repo staged from {model_folder} was refused: {error}") from error
        result = PublishResult(repo_id, staged, files, skipped, verification, revision, dry_run=dry_run is not None)
        if dry_run is None:
            result.commit = upload_to_hub(
                staged, repo_id, private=private, revision=revision, token=token, commit_message=commit_message,
                api=api,
            )  # fmt: skip
    return result


def push_from_trainer(trainer, folder: str | Path, *, commit_message: str = "End of training", **kwargs):
    """
    `publish_folder` for a `transformers.Trainer` run: repo, privacy, revision and token come from ``trainer.args``
    (``hub_model_id``, default the output folder's name; ``hub_private_repo``; ``hub_revision``; ``hub_token``).
    Runs on the main process only and returns its `PublishResult`; the other ranks return None at once, as in
    `Trainer.push_to_hub` (no barrier: an upload can outlast a collective's timeout). The verification loads the model
    on the CPU by default, so it cannot run out of GPU memory next to the training process.
    """
    if not trainer.is_world_process_zero():
        return None
    args = trainer.args
    repo_id = kwargs.pop("repo_id", None) or getattr(trainer, "hub_model_id", None) or args.hub_model_id
    repo_id = repo_id or Path(args.output_dir).absolute().name
    defaults = {"private": args.hub_private_repo, "revision": args.hub_revision, "token": args.hub_token}
    for key, default in defaults.items():
        if kwargs.get(key) is None:  # `Trainer.push_to_hub(token=None, ...)` passes None for "not given"
            kwargs[key] = default
    kwargs.setdefault("verify_device", "cpu")
    return publish_folder(folder, repo_id, commit_message=commit_message, **kwargs)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ross.model_cards.publish",
        description="Verify a trained ROSS folder (fresh process, trust_remote_code) and upload it as a Hub repo.",
    )
    parser.add_argument("--model", required=True, help="the trained folder (save_pretrained of model + processor)")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo private")
    parser.add_argument("--revision", help="branch to commit to (created from main if missing)")
    parser.add_argument("--token", help="Hub token (default: the saved login / HF_TOKEN)")
    parser.add_argument("--dry-run", metavar="DIR", help="write the repo into DIR (empty or new) and upload nothing")
    parser.add_argument("--commit-message")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="re-shard weights above this size")
    parser.add_argument(
        "--eval", action="append", metavar="PATH", help="scores.json or a folder of them (repeatable); "
        "default: those under the model folder and in its sibling eval/ folder",
    )  # fmt: skip
    parser.add_argument("--no-eval", action="store_true", help="publish no evaluation results")
    parser.add_argument("--base-model", action="append", help="Hub id of a base model (repeatable)")
    parser.add_argument("--dataset", action="append", help="Hub id of a training dataset (repeatable)")
    parser.add_argument("--license")
    parser.add_argument("--tag", action="append", help="extra tag (repeatable)")
    parser.add_argument("--verify-device", default="auto", help="device of the verification load (auto/cpu/cuda)")
    parser.add_argument("--verify-timeout", type=float, default=1800)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        key: value
        for key, value in (
            ("base_model", args.base_model), ("datasets", args.dataset), ("license", args.license), ("tags", args.tag)
        )
        if value
    }  # fmt: skip
    eval_results = [] if args.no_eval else args.eval
    try:
        result = publish_folder(
            args.model, args.repo_id, private=args.private, revision=args.revision, token=args.token,
            dry_run=args.dry_run, commit_message=args.commit_message, max_shard_size=args.max_shard_size,
            eval_results=eval_results, verify_device=args.verify_device, verify_timeout=args.verify_timeout,
            **overrides,
        )  # fmt: skip
    except PublishError as error:
        print(f"[publish] refused: {error}", file=sys.stderr)
        return 1
    check = result.verification
    remote = check["model_module"].startswith("transformers_modules")
    source = "from the folder's code" if remote else "(transformers' own class, no remote code)"
    print(
        f"[publish] verified: {check['model_class']} {source} on {check['device']}, "
        f"generated {check['new_tokens']} token(s): {check['text']!r}"
    )
    print(f"[publish] {len(result.files)} files: {', '.join(result.files)}")
    if result.skipped:
        print(f"[publish] left out: {', '.join(result.skipped)}")
    if result.dry_run:
        print(f"[publish] dry run: the repo is in {result.folder}; nothing was uploaded")
    else:
        url = getattr(result.commit, "commit_url", None) or result.repo_id
        print(f"[publish] uploaded to {result.repo_id} (revision {result.revision or 'main'}): {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
