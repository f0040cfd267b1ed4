"""Processes of a worker's own for CPU-bound activity work, which die with it.

A campaign page is Python work from end to end (reading its slice of the snapshot, rendering,
writing the ledger, encoding the provider's request). In the worker's process every page takes
turns on one interpreter lock, with the other pages and with the Temporal SDK; handed to child
processes, pages use every core while the activity (heartbeats, retries) stays in the worker.

Children are forked from multiprocessing's fork server, which imports the work's module once:
a worker's first page waits milliseconds for its process, not the seconds a fresh interpreter
takes to import. Each child is killed the moment its worker exits, however it exits (a thread
waits on the worker's pidfd, Linux only): a `kill -9` of the worker takes its pages with it, so
none can go on sending while Temporal retries it on another worker.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from temporalio.exceptions import ApplicationError

from activities import metrics

T = TypeVar("T")
A = TypeVar("A")
# Children may only be used where they can be tied to their worker's life.
SUPPORTED = sys.platform == "linux"


def process_count(wanted: int | None) -> int:
    """The children to use: `wanted`, or one more than the cores this process may run on.

    A campaign page waits for its provider's answers as well as working: the extra process
    works meanwhile. On two cores, 3 page processes sent at 0.79-0.80 of the bare loop's rate
    where 2 did at 0.67-0.73 (bench/campaigns.py, two pairs of runs)."""
    if wanted is None:
        return len(os.sched_getaffinity(0)) + 1 if SUPPORTED else 0
    if wanted and not SUPPORTED:
        raise ValueError(
            f"child processes need Linux, where they die with their worker; got {wanted} "
            f"on {sys.platform} (set 0 to work in the worker's own threads)"
        )
    return wanted


@dataclass(frozen=True)
class _Failure:
    """A child's exception as Temporal would record it. Exceptions do not all survive pickling
    (an ApplicationError loses its type and retry delay), so the worker raises it anew."""

    message: str
    type: str
    non_retryable: bool
    next_retry_delay: timedelta | None
    trace: str

    def error(self) -> ApplicationError:
        return ApplicationError(
            self.message,
            self.trace,
            type=self.type,
            non_retryable=self.non_retryable,
            next_retry_delay=self.next_retry_delay,
        )


@dataclass(frozen=True)
class _Outcome(Generic[T]):
    value: T | None
    failure: _Failure | None
    counts: list[metrics.Counted]


class ChildProcesses(Generic[A, T]):
    """Up to `processes` children, started when work first needs them, each prepared once by
    `start(*args)` (in the child) and then running `work(item)` for the worker's `run`."""

    def __init__(
        self,
        processes: int,
        start: Callable[..., None],
        args: tuple[Any, ...],
        work: Callable[[A], T],
    ) -> None:
        self.processes, self.start, self.args, self.work = processes, start, args, work
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, item: A) -> T:
        pool = self._executor()
        try:
            outcome: _Outcome[T] = await asyncio.get_running_loop().run_in_executor(
                pool, _call, self.work, item
            )
        except BrokenProcessPool as exc:
            # A child died (killed, out of memory), failing all work in flight in the pool:
            # each piece is retried by Temporal, in a fresh pool.
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise ApplicationError(
                f"the child process running {self.work.__name__} died: {exc}",
                type="ChildProcessDied",
            ) from exc
        # Counted by the worker, which serves the metrics, once the child has done the work.
        metrics.replay(outcome.counts)
        if outcome.failure is not None:
            raise outcome.failure.error()
        return outcome.value  # type: ignore[return-value]  # None only with a failure

    def close(self) -> None:
        """Let the children finish their work and leave; a later `run` starts new ones."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([self.work.__module__])
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=context,
                initializer=_start_child,
                initargs=(os.getpid(), self.start, self.args),
            )
        return self._pool


def _start_child(worker: int, start: Callable[..., None], args: tuple[Any, ...]) -> None:
    _die_with(worker)
    metrics.defer()
    start(*args)


def _die_with(worker: int) -> None:
    """SIGKILL this process the moment `worker` exits, whatever it is doing then. Its parent is
    the fork server, not the worker (and the fork server waits for its children before it
    leaves), so a thread waits on the worker's pidfd instead of asking for a parent-death
    signal."""
    try:
        worker_exits = os.pidfd_open(worker)
    except ProcessLookupError:
        os._exit(1)

    def watch() -> None:
        select.select([worker_exits], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-worker", daemon=True).start()


def _call(work: Callable[[A], T], item: A) -> _Outcome[T]:
    # The objects a piece of work makes mostly live until it ends, then go by reference
    # counting: the cycle collector, run every 700 allocations, would only walk them again and
    # again (without it a campaign page took 0.88 to 0.91 of its CPU, medians of alternating
    # rounds). What the work leaves in cycles is collected as soon as the collector is back.
    gc.disable()
    try:
        return _Outcome(work(item), None, metrics.take_deferred())
    except Exception as exc:
        application = exc if isinstance(exc, ApplicationError) else None
        failure = _Failure(
            application.message if application else str(exc),
            (application.type if application else None) or type(exc).__name__,
            application.non_retryable if application else False,
            application.next_retry_delay if application else None,
            "".join(traceback.format_exception(exc)),
        )
        return _Outcome(None, failure, metrics.take_deferred())
    finally:
        gc.enable()
