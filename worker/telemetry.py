"""What the worker process shows operators: its Prometheus metrics and the Temporal SDK's.

Two listeners, because the SDK's exporter runs inside its Rust core and cannot share a port
with Python's: Parcours' own metrics (`activities.metrics`) on `worker_metrics_address`, the
SDK's (`temporal_*`: task latencies, slots, polls, sticky cache) on `temporal_metrics_address`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import start_http_server
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from parcours.settings import Settings

log = logging.getLogger("parcours")


def sdk_runtime(settings: Settings) -> Runtime:
    """A Temporal runtime serving the SDK's metrics when an address is set, whose core logs go
    through Python logging (so they come out in the process's log format too)."""
    address = settings.temporal_metrics_address
    try:
        runtime = Runtime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(
                    filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                    forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
                ),
                metrics=PrometheusConfig(bind_address=address) if address else None,
            )
        )
    except ValueError as exc:  # the SDK's way of saying the port is taken
        raise ValueError(
            f"cannot serve the Temporal SDK's metrics on {address}: {exc} "
            "(set PARCOURS_TEMPORAL_METRICS_ADDRESS to another host:port, or off)"
        ) from None
    if address:
        log.info("Temporal SDK metrics on http://%s/metrics", address)
    return runtime


@contextmanager
def metrics_server(settings: Settings) -> Iterator[None]:
    """Serve Parcours' metrics on the worker's metrics address while the block runs."""
    address = settings.worker_metrics_address
    if address is None:
        yield
        return
    host, _, port = address.rpartition(":")
    try:
        server, thread = start_http_server(int(port), host.strip("[]"))
    except OSError as exc:
        raise ValueError(
            f"cannot serve the worker's metrics on {address}: {exc.strerror or exc} "
            "(set PARCOURS_WORKER_METRICS_ADDRESS to another host:port, or off)"
        ) from None
    log.info("worker metrics on http://%s/metrics", address)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
