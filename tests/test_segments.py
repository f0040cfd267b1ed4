"""Segments: definitions checked at publish, membership kept current (streaming and batch)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from activities.apply import apply_paths
from activities.db import plan_for_values
from activities.events import record_event
from activities.profiles import set_profile
from activities.rule_sql import members_query
from activities.segments import (
    _read_catalog,
    dependencies,
    profile_segments,
    recheck_time_windows,
    refresh_profile,
    segment_members,
)
from parcours.definitions import Segment
from parcours.loader import LoadFailed, load_paths
from parcours.records import NewEvent

SEGMENTS = """
kind: segment
id: buyers
rule: {event: order, within: 30d}
---
kind: segment
id: big-spenders
rule: {event: order, where: {property: total, op: gt, value: 100}, count: {gte: 2}}
---
kind: segment
id: pro
rule: {attribute: plan, op: eq, value: pro}
---
kind: segment
id: pro-buyers
rule: {all: [{segment: pro}, {segment: buyers}]}
"""


def errors(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "s.yaml").write_text(text)
    result = load_paths([tmp_path / "s.yaml"])
    return [str(e) for e in result.errors]


def test_a_segment_referring_to_itself_through_another_is_refused_with_the_cycle(
    tmp_path: Path,
) -> None:
    found = errors(
        tmp_path,
        "kind: segment\nid: a\nrule: {segment: b}\n---\nkind: segment\nid: b\nrule: {not: {segment: a}}\n",
    )
    assert any("rule: segments refer to each other in a cycle: a -> b -> a" in e for e in found)
    assert any("rule: segments refer to each other in a cycle: b -> a -> b" in e for e in found)


def test_unknown_operators_and_mistyped_values_name_their_path(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        "kind: segment\nid: a\nrule:\n  all:\n    - {attribute: plan, op: equals, value: pro}\n"
        "    - any: [{attribute: age, op: gt, value: true}, {attribute: tags, op: in, value: [1, a]}]\n"
        "    - {event: order, count: {gte: 1, lt: 3, eq: 2}}\n    - {colour: red}\n",
    )
    text = "\n".join(found)
    assert ":5: rule.all[0].op: got 'equals', expected 'eq', 'ne'" in text
    assert ":6: rule.all[1].any[0].value: `gt` takes a number or a string value" in text
    assert (
        "rule.all[1].any[1].value: `in` takes a list of strings, numbers or booleans, all of one type"
        in text
    )
    assert ":7: rule.all[2].count: `count` takes one or two of eq, gt, gte, lt, lte" in text
    assert ":8: rule.all[3]: expected a rule: a mapping with one of attribute, event" in text


def test_rules_out_of_place_and_unknown_segments_are_refused(tmp_path: Path) -> None:
    found = "\n".join(
        errors(
            tmp_path,
            "kind: segment\nid: a\nrule:\n  any:\n    - {property: total, op: gt, value: 1}\n"
            "    - {event: order, where: {attribute: plan, op: exists}}\n    - {segment: nowhere}\n",
        )
    )
    assert "rule.any[0]: a property rule reads an event" in found
    assert "rule.any[1].where: inside `where`, only property rules" in found
    assert "rule: segment 'nowhere' is not defined or applied" in found


def test_only_segments_a_change_can_affect_are_re_evaluated(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SEGMENTS)
    apply_paths(engine, [tmp_path / "s.yaml"])
    from activities.catalog import known_segments

    known = known_segments(engine)
    deps = {segment_id: dependencies(s.rule, known) for segment_id, s in known.items()}
    assert deps["buyers"].events == {"order"} and deps["buyers"].time and not deps["buyers"].profile
    assert deps["pro"].profile and not deps["pro"].events
    assert deps["pro-buyers"].events == {"order"} and deps["pro-buyers"].profile
    set_profile(engine, "ada", attributes={"plan": "pro"})
    assert refresh_profile(engine, "ada", event_type="visit") == []


def test_streaming_membership_follows_events_and_profile_changes(
    engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "s.yaml").write_text(SEGMENTS)
    apply_paths(engine, [tmp_path / "s.yaml"])
    set_profile(engine, "ada", email="ada@example.com")
    now = datetime.now(UTC)

    record_event(
        engine, NewEvent(type="order", profile_id="ada", properties={"total": 150}, timestamp=now)
    )
    entered = refresh_profile(engine, "ada", event_type="order", now=now)
    assert [(t.segment_id, t.entered) for t in entered] == [("buyers", True)]

    record_event(
        engine, NewEvent(type="order", profile_id="ada", properties={"total": 120}, timestamp=now)
    )
    assert [
        (t.segment_id, t.entered)
        for t in refresh_profile(engine, "ada", event_type="order", now=now)
    ] == [("big-spenders", True)]
    set_profile(engine, "ada", attributes={"plan": "pro"})
    changed = refresh_profile(engine, "ada", profile_changed=True, now=now)
    assert sorted((t.segment_id, t.entered) for t in changed) == [
        ("pro", True),
        ("pro-buyers", True),
    ]
    assert [m.segment_id for m in profile_segments(engine, "ada")] == [
        "big-spenders",
        "buyers",
        "pro",
        "pro-buyers",
    ]

    # Thirty-one days on with no new order: the periodic re-check takes ada out of `buyers`.
    later = now + timedelta(days=31)
    left = recheck_time_windows(engine, now=later)
    assert sorted((t.segment_id, t.entered) for t in left) == [
        ("buyers", False),
        ("pro-buyers", False),
    ]
    assert [m.segment_id for m in profile_segments(engine, "ada")] == ["big-spenders", "pro"]
    assert recheck_time_windows(engine, now=later) == [], "a second run changes nothing"


def test_publishing_a_segment_computes_its_members_in_batch_and_pages_them(
    engine: Engine, tmp_path: Path
) -> None:
    for i in range(25):
        set_profile(engine, f"p{i:02d}", attributes={"plan": "pro" if i % 2 else "free"})
    (tmp_path / "s.yaml").write_text(SEGMENTS)
    apply_paths(engine, [tmp_path / "s.yaml"])
    first = segment_members(engine, "pro", limit=5)
    assert first.members == ["p01", "p03", "p05", "p07", "p09"] and first.next_cursor == "p09"
    rest = segment_members(engine, "pro", after=first.next_cursor, limit=100)
    assert rest.members[0] == "p11" and len(rest.members) == 7 and rest.next_cursor is None


def test_a_bad_segment_publishes_nothing(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        SEGMENTS + "---\nkind: segment\nid: bad\nrule: {segment: nowhere}\n"
    )
    with pytest.raises(LoadFailed):
        apply_paths(engine, [tmp_path / "s.yaml"])
    from activities.catalog import known_segments

    assert known_segments(engine) == {}


def test_published_rules_read_back_as_written(engine: Engine, tmp_path: Path) -> None:
    from activities.catalog import known_segments

    (tmp_path / "s.yaml").write_text(
        "kind: segment\nid: lapsed\n"
        "rule: {not: {attribute: last_seen, op: within_last, value: 400d}}\n"
    )
    apply_paths(engine, [tmp_path / "s.yaml"])
    rule = known_segments(engine)["lapsed"].rule.model_dump(mode="json")
    assert rule == {"not": {"attribute": "last_seen", "op": "within_last", "value": "400d"}}
    set_profile(engine, "old", attributes={"last_seen": "2020-01-01T00:00:00Z"})
    assert [t.segment_id for t in refresh_profile(engine, "old", profile_changed=True)] == [
        "lapsed"
    ]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_reads_keys_by_constant_path_in_the_order_written(engine: Engine) -> None:
    """SQLite parses a constant JSON path once per statement and a bound one on every row;
    values stay bound. A range of numbers is as cheap as an `in`: it keeps its place."""
    age_range = {"attribute": "age", "op": "between", "value": [25, 40]}
    countries = {"attribute": "country", "op": "in", "value": ["FR", "it's"]}
    rule = Segment.model_validate({"id": "s", "rule": {"all": [age_range, countries]}}).rule
    sent: list[tuple[str, tuple[object, ...]]] = []
    event.listen(engine, "before_cursor_execute", lambda *a: sent.append((a[2], a[3])))
    with engine.connect() as connection:
        connection.execute(members_query("sqlite", rule, datetime.now(UTC), {})).all()
    [(statement, parameters)] = sent
    age, country = statement.index("'$.age'"), statement.index("'$.country'")
    assert age < country and parameters == (25, 40, "FR", "it's")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_reads_a_number_range_once_by_a_bound_strict_jsonpath(engine: Engine) -> None:
    """`->` BETWEEN would read and copy the key twice and compare jsonb twice: the range is
    one strict-mode jsonpath filter, bound as a parameter like every value of the rule."""
    rule = Segment.model_validate(
        {"id": "s", "rule": {"attribute": "age", "op": "between", "value": [25, 40.5]}}
    ).rule
    sent: list[tuple[str, object]] = []
    event.listen(engine, "before_cursor_execute", lambda *a: sent.append((a[2], a[3])))
    with engine.connect() as connection:
        connection.execute(members_query("postgresql", rule, datetime.now(UTC), {})).all()
    [(statement, parameters)] = sent
    assert "@?" in statement and "->" not in statement and "age" not in statement
    assert list(parameters.values()) == ['strict $."age" ? (@ >= 25 && @ <= 40.5)']  # type: ignore[attr-defined]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_segment_query_run_again_is_planned_for_its_values(engine: Engine) -> None:
    """psycopg prepares a statement a connection has run five times, and PostgreSQL then
    tends to a generic plan, made without the values; a batch evaluation plans every run."""
    rule = Segment.model_validate(
        {"id": "s", "rule": {"attribute": "country", "op": "in", "value": ["FR", "DE"]}}
    ).rule
    plans: dict[bool, tuple[int, int]] = {}
    for custom in (False, True):
        with engine.connect() as connection:
            connection.exec_driver_sql("DEALLOCATE ALL")
            for _ in range(15):
                if custom:
                    plan_for_values(connection)
                connection.execute(members_query("postgresql", rule, datetime.now(UTC), {})).all()
            [plans[custom]] = connection.exec_driver_sql(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE starts_with(statement, 'SELECT profiles.id')"
            ).all()
            connection.rollback()
    assert plans[False][0] > 0 and plans[True] == (0, 10)


def test_a_failed_refresh_raises_sqlalchemys_error_and_leaves_the_pool_as_it_was(
    engine: Engine, tmp_path: Path
) -> None:
    """The refresh hands its read to the driver itself: a database error still comes out as
    SQLAlchemy's (the API answers OperationalError as "store unavailable"), and on PostgreSQL
    each connection goes back to the pool with autocommit off, as the pool hands them out."""
    (tmp_path / "s.yaml").write_text(SEGMENTS)
    apply_paths(engine, [tmp_path / "s.yaml"])
    set_profile(engine, "ada", attributes={"plan": "pro"})
    returned: list[object] = []
    event.listen(
        engine.pool, "checkin", lambda c, _: returned.append(getattr(c, "autocommit", None))
    )
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE events RENAME TO events_gone")
    try:
        with pytest.raises(DBAPIError, match="events"):
            refresh_profile(engine, "ada", event_type="order")
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE events_gone RENAME TO events")
    entered = refresh_profile(engine, "ada", profile_changed=True)
    assert [t.segment_id for t in entered] == ["pro"]
    if engine.dialect.name == "postgresql":
        assert returned and all(autocommit is False for autocommit in returned)


def test_a_refresh_reads_the_properties_of_only_the_events_a_where_reads(
    engine: Engine, tmp_path: Path
) -> None:
    """`shopper` counts visits of any kind and orders over 100: after a visit, the read brings
    the orders' properties and leaves the visits' unread, and the answer is unchanged."""
    (tmp_path / "s.yaml").write_text(
        "kind: segment\nid: shopper\n"
        "rule: {all: [{event: visit}, {event: order, where: {property: total, op: gt, value: 100}}]}\n"
    )
    apply_paths(engine, [tmp_path / "s.yaml"])
    now = datetime.now(UTC)
    for kind, total in (("visit", 500), ("order", 50)):
        record_event(
            engine,
            NewEvent(type=kind, profile_id="ada", properties={"total": total}, timestamp=now),
        )
    assert refresh_profile(engine, "ada", event_type="visit", now=now) == []
    plan = _read_catalog(engine).plan("visit", False)
    assert (plan.event_types, plan.properties) == (("order", "visit"), ("order",))
    events = sorted(row[-3:] for row in plan.fetch(engine, "ada", now) if row[-3] is not None)
    assert [(kind, properties) for kind, _, properties in events] == [
        ("order", {"total": 50}),
        ("visit", None),
    ]
    record_event(
        engine, NewEvent(type="order", profile_id="ada", properties={"total": 150}, timestamp=now)
    )
    entered = refresh_profile(engine, "ada", event_type="order", now=now)
    assert [(t.segment_id, t.entered) for t in entered] == [("shopper", True)]
