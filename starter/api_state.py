"""What every API route needs: the caller's key checked, and the store, settings and Temporal
client of the app serving it."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.engine import Engine
from temporalio.client import Client

from parcours.settings import Settings


@dataclass(frozen=True)
class AppState:
    engine: Engine
    settings: Settings
    client: Callable[[], Awaitable[Client]]
    keys: tuple[str, ...]


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.parcours
    return state


def authorized(request: Request) -> None:
    scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
    # Compared in constant time, against every key, so timing tells nothing.
    keys = app_state(request).keys
    matches = [hmac.compare_digest(given.encode(), key.encode()) for key in keys]
    if scheme.lower() != "bearer" or not any(matches):
        raise HTTPException(401, "a valid `Authorization: Bearer KEY` header is required")


Auth = Annotated[None, Depends(authorized)]
State = Annotated[AppState, Depends(app_state)]
