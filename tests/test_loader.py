"""Definition files: every error names the file, the path inside it and what was expected."""

import copy
from pathlib import Path
from typing import Any

import pytest

from parcours.definitions import Journey, Template
from parcours.loader import load_documents, load_paths
from tests.conftest import EXAMPLES

TEMPLATE = """
kind: template
id: hello
channel: email
subject: Hi
body: Hello {{ profile.id }}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def messages(tmp_path: Path, text: str) -> list[str]:
    result = load_paths([write(tmp_path, "bad.yaml", text)])
    assert not result.definitions, "nothing is loaded when any definition is wrong"
    return [str(e) for e in result.errors]


def test_the_welcome_example_loads_with_templates_first() -> None:
    result = load_paths([EXAMPLES / "welcome"])
    assert result.errors == []
    kinds = [d.definition.kind for d in result.definitions]
    assert kinds == ["template", "template", "journey"]
    journey = result.journeys[0]
    assert isinstance(journey, Journey) and journey.entry.event == "signed_up"


def test_several_definitions_per_file_and_json_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", TEMPLATE + "---\n" + TEMPLATE.replace("hello", "bye"))
    write(
        tmp_path,
        "b.json",
        '{"kind": "journey", "id": "j", "entry": {"event": "e"}, "start": "m", "nodes": ['
        '{"id": "m", "type": "message", "channel": "email", "template": "bye", "next": "x"},'
        '{"id": "x", "type": "end"}]}',
    )
    result = load_paths([tmp_path])
    assert result.errors == []
    assert sorted(result.templates) == ["bye", "hello"]
    assert isinstance(result.definitions[0].definition, Template)


def test_a_wrong_field_names_file_line_document_and_path(tmp_path: Path) -> None:
    errors = messages(
        tmp_path,
        TEMPLATE
        + """---
kind: journey
id: j
entry: {event: e}
start: w
nodes:
  - {id: w, type: wait, duration: 1x, next: m}
""",
    )
    assert errors == [
        f"{tmp_path / 'bad.yaml'}:13 (document 2): nodes[0].duration: expected a duration such as "
        "30s, 15m, 2h, 3d, 1w or ISO 8601 like PT2H, got '1x'"
    ]


def test_unknown_node_types_kinds_and_fields_are_named(tmp_path: Path) -> None:
    errors = messages(
        tmp_path,
        """
kind: journey
id: j
entry: {event: e}
start: a
nodes:
  - {id: a, type: teleport}
  - {id: b, type: end, colour: red}
  - {id: c}
---
kind: gadget
id: g
""",
    )
    assert any(
        "nodes[0].type: unknown type 'teleport': expected one of wait, wait_for_event, condition, split, message, update_profile, webhook, end"
        in e
        for e in errors
    )
    assert any("nodes[1].colour: unknown field" in e for e in errors)
    assert any("nodes[2].type: `type` is missing" in e for e in errors)
    assert any("(document 2): kind: unknown kind 'gadget'" in e for e in errors)


def test_graph_errors_are_all_reported_at_once(tmp_path: Path) -> None:
    errors = messages(
        tmp_path,
        TEMPLATE
        + """---
kind: journey
id: j
entry: {event: e}
start: nowhere
nodes:
  - {id: m, type: message, channel: email, template: missing, next: gone}
  - {id: s, type: message, channel: sms, template: hello, next: m}
  - {id: m, type: end}
""",
    )
    text = "\n".join(errors)
    assert "start: no node has id 'nowhere'" in text
    assert "nodes[0].template: no template 'missing' is defined or applied" in text
    assert "nodes[0].next: no node has id 'gone'" in text
    assert "nodes[1].template: template 'hello' is for email, not sms" in text
    assert "nodes[2].id: duplicate node id 'm'" in text


def test_unreachable_nodes_and_cycles_without_a_wait_are_refused(tmp_path: Path) -> None:
    errors = messages(
        tmp_path,
        TEMPLATE
        + """---
kind: journey
id: j
entry: {event: e}
start: a
nodes:
  - {id: a, type: message, channel: email, template: hello, next: b}
  - {id: b, type: message, channel: email, template: hello, next: a}
  - {id: lost, type: end}
""",
    )
    text = "\n".join(errors)
    assert "node 'lost' cannot be reached from start" in text
    assert "cycle without a wait: a -> b -> a" in text


def test_a_cycle_through_a_wait_is_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "loop.yaml",
        TEMPLATE
        + """---
kind: journey
id: j
entry: {event: e}
start: a
nodes:
  - {id: a, type: message, channel: email, template: hello, next: w}
  - {id: w, type: wait, duration: 7d, next: a}
""",
    )
    assert load_paths([path]).errors == []


def test_templates_published_earlier_can_be_used(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "j.yaml",
        """
kind: journey
id: j
entry: {event: e}
start: m
nodes:
  - {id: m, type: message, channel: email, template: hello, next: x}
  - {id: x, type: end}
""",
    )
    assert load_paths([path]).errors != []
    known = {"hello": Template(id="hello", channel="email", subject="s", body="b")}
    assert load_paths([path], known).errors == []


def test_unreadable_input_is_reported_not_raised(tmp_path: Path) -> None:
    assert "invalid YAML" in messages(tmp_path, "kind: [unclosed")[0]
    assert "expected a mapping" in messages(tmp_path, "- just\n- a list")[0]
    assert "no such file" in str(load_paths([tmp_path / "absent.yaml"]).errors[0])
    assert "expected a file ending in" in str(load_paths([write(tmp_path, "x.txt", "")]).errors[0])
    assert (
        "email template needs a `subject`"
        in messages(tmp_path, "kind: template\nid: t\nchannel: email\nbody: b")[0]
    )


JOURNEY = {
    "kind": "journey",
    "id": "j",
    "entry": {"event": "e"},
    "start": "w",
    "nodes": [
        {"id": "w", "type": "wait", "duration": "1h", "next": "x"},
        {"id": "x", "type": "end"},
    ],
}


def _journey(**changes: Any) -> dict[str, Any]:
    journey = copy.deepcopy(JOURNEY)
    for name, value in changes.items():
        if name == "wait":
            journey["nodes"][0] = {"id": "w", "type": "wait", "next": "x", **value}
        else:
            journey[name] = value
    return journey


def _segment(rule: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "segment", "id": "s", "rule": rule}


def _template(**fields: Any) -> dict[str, Any]:
    return {"kind": "template", "id": "t", "body": "b", **fields}


def _campaign(**fields: Any) -> dict[str, Any]:
    return {"kind": "campaign", "id": "c", "audience": {"consent": "email"}, "channel": "email",
            "template": "t", **fields}  # fmt: skip


# Every check that looks at more than one field reports at the field it is about, so the
# CLI, the API's 422 body and the editor's line number all point there.
@pytest.mark.parametrize(
    ("document", "path", "message"),
    [
        (_template(channel="email"), "subject", "an email template needs a `subject`"),
        (_template(channel="sms", subject="s"), "subject", "an sms has no `subject`"),
        (_template(channel="push", subject="s", html="<b>"), "html", "`html` is for email"),
        (_journey(entry={"event": "e", "api": True}), "entry.api", "exactly one of `event`"),
        (_journey(entry={}), "entry", "exactly one of `event`"),
        (
            _journey(entry={"api": True, "where": {"property": "p", "op": "exists"}}),
            "entry.where",
            "`where` filters an entry event",
        ),
        (
            _journey(wait={"duration": "1h", "until_attribute": "a"}),
            "nodes[0].until_attribute",
            "a wait takes exactly one of",
        ),
        (_journey(wait={}), "nodes[0]", "a wait takes exactly one of"),
        (
            _journey(wait={"until": {"time": "09:00", "timezone": "Mars/Base"}}),
            "nodes[0].until.timezone",
            "'Mars/Base' is not an IANA time zone",
        ),
        (
            _journey(wait={"until": {"time": "09:00", "fallback_timezone": "Mars/Base"}}),
            "nodes[0].until.fallback_timezone",
            "'Mars/Base' is not an IANA time zone",
        ),
        (
            _journey(nodes=[{"id": "w", "type": "update_profile", "next": "x"}]),
            "nodes[0].set",
            "needs `set` or `unset`",
        ),
        (
            _journey(exit_when=[{"event": "e", "segment_exited": "s"}]),
            "exit_when[0].segment_exited",
            "exactly one of `event` or `segment_exited`",
        ),
        (_journey(exit_when=[{}]), "exit_when[0]", "exactly one of `event` or `segment_exited`"),
        (
            _campaign(schedule={"cron": "0 9 * * *", "timezone": "Mars/Base"}),
            "schedule.timezone",
            "'Mars/Base' is not an IANA time zone",
        ),
        (
            _campaign(send_at={"local_time": "09:00", "fallback_timezone": "Mars/Base"}),
            "send_at.fallback_timezone",
            "'Mars/Base' is not an IANA time zone",
        ),
        (_segment({"attribute": "a", "op": "exists", "value": 1}), "rule.value", "takes no value"),
        (
            _segment({"all": [{"attribute": "a", "op": "in", "value": [1, "x"]}]}),
            "rule.all[0].value",
            "all of one type",
        ),
        (
            _segment({"event": "e", "where": {"property": "p", "op": "between", "value": [2, 1]}}),
            "rule.where.value",
            "low <= high",
        ),
        (
            _segment({"attribute": "a", "op": "within_last", "value": "soon"}),
            "rule.value",
            "expected a duration",
        ),
        (
            _segment({"event": "e", "within": "99999999999999999d"}),
            "rule.within",
            "expected a duration under",
        ),
        (_segment({"event": "e", "count": {}}), "rule.count", "one or two of eq"),
    ],
)
def test_checks_across_fields_name_the_field_at_fault(
    document: dict[str, Any], path: str, message: str
) -> None:
    errors = load_documents([("doc", document)]).errors
    assert [(e.path, message in e.message) for e in errors] == [(path, True)], errors
