"""The profile store on SQLite: profiles, events, published versions, the delivery ledger."""

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Connection, create_engine, inspect, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from activities import catalog, db, ledger, rendering
from activities.campaigns import page_profile, profile_columns
from activities.db import ProfileRow, engine_for, utcnow
from activities.events import get_event, record_event
from activities.profiles import get_profile, set_profile
from activities.rendering import RenderError, message_context, render
from parcours.contracts import SendMessageInput
from parcours.definitions import Template
from parcours.delivery_policy import DeliveryPolicy
from parcours.errors import InputError
from parcours.loader import load_paths
from parcours.records import NewEvent, Profile
from parcours.settings import Settings
from tests.conftest import EXAMPLES


def test_migrations_create_every_table(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert {
        "profiles",
        "events",
        "templates",
        "journeys",
        "journey_versions",
        "deliveries",
    } <= tables


def test_profiles_merge_attributes_and_keep_unset_fields(engine: Engine) -> None:
    set_profile(engine, "ada", email="ada@example.com", attributes={"plan": "pro", "n": 1})
    profile = set_profile(engine, "ada", timezone="Europe/Paris", attributes={"n": 2})
    assert profile.email == "ada@example.com"
    assert profile.timezone == "Europe/Paris"
    assert profile.attributes == {"plan": "pro", "n": 2}
    assert get_profile(engine, "ada") == profile
    assert get_profile(engine, "nobody") is None


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("email", {"email": "not-an-email"}),
        ("phone", {"phone": "0612"}),
        ("timezone", {"timezone": "Mars/Base"}),
    ],
)
def test_bad_profile_fields_are_refused_by_name(
    engine: Engine, field: str, kwargs: dict[str, str]
) -> None:
    with pytest.raises(InputError) as raised:
        set_profile(engine, "ada", **kwargs)
    assert raised.value.field == field
    assert get_profile(engine, "ada") is None, "nothing half-written"


def test_a_nul_character_in_attributes_or_properties_is_refused_at_the_door(
    engine: Engine,
) -> None:
    # PostgreSQL's jsonb cannot hold one; SQLite could, but both stores answer alike.
    with pytest.raises(InputError) as raised:
        set_profile(engine, "ada", attributes={"note": "a\x00b"})
    assert raised.value.field == "attributes"
    assert get_profile(engine, "ada") is None, "nothing half-written"
    with pytest.raises(ValidationError, match=r"properties\.tags\[0\] holds a NUL character"):
        NewEvent(type="noted", profile_id="ada", properties={"tags": ["x\x00"]})


def test_events_are_idempotent_by_id_and_create_their_profile(engine: Engine) -> None:
    first, duplicate = record_event(engine, NewEvent(type="signed_up", profile_id="bob", id="e-1"))
    assert not duplicate
    again, duplicate = record_event(engine, NewEvent(type="signed_up", profile_id="bob", id="e-1"))
    assert duplicate and again == first
    assert get_profile(engine, "bob") is not None
    assert get_event(engine, "e-1") == first
    _, duplicate = record_event(engine, NewEvent(type="signed_up", profile_id="bob"))
    assert not duplicate


def test_publishing_makes_immutable_versions_and_skips_unchanged(
    engine: Engine, tmp_path: Path
) -> None:
    results = catalog.publish(engine, load_paths([EXAMPLES / "welcome"]))
    assert [str(r) for r in results][-1] == "journey welcome: published version 1 (live)"
    again = catalog.publish(
        engine, load_paths([EXAMPLES / "welcome"], catalog.known_templates(engine))
    )
    assert again[-1].outcome == "unchanged" and again[-1].version == 1

    changed = tmp_path / "welcome"
    changed.mkdir()
    for source in (EXAMPLES / "welcome").iterdir():
        (changed / source.name).write_text(
            source.read_text().replace("Thanks for signing up", "Welcome aboard")
        )
    results = catalog.publish(engine, load_paths([changed]))
    assert results[-1].version == 2
    # Version 1 keeps the template text it was published with.
    v1 = catalog.journey_template(engine, "welcome", 1, "welcome-email")
    v2 = catalog.journey_template(engine, "welcome", 2, "welcome-email")
    assert v1 is not None and v2 is not None
    assert "Thanks for signing up" in v1.body and "Welcome aboard" in v2.body
    [(journey, version)] = catalog.live_journeys_for_event(engine, "signed_up")
    assert (journey.id, version) == ("welcome", 2)
    assert catalog.live_journeys_for_event(engine, "other") == []


def request(key: str = "k1") -> SendMessageInput:
    return SendMessageInput(idempotency_key=key, profile_id="ada", channel="email", template="t")


def start_sending(engine: Engine, delivery_id: str) -> None:
    ada = Profile(id="ada", email="ada@example.com")
    admission = ledger.Admission(request(), ada, "ada@example.com", "s", "b", utcnow())
    assert ledger.admit(engine, delivery_id, admission, DeliveryPolicy()) is None


def test_a_claimed_delivery_is_settled_once(engine: Engine) -> None:
    claim = ledger.claim(engine, request())
    assert claim.settled is None
    ledger.finish(engine, claim.delivery_id, "sent", provider="outbox")
    again = ledger.claim(engine, request())
    assert again.delivery_id == claim.delivery_id
    assert again.settled is not None and again.settled.status == "sent"
    assert len(ledger.list_deliveries(engine)) == 1


def test_a_delivery_interrupted_during_the_provider_call_is_reported_unknown(
    engine: Engine,
) -> None:
    claim = ledger.claim(engine, request())
    start_sending(engine, claim.delivery_id)
    # The worker died here: the next attempt must ask the provider before sending again.
    again = ledger.claim(engine, request())
    assert (again.settled, again.unknown, again.to) == (None, True, "ada@example.com")


def test_a_released_delivery_can_be_attempted_again(engine: Engine) -> None:
    claim = ledger.claim(engine, request())
    start_sending(engine, claim.delivery_id)
    ledger.release(engine, claim.delivery_id, "SendGrid 503")
    assert ledger.claim(engine, request()).settled is None


def test_templates_are_strict_and_sandboxed() -> None:
    template = Template(id="t", channel="email", subject="Hi {{ profile.name }}", body="b")
    with pytest.raises(
        RenderError, match="template 't' subject: 'dict object' has no attribute 'name'"
    ):
        render(template, {"profile": {}})
    escape = Template(id="t", channel="sms", body="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(RenderError, match="unsafe"):
        render(escape, {})
    html = Template(id="t", channel="email", subject="s", body="{{ x }}", html="<p>{{ x }}</p>")
    rendered = render(html, {"x": "<script>"})
    assert rendered.text == "<script>" and rendered.html == "<p>&lt;script&gt;</p>"


def test_a_message_renders_its_parts_in_separate_contexts_with_jinja_globals() -> None:
    # One shared dict of variables, but a `{% set %}` in the subject stays in the subject.
    template = Template(
        id="t",
        channel="email",
        subject="{% set n = 3 %}{{ range(n) | list }}",
        body="{{ n }}",
    )
    with pytest.raises(RenderError, match="template 't' body: 'n' is undefined"):
        render(template, {})


def test_a_campaign_page_gives_templates_the_profile_as_pydantic_dumps_it(
    engine: Engine,
) -> None:
    set_profile(
        engine,
        "ada",
        email="ada@example.com",
        timezone="Europe/Paris",
        attributes={"plan": "pro", "n": 1.5, "tags": ["a"]},
        consent={"email": False},
        add_device_tokens=["t1"],
    )
    set_profile(engine, "bob")
    with engine.begin() as connection:
        # A time with no fraction of a second is written without one.
        connection.execute(
            update(ProfileRow)
            .where(ProfileRow.id == "bob")
            .values(created_at=datetime(2026, 3, 29, 1, 0, tzinfo=UTC))
        )
    with engine.connect() as connection:
        rows = connection.execute(
            select(*profile_columns(engine.dialect.name)).order_by(ProfileRow.id)
        ).all()
    profiles = [get_profile(engine, "ada"), get_profile(engine, "bob")]
    read = [page_profile(engine.dialect.name, row) for row in rows]
    assert read == [p.model_dump(mode="json") for p in profiles if p is not None]
    assert read[1] is not None and read[1]["created_at"] == "2026-03-29T01:00:00Z"


def test_a_campaign_page_renders_what_a_message_context_renders(tmp_path: Path) -> None:
    settings = Settings.load(tmp_path, env={})
    template = Template(
        id="t",
        channel="email",
        subject="{{ profile.attributes.plan }} {{ journey.id }} {{ event }}",
        body="{{ unsubscribe_url }} {% set n = 2 %}{{ range(n)|list }}",
        html="<p>{{ profile.email }}</p>",
    )
    profile = Profile(id="ada", email="a<b@example.com", attributes={"plan": "pro"})
    renderer = rendering.renderer(template)
    for_page = renderer.render_profile(settings, profile.model_dump(mode="json"))
    assert for_page == render(template, message_context(settings, template, profile, None))
    assert for_page.subject == "pro None {}"
    assert for_page.text.startswith("http") and for_page.text.endswith("[0, 1]")
    assert for_page.html == "<p>a&lt;b@example.com</p>"


def test_migrations_upgrade_a_store_that_already_holds_profiles(database_url: str) -> None:
    from alembic import command
    from sqlalchemy import create_engine, text

    from activities.db import _alembic_config, migrate

    raw = create_engine(database_url)
    command.upgrade(_alembic_config(raw), "0001")
    with raw.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO profiles (id, email, attributes, created_at, updated_at) "
                "VALUES ('old', 'old@example.com', '{\"plan\": \"pro\"}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    migrate(raw)
    raw.dispose()
    profile = get_profile(engine_for(database_url), "old")
    assert profile is not None and profile.attributes == {"plan": "pro"}


def test_two_stores_in_one_process_each_route_by_their_own_version_1(tmp_path: Path) -> None:
    # Parsed versions are cached per process: by content, so another store's "version 1"
    # of the same journey is never mistaken for this one's.
    routes = {}
    for name, entry in (("one", "signed_up"), ("two", "registered")):
        folder = tmp_path / name
        folder.mkdir()
        for source in (EXAMPLES / "welcome").iterdir():
            (folder / source.name).write_text(source.read_text().replace("signed_up", entry))
        store = engine_for(f"sqlite:///{tmp_path / name / 'parcours.db'}")
        catalog.publish(store, load_paths([folder]))
        routes[name] = (
            catalog.routes_for_event(store, "signed_up"),
            catalog.routes_for_event(store, "registered"),
        )
    assert [(j.id, v) for j, v in routes["one"][0].entering] == [("welcome", 1)]
    assert routes["one"][1].entering == []
    assert routes["two"][0].entering == []
    assert [(j.id, v) for j, v in routes["two"][1].entering] == [("welcome", 1)]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_connection_back_moments_ago_is_not_pinged_and_a_drop_is_caught_on_use(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = create_engine(engine.url, isolation_level="AUTOCOMMIT")

    def backend(connection: Connection) -> int:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def drop(pid: int) -> None:
        with admin.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            gone = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
            while connection.execute(gone, {"pid": pid}).scalar_one():
                time.sleep(0.01)

    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 60.0)
    with engine.connect() as connection:
        pid = backend(connection)
    drop(pid)
    # Within the window no ping is sent: the drop shows on use, as a disconnect...
    with pytest.raises(DBAPIError) as failed, engine.connect() as connection:
        backend(connection)
    assert failed.value.connection_invalidated
    # ...after which the pool hands out live connections.
    with engine.connect() as connection:
        assert backend(connection) != pid

    # Idle past the window, a connection is pinged and a dropped one replaced before use.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)
    with engine.connect() as connection:
        pid = backend(connection)
    drop(pid)
    with engine.connect() as connection:
        assert backend(connection) != pid
    admin.dispose()


def test_ordered_ids_are_distinct_uuid7s_in_time_order() -> None:
    first = db.ordered_ids(1000)
    time.sleep(0.002)
    second = db.ordered_ids(3)
    ids = [uuid.UUID(i) for i in first + second]
    assert [str(u) for u in ids] == first + second
    assert {(u.version, u.variant) for u in ids} == {(7, uuid.RFC_4122)}
    assert len(set(ids)) == 1003
    # The first 48 bits are the milliseconds they were made at.
    stamps = [u.int >> 80 for u in ids]
    assert max(stamps[:1000]) < min(stamps[1000:])
    assert abs(stamps[-1] - time.time_ns() // 1_000_000) < 5_000
    assert db.ordered_ids(0) == []


def test_is_one_of_finds_exactly_the_listed_values_through_one_parameter(engine: Engine) -> None:
    awkward = ["a'b", 'quote"d', "ünï", "comma,and]bracket", "back\\slash", "x" * 300]
    with engine.begin() as connection:
        for n, address in enumerate([*awkward, "other", "also-other"]):
            connection.execute(
                db.SuppressionRow.__table__.insert().values(
                    channel="email", address=address, reason="bounced", source=f"t{n}",
                    created_at=utcnow(),
                )
            )  # fmt: skip
    column = db.SuppressionRow.address
    listed = [*awkward, "never-stored"] * 200  # a page's worth, with repeats
    condition = db.is_one_of(column, listed, engine.dialect.name)
    # As the driver gets it: an IN list would be a parameter per value.
    compiled = condition.compile(
        dialect=engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    assert len(compiled.params) == 1
    with engine.connect() as connection:
        found = connection.scalars(select(column).where(condition)).all()
        none = connection.scalars(
            select(column).where(db.is_one_of(column, [], engine.dialect.name))
        ).all()
    assert sorted(found) == sorted(awkward) and none == []
