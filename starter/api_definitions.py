"""Definitions over HTTP: segments, templates, journeys and campaigns, published through the
same `apply` as `parcours apply`, and the journey and campaign controls of the CLI."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel
from temporalio.service import RPCError

from activities import catalog
from activities.apply import apply_documents
from activities.campaigns import run_reports
from activities.catalog import Published
from parcours.definitions import Campaign, Journey, Segment, Template
from starter import campaigns as campaign_control
from starter import lifecycle
from starter.api_state import Auth, State

router = APIRouter(prefix="/v1")


@dataclass(frozen=True)
class CampaignPublished(Published):
    schedule: Literal["synced", "pending", "none"] = "none"


class JourneyStatus(BaseModel):
    id: str
    status: Literal["live", "paused", "stopped"]
    entries_stopped: int = 0


class RunStarted(BaseModel):
    run_id: str


async def _apply(
    state: State,
    path_id: str | None,
    definition: Segment | Template | Journey | Campaign,
    **kw: Any,
) -> Published:
    if path_id is not None and definition.id != path_id:
        raise HTTPException(
            422,
            [
                {
                    "loc": ["body", "id"],
                    "msg": f"{definition.id!r} differs from the path's {path_id!r}",
                }
            ],
        )
    document = ("request body", definition.model_dump(mode="json", exclude_unset=True))
    (result,) = await asyncio.to_thread(apply_documents, state.engine, [document], **kw)
    return result


@router.put("/segments/{segment_id}", response_model=Published)
async def put_segment(state: State, _: Auth, segment_id: str, body: Segment) -> Published:
    return await _apply(state, segment_id, body)


@router.put("/templates/{template_id}", response_model=Published)
async def put_template(state: State, _: Auth, template_id: str, body: Template) -> Published:
    return await _apply(state, template_id, body)


@router.post("/journeys", response_model=Published, status_code=201)
async def post_journey(
    state: State, _: Auth, body: Journey, status: Literal["live", "draft"] = "live"
) -> Published:
    """Publish a new version (an unchanged definition publishes nothing new)."""
    return await _apply(state, None, body, status=status)


async def _journey_status(
    state: State, journey_id: str, status: Literal["live", "paused", "stopped"]
) -> JourneyStatus:
    client = await state.client()
    stopped = await lifecycle.set_status(client, state.engine, journey_id, status)
    return JourneyStatus(id=journey_id, status=status, entries_stopped=stopped)


@router.post("/journeys/{journey_id}/pause", response_model=JourneyStatus)
async def pause_journey(state: State, _: Auth, journey_id: str) -> JourneyStatus:
    return await _journey_status(state, journey_id, "paused")


@router.post("/journeys/{journey_id}/resume", response_model=JourneyStatus)
async def resume_journey(state: State, _: Auth, journey_id: str) -> JourneyStatus:
    return await _journey_status(state, journey_id, "live")


@router.post("/journeys/{journey_id}/stop", response_model=JourneyStatus)
async def stop_journey(state: State, _: Auth, journey_id: str) -> JourneyStatus:
    return await _journey_status(state, journey_id, "stopped")


@router.put("/campaigns/{campaign_id}", response_model=CampaignPublished)
async def put_campaign(
    state: State, _: Auth, campaign_id: str, body: Campaign
) -> CampaignPublished:
    """Define the campaign and make (or update) its schedule. When Temporal cannot be reached
    the campaign is kept and its schedule is made when a worker starts (`pending`)."""
    result = await _apply(state, campaign_id, body)
    schedule: Literal["synced", "pending", "none"] = "none"
    if body.schedule is not None:
        try:
            client = await state.client()
            await campaign_control.sync_schedules(client, state.engine, state.settings)
            schedule = "synced"
        except (RPCError, RuntimeError, OSError):
            schedule = "pending"
    return CampaignPublished(**result.__dict__, schedule=schedule)


@router.post("/campaigns/{campaign_id}/run", response_model=RunStarted, status_code=202)
async def run_campaign(state: State, _: Auth, campaign_id: str) -> RunStarted:
    await asyncio.to_thread(catalog.campaign, state.engine, campaign_id)  # 404 when unknown
    handle = await campaign_control.start_run(
        await state.client(), state.engine, state.settings, campaign_id
    )
    return RunStarted(run_id=handle.id)


@router.get("/campaigns/{campaign_id}/runs")
async def campaign_runs(
    state: State, _: Auth, campaign_id: str, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> list[dict[str, Any]]:
    await asyncio.to_thread(catalog.campaign, state.engine, campaign_id)  # 404 when unknown
    return await asyncio.to_thread(run_reports, state.engine, campaign_id, limit)
