"""Shared fixtures: tiny component repos written once per session (offline, seconds)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are tiny: one intra-op thread is many times faster than two on this 2-core machine (OpenMP
# synchronisation dominates matmuls this small, badly so when the other core is busy). Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Small denoiser for tests (the reference is 1024 wide, 3 deep, 16 heads).
TINY_OBJECTIVE = {"denoiser_hidden_size": 64, "denoiser_depth": 2, "denoiser_num_heads": 4, "num_noise_draws": 2}


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    from modeling_ross.testing import write_tiny_components

    return write_tiny_components(tmp_path_factory.mktemp("components"))


@pytest.fixture(scope="session")
def tiny_processor(tiny_components):
    from modeling_ross import RossProcessor

    return RossProcessor.from_components(tiny_components["vision_model"], tiny_components["language_model"])


@pytest.fixture(scope="session")
def kl16_vae(tmp_path_factory):
    """A KL-16 teacher (5 blocks: downsample 16, no folding), as the paper's default: the native-VLM tests' teacher."""
    from modeling_ross.testing import write_tiny_vae

    return str(write_tiny_vae(tmp_path_factory.mktemp("vae"), block_out_channels=(8, 16, 16, 16, 16)))


def run_demo_cli(out: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m ross.train.demo --fast --out OUT ARGS...` (a smoke run: tiny step counts), checked for success."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("DS_ACCELERATOR", None)  # as a user's shell: the demo must keep DeepSpeed quiet itself (console test)
    result = subprocess.run(
        [sys.executable, "-m", "ross.train.demo", "--fast", "--out", str(out), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="session")
def fast_demo(tmp_path_factory):
    """One `make demo`-like run per test session (the demo's tests and README's quick start share it): returns the
    output root (what `runs/` is after `make demo`), the summary and the console output (progress goes to stderr)."""
    import json

    out = tmp_path_factory.mktemp("demo") / "runs"
    result = run_demo_cli(out, "--probe")  # the per-quadrant probes are optional (a diagnostic); tested here
    summary = json.loads((out / "demo" / "summary.json").read_text())
    return out, summary, result.stdout + result.stderr


@pytest.fixture()
def tiny_model(tiny_components):
    import torch

    from modeling_ross import from_components

    torch.manual_seed(0)
    return from_components(**tiny_components, **TINY_OBJECTIVE)


# Prepended to scripts run by `run_isolated`: a machine where this project is not installed (no repo on sys.path,
# no editable-install finder), so remote-code loading is really what makes the model load.
ISOLATION_PRELUDE = """
import sys
sys.path = [p for p in sys.path if p not in ("", ".")]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f)]
try:
    import modeling_ross
    raise SystemExit("modeling_ross is importable")
except ImportError:
    pass
"""


def run_isolated(script: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter that cannot import this project, with a private remote-code cache."""
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(Path(cwd) / "modules"), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-c", ISOLATION_PRELUDE + textwrap.dedent(script)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env},
    )  # fmt: skip


def load_spaces_app():
    """`spaces/app.py` as the module `ross_spaces_app` (a Space is a script, not a package), loaded once."""
    import importlib.util

    if "ross_spaces_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ross_spaces_app", REPO_ROOT / "spaces" / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["ross_spaces_app"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["ross_spaces_app"]
