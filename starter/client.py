"""Connecting to Temporal with the standard settings (`temporalio.envconfig`)."""

from __future__ import annotations

import os

from temporalio.client import Client
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime

from parcours.plugin import ParcoursPlugin
from parcours.settings import Settings


async def connect(
    settings: Settings, plugin: ParcoursPlugin | None = None, runtime: Runtime | None = None
) -> Client:
    """Connect with TEMPORAL_* variables and temporal.toml profiles, falling back to the
    address `parcours dev` recorded in the data dir. `runtime` is the SDK's (telemetry), when
    not its default one."""
    config = ClientConfig.load_client_connect_config()
    if not os.environ.get("TEMPORAL_ADDRESS"):
        config["target_host"] = settings.temporal_address
    if not os.environ.get("TEMPORAL_NAMESPACE"):
        config["namespace"] = settings.temporal_namespace
    return await Client.connect(
        **config, plugins=[plugin or ParcoursPlugin(settings)], runtime=runtime
    )
