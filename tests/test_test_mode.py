"""`parcours journeys test`: simulated time, a throwaway outbox, nothing published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starter.cli import app
from tests.conftest import EXAMPLES


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PARCOURS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_a_timeout_path_in_simulated_time(data_dir: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "cart_updated", "properties": {"total": 40}}\n')
    profile = '{"id": "t1", "email": "t1@example.com", "phone": "+33612345678"}'
    code, out, err = run(
        "journeys",
        "test",
        str(EXAMPLES / "abandoned-cart"),
        "--profile",
        profile,
        "--events",
        str(events),
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    steps = [(s["node"], s["outcome"]) for s in result["position"]["path"]]
    assert steps[-3:] == [("await-checkout", "timed out"), ("sms", "sent"), ("done", "ended")]
    assert [(d["channel"], d["to"]) for d in result["deliveries"]] == [
        ("email", "t1@example.com"),
        ("sms", "+33612345678"),
    ]
    # Nothing was published to the real store, and nothing recorded there.
    code, out, _ = run("journeys", "list", "--json")
    assert json.loads(out) == []


def test_bad_scripts_are_refused_with_their_line(data_dir: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "cart_updated"}\n{"type": "x", "after": "soon"}\n')
    code, _, err = run(
        "journeys",
        "test",
        str(EXAMPLES / "abandoned-cart"),
        "--profile",
        '{"id": "t"}',
        "--events",
        str(events),
    )
    assert code == 1 and f"{events}:2: after" in err and "expected a duration" in err
    events.write_text('{"type": "signed_up"}\n')
    code, _, err = run(
        "journeys",
        "test",
        str(EXAMPLES / "abandoned-cart"),
        "--profile",
        '{"id": "t"}',
        "--events",
        str(events),
    )
    assert code == 1 and "does not enter journey 'abandoned-cart'" in err
    code, _, err = run(
        "journeys",
        "test",
        str(EXAMPLES / "abandoned-cart"),
        "--profile",
        "{",
        "--events",
        str(events),
    )
    assert code == 1 and "--profile: expected a JSON object" in err
