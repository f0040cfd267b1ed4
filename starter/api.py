"""The HTTP API of SPEC §3, with FastAPI.

Every endpoint calls the library functions the CLI calls. Callers authenticate with
`Authorization: Bearer KEY` (`PARCOURS_API_KEYS`); provider callbacks with the providers'
signatures instead, and the unsubscribe link with its signed token.

Ingestion pushes back instead of queueing without bound: a request that would take the events
in flight past `max_inflight` is answered `429`, a store or Temporal that fails or is too slow
`503`, both with `Retry-After`; an event is stored before it is acknowledged, and a retry of
the same ids routes whatever was not routed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, TypeAdapter
from sqlalchemy.exc import OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities import ledger, metrics
from activities.callbacks import SignatureError
from activities.callbacks import sendgrid as sendgrid_callbacks
from activities.callbacks import twilio as twilio_callbacks
from activities.db import engine_for
from activities.profiles import get_profile, set_profile
from activities.segments import Membership, profile_segments, segment_members
from activities.unsubscribe import unsubscribe
from parcours.errors import InputError, NotFound
from parcours.loader import LoadFailed, parse_path
from parcours.records import Delivery, NewEvent, Profile
from parcours.settings import Settings
from starter import api_definitions
from starter.api_state import AppState, Auth, State, authorized
from starter.erasure import erase
from starter.ingest import (
    EventWriter,
    Ingested,
    RoutingFailed,
    check_events,
    ingest,
    settle,
)
from starter.journey_page import journey_routes
from starter.observability import observability_routes
from starter.routing import follow_profile_change

MAX_BATCH = 1000  # events per request
MAX_BODY = 5 * 1024 * 1024  # bytes per request: 1,000 events of 5 KB
MAX_INFLIGHT = 20_000  # events being stored or routed at once, over all requests
INGEST_TIMEOUT = 30.0  # seconds a request may spend storing and routing before a 503
RETRY_AFTER = {429: "1", 503: "5"}
_MEMBERSHIPS = TypeAdapter(list[Membership])  # the segments read, serialized without validation


class Problem(BaseModel):
    detail: str | list[dict[str, Any]]


# What any endpoint may answer besides its success, so clients (and schema checks) expect it.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no valid key"},
    404: {"model": Problem, "description": "no such profile, segment, journey or campaign"},
    413: {"model": Problem, "description": "body or batch too large"},
    422: {"model": Problem, "description": "invalid input; `detail` names each field"},
    429: {"model": Problem, "description": "too busy; retry after `Retry-After` seconds"},
    503: {"model": Problem, "description": "store or Temporal unavailable; retry"},
}
SIGNED: dict[int | str, dict[str, Any]] = {
    403: {"model": Problem, "description": "the provider's signature is missing or wrong"}
}


class EventBatch(BaseModel):
    # Items are checked one by one (see `starter.ingest.check_events`): a bad event is
    # rejected on its own, with the path to its field, and the others are taken.
    events: list[dict[str, Any]] = Field(
        min_length=1,
        json_schema_extra={
            "maxItems": MAX_BATCH,
            "items": {"$ref": "#/components/schemas/NewEvent"},
        },
    )


class ProfileIn(BaseModel):
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    locale: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    consent: dict[str, bool] = Field(default_factory=dict)
    device_tokens: list[str] = Field(default_factory=list)


class ProfileWritten(Profile):
    journeys: list[str] = Field(default_factory=list)  # entries its new segments started or ended


class Erased(BaseModel):
    id: str
    events: int
    memberships: int
    deliveries_scrubbed: int
    journeys_ended: list[str]


class MembersOut(BaseModel):
    members: list[str]
    next: str | None


class TooBusy(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Inflight:
    """Events accepted for storing and routing and not finished yet, over all requests (the
    ingest queue depth of the metrics)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    @contextlib.contextmanager
    def holding(self, n: int) -> Iterator[None]:
        if self.count and self.count + n > self.limit:
            raise TooBusy(429, f"{self.count} events are being taken in already; retry shortly")
        self.count += n
        try:
            with metrics.ingesting(n):
                yield
        finally:
            self.count -= n


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413 before the app sees them: by their
    Content-Length when given, else by counting while they stream in (the app reads whole
    bodies anyway, so holding one up to the limit costs nothing more)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"the request body is larger than {self.limit} bytes"}, 413
        )
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(
    settings: Settings,
    client: Callable[[], Awaitable[Client]],
    *,
    keys: list[str] | None = None,
    max_inflight: int = MAX_INFLIGHT,
    ingest_timeout: float = INGEST_TIMEOUT,
    max_body: int = MAX_BODY,
) -> FastAPI:
    keys = [k.get_secret_value() for k in settings.api_keys] if keys is None else keys
    if not keys:
        raise ValueError(
            "the API needs at least one key: set PARCOURS_API_KEYS (comma-separated); "
            "`parcours dev` makes one for you"
        )
    engine = engine_for(settings.database_url)
    app = FastAPI(title="Parcours", version="1", responses=COMMON_RESPONSES)
    app.state.parcours = AppState(engine, settings, client, tuple(keys))
    app.add_middleware(BodyLimit, limit=max_body)
    app.include_router(api_definitions.router)
    inflight = Inflight(max_inflight)
    writer = EventWriter(engine)

    app.include_router(observability_routes(engine, client, authorized))

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, 404)

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": exc.field.split("."), "msg": exc.message}]}, 422)

    @app.exception_handler(LoadFailed)
    async def bad_definition(_: Request, exc: LoadFailed) -> JSONResponse:
        detail = [{"loc": ["body", *parse_path(e.path)], "msg": e.message} for e in exc.errors]
        return JSONResponse({"detail": detail}, 422)

    @app.exception_handler(SignatureError)
    async def bad_signature(_: Request, exc: SignatureError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 403)

    @app.exception_handler(TooBusy)
    async def too_busy(_: Request, exc: TooBusy) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, exc.status, headers={"Retry-After": RETRY_AFTER[exc.status]}
        )

    @app.exception_handler(OperationalError)
    async def store_unavailable(_: Request, exc: OperationalError) -> JSONResponse:
        # The database is down, locked or out of connections: nothing was written.
        return await too_busy(_, TooBusy(503, f"the profile store is unavailable: {exc.orig}"))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=None,  # answered as built: no second validation of 1,000 results
        responses={202: {"model": Ingested, "description": "a result for each event"}},
    )
    async def post_events(
        state: State, _: Auth, body: Annotated[NewEvent | EventBatch, Body()]
    ) -> Any:
        """One event, or `{events: [...]}`. Each event is taken or rejected on its own; an
        event is stored before the answer, so retrying the same ids after a 429 or 503 is
        safe."""
        raw: list[Any] = body.events if isinstance(body, EventBatch) else [body]
        if len(raw) > MAX_BATCH:
            raise HTTPException(413, f"at most {MAX_BATCH} events per request, got {len(raw)}")
        # The checks and the answer are built off the event loop, which keeps serving the
        # reads that sit on web pages' request paths.
        good, report = await asyncio.to_thread(check_events, raw)
        if not good:
            errors = [e.model_dump() for r in report.results for e in r.errors]
            results = [r.model_dump() for r in report.results]
            return JSONResponse({"detail": errors, "results": results}, 422)
        try:
            with inflight.holding(len(good)):
                outcome = await asyncio.wait_for(
                    ingest(state.client, state.engine, state.settings, good, writer),
                    ingest_timeout,
                )
        except TimeoutError:
            raise TooBusy(503, "storing or routing took too long; retry the same ids") from None
        except RoutingFailed as exc:
            raise _temporal_busy(exc.cause) from exc
        except (RPCError, RuntimeError) as exc:  # Temporal unreachable while connecting
            raise _temporal_busy(exc) from exc
        answer = await asyncio.to_thread(lambda: settle(report, outcome).model_dump_json())
        return Response(answer, 202, media_type="application/json")

    @app.get("/v1/profiles/{profile_id}", response_model=Profile)
    async def read_profile(state: State, _: Auth, profile_id: str) -> Profile:
        found = await asyncio.to_thread(get_profile, state.engine, profile_id)
        if found is None:
            raise HTTPException(404, f"no profile {profile_id!r}")
        return found

    async def write_profile(
        state: State, profile_id: str, body: ProfileIn, replace: bool
    ) -> ProfileWritten:
        profile = await asyncio.to_thread(
            set_profile,
            state.engine,
            profile_id,
            email=body.email,
            phone=body.phone,
            timezone=body.timezone,
            locale=body.locale,
            attributes=body.attributes,
            replace_attributes=replace,
            consent=body.consent,
            consent_source="api",
            add_device_tokens=body.device_tokens,
        )
        try:
            journeys = await follow_profile_change(
                state.client, state.engine, state.settings, profile_id
            )
        except (RPCError, RuntimeError) as exc:
            # The profile is saved; its segments too. Journeys following them were not told.
            raise _temporal_busy(exc) from exc
        return ProfileWritten(**profile.model_dump(), journeys=journeys)

    @app.put("/v1/profiles/{profile_id}", response_model=ProfileWritten)
    async def put_profile(
        state: State, _: Auth, profile_id: str, body: ProfileIn
    ) -> ProfileWritten:
        """Create or update the profile; the attributes given become all its attributes."""
        return await write_profile(state, profile_id, body, replace=True)

    @app.patch("/v1/profiles/{profile_id}", response_model=ProfileWritten)
    async def patch_profile(
        state: State, _: Auth, profile_id: str, body: ProfileIn
    ) -> ProfileWritten:
        """Update the fields given; attributes are merged key by key into the stored ones."""
        return await write_profile(state, profile_id, body, replace=False)

    @app.delete("/v1/profiles/{profile_id}", response_model=Erased)
    async def delete_profile(state: State, _: Auth, profile_id: str) -> Erased:
        """Erase the profile: its journeys end, its profile, events and memberships are
        deleted, and its deliveries keep only anonymous counts."""
        try:
            erased, ended = await erase(state.client, state.engine, profile_id)
        except (RPCError, RuntimeError) as exc:
            raise _temporal_busy(exc) from exc  # nothing erased yet: retry
        if not erased.found and not ended:
            raise HTTPException(404, f"no profile {profile_id!r}")
        return Erased(
            id=profile_id,
            events=erased.events,
            memberships=erased.memberships,
            deliveries_scrubbed=erased.deliveries_scrubbed,
            journeys_ended=ended,
        )

    @app.get(
        "/v1/profiles/{profile_id}/segments",
        response_model=None,  # answered as built: the rows need no second validation
        responses={200: {"model": list[Membership], "description": "the segments it is in now"}},
    )
    async def read_profile_segments(state: State, _: Auth, profile_id: str) -> Response:
        """On a web page's request path: one indexed read, done here rather than handed to a
        thread, whose round trip (and wait for the interpreter lock while writers run) would
        cost more than the read."""
        found = profile_segments(state.engine, profile_id)
        return Response(_MEMBERSHIPS.dump_json(found), media_type="application/json")

    @app.get("/v1/segments/{segment_id}/members", response_model=MembersOut)
    async def read_members(
        state: State,
        _: Auth,
        segment_id: str,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> MembersOut:
        page = await asyncio.to_thread(segment_members, state.engine, segment_id, after, limit)
        return MembersOut(members=page.members, next=page.next_cursor)

    @app.get("/v1/deliveries", response_model=list[Delivery])
    async def read_deliveries(
        state: State, _: Auth, profile_id: str | None = None
    ) -> list[Delivery]:
        return await asyncio.to_thread(ledger.list_deliveries, state.engine, profile_id)

    @app.post("/v1/webhooks/sendgrid", responses=SIGNED)
    async def sendgrid_webhook(request: Request) -> dict[str, int]:
        body = await request.body()
        outcome = await asyncio.to_thread(
            sendgrid_callbacks.apply_events,
            engine,
            settings.sendgrid_webhook_public_key,
            body,
            request.headers,  # case-insensitive, as HTTP header names are
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

    @app.post("/v1/webhooks/twilio/status", responses=SIGNED)
    async def twilio_status(request: Request, delivery: str) -> dict[str, int]:
        url, form, signature, token = await twilio_form(request)
        outcome = await asyncio.to_thread(
            twilio_callbacks.apply_status, engine, token, url, form, signature, delivery
        )
        return {"applied": outcome.applied, "duplicates": outcome.duplicates}

    @app.post(
        "/v1/webhooks/twilio/inbound",
        response_class=Response,
        responses={**SIGNED, 200: _text("text/xml", "TwiML: no reply of our own")},
    )
    async def twilio_inbound(request: Request) -> Response:
        url, form, signature, token = await twilio_form(request)
        await asyncio.to_thread(twilio_callbacks.apply_inbound, engine, token, url, form, signature)
        # No reply of our own: Twilio answers STOP itself.
        return Response("<Response/>", media_type="text/xml")

    unsubscribed = {200: _text("text/plain", "what the person will no longer receive")}

    @app.get("/v1/unsubscribe", response_class=Response, responses=unsubscribed)
    async def unsubscribe_link(token: str) -> Response:
        """The link a person clicks, authenticated by its signed token."""
        _, channel = await asyncio.to_thread(unsubscribe, engine, settings, token)
        return PlainTextResponse(f"You will not receive {channel} messages from us any more.")

    @app.post("/v1/unsubscribe", response_class=Response, responses=unsubscribed)
    async def one_click_unsubscribe(token: str) -> Response:
        """RFC 8058's one-click unsubscribe (the mail client posts to the same link)."""
        return await unsubscribe_link(token)

    app.include_router(journey_routes(settings, engine, client))
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


def _temporal_busy(exc: BaseException) -> TooBusy:
    if isinstance(exc, RPCError) and exc.status == RPCStatusCode.RESOURCE_EXHAUSTED:
        return TooBusy(429, f"Temporal is rate-limiting: {exc}")
    return TooBusy(503, f"Temporal is unavailable: {exc}")


def _text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}
