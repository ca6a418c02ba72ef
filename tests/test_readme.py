"""README's quick start runs as written: every fenced block after a `<!-- quickstart -->` line is run, in order, on
the tiny trained model of the session's demo run (`fast_demo`, conftest.py), with `runs/` pointing at that run's
output root. So README cannot drift from the code: a renamed flag, module or path fails here."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ross.eval.synthetic import BENCHMARKS


REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
MARKER = "<!-- quickstart -->"
BLOCK = re.compile(re.escape(MARKER) + r"\n```(\w+)\n(.*?)\n```", re.S)
SERVE_TIMEOUT_S = 120


def quickstart_blocks() -> list[tuple[str, str]]:
    """`(language, code)` of each marked block, in README order."""
    return BLOCK.findall(README.read_text())


def _for_this_run(code: str, runs: Path) -> str:
    """The block with `make demo`'s `runs/` replaced by the session's demo output root, and `.venv` by this
    interpreter's environment (what `make` creates and `make test` runs in)."""
    return code.replace(".venv/bin/activate", f"{sys.prefix}/bin/activate").replace("runs/", f"{runs}/")


def _env() -> dict:
    """As after `source .venv/bin/activate`: this interpreter's `python` first on PATH; offline, as `make` runs."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(language: str, code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"README block failed:\n{code}\n--- stdout\n{result.stdout[-3000:]}\n" \
                                   f"--- stderr\n{result.stderr[-3000:]}"  # fmt: skip
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_stop(code: str) -> str:
    """Start a block that serves forever (the Space), wait until its page answers, stop it; returns the page."""
    port = _free_port()
    env = {**_env(), "GRADIO_SERVER_PORT": str(port)}  # Gradio's own setting; the block keeps its default port
    process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", code], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"README block exited with {process.returncode}:\n{code}\n{process.stdout.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    return response.read().decode("utf-8", "replace")
            except OSError:
                time.sleep(1)
        pytest.fail(f"README block did not serve http://127.0.0.1:{port}/ within {SERVE_TIMEOUT_S} s:\n{code}")
    finally:
        os.killpg(process.pid, 15)  # the block's whole process group (bash and the Python it started)
        process.wait(timeout=30)


def test_quickstart_blocks_are_marked_and_use_what_make_demo_writes():
    blocks = quickstart_blocks()
    languages = [language for language, _ in blocks]
    assert set(languages) <= {"bash", "python"} and languages.count("python") == 1, languages
    assert blocks[0] == ("bash", "source .venv/bin/activate")  # the venv `make` creates (Makefile: VENV := .venv)
    assert "VENV := .venv" in (REPO_ROOT / "Makefile").read_text()
    for _, code in blocks[1:]:
        assert "runs/demo/model" in code, code  # `make demo`'s model (ross.train.demo's default --out is runs/)
    text = README.read_text()
    assert text.count(MARKER) == len(blocks)  # every marker is followed by a block
    assert all(name in text for name in BENCHMARKS)  # the benchmark folders README lists are the ones the demo writes
    assert (REPO_ROOT / "docs" / "example.png").is_file()


@pytest.mark.slow
def test_quickstart_runs_as_written(fast_demo, tmp_path):
    runs, summary, _ = fast_demo
    blocks = [(language, _for_this_run(code, runs)) for language, code in quickstart_blocks()]
    for language, code in blocks:
        if "spaces/app.py" in code:
            page = _serve_and_stop(code)
            assert "gradio" in page.lower()
            continue
        result = _run(language, code)
        if language == "python":  # generate and the pipeline both answer, greedily, the same
            answers = re.search(r"^generate: (.*)\npipeline: (.*)\n\Z", result.stdout, re.S | re.M)
            assert answers, result.stdout
            assert answers.group(1) == answers.group(2), result.stdout
        if "ross.eval.run" in code:
            scores = json.loads((runs / "eval" / "synthetic_pope" / "scores.json").read_text())
            assert scores["benchmark"] == "synthetic_pope"
            assert scores["num_items"] == summary["settings"]["benchmark_items"]
        if "ross.model_cards.publish" in code:
            published = {p.name for p in (runs / "publish").iterdir()}
            assert {"README.md", "config.json", "model.safetensors"} <= published, published
