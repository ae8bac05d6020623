"""Shared fixtures: the tiny offline base model is built once (cached by recipe) and reused."""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path

import pytest

from graftline.engine.common.heap import collect_less_often
from graftline.engine.toy.pinned_math import pin_math

# The suite's training takes the math path the shipped toy base was built on (AVX2 kernels in
# ATen, MKL and oneDNN), whatever the CPU offers; set before torch is imported. A path the user
# chose wins: `ATEN_CPU_CAPABILITY=default make test` runs the plain one (docs/reproducibility.md).
pin_math()
# Fewer young-generation collections while the stack imports and trains, as in the engine's
# processes (common/heap.py); the heap is frozen after collection, below.
collect_less_often()

import torch  # noqa: E402

# One thread: these models are so small that a second thread only adds synchronisation, and on
# a busy 2-core machine it made a training step 40× slower. Engines started as subprocesses by
# the tests inherit the same setting through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
# every event a test emits (in process or in an engine it starts) fits its typed record
os.environ.setdefault("GRAFTLINE_CHECK_EVENTS", "1")
# The per-user run index and the console's config file live in a directory of this test session,
# never in the real user's ~/.local/state or ~/.config (engines started by tests inherit it).
_SESSION_HOME = tempfile.mkdtemp(prefix="graftline-tests-")
os.environ["GRAFTLINE_STATE_DIR"] = os.path.join(_SESSION_HOME, "state")
os.environ["XDG_CONFIG_HOME"] = os.path.join(_SESSION_HOME, "config")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _own_state_and_config(tmp_path_factory: pytest.TempPathFactory,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own run index and config file: a run one test registers, or a theme one
    test picks, never changes what another test's console opens on."""
    home = tmp_path_factory.mktemp("graftline-home")
    monkeypatch.setenv("GRAFTLINE_STATE_DIR", str(home / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """How the tests are shared between xdist's workers (`--dist loadgroup
    --no-loadscope-reorder`): a file's tests stay together on one worker (its module fixtures are
    built once), except tests marked `spread`, which each go to whichever worker is free. A file
    of long independent tests (the family matrix) would otherwise hold one worker for most of
    the suite while the other sits idle.

    The order: the toy base ships with graftline and is only copied into an empty cache, but a
    forced `GRAFTLINE_TOY_SEED` builds it (about 90 s, under a lock) and every other worker that
    needs it waits. So: first one file that needs it (its worker builds), then the spread tests,
    slow first (they balance the workers best while there is most left to do), then every file
    that never asks for the base, then the rest, the files with the most slow tests first so that
    no long file starts last. Within a file, the order is the file's own."""
    files: dict[str, list[pytest.Item]] = {}
    spread: list[pytest.Item] = []
    for item in items:
        if item.get_closest_marker("spread"):
            spread.append(item)
        else:
            files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))

    def needs_base(file: list[pytest.Item]) -> bool:
        return any(name.startswith("toy_base") for item in file
                   for name in getattr(item, "fixturenames", ()))

    def weight(file: list[pytest.Item]) -> tuple[int, int]:
        return (-sum(1 for item in file if item.get_closest_marker("slow")), -len(file))

    building = sorted((f for f in files.values() if needs_base(f)), key=weight)
    rest = [f for f in files.values() if not needs_base(f)]
    spread.sort(key=lambda item: item.get_closest_marker("slow") is None)
    order = building[:1] + [[item] for item in spread] + rest + building[1:]
    items[:] = [item for file in order for item in file]


# Python's full (generation-2) collections rescan every live object, and a worker that has
# imported torch, transformers, PEFT and TRL holds about a million of them, none of them garbage:
# measured, a quarter of the in-process tests' CPU went to those rescans (test_checks_families
# and test_trl_knobs: 13 s of 48). So once collection has imported the test modules, and again
# before a test whenever earlier tests' lazy imports have grown the heap, the survivors are
# moved out of the collector's sight (`gc.freeze`, after a full collect: no garbage is kept).
# Objects a test creates are collected as before; the engine does the same for its own
# processes (common/heap.py).
_frozen_at = 0  # len(sys.modules) at the last freeze
GROWTH = 100  # modules imported since then that make another freeze worth its collect


def _freeze_heap() -> None:
    global _frozen_at
    gc.collect()
    gc.freeze()
    _frozen_at = len(sys.modules)


def pytest_collection_finish(session: pytest.Session) -> None:
    _freeze_heap()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if len(sys.modules) - _frozen_at > GROWTH:
        _freeze_heap()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The toy base every training test stands on, and the accuracy its build measured (a weak
    base makes half the suite fail for no fault of the code: say up front which one is used)."""
    from graftline.engine.toy import describe_base
    from graftline.engine.toy.pinned_math import PINNED_MATH

    pins = " ".join(f"{name}={os.environ[name]}" for name in PINNED_MATH if name in os.environ)
    return [describe_base(),
            f"CPU math path: {torch.backends.cpu.get_cpu_capability()} ({pins or 'not pinned'})"]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    # the header ran before the base was built on a fresh cache: say it again at the end
    from graftline.engine.toy import describe_base

    terminalreporter.write_line(describe_base())


@pytest.fixture(scope="session")
def toy_base() -> Path:
    """The pre-trained tiny Llama (two-digit addition), saved with save_pretrained, built once
    and self-checked: it reaches >= 95% held-out plain exact match or the build fails."""
    from graftline.engine.toy.model import build_base

    return build_base()


@pytest.fixture(scope="session")
def toy_base_tied() -> Path:
    """A tiny model with tied input/output embeddings, for export tests: they compare logits, not
    accuracy, so a short pre-training keeps the first (uncached) build cheap (no threshold)."""
    from graftline.engine.toy.model import build_base
    from graftline.engine.toy.recipe import TIED_TEST_RECIPE

    return build_base(TIED_TEST_RECIPE)
