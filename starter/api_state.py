"""What every API route needs: the caller's key checked, and the store, settings and Temporal
client of the app serving it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from temporalio.client import Client

from parcours.settings import Settings
from starter.auth import known_key


@dataclass(frozen=True)
class AppState:
    engine: Engine
    settings: Settings
    client: Callable[[], Awaitable[Client]]
    keys: tuple[str, ...]


# Dependencies are coroutines: FastAPI would run plain functions on a worker thread, and the
# hop there and back (waiting for the interpreter lock while events are written) costs more
# than the check itself.
async def app_state(request: Request) -> AppState:
    return state_of(request)


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.parcours
    return state


# Declared in the OpenAPI document; checked below (a missing header is a 401, not a 403).
_bearer = HTTPBearer(auto_error=False, description="A key from PARCOURS_API_KEYS")


async def authorized(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    if not known_key(credentials.credentials if credentials else "", state_of(request).keys):
        raise HTTPException(
            401,
            "a valid `Authorization: Bearer KEY` header is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


Auth = Annotated[None, Depends(authorized)]
State = Annotated[AppState, Depends(app_state)]
