"""Every endpoint that needs a key refuses a request without one, or with a wrong one, and
the refused request changes nothing."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from activities.db import Base

UNSIGNED = {"/healthz", "/v1/unsubscribe", "/openapi.json", "/docs", "/redoc"}
BODIES = {
    "/v1/events": {"type": "signed_up", "profile_id": "eve"},
    "/v1/profiles/{profile_id}": {"email": "eve@example.com", "attributes": {"vip": True}},
    "/v1/segments/{segment_id}": {"rule": {"attribute": "vip", "op": "eq", "value": True}},
}


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table.name: connection.execute(select(func.count()).select_from(table)).scalar() or 0
            for table in Base.metadata.sorted_tables
        }


async def test_no_key_or_a_wrong_key_is_refused_everywhere_and_changes_nothing(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    await api.put("/v1/profiles/eve", json={"email": "eve@example.com"})
    before = _counts(engine)
    operations = (await api.get("/openapi.json")).json()["paths"]
    checked = 0
    for template, methods in operations.items():
        if template in UNSIGNED or template.startswith("/v1/webhooks/"):
            continue
        path = template.replace("{profile_id}", "eve").replace("{segment_id}", "vip")
        path = path.replace("{journey_id}", "welcome").replace("{campaign_id}", "digest")
        path = path.replace("{template_id}", "hello")
        for method in methods:
            for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-key"}):
                answer = await api.request(
                    method.upper(), path, json=BODIES.get(template, {}), headers=headers
                )
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.headers["WWW-Authenticate"] == "Bearer"
                checked += 1
    assert checked >= 2 * 18
    assert _counts(engine) == before
