"""`parcours journeys pause|resume|stop|show`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from starter.cli import (
    CommandError,
    JsonFlag,
    connect,
    engine,
    friendly,
    journeys_app,
    out,
    print_json,
    settings,
)

if TYPE_CHECKING:
    from temporalio.client import Client

JourneyId = Annotated[str, typer.Argument(metavar="ID")]


def _change(
    ctx: typer.Context, journey_id: str, status: Literal["live", "paused", "stopped"], as_json: bool
) -> None:
    from starter.lifecycle import set_status

    config = settings(ctx)

    async def run() -> int:
        return await set_status(await connect(config), engine(ctx), journey_id, status)

    stopped = asyncio.run(run()) if status == "stopped" else _offline(ctx, journey_id, status)
    if as_json:
        print_json({"id": journey_id, "status": status, "entries_stopped": stopped})
        return
    message = {
        "live": "resumed: new entries are accepted",
        "paused": "paused: no new entries, those inside go on",
    }
    text = (
        message.get(status)
        or f"stopped: {stopped} entr{'y' if stopped == 1 else 'ies'} told to leave"
    )
    out.print(f"journey {journey_id} {text}", highlight=False)


def _offline(
    ctx: typer.Context, journey_id: str, status: Literal["live", "paused", "stopped"]
) -> int:
    # Pausing and resuming only change what the router does: no need to reach Temporal.
    from activities.catalog import set_status

    set_status(engine(ctx), journey_id, status)
    return 0


@journeys_app.command("pause")
@friendly
def journeys_pause(ctx: typer.Context, journey_id: JourneyId, as_json: JsonFlag = False) -> None:
    """Stop new entries; profiles inside go on."""
    _change(ctx, journey_id, "paused", as_json)


@journeys_app.command("resume")
@friendly
def journeys_resume(ctx: typer.Context, journey_id: JourneyId, as_json: JsonFlag = False) -> None:
    """Accept new entries again."""
    _change(ctx, journey_id, "live", as_json)


@journeys_app.command("stop")
@friendly
def journeys_stop(ctx: typer.Context, journey_id: JourneyId, as_json: JsonFlag = False) -> None:
    """Stop the journey: every profile inside leaves at once."""
    _change(ctx, journey_id, "stopped", as_json)


@journeys_app.command("enter")
@friendly
def journeys_enter(
    ctx: typer.Context,
    journey_id: JourneyId,
    profile: Annotated[str, typer.Option(help="The profile to put in the journey.")],
    as_json: JsonFlag = False,
) -> None:
    """Put a profile into a journey that enters through the API (`entry: {api: true}`)."""
    from starter.routing import enter_journey

    config = settings(ctx)

    async def run() -> str | None:
        return await enter_journey(await connect(config), engine(ctx), config, journey_id, profile)

    workflow_id = asyncio.run(run())
    if as_json:
        print_json({"journey": journey_id, "profile_id": profile, "workflow_id": workflow_id})
    elif workflow_id:
        out.print(f"{profile} entered {journey_id}: {workflow_id}", highlight=False)
    else:
        out.print(
            f"{profile} did not enter {journey_id}: already inside, outside its audience, or its re-entry rule says no",
            highlight=False,
        )


@journeys_app.command("show")
@friendly
def journeys_show(
    ctx: typer.Context,
    journey_id: JourneyId,
    output: Annotated[str, typer.Option("--format", help="table or mermaid.")] = "table",
    version: Annotated[
        int | None, typer.Option(help="Which version (default: the current one).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """The journey's nodes and status; per node, the entries there now, those that passed
    through it and those that finished there (ended, or left early and why)."""
    from parcours.durations import format_duration
    from starter.journey_report import journey_report

    if output not in ("table", "mermaid"):
        raise CommandError(f"--format: expected table or mermaid, got {output!r}")
    config = settings(ctx)

    async def client() -> Client:
        return await connect(config)

    report = asyncio.run(journey_report(engine(ctx), client, journey_id, version))
    journey, shown, current, status = (
        report.definition,
        report.version,
        report.current_version,
        report.status,
    )
    if output == "mermaid":
        from parcours.mermaid import to_mermaid

        here = {row.id: row.now for row in report.nodes}
        out.print(to_mermaid(journey, here), highlight=False, markup=False, soft_wrap=True)
        return
    if as_json:
        print_json(report)
        return
    label = "" if shown == current else f" (showing v{shown})"
    out.print(
        f"journey {journey_id} v{current} ({status}){label}, entry on {journey.entry.describe()}",
        highlight=False,
    )
    table = Table("node", "type", "does", "next", "passed", "here now", "finished here")
    for row in report.nodes:
        table.add_row(
            row.id,
            row.type,
            row.summary,
            ", ".join(row.next),
            str(row.passed),
            str(row.now),
            row.finished_here(),
        )
    out.print(table)
    out.print(
        "passed: entries that have finished and went through the node; "
        "entries still inside count under here now",
        highlight=False,
    )
    if len(report.versions) > 1:
        out.print(
            "versions: "
            + "; ".join(
                f"v{v}: {c.now} inside, {c.finished} finished" for v, c in report.versions.items()
            )
            + " (--version N shows one)",
            highlight=False,
        )
    if journey.goal is not None:
        out.print(
            f"goal: {journey.goal.event} within {format_duration(journey.goal.within)}",
            highlight=False,
        )
        for number, converted in report.conversions.items():
            splits = "; ".join(
                f"{node}: " + ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
                for node, counts in converted.variants.items()
            )
            out.print(
                f"  v{number}: {converted.conversions} conversions"
                + (f" ({splits})" if splits else ""),
                highlight=False,
            )


@journeys_app.command("test")
@friendly
def journeys_test(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="The journey's file (and what it uses).")],
    profile: Annotated[str, typer.Option(help='The profile, as JSON: {"id": "t1", "email": ...}.')],
    events: Annotated[Path, typer.Option(help="JSONL: {type, properties, after: 2h} per line.")],
    journey: Annotated[
        str | None, typer.Option(help="Which journey, when the files hold several.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Walk a made-up profile through a journey in simulated time: nothing is sent."""
    from activities.catalog import known_segments, known_templates
    from starter.test_mode import profile_from_json, read_events, run_test

    db = engine(ctx)
    run = asyncio.run(
        run_test(
            files,
            journey,
            profile_from_json(profile),
            read_events(events),
            known_templates(db),
            known_segments(db),
        )
    )
    if as_json:
        print_json(
            {
                "position": run.position.model_dump(mode="json"),
                "deliveries": [d.model_dump(mode="json") for d in run.deliveries],
            }
        )
        return
    position = run.position
    start = position.path[0].entered_at if position.path else None
    table = Table("simulated time", "after", "node", "type", "outcome")
    for step in position.path:
        offset = step.entered_at - start if start else None
        table.add_row(
            f"{step.entered_at:%Y-%m-%d %H:%M}",
            str(offset).split(".")[0],
            step.node,
            step.type,
            step.outcome or "…",
        )
    out.print(table)
    finished = "finished" if position.finished else "still running when the test stopped"
    out.print(
        f"journey {position.journey_id}: {finished}"
        + (f", exited: {position.exit_reason}" if position.exit_reason else ""),
        highlight=False,
    )
    for delivery in run.deliveries:
        what = (
            delivery.subject or ""
            if delivery.status == "sent"
            else f"{delivery.status}: {delivery.reason}"
        )
        out.print(
            f"  would send {delivery.channel} {delivery.template} to {delivery.to or '-'}: {what}",
            highlight=False,
        )
