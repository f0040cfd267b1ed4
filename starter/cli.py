"""The `parcours` command line (SPEC §4). Every command calls the same library functions the
HTTP API will call; this module only parses arguments and prints results."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine

from parcours.errors import InputError
from parcours.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Customer journeys on Temporal.")
profiles_app = typer.Typer(no_args_is_help=True, help="Customer profiles.")
events_app = typer.Typer(no_args_is_help=True, help="Customer events.")
journeys_app = typer.Typer(no_args_is_help=True, help="Published journeys.")
app.add_typer(profiles_app, name="profiles")
app.add_typer(events_app, name="events")
app.add_typer(journeys_app, name="journeys")

# Wide when piped, so tables stay one row per line in logs and scripts.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, highlight=False)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
F = TypeVar("F", bound=Callable[..., Any])


class CommandError(Exception):
    """An error whose message is the whole story for the user."""


def settings(ctx: typer.Context) -> Settings:
    return Settings.load(ctx.obj.get("data_dir") if ctx.obj else None)


def engine(ctx: typer.Context) -> Engine:
    from activities.db import engine_for

    return engine_for(settings(ctx).database_url)


def friendly(command: F) -> F:
    """Turn expected failures into one line on stderr and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from parcours.loader import LoadFailed

        try:
            return command(*args, **kwargs)
        except LoadFailed as exc:
            for error in exc.errors:
                err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            err.print(
                f"nothing was published ({len(exc.errors)} error{'s' if len(exc.errors) > 1 else ''})"
            )
            raise typer.Exit(1) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "input"
            err.print(f"[red]error:[/red] {field}: {first['msg']}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except (InputError, CommandError, ValueError, FileNotFoundError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        text = value.model_dump_json(indent=2)
    elif isinstance(value, list):
        text = (
            "["
            + ",".join(
                v.model_dump_json() if isinstance(v, BaseModel) else json.dumps(v) for v in value
            )
            + "]"
        )
        text = json.dumps(json.loads(text), indent=2)
    else:
        text = json.dumps(value, indent=2, default=str)
    sys.stdout.write(text + "\n")


def parse_pairs(pairs: Sequence[str], option: str) -> dict[str, Any]:
    """`k=v` pairs; a value that parses as JSON is taken as JSON, otherwise as a string."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InputError(option, f"expected key=value, got {pair!r}")
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw
    return result


async def connect(config: Settings) -> Any:
    from starter.client import connect as connect_client

    try:
        return await connect_client(config)
    except RuntimeError:
        raise CommandError(
            f"cannot reach Temporal at {config.temporal_address}: "
            "start the stack with `parcours dev` or set TEMPORAL_ADDRESS"
        ) from None


@app.callback()
def main_options(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="PARCOURS_DATA_DIR",
            help="Where the stack keeps its data [.parcours].",
        ),
    ] = None,
) -> None:
    ctx.obj = {"data_dir": data_dir}


@app.command()
@friendly
def dev(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Temporal frontend port.")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal Web UI port.")] = 8233,
    api_port: Annotated[int, typer.Option(help="HTTP API port.")] = 8000,
    codec_port: Annotated[
        int, typer.Option(help="Codec server port (when PARCOURS_ENCRYPTION_KEY is set).")
    ] = 8081,
    apply: Annotated[
        list[Path] | None, typer.Option(help="Definitions to apply once ready.")
    ] = None,
) -> None:
    """Run the whole stack here: Temporal dev server with its Web UI, and the worker."""
    from starter.dev import DevStack

    stack = DevStack(
        settings(ctx).data_dir,
        port=port,
        ui_port=ui_port,
        api_port=api_port,
        apply=apply or [],
        codec_port=codec_port,
    )
    raise typer.Exit(stack.run())


@app.command()
@friendly
def worker(ctx: typer.Context) -> None:
    """Run a worker: the Parcours plugin on a Temporal worker."""
    from starter import logs
    from worker.__main__ import run_worker

    config = settings(ctx)
    logs.configure(config.log_format or "json", config.log_level)
    try:
        asyncio.run(run_worker(config))
    except RuntimeError as exc:
        raise CommandError(f"cannot reach Temporal at {config.temporal_address}: {exc}") from None


@app.command("search-attributes")
@friendly
def search_attributes(ctx: typer.Context) -> None:
    """Register Parcours's search attributes on the namespace (`parcours dev` does it for its
    own server; run this once against any other cluster)."""
    from parcours import search_attributes as sa
    from starter.search_attributes import register

    config = settings(ctx)

    async def run() -> None:
        await register(await connect(config))

    asyncio.run(run())
    names = ", ".join(key.name for key in sa.ALL)
    out.print(f"registered on {config.temporal_namespace}: {names}", highlight=False)


@app.command("api")
@friendly
def api(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the HTTP API (SPEC §3); callers need a key from PARCOURS_API_KEYS."""
    import uvicorn

    from starter import logs
    from starter.api import create_app, lazy_client

    config = settings(ctx)
    logs.configure(config.log_format or "json", config.log_level)
    # Events are written on a thread while the event loop answers reads: hand the interpreter
    # lock over every 0.5 ms rather than every 5, or a read waits behind a bulk insert.
    sys.setswitchinterval(0.0005)
    app = create_app(config, lazy_client(config))
    # Full collections scan every object; the modules and the app loaded by now never become
    # garbage, and collecting less often spares requests the pauses.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    # The C HTTP parser, the standard event loop the Temporal client is tested with, and no
    # log config of uvicorn's own: its records go through ours, in the same format.
    uvicorn.run(app, host=host, port=port, http="httptools", loop="asyncio", log_config=None)


@app.command("codec-server")
@friendly
def codec_server(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8081,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="An origin the Temporal UI is served from [PARCOURS_CODEC_CORS_ORIGINS]."
        ),
    ] = None,
) -> None:
    """Decode encrypted payloads for the Temporal UI and CLI; callers need a key from
    PARCOURS_CODEC_KEYS (docs/encryption.md)."""
    import uvicorn

    from starter.codec_server import create_codec_app

    uvicorn.run(create_codec_app(settings(ctx), origins=cors_origin), host=host, port=port)


@app.command("encryption-key")
@friendly
def encryption_key(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The new key's id, e.g. 2026-11.")],
) -> None:
    """Print a new `ID:KEY` entry for PARCOURS_ENCRYPTION_KEY (32 random bytes, base64)."""
    import base64

    from parcours.settings import AES_KEY_BYTES, parse_encryption_keys

    entry = f"{key_id}:{base64.b64encode(os.urandom(AES_KEY_BYTES)).decode()}"
    parse_encryption_keys(entry)  # the id is checked as the setting will check it
    sys.stdout.write(entry + "\n")


@app.command("apply")
@friendly
def apply_definitions(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files or directories of definitions.")],
    draft: Annotated[
        bool,
        typer.Option(
            "--draft", help="Publish journeys as drafts: no entries until `journeys resume`."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Validate definitions and publish them: all of them, or none when any is wrong."""
    from activities.apply import apply_paths

    results = apply_paths(engine(ctx), paths, "draft" if draft else "live")
    if as_json:
        print_json([r.__dict__ for r in results])
    else:
        for result in results:
            out.print(str(result), highlight=False)
    if any(r.kind == "campaign" and r.outcome != "unchanged" for r in results):
        _sync_campaign_schedules(ctx)


def _sync_campaign_schedules(ctx: typer.Context) -> None:
    from starter.campaigns import sync_schedules

    config = settings(ctx)

    async def sync() -> list[str]:
        return await sync_schedules(await connect(config), engine(ctx), config)

    try:
        asyncio.run(sync())
    except CommandError as exc:
        err.print(
            f"warning: campaigns saved; their schedules are made when a worker starts ({exc})",
            highlight=False,
        )


@profiles_app.command("set")
@friendly
def profiles_set(
    ctx: typer.Context,
    profile_id: Annotated[str, typer.Argument(metavar="ID")],
    email: Annotated[str | None, typer.Option()] = None,
    phone: Annotated[
        str | None, typer.Option(help="International form, e.g. '+33 6 12 34 56 78'.")
    ] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA zone, e.g. Europe/Paris.")] = None,
    locale: Annotated[str | None, typer.Option(help="BCP 47 tag, e.g. fr-FR.")] = None,
    attr: Annotated[
        list[str] | None, typer.Option(help="key=value (JSON values are parsed).")
    ] = None,
    consent: Annotated[
        list[str] | None,
        typer.Option(help="channel=true|false, channel one of email, sms, push."),
    ] = None,
    device_token: Annotated[
        list[str] | None, typer.Option(help="A push device token to add.")
    ] = None,
    remove_device_token: Annotated[
        list[str] | None, typer.Option(help="A push device token to remove.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a profile or merge into it."""
    from activities.profiles import set_profile

    profile = set_profile(
        engine(ctx),
        profile_id,
        email=email,
        phone=phone,
        timezone=timezone,
        locale=locale,
        attributes=parse_pairs(attr or [], "--attr"),
        consent=parse_pairs(consent or [], "--consent"),
        consent_source="cli",
        add_device_tokens=device_token or [],
        remove_device_tokens=remove_device_token or [],
    )
    _follow_membership(ctx, profile_id)
    print_json(profile) if as_json else show_profile(profile)


def _follow_membership(ctx: typer.Context, profile_id: str) -> None:
    """Keep segments current after a profile change, and start or end the journeys that
    follow them. The change itself is kept even when Temporal cannot be reached."""
    from starter.routing import follow_profile_change

    config = settings(ctx)

    try:
        asyncio.run(
            follow_profile_change(
                functools.partial(connect, config), engine(ctx), config, profile_id
            )
        )
    except CommandError as exc:
        err.print(f"warning: segments updated, but journeys were not told: {exc}", highlight=False)


@profiles_app.command("show")
@friendly
def profiles_show(
    ctx: typer.Context,
    profile_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonFlag = False,
) -> None:
    """Show one profile and the segments it is in now."""
    from activities.profiles import get_profile
    from activities.segments import profile_segments

    db = engine(ctx)
    profile = get_profile(db, profile_id)
    if profile is None:
        raise CommandError(f"no profile {profile_id!r}")
    segments = profile_segments(db, profile_id)
    if as_json:
        data = profile.model_dump(mode="json")
        data["segments"] = [
            {"segment_id": m.segment_id, "entered_at": m.entered_at.isoformat()} for m in segments
        ]
        print_json(data)
        return
    show_profile(profile)
    listed = ", ".join(f"{m.segment_id} (since {m.entered_at:%Y-%m-%d %H:%M})" for m in segments)
    out.print(f"segments: {listed or '—'}", highlight=False, markup=False)


@profiles_app.command("erase")
@friendly
def profiles_erase(
    ctx: typer.Context,
    profile_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonFlag = False,
) -> None:
    """Erase a profile: its journeys end, and its profile, events and memberships go; its
    deliveries keep only anonymous counts (no address, content or profile id)."""
    from starter.erasure import erase

    config = settings(ctx)

    erased, ended = asyncio.run(erase(functools.partial(connect, config), engine(ctx), profile_id))
    if as_json:
        print_json(
            {
                "id": erased.id,
                "erased": erased.found,
                "events": erased.events,
                "memberships": erased.memberships,
                "deliveries_scrubbed": erased.deliveries_scrubbed,
                "journeys_ended": ended,
            }
        )
    elif erased.found:
        out.print(
            f"erased profile {profile_id!r}: {_plural(erased.events, 'event')} and "
            f"{_plural(erased.memberships, 'segment membership')} removed, "
            f"{_plural(erased.deliveries_scrubbed, 'delivery', 'deliveries')} anonymised, "
            f"{_plural(len(ended), 'journey entry', 'journey entries')} ended",
            highlight=False,
            markup=False,
        )
    else:
        out.print(f"no profile {profile_id!r}: nothing to erase", highlight=False, markup=False)


def _plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def show_profile(profile: Any) -> None:
    from rich.text import Text

    # Text cells: a value is data, never rich markup ("[red]" in an attribute stays as typed).
    rows = [(field, str(getattr(profile, field) or "—")) for field in ("id", "email", "phone")]
    rows += [(field, str(getattr(profile, field) or "—")) for field in ("timezone", "locale")]
    rows.append(("device_tokens", ", ".join(profile.device_tokens) or "—"))
    rows += [
        (f"consent.{channel}", f"{r.get('status')} (from {r.get('source')}, {r.get('at')})")
        for channel, r in profile.consent.items()
    ]
    rows += [(f"attributes.{key}", json.dumps(value)) for key, value in profile.attributes.items()]
    table = Table(show_header=False, box=None)
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    out.print(table)


@events_app.command("send")
@friendly
def events_send(
    ctx: typer.Context,
    event_type: Annotated[str, typer.Argument(metavar="TYPE")],
    profile: Annotated[str, typer.Option(help="The profile id the event is about.")] = "",
    prop: Annotated[
        list[str] | None, typer.Option(help="key=value (JSON values are parsed).")
    ] = None,
    event_id: Annotated[str | None, typer.Option("--id", help="Idempotency key.")] = None,
    timestamp: Annotated[datetime | None, typer.Option(help="RFC 3339; default now.")] = None,
    journey: Annotated[
        str | None, typer.Option(help="Route only to this journey (checked first).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Record an event and start or feed the journeys it enters."""
    from parcours.records import NewEvent
    from starter.routing import send_event

    if not profile:
        raise InputError("--profile", "every event needs the id of the profile it is about")
    new = NewEvent(
        type=event_type,
        profile_id=profile,
        properties=parse_pairs(prop or [], "--prop"),
        id=event_id,
        timestamp=timestamp,
    )
    config = settings(ctx)

    async def run() -> Any:
        client = await connect(config)
        return await send_event(client, engine(ctx), config, new, journey)

    routed = asyncio.run(run())
    if as_json:
        print_json(
            {
                "event": routed.event.model_dump(mode="json"),
                "duplicate": routed.duplicate,
                "journeys": routed.journeys,
            }
        )
    elif routed.duplicate:
        out.print(
            f"event {routed.event.id}: duplicate, already recorded (nothing started)",
            highlight=False,
        )
    else:
        started = ", ".join(routed.journeys) or "no journey enters on this event"
        out.print(
            f"event {routed.event.id} ({routed.event.type}) recorded → {started}",
            highlight=False,
            soft_wrap=True,
        )


@journeys_app.command("list")
@friendly
def journeys_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Published journeys and their current versions."""
    from activities.catalog import list_journeys

    journeys = list_journeys(engine(ctx))
    if as_json:
        print_json(journeys)
        return
    table = Table("journey", "version", "status", "entry event", "published")
    for j in journeys:
        table.add_row(
            j.journey_id, str(j.version), j.status, j.entry_event, f"{j.created_at:%Y-%m-%d %H:%M}"
        )
    out.print(table)


@app.command()
@friendly
def deliveries(
    ctx: typer.Context,
    profile: Annotated[str | None, typer.Option(help="Only this profile's deliveries.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """What was sent, on every channel, the outbox included."""
    from activities.ledger import list_deliveries

    rows = list_deliveries(engine(ctx), profile)
    if as_json:
        print_json(rows)
        return
    table = Table(
        "created", "profile", "channel", "template", "status", "via", "to", "subject / reason"
    )
    for d in rows:
        table.add_row(
            f"{d.created_at:%Y-%m-%d %H:%M:%S}",
            d.profile_id,
            d.channel,
            d.template,
            d.status,
            d.provider or "",
            d.to or "",
            d.reason or d.subject or "",
        )
    out.print(table)


def main() -> None:
    try:
        app()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
        if isinstance(done.code, str):
            err.print(done.code, highlight=False)
    sys.stdout.flush()
    sys.stderr.flush()
    # Every command has finished its work here. Leaving without finalizing the interpreter
    # avoids a rare abort ("PyGILState_Release ... finalizing") when the Temporal SDK's native
    # threads are still winding down, which would turn a success into exit code -6.
    os._exit(code)


# Command groups kept in their own modules register themselves on the apps above.
from starter import (  # noqa: E402, F401
    campaigns_cli,
    imports_cli,
    journeys_cli,
    segments_cli,
    suppressions_cli,
    templates_cli,
)
