"""`GET /v1/journeys/{id}` and the journey pages a person opens in a browser.

Both show the one report `parcours journeys show` prints (`starter.journey_report`). The pages
are self-contained: the graph is SVG drawn by `parcours.journey_svg`, styles are inline, and a
Content-Security-Policy forbids loading anything, so they work with no network at all.

A browser cannot send `Authorization: Bearer`, so the pages also accept a cookie that
`/login` sets once the visitor gives an API key (a form, or `/login?key=` as a link, which
`parcours dev` prints). The cookie holds an HMAC of the key, never the key, and only opens the
read-only pages: the `/v1` endpoints take the bearer header alone, so a cookie cannot be used
to change anything (no cross-site request forgery).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from html import escape
from typing import Annotated
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.service import RPCError

from activities import catalog
from parcours.journey_svg import journey_svg
from parcours.settings import Settings
from starter.api_state import authorized, state_of
from starter.auth import bearer_key, known_key
from starter.journey_report import JourneyReport, UnknownJourney, journey_report
from starter.lifecycle import node_query

COOKIE = "parcours_page"
REFRESH_SECONDS = 15
# Nothing may be fetched: no scripts, fonts, images or styles from anywhere but the page.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}

Version = Annotated[int | None, Query(ge=1, description="default: the current version")]
Next = Annotated[str, Query(description="the page to go to once signed in")]


def journey_routes(
    settings: Settings,
    engine: Engine,
    client: Callable[[], Awaitable[Client]],
) -> APIRouter:
    router = APIRouter()

    async def temporal() -> Client:
        try:
            return await client()
        except RuntimeError as exc:  # what Client.connect raises when it cannot connect
            raise HTTPException(
                503, f"cannot reach Temporal: {exc}", {"Retry-After": "5"}
            ) from None

    async def report(journey_id: str, version: int | None) -> JourneyReport:
        try:
            return await journey_report(engine, temporal, journey_id, version)
        except UnknownJourney as exc:
            raise HTTPException(404, str(exc)) from None
        except RPCError as exc:
            raise HTTPException(
                503, f"Temporal did not answer: {exc.message}", {"Retry-After": "5"}
            ) from None

    @router.get(
        "/v1/journeys/{journey_id}",
        dependencies=[Depends(authorized)],
        responses={
            401: {"description": "no valid `Authorization: Bearer` key"},
            404: {"description": "no such journey, or no such version of it"},
            503: {"description": "Temporal did not answer; retry after `Retry-After`"},
        },
    )
    async def read_journey(journey_id: str, version: Version = None) -> JourneyReport:
        """Definition, status, counts per node and conversions of one journey version."""
        return await report(journey_id, version)

    def signed_in(request: Request) -> bool:
        given = request.cookies.get(COOKIE, "").encode()
        # Every key is compared, in constant time, so timing tells nothing.
        keys = state_of(request).keys
        cookies = [hmac.compare_digest(given, page_token(k).encode()) for k in keys]
        return any(cookies) or known_key(bearer_key(request.headers.get("Authorization")), keys)

    @router.get("/journeys", include_in_schema=False)
    async def journeys_index(request: Request) -> Response:
        if not signed_in(request):
            return _login_page(request.url.path, None, 401)
        found = await asyncio.to_thread(catalog.list_journeys, engine)
        rows = "".join(
            f'<tr><td><a href="/journeys/{quote(j.journey_id)}">{escape(j.journey_id)}</a></td>'
            f"<td>v{j.version}</td><td>{escape(j.status)}</td><td>{escape(j.entry_event)}</td>"
            f"<td>{j.created_at:%Y-%m-%d %H:%M}</td></tr>"
            for j in found
        )
        table = (
            "<table><tr><th>journey</th><th>version</th><th>status</th><th>entry</th>"
            f"<th>published</th></tr>{rows}</table>"
            if found
            else "<p>No journey is published yet: <code>parcours apply FILE|DIR</code>.</p>"
        )
        return _page("Journeys", f"<h1>Journeys</h1>{table}")

    @router.get("/journeys/{journey_id}", include_in_schema=False)
    async def journey_page(request: Request, journey_id: str, version: Version = None) -> Response:
        if not signed_in(request):
            return _login_page(request.url.path, None, 401)
        try:
            found = await report(journey_id, version)
        except HTTPException as exc:
            back = '<p><a href="/journeys">All journeys</a></p>'
            return _page("Journey", f"<h1>{escape(str(exc.detail))}</h1>{back}", exc.status_code)
        ui = settings.temporal_ui_url
        namespace = (await client()).namespace
        return _page(
            f"Journey {found.id}",
            _journey_html(found, ui.rstrip("/") if ui else None, namespace),
            refresh=True,
        )

    @router.get("/login", include_in_schema=False)
    async def login_link(
        request: Request, key: str | None = None, next: Next = "/journeys"
    ) -> Response:
        if key is None:
            return _login_page(next, None, 200)
        return _sign_in(request, key, next)

    @router.post("/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        # A plain urlencoded form: no multipart parser needed.
        form = dict(parse_qsl((await request.body()).decode(errors="replace")))
        return _sign_in(request, form.get("key", ""), form.get("next", "/journeys"))

    return router


def page_token(key: str) -> str:
    """What the cookie holds for an API key: it opens the pages, and gives the key away to
    no one who reads it."""
    return hmac.new(key.encode(), b"parcours journey pages", hashlib.sha256).hexdigest()


def temporal_ui_link(ui: str, namespace: str, journey_id: str, version: int, node: str) -> str:
    """The Temporal Web UI's (2.x) list of workflows matching the node's visibility query."""
    query = urlencode({"query": node_query(journey_id, version, node)})
    return f"{ui}/namespaces/{quote(namespace, safe='')}/workflows?{query}"


def _sign_in(request: Request, key: str, next: str) -> Response:
    if not known_key(key, state_of(request).keys):
        return _login_page(next, "That is not a key this API accepts.", 401)
    # Only a path on this site: `//host` or a full URL would make /login an open redirect.
    target = next if next.startswith("/") and not next.startswith(("//", "/\\")) else "/journeys"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        page_token(key),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


def _login_page(next: str, problem: str | None, status: int) -> HTMLResponse:
    said = f'<p class="problem">{escape(problem)}</p>' if problem else ""
    return _page(
        "Sign in",
        "<h1>Parcours</h1><p>These pages need one of the API's keys "
        "(<code>PARCOURS_API_KEYS</code>; <code>parcours dev</code> prints one).</p>"
        f'{said}<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{escape(next)}">'
        '<label>API key <input type="password" name="key" autocomplete="current-password" '
        'autofocus></label> <button type="submit">Sign in</button></form>',
        status,
    )


def _journey_html(report: JourneyReport, ui: str | None, namespace: str) -> str:
    journey = report.definition
    links = (
        {
            row.id: temporal_ui_link(ui, namespace, report.id, report.version, row.id)
            for row in report.nodes
        }
        if ui
        else {}
    )
    lines = {
        row.id: [f"{row.now} here now", f"{row.passed} passed"]
        + ([row.finished_here()] if row.finished_here() else [])
        for row in report.nodes
    }
    title = escape(journey.name or report.id)
    shown = (
        f"v{report.version}"
        if report.version == report.current_version
        else f"v{report.version} (current: v{report.current_version})"
    )
    facts = [
        f'<span class="status status-{escape(report.status)}">{escape(report.status)}</span>',
        shown,
        f"entry on {escape(journey.entry.describe())}",
        f"{sum(row.now for row in report.nodes)} inside now",
    ]
    if len(report.versions) > 1:
        facts.append(
            "versions: "
            + ", ".join(
                f'<a href="/journeys/{quote(report.id)}?version={v}">v{v}</a> '
                f"({c.now} inside, {c.finished} finished)"
                for v, c in report.versions.items()
            )
        )
    if journey.goal is not None:
        converted = report.conversions.get(report.version)
        facts.append(
            f"goal {escape(journey.goal.event)}: "
            f"{converted.conversions if converted else 0} conversions"
        )
    ui_note = (
        f'<p class="hint">Each node opens its entries in the <a href="{escape(ui)}">Temporal Web '
        "UI</a>.</p>"
        if ui
        else '<p class="hint">Set <code>PARCOURS_TEMPORAL_UI_URL</code> (or run '
        "<code>parcours dev</code>) to link each node to its entries in the Temporal Web UI.</p>"
    )
    rows = "".join(
        "<tr>"
        + (
            f'<td><a href="{escape(links[row.id])}" target="_blank" rel="noopener">'
            f"{escape(row.id)}</a></td>"
            if row.id in links
            else f"<td>{escape(row.id)}</td>"
        )
        + f"<td>{escape(row.type)}</td><td>{escape(row.summary)}</td>"
        f'<td class="n">{row.now}</td><td class="n">{row.passed}</td>'
        f"<td>{escape(row.finished_here())}</td></tr>"
        for row in report.nodes
    )
    table = (
        '<table class="nodes"><tr><th>node</th><th>type</th><th>does</th><th>here now</th>'
        f"<th>passed</th><th>finished here</th></tr>{rows}</table>"
    )
    return (
        f'<p><a href="/journeys">All journeys</a></p><h1>{title}</h1>'
        f'<p class="facts">{" · ".join(facts)}</p>{ui_note}'
        f'<div class="graph">{journey_svg(journey, lines, links)}</div>{table}'
        f'<p class="hint">Counted at {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; the page '
        f"reloads every {REFRESH_SECONDS} s. The same report as JSON: "
        f"<code>GET /v1/journeys/{escape(report.id)}</code>. <em>passed</em> counts entries "
        "that have finished and went through the node.</p>"
    )


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2433; }
h1 { font-size: 1.4rem; margin: .3rem 0; }
a { color: #1f5fbf; }
code { background: #f1f3f6; padding: 0 .25rem; border-radius: 3px; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border-bottom: 1px solid #dde1e7; padding: .3rem .7rem; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.hint { color: #5b6475; }
.problem { color: #b3261e; }
.status { padding: 0 .4rem; border-radius: 3px; background: #e4e7ec; }
.status-live { background: #d7f2dc; }
.status-paused { background: #fbefc8; }
.status-stopped { background: #f7d8d5; }
.graph { overflow-x: auto; }
.journey-graph text { font-size: 12px; fill: #1d2433; }
.journey-graph text.id { font-weight: 600; font-size: 13px; }
.journey-graph text.summary { fill: #5b6475; }
.journey-graph .node rect { fill: #ffffff; stroke: #5b6475; stroke-width: 1.2; }
.journey-graph .node-wait rect, .journey-graph .node-wait_for_event rect { fill: #eef4ff; }
.journey-graph .node-condition rect, .journey-graph .node-split rect { fill: #fff6e0; }
.journey-graph .node-message rect { fill: #eaf7ee; }
.journey-graph .node-end rect { fill: #f1f3f6; }
.journey-graph .entry rect { fill: #1d2433; }
.journey-graph .entry text { fill: #ffffff; }
.journey-graph a.node-link:hover rect { stroke: #1f5fbf; stroke-width: 2.5; }
.journey-graph .edge { fill: none; stroke: #8a93a3; stroke-width: 1.4; }
.journey-graph .edge-label text { fill: #5b6475; font-size: 11px; }
.journey-graph marker path { fill: #8a93a3; }
"""


def _page(title: str, body: str, status: int = 200, *, refresh: bool = False) -> HTMLResponse:
    reload = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return HTMLResponse(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{reload}'
        f"<title>{escape(title)} · Parcours</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>",
        status,
        headers=HEADERS,
    )
