# The two commands of the README: `make demo` (the default run) and `make test`.
# Each creates .venv and installs what it needs; nothing is downloaded at run time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ross-installed
# lmms-eval lives in a venv of its own: a plain install of it replaces torch, and importing it changes global state
# (Pillow's LOAD_TRUNCATED_IMAGES) that the main suite tests.
LMMS_VENV := .venv-lmms
LMMS_PY := $(LMMS_VENV)/bin/python
LMMS_STAMP := $(LMMS_VENV)/.ross-installed
LMMS_PINS := eval/lmms-eval-requirements.txt
LMMS_CONSTRAINTS := eval/lmms-eval-constraints.txt
# setuptools ends every editable build with an informational "Editable installation ... be careful with folders ...
# with the same name as your package" message that a user cannot act on; this filter drops that message only.
EDITABLE_QUIET := PYTHONWARNINGS="ignore:Editable installation"

.PHONY: demo test test-main test-extended test-lmms venv venv-lmms browser clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch 2.13 (a bare `torch` could pull a multi-GB CUDA build).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(EDITABLE_QUIET) $(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian's chromium for the Spaces browser test (skipped if it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the browser test will be skipped"; \
	  fi; }

# torch 2.13 + `.[dev]` as in .venv (filelock < 4 kept), then lmms-eval and the few packages it imports, pinned,
# with --no-deps (its full dependency list is ~50 packages and a different torch).
venv-lmms: $(LMMS_STAMP)

$(LMMS_STAMP): setup.cfg pyproject.toml $(LMMS_PINS) $(LMMS_CONSTRAINTS)
	test -x $(LMMS_PY) || $(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_PY) -m pip install -q --upgrade pip
	$(EDITABLE_QUIET) $(LMMS_PY) -m pip install -q -c $(LMMS_CONSTRAINTS) torch==2.13.0 -e ".[dev]"
	$(LMMS_PY) -m pip install -q --no-deps -c $(LMMS_CONSTRAINTS) -r $(LMMS_PINS)
	touch $(LMMS_STAMP)

# The tests that need lmms-eval, in .venv-lmms and a process of their own (the plugin, the real `lmms-eval eval` CLI
# included, and the scoring cross-check), then the main suite (lmms-eval absent: those tests skip), whose summary line
# is the last one printed. The main suite runs in two pytest-xdist workers (one test file per worker at a time:
# a file's module fixtures are built once); `--durations=15` lists the slowest tests.
test: test-lmms test-main

test-main: venv browser
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -n 2 --dist loadfile -m "not extended" tests --durations=15

# The rest of the native DeepSpeed matrix (ZeRO-2 on Qwen3-VL and LLaVA-OneVision; ZeRO-2 and ZeRO-3 on Gemma 3 and
# SmolVLM), about 2 min.
test-extended: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -m extended tests

test-lmms: venv-lmms
	HF_HUB_OFFLINE=1 $(LMMS_VENV)/bin/pytest -q tests/test_lmms_plugin.py \
	  tests/test_scoring.py::test_cross_check_with_lmms_eval

demo: venv
	HF_HUB_OFFLINE=1 $(PY) -m ross.train.demo

clean:
	rm -rf runs .pytest_cache
