"""Typed messages: what a worker thread found, carried into its screen, and a screen's requests
to the app.

A worker never calls into its screen from its thread (`call_from_thread(self._show, …)`): it
posts one of these (`post_message` is thread-safe), and the screen's handler shows it on the UI
thread. A screen that closed meanwhile drops the message instead of drawing into a dead widget.
What a worker raises is handled in one place, `WorkerFailures` (mixed into every screen that runs
workers; Textual's `Worker.StateChanged` does not bubble to the app): one notification with
what the worker was doing, the error and its fix.

Navigation (`OpenRun`, `ShowRuns`, `ShowLaunch`) bubbles from any screen to the app, which owns
the screens: a screen needs no typed handle on the app.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from textual.message import Message
from textual.worker import Worker, WorkerState

if TYPE_CHECKING:
    from textual.widget import Widget

__all__ = [
    "CleanupFinished", "ExportFinished", "ExportPlanned", "ExportProgress", "LineageScanned",
    "OpenRun", "PipelineChecked", "RunsListed", "ShowLaunch", "ShowRuns", "WorkerFailures",
    "worker_failure",
]


# -- a screen asks the app -----------------------------------------------------------------------


class OpenRun(Message):
    """Attach to a run: its dashboard replaces the current screen."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir


class ShowRuns(Message):
    """The runs screen."""


class ShowLaunch(Message):
    """The launch screen."""


# -- a worker tells its screen ---------------------------------------------------------------------


class _Result(Message):
    bubble: ClassVar[bool] = False  # for the screen that started the worker, no one else


class RunsListed(_Result):
    def __init__(self, rows: list[Any], problem: str | None) -> None:
        super().__init__()
        self.rows, self.problem = rows, problem


class LineageScanned(_Result):
    def __init__(self, lineage: Any, problem: str | None) -> None:
        super().__init__()
        self.lineage, self.problem = lineage, problem


class CleanupFinished(_Result):
    def __init__(self, message: str, failed: bool) -> None:
        super().__init__()
        self.message, self.failed = message, failed


class PipelineChecked(_Result):
    """The launch screen's report on a pipeline file: its validation and plan, or why neither
    could be read (`screens.launch.Report`)."""

    def __init__(self, report: Any) -> None:
        super().__init__()
        self.report = report


class ExportPlanned(_Result):
    """A plan (or why there is none) answering plan request `generation`; None: not an answer
    to one request (the worker could not read it, or stopped), shown whatever was asked since."""

    def __init__(self, plan: dict[str, Any] | None, problem: str | None,
                 generation: int | None) -> None:
        super().__init__()
        self.plan, self.problem, self.generation = plan, problem, generation


class ExportProgress(_Result):
    def __init__(self, phase: str, fraction: float, message: str) -> None:
        super().__init__()
        self.phase, self.fraction, self.message = phase, fraction, message


class ExportFinished(_Result):
    def __init__(self, result: dict[str, Any] | None, problem: str | None) -> None:
        super().__init__()
        self.result, self.problem = result, problem


# -- the one place a worker's failure is told ----------------------------------------------------


def worker_failure(worker: Worker[Any]) -> str:
    """A failed worker in one line: what it was doing (its `description`, else its name), the
    error, and for a `GraftlineError` its fix."""
    from graftline.engine.common import GraftlineError

    error = worker.error
    doing = worker.description or worker.name or "a background task"
    if isinstance(error, GraftlineError):
        fix = f" — fix: {error.fix}" if error.fix and not error.fix_in_text else ""
        return f"{doing} failed: {error}{fix}"
    return f"{doing} failed: {type(error).__name__}: {error}"


class WorkerFailures:
    """Mixed into a screen: any worker of it that raises is told as one error notification
    (`worker_failure`). Workers catch only what they show in place (a refused plan in its
    panel); everything else ends here instead of vanishing into Textual's log."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR:
            cast("Widget", self).notify(worker_failure(event.worker), severity="error",
                                        timeout=10)
