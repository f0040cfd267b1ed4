"""`GET /v1/journeys/{id}` and the journey page: the report `parcours journeys show` prints,
as JSON and as a drawing with a link from each node to its entries in the Temporal Web UI.

Entries run on the real dev server (its visibility store answers "how many are here now");
the page is checked in Debian's headless Chromium, loaded from the API served by uvicorn."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.apply import apply_paths
from activities.finishes import node_counts
from parcours import ParcoursPlugin
from parcours.definitions import Journey
from parcours.journey_svg import journey_svg, layout
from parcours.loader import load_paths
from parcours.records import NewEvent
from parcours.settings import Settings
from starter.api import create_app
from starter.lifecycle import where_profiles_are
from starter.routing import send_event
from tests.conftest import EXAMPLES
from tests.test_lifecycle import eventually
from workflows.journey import JourneyWorkflow

KEY = "page-key"
UI = "http://127.0.0.1:8233"
# A name with markup in it: the page must show it as text.
NAME = 'Cart <script>alert("x")</script> & co'
JOURNEY = """
kind: journey
id: ID
name: 'NAME'
entry: {event: joined}
start: first-look
nodes:
  - {id: first-look, type: wait_for_event, event: clicked, timeout: 1d, on_event: hold, on_timeout: done}
  - {id: hold, type: wait, duration: 1d, next: done}
  - {id: done, type: end}
"""
# Where the entries are once `populated` is done.
NOW = {"first-look": 2, "hold": 1, "done": 0}


@dataclass
class Populated:
    client: Client
    journey_id: str
    settings: Settings


@asynccontextmanager
async def populated(
    env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> AsyncIterator[Populated]:
    """A journey with two entries waiting at `first-look`, one at `hold`, and one that was
    stopped at `first-look`."""
    # One dev server serves every test: a journey id of its own.
    journey_id = f"page-{uuid.uuid4().hex[:8]}"
    (tmp_path / "page.yaml").write_text(
        JOURNEY.replace("ID", journey_id).replace("NAME", NAME.replace("'", "''"))
    )
    apply_paths(engine, [tmp_path / "page.yaml"])
    target = env.client.service_client.config.target_host
    client = await Client.connect(target, plugins=[ParcoursPlugin(settings)])
    settings = settings.model_copy(update={"temporal_ui_url": UI + "/"})

    async def event(kind: str, profile: str) -> None:
        await send_event(client, engine, settings, NewEvent(type=kind, profile_id=profile))

    async with Worker(client, task_queue=settings.task_queue):
        for profile in ("ann", "bob", "cy", "dee"):
            await event("joined", profile)
        # Only events after the wait began count: a click that reached the entry with its
        # start, before its first workflow task, would be read as earlier and left unheard.
        cy = client.get_workflow_handle_for(JourneyWorkflow.run, f"journey:{journey_id}:cy")

        async def waiting() -> bool:
            return (await cy.query(JourneyWorkflow.position)).node == "first-look"

        await eventually(waiting, "cy's entry to wait at first-look")
        await event("clicked", "cy")
        await client.get_workflow_handle(f"journey:{journey_id}:dee").signal(
            "stop", "journey stopped"
        )

        async def settled() -> bool:
            here = await where_profiles_are(client, journey_id)
            return bool(node_counts(engine, journey_id)) and here == {
                k: v for k, v in NOW.items() if v
            }

        await eventually(settled, "the entries to reach their nodes")
        try:
            yield Populated(client, journey_id, settings)
        finally:
            for profile in ("ann", "bob", "cy"):
                await client.get_workflow_handle(f"journey:{journey_id}:{profile}").terminate(
                    "test finished"
                )


def expected_link(journey_id: str, node: str) -> str:
    return (
        f'ParcoursJourney = "{journey_id}" AND ParcoursJourneyVersion = 1 '
        f'AND ParcoursNode = "{node}"'
    )


async def test_the_journey_report_as_json_with_its_errors(
    dev_server_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    async with populated(dev_server_env, settings, engine, tmp_path) as stack:

        async def client() -> Client:
            return stack.client

        app = create_app(stack.settings, client, keys=[KEY])
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://parcours.test"
        ) as http:
            path = f"/v1/journeys/{stack.journey_id}"
            assert (await http.get(path)).status_code == 401
            wrong = await http.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            http.headers["Authorization"] = f"Bearer {KEY}"
            report = (await http.get(path)).json()
            assert report["id"] == stack.journey_id and report["status"] == "live"
            assert (report["version"], report["current_version"]) == (1, 1)
            assert report["definition"]["name"] == NAME
            nodes = {n["id"]: n for n in report["nodes"]}
            assert {k: n["now"] for k, n in nodes.items()} == NOW
            assert nodes["first-look"]["passed"] == 1
            assert nodes["first-look"]["exits"] == {"journey stopped": 1}
            assert nodes["first-look"]["next"] == ["hold", "done"]
            assert nodes["hold"]["summary"] == "wait 1d"
            assert report["versions"] == {"1": {"now": 3, "finished": 1}}
            assert report["conversions"] == {}

            missing = await http.get("/v1/journeys/nope")
            assert missing.status_code == 404
            assert missing.json() == {"detail": "no journey 'nope' is published"}
            older = await http.get(path, params={"version": 9})
            assert older.status_code == 404
            assert older.json()["detail"] == f"journey '{stack.journey_id}' has no version 9"
            zero = await http.get(path, params={"version": 0})
            assert zero.status_code == 422 and zero.json()["detail"][0]["loc"][-1] == "version"

            schema = (await http.get("/openapi.json")).json()
            operation = schema["paths"]["/v1/journeys/{journey_id}"]["get"]
            assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/JourneyReport"
            }
            assert "/journeys/{journey_id}" not in schema["paths"]  # pages are not API


async def test_pages_need_a_key_given_once_and_the_cookie_opens_no_api(
    settings: Settings, engine: Engine
) -> None:
    async def client() -> Client:
        raise AssertionError("no page here needs Temporal")

    app = create_app(settings, client, keys=[KEY, "other"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://parcours.test"
    ) as http:
        asked = await http.get("/journeys")
        assert asked.status_code == 401
        assert '<form method="post" action="/login">' in asked.text
        assert 'name="next" value="/journeys"' in asked.text
        refused = await http.post("/login", data={"key": "nope", "next": "/journeys"})
        assert refused.status_code == 401 and "not a key this API accepts" in refused.text
        assert "set-cookie" not in refused.headers

        signed = await http.post("/login", data={"key": KEY, "next": "/journeys/x?version=2"})
        assert signed.status_code == 303 and signed.headers["location"] == "/journeys/x?version=2"
        cookie = signed.cookies["parcours_page"]
        assert KEY not in cookie and "HttpOnly" in signed.headers["set-cookie"]
        index = await http.get("/journeys")
        assert index.status_code == 200
        assert "No journey is published yet" in index.text
        csp = index.headers["content-security-policy"]
        assert "default-src 'none'" in csp  # the page may fetch nothing, from anywhere
        # The cookie is for reading pages: the API still wants the bearer header.
        assert (await http.get("/v1/profiles/ada")).status_code == 401
        assert (await http.get("/v1/journeys/x")).status_code == 401

        http.cookies.clear()
        by_link = await http.get("/login", params={"key": "other", "next": "//evil.example/"})
        assert by_link.status_code == 303 and by_link.headers["location"] == "/journeys"
        missing = await http.get("/journeys/nope")
        assert missing.status_code == 404 and "no journey &#x27;nope&#x27; is published" in (
            missing.text
        )
        http.cookies.clear()
        bearer = await http.get("/journeys", headers={"Authorization": "Bearer other"})
        assert bearer.status_code == 200


async def test_a_journey_asked_for_while_temporal_is_down_answers_503(
    settings: Settings, engine: Engine
) -> None:
    apply_paths(engine, [EXAMPLES / "welcome"])

    async def client() -> Client:
        return await Client.connect("127.0.0.1:1")  # nothing listens there

    app = create_app(settings, client, keys=[KEY])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://parcours.test",
        headers={"Authorization": f"Bearer {KEY}"},
    ) as http:
        down = await http.get("/v1/journeys/welcome")
        assert down.status_code == 503 and down.headers["retry-after"] == "5"
        assert down.json()["detail"].startswith("cannot reach Temporal")
        page = await http.get("/journeys/welcome")
        assert page.status_code == 503 and "cannot reach Temporal" in page.text
        # An unknown journey is told without asking Temporal.
        assert (await http.get("/v1/journeys/nope")).status_code == 404
        odd = await http.get("/v1/journeys/a%00b")  # PostgreSQL refuses NUL in text
        assert (
            odd.status_code == 404 and odd.json()["detail"] == "no journey 'a\\x00b' is published"
        )


# --- In a real browser -----------------------------------------------------------------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    parent: Element | None = None

    def all(self, tag: str | None = None) -> list[Element]:
        found = [self] if tag in (None, self.tag) else []
        for child in self.children:
            found += child.all(tag)
        return found

    def content(self) -> str:
        return "".join(self.text) + "".join(c.content() for c in self.children)

    def ancestor(self, tag: str) -> Element | None:
        node = self.parent
        while node is not None and node.tag != tag:
            node = node.parent
        return node


VOID = {"meta", "input", "br", "img", "link", "hr"}


class Tree(HTMLParser):
    """The DOM Chromium dumps, as a tree (the standard library's parser, no new dependency)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.root = Element("#document", {})
        self.at = self.root
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, parent=self.at)
        self.at.children.append(element)
        if tag not in VOID:
            self.at = element

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.at
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.at = node.parent

    def handle_data(self, data: str) -> None:
        self.at.text.append(data)


async def dump_dom(url: str, profile: Path) -> str:
    """What headless Chromium shows at `url`, after its redirects and once loaded."""
    process = await asyncio.create_subprocess_exec(
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--dump-dom",
        url,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


@asynccontextmanager
async def serving(app: object) -> AsyncIterator[str]:
    """uvicorn on a free 127.0.0.1 port, in this event loop (the Temporal client lives here)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        listener.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_page_draws_the_journey_with_live_counts_and_temporal_ui_links(
    dev_server_env: WorkflowEnvironment, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    async with populated(dev_server_env, settings, engine, tmp_path) as stack:

        async def client() -> Client:
            return stack.client

        app = create_app(stack.settings, client, keys=[KEY])
        async with serving(app) as base:
            page = f"/journeys/{stack.journey_id}"
            locked = Tree(await dump_dom(base + page, tmp_path / "chromium-1"))
            assert [f.attrs["action"] for f in locked.root.all("form")] == ["/login"]
            assert "first-look" not in locked.root.content()

            # The link `parcours dev` prints: sign in, then go to the page.
            dom = await dump_dom(f"{base}/login?key={KEY}&next={page}", tmp_path / "chromium-2")
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
                report = (await http.get(f"{base}/v1/journeys/{stack.journey_id}")).json()

    tree = Tree(dom).root
    assert [h.content() for h in tree.all("h1")] == [NAME]  # shown as text, not run
    assert tree.all("script") == []
    [svg] = tree.all("svg")
    groups = {g.attrs["data-node"]: g for g in svg.all("g") if "data-node" in g.attrs}
    assert set(groups) == set(NOW)
    same_data = {n["id"]: n["now"] for n in report["nodes"]}
    assert same_data == NOW
    for node, now in NOW.items():
        texts = [t.content() for t in groups[node].all("text")]
        assert texts[0] == node
        assert f"{now} here now" in texts
        link = groups[node].ancestor("a")
        assert link is not None, f"{node} is not a link"
        href = urlsplit(link.attrs["href"])
        assert f"{href.scheme}://{href.netloc}" == UI
        assert href.path == "/namespaces/default/workflows"
        assert parse_qs(href.query) == {"query": [expected_link(stack.journey_id, node)]}
    first = [t.content() for t in groups["first-look"].all("text")]
    assert "wait for clicked, at most 1d" in first
    assert "1 passed" in first and "1 left (journey stopped 1)" in first
    assert [t.content() for t in svg.all("text")].count("on_timeout") == 1  # edge labels
    # The table under the drawing says the same, with the same links.
    rows = {
        cells[0].content(): [c.content() for c in cells]
        for cells in (r.all("td") for r in tree.all("tr"))
        if cells
    }
    assert {node: int(row[3]) for node, row in rows.items()} == NOW
    assert "live" in tree.all("p")[1].content()


LOOPING = """
kind: journey
id: looping
name: 'a <b>bold</b> & "quoted" name'
entry: {event: 'x<y'}
start: ask
nodes:
  - {id: ask, type: wait_for_event, event: answered, timeout: 1d, on_event: done, on_timeout: nudge}
  - {id: nudge, type: wait, duration: 1h, next: ask}
  - {id: done, type: end}
"""


def test_the_drawing_puts_loops_on_the_side_and_escapes_every_string(tmp_path: Path) -> None:
    (tmp_path / "looping.yaml").write_text(LOOPING)
    [loaded] = load_paths([tmp_path / "looping.yaml"]).definitions
    journey = loaded.definition
    assert isinstance(journey, Journey)
    plan = layout(journey)
    assert plan.rows == [["ask"], ["nudge", "done"]]
    assert plan.loops == {("nudge", 0)}  # nudge -> ask goes back up
    svg = journey_svg(journey, {"ask": ["1 here <now>"]}, {"ask": 'http://ui/?q="a"&b'})
    tree = Tree(svg).root
    assert tree.all("title")[0].content() == 'a <b>bold</b> & "quoted" name'
    assert "entry: event x<y" in [t.content() for t in tree.all("text")]
    assert "1 here <now>" in [t.content() for t in tree.all("text")]
    [link] = tree.all("a")
    assert link.attrs["href"] == 'http://ui/?q="a"&b'
    assert "<b>" not in svg and "x<y" not in svg


def test_an_edge_that_skips_layers_goes_around_the_boxes_between() -> None:
    journey = Journey.model_validate(
        {
            "id": "skip",
            "entry": {"event": "e"},
            "start": "a",
            "nodes": [
                {
                    "id": "a",
                    "type": "wait_for_event",
                    "event": "go",
                    "timeout": "1h",
                    "on_event": "b",
                    "on_timeout": "c",
                },
                {"id": "b", "type": "wait", "duration": "1h", "next": "c"},
                {"id": "c", "type": "end"},
            ],
        }
    )
    plan = layout(journey)
    assert plan.rows == [["a"], ["b", "~a~1~1"], ["c"]]
    assert plan.routes[("a", 1)] == ["~a~1~1"] and plan.loops == set()


def test_the_temporal_ui_address_comes_from_parcours_toml_or_the_environment(
    tmp_path: Path,
) -> None:
    (tmp_path / "parcours.toml").write_text('[temporal]\nui_url = "http://127.0.0.1:8233"\n')
    assert Settings.load(tmp_path, env={}).temporal_ui_url == "http://127.0.0.1:8233"
    env = {"PARCOURS_TEMPORAL_UI_URL": "https://temporal.example.com"}
    assert Settings.load(tmp_path, env=env).temporal_ui_url == "https://temporal.example.com"
