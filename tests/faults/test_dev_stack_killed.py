"""`kill -9` of the worker during a wait, and of the Temporal server with `parcours dev`
itself: the waiting journey goes on and sends each message once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PING
from tests.stack import DevStack, alive, wait_until

pytestmark = pytest.mark.devserver


def test_a_worker_killed_during_a_wait_is_replaced_and_sends_each_message_once(
    stack: DevStack, fault_summary: Callable[[str], None]
) -> None:
    ping_and_wait_for_the_first_message(stack, "bob")
    old = stack.pid("worker")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: stack.pid("worker") != old, 30, "a new worker")
    deliveries = both_messages(stack, "bob")
    fault_summary(counted(deliveries))
    assert [d["subject"] for d in deliveries] == ["Ping first", "Ping second"]
    assert all(d["status"] == "sent" for d in deliveries)


def test_a_killed_temporal_server_keeps_the_waiting_journey(
    stack: DevStack, fault_summary: Callable[[str], None]
) -> None:
    ping_and_wait_for_the_first_message(stack, "cy")
    temporal, worker = stack.pid("temporal"), stack.pid("worker")
    os.kill(temporal, signal.SIGKILL)
    assert stack.process is not None
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait(30)
    # Nothing is left behind, even by a `kill -9` of `parcours dev` itself.
    wait_until(lambda: not alive(worker) and not alive(temporal), 20, "the old stack to be gone")

    stack.start()
    deliveries = both_messages(stack, "cy")
    fault_summary(counted(deliveries))
    assert [d["subject"] for d in deliveries] == ["Ping first", "Ping second"]


def test_a_temporal_server_that_dies_while_it_starts_is_started_again(
    tmp_path: Path, fault_summary: Callable[[str], None]
) -> None:
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "ping.yaml").write_text(PING)
    stack = DevStack(tmp_path / "data", tmp_path / "defs")
    killed: list[int] = []
    killer = threading.Thread(target=kill_once, args=(stack.data_dir / "temporal.pid", killed))
    killer.start()
    try:
        stack.start()
        killer.join()
        fault_summary(f"Temporal killed while it started (pid {killed}), started again")
        assert "exited with code -9" in stack.text()
        assert "starting it again (attempt 2 of 3)" in stack.text()
        assert stack.pid("temporal") not in killed
        ping_and_wait_for_the_first_message(stack, "dee")
    finally:
        stack.stop()


def kill_once(pid_file: Path, killed: list[int]) -> None:
    """`kill -9` of the first process whose pid is written to `pid_file`, as soon as it is."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.002)


def ping_and_wait_for_the_first_message(stack: DevStack, profile: str) -> None:
    stack.cli("profiles", "set", profile, "--email", f"{profile}@example.com")
    stack.cli("events", "send", "ping", "--profile", profile)
    wait_until(lambda: stack.deliveries(profile), 30, "the first message")


def both_messages(stack: DevStack, profile: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = wait_until(
        lambda: len(d := stack.deliveries(profile)) == 2 and d, 60, "the second message"
    )
    return found


def counted(deliveries: list[dict[str, Any]]) -> str:
    statuses = Counter(d["status"] for d in deliveries)
    return f"1 entry, {len(deliveries)} deliveries of 2 expected, by status {dict(statuses)}"
