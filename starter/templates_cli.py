"""`parcours templates list|render`: see a message as a profile would receive it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from starter.cli import CommandError, JsonFlag, app, engine, friendly, out, print_json, settings

templates_app = typer.Typer(no_args_is_help=True, help="Message templates.")
app.add_typer(templates_app, name="templates")


@templates_app.command("list")
@friendly
def templates_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Published templates."""
    from activities.catalog import known_templates

    rows = [
        {"id": t.id, "channel": t.channel, "subject": t.subject}
        for t in sorted(known_templates(engine(ctx)).values(), key=lambda t: t.id)
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("template", "channel", "subject")
    for row in rows:
        table.add_row(row["id"], row["channel"], row["subject"] or "")
    out.print(table)


@templates_app.command("render")
@friendly
def templates_render(
    ctx: typer.Context,
    template_id: Annotated[str, typer.Argument(metavar="ID", help="A published template.")],
    profile_id: Annotated[str, typer.Option("--profile", help="The profile to render for.")],
    event_id: Annotated[
        str | None, typer.Option("--event", help="A stored event to use as the entry event.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Render a template for a profile, exactly as a message would be; nothing is sent."""
    from activities.catalog import template
    from activities.events import get_event
    from activities.profiles import get_profile
    from activities.rendering import RenderError, message_context, render

    db = engine(ctx)
    found = template(db, template_id)
    if found is None:
        raise CommandError(
            f"template {template_id!r} is not published (see `parcours templates list`)"
        )
    profile = get_profile(db, profile_id)
    if profile is None:
        raise CommandError(f"profile {profile_id!r} does not exist")
    event = get_event(db, event_id) if event_id else None
    if event_id and event is None:
        raise CommandError(f"event {event_id!r} does not exist")
    try:
        rendered = render(found, message_context(settings(ctx), found, profile, event))
    except RenderError as exc:
        raise CommandError(str(exc)) from None
    if as_json:
        print_json(
            {"template": found.id, "channel": found.channel, "profile_id": profile.id}
            | {"subject": rendered.subject, "body": rendered.text, "html": rendered.html}
        )
        return
    if rendered.subject is not None:
        out.print(f"[bold]subject:[/bold] {rendered.subject}", highlight=False)
    out.print(rendered.text, highlight=False, markup=False)
    if rendered.html is not None:
        out.print("[bold]html:[/bold]", highlight=False)
        out.print(rendered.html, highlight=False, markup=False)
