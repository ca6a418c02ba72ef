"""No silent stretch in `make demo`: the latent cache's tqdm bar and the component fits reach the console."""

import os
import sys

from ross.train.demo import stream_process
from ross.train.pretrain_components import _FitProgress


def test_latent_cache_progress_reaches_the_console(tmp_path, capsys):
    script = (
        "from tqdm import tqdm\n"
        "for _ in tqdm(range(4), desc='latent cache', unit='batch', mininterval=0):\n"
        "    pass\n"
    )
    with open(tmp_path / "train.log", "w") as f:
        assert stream_process([sys.executable, "-c", script], log=f, env=dict(os.environ), cwd=tmp_path) == 0
    out = capsys.readouterr().out
    assert "[demo] latent cache:   0% 0/4 (" in out and "[demo] latent cache: 100% 4/4 (" in out
    assert "|" not in out  # the bar itself stays in train.log
    assert "4/4" in (tmp_path / "train.log").read_text()


def test_component_fits_print_throttled_progress(monkeypatch):
    lines = []
    progress = _FitProgress("VAE", 500, lines.append)
    for step in range(500):
        progress.step(step, 0.5)
    assert lines == ["components:   VAE step 500/500, loss 0.5000, 0s (ETA 0s)"]  # fast: only the last line
    monkeypatch.setattr("ross.train.pretrain_components.PROGRESS_SECONDS", 0.0)
    lines.clear()
    progress = _FitProgress("tower", 3, lines.append)
    for step in range(3):
        progress.step(step, 1.0)
    assert [line.split(",")[0] for line in lines] == [f"components:   tower step {i}/3" for i in (1, 2, 3)]
