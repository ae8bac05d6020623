"""Experiment trackers (`[pipeline] report_to`, docs/trackers.md): which ones, the package each
needs, and the credentials a run would otherwise stop on. Checked by `validate`, before anything
trains; nothing here imports a tracker (find_spec only).

The trackers themselves are transformers' own integrations (stages/tracking.py lines their steps
up across stages).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from graftline.engine.pipeline.problems import Problem

if TYPE_CHECKING:
    from graftline.engine.pipeline.file import PipelineFile


@dataclass(frozen=True)
class Tracker:
    name: str
    modules: tuple[str, ...]  # any one of them importable is enough
    package: str  # what pip installs


TRACKERS: dict[str, Tracker] = {
    # transformers' TensorBoardCallback writes through torch.utils.tensorboard (the tensorboard
    # package) or, without it, tensorboardX
    "tensorboard": Tracker("tensorboard", ("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": Tracker("wandb", ("wandb",), "wandb"),
    "trackio": Tracker("trackio", ("trackio",), "trackio"),
    "mlflow": Tracker("mlflow", ("mlflow",), "mlflow"),
}
# WANDB_MODE values that need no account
WANDB_LOCAL_MODES = frozenset({"offline", "disabled", "dryrun"})


def installed(tracker: Tracker) -> bool:
    return any(importlib.util.find_spec(m) is not None for m in tracker.modules)


def _wandb_logged_in(home: Path) -> bool:
    """`wandb login` writes the key into ~/.netrc for api.wandb.ai (or $WANDB_BASE_URL's host)."""
    netrc = Path(os.environ.get("NETRC", home / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(errors="replace")
    except OSError:
        return False


def credential_problem(name: str, env: Mapping[str, str], home: Path) -> tuple[str, str] | None:
    """(message, fix) when the tracker would need an account the run does not have."""
    if name != "wandb":
        return None  # tensorboard, trackio and mlflow log to local files by default
    if env.get("WANDB_API_KEY") or env.get("WANDB_MODE", "").lower() in WANDB_LOCAL_MODES:
        return None
    if _wandb_logged_in(home):
        return None
    return ("wandb needs an account: WANDB_API_KEY is not set, `wandb login` has not been run, "
            "and WANDB_MODE is not offline",
            "export WANDB_API_KEY=… (or run `wandb login`), or export WANDB_MODE=offline to log "
            "locally and `wandb sync` later")


def problems(pf: PipelineFile, env: Mapping[str, str] | None = None,
             home: Path | None = None) -> list[Problem]:
    """A missing package or credential for each tracker in `report_to`. `env`: the environment
    the run will start with (the caller's own by default: `graftline run` passes it on)."""
    from graftline.engine.pipeline.file import HEADER_BLOCK

    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    wanted = pf.pipeline.pipeline.report_to
    line = pf.line(HEADER_BLOCK, "report_to")
    found: list[Problem] = []
    seen: set[str] = set()
    for name in wanted:
        if name in seen:
            found.append(Problem(f"report_to names '{name}' twice", str(pf.path), line,
                                 None, "pipeline.report_to", "name each tracker once",
                                 severity="warning"))
            continue
        seen.add(name)
        tracker = TRACKERS[name]
        if not installed(tracker):
            found.append(Problem(
                f"report_to = '{name}' needs the {tracker.package} package, which is not "
                "installed", str(pf.path), line, None, "pipeline.report_to",
                f"pip install {tracker.package} (in graftline's environment), or remove "
                f"'{name}' from report_to"))
        missing = credential_problem(name, env, home)
        if missing is not None:
            found.append(Problem(missing[0], str(pf.path), line, None, "pipeline.report_to",
                                 missing[1]))
    return found
