"""Imports never crash on a bad line: every line is imported or counted as failed with the field
at fault named, on SQLite and PostgreSQL; only an unreadable file is `ImportFileError`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from activities.imports import EVENT_FIELDS, PROFILE_FIELDS, import_events, import_profiles
from tests.fuzz.conftest import FUZZ

# Values a real export holds, and the ones that trip stores: NUL, lone surrogates, huge numbers.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(["\x00", "a\x00b", "2026-01-31T09:00:00Z", "+33612345678", "a@example.com",
                     "Europe/Paris", "fr-FR", "1e400", "NaN", "'; DROP TABLE profiles; --"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)


def objects(fields: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(
        st.one_of(st.sampled_from(fields), st.text(max_size=4)), values, max_size=5
    )


def lines(fields: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    line = st.one_of(
        objects(fields).map(lambda o: json.dumps(o, allow_nan=True)),
        objects(fields).map(lambda o: json.dumps(o, allow_nan=True)[:-1]),  # cut short
        values.map(json.dumps),
        st.text(max_size=10).filter(lambda t: "\n" not in t and "\r" not in t),
    )
    return st.lists(line, min_size=1, max_size=6)


def check(summary: Any, count: int) -> None:
    done = summary.created + summary.updated + summary.unchanged + summary.accepted
    assert summary.lines <= count
    assert done + summary.duplicates + summary.failed == summary.lines, summary.to_json()
    for error in summary.errors:
        assert error.reason, error
        assert error.field is None or error.field or repr(error.field) in error.reason, error


@FUZZ
@given(rows=lines(PROFILE_FIELDS))
def test_profile_lines_import_or_fail_by_field(
    engine: Engine, tmp_path: Path, rows: list[str]
) -> None:
    path = tmp_path / "profiles.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8", errors="surrogatepass")
    check(import_profiles(engine, path), len(rows))


@FUZZ
@given(rows=lines(EVENT_FIELDS))
def test_event_lines_import_or_fail_by_field(
    engine: Engine, tmp_path: Path, rows: list[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8", errors="surrogatepass")
    check(import_events(engine, path), len(rows))


cells = st.one_of(scalars.map(lambda v: "" if v is None else str(v)), st.text(max_size=5))


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(["id", "email", "phone", "timezone", "locale", "plan", "age", "", "id"]),
        min_size=1,
        max_size=5,
    ),
    rows=st.lists(st.lists(cells, max_size=6), max_size=5),
)
def test_csv_profiles_import_or_fail_by_field(
    engine: Engine, tmp_path: Path, header: list[str], rows: list[list[str]]
) -> None:
    import csv

    path = tmp_path / "profiles.csv"
    with path.open("w", newline="", encoding="utf-8", errors="surrogatepass") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    try:
        summary = import_profiles(engine, path)
    except ValueError as exc:  # ImportFileError: a header without `id`, say
        assert type(exc).__name__ == "ImportFileError" and str(exc), exc
        return
    check(summary, len(rows))
