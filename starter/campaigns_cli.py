"""`parcours campaigns list|run|show|pause|resume|cancel|backfill`."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from starter.cli import (
    CommandError,
    JsonFlag,
    app,
    connect,
    engine,
    err,
    friendly,
    out,
    print_json,
    settings,
)

campaigns_app = typer.Typer(no_args_is_help=True, help="Scheduled and on-demand campaigns.")
app.add_typer(campaigns_app, name="campaigns")
CampaignId = Annotated[str, typer.Argument(metavar="ID", help="An applied campaign.")]


@campaigns_app.command("list")
@friendly
def campaigns_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Applied campaigns, their schedule and their latest run."""
    from activities.campaigns import latest_runs
    from activities.catalog import campaigns

    db = engine(ctx)
    latest = latest_runs(db)
    rows: list[dict[str, Any]] = [
        {
            "id": c.id,
            "channel": c.channel,
            "template": c.template,
            "schedule": f"{c.schedule.cron} ({c.schedule.timezone})" if c.schedule else None,
            "status": status,
            "last_run": latest.get(c.id),
        }
        for c, status in campaigns(db)
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("campaign", "channel", "template", "schedule", "status", "last run")
    for row in rows:
        last = row["last_run"]
        table.add_row(
            row["id"],
            row["channel"],
            row["template"],
            row["schedule"] or "on demand",
            row["status"],
            f"{last['id']} ({last['status']})" if last else "",
        )
    out.print(table)


@campaigns_app.command("run")
@friendly
def campaigns_run(
    ctx: typer.Context,
    campaign_id: CampaignId,
    wait: Annotated[bool, typer.Option(help="Follow the run until it ends, with progress.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Run a campaign now (whatever its schedule) and show its progress."""
    from starter.campaigns import start_run

    config = settings(ctx)

    async def run() -> Any:
        client = await connect(config)
        handle = await start_run(client, engine(ctx), config, campaign_id)
        if not as_json:
            out.print(f"started {handle.id}", highlight=False)
        if not wait:
            return {"run_id": handle.id}
        if as_json:
            return (await handle.result()).model_dump(mode="json")
        return await _follow(handle)

    result = asyncio.run(run())
    if as_json:
        print_json(result)
    elif isinstance(result, dict) and "audience" in result:
        _print_report(result)


async def _follow(handle: Any) -> dict[str, Any]:
    from parcours.contracts import CampaignProgress

    columns = (TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("send", total=None)
        result = asyncio.ensure_future(handle.result())
        while not result.done():
            try:
                progress = await handle.query("progress", result_type=CampaignProgress | None)
            except Exception:
                progress = None
            if progress is not None:
                bar.update(task, total=progress.audience, completed=progress.done)
            await asyncio.wait([result], timeout=0.5)
    return dict(result.result().model_dump(mode="json"))


def _print_report(report: dict[str, Any]) -> None:
    table = Table("run", "audience", "sent", "suppressed", "failed", "held", "duration")
    table.add_row(
        report["run_id"],
        f"{report['audience']:,}",
        f"{report['sent']:,}",
        ", ".join(f"{k} {v:,}" for k, v in sorted(report["suppressed"].items())) or "0",
        ", ".join(f"{k} {v:,}" for k, v in sorted(report["failed"].items())) or "0",
        f"{report.get('held', 0):,}",
        f"{report['duration_seconds']:.1f} s" if report.get("duration_seconds") else "",
    )
    out.print(table)


@campaigns_app.command("show")
@friendly
def campaigns_show(ctx: typer.Context, campaign_id: CampaignId, as_json: JsonFlag = False) -> None:
    """A campaign's runs and their reports."""
    from activities.campaigns import run_reports
    from activities.catalog import campaign

    found, status = campaign(engine(ctx), campaign_id)
    reports = run_reports(engine(ctx), campaign_id)
    if as_json:
        print_json({"campaign": found.model_dump(mode="json"), "status": status, "runs": reports})
        return
    schedule = (
        f"{found.schedule.cron} ({found.schedule.timezone})" if found.schedule else "on demand"
    )
    out.print(
        f"campaign {found.id} ({status}): {found.channel} {found.template}, {schedule}",
        highlight=False,
    )
    for report in reports:
        _print_report(report)


def _control(ctx: typer.Context, campaign_id: str, signal: str) -> list[str]:
    from starter.campaigns import set_paused, signal_runs

    config = settings(ctx)

    async def run() -> list[str]:
        client = await connect(config)
        if signal == "cancel":
            return await signal_runs(client, engine(ctx), campaign_id, "cancel")
        return await set_paused(client, engine(ctx), config, campaign_id, signal == "pause")

    return asyncio.run(run())


@campaigns_app.command("pause")
@friendly
def campaigns_pause(ctx: typer.Context, campaign_id: CampaignId) -> None:
    """Pause the schedule and every run still sending."""
    runs = _control(ctx, campaign_id, "pause")
    out.print(
        f"campaign {campaign_id}: paused ({len(runs)} running run(s) paused)", highlight=False
    )


@campaigns_app.command("resume")
@friendly
def campaigns_resume(ctx: typer.Context, campaign_id: CampaignId) -> None:
    """Resume the schedule and the paused runs."""
    runs = _control(ctx, campaign_id, "resume")
    out.print(f"campaign {campaign_id}: active ({len(runs)} run(s) resumed)", highlight=False)


@campaigns_app.command("cancel")
@friendly
def campaigns_cancel(ctx: typer.Context, campaign_id: CampaignId) -> None:
    """Stop the runs still sending (what was sent stays sent; the report says cancelled)."""
    runs = _control(ctx, campaign_id, "cancel")
    if not runs:
        raise CommandError(f"campaign {campaign_id} has no run in progress")
    out.print(f"cancelled {', '.join(runs)}", highlight=False)


@campaigns_app.command("backfill")
@friendly
def campaigns_backfill(
    ctx: typer.Context,
    campaign_id: CampaignId,
    start: Annotated[datetime, typer.Option(help="From (RFC 3339).")],
    end: Annotated[datetime, typer.Option(help="To (RFC 3339).")],
) -> None:
    """Run the scheduled times missed between START and END."""
    from starter.campaigns import backfill

    config = settings(ctx)

    async def run() -> None:
        await backfill(await connect(config), campaign_id, start, end)

    asyncio.run(run())
    out.print(f"campaign {campaign_id}: backfill from {start} to {end} requested", highlight=False)
