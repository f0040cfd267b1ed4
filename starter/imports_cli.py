"""`parcours profiles import` and `parcours events import`.

Bad lines go to stderr as they are found (`line 7: email: 'x' is not an email address`), the
summary to stdout. Exit code: 0 when every line was imported, 2 when some lines were rejected
(every other line is kept), 1 when the file could not be imported at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from starter.cli import (
    CommandError,
    JsonFlag,
    engine,
    err,
    events_app,
    friendly,
    out,
    print_json,
    profiles_app,
)

if TYPE_CHECKING:
    from activities.imports import ImportSummary, LineError, Progress

PARTIAL_EXIT_CODE = 2

FileArgument = Annotated[
    Path, typer.Argument(metavar="FILE", help="The file to import.", show_default=False)
]
BatchSize = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        max=100_000,
        help="Lines written per transaction.",
    ),
]


@profiles_app.command("import")
@friendly
def profiles_import(
    ctx: typer.Context,
    file: FileArgument,
    batch_size: BatchSize = 1000,
    as_json: JsonFlag = False,
) -> None:
    """Import profiles from FILE.csv or FILE.jsonl, merging into existing ones.

    CSV: columns id, email, phone, timezone, locale; every other column is an attribute,
    typed integer, number, boolean or datetime when all its values parse so, else string.
    An empty cell leaves the stored value as it is. Exit code 2: some lines were rejected.
    """
    from activities.imports import import_profiles

    _run(
        lambda progress, report: import_profiles(
            engine(ctx), file, batch_size=batch_size, on_progress=progress, on_error=report
        ),
        as_json,
    )


@events_app.command("import")
@friendly
def events_import(
    ctx: typer.Context,
    file: FileArgument,
    batch_size: BatchSize = 1000,
    as_json: JsonFlag = False,
) -> None:
    """Import events from FILE.jsonl (recorded only: no journey is started).

    Each line: {"type", "profile_id", "timestamp"?, "properties"?, "id"?}. A line without an
    id gets one derived from its content, so importing a file again adds nothing. Exit code 2:
    some lines were rejected.
    """
    from activities.imports import import_events

    _run(
        lambda progress, report: import_events(
            engine(ctx), file, batch_size=batch_size, on_progress=progress, on_error=report
        ),
        as_json,
    )


def _run(
    run: Callable[[Progress | None, Callable[[LineError], None] | None], ImportSummary],
    as_json: bool,
) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from activities.imports import ImportFileError

    def report(error: LineError) -> None:
        err.print(str(error), highlight=False, markup=False, soft_wrap=True)

    try:
        if as_json:
            summary = run(None, None)
        elif not err.is_terminal:
            summary = run(None, report)  # a bar in a log file is noise
        else:
            with _progress_bar() as progress:
                summary = run(progress, report)
    except ImportFileError as exc:
        raise CommandError(str(exc)) from None
    except SQLAlchemyError as exc:
        # Batches already written stay written: importing the file again completes it.
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise CommandError(
            f"the database failed during the import (batches written before are kept; "
            f"importing the file again completes it): {reason}"
        ) from None
    if as_json:
        print_json(summary.to_json())
    else:
        out.print(str(summary), highlight=False, markup=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(PARTIAL_EXIT_CODE)


@contextmanager
def _progress_bar() -> Iterator[Progress]:
    """A bar on stderr by bytes read; CSV files show a quick scanning pass first."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as RichProgress

    bar = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def update(phase: str, done: int, total: int | None) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done)

    with bar:
        yield update
