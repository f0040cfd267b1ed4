"""The store's tables, engines and migrations (SQLAlchemy 2, Alembic).

One code path for SQLite (the default) and PostgreSQL: generic column types, JSON as
SQLAlchemy's JSON type, except the objects segment rules read key by key (`JsonObject`).
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic_core import from_json
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    any_,
    create_engine,
    event,
    func,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql.elements import ColumnElement, SQLCoreOperations

from parcours.evaluate import epoch

MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


def dialect_of(session: Session | Connection) -> str:
    return (session.get_bind() if isinstance(session, Session) else session).dialect.name


def is_one_of(
    column: SQLCoreOperations[str], values: Sequence[str], dialect: str
) -> ColumnElement[bool]:
    """`column IN (values)` with the values bound as one parameter: a JSON array that SQLite
    reads with `json_each`, an array on PostgreSQL (`= ANY`).

    For an IN list SQLAlchemy renders and processes a parameter per value on every execution,
    in Python: for a campaign page's thousand keys that costs more than the lookups do
    (2.4 ms a query against 1.7 ms, measured on the ledger). One value is an equality: a
    journey's frequency cap asks for one profile, and the array cost it 0.1 ms more."""
    if len(values) == 1:
        return column == values[0]
    if dialect == "postgresql":
        return column == any_(literal(list(values), postgresql.ARRAY(String)))
    listed = func.json_each(literal(json.dumps(list(values)), String)).table_valued("value")
    return column.in_(select(listed.c.value))


def plan_for_values(session: Session | Connection) -> None:
    """On PostgreSQL, plan the rest of this transaction's statements for the values they run
    with, and for the tables as they are now.

    psycopg prepares a statement once a connection has run it five times, and PostgreSQL may
    then keep a generic plan, made without the values (and perhaps while a table was small).
    For an `id IN (…)` lookup that was a sequential scan comparing every row with every id,
    which an import made slower with each batch (two seconds a lookup at 50,000 profiles).
    For a segment query it builds a rule's `IN ($2, $3, $4)` as an array anew for every row
    and guesses row counts blind: "age between and country in" ran a fifth slower on a
    million profiles (EXPLAIN ANALYZE EXECUTE, 512 ms against 430 ms). Planning again costs
    well under a millisecond. A setting of the transaction: the streaming refresh keeps its
    generic plan.
    """
    if dialect_of(session) == "postgresql":
        session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))


def insert_many(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows (all with the same keys) in one executemany handed straight to the driver.

    SQLAlchemy's own executemany builds and type-processes each row's parameters in Python,
    which for a thousand rows costs several times what the database takes to insert them.
    Here the statement is compiled by SQLAlchemy for the connection's dialect and each
    column's bind processor runs once per distinct value (rows inserted together mostly share
    their timestamps)."""
    if not rows:
        return
    columns = list(rows[0])
    dialect = connection.dialect
    compiled = insert(table).compile(dialect=dialect, column_keys=columns)
    processors = {
        column: processor
        for column in columns
        if (processor := table.c[column].type.dialect_impl(dialect).bind_processor(dialect))
    }
    order = list(compiled.positiontup or []) if compiled.positional else columns
    # Each row's values in statement order, then only the columns with a processor fixed up:
    # most of a ledger row's columns are strings the driver takes as they are.
    fixed = [(i, _memoized(processors[name])) for i, name in enumerate(order) if name in processors]
    # One C call per row for its values (itemgetter of a single name gives no tuple).
    values_of = itemgetter(*order) if len(order) > 1 else lambda row: (row[order[0]],)
    parameters: list[Any] = []
    for row in rows:
        values = list(values_of(row))
        for i, process in fixed:
            values[i] = process(values[i])
        parameters.append(
            tuple(values) if compiled.positional else dict(zip(order, values, strict=True))
        )
    connection.exec_driver_sql(str(compiled), parameters)


def _memoized(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A bind processor run once per distinct value (rows inserted together mostly share
    their timestamps); None is passed through, as SQLAlchemy does."""
    memo: dict[Any, Any] = {}

    def process(raw: Any) -> Any:
        if raw is None:
            return None
        if raw not in memo:
            memo[raw] = processor(raw)
        return memo[raw]

    return process


def ordered_ids(count: int) -> list[str]:
    """`count` new UUIDv7s (RFC 9562): time first, so rows inserted together land together at
    the end of their primary-key index. A thousand random UUIDv4s would dirty a thousand of its
    pages, and writing those pages costs more than inserting the rows."""
    millis = f"{time.time_ns() // 1_000_000:012x}"
    time_part = f"{millis[:8]}-{millis[8:]}-7"  # 48 bits of milliseconds, then version 7
    # 80 random bits per id as 20 hex digits: 12 after the version, 2 under the variant, 62 last.
    digits = os.urandom(10 * count).hex()
    return [
        f"{time_part}{digits[i : i + 3]}-{_VARIANT[digits[i + 3]]}{digits[i + 4 : i + 7]}"
        f"-{digits[i + 7 : i + 19]}"
        for i in range(0, 20 * count, 20)
    ]


# A hex digit's two low bits under RFC 9562's variant (0b10): the id's 17th digit.
_VARIANT = {f"{n:x}": f"{0b1000 | n & 0b11:x}" for n in range(16)}


class UTCDateTime(TypeDecorator[datetime]):
    """SQLite forgets time zones; every timestamp here is UTC, so give it back as such."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def result_processor(self, dialect: Any, coltype: Any) -> Callable[[Any], Any] | None:
        default = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite" or default is None:
            return default
        fallback = default

        # SQLAlchemy parses SQLite's timestamp text with a regular expression and a datetime
        # built in Python, a few microseconds each: a campaign page reads two per recipient.
        # `fromisoformat` reads the same "YYYY-MM-DD HH:MM:SS.ffffff" in C.
        def process(value: Any) -> datetime | None:
            if value is None:
                return None
            if type(value) is str:
                try:
                    parsed = datetime.fromisoformat(value)
                except ValueError:
                    return fallback(value)
                return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
            return fallback(value)

        return process


# Attributes, consent and event properties: read key by key by every segment rule. PostgreSQL's
# `json` is text, parsed again by each `->`; `jsonb` is parsed once, when written.
JsonObject = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class ProfileRow(Base):
    __tablename__ = "profiles"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    phone: Mapped[str | None] = mapped_column(String(32), index=True)
    timezone: Mapped[str | None] = mapped_column(String(64))
    locale: Mapped[str | None] = mapped_column(String(35))
    attributes: Mapped[dict[str, Any]] = mapped_column(JsonObject, default=dict)
    # {channel: {"status": "opted_in" | "opted_out", "source": str, "at": RFC 3339}}
    consent: Mapped[dict[str, Any]] = mapped_column(JsonObject, default=dict)
    device_tokens: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SegmentRow(Base):
    __tablename__ = "segments"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    definition: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CatalogRevisionRow(Base):
    """A token replaced in every transaction that changes a catalog (`segments`): a process
    keeping parsed segments checks it with one indexed read instead of reading them all. A
    random token, not a counter, so a database created afresh never matches an old one."""

    __tablename__ = "catalog_revisions"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    token: Mapped[str] = mapped_column(String(32))


class MembershipRow(Base):
    """A profile's membership of a segment: kept after exit, so history stays readable."""

    __tablename__ = "memberships"
    segment_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    active: Mapped[bool]
    entered_at: Mapped[datetime]
    exited_at: Mapped[datetime | None]
    # Decision engines ask "which segments is this profile in now?" on a page's request path.
    __table_args__ = (Index("ix_memberships_profile_active", "profile_id", "active"),)


class EventRow(Base):
    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(255), unique=True)
    profile_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(255))
    timestamp: Mapped[datetime]
    properties: Mapped[dict[str, Any]] = mapped_column(JsonObject, default=dict)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Empty while the event waits to be routed (see migration 0009).
    routed_at: Mapped[datetime | None]
    __table_args__ = (
        Index("ix_events_profile_type_time", "profile_id", "type", "timestamp"),
        # The few events still waiting, for the schedule that routes those left behind.
        Index(
            "ix_events_waiting",
            "received_at",
            sqlite_where=text("routed_at IS NULL"),
            postgresql_where=text("routed_at IS NULL"),
        ),
    )


class TemplateRow(Base):
    __tablename__ = "templates"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    definition: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JourneyRow(Base):
    __tablename__ = "journeys"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    current_version: Mapped[int]
    entry_event: Mapped[str | None] = mapped_column(String(255), index=True)
    entry_segment: Mapped[str | None] = mapped_column(String(128), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JourneyVersionRow(Base):
    __tablename__ = "journey_versions"
    journey_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("journeys.id"), primary_key=True
    )
    version: Mapped[int] = mapped_column(primary_key=True)
    # The journey and a copy of each template it uses: a version never changes once published.
    definition: Mapped[dict[str, Any]]
    templates: Mapped[dict[str, Any]]
    checksum: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JourneyEntryRow(Base):
    """Who entered which journey, across all its versions: what re-entry rules read."""

    __tablename__ = "journey_entries"
    journey_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    first_entered_at: Mapped[datetime]
    last_entered_at: Mapped[datetime]
    last_version: Mapped[int]
    entries: Mapped[int] = mapped_column(default=1)


class JourneyFinishRow(Base):
    """One finished entry (ended or left early): what `journeys show` counts per node."""

    __tablename__ = "journey_finishes"
    workflow_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    first_run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    journey_id: Mapped[str] = mapped_column(String(128))
    version: Mapped[int]
    profile_id: Mapped[str] = mapped_column(String(255))
    node: Mapped[str] = mapped_column(String(128))
    exit: Mapped[str | None] = mapped_column(Text)
    visits: Mapped[dict[str, Any]]  # node id -> times entered
    finished_at: Mapped[datetime]
    __table_args__ = (Index("ix_journey_finishes_journey", "journey_id", "version"),)


class ConversionRow(Base):
    """A journey goal reached: at most one per entry, attributed to its version and variants."""

    __tablename__ = "conversions"
    journey_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    entered_at: Mapped[datetime] = mapped_column(primary_key=True)
    version: Mapped[int]
    variants: Mapped[dict[str, Any]]  # split node id -> variant name
    event_id: Mapped[str] = mapped_column(String(255))
    converted_at: Mapped[datetime]


class DeliveryRow(Base):
    __tablename__ = "deliveries"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(512), unique=True)
    profile_id: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    journey_id: Mapped[str | None] = mapped_column(String(128))
    journey_version: Mapped[int | None]
    node_id: Mapped[str | None] = mapped_column(String(128))
    campaign_id: Mapped[str | None] = mapped_column(String(128))
    workflow_id: Mapped[str | None] = mapped_column(String(512))
    run_id: Mapped[str | None] = mapped_column(String(64))
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    to_address: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    # Transactional messages bypass frequency caps and quiet hours.
    priority: Mapped[str] = mapped_column(String(16), default="marketing")
    # When the provider was called: what frequency caps count.
    sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        # Every lookup by profile: frequency caps, erasure, `GET /v1/deliveries`.
        Index("ix_deliveries_profile_channel_sent", "profile_id", "channel", "sent_at"),
        # A campaign run's report groups its deliveries.
        Index("ix_deliveries_workflow", "workflow_id"),
    )


class CampaignRow(Base):
    __tablename__ = "campaigns"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    definition: Mapped[dict[str, Any]]
    # A copy of the templates it sends, taken when it was applied, like a journey version's.
    templates: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))  # active | paused
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CampaignRunRow(Base):
    __tablename__ = "campaign_runs"
    id: Mapped[str] = mapped_column(String(512), primary_key=True)  # the run's workflow id
    campaign_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # running | completed | cancelled
    # The campaign and its templates as they were when the run started.
    definition: Mapped[dict[str, Any]]
    templates: Mapped[dict[str, Any]]
    audience_size: Mapped[int | None]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    report: Mapped[dict[str, Any] | None]

    __table_args__ = (Index("ix_campaign_runs_campaign", "campaign_id", "started_at"),)


class CampaignAudienceRow(Base):
    """A run's audience, fixed when it starts and numbered so it can be sent page by page."""

    __tablename__ = "campaign_audience"
    run_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(255))


class SuppressionRow(Base):
    """An address no message may go to on a channel (a STOP reply, a bounce, a spam report),
    whichever profile holds it now or later."""

    __tablename__ = "suppressions"
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProviderEventRow(Base):
    """A provider callback already applied: a replayed one changes nothing."""

    __tablename__ = "provider_events"
    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


def dialect_insert(dialect: str) -> Callable[[Any], postgresql.Insert | sqlite.Insert]:
    """The INSERT of the two databases with `ON CONFLICT` (both spell it the same way)."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the worker write while the CLI reads; busy_timeout makes concurrent writers
    # wait their turn instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # PostgreSQL gets this function from migration 0003; both parse what the in-memory
    # evaluator parses.
    dbapi_connection.create_function("parcours_epoch", 1, epoch, deterministic=True)


# A connection given back this recently answered its last statement moments ago: as HikariCP
# does (its "alive bypass window", also 500 ms), it is not pinged again. A connection dropped
# within the window fails on use instead, as a disconnect, which makes the pool replace every
# connection it holds. Under load that saves one round trip per checkout: for the streaming
# refresh after each event, half of its time on the wire.
PING_AFTER_IDLE_S = 0.5
_returned_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def _note_return(dbapi_connection: Any, _record: Any) -> None:
    if dbapi_connection is not None:
        _returned_at[dbapi_connection] = time.monotonic()


def _ping_outside_transaction(dbapi_connection: Any) -> bool:
    """The pre-ping, without the BEGIN psycopg would send first (and the ROLLBACK the pool
    sends on return): one round trip, not three, before each use of a pooled connection that
    has been idle for more than `PING_AFTER_IDLE_S`."""
    returned_at = _returned_at.get(dbapi_connection)
    if returned_at is not None and time.monotonic() - returned_at < PING_AFTER_IDLE_S:
        return True
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        dbapi_connection.execute("SELECT 1")
    finally:
        dbapi_connection.autocommit = autocommit
    return True


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """One engine per URL per process, migrated to the latest schema on first use."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            # A file needs no liveness check; a server connection may have been dropped.
            engine = create_engine(
                url,
                pool_pre_ping=not url.startswith("sqlite"),
                # pydantic's JSON parser, several times faster than the json module's on the
                # short documents rows hold: a campaign page reads three per recipient.
                json_deserializer=from_json,
            )
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            elif engine.dialect.driver == "psycopg":
                engine.dialect.do_ping = _ping_outside_transaction  # type: ignore[method-assign]
                event.listen(engine.pool, "checkin", _note_return)
            migrate(engine)
            _engines[url] = engine
        return engine


def close_engine(url: str) -> None:
    """Release the engine's connections (tests, and processes that switch stores)."""
    with _engines_lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest revision; cheap when it already is."""
    config = _alembic_config(engine)
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        command.upgrade(config, "head")
