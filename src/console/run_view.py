"""The console's view model of a run: the engine's fold plus what only a screen needs.

The run itself (stages, status, boundaries, latest metrics, throughput) is folded by the
engine's `RunFold` (engine/run/fold.py), the same fold the summary and the reconciler use;
`RunModel` adds display: log lines, raw curve points between the summary's downsamples, the
telemetry record, ETA and the final model. Pure and incremental: `RunModel.apply(events)` may be
called with the whole history at once or with each new batch as the log grows, and gives the
same model either way. No Textual, no I/O, so every rule about what the console shows is
unit-tested without a terminal.

The records it fills (a stage, a log line, a curve, a telemetry sample) are
`console/stage_view.py`'s; a distributed stage's ranks, `console/ranks.py`'s; how numbers,
times and paths are written, `console/formats.py`'s.

Curves are kept per metric on the run's global-step axis in flat `array('d')` columns: a million
points cost 16 MB and the chart reads them without copying (numpy `frombuffer`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from graftline.console.formats import (
    evaluation_text,
    format_metric,
    human_bytes,
    short_metric,
)
from graftline.console.stage_view import (
    KEY_METRIC,
    TRAINING_KINDS,
    LogLine,
    Series,
    StageView,
)
from graftline.engine.common import Telemetry, record_of
from graftline.engine.run import EVAL_BOOKKEEPING, LATEST_SKIP, Event, RunFold

if TYPE_CHECKING:
    from graftline.engine.run import Summary

# Metrics the chart can show, in the order the `m` key cycles them.
CHART_METRICS: tuple[str, ...] = (
    "loss", "eval_loss", "rewards/margins", "rewards/accuracies", "reward", "kl",
    "learning_rate", "grad_norm",
)
LOG_LINES = 500

ENDED = ("finished", "failed", "stopped", "crashed")


class RunModel:
    """Everything the dashboard shows, folded from events. Mutated only through `apply`."""

    def __init__(self) -> None:
        # The run itself (stages, status, boundaries, throughput …): the engine's one fold.
        self.state: RunFold[StageView] = RunFold(StageView)
        self.started: float | None = None  # time of the first event
        self.last_time: float | None = None
        self.series: dict[str, Series] = {}
        self.log: deque[LogLine] = deque(maxlen=LOG_LINES)
        self.engine_status: str | None = None  # what state.json says (see observe_engine)
        self.events_seen = 0
        self.last_seq = 0
        self.version = 0  # bumped on every apply that changed something
        self.summary: Summary | None = None  # set by load_summary (the follower's, bounded)

    # -- the fold's answers, as the widgets ask them ------------------------------------------

    @property
    def run(self) -> str | None:
        return self.state.run.get("run")

    @property
    def pipeline(self) -> str | None:
        return self.state.run.get("pipeline")

    @property
    def backend(self) -> str | None:
        return self.state.run.get("backend")

    @property
    def status(self) -> str:  # waiting | running | finished | failed | stopped
        return self.state.status

    @property
    def message(self) -> str | None:
        return self.state.message

    @property
    def finished_time(self) -> float | None:
        return self.state.finished_time

    @property
    def current(self) -> str | None:
        return self.state.current

    @property
    def resumes(self) -> int:
        return self.state.resumes

    @property
    def throughput(self) -> dict[str, float]:
        return self.state.throughput

    @property
    def rehearsal(self) -> dict[str, Any] | None:
        """The engine's rehearsal before stage 1 (status, stage, passed, seconds, message)."""
        return self.state.rehearsal

    @property
    def telemetry(self) -> Telemetry | None:
        """The latest telemetry sample, typed; None before the first."""
        data = self.state.telemetry
        return None if data is None else record_of("telemetry", data)

    @property
    def stages(self) -> list[StageView]:
        return list(self.state.stages.values())

    @property
    def boundaries(self) -> list[tuple[int, str]]:
        """(global step where a training stage starts, its name): the chart's dividers."""
        return [(step, name) for step, name, kind in self.state.boundaries
                if kind in TRAINING_KINDS]

    # -- folding ---------------------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> bool:
        changed = False
        for event in events:
            if event.seq and event.seq <= self.last_seq:
                continue  # a re-read of what we already folded (e.g. after a reader restart)
            self.last_seq = event.seq or self.last_seq
            self.events_seen += 1
            if self.started is None:
                self.started = event.time
            self.last_time = event.time
            if event.type == "metrics":
                _metrics(self, event)
            else:
                self.state.apply(event.type, event.stage, event.data, event.time)
                told = _TOLD.get(event.type)
                if told is not None:
                    told(self, event)
            changed = True
        if changed:
            self.version += 1
        return changed

    def stage(self, name: str | None) -> StageView | None:
        return self.state.stages.get(name) if name is not None else None

    def _log(self, event: Event, level: str, text: str) -> None:
        since = event.time - self.started if self.started is not None else 0.0
        self.log.append(LogLine(since, level, event.stage, text))

    # -- attaching from the engine's summary (see follower.py) ------------------------------

    def load_summary(self, summary: Summary, notices: Iterable[str] = ()) -> None:
        """Start from the engine's summary instead of the whole log (then `apply` the tail)."""
        _load_summary(self, summary, list(notices))

    def adopt_series(self, summary: Summary) -> None:
        """Replace the curves by the summary's whole-run level (bounded, spikes kept)."""
        _adopt_series(self, summary)

    # -- questions the widgets ask ---------------------------------------------------------

    @property
    def current_stage(self) -> StageView | None:
        return self.stage(self.current)

    def default_metric(self) -> str:
        """Live: the current stage's key metric. Ended: loss, the one curve spanning stages."""
        if self.status != "running" and "loss" in self.series:
            return "loss"
        stage = self.current_stage
        if stage is None:
            for candidate in reversed(self.stages):
                if candidate.kind in KEY_METRIC and candidate.status != "pending":
                    stage = candidate
                    break
        metric = KEY_METRIC.get(stage.kind, "loss") if stage else "loss"
        return metric if metric in self.series or not self.series else next(iter(self.series))

    def chart_metrics(self) -> list[str]:
        """The metrics that have data, in the chart's cycling order (known ones first)."""
        known = [m for m in CHART_METRICS if m in self.series]
        return known or sorted(self.series)

    def elapsed(self, now: float | None = None) -> float | None:
        if self.started is None:
            return None
        if self.finished_time is not None:
            return self.finished_time - self.started
        end = now if now is not None else self.last_time
        return None if end is None else max(0.0, end - self.started)

    def eta(self) -> float | None:
        """The whole run's ETA: the sum of `stage_eta` over the stages still to do."""
        if self.run_status() != "running":
            return None
        total, known = 0.0, False
        for stage in self.stages:
            remaining = self.stage_eta(stage)
            if remaining is not None:
                total += remaining
                known = True
        return total if known else None

    def seconds_per_step(self, kind: str) -> float | None:
        """Measured seconds per step for one training kind: finished stages of that kind, else
        the running one (GRPO steps cost several SFT steps, so kinds never share a rate)."""
        for kinds in ((kind,), tuple(TRAINING_KINDS)):
            # its own kind first; a kind not measured yet borrows every training stage's rate
            seconds = steps = 0.0
            for stage in self.stages:
                if stage.kind not in kinds or stage.status not in ("complete", "skipped"):
                    continue
                ran = (stage.max_steps or stage.step) - stage.started_step
                if stage.seconds and ran > 0:
                    seconds, steps = seconds + float(stage.seconds), steps + ran
            if steps:
                return seconds / steps
            current = self.current_stage
            if current is not None and current.kind in kinds:
                rate = current.latest.get("steps_per_s")
                if rate:
                    return 1.0 / rate
        return None

    def seconds_per_stage(self, kind: str) -> float | None:
        """Measured seconds of a stage with no steps (merge, eval, export …): the mean so far."""
        took = [float(s.seconds) for s in self.stages
                if s.kind == kind and s.status in ("complete", "skipped") and s.seconds]
        return sum(took) / len(took) if took else None

    def stage_eta(self, stage: StageView) -> float | None:
        """Seconds this stage still needs; 0 when done; None when nothing measured says."""
        if stage.status not in ("pending", "running"):
            return 0.0 if stage.status in ("complete", "skipped") else None
        if stage.kind in TRAINING_KINDS and stage.max_steps:
            per_step = self.seconds_per_step(stage.kind)
            if stage.status == "running" and stage.latest.get("steps_per_s"):
                per_step = 1.0 / stage.latest["steps_per_s"]  # its own live rate first
            if per_step is None:
                return None
            return max(0, stage.max_steps - stage.step) * per_step
        took = self.seconds_per_stage(stage.kind)
        if took is None:
            return None
        if stage.status == "running" and stage.started is not None and self.last_time:
            return max(0.0, took - (self.last_time - stage.started))
        return took

    def final_checkpoint(self) -> tuple[StageView, dict[str, Any]] | None:
        """The pipeline's final model: the export stage's output, else the newest exportable
        checkpoint of the last stage (in pipeline order) that wrote one."""
        for stage in reversed(self.stages):
            for saved in reversed(stage.checkpoints):
                if saved.get("kind") == "export" and saved.get("path"):
                    return stage, saved
        for stage in reversed(self.stages):
            saved = stage.exportable
            if saved is not None:
                return stage, saved
        return None

    def final_result(self) -> str:
        """One line for a run's outcome (e.g. `graftline ls`): the last evaluation, else the last
        training stage's key metric."""
        for stage in reversed(self.stages):
            text = evaluation_text(stage.evaluation)
            if text:
                return f"{stage.name}: {text}"
        for stage in reversed(self.stages):
            key = stage.key_metric
            if key is not None and stage.status != "pending":
                return f"{stage.name}: {short_metric(key[0])} {format_metric(key[1])}"
        return ""

    def observe_engine(self, status: str | None) -> bool:
        """Fold what state.json says (paused, crashed) that no event can: a dead engine writes
        nothing. A crash gets one log line with the way out. True when something changed."""
        if status == self.engine_status:
            return False
        self.engine_status = status
        if status == "crashed" and self.status == "running":
            since = (self.last_time or 0.0) - (self.started or 0.0)
            run = self.run or "RUN"
            self.log.append(LogLine(since, "error", self.current,
                                    "the engine stopped without a word (killed or crashed); "
                                    f"`graftline resume {run}` continues from the last "
                                    "checkpoint"))
        if status in ("finished", "failed", "stopped") and self.status == "running":
            # the engine wrote its end to state.json, but the log we read stops before it
            since = (self.last_time or 0.0) - (self.started or 0.0)
            self.log.append(LogLine(since, "warning", None,
                                    f"state.json says the run {status}, but the event log ends "
                                    "before that (truncated or damaged): stages after its last "
                                    "event may show less than they did"))
        self.version += 1
        return True

    def run_status(self) -> str:
        """Events say what happened; the engine's state adds what events cannot (paused, dead)."""
        if self.status in ("finished", "failed", "stopped"):
            return self.status
        if self.engine_status in ("paused", "crashed", "failed", "stopped", "finished"):
            return self.engine_status
        return self.status

    def progress(self) -> float | None:
        steps = [(s.max_steps or 0, s.progress or 0.0) for s in self.stages if s.max_steps]
        whole = sum(m for m, _ in steps)
        if not whole:
            return None
        return sum(m * p for m, p in steps) / whole


# -- what each event tells the log (the fold itself is the engine's RunFold) ------------------


def _run_started(model: RunModel, event: Event) -> None:
    resumed = " (resumed)" if event.data.get("resumed") else ""
    model._log(event, "info", f"run {model.run or ''} started on {model.backend or '?'}{resumed}")


def _stage_started(model: RunModel, event: Event) -> None:
    view = model.stage(event.stage)
    if view is None:
        return
    again = f" (resumed from step {view.step})" if view.resumed else ""
    model._log(event, "info", f"{view.name}: {view.kind} started{again}")


RATES = ("tokens_per_s", "steps_per_s", "eta_s")


def _metrics(model: RunModel, event: Event) -> None:
    """A metric row: the fold's stage state, then the console's own raw curve points and an
    evaluation's log line."""
    data = event.data
    global_step = model.state.add_metrics([(event.stage, data)])[0]
    view = model.stage(event.stage)
    evals = {k: float(v) for k, v in data.items() if k.startswith("eval_")
             and k not in EVAL_BOOKKEEPING and isinstance(v, int | float)
             and not isinstance(v, bool)}
    if evals and view is not None:
        shown = ", ".join(f"{k} {format_metric(v)}" for k, v in evals.items())
        model._log(event, "info", f"{view.name}: evaluation at step {view.step}: {shown}")
    if global_step is None:
        return
    for key, value in data.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if key in LATEST_SKIP or key in RATES:
            continue
        series = model.series.get(key)
        if series is None:
            series = model.series[key] = Series()
        series.append(float(global_step), float(value))


def _checkpoint_saved(model: RunModel, event: Event) -> None:
    data = event.data
    if data.get("kind") != "trainer":
        size = _bytes(data.get("bytes"))
        # the manifest's `bytes`: every file under the stage directory (Trainer checkpoints
        # included), which is what deleting it frees; the lineage's weights-only size differs
        measured = f": stage directory {size} on disk" if size else ""
        model._log(event, "info", f"saved {data.get('kind', 'checkpoint')}{measured}")


def _check_result(model: RunModel, event: Event) -> None:
    status = str(event.data.get("status", "?"))
    if status != "pass":
        level = "error" if status == "fail" else "warning"
        model._log(event, level, f"check {event.data.get('name', '?')}: "
                                 f"{event.data.get('message', '')}")


def _warning(model: RunModel, event: Event) -> None:
    fix = event.data.get("fix")
    text = str(event.data.get("message", "")) + (f" — fix: {fix}" if fix else "")
    model._log(event, "warning" if event.type == "warning" else "error", text)


def _stage_finished(model: RunModel, event: Event) -> None:
    view = model.stage(event.stage)
    if view is None:
        return
    if view.status == "skipped":
        model._log(event, "info", f"{view.name}: done earlier (kept from before the resume)")
        return
    secs = f" in {view.seconds:.0f}s" if isinstance(view.seconds, int | float) else ""
    if view.status == "stopped":
        model._log(event, "info", f"{view.name}: stopped at step {view.step} on request{secs}")
        return
    evaluation = evaluation_text(view.evaluation)
    tail = f" — evaluation: {evaluation}" if evaluation else ""
    level = "info" if view.status == "complete" else "error"
    model._log(event, level, f"{view.name}: {view.status}{secs}{tail}")


def _run_finished(model: RunModel, event: Event) -> None:
    tail = f": {model.message}" if model.message else ""
    # a stop is the user's own request, not an error
    model._log(event, "error" if model.status == "failed" else "info",
               f"run {model.status}{tail}")


def _rehearsal(model: RunModel, event: Event) -> None:
    data = event.data
    phase = data.get("phase")
    if phase == "started":
        model._log(event, "info", str(data.get("message") or "rehearsing on a tiny twin"))
    elif phase == "twin":
        model._log(event, "info", f"rehearsal twin: {data.get('describe')}")
    elif phase == "stage" and data.get("status") in ("passed", "failed"):
        secs = data.get("seconds")
        took = f" in {secs:.1f}s" if isinstance(secs, int | float) else ""
        level = "info" if data.get("status") == "passed" else "error"
        model._log(event, level, f"rehearsal: {data.get('name')} ({data.get('kind')}) "
                                 f"{data.get('status')}{took}")
    elif phase == "finished":
        view = model.rehearsal or {}
        secs = view.get("seconds")
        took = f" in {secs:.0f}s" if isinstance(secs, int | float) else ""
        if view.get("status") == "passed":
            model._log(event, "info", f"rehearsal passed{took}: {view.get('passed')} stages")
        elif view.get("status") == "stopped":
            model._log(event, "info", "rehearsal stopped on request")
        # a failure: the `error` event that follows says it, with its fix


def sample_table(model: RunModel) -> tuple[list[str], list[str], list[list[tuple[str, bool]]]]:
    """The Samples view as data: (column titles, probes, rows of (answer, changed)). Probes down;
    across, what the model said before the first training stage, then at the end of each stage
    (a running stage: its start, until it ends). `changed`: differs from the column before."""
    columns: list[tuple[str, list[dict[str, Any]]]] = []
    for view in model.stages:
        if not view.samples:
            continue
        if not columns and "start" in view.samples:
            columns.append(("before", list(view.samples["start"].get("samples") or [])))
        if "end" in view.samples:
            columns.append((view.name, list(view.samples["end"].get("samples") or [])))
        elif view.status == "running" and "eval" in view.samples:
            # the latest evaluation during training: the live column
            latest = view.samples["eval"]
            step = latest.get("global_step")
            columns.append((f"{view.name} (step {step})" if step is not None
                            else f"{view.name} (now)", list(latest.get("samples") or [])))
        elif view.status == "running" and "start" in view.samples:
            columns.append((f"{view.name} (now)", list(view.samples["start"].get("samples")
                                                       or [])))
    probes: list[str] = []
    for _title, rows in columns:
        for row in rows:
            if row.get("prompt") not in probes:
                probes.append(str(row.get("prompt")))
    table: list[list[tuple[str, bool]]] = []
    for probe in probes:
        cells: list[tuple[str, bool]] = []
        previous: str | None = None
        for _title, rows in columns:
            answer = next((str(r.get("answer", "")) for r in rows if r.get("prompt") == probe),
                          "")
            cells.append((answer, previous is not None and answer != previous))
            previous = answer
        table.append(cells)
    return [title for title, _ in columns], probes, table


def expected_answers(model: RunModel) -> dict[str, str]:
    """The data's own answer to each probe, where a stage's samples carry one (the Samples
    view's "expected" column)."""
    found: dict[str, str] = {}
    for view in model.stages:
        for moment in (view.samples or {}).values():
            for row in moment.get("samples") or ():
                if row.get("expected") and row.get("prompt") not in found:
                    found[str(row.get("prompt"))] = str(row["expected"])
    return found


def _info(model: RunModel, event: Event) -> None:
    message = event.data.get("message")
    if message:
        model._log(event, "info", str(message))


_TOLD: dict[str, Callable[[RunModel, Event], None]] = {
    "run_started": _run_started,
    "stage_started": _stage_started,
    "checkpoint_saved": _checkpoint_saved,
    "check_result": _check_result,
    "warning": _warning,
    "error": _warning,
    "stage_finished": _stage_finished,
    "run_finished": _run_finished,
    "info": _info,
    "rehearsal": _rehearsal,
}


# -- loading a summary (the follower's attach path) ----------------------------------------


def _load_summary(model: RunModel, summary: Summary, notices: list[str]) -> None:
    # The log lines: the summary's recent rows told by the same handlers as live events.
    told = RunModel()
    told.started = summary.first_time
    told.apply(Event.from_dict(row) for row in summary.log)
    model.log.clear()
    model.log.extend(told.log)
    since = (summary.last_time or 0.0) - (summary.first_time or 0.0)
    model.log.extend(LogLine(since, "warning", None, text) for text in notices)
    model.started, model.last_time = summary.first_time, summary.last_time
    model.state = RunFold(StageView)
    model.state.load(summary.state.to_dict())
    model.events_seen, model.last_seq = summary.events, summary.last_seq
    model.summary = summary
    _adopt_series(model, summary)
    model.version += 1


def _adopt_series(model: RunModel, summary: Summary) -> None:
    series: dict[str, Series] = {}
    for key in summary.series:
        steps, low, high, last = summary.points(key)
        line = series[key] = Series()
        for x, lo, hi, la in zip(steps.tolist(), low.tolist(), high.tolist(), last.tolist(),
                                 strict=True):
            if lo != hi:  # min and max first, the last value last: a spike stays drawn
                line.append(x, lo)
                line.append(x, hi)
            line.append(x, la)
    model.series = series
    model.summary = summary


def fold(events: Iterable[Event]) -> RunModel:
    model = RunModel()
    model.apply(events)
    return model


def _bytes(value: Any) -> str:
    return human_bytes(value) if isinstance(value, int | float) else ""
