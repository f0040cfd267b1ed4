"""The HTTP API in process (ASGI) for tests: `api` is an httpx client calling it with a valid
key, on the test's store and a worker on the shared time-skipping server (`temporal`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from parcours.settings import Settings
from starter.api import create_app
from tests.delivery import with_providers
from tests.journeys import run_worker

KEY = "test-key-1"
BASE = "https://parcours.example.com"


@pytest.fixture
async def temporal(
    time_skipping_env: WorkflowEnvironment, settings: Settings
) -> AsyncIterator[Client]:
    async for client in run_worker(time_skipping_env, settings):
        yield client


@pytest.fixture
async def api(settings: Settings, temporal: Client) -> AsyncIterator[httpx.AsyncClient]:
    settings = with_providers(settings).model_copy(
        update={"twilio_auth_token": SecretStr("twilio-token"), "api_url": BASE}
    )

    async def client() -> Client:
        return temporal

    async with serve(create_app(settings, client, keys=[KEY, "second-key"])) as http:
        yield http


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process, called with the test key."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url=BASE, headers={"Authorization": f"Bearer {KEY}"}
    ) as http:
        yield http
