"""Run a Parcours worker until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from temporalio.worker import Worker

from activities.db import engine_for
from parcours.settings import Settings
from starter import logs
from starter.campaigns import sync_schedules
from starter.client import connect
from starter.schedules import ensure_recheck_schedule, ensure_waiting_schedule
from worker.telemetry import metrics_server, sdk_runtime


async def run_worker(settings: Settings, ready: asyncio.Event | None = None) -> None:
    # Both metrics listeners first: a port already taken stops the worker before it polls.
    with metrics_server(settings):
        client = await connect(settings, runtime=sdk_runtime(settings))
        await ensure_recheck_schedule(client, settings)
        await ensure_waiting_schedule(client, settings)
        # Campaigns applied while no worker ran get their schedules now.
        await sync_schedules(client, engine_for(settings.database_url), settings)
        # The plugin on the client brings the workflows, activities and converter to the worker.
        worker = Worker(client, task_queue=settings.task_queue)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with worker:
            logging.getLogger("parcours").info(
                "worker polling task queue %r on %s",
                settings.task_queue,
                settings.temporal_address,
            )
            if ready is not None:
                ready.set()
            await stop.wait()


def main() -> None:
    settings = Settings.load()
    logs.configure(settings.log_format or "json", settings.log_level)
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
