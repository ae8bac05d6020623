"""graftline.engine.run: a run directory and the background engine that drives it.

Modules: launch (create and spawn), daemon (the engine process), runner (stages in order),
client (what a console or CLI reads and sends), state (state.json, liveness), control (the
owner-only socket), events (events.jsonl), fold (the run folded from its events: `RunFold`, the
one fold the summary, the reconciler and the console share), summary (events.summary.json; its
series in summary_series, the file in summary_file), telemetry,
between_stages ([cleanup] between stages).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftline.engine.common.lazy import lazy_exports

if TYPE_CHECKING:  # what mypy sees through the lazy surface (lazy_exports at run time)
    from graftline.engine.run import between_stages as between_stages
    from graftline.engine.run import client as client
    from graftline.engine.run import control as control
    from graftline.engine.run import daemon as daemon
    from graftline.engine.run import events as events
    from graftline.engine.run import index as index
    from graftline.engine.run import launch as launch
    from graftline.engine.run import reconcile as reconcile
    from graftline.engine.run import rehearsal_phase as rehearsal_phase
    from graftline.engine.run import runner as runner
    from graftline.engine.run import state as state
    from graftline.engine.run import summary as summary
    from graftline.engine.run import summary_file as summary_file
    from graftline.engine.run import telemetry as telemetry
    from graftline.engine.run.client import DISK_FULL as DISK_FULL
    from graftline.engine.run.client import (
        RunDetails as RunDetails,
    )
    from graftline.engine.run.client import (
        RunInfo as RunInfo,
    )
    from graftline.engine.run.client import default_runs_dir as default_runs_dir
    from graftline.engine.run.client import disk_full_advice as disk_full_advice
    from graftline.engine.run.client import (
        find_run as find_run,
    )
    from graftline.engine.run.client import (
        follow_run as follow_run,
    )
    from graftline.engine.run.client import has_runs as has_runs
    from graftline.engine.run.client import (
        known_runs as known_runs,
    )
    from graftline.engine.run.client import (
        latest_run as latest_run,
    )
    from graftline.engine.run.client import (
        list_runs as list_runs,
    )
    from graftline.engine.run.client import read_fold as read_fold
    from graftline.engine.run.client import (
        read_state as read_state,
    )
    from graftline.engine.run.client import (
        run_details as run_details,
    )
    from graftline.engine.run.client import (
        send_command as send_command,
    )
    from graftline.engine.run.control import ControlError as ControlError
    from graftline.engine.run.events import (
        EVENTS as EVENTS,
    )
    from graftline.engine.run.events import (
        Event as Event,
    )
    from graftline.engine.run.events import (
        EventWriteError as EventWriteError,
    )
    from graftline.engine.run.events import (
        EventWriter as EventWriter,
    )
    from graftline.engine.run.events import (
        follow as follow,
    )
    from graftline.engine.run.events import (
        iter_rows as iter_rows,
    )
    from graftline.engine.run.events import (
        read_events as read_events,
    )
    from graftline.engine.run.events import (
        read_raw as read_raw,
    )
    from graftline.engine.run.events import (
        torn_tail as torn_tail,
    )
    from graftline.engine.run.fold import EVAL_BOOKKEEPING as EVAL_BOOKKEEPING
    from graftline.engine.run.fold import EXPORTABLE as EXPORTABLE
    from graftline.engine.run.fold import KEY_METRIC as KEY_METRIC
    from graftline.engine.run.fold import LATEST_SKIP as LATEST_SKIP
    from graftline.engine.run.fold import TRAINING_KINDS as TRAINING_KINDS
    from graftline.engine.run.fold import CheckState as CheckState
    from graftline.engine.run.fold import RunFold as RunFold
    from graftline.engine.run.fold import StageState as StageState
    from graftline.engine.run.group_io import (
        MACHINE_RANK_ENV as MACHINE_RANK_ENV,
    )
    from graftline.engine.run.group_io import (
        MachineRankConflict as MachineRankConflict,
    )
    from graftline.engine.run.group_io import (
        machine_rank_for_resume as machine_rank_for_resume,
    )
    from graftline.engine.run.launch import (
        PIPELINE_COPY as PIPELINE_COPY,
    )
    from graftline.engine.run.launch import (
        RUN_META as RUN_META,
    )
    from graftline.engine.run.launch import (
        LaunchError as LaunchError,
    )
    from graftline.engine.run.launch import (
        create_run as create_run,
    )
    from graftline.engine.run.launch import (
        resume_run as resume_run,
    )
    from graftline.engine.run.launch import (
        start_run as start_run,
    )
    from graftline.engine.run.reconcile import Reconciliation as Reconciliation
    from graftline.engine.run.runner import RunResult as RunResult
    from graftline.engine.run.runner import run_pipeline as run_pipeline
    from graftline.engine.run.state import RunState as RunState
    from graftline.engine.run.state import StateKeeper as StateKeeper
    from graftline.engine.run.summary import SUMMARY as SUMMARY
    from graftline.engine.run.summary import Summary as Summary
    from graftline.engine.run.summary_file import open_summary as open_summary


_EXPORTS = {
    "launch": "launch",
    "LaunchError": "launch",
    "create_run": "launch",
    "start_run": "launch",
    "resume_run": "launch",
    "PIPELINE_COPY": "launch",
    "RUN_META": "launch",
    "client": "client",
    "reconcile": "reconcile",
    "Reconciliation": "reconcile",
    "RunInfo": "client",
    "find_run": "client",
    "list_runs": "client",
    "latest_run": "client",
    "known_runs": "client",
    "has_runs": "client",
    "run_details": "client",
    "RunDetails": "client",
    "DISK_FULL": "client",
    "default_runs_dir": "client",
    "disk_full_advice": "client",
    "read_fold": "client",
    "index": "index",
    "read_state": "client",
    "send_command": "client",
    "follow_run": "client",
    "events": "events",
    "EVENTS": "events",
    "Event": "events",
    "EventWriter": "events",
    "read_events": "events",
    "read_raw": "events",
    "follow": "events",
    "iter_rows": "events",
    "torn_tail": "events",
    "EventWriteError": "events",
    "summary": "summary",
    "SUMMARY": "summary",
    "Summary": "summary",
    "summary_file": "summary_file",
    "open_summary": "summary_file",
    "RunFold": "fold",
    "StageState": "fold",
    "CheckState": "fold",
    "EXPORTABLE": "fold",
    "EVAL_BOOKKEEPING": "fold",
    "LATEST_SKIP": "fold",
    "KEY_METRIC": "fold",
    "TRAINING_KINDS": "fold",
    "rehearsal_phase": "rehearsal_phase",
    "state": "state",
    "RunState": "state",
    "StateKeeper": "state",
    "control": "control",
    "ControlError": "control",
    "runner": "runner",
    "RunResult": "runner",
    "run_pipeline": "runner",
    "daemon": "daemon",
    "telemetry": "telemetry",
    "between_stages": "between_stages",
    # scale-out: which machine a multi-node run's host resumes as
    "machine_rank_for_resume": "group_io",
    "MachineRankConflict": "group_io",
    "MACHINE_RANK_ENV": "group_io",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
