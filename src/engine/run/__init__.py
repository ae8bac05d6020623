"""graftline.engine.run: a run directory and the background engine that drives it.

Modules: launch (create and spawn), daemon (the engine process), runner (stages in order),
client (what a console or CLI reads and sends), state (state.json, liveness), control (the
owner-only socket), events (events.jsonl), summary (events.summary.json), telemetry,
between_stages ([cleanup] between stages).
"""

from __future__ import annotations

from graftline.engine.common.lazy import lazy_exports

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
    "run_details": "client",
    "RunDetails": "client",
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
    "open_summary": "summary",
    "fold_rehearsal": "summary",
    "fold_samples": "summary",
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
