"""`ParcoursPlugin`: journeys on any Temporal worker, with one argument.

    client = await Client.connect("localhost:7233", plugins=[ParcoursPlugin()])
    worker = Worker(client, task_queue="parcours")   # picks the plugin up from the client

Pass it to the client only: the worker inherits it, and passing it to both registers every
activity twice.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.plugin import SimplePlugin

from activities.campaigns import CampaignActivities
from activities.delivery import DeliveryActivities
from activities.finishes import FinishActivities
from activities.journey_steps import JourneyActivities
from activities.recheck import SegmentActivities
from activities.waiting import WaitingEventActivities
from activities.webhooks import WebhookActivities
from parcours.compiled import compile_once
from parcours.settings import Settings
from workflows.campaign import CampaignScheduleWorkflow, CampaignWorkflow
from workflows.journey import JourneyWorkflow
from workflows.route_waiting import RouteWaitingEventsWorkflow
from workflows.segment_recheck import SegmentRecheckWorkflow

WORKFLOWS: list[type] = [
    JourneyWorkflow,
    SegmentRecheckWorkflow,
    CampaignWorkflow,
    CampaignScheduleWorkflow,
    RouteWaitingEventsWorkflow,
]


def data_converter(settings: Settings) -> DataConverter:
    """Pydantic models as JSON; encrypted when PARCOURS_ENCRYPTION_KEY is set."""
    if not settings.encryption_keys:
        return pydantic_data_converter
    # Imported only here: `cryptography` stays out of processes that never encrypt.
    from parcours.codec import encrypted_data_converter

    return encrypted_data_converter(settings.encryption_keys)


class ParcoursPlugin(SimplePlugin):
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.load()
        # The sandbox imports each workflow's module for every run: compile it only once.
        compile_once(w.__module__ for w in WORKFLOWS)
        # Not `self.activities`: SimplePlugin keeps its activity list under that name.
        delivery = DeliveryActivities(self.settings)
        segments = SegmentActivities(self.settings)
        steps = JourneyActivities(self.settings)
        webhooks = WebhookActivities(self.settings)
        campaigns = CampaignActivities(self.settings)
        finishes = FinishActivities(self.settings)
        waiting = WaitingEventActivities(self.settings)
        super().__init__(
            "parcours",
            data_converter=data_converter(self.settings),
            workflows=WORKFLOWS,
            activities=[
                delivery.send_message,
                segments.recheck_segments,
                steps.evaluate_rules,
                steps.update_profile,
                steps.resolve_wait,
                webhooks.call_webhook,
                finishes.record_finish,
                campaigns.start_campaign_run,
                campaigns.send_campaign_page,
                campaigns.finish_campaign_run,
                campaigns.running_campaign_run,
                waiting.route_waiting_events,
            ],
            run_context=lambda: running(campaigns),
        )


@asynccontextmanager
async def running(campaigns: CampaignActivities) -> AsyncIterator[None]:
    """While a worker runs: its heap frozen, and its page processes stopped when it stops."""
    async with frozen_heap():
        try:
            yield
        finally:
            await asyncio.to_thread(campaigns.close)


@asynccontextmanager
async def frozen_heap() -> AsyncIterator[None]:
    """Leave what the process holds when its worker starts (modules, pydantic schemas, the
    Temporal SDK) out of every later garbage collection while it runs.

    Work that keeps thousands of objects alive at once (a campaign page, in a worker that sends
    pages from its own threads) makes Python's collector walk the whole heap each time they add
    up to a quarter of it: a sixth to a third of a page's CPU went to walking objects that live
    as long as the process. Page processes freeze their own heap when they start. Frozen
    objects are never collected: they are handed back to the collector when the worker stops.
    No full collection first: it would add tens of milliseconds to every worker start (a test
    suite starts many), for garbage that is only kept until the worker stops.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
