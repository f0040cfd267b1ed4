"""Profile and event imports (SPEC §2 Imports): files streamed in batches, bad lines reported.

A file is never held in memory: lines are read one at a time and written `batch_size` at a
time, one transaction per batch, through the same paths as single writes (`upsert_profiles`,
`record_events`). A bad line is reported with its number and the field at fault, and skipped;
every good line is kept. Importing the same file again changes nothing: profiles merge to the
values they already hold, and events without an id get one derived from their content.

CSV needs two passes: the first types each attribute column (integer, number, boolean or
RFC 3339 datetime when every non-empty value parses so, else string), the second imports.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, Literal, TypeVar

from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError

from activities.events import content_event_id, record_events
from activities.profiles import (
    ProfileUpdate,
    profile_update,
    upsert_profiles,
)
from parcours.errors import InputError
from parcours.evaluate import epoch
from parcours.records import NewEvent

IDENTITY_COLUMNS = ("id", "email", "phone", "timezone", "locale")
PROFILE_FIELDS = (*IDENTITY_COLUMNS, "attributes", "consent", "device_tokens")
EVENT_FIELDS = ("id", "type", "profile_id", "timestamp", "properties")
CONSENT_SOURCE = "import"
DEFAULT_BATCH_SIZE = 1000
# The summary keeps the first errors only, so a file of a million bad lines stays small in
# memory; `on_error` still sees every one of them.
MAX_KEPT_ERRORS = 1000

ColumnType = Literal["integer", "number", "boolean", "datetime", "string"]
# Narrowest first: a column of integers is "integer" although every value is a number too.
_TYPE_ORDER: tuple[ColumnType, ...] = ("integer", "number", "boolean", "datetime")
# No leading zeros: "01234" is a postcode or an id, and as an integer it would lose its zero.
_INTEGER = re.compile(r"^[+-]?(?:0|[1-9][0-9]*)$")
_NUMBER = re.compile(r"^[+-]?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$")

T = TypeVar("T")
Progress = Callable[[str, int, int | None], None]  # phase, bytes read, file size (if known)


class ImportFileError(ValueError):
    """The file cannot be imported at all (unreadable, not UTF-8, a CSV without `id`)."""


@dataclass(frozen=True)
class LineError:
    line: int
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"line {self.line}: {where}{self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "reason": self.reason}


@dataclass
class ImportSummary:
    file: str
    kind: Literal["profiles", "events"]
    lines: int = 0  # data lines read (blank lines and a CSV header are not counted)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    accepted: int = 0
    duplicates: int = 0
    failed: int = 0
    errors: list[LineError] = field(default_factory=list)  # the first MAX_KEPT_ERRORS

    def count(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def fail(self, error: LineError) -> None:
        self.failed += 1
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(error)

    def to_json(self) -> dict[str, Any]:
        counts = (
            {"created": self.created, "updated": self.updated, "unchanged": self.unchanged}
            if self.kind == "profiles"
            else {"accepted": self.accepted, "duplicates": self.duplicates}
        )
        return {
            "file": self.file,
            "lines": self.lines,
            **counts,
            "failed": self.failed,
            "errors": [error.to_json() for error in self.errors],
            "errors_omitted": self.failed - len(self.errors),
        }

    def __str__(self) -> str:
        if self.kind == "profiles":
            counts = (
                f"{_plural(self.created, 'profile')} created, {self.updated} updated, "
                f"{self.unchanged} unchanged"
            )
        else:
            counts = (
                f"{_plural(self.accepted, 'event')} accepted, "
                f"{_plural(self.duplicates, 'duplicate')}"
            )
        return (
            f"{self.file}: {_plural(self.lines, 'line')} read: {counts}, "
            f"{_plural(self.failed, 'error')}"
        )


def import_profiles(
    engine: Engine,
    path: Path | str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Progress | None = None,
    on_error: Callable[[LineError], None] | None = None,
) -> ImportSummary:
    """Import a `.csv` or `.jsonl` file of profiles, merging into existing ones."""
    path = Path(path)
    kind = _format(path, ("csv", "jsonl"))
    if kind == "csv":
        types = infer_csv_types(path, on_progress=on_progress)
        items = _csv_profiles(path, types)
    else:
        items = _jsonl_items(path, _profile_from_json)
    summary = ImportSummary(str(path), "profiles")

    def write(updates: Sequence[ProfileUpdate]) -> list[str]:
        return list(upsert_profiles(engine, updates))

    _run(items, summary, batch_size, write, on_progress, on_error)
    return summary


def import_events(
    engine: Engine,
    path: Path | str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Progress | None = None,
    on_error: Callable[[LineError], None] | None = None,
) -> ImportSummary:
    """Import a `.jsonl` file of events; an event already stored (same id) is a duplicate."""
    path = Path(path)
    _format(path, ("jsonl",))
    summary = ImportSummary(str(path), "events")

    def write(events: Sequence[NewEvent]) -> list[str]:
        return ["duplicates" if dup else "accepted" for _, dup in record_events(engine, events)]

    _run(_jsonl_items(path, _event_from_json), summary, batch_size, write, on_progress, on_error)
    return summary


def infer_csv_types(
    path: Path | str, *, on_progress: Progress | None = None
) -> dict[str, ColumnType]:
    """The first pass over a CSV file: the type of each attribute column."""
    path = Path(path)
    with _CsvFile(path) as file:
        candidates = {
            name: set(_TYPE_ORDER) for name in file.header if name not in IDENTITY_COLUMNS
        }
        for line, cells in file.rows():
            if len(cells) != len(file.header):
                continue  # reported in the second pass
            for name, cell in zip(file.header, cells, strict=True):
                possible = candidates.get(name)
                value = cell.strip()
                if possible and value:
                    possible.difference_update(t for t in tuple(possible) if not _parses(t, value))
            if on_progress is not None and line % 1000 == 0:
                on_progress("scanning", file.position(), file.size)
        if on_progress is not None:
            on_progress("scanning", file.position(), file.size)
    return {
        name: next((t for t in _TYPE_ORDER if t in possible), "string")
        for name, possible in candidates.items()
    }


def typed_value(column_type: ColumnType, value: str) -> Any:
    """A CSV cell as the attribute value of its column's type (datetimes stay ISO strings)."""
    if column_type == "integer":
        return int(value)
    if column_type == "number":
        return float(value)
    if column_type == "boolean":
        return value.lower() == "true"
    return value


@dataclass(frozen=True)
class _Item(Generic[T]):
    line: int
    value: T | LineError
    position: int  # bytes read so far


class _Items(Generic[T]):
    """A file's parsed lines, with the file's size for progress."""

    def __init__(self, items: Iterator[_Item[T]], size: int | None) -> None:
        self.items = items
        self.size = size


def _run(
    items: _Items[T],
    summary: ImportSummary,
    batch_size: int,
    write: Callable[[Sequence[T]], list[str]],
    on_progress: Progress | None,
    on_error: Callable[[LineError], None] | None,
) -> None:
    if batch_size < 1:
        raise ValueError("batch size: expected at least 1")
    batch: list[tuple[int, T]] = []
    position = 0

    def report(error: LineError) -> None:
        summary.fail(error)
        if on_error is not None:
            on_error(error)

    def progress() -> None:
        if on_progress is not None:
            on_progress("importing", position, items.size)

    def flush() -> None:
        for outcome in _write_batch(batch, write, report):
            if outcome is not None:
                summary.count(outcome)
        batch.clear()
        progress()

    for item in items.items:
        summary.lines += 1
        position = item.position
        if isinstance(item.value, LineError):
            report(item.value)
            if summary.lines % 1000 == 0:
                progress()  # a file of bad lines moves the bar too
        else:
            batch.append((item.line, item.value))
            if len(batch) >= batch_size:
                flush()
    flush()


def _write_batch(
    batch: list[tuple[int, T]],
    write: Callable[[Sequence[T]], list[str]],
    report: Callable[[LineError], None],
) -> list[str | None]:
    """Write a batch in one transaction; when the database refuses it, write its lines one by one
    so that only the line it refuses is reported."""
    if not batch:
        return []
    try:
        return list(write([value for _, value in batch]))
    except (DataError, IntegrityError):
        pass  # rolled back: find the line at fault
    outcomes: list[str | None] = []
    for line, value in batch:
        try:
            outcomes.extend(write([value]))
        except (DataError, IntegrityError) as exc:
            reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
            report(LineError(line, None, f"refused by the database: {reason}"))
            outcomes.append(None)
    return outcomes


def _format(path: Path, allowed: tuple[str, ...]) -> str:
    suffix = path.suffix.lower().lstrip(".")
    kind = "jsonl" if suffix == "ndjson" else suffix
    if kind not in allowed:
        expected = " or ".join(f".{a}" for a in allowed)
        raise ImportFileError(f"{path}: cannot tell the file's format: expected a {expected} file")
    if not path.exists():
        raise ImportFileError(f"cannot read {path}: no such file")
    if path.is_dir():
        raise ImportFileError(f"cannot read {path}: it is a directory")
    return kind


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror or exc}") from None


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _jsonl_items(path: Path, parse: Callable[[dict[str, Any]], T]) -> _Items[T]:
    def lines() -> Iterator[_Item[T]]:
        position = 0
        with _open(path) as file:
            for number, raw in enumerate(file, start=1):
                position += len(raw)
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 byte order mark, as some editors write
                if not raw.strip():
                    continue
                yield _Item(number, _parse_json_line(number, raw, parse), position)

    return _Items(lines(), _file_size(path))


def _parse_json_line(
    number: int, raw: bytes, parse: Callable[[dict[str, Any]], T]
) -> T | LineError:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LineError(number, None, f"not UTF-8 text (byte {exc.start + 1})")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return LineError(number, None, f"not JSON: {exc.msg} (column {exc.colno})")
    if not isinstance(obj, dict):
        return LineError(number, None, "expected a JSON object")
    try:
        return parse(obj)
    except InputError as exc:
        return LineError(number, exc.field, exc.message)


def _profile_from_json(obj: dict[str, Any]) -> ProfileUpdate:
    _no_unknown_fields(obj, PROFILE_FIELDS)
    profile_id = obj.get("id")
    if isinstance(profile_id, int) and not isinstance(profile_id, bool):
        profile_id = str(profile_id)  # customer ids exported as numbers
    if profile_id is None:
        raise InputError("id", "missing: every profile needs an id")
    if not isinstance(profile_id, str):
        raise InputError("id", f"expected a string, got {profile_id!r}")
    strings = {name: _typed(obj, name, str, "a string") for name in IDENTITY_COLUMNS[1:]}
    return profile_update(
        profile_id,
        email=strings["email"],
        phone=strings["phone"],
        timezone=strings["timezone"],
        locale=strings["locale"],
        attributes=_typed(obj, "attributes", dict, "an object"),
        consent=_typed(obj, "consent", dict, 'an object such as {"email": false}'),
        consent_source=CONSENT_SOURCE,
        add_device_tokens=_typed(obj, "device_tokens", list, "a list of strings") or (),
    )


def _event_from_json(obj: dict[str, Any]) -> NewEvent:
    _no_unknown_fields(obj, EVENT_FIELDS)
    try:
        new = NewEvent.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "event"
        value = first.get("input")
        if first["type"] == "missing":
            reason = "missing"
        elif name == "timestamp":
            reason = f"{value!r} is not an RFC 3339 datetime (e.g. 2026-01-31T09:00:00Z)"
        elif name == "type" and first["type"] == "string_pattern_mismatch":
            reason = f"{value!r} is not an event type: expected no spaces"
        elif first["type"] == "value_error":  # our own validators' messages are whole
            reason = str(first["ctx"]["error"])
        else:
            reason = f"{value!r}: {first['msg']}"
        raise InputError(name, reason) from None
    if new.id is None:
        new = new.model_copy(update={"id": content_event_id(new)})
    return new


def _no_unknown_fields(obj: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = [name for name in obj if name not in known]
    if unknown:
        # Quoted, so an empty or blank name still reads as a name.
        raise InputError(
            unknown[0], f"unknown field {unknown[0]!r}; expected one of {', '.join(known)}"
        )


def _typed(obj: dict[str, Any], name: str, kind: type, expected: str) -> Any:
    value = obj.get(name)
    if value is not None and not isinstance(value, kind):
        raise InputError(name, f"expected {expected}, got {value!r}")
    return value


class _CsvFile:
    """A CSV file with its header checked, decoded line by line so that a bad byte is reported
    with its line, counting lines and bytes as the csv reader takes them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = _file_size(path)
        self._binary = _open(path)
        self._lines = 0  # physical lines the csv reader has taken
        self._position = 0  # bytes the csv reader has taken
        lines = self._decoded_lines()
        try:
            first = next(lines, "")
        except ImportFileError:
            self.close()
            raise
        # Spreadsheets set to European locales write `;`: take the separator the header uses.
        delimiter = max(",;\t", key=first.count)
        self._reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
        self.header = [_column_name(name) for name in next(self._reader, [])]
        self._check_header()

    def _decoded_lines(self) -> Iterator[str]:
        for raw in self._binary:
            self._lines += 1
            self._position += len(raw)
            if self._lines == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]  # spreadsheets often start exports with one
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ImportFileError(f"{self.path}: line {self._lines}: not UTF-8 text") from None

    def _check_header(self) -> None:
        problem = None
        if not self.header:
            problem = "empty file: expected a header line with an id column"
        elif "id" not in self.header:
            problem = f"the header has no id column (columns: {', '.join(self.header)})"
        elif "" in self.header:
            problem = f"header column {self.header.index('') + 1} has no name"
        elif len(set(self.header)) != len(self.header):
            repeated = next(n for n in self.header if self.header.count(n) > 1)
            problem = f"the header repeats column {repeated!r}"
        if problem is not None:
            self.close()
            raise ImportFileError(f"{self.path}: {problem}")

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """(physical line where the row starts, cells); a quoted cell may span several lines."""
        while True:
            line = self._lines + 1
            try:
                cells = next(self._reader, None)
            except csv.Error as exc:  # e.g. an unclosed quote running into the field size limit
                raise ImportFileError(f"{self.path}: line {line}: {exc}") from None
            if cells is None:
                return
            if any(cell.strip() for cell in cells):
                yield line, cells

    def position(self) -> int:
        return self._position

    def close(self) -> None:
        self._binary.close()

    def __enter__(self) -> _CsvFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _column_name(cell: str) -> str:
    """`Email` or ` ID ` from a spreadsheet still name the identity columns; attribute names
    keep their case."""
    name = cell.strip()
    return name.lower() if name.lower() in IDENTITY_COLUMNS else name


def _csv_profiles(path: Path, types: dict[str, ColumnType]) -> _Items[ProfileUpdate]:
    file = _CsvFile(path)

    def items() -> Iterator[_Item[ProfileUpdate]]:
        with file:
            for line, cells in file.rows():
                yield _Item(
                    line, _profile_from_csv(line, file.header, cells, types), file.position()
                )

    return _Items(items(), file.size)


def _profile_from_csv(
    line: int, header: list[str], cells: list[str], types: dict[str, ColumnType]
) -> ProfileUpdate | LineError:
    if len(cells) != len(header):
        return LineError(line, None, f"expected {len(header)} columns, found {len(cells)}")
    # An empty cell means "not given": the stored value stays.
    given = {name: cell.strip() for name, cell in zip(header, cells, strict=True) if cell.strip()}
    if "id" not in given:
        return LineError(line, "id", "missing: every profile needs an id")
    try:
        return profile_update(
            given["id"],
            email=given.get("email"),
            phone=given.get("phone"),
            timezone=given.get("timezone"),
            locale=given.get("locale"),
            attributes={
                name: typed_value(types[name], value)
                for name, value in given.items()
                if name not in IDENTITY_COLUMNS
            },
            consent_source=CONSENT_SOURCE,
        )
    except InputError as exc:
        return LineError(line, exc.field, exc.message)


def _parses(column_type: ColumnType, value: str) -> bool:
    if column_type == "integer":
        return bool(_INTEGER.match(value))
    if column_type == "number":
        return bool(_NUMBER.match(value)) and math.isfinite(float(value))
    if column_type == "boolean":
        return value.lower() in ("true", "false")
    return epoch(value) is not None  # RFC 3339, as the segment evaluators read it


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
