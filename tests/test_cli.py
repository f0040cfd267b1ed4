"""The `parcours` command line, in process, on a private data dir (no Temporal needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from activities import catalog
from activities.db import engine_for
from parcours.settings import Settings
from starter.cli import app, parse_pairs
from tests.conftest import EXAMPLES
from tests.stack import free_port


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    monkeypatch.setenv("PARCOURS_DATA_DIR", str(data))
    # Nothing listens here: commands that need Temporal must fail cleanly.
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.stdout, result.stderr

    invoke.data_dir = data  # type: ignore[attr-defined]
    return invoke


def test_apply_publishes_the_example_and_then_reports_it_unchanged(run) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run("apply", str(EXAMPLES / "welcome"))
    assert code == 0
    assert out.splitlines() == [
        "template welcome-email: created",
        "template tips-email: created",
        "journey welcome: published version 1 (live)",
    ]
    code, out, _ = run("apply", str(EXAMPLES / "welcome"), "--json")
    assert code == 0
    assert json.loads(out)[-1] == {
        "kind": "journey",
        "id": "welcome",
        "outcome": "unchanged",
        "version": 1,
        "status": "live",
    }
    code, out, _ = run("journeys", "list", "--json")
    assert [(j["journey_id"], j["version"], j["status"]) for j in json.loads(out)] == [
        ("welcome", 1, "live")
    ]


def test_a_malformed_journey_publishes_nothing(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (EXAMPLES / "welcome" / "templates.yaml").read_text()
        + "---\n"
        + (EXAMPLES / "welcome" / "journey.yaml").read_text().replace("next: tips", "next: tipz")
    )
    code, _, err = run("apply", str(bad))
    assert code == 1
    assert f"{bad}:33 (document 3): nodes[1].next: no node has id 'tipz'" in err
    assert f"{bad}:34 (document 3): nodes[2]: node 'tips' cannot be reached from start" in err
    assert "nothing was published (3 errors)" in err
    engine = engine_for(Settings.load(run.data_dir).database_url)
    assert catalog.known_templates(engine) == {}, "not even the valid templates beside it"
    assert catalog.list_journeys(engine) == []


def test_profiles_set_and_show(run) -> None:  # type: ignore[no-untyped-def]
    code, _, _ = run(
        "profiles",
        "set",
        "ada",
        "--email",
        "ada@example.com",
        "--attr",
        "plan=pro",
        "--attr",
        "age=36",
    )
    assert code == 0
    code, out, _ = run("profiles", "show", "ada", "--json")
    profile = json.loads(out)
    assert (profile["email"], profile["attributes"]) == (
        "ada@example.com",
        {"plan": "pro", "age": 36},
    )
    code, _, err = run("profiles", "show", "nobody")
    assert (code, err.strip()) == (1, "error: no profile 'nobody'")
    code, _, err = run("profiles", "set", "ada", "--email", "nope")
    assert (code, err.strip()) == (1, "error: email: 'nope' is not an email address")


def test_events_are_rejected_with_their_reason(run) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run("events", "send", "signed_up")
    assert (code, err.strip()) == (
        1,
        "error: --profile: every event needs the id of the profile it is about",
    )
    code, _, err = run("events", "send", "signed up", "--profile", "ada")
    assert code == 1 and err.startswith("error: type: String should match pattern")
    code, _, err = run("events", "send", "x", "--profile", "ada", "--prop", "novalue")
    assert (code, err.strip()) == (1, "error: --prop: expected key=value, got 'novalue'")


def test_without_temporal_an_event_fails_in_one_line_and_is_not_recorded(run) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run("events", "send", "signed_up", "--profile", "ada")
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "cannot reach Temporal at 127.0.0.1:" in err and "parcours dev" in err
    code, out, _ = run("deliveries", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_key_value_pairs_take_json_values_else_strings() -> None:
    assert parse_pairs(
        ["n=3", "ok=true", "name=Ada", "tags=[1,2]", "eq=a=b", "empty="], "--attr"
    ) == {
        "n": 3,
        "ok": True,
        "name": "Ada",
        "tags": [1, 2],
        "eq": "a=b",
        "empty": "",
    }


def test_profile_changes_keep_segments_current_and_show_them(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "pro.yaml").write_text(
        "kind: segment\nid: pro\nrule: {attribute: plan, op: eq, value: pro}\n"
    )
    assert run("apply", str(tmp_path / "pro.yaml"))[0] == 0
    code, _, err = run("profiles", "set", "ada", "--attr", "plan=pro")
    assert code == 0 and err == "", "no journey follows `pro`: Temporal is not needed"
    code, out, _ = run("profiles", "show", "ada", "--json")
    assert [m["segment_id"] for m in json.loads(out)["segments"]] == ["pro"]
    run("profiles", "set", "ada", "--attr", "plan=free")
    code, out, _ = run("profiles", "show", "ada")
    assert "segments: —" in out


def test_a_draft_takes_no_entries_until_made_live(run) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run("apply", "--draft", str(EXAMPLES / "welcome"))
    assert code == 0 and "journey welcome: published version 1 (draft)" in out
    engine = engine_for(Settings.load(run.data_dir).database_url)
    assert catalog.live_journeys_for_event(engine, "signed_up") == []
    code, out, _ = run("journeys", "resume", "welcome")
    assert (code, out.strip()) == (0, "journey welcome resumed: new entries are accepted")
    assert [j.id for j, _ in catalog.live_journeys_for_event(engine, "signed_up")] == ["welcome"]
    code, _, err = run("journeys", "pause", "nope")
    assert (code, err.strip()) == (1, "error: journey: no journey 'nope' is published")


def test_templates_render_previews_a_message_for_a_profile(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run("apply", str(EXAMPLES / "welcome"))
    run("profiles", "set", "ada", "--email", "ada@example.com", "--attr", "first_name=Ada")
    code, out, _ = run("templates", "render", "welcome-email", "--profile", "ada", "--json")
    assert code == 0, out
    rendered = json.loads(out)
    assert rendered["subject"] == "Welcome to Parcours, Ada!"
    assert (rendered["template"], rendered["channel"], rendered["profile_id"]) == (
        "welcome-email",
        "email",
        "ada",
    )
    code, out, _ = run("templates", "list", "--json")
    assert [t["id"] for t in json.loads(out)] == ["tips-email", "welcome-email"]

    code, _, err = run("templates", "render", "nope", "--profile", "ada")
    assert code == 1 and "template 'nope' is not published" in err
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        "kind: template\nid: strict\nchannel: sms\nbody: 'Hi {{ profile.attributes.nick }}'\n"
    )
    run("apply", str(strict))
    code, _, err = run("templates", "render", "strict", "--profile", "ada")
    assert code == 1
    assert "template 'strict' body: 'dict object' has no attribute 'nick'" in err


def test_suppressions_can_be_listed_added_and_lifted(run) -> None:  # type: ignore[no-untyped-def]
    assert run("suppressions", "add", "sms", "+33612345678", "--reason", "complaint")[0] == 0
    code, out, _ = run("suppressions", "list", "--json")
    [row] = json.loads(out)
    assert (row["channel"], row["address"], row["reason"], row["source"]) == (
        "sms",
        "+33612345678",
        "complaint",
        "cli",
    )
    assert run("suppressions", "remove", "sms", "+33612345678")[0] == 0
    assert json.loads(run("suppressions", "list", "--json")[1]) == []
    code, _, err = run("suppressions", "add", "fax", "x")
    assert code == 2 and "fax" in err
