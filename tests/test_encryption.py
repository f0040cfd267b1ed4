"""Encrypted histories (PARCOURS_ENCRYPTION_KEY): what Temporal keeps of a journey or a campaign
holds no address or attribute value in clear, the keyring decodes it again, and a rotated
keyring still decodes what older keys wrote. On the real dev server, with the real Twilio
library talking to the local fake."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from sqlalchemy.engine import Engine
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.apply import apply_paths
from activities.db import close_engine, engine_for
from activities.profiles import set_profile
from parcours import ParcoursPlugin
from parcours.codec import ENCODING, KEY_ID, DecryptionError, EncryptionCodec
from parcours.contracts import JourneyPosition
from parcours.records import NewEvent
from parcours.settings import EncryptionKey, Settings, parse_encryption_keys
from starter.binaries import temporal_cli
from starter.campaigns import start_run
from starter.routing import send_event
from tests.delivery import with_providers
from tests.fakes.twilio import FakeTwilio
from tests.history_scan import decrypted, payloads, readable
from tests.stack import NO_QUIET_HOURS, PARCOURS, free_port, wait_until
from workflows.journey import JourneyWorkflow

OLD = "2026-05:" + base64.b64encode(b"o" * 32).decode()
NEW = "2026-11:" + base64.b64encode(b"n" * 32).decode()

# What must never be readable in a history: a refused phone that Twilio's error quotes, and
# attribute values a journey's rules compare with or its update_profile writes.
REFUSED_PHONE = "+15005550001"
REFERRER_EMAIL = "bob.referrer@example.com"
BACKUP_PHONE = "+33698765432"
CITY = "Villeurbanne"
SECRETS = [REFUSED_PHONE, REFERRER_EMAIL, BACKUP_PHONE, CITY]

DEFINITIONS = f"""
kind: template
id: hi
channel: sms
body: "hi {{{{ profile.id }}}}"
---
kind: journey
id: private
entry: {{event: signed_up}}
start: local
nodes:
  - {{id: local, type: condition, branches: [{{when: {{attribute: city, op: eq, value: {CITY}}}, next: note}}], default: note}}
  - {{id: note, type: update_profile, set: {{referrer_email: "{REFERRER_EMAIL}", backup_phone: "{BACKUP_PHONE}"}}, next: sms}}
  - {{id: sms, type: message, channel: sms, template: hi, priority: transactional, next: await-order}}
  - {{id: await-order, type: wait_for_event, event: order_completed, timeout: 1h, on_event: done, on_timeout: done}}
  - {{id: done, type: end}}
---
kind: campaign
id: locals
audience: {{attribute: city, op: eq, value: {CITY}}}
channel: sms
template: hi
"""


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        fake.invalid.add(REFUSED_PHONE)
        yield fake


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Settings, Engine]]:
    """SQLite is enough here: what is under test is what reaches Temporal, not the store."""
    settings = Settings.load(tmp_path / "data", env=dict(NO_QUIET_HOURS)).model_copy(
        update={"task_queue": f"test-{uuid.uuid4()}"}
    )
    engine = engine_for(settings.database_url)
    (tmp_path / "defs.yaml").write_text(DEFINITIONS)
    apply_paths(engine, [tmp_path / "defs.yaml"])
    set_profile(engine, "ada", phone=REFUSED_PHONE, attributes={"city": CITY})
    yield settings, engine
    close_engine(settings.database_url)


def keyed(settings: Settings, keys: str | None) -> Settings:
    return settings.model_copy(
        update={"encryption_keys": parse_encryption_keys(keys) if keys else []}
    )


async def connect(env: WorkflowEnvironment, settings: Settings) -> Client:
    return await Client.connect(
        env.client.service_client.config.target_host, plugins=[ParcoursPlugin(settings)]
    )


async def at_node(handle: WorkflowHandle[Any, Any], node: str) -> None:
    for _ in range(300):
        position = await handle.query(JourneyWorkflow.position)
        if JourneyPosition.model_validate(position).node == node:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the entry never reached {node}")


async def run_journey(
    env: WorkflowEnvironment,
    settings: Settings,
    engine: Engine,
    twilio: FakeTwilio,
    first: str | None,
    then: str | None,
) -> str:
    """Enter with keyring `first`; at the wait, replace the worker by one with keyring `then`
    (a key rotation) and end the entry with an event sent through it. The history's JSON."""
    before = with_providers(keyed(settings, first), twilio=twilio)
    client = await connect(env, before)
    async with Worker(client, task_queue=settings.task_queue):
        routed = await send_event(
            client, engine, before, NewEvent(type="signed_up", profile_id="ada")
        )
        handle = client.get_workflow_handle(routed.journeys[0])
        await at_node(handle, "await-order")
    after = with_providers(keyed(settings, then), twilio=twilio)
    client = await connect(env, after)
    async with Worker(client, task_queue=settings.task_queue):
        await send_event(client, engine, after, NewEvent(type="order_completed", profile_id="ada"))
        handle = client.get_workflow_handle(routed.journeys[0])
        # Bounded: a worker that cannot decrypt the history retries its task forever.
        position = JourneyPosition.model_validate(await asyncio.wait_for(handle.result(), 60))
    assert position.finished and position.node == "done"
    return (await handle.fetch_history()).to_json()


async def test_an_encrypted_journey_history_holds_no_address_or_attribute_in_clear(
    dev_server_env: WorkflowEnvironment,
    store: tuple[Settings, Engine],
    twilio: FakeTwilio,
) -> None:
    settings, engine = store
    history = await run_journey(dev_server_env, settings, engine, twilio, OLD, f"{NEW},{OLD}")

    assert [s for s in SECRETS if s.encode() in readable(history)] == []
    encrypted, clear = payloads(history)
    assert encrypted > 10 and clear == []  # inputs, results, signals, summaries
    # The rotated keyring opens what both keys wrote, and everything is back.
    opened, key_ids = decrypted(history, EncryptionCodec(parse_encryption_keys(f"{NEW},{OLD}")))
    assert key_ids == {"2026-05", "2026-11"}
    assert [s for s in SECRETS if s not in opened] == []
    assert "is not a valid phone number" in opened  # Twilio's refusal, quoting the number
    # A keyring that dropped the old key says which one it lacks.
    with pytest.raises(DecryptionError, match=r"'2026-05'.*PARCOURS_ENCRYPTION_KEY"):
        decrypted(history, EncryptionCodec(parse_encryption_keys(NEW)))


async def test_without_a_key_the_same_history_holds_them_in_clear(
    dev_server_env: WorkflowEnvironment,
    store: tuple[Settings, Engine],
    twilio: FakeTwilio,
) -> None:
    # What the encrypted test would find if the codec were not there: the scan is meaningful.
    settings, engine = store
    history = await run_journey(dev_server_env, settings, engine, twilio, None, None)
    assert [s for s in SECRETS if s.encode() not in readable(history)] == []
    assert base64.b64encode(ENCODING).decode() not in history


async def test_turning_encryption_on_keeps_running_entries_going(
    dev_server_env: WorkflowEnvironment,
    store: tuple[Settings, Engine],
    twilio: FakeTwilio,
) -> None:
    settings, engine = store
    history = await run_journey(dev_server_env, settings, engine, twilio, None, NEW)
    _, key_ids = decrypted(history, EncryptionCodec(parse_encryption_keys(NEW)))
    assert key_ids == {"2026-11"}


async def test_an_encrypted_campaign_history_holds_no_audience_value_in_clear(
    dev_server_env: WorkflowEnvironment,
    store: tuple[Settings, Engine],
    twilio: FakeTwilio,
) -> None:
    settings, engine = store
    set_profile(engine, "bea", phone="+33611111111", attributes={"city": CITY})
    encrypted = with_providers(keyed(settings, NEW), twilio=twilio)
    client = await connect(dev_server_env, encrypted)
    async with Worker(client, task_queue=settings.task_queue):
        handle = await start_run(client, engine, encrypted, "locals")
        report = await handle.result()
    # Twilio's refusal of ada's number counts under its own words, which quote the number.
    assert (report.audience, report.sent, sum(report.failed.values())) == (2, 1, 1)
    history = (await handle.fetch_history()).to_json()
    assert [s for s in SECRETS if s.encode() in readable(history)] == []
    assert payloads(history)[1] == []
    opened, key_ids = decrypted(history, EncryptionCodec(parse_encryption_keys(NEW)))
    assert key_ids == {"2026-11"}
    assert CITY in opened and REFUSED_PHONE in opened


async def test_the_codec_round_trips_and_refuses_an_altered_payload() -> None:
    codec = EncryptionCodec(parse_encryption_keys(f"{NEW},{OLD}"))
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"ada@example.com"')
    (sealed,) = await codec.encode([plain])
    assert sealed.metadata[KEY_ID] == b"2026-11" and b"ada@example.com" not in sealed.data
    assert await codec.decode([sealed, plain]) == [plain, plain]  # clear payloads pass through
    # The key id is bound to the ciphertext: relabelling a payload does not open it.
    relabelled = Payload(metadata={"encoding": ENCODING, KEY_ID: b"2026-05"}, data=sealed.data)
    with pytest.raises(DecryptionError, match="'2026-05' does not decrypt"):
        await codec.decode([relabelled])
    twin = EncryptionCodec([EncryptionKey(id="2026-11", key=b"x" * 32)])  # type: ignore[arg-type]
    with pytest.raises(DecryptionError, match="not the one it was encrypted with"):
        await twin.decode([sealed])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "expected id:base64key"),
        (base64.b64encode(b"k" * 32).decode(), "entry 1: expected id:base64key"),
        ("k1:not base64!", "entry 1 \\(id 'k1'\\): the key is not valid base64"),
        (
            "k1:" + base64.b64encode(b"short").decode(),
            "entry 1 \\(id 'k1'\\): the key is 5 bytes; expected 32",
        ),
        (f"{NEW},{NEW}", "entry 2: the key id '2026-11' is used twice"),
        ("bad id:" + base64.b64encode(b"k" * 32).decode(), "entry 1: the key id 'bad id' must be"),
    ],
)
def test_a_bad_key_setting_is_refused_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"PARCOURS_ENCRYPTION_KEY: {message}") as refused:
        Settings.load(Path("/nonexistent"), env={"PARCOURS_ENCRYPTION_KEY": value or " , "})
    assert base64.b64encode(b"k" * 32).decode() not in str(refused.value)


def test_the_setting_lists_the_encrypting_key_first() -> None:
    settings = Settings.load(Path("/nonexistent"), env={"PARCOURS_ENCRYPTION_KEY": f"{NEW},{OLD}"})
    assert [k.id for k in settings.encryption_keys] == ["2026-11", "2026-05"]
    assert settings.encryption_keys[1].key.get_secret_value() == b"o" * 32
    assert "oooo" not in repr(settings)


CODEC_KEY = "codec-test-key"
UI_ORIGIN = "http://localhost:8233"


@pytest.fixture
def codec_server(tmp_path: Path) -> Iterator[str]:
    """`parcours codec-server` as an operator runs it, with the keyring after a rotation."""
    port = free_port()
    env = {
        **os.environ,
        "PARCOURS_DATA_DIR": str(tmp_path / "codec"),
        "PARCOURS_ENCRYPTION_KEY": f"{NEW},{OLD}",
        "PARCOURS_CODEC_KEYS": f"other-key,{CODEC_KEY}",
    }
    log = tmp_path / "codec.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*PARCOURS, "codec-server", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "Uvicorn running on" in log.read_text(), 30, "the codec server")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def payloads_json(*payloads: Payload) -> dict[str, Any]:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def test_the_codec_server_encodes_and_decodes_for_a_key_holder_only(codec_server: str) -> None:
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"ada@example.com"')
    headers = {"Authorization": f"Bearer {CODEC_KEY}", "X-Namespace": "default"}
    with httpx.Client(base_url=codec_server) as http:
        encoded = http.post("/encode", json=payloads_json(plain), headers=headers)
        assert encoded.status_code == 200, encoded.text
        (sealed,) = json_format.ParseDict(encoded.json(), Payloads()).payloads
        assert sealed.metadata[KEY_ID] == b"2026-11"
        assert b"ada@example.com" not in sealed.data
        # The UI's form: the key in the path, no header of its own.
        decoded = http.post(f"/{CODEC_KEY}/decode", json=payloads_json(sealed))
        assert json_format.ParseDict(decoded.json(), Payloads()).payloads == [plain]
        # What the retired key wrote still opens.
        older = EncryptionCodec(parse_encryption_keys(OLD)).encrypt(plain)
        decoded = http.post("/decode", json=payloads_json(older), headers=headers)
        assert json_format.ParseDict(decoded.json(), Payloads()).payloads == [plain]

        refused = [
            http.post("/decode", json=payloads_json(sealed)),
            http.post("/decode", json=payloads_json(sealed), headers={"Authorization": "Bearer x"}),
            http.post("/wrong-key/decode", json=payloads_json(sealed)),
            http.post("/encode", json=payloads_json(plain), headers={"Authorization": CODEC_KEY}),
        ]
        assert [r.status_code for r in refused] == [401] * 4
        assert "Authorization: Bearer KEY" in refused[0].json()["detail"]
        bad = http.post("/decode", content=b'{"payloads": 3}', headers=headers)
        assert bad.status_code == 400 and "payloads" in bad.json()["detail"]
        unknown = EncryptionCodec(parse_encryption_keys("gone:" + NEW.split(":")[1])).encrypt(plain)
        gone = http.post("/decode", json=payloads_json(unknown), headers=headers)
        assert gone.status_code == 400 and "'gone'" in gone.json()["detail"]


def test_the_codec_server_lets_the_ui_origin_in_and_no_other(codec_server: str) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    with httpx.Client(base_url=codec_server) as http:
        allowed = http.options(f"/{CODEC_KEY}/decode", headers={"Origin": UI_ORIGIN, **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN
        assert "x-namespace" in allowed.headers["access-control-allow-headers"].lower()
        answer = http.post(
            f"/{CODEC_KEY}/decode", json={"payloads": []}, headers={"Origin": UI_ORIGIN}
        )
        assert answer.headers["access-control-allow-origin"] == UI_ORIGIN
        other = http.options(
            f"/{CODEC_KEY}/decode", headers={"Origin": "http://evil.example", **preflight}
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


async def test_the_temporal_cli_shows_an_encrypted_history_through_the_codec_server(
    dev_server_env: WorkflowEnvironment,
    store: tuple[Settings, Engine],
    twilio: FakeTwilio,
    codec_server: str,
) -> None:
    settings, engine = store
    await run_journey(dev_server_env, settings, engine, twilio, OLD, f"{NEW},{OLD}")
    address = dev_server_env.client.service_client.config.target_host
    shown = subprocess.run(
        [
            str(temporal_cli()), "workflow", "show", "--workflow-id", "journey:private:ada",
            "--address", address, "--output", "json",
            "--codec-endpoint", codec_server, "--codec-auth", f"Bearer {CODEC_KEY}",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert [s for s in SECRETS if s.encode() not in readable(shown.stdout)] == []
    # Without `--codec-auth` the CLI gets 401s (and retries them until its own deadline):
    # refusals are shown over HTTP above.
