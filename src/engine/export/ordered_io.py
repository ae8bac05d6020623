"""One background thread for a stream of file writes: in order, with a bound on what is in flight.

Export alternates CPU work (merging a tensor) with I/O (writing it, copying an unchanged tensor
inside the kernel, fsyncing a finished shard). The I/O calls release the GIL, so handing them to
a thread lets the next tensor's merge run while the last one is written, and a shard's fsync
no longer stalls the merge. The bound keeps peak memory at a few tensors; calls run in the order
they were submitted, and the first failure is raised in the submitting thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any


class OrderedIO:
    def __init__(self, max_in_flight: int = 2) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graftline-io")
        self._pending: deque[Future[Any]] = deque()
        self._max = max_in_flight

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` after everything submitted before it; blocks while the bound is full
        (and raises there if an earlier call failed)."""
        while len(self._pending) >= self._max:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def drain(self) -> None:
        """Wait for every submitted call; raises the first failure."""
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> OrderedIO:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            try:
                self.drain()
            finally:
                self._pool.shutdown(wait=True)
        else:
            # Already failing: what is queued is not worth writing, but the call in progress
            # must finish before the caller closes the files under it.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()
