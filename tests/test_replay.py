"""Committed histories replay against today's workflow code: a change that would break
running journeys fails here, not in production. Record new ones with `make histories`
(docs/changing-workflows.md)."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

import workflows
from parcours.plugin import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def workflow_type(path: Path) -> str:
    first = json.loads(path.read_text())["events"][0]
    return str(first["workflowExecutionStartedEventAttributes"]["workflowType"]["name"])


def type_name(cls: type) -> str:
    # The name Temporal knows the class by (`@workflow.defn(name=...)`).
    return workflow._Definition.must_from_class(cls).name


def test_every_workflow_in_workflows_is_registered_by_the_plugin() -> None:
    defined = {
        cls
        for module in pkgutil.iter_modules(workflows.__path__, "workflows.")
        for _, cls in inspect.getmembers(importlib.import_module(module.name), inspect.isclass)
        if workflow._Definition.from_class(cls) is not None and cls.__module__ == module.name
    }
    assert defined == set(WORKFLOWS)


def test_every_registered_workflow_type_has_a_history_to_replay() -> None:
    # A new workflow type ships with a recorded history: add a scenario to
    # tests/record_histories.py and run `make histories`.
    recorded = {workflow_type(path) for path in HISTORIES}
    missing = sorted({type_name(cls) for cls in WORKFLOWS} - recorded)
    assert missing == [], f"no history in tests/histories/ replays {missing}"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays_on_current_code(path: Path) -> None:
    replayer = Replayer(
        workflows=WORKFLOWS,
        data_converter=pydantic_data_converter,
        # Workflows that run outside the sandbox for speed (JourneyWorkflow) replay inside it
        # here: a non-deterministic call (the wall clock, random, I/O) fails this test.
        unsandboxed_workflow_runner=SandboxedWorkflowRunner(),
    )
    await replayer.replay_workflow(WorkflowHistory.from_json(path.stem, path.read_text()))
