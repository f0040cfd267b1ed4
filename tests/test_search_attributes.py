"""`parcours search-attributes` prepares a namespace that `parcours dev` did not make."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from parcours import search_attributes as sa
from starter.binaries import temporal_cli
from starter.cli import app


async def test_the_command_registers_every_attribute_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli()),
        dev_server_extra_args=["--log-level", "error"],
        ip="127.0.0.1",
    ) as env:
        monkeypatch.setenv("PARCOURS_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("TEMPORAL_ADDRESS", env.client.service_client.config.target_host)
        runner = CliRunner()
        for _ in range(2):  # the second run finds them all and changes nothing
            result = await asyncio.to_thread(runner.invoke, app, ["search-attributes"])
            assert result.exit_code == 0, result.output
            assert "registered on default: ParcoursJourney" in result.stdout
        listed = await env.client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        assert {key.name for key in sa.ALL} <= set(listed.custom_attributes)
