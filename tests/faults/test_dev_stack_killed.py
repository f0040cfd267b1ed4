"""`kill -9` of the worker during a wait, and of the Temporal server with `parcours dev`
itself: the waiting journey goes on and sends each message once."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.stack import DevStack, alive, wait_until

pytestmark = pytest.mark.devserver


def test_a_worker_killed_during_a_wait_is_replaced_and_sends_each_message_once(
    stack: DevStack, fault_summary: Callable[[str], None]
) -> None:
    stack.cli("profiles", "set", "bob", "--email", "bob@example.com")
    stack.cli("events", "send", "ping", "--profile", "bob")
    wait_until(lambda: stack.deliveries("bob"), 30, "the first message")
    old = stack.pid("worker")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: stack.pid("worker") != old, 30, "a new worker")
    deliveries = wait_until(
        lambda: len(d := stack.deliveries("bob")) == 2 and d, 60, "the second message"
    )
    fault_summary(counted(deliveries))
    assert [d["subject"] for d in deliveries] == ["Ping first", "Ping second"]
    assert all(d["status"] == "sent" for d in deliveries)


def test_a_killed_temporal_server_keeps_the_waiting_journey(
    stack: DevStack, fault_summary: Callable[[str], None]
) -> None:
    stack.cli("profiles", "set", "cy", "--email", "cy@example.com")
    stack.cli("events", "send", "ping", "--profile", "cy")
    wait_until(lambda: stack.deliveries("cy"), 30, "the first message")
    temporal, worker = stack.pid("temporal"), stack.pid("worker")
    os.kill(temporal, signal.SIGKILL)
    assert stack.process is not None
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait(30)
    # Nothing is left behind, even by a `kill -9` of `parcours dev` itself.
    wait_until(lambda: not alive(worker) and not alive(temporal), 20, "the old stack to be gone")

    stack.start()
    deliveries = wait_until(
        lambda: len(d := stack.deliveries("cy")) == 2 and d, 60, "the second message"
    )
    fault_summary(counted(deliveries))
    assert [d["subject"] for d in deliveries] == ["Ping first", "Ping second"]


def counted(deliveries: list[dict[str, Any]]) -> str:
    statuses = Counter(d["status"] for d in deliveries)
    return f"1 entry, {len(deliveries)} deliveries of 2 expected, by status {dict(statuses)}"
