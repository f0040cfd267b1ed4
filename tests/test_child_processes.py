"""The worker's child processes (activities/child_processes.py): they die with their worker,
hand back failures as Temporal would record them, and their counts reach the worker's metrics."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client import REGISTRY
from temporalio.exceptions import ApplicationError

from activities import metrics
from activities.child_processes import ChildProcesses, process_count
from parcours.settings import Settings
from tests.stack import alive, descendants, wait_until

ROOT = Path(__file__).resolve().parent.parent
A = TypeVar("A")
T = TypeVar("T")
# The worker of the first test: one child, asleep in its work, whose pid it prints.
SLEEPING_WORKER = """
import asyncio, os, sys
from activities.child_processes import ChildProcesses
from tests.test_child_processes import nothing, pid_then_sleep

async def main() -> None:
    children = ChildProcesses(1, nothing, (), pid_then_sleep)
    await children.run(sys.argv[1])

asyncio.run(main())
"""


def nothing() -> None:
    pass


@contextmanager
def one_child(work: Callable[[A], T]) -> Iterator[ChildProcesses[A, T]]:
    """A worker's one child process for `work`, closed after the block."""
    children = ChildProcesses(1, nothing, (), work)
    try:
        yield children
    finally:
        children.close()


def pid_then_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def fail(kind: str) -> None:
    if kind == "application":
        raise ApplicationError(
            "over quota", type="Quota", non_retryable=True, next_retry_delay=timedelta(seconds=7)
        )
    if kind == "exit":
        os._exit(3)
    raise ValueError(f"bad {kind}")


class _Node:
    """An object in a reference cycle, which only the cycle collector frees."""

    def __init__(self) -> None:
        self.me = self


LEFT: weakref.WeakSet[_Node] = weakref.WeakSet()


def make_cycles_or_count_them(n: int) -> tuple[bool, int]:
    """In the child: leave `n` objects in cycles; say whether the collector runs during the
    work, and how many cycles earlier work left are still there."""
    LEFT.update(_Node() for _ in range(n))
    return gc.isenabled(), len(LEFT) - n


def count_sent(n: int) -> int:
    metrics.deliveries_settled("email", ["sent"] * n + ["queued"])
    return os.getpid()


def test_a_child_dies_with_its_worker_even_in_the_middle_of_its_work(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    worker = subprocess.Popen([sys.executable, "-c", SLEEPING_WORKER, str(pid_file)], cwd=ROOT)
    try:
        child = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, "a child"))
        assert alive(child)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        # Without its watch on the worker's pidfd it would sleep on for two minutes.
        wait_until(lambda: not alive(child), 5, "the child to die with its worker")
    finally:
        worker.kill()
        worker.wait()


async def test_a_failure_in_a_child_is_raised_as_temporal_would_record_it() -> None:
    with one_child(fail) as children:
        with pytest.raises(ApplicationError) as raised:
            await children.run("application")
        error = raised.value
        assert (error.message, error.type) == ("over quota", "Quota")
        assert error.non_retryable and error.next_retry_delay == timedelta(seconds=7)
        assert "raise ApplicationError" in str(error.details[0])  # the child's traceback

        with pytest.raises(ApplicationError) as raised:
            await children.run("input")
        assert (raised.value.message, raised.value.type) == ("bad input", "ValueError")
        assert not raised.value.non_retryable


async def test_a_child_that_dies_fails_its_work_retryably_and_the_next_gets_a_new_one() -> None:
    with one_child(fail) as children:
        with pytest.raises(ApplicationError) as raised:
            await children.run("exit")
        assert raised.value.type == "ChildProcessDied" and not raised.value.non_retryable
        with pytest.raises(ApplicationError, match="bad again"):
            await children.run("again")


async def test_a_child_collects_no_garbage_during_its_work_and_what_it_left_after() -> None:
    with one_child(make_cycles_or_count_them) as children:
        assert await children.run(10_000) == (False, 0)
        # The collector came back once the work had ended, and took the cycles it left.
        assert await children.run(0) == (False, 0)


async def test_what_a_child_counts_is_counted_by_its_worker() -> None:
    def sent() -> float:
        labels = {"channel": "email", "status": "sent"}
        return REGISTRY.get_sample_value("parcours_deliveries_total", labels) or 0.0

    with one_child(count_sent) as children:
        before = sent()
        child = await children.run(5)
        assert child in descendants(os.getpid())
        assert sent() - before == 5
    assert not alive(child), "closed, the children leave"


def test_page_processes_default_to_one_more_than_the_cores_and_are_checked(
    tmp_path: Path,
) -> None:
    assert process_count(None) == len(os.sched_getaffinity(0)) + 1
    assert process_count(0) == 0
    settings = Settings.load(tmp_path, env={"PARCOURS_PAGE_PROCESSES": "3"})
    assert settings.page_processes == 3
    with pytest.raises(ValueError, match="page_processes"):
        Settings.load(tmp_path, env={"PARCOURS_PAGE_PROCESSES": "-1"})
