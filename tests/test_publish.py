"""Publishing a trained folder: the exact repo, the exact Hub calls (network layer mocked), refusal of broken folders.

No test touches the network: HF_HUB_OFFLINE=1 (conftest) and `HfApi.create_repo` / `create_branch` / `upload_folder`
are replaced by mocks; the mocked upload copies the folder it is given, which is then loaded in a fresh process.
"""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from conftest import run_isolated
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, RepoUrl

import ross.model_cards.publish as publish
from ross.model_cards.card import build_model_card


TINY_OBJECTIVE = {"denoiser_hidden_size": 64, "denoiser_depth": 2, "denoiser_num_heads": 4, "num_noise_draws": 2}
CODE_FILES = ["configuration_ross.py", "denoiser.py", "modeling_ross.py", "objective.py", "processing_ross.py",
              "teacher.py", "teacher_source.py"]  # fmt: skip
REPO_FILES = sorted([
    "README.md", "config.json", "generation_config.json", "model.safetensors", "chat_template.jinja",
    "processor_config.json", "tokenizer.json", "tokenizer_config.json", "training_args.json", "train_config.yaml",
    *CODE_FILES,
])  # fmt: skip
QUESTION = "Is there a red circle in the image?"


def drawn_image():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 48), "white")
    ImageDraw.Draw(image).ellipse((16, 8, 48, 40), fill="red")
    return image


def greedy_ids(model, processor, max_new_tokens=6):
    messages = [{"role": "user", "content": [{"type": "image", "image": drawn_image()},
                                             {"type": "text", "text": QUESTION}]}]  # fmt: skip
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.fixture(scope="module")
def trained(tiny_components, tmp_path_factory):
    """A trained folder as train/sft.py leaves it (+ an eval result and files that must not be published)."""
    from transformers import TrainingArguments

    from modeling_ross import RossForConditionalGeneration, RossProcessor, from_components

    run = tmp_path_factory.mktemp("run")
    folder = run / "model"
    torch.manual_seed(0)
    model = from_components(**tiny_components, **TINY_OBJECTIVE).eval()
    processor = RossProcessor.from_components(tiny_components["vision_model"], tiny_components["language_model"])
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    args = TrainingArguments(output_dir=str(run), use_cpu=True, report_to="none", hub_token="hf_secret", max_steps=3)
    (folder / "training_args.json").write_text(args.to_json_string())
    # sft.py saves the merged YAML + command-line values as given: a token typed there must not be published.
    run_config = {"stage": 2, "hub_token": "hf_secret", "prepare_tiny": {}}
    (folder / "train_config.yaml").write_text(yaml.safe_dump(run_config))
    (run / "summary.json").write_text(json.dumps({"global_step": 3, "world_size": 1}))
    (folder / "eval" / "synthetic_pope").mkdir(parents=True)
    (folder / "eval" / "synthetic_pope" / "scores.json").write_text(json.dumps({
        "benchmark": "synthetic_pope", "rules": "lmms-eval", "num_items": 20, "primary_metric": "accuracy",
        "primary_value": 0.55, "metrics": {"accuracy": 0.55, "f1": 0.5}, "chance": {"accuracy": 0.5},
        "model": str(folder), "settings": {"limit": None},
    }))  # fmt: skip
    (folder / "optimizer.pt").write_bytes(b"not for the hub")
    reference = greedy_ids(RossForConditionalGeneration.from_pretrained(folder).eval(), processor)
    return SimpleNamespace(folder=folder, reference=reference)


@pytest.fixture()
def hub():
    """The network layer: HfApi's three calls, mocked; the upload copies the folder it is given."""
    uploaded = {}

    def fake_upload(**kwargs):
        uploaded["files"] = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        shutil.copytree(kwargs["folder_path"], uploaded["remote"])
        return SimpleNamespace(commit_url="https://huggingface.co/me/ross-tiny/commit/abc")

    with (
        mock.patch.object(HfApi, "create_repo", return_value=RepoUrl("https://huggingface.co/me/ross-tiny")) as create,
        mock.patch.object(HfApi, "create_branch") as branch,
        mock.patch.object(HfApi, "upload_folder", side_effect=fake_upload) as upload,
    ):
        yield SimpleNamespace(create_repo=create, create_branch=branch, upload_folder=upload, uploaded=uploaded)


def assert_no_hub_call(hub):
    assert not hub.create_repo.called and not hub.create_branch.called and not hub.upload_folder.called


def test_publish_uploads_exactly_a_verified_loadable_repo(trained, hub, tmp_path, capsys):
    """Weights over --max-shard-size are re-sharded: the uploaded repo is sharded, and still loads and answers."""
    from safetensors.torch import load_file

    hub.uploaded["remote"] = tmp_path / "hub" / "me--ross-tiny"
    argv = ["--model", str(trained.folder), "--repo-id", "me/ross-tiny", "--private", "--revision", "dev",
            "--token", "hf_test", "--commit-message", "first upload", "--max-shard-size", "400KB"]  # fmt: skip
    assert publish.main(argv) == 0, capsys.readouterr().err

    hub.create_repo.assert_called_once_with("me/ross-tiny", exist_ok=True, private=True, repo_type="model")
    hub.create_branch.assert_called_once_with("me/ross-tiny", branch="dev", exist_ok=True, repo_type="model")
    hub.upload_folder.assert_called_once()
    kwargs = hub.upload_folder.call_args.kwargs
    staged = kwargs.pop("folder_path")
    assert kwargs == {
        "repo_id": "me/ross-tiny", "repo_type": "model", "revision": "dev", "commit_message": "first upload",
        "delete_patterns": ["*.safetensors", "*.safetensors.index.json", "*.bin", "*.py"],
    }  # fmt: skip
    assert not Path(staged).exists()  # the staging folder was temporary
    remote = hub.uploaded["remote"]
    shards = sorted(p.name for p in remote.glob("model-*-of-*.safetensors"))
    n = len(shards)
    assert n >= 3 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    sharded_files = [f for f in REPO_FILES if f != "model.safetensors"] + shards + ["model.safetensors.index.json"]
    assert hub.uploaded["files"] == sorted(sharded_files)
    out = capsys.readouterr().out
    assert "verified: RossForConditionalGeneration" in out and "left out: optimizer.pt, eval/" in out

    assert all((remote / name).stat().st_size <= 400_000 + 10_000 for name in shards)  # + header
    index = json.loads((remote / "model.safetensors.index.json").read_text())
    merged = {k: v for name in shards for k, v in load_file(remote / name).items()}
    original = load_file(trained.folder / "model.safetensors")
    assert merged.keys() == original.keys() == index["weight_map"].keys()
    assert all(torch.equal(merged[k], original[k]) for k in original)
    assert set(json.loads((remote / "config.json").read_text())["auto_map"]) == {
        "AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoProcessor"
    }  # fmt: skip
    assert "hf_secret" not in (remote / "training_args.json").read_text()
    assert yaml.safe_load((remote / "train_config.yaml").read_text())["hub_token"] == "<HUB_TOKEN>"
    card = ModelCard.load(str(remote / "README.md"))
    assert card.data.pipeline_tag == "image-text-to-text" and card.data.model_name == "ross-tiny"
    assert [(r.dataset_type, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("synthetic_pope", "accuracy", 0.55), ("synthetic_pope", "f1", 0.5)
    ]  # fmt: skip

    # What a user downloads: the uploaded files in a new folder, loaded with the Auto classes and remote code only.
    downloaded = shutil.copytree(remote, tmp_path / "downloaded-ross-tiny")
    result = run_isolated(
        f"""
        import json, torch
        from PIL import Image, ImageDraw
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(downloaded)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(downloaded)!r}, trust_remote_code=True)
        image = Image.new("RGB", (64, 48), "white")
        ImageDraw.Draw(image).ellipse((16, 8, 48, 40), fill="red")
        messages = [{{"role": "user", "content": [{{"type": "image", "image": image}},
                     {{"type": "text", "text": {QUESTION!r}}}]}}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        ids = out[0, inputs["input_ids"].shape[1]:].tolist()
        print("IDS", json.dumps(ids, separators=(",", ":")), type(model).__module__)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("IDS "))
    assert json.loads(line.split(" ")[1]) == trained.reference  # same answer as the trained model
    assert line.split(" ")[2].startswith("transformers_modules.")


def test_dry_run_writes_the_same_repo_and_calls_nothing(trained, hub, tmp_path, capsys):
    target = tmp_path / "dry"
    assert publish.main(["--model", str(trained.folder), "--repo-id", "me/ross-tiny", "--dry-run", str(target)]) == 0
    assert_no_hub_call(hub)
    assert sorted(p.name for p in target.iterdir()) == REPO_FILES
    assert (target / "model.safetensors").read_bytes() == (trained.folder / "model.safetensors").read_bytes()
    for name in ("config.json", "chat_template.jinja", "tokenizer.json", *CODE_FILES):
        assert (target / name).read_bytes() == (trained.folder / name).read_bytes(), name
    expected_card = build_model_card(trained.folder, repo_id="me/ross-tiny")
    assert (target / "README.md").read_text() == str(expected_card)
    assert "nothing was uploaded" in capsys.readouterr().out

    # The folder must be empty: a stale file would silently join the "exact" repo.
    assert publish.main(["--model", str(trained.folder), "--repo-id", "me/x", "--dry-run", str(target)]) == 1
    assert "is not empty" in capsys.readouterr().err


def _drop_tensor(folder: Path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    dropped = next(k for k in tensors if k.startswith("model.projector."))
    save_file({k: v for k, v in tensors.items() if k != dropped}, folder / "model.safetensors", {"format": "pt"})


BREAKAGES = {
    "deleted auto_map code file": (lambda f: (f / "modeling_ross.py").unlink(), "code file modeling_ross.py"),
    "deleted imported code file": (
        lambda f: (f / "denoiser.py").unlink(), "code file denoiser.py (imported by modeling_ross.py)"
    ),
    "corrupted config": (lambda f: (f / "config.json").write_text('{"model_type": "ross",'), "not valid JSON"),
    "no chat template": (lambda f: (f / "chat_template.jinja").unlink(), "no chat template"),
    # Passes the static checks; only loading in the fresh process finds it (transformers would init it randomly).
    "missing weights": (_drop_tensor, "the weights do not fill the model"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_folder_is_refused_before_any_upload(trained, hub, tmp_path, capsys, breakage):
    folder = shutil.copytree(trained.folder, tmp_path / "model")
    breaker, message = BREAKAGES[breakage]
    breaker(folder)
    assert publish.main(["--model", str(folder), "--repo-id", "me/ross-tiny"]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and message in err, err
    assert_no_hub_call(hub)


def test_upload_resolves_the_namespace_and_branches_only_off_main(tmp_path):
    api = mock.MagicMock()
    api.create_repo.return_value = RepoUrl("https://huggingface.co/me/ross-tiny")
    publish.upload_to_hub(tmp_path, "ross-tiny", revision="main", api=api)
    api.create_repo.assert_called_once_with("ross-tiny", exist_ok=True, private=None, repo_type="model")
    api.create_branch.assert_not_called()
    assert api.upload_folder.call_args.kwargs["repo_id"] == "me/ross-tiny"
    assert api.upload_folder.call_args.kwargs["revision"] == "main"


def test_push_from_trainer_publishes_from_the_main_process_only(tmp_path):
    args = SimpleNamespace(hub_model_id="me/ross-tiny", hub_private_repo=True, hub_revision="v1", hub_token="hf_x",
                           output_dir=str(tmp_path / "out"))  # fmt: skip
    folder = tmp_path / "out" / "model"
    with mock.patch.object(publish, "publish_folder", return_value="published") as publish_folder:
        main_rank = SimpleNamespace(args=args, hub_model_id=None, is_world_process_zero=lambda: True)
        # As RossTrainer.push_to_hub would forward its arguments: None means "from the TrainingArguments".
        assert publish.push_from_trainer(main_rank, folder, token=None, revision=None, private=None) == "published"
        publish_folder.assert_called_once_with(
            folder, "me/ross-tiny", commit_message="End of training", private=True, revision="v1", token="hf_x",
            verify_device="cpu",
        )  # fmt: skip
        other_rank = SimpleNamespace(args=args, is_world_process_zero=lambda: False)
        assert publish.push_from_trainer(other_rank, folder) is None
        assert publish_folder.call_count == 1
