#!/usr/bin/env bash
# The GPU set, for when a CUDA device is available (one H100/H200; aimed at < 8 min after `make venv`):
# the model's paths on CUDA in bf16 (tests/test_device.py: training step, cached targets, generation,
# reconstruction, save/reload, each against fp32 on the CPU), the three cost benchmarks in bf16 (with MFU), then the
# ablation's cuda mode. Outputs go under runs/bench-gpu/. The rest of the test suite builds its models on the CPU.
# Untested on a GPU so far: no device was lent to the session that wrote it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/bench-gpu}
PEAK=${PEAK_TFLOPS:-989}  # dense bf16 peak of an H100 / H200 SXM
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device')"
ROSS_TEST_DEVICE=cuda ROSS_TEST_DTYPE=bfloat16 $PY -m pytest -q tests/test_device.py
$PY bench/train_step.py --device cuda --dtype bfloat16 --peak-tflops "$PEAK" --out "$OUT/train_step"
$PY bench/inference.py --device cuda --dtype bfloat16 --out "$OUT/inference"
$PY bench/eval_batching.py --device cuda --dtype bfloat16 --items 96 --out "$OUT/eval_batching"
$PY bench/ablation.py --mode cuda --device cuda --out "$OUT/ablation"
