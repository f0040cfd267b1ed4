"""`parcours suppressions list|add|remove`: addresses no message may go to."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from rich.table import Table

from starter.cli import JsonFlag, app, engine, friendly, out, print_json

suppressions_app = typer.Typer(
    no_args_is_help=True, help="Addresses suppressed by STOP replies, bounces and spam reports."
)
app.add_typer(suppressions_app, name="suppressions")
ChannelArg = Annotated[Literal["email", "sms", "push"], typer.Argument(help="email, sms or push.")]
AddressArg = Annotated[str, typer.Argument(help="The email address, E.164 phone or device token.")]


@suppressions_app.command("list")
@friendly
def suppressions_list(
    ctx: typer.Context,
    channel: Annotated[str | None, typer.Option(help="Only this channel.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every suppressed address, with why and since when."""
    from sqlalchemy.orm import Session

    from activities.suppression import suppressions
    from parcours.records import Suppression

    with Session(engine(ctx)) as session:
        rows = [
            Suppression.model_validate(row, from_attributes=True)
            for row in suppressions(session, channel)
        ]
    if as_json:
        print_json(rows)
        return
    table = Table("channel", "address", "reason", "source", "since")
    for row in rows:
        table.add_row(
            row.channel, row.address, row.reason, row.source, f"{row.created_at:%Y-%m-%d %H:%M}"
        )
    out.print(table)


@suppressions_app.command("add")
@friendly
def suppressions_add(
    ctx: typer.Context,
    channel: ChannelArg,
    address: AddressArg,
    reason: Annotated[
        str, typer.Option(help="Why, as it will show on suppressed deliveries.")
    ] = "manual",
) -> None:
    """Stop every message to an address on a channel."""
    from activities.profiles import write_session
    from activities.suppression import suppress

    with write_session(engine(ctx)) as session:
        suppress(session, channel, address, reason, "cli")
    out.print(f"{channel} {address}: suppressed ({reason})", highlight=False)


@suppressions_app.command("remove")
@friendly
def suppressions_remove(ctx: typer.Context, channel: ChannelArg, address: AddressArg) -> None:
    """Lift a suppression (a profile's own opt-out stays: change it with `profiles set`)."""
    from activities.profiles import write_session
    from activities.suppression import lift

    with write_session(engine(ctx)) as session:
        lift(session, channel, address)
    out.print(f"{channel} {address}: no longer suppressed", highlight=False)
