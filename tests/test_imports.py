"""Profile and event imports: per-line errors, typed CSV columns, idempotent re-imports,
`--json` summaries, and bounded memory on a large file. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from activities.db import EventRow, ProfileRow
from activities.events import get_event
from activities.imports import (
    ImportFileError,
    LineError,
    import_events,
    import_profiles,
    infer_csv_types,
)
from activities.profiles import get_profile, set_profile
from starter.cli import app

CSV = """\
id,email,phone,timezone,locale,plan,age
ada,ada@example.com,+33 6 12 34 56 78,Europe/Paris,fr-FR,pro,36
bob,bob@example.com,,,,free,41
bad-email,x,,,,free,1
cy,,+1 650 253 0000,,,,
no-region,,0612345678,,,pro,2
,nobody@example.com,,,,pro,3
dan,,,Mars/Base,,pro,4
eve,eve@example.com,,,,,
too,many,cells,,,,,,
"""
CSV_ERRORS = [
    "line 4: email: 'x' is not an email address",
    "line 6: phone: '0612345678' has no country code: write it in international form, "
    "starting with + (e.g. +33 6 12 34 56 78)",
    "line 7: id: missing: every profile needs an id",
    "line 8: timezone: 'Mars/Base' is not an IANA time zone (e.g. Europe/Paris)",
    "line 10: expected 7 columns, found 9",
]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def collect() -> tuple[list[LineError], Callable[[LineError], None]]:
    errors: list[LineError] = []
    return errors, errors.append


# --- CSV -------------------------------------------------------------------------------------


def test_csv_bad_lines_are_reported_and_every_good_line_kept(
    engine: Engine, tmp_path: Path
) -> None:
    path = write(tmp_path / "people.csv", CSV)
    seen, on_error = collect()
    summary = import_profiles(engine, path, batch_size=2, on_error=on_error)
    assert [str(e) for e in summary.errors] == CSV_ERRORS
    assert [str(e) for e in seen] == CSV_ERRORS, "reported as found, too"
    assert (summary.lines, summary.created, summary.updated, summary.unchanged) == (9, 4, 0, 0)
    assert summary.failed == 5

    ada = get_profile(engine, "ada")
    assert ada is not None
    assert (ada.email, ada.phone, ada.timezone, ada.locale) == (
        "ada@example.com",
        "+33612345678",
        "Europe/Paris",
        "fr-FR",
    )
    assert ada.attributes == {"plan": "pro", "age": 36}
    cy = get_profile(engine, "cy")
    assert cy is not None and (cy.phone, cy.attributes) == ("+16502530000", {})
    assert get_profile(engine, "bad-email") is None and get_profile(engine, "dan") is None

    again = import_profiles(engine, path)
    assert (again.created, again.updated, again.unchanged, again.failed) == (0, 0, 4, 5)
    assert get_profile(engine, "ada") == ada, "not even updated_at moved"


def test_csv_empty_cells_leave_stored_values_and_profiles_are_merged(
    engine: Engine, tmp_path: Path
) -> None:
    set_profile(engine, "ada", email="old@example.com", locale="en", attributes={"kept": 1})
    path = write(tmp_path / "p.csv", "id,email,locale,plan\nada,ada@example.com,,pro\n")
    summary = import_profiles(engine, path)
    assert (summary.created, summary.updated) == (0, 1)
    ada = get_profile(engine, "ada")
    assert ada is not None
    assert (ada.email, ada.locale, ada.attributes) == (
        "ada@example.com",
        "en",
        {"kept": 1, "plan": "pro"},
    )


def test_csv_columns_are_typed_when_every_value_parses(tmp_path: Path, engine: Engine) -> None:
    path = write(
        tmp_path / "typed.csv",
        "id,count,ratio,active,seen_at,zip,mixed,sparse,label\n"
        "a,1,1.5,true,2026-01-31T09:00:00Z,01234,1,,x\n"
        "b,-20,2,FALSE,2026-02-01T10:00:00.5+01:00,75001,2.5,7,y\n"
        "c,,3e2,,,,oops,,\n"
        '"d",3,-0.25,false,2026-02-30T10:00:00Z,"12",4,,z\n',
    )
    # seen_at has 30 February: not a datetime, so the whole column stays strings.
    assert infer_csv_types(path) == {
        "count": "integer",
        "ratio": "number",
        "active": "boolean",
        "seen_at": "string",
        "zip": "string",  # a leading zero is part of the value
        "mixed": "string",  # one value ("oops") does not parse
        "sparse": "integer",
        "label": "string",
    }
    import_profiles(engine, path)
    a, b, c = (get_profile(engine, p) for p in "abc")
    assert a is not None and b is not None and c is not None
    assert a.attributes == {
        "count": 1,
        "ratio": 1.5,
        "active": True,
        "seen_at": "2026-01-31T09:00:00Z",
        "zip": "01234",
        "mixed": "1",
        "label": "x",
    }
    assert b.attributes["active"] is False and b.attributes["ratio"] == 2.0
    assert isinstance(b.attributes["ratio"], float) and b.attributes["sparse"] == 7
    assert c.attributes == {"ratio": 300.0, "mixed": "oops"}

    datetimes = write(
        tmp_path / "dt.csv", "id,at\na,2026-01-31T09:00:00Z\nb,2026-02-01T10:00:00+01:00\n"
    )
    assert infer_csv_types(datetimes) == {"at": "datetime"}
    import_profiles(engine, datetimes)
    b = get_profile(engine, "b")
    assert b is not None and b.attributes["at"] == "2026-02-01T10:00:00+01:00", "kept as written"


def test_csv_files_that_cannot_be_imported_fail_at_once(engine: Engine, tmp_path: Path) -> None:
    cases = {
        "missing.csv": (None, "cannot read {path}: no such file"),
        "noid.csv": ("email,plan\na@example.com,pro\n", "{path}: the header has no id column (columns: email, plan)"),
        "empty.csv": ("", "{path}: empty file: expected a header line with an id column"),
        "twice.csv": ("id,plan,plan\n", "{path}: the header repeats column 'plan'"),
        "latin1.csv": ("id,name\nz,Zoë\n".encode("latin-1"), "{path}: line 2: not UTF-8 text"),
        "people.txt": ("id\n", "{path}: cannot tell the file's format: expected a .csv or .jsonl file"),
    }  # fmt: skip
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        with pytest.raises(ImportFileError) as raised:
            import_profiles(engine, path)
        assert str(raised.value) == message.format(path=path)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ProfileRow)) == 0


def test_csv_line_numbers_count_multi_line_cells_and_a_spreadsheet_header(
    engine: Engine, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "excel.csv",
        '\ufeffID;Note;Email\na;"two\nlines";a@example.com\n\nb;fine;nope\n',
    )
    summary = import_profiles(engine, path)
    assert [str(e) for e in summary.errors] == ["line 5: email: 'nope' is not an email address"]
    a = get_profile(engine, "a")
    assert a is not None and a.attributes == {"Note": "two\nlines"}
    assert a.email == "a@example.com", "identity columns are matched whatever their case"


# --- JSONL -----------------------------------------------------------------------------------


def test_jsonl_profiles_with_consent_and_unknown_fields(engine: Engine, tmp_path: Path) -> None:
    lines = [
        {"id": "ada", "email": "ada@example.com", "attributes": {"plan": "pro"}, "consent": {"email": False}},
        {"id": 42, "phone": "+44 20 7946 0958", "device_tokens": ["t1"]},
        {"id": "bob", "nickname": "b"},
        {"id": "cy", "attributes": ["not", "an", "object"]},
        {"id": "dan", "consent": {"email": "no"}},
    ]  # fmt: skip
    text = "\n".join(json.dumps(line) for line in lines) + "\n\n{not json\n[]\n"
    path = write(tmp_path / "p.jsonl", text)
    summary = import_profiles(engine, path)
    assert [str(e) for e in summary.errors] == [
        "line 3: nickname: unknown field 'nickname'; expected one of id, email, phone, timezone, locale, "
        "attributes, consent, device_tokens",
        "line 4: attributes: expected an object, got ['not', 'an', 'object']",
        "line 5: consent.email: expected true or false, got 'no'",
        "line 7: not JSON: Expecting property name enclosed in double quotes (column 2)",
        "line 8: expected a JSON object",
    ]
    assert (summary.lines, summary.created) == (7, 2)
    ada = get_profile(engine, "ada")
    assert ada is not None
    assert ada.consent["email"]["status"] == "opted_out"
    assert ada.consent["email"]["source"] == "import"
    numbered = get_profile(engine, "42")
    assert numbered is not None and numbered.phone == "+442079460958"
    assert numbered.device_tokens == ["t1"]

    again = import_profiles(engine, path)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 2)
    assert get_profile(engine, "ada") == ada, "consent kept its first source and time"


def test_jsonl_events_import_with_duplicates(engine: Engine, tmp_path: Path) -> None:
    lines = [
        {"id": "e1", "type": "signed_up", "profile_id": "ada"},
        {"id": "e1", "type": "signed_up", "profile_id": "ada"},  # same id: duplicate
        {"type": "order", "profile_id": "ada", "timestamp": "2026-01-31T09:00:00Z", "properties": {"total": 12.5}},
        # The same event written another way: the same content, so the same derived id.
        {"properties": {"total": 12.5}, "timestamp": "2026-01-31T10:00:00+01:00", "profile_id": "ada", "type": "order"},
        {"type": "order", "profile_id": "new-customer"},
        {"type": "bad type", "profile_id": "ada"},
        {"profile_id": "ada"},
        {"type": "x", "profile_id": "ada", "timestamp": "yesterday"},
        {"type": "x", "profile_id": "ada", "user": "ada"},
        {"type": "x", "profile_id": " ada"},
    ]  # fmt: skip
    path = write(tmp_path / "events.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    summary = import_events(engine, path, batch_size=3)
    assert [str(e) for e in summary.errors] == [
        "line 6: type: 'bad type' is not an event type: expected no spaces",
        "line 7: type: missing",
        "line 8: timestamp: 'yesterday' is not an RFC 3339 datetime (e.g. 2026-01-31T09:00:00Z)",
        "line 9: user: unknown field 'user'; expected one of id, type, profile_id, timestamp, properties",
        "line 10: profile_id: ' ada' has spaces around it or control characters in it",
    ]
    assert (summary.lines, summary.accepted, summary.duplicates, summary.failed) == (10, 3, 2, 5)
    assert get_event(engine, "e1") is not None
    assert get_profile(engine, "new-customer") is not None, "created by its first event"

    again = import_events(engine, path)
    assert (again.accepted, again.duplicates, again.failed) == (0, 5, 5)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(EventRow)) == 3


def test_a_line_the_database_refuses_is_reported_alone(engine: Engine, tmp_path: Path) -> None:
    # PostgreSQL text cannot hold NUL characters (SQLite can): the batch is retried line by
    # line so that only that line is lost.
    lines = [{"type": f"t{n}", "profile_id": "ada"} for n in range(4)]
    lines[2]["type"] = "bad\u0000type"
    path = write(tmp_path / "e.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    summary = import_events(engine, path)
    if engine.dialect.name == "postgresql":
        assert summary.accepted == 3 and [e.line for e in summary.errors] == [3]
        assert summary.errors[0].reason.startswith("refused by the database: ")
    else:
        assert summary.accepted == 4


# --- CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> Callable[..., Any]:
    monkeypatch.setenv("PARCOURS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PARCOURS_DATABASE_URL", database_url)
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.stdout, result.stderr

    return invoke


def test_cli_profiles_import_reports_lines_and_a_summary(
    cli: Callable[..., Any], tmp_path: Path
) -> None:
    path = write(tmp_path / "people.csv", CSV)
    code, out, err = cli("profiles", "import", str(path), "--batch-size", "3")
    assert code == 2, "some lines were rejected"
    assert err.splitlines() == CSV_ERRORS
    assert out.strip() == (
        f"{path}: 9 lines read: 4 profiles created, 0 updated, 0 unchanged, 5 errors"
    )
    code, out, err = cli("profiles", "import", str(path), "--json")
    assert (code, err) == (2, "")
    summary = json.loads(out)
    assert {k: summary[k] for k in ("lines", "created", "updated", "unchanged", "failed")} == {
        "lines": 9,
        "created": 0,
        "updated": 0,
        "unchanged": 4,
        "failed": 5,
    }
    assert summary["errors"][0] == {
        "line": 4,
        "field": "email",
        "reason": "'x' is not an email address",
    }
    assert summary["errors_omitted"] == 0
    code, out, _ = cli("profiles", "show", "ada", "--json")
    assert json.loads(out)["attributes"] == {"plan": "pro", "age": 36}


def test_cli_events_import_json_summary(cli: Callable[..., Any], tmp_path: Path) -> None:
    path = write(
        tmp_path / "e.jsonl",
        '{"id": "e1", "type": "a", "profile_id": "ada"}\n'
        '{"id": "e1", "type": "a", "profile_id": "ada"}\n'
        '{"type": "b", "profile_id": "ada", "properties": {"n": 1}}\n',
    )
    code, out, err = cli("events", "import", str(path), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "file": str(path),
        "lines": 3,
        "accepted": 2,
        "duplicates": 1,
        "failed": 0,
        "errors": [],
        "errors_omitted": 0,
    }
    code, out, _ = cli("events", "import", str(path))
    assert (code, out.strip()) == (
        0,
        f"{path}: 3 lines read: 0 events accepted, 3 duplicates, 0 errors",
    )


def test_cli_import_of_an_unusable_file_fails_in_one_line(
    cli: Callable[..., Any], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.jsonl"
    code, out, err = cli("events", "import", str(missing))
    assert (code, out, err.strip()) == (1, "", f"error: cannot read {missing}: no such file")
    noid = write(tmp_path / "noid.csv", "email\na@example.com\n")
    code, _, err = cli("profiles", "import", str(noid), "--json")
    assert (code, err.strip()) == (
        1,
        f"error: {noid}: the header has no id column (columns: email)",
    )
    code, _, err = cli("events", "import", str(noid))
    assert (code, err.strip()) == (
        1,
        f"error: {noid}: cannot tell the file's format: expected a .jsonl file",
    )


# --- a large file --------------------------------------------------------------------------


# In a fresh process, with its peak RSS reset (Linux) just before the import: the peak is then
# the import's own, not an earlier test's or the modules'.
IMPORT_AND_MEASURE = """
import json, sys, time
from pathlib import Path
from activities.db import engine_for
from activities.imports import import_profiles

def kilobytes(field):
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field)).split()[1])

engine = engine_for(sys.argv[1])
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
before = kilobytes("VmRSS:")
started = time.perf_counter()
summary = import_profiles(engine, sys.argv[2])
elapsed = time.perf_counter() - started
growth = (kilobytes("VmHWM:") - before) * 1024
print(json.dumps({"summary": summary.to_json(), "seconds": elapsed, "rss_growth": growth}))
"""


def test_a_50000_line_file_imports_in_bounded_memory(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    lines = 50_000
    path = tmp_path / "big.csv"
    with path.open("w") as file:
        file.write("id,email,phone,timezone,plan,score,vip,signed_up_at\n")
        for n in range(lines):
            # One phone in ten: parsing phones is the slowest check, and not the point here.
            phone = f"+33 6 12 {n // 10000 % 100:02d} {n // 100 % 100:02d} {n % 100:02d}"
            file.write(
                f"user-{n},user{n}@example.com,{phone if n % 10 == 0 else ''},Europe/Paris,"
                f"plan-{n % 5},{n / 7:.3f},{'true' if n % 2 else 'false'},"
                f"2026-01-{n % 28 + 1:02d}T10:00:00Z\n"
            )
    size = path.stat().st_size
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_AND_MEASURE, database_url, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    result = json.loads(done.stdout)
    growth = result["rss_growth"]
    print(
        f"{engine.dialect.name}: {lines} lines ({size / 1e6:.1f} MB) in {result['seconds']:.1f}s"
        f" = {lines / result['seconds']:,.0f} lines/s; peak RSS grew {growth / 1e6:.1f} MB"
    )
    summary = result["summary"]
    assert (summary["lines"], summary["created"], summary["failed"]) == (lines, lines, 0)
    # Holding this file's parsed lines alone takes about 40 MB; streaming it in batches of
    # 1,000 lines measured 7 MB on SQLite and 12 MB on PostgreSQL.
    assert growth < 25e6
    last = get_profile(engine, f"user-{lines - 1}")
    assert last is not None and last.attributes == {
        "plan": "plan-4",
        "score": round((lines - 1) / 7, 3),
        "vip": True,
        "signed_up_at": f"2026-01-{(lines - 1) % 28 + 1:02d}T10:00:00Z",
    }
