"""The API's routes for operators: `/readyz` for load balancers and orchestrators, `/metrics`
for Prometheus (docs/observability.md). Both stay out of the OpenAPI schema, like `/healthz`:
they are not part of the API callers program against.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client

# Each check gets this long: a probe that hangs is an answer too (not ready).
CHECK_SECONDS = 2.0

log = logging.getLogger("parcours.api")


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    # "ok", or what is wrong in a few words (details go to the log, not to anonymous callers).
    checks: dict[str, str]


def observability_routes(
    engine: Engine, client: Callable[[], Awaitable[Client]], auth: Callable[..., Any]
) -> APIRouter:
    """`auth` guards `/metrics` (the API's own key check): volumes per journey are business
    figures. `/readyz` answers anyone, as `/healthz` does."""
    router = APIRouter(include_in_schema=False)

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        database, temporal = await asyncio.gather(
            _check("database", _database(engine)), _check("temporal", _temporal(client))
        )
        checks = {"database": database, "temporal": temporal}
        ready = all(v == "ok" for v in checks.values())
        body = Readiness(status="ready" if ready else "not_ready", checks=checks)
        return JSONResponse(body.model_dump(), 200 if ready else 503)

    @router.get("/metrics", dependencies=[Depends(auth)])
    async def metrics(request: Request) -> Response:
        # Prometheus' text format, or OpenMetrics when the scraper asks for it.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encode(REGISTRY), headers={"Content-Type": content_type})

    return router


async def _database(engine: Engine) -> None:
    def ping() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # The driver blocks; a connection that hangs is given up on (its thread finishes alone).
    await asyncio.to_thread(ping)


async def _temporal(client: Callable[[], Awaitable[Client]]) -> None:
    connected = await client()
    if not await connected.service_client.check_health(timeout=timedelta(seconds=CHECK_SECONDS)):
        raise RuntimeError("the frontend says it is not serving")


async def _check(name: str, probe: Awaitable[None]) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_SECONDS)
    except TimeoutError:
        log.warning("readiness: %s did not answer within %.0fs", name, CHECK_SECONDS)
        return f"no answer within {CHECK_SECONDS:.0f}s"
    except Exception as exc:
        log.warning("readiness: %s is not reachable: %s", name, exc)
        return "unreachable"
    return "ok"
