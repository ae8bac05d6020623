"""A distributed stage's ranks as the console shows them (scale-out: run/distributed.py).

From the latest telemetry sample: every rank of this host alive, dead (a zombie the launcher has
not reaped) or unseen (expected here but not sampled); after a group ended on a failure, the rank
the launcher saw die first.
"""

from __future__ import annotations

from dataclasses import dataclass

from graftline.console.run_view import RunModel
from graftline.console.stage_view import StageView

__all__ = ["RANK_STATES", "RankLiveness", "local_ranks", "rank_liveness"]

RANK_STATES = ("alive", "dead", "unseen", "ended")


@dataclass(frozen=True)
class RankLiveness:
    """What the console says about a distributed stage's process group."""

    stage: str
    world_size: int
    states: tuple[tuple[int, str], ...]  # (global rank, one of RANK_STATES) for this host's ranks
    failed_rank: int | None = None

    @property
    def alive(self) -> int:
        return sum(1 for _, state in self.states if state == "alive")

    @property
    def elsewhere(self) -> int:
        """Ranks of the group on other machines (a multi-node run): counted, not shown."""
        return self.world_size - len(self.states)


def local_ranks(view: StageView) -> range:
    """The global ranks that run on this host: torchrun and accelerate number them
    machine_rank × processes + local rank."""
    if not view.world_size:
        return range(0)
    here = view.processes or view.world_size
    first = (view.machine_rank or 0) * here
    return range(first, min(first + here, view.world_size))


def rank_liveness(model: RunModel) -> RankLiveness | None:
    """The running stage's group, from the latest telemetry sample (every rank of this host:
    alive, dead — a zombie the launcher has not reaped —, or unseen: expected here but not in the
    sample, starting or already gone); after a group ended on a failure, that stage's group with
    the rank the launcher saw die first. None when no distributed stage is in view."""
    live = model.run_status() in ("running", "paused")
    current = model.stage(model.current) if model.current else None
    if current is not None and live and (current.world_size or 0) > 1 \
            and current.failed_rank is None:
        sample = model.telemetry
        sampled = {int(r["rank"]): bool(r.get("alive"))
                   for r in (sample.ranks if sample is not None else None) or []
                   if isinstance(r.get("rank"), int)}
        if not sampled:
            # no sample of this group yet: its size, no verdict on its ranks
            return RankLiveness(current.name, int(current.world_size or 0), ())
        states = tuple((rank, "unseen" if rank not in sampled
                        else "alive" if sampled[rank] else "dead")
                       for rank in local_ranks(current))
        return RankLiveness(current.name, int(current.world_size or 0), states)
    failed = [v for v in model.stages if v.failed_rank is not None and (v.world_size or 0) > 1]
    if not failed:
        return None
    view = failed[-1]
    states = tuple((rank, "dead" if rank == view.failed_rank else "ended")
                   for rank in local_ranks(view))
    return RankLiveness(view.name, int(view.world_size or 0), states, view.failed_rank)
