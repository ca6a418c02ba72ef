"""Shared fixtures: tiny component repos written once per session (offline, seconds)."""

import os
import sys
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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


@pytest.fixture()
def tiny_model(tiny_components):
    import torch

    from modeling_ross import RossForConditionalGeneration

    torch.manual_seed(0)
    return RossForConditionalGeneration.from_components(**tiny_components, **TINY_OBJECTIVE)
