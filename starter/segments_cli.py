"""`parcours segments list|preview|members`: audience state, as other engines read it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from starter.cli import CommandError, JsonFlag, app, engine, friendly, out, print_json

segments_app = typer.Typer(no_args_is_help=True, help="Segments and their members.")
app.add_typer(segments_app, name="segments")


@segments_app.command("list")
@friendly
def segments_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Published segments and how many profiles are in each now."""
    from activities.catalog import known_segments
    from activities.segments import segment_sizes

    db = engine(ctx)
    sizes = segment_sizes(db)
    rows = [
        {"id": segment_id, "name": segment.name, "members": sizes.get(segment_id, 0)}
        for segment_id, segment in sorted(known_segments(db).items())
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("segment", "name", "members")
    for row in rows:
        table.add_row(str(row["id"]), str(row["name"] or ""), str(row["members"]))
    out.print(table)


@segments_app.command("preview")
@friendly
def segments_preview(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(metavar="ID|FILE", help="A published segment, or a file defining one.")
    ],
    limit: Annotated[int, typer.Option(help="How many member ids to show.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a segment over every profile now (batch), without publishing anything."""
    from sqlalchemy.orm import Session

    from activities.catalog import known_segments
    from activities.db import plan_for_values, utcnow
    from activities.rule_sql import members_query
    from parcours.loader import LoadFailed, load_paths

    db = engine(ctx)
    known = known_segments(db)
    if Path(target).exists():
        loaded = load_paths([Path(target)], known_segments=known)
        if loaded.errors:
            raise LoadFailed(loaded.errors)
        if len(loaded.segments) != 1:
            raise CommandError(
                f"{target}: expected exactly one segment, found {len(loaded.segments)}"
            )
        [segment] = loaded.segments.values()
        known = {**known, segment.id: segment}
    elif target in known:
        segment = known[target]
    else:
        raise CommandError(f"no segment {target!r} is published, and no such file")
    with Session(db) as session:
        plan_for_values(session)
        members = list(
            session.scalars(members_query(db.dialect.name, segment.rule, utcnow(), known))
        )
    if as_json:
        print_json({"id": segment.id, "count": len(members), "members": members[:limit]})
        return
    out.print(
        f"segment {segment.id}: {len(members)} profile{'s' if len(members) != 1 else ''}",
        highlight=False,
    )
    for member in members[:limit]:
        out.print(f"  {member}", highlight=False)
    if len(members) > limit:
        out.print(f"  … and {len(members) - limit} more", highlight=False)


@segments_app.command("members")
@friendly
def segments_members(
    ctx: typer.Context,
    segment_id: Annotated[str, typer.Argument(metavar="ID")],
    after: Annotated[str | None, typer.Option(help="Cursor from the previous page.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: JsonFlag = False,
) -> None:
    """A segment's current members, a page at a time."""
    from activities.catalog import known_segments
    from activities.segments import segment_members

    db = engine(ctx)
    if segment_id not in known_segments(db):
        raise CommandError(f"no segment {segment_id!r} is published")
    page = segment_members(db, segment_id, after, limit)
    if as_json:
        print_json({"members": page.members, "next_cursor": page.next_cursor})
        return
    for member in page.members:
        out.print(member, highlight=False)
    if page.next_cursor:
        out.print(f"(more: --after {page.next_cursor})", highlight=False)
