"""The HTTP API of SPEC §3 (a first part of it), with FastAPI.

Every endpoint calls the library functions the CLI calls. Callers authenticate with
`Authorization: Bearer KEY` (`PARCOURS_API_KEYS`); provider callbacks with the providers'
signatures instead, and the unsubscribe link with its signed token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from temporalio.client import Client

from activities import ledger
from activities.callbacks import SignatureError
from activities.callbacks import sendgrid as sendgrid_callbacks
from activities.callbacks import twilio as twilio_callbacks
from activities.db import engine_for
from activities.profiles import erase_profile, get_profile, set_profile
from activities.segments import Membership, profile_segments, segment_members
from activities.unsubscribe import unsubscribe
from parcours.errors import InputError
from parcours.records import Delivery, NewEvent, Profile
from parcours.settings import Settings
from starter.auth import bearer_key, known_key
from starter.routing import send_event

MAX_BATCH = 1000


class EventBatch(BaseModel):
    events: list[NewEvent] = Field(min_length=1, max_length=MAX_BATCH)


class Accepted(BaseModel):
    accepted: int
    duplicates: int
    journeys: list[str]


class ProfileIn(BaseModel):
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    locale: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    consent: dict[str, bool] = Field(default_factory=dict)
    device_tokens: list[str] = Field(default_factory=list)


class MembersOut(BaseModel):
    members: list[str]
    next: str | None


def authorized(request: Request) -> None:
    given = bearer_key(request.headers.get("Authorization"))
    if not known_key(given, request.app.state.keys):
        raise HTTPException(401, "a valid `Authorization: Bearer KEY` header is required")


Auth = Annotated[None, Depends(authorized)]


def create_app(
    settings: Settings, client: Callable[[], Awaitable[Client]], *, keys: list[str] | None = None
) -> FastAPI:
    keys = [k.get_secret_value() for k in settings.api_keys] if keys is None else keys
    if not keys:
        raise ValueError(
            "the API needs at least one key: set PARCOURS_API_KEYS (comma-separated); "
            "`parcours dev` makes one for you"
        )
    engine = engine_for(settings.database_url)
    app = FastAPI(title="Parcours", version="1")

    app.state.keys = keys

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": exc.field.split("."), "msg": exc.message}]}, 422)

    @app.exception_handler(SignatureError)
    async def bad_signature(_: Request, exc: SignatureError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 403)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/events", status_code=202, response_model=Accepted)
    async def post_events(_: Auth, body: NewEvent | EventBatch) -> Accepted:
        events = body.events if isinstance(body, EventBatch) else [body]
        temporal = await client()
        routed = [await send_event(temporal, engine, settings, event) for event in events]
        return Accepted(
            accepted=sum(not r.duplicate for r in routed),
            duplicates=sum(r.duplicate for r in routed),
            journeys=[j for r in routed for j in r.journeys],
        )

    @app.get("/v1/profiles/{profile_id}", response_model=Profile)
    async def read_profile(_: Auth, profile_id: str) -> Profile:
        found = await asyncio.to_thread(get_profile, engine, profile_id)
        if found is None:
            raise HTTPException(404, f"no profile {profile_id!r}")
        return found

    @app.put("/v1/profiles/{profile_id}", response_model=Profile)
    async def put_profile(_: Auth, profile_id: str, body: ProfileIn) -> Profile:
        return await asyncio.to_thread(
            set_profile,
            engine,
            profile_id,
            email=body.email,
            phone=body.phone,
            timezone=body.timezone,
            locale=body.locale,
            attributes=body.attributes,
            consent=body.consent,
            consent_source="api",
            add_device_tokens=body.device_tokens,
        )

    @app.delete("/v1/profiles/{profile_id}")
    async def delete_profile(_: Auth, profile_id: str) -> dict[str, Any]:
        erased = await asyncio.to_thread(erase_profile, engine, profile_id)
        if not erased.found:
            raise HTTPException(404, f"no profile {profile_id!r}")
        return {"id": profile_id, "events": erased.events, "memberships": erased.memberships}

    @app.get("/v1/profiles/{profile_id}/segments", response_model=list[Membership])
    async def read_profile_segments(_: Auth, profile_id: str) -> list[Membership]:
        return await asyncio.to_thread(profile_segments, engine, profile_id)

    @app.get("/v1/segments/{segment_id}/members", response_model=MembersOut)
    async def read_members(
        _: Auth,
        segment_id: str,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> MembersOut:
        page = await asyncio.to_thread(segment_members, engine, segment_id, after, limit)
        return MembersOut(members=page.members, next=page.next_cursor)

    @app.get("/v1/deliveries", response_model=list[Delivery])
    async def read_deliveries(_: Auth, profile_id: str | None = None) -> list[Delivery]:
        return await asyncio.to_thread(ledger.list_deliveries, engine, profile_id)

    @app.post("/v1/webhooks/sendgrid")
    async def sendgrid_webhook(request: Request) -> dict[str, int]:
        body = await request.body()
        outcome = await asyncio.to_thread(
            sendgrid_callbacks.apply_events,
            engine,
            settings.sendgrid_webhook_public_key,
            body,
            dict(request.headers),
        )
        return {"applied": outcome.applied, "duplicates": outcome.duplicates}

    async def twilio_form(request: Request) -> tuple[str, dict[str, str], str | None, str | None]:
        # Twilio posts application/x-www-form-urlencoded, with each field once.
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        token = (
            settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
        )
        # Twilio signs the URL it called: behind a proxy, PARCOURS_API_URL is that URL's base.
        base = (settings.api_url or str(request.base_url)).rstrip("/")
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return url, form, request.headers.get("X-Twilio-Signature"), token

    @app.post("/v1/webhooks/twilio/status")
    async def twilio_status(request: Request, delivery: str) -> dict[str, int]:
        url, form, signature, token = await twilio_form(request)
        outcome = await asyncio.to_thread(
            twilio_callbacks.apply_status, engine, token, url, form, signature, delivery
        )
        return {"applied": outcome.applied, "duplicates": outcome.duplicates}

    @app.post("/v1/webhooks/twilio/inbound", response_class=PlainTextResponse)
    async def twilio_inbound(request: Request) -> str:
        url, form, signature, token = await twilio_form(request)
        await asyncio.to_thread(twilio_callbacks.apply_inbound, engine, token, url, form, signature)
        return "<Response/>"  # TwiML: no reply of our own (Twilio answers STOP itself)

    @app.api_route("/v1/unsubscribe", methods=["GET", "POST"], response_class=PlainTextResponse)
    async def unsubscribe_link(token: str) -> str:
        # POST is RFC 8058's one-click unsubscribe; GET is the link a person clicks.
        _, channel = await asyncio.to_thread(unsubscribe, engine, settings, token)
        return f"You will not receive {channel} messages from us any more."

    return app


def lazy_client(settings: Settings) -> Callable[[], Awaitable[Client]]:
    """Connect to Temporal on first use and keep the connection: the API starts (and serves
    reads) while Temporal is still coming up."""
    from starter.client import connect

    lock = asyncio.Lock()
    connected: list[Client] = []

    async def client() -> Client:
        async with lock:
            if not connected:
                connected.append(await connect(settings))
            return connected[0]

    return client
