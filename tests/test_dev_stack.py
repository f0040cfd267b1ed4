"""The whole stack as a user runs it: `parcours dev`, the CLI, real processes killed for real."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from parcours import search_attributes as sa
from starter.dev import DevStack as Dev
from starter.dev import StackError
from tests.conftest import EXAMPLES
from tests.history_scan import payloads, readable
from tests.stack import DevStack, alive, wait_until

pytestmark = pytest.mark.devserver


def test_quickstart_from_event_to_email_in_the_outbox(stack: DevStack) -> None:
    assert f'address = "127.0.0.1:{stack.port}"' in (stack.data_dir / "parcours.toml").read_text()
    assert f"http://127.0.0.1:{stack.ui_port}" in stack.text()

    stack.cli("profiles", "set", "ada", "--email", "ada@example.com", "--attr", "first_name=Ada")
    sent = stack.cli("events", "send", "signed_up", "--profile", "ada")
    assert "journey:welcome:ada" in sent.stdout
    [welcome] = wait_until(lambda: stack.deliveries("ada"), 30, "the welcome email")
    assert welcome["template"] == "welcome-email" and welcome["status"] == "sent"
    assert set(welcome) >= {
        "id", "profile_id", "channel", "template", "status", "reason", "journey_id",
        "campaign_id", "idempotency_key", "provider_message_id", "created_at",
    }  # fmt: skip

    # The HTTP API runs too, with the key `parcours dev` printed.
    key = (stack.data_dir / "api.key").read_text().strip()
    assert f"Bearer {key}" in stack.text()
    api = f"http://127.0.0.1:{stack.api_port}"
    assert httpx.get(f"{api}/v1/profiles/ada").status_code == 401
    read = httpx.get(f"{api}/v1/profiles/ada", headers={"Authorization": f"Bearer {key}"})
    assert read.status_code == 200 and read.json()["email"] == "ada@example.com"

    # The same event again while ada is inside: no second entry, nothing sent twice.
    stack.cli("events", "send", "signed_up", "--profile", "ada")

    async def describe() -> tuple[str, int, object]:
        client = await Client.connect(f"127.0.0.1:{stack.port}")
        handle = client.get_workflow_handle("journey:welcome:ada")
        description = await handle.describe()
        runs = [w async for w in client.list_workflows('WorkflowId = "journey:welcome:ada"')]
        return (
            await description.static_summary() or "",
            len(runs),
            description.typed_search_attributes,
        )

    summary, runs, attributes = asyncio.run(describe())
    assert runs == 1
    assert summary == "Welcome series (v1) for ada"
    assert attributes.get(sa.JOURNEY) == "welcome"  # type: ignore[attr-defined]
    assert attributes.get(sa.PROFILE) == "ada"  # type: ignore[attr-defined]
    assert attributes.get(sa.NODE) == "wait-1d"  # type: ignore[attr-defined]
    assert len(stack.deliveries("ada")) == 1


def test_a_second_dev_on_the_same_data_dir_says_so(stack: DevStack) -> None:
    second = stack.cli("dev", "--port", "1", check=False)
    assert second.returncode == 1
    assert (
        second.stderr.strip()
        == f"parcours dev is already running on {stack.data_dir} (pid {stack.process.pid})"
    )  # type: ignore[union-attr]


def test_sigterm_stops_everything_it_started(stack: DevStack) -> None:
    children = [stack.pid("temporal"), stack.pid("worker")]
    assert all(alive(pid) for pid in children)
    assert stack.stop() == 0
    wait_until(lambda: not any(alive(pid) for pid in children), 20, "the children to exit")


def test_with_a_key_dev_encrypts_and_the_ui_decodes_through_its_codec_server(
    tmp_path: Path,
) -> None:
    key = "2026-11:" + base64.b64encode(b"n" * 32).decode()
    stack = DevStack(tmp_path / "data", EXAMPLES, env={"PARCOURS_ENCRYPTION_KEY": key}).start()
    try:
        codec_key = (stack.data_dir / "codec.key").read_text().strip()
        assert codec_key != (stack.data_dir / "api.key").read_text().strip()
        assert f"codec server     http://127.0.0.1:{stack.codec_port}" in stack.text()
        # What the Web UI is told at start, and then calls from the browser.
        ui = f"http://127.0.0.1:{stack.ui_port}"
        endpoint = httpx.get(f"{ui}/api/v1/settings").json()["Codec"]["Endpoint"]
        assert endpoint == f"http://127.0.0.1:{stack.codec_port}/{codec_key}"

        stack.cli(
            "profiles", "set", "ada", "--email", "ada@example.com", "--attr", "first_name=Ada"
        )
        stack.cli("events", "send", "signed_up", "--profile", "ada")
        wait_until(lambda: stack.deliveries("ada"), 30, "the welcome email")

        async def history() -> str:
            client = await Client.connect(f"127.0.0.1:{stack.port}")  # no keyring: as the server
            return (
                await client.get_workflow_handle("journey:welcome:ada").fetch_history()
            ).to_json()

        exported = asyncio.run(history())
        encrypted, clear = payloads(exported)
        assert encrypted > 0 and clear == []
        first = json.loads(exported)["events"][0]
        sealed = first["workflowExecutionStartedEventAttributes"]["input"]
        decoded = httpx.post(
            f"{endpoint}/decode", json=sealed, headers={"Origin": ui, "X-Namespace": "default"}
        )
        assert decoded.status_code == 200
        assert decoded.headers["access-control-allow-origin"] == ui
        assert b"welcome-email" in readable(decoded.text)
    finally:
        stack.stop()


def test_a_child_that_panics_is_reported_by_its_panic_not_only_its_stack(tmp_path: Path) -> None:
    dev = Dev(tmp_path, port=0, ui_port=0, api_port=0, apply=[])
    dev.logs.mkdir(parents=True)
    (dev.logs / "temporal.log").write_text("an earlier run's panic: not this one\n")
    crash = "panic: failed assigning ephemeral port: connection refused\n\ngoroutine 1 [running]:\n"
    crash += "".join(f"frame {n}()\n\t/src/f.go:{n}\n" for n in range(20))
    dev._spawn("temporal", ["sh", "-c", f"printf '{crash}'; exit 2"], dev.logs / "temporal.log")
    dev.children["temporal"].wait(10)
    with pytest.raises(StackError) as failed:
        dev._check_alive("temporal")
    message = str(failed.value)
    assert message.startswith(
        "the temporal exited with code 2; panic: failed assigning ephemeral port: connection refused;"
    )
    assert "/src/f.go:19" in message and "earlier" not in message
