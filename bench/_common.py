"""What the benchmark scripts of `bench/` share: noise images, device synchronisation, writing the JSON + markdown."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import torch
from PIL import Image


def noise_images(num: int, side: int, seed: int = 0) -> list[Image.Image]:
    """`num` RGB images of uniform noise, `side` x `side` px, the same for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    return [Image.fromarray(torch.randint(0, 256, (side, side, 3), generator=generator, dtype=torch.uint8).numpy())
            for _ in range(num)]  # fmt: skip


def processor_side(processor) -> int:
    """The side of the square images the processor's image processor produces."""
    size = processor.image_processor.size
    return size.get("height") or size.get("shortest_edge")


def synchronize(device) -> None:
    """Wait for queued CUDA work, so a timer measures it (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def cpu_model() -> str:
    """The CPU's model name (a stored result names it: results are bit-exact only on the same kind of CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> tuple[str, bool]:
    """(the repository's HEAD commit, whether tracked files differ from it): a stored result names them."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                              text=True).stdout.strip()  # fmt: skip

    return git("rev-parse", "HEAD") or "unknown", bool(git("status", "--porcelain", "--untracked-files=no"))


def write_outputs(out: Path, stem: str, payload: dict, report: str) -> None:
    """`<out>/<stem>.json` and `<out>/<stem>.md`, and the markdown on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{stem}.md").write_text(report)
    print(report)
