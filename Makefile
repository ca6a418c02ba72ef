# The two commands of the README: `make demo` (the default run) and `make test`.
# Each creates .venv and installs what it needs; nothing is downloaded at run time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ross-installed

.PHONY: demo test venv browser clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch 2.13 (a bare `torch` could pull a multi-GB CUDA build).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian's chromium for the Spaces browser test (skipped if it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the browser test will be skipped"; \
	  fi; }

test: venv browser
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q tests

demo: venv
	HF_HUB_OFFLINE=1 $(PY) -m ross.train.demo

clean:
	rm -rf runs .pytest_cache
