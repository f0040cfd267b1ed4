"""Property-based requests generated from `/openapi.json` (schemathesis): whatever a client
sends, the API never answers 500 and every answer matches the schema it publishes."""

from __future__ import annotations

import uuid
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from schemathesis import checks
from temporalio.testing import WorkflowEnvironment

from parcours.settings import Settings
from starter.api import create_app, lazy_client
from tests.api import KEY
from tests.stack import NO_QUIET_HOURS

EXAMPLES_PER_OPERATION = 40  # a fixed budget: about a minute for the whole API


@pytest.fixture
def api_schema(tmp_path: Path, dev_server_env: WorkflowEnvironment) -> schemathesis.BaseSchema:
    # No worker listens on this task queue: what the API starts in Temporal just waits.
    settings = Settings.load(
        tmp_path / "data",
        env={"PARCOURS_DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}", **NO_QUIET_HOURS},
    ).model_copy(
        update={
            "task_queue": f"schema-{uuid.uuid4()}",
            "temporal_address": dev_server_env.client.service_client.config.target_host,
        }
    )
    app = create_app(settings, lazy_client(settings), keys=[KEY])
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_request_gets_a_500_or_an_answer_outside_the_schema(
    api_schema: schemathesis.BaseSchema,
) -> None:
    checked = []
    for found in api_schema.get_all_operations():
        operation = found.ok()

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            derandomize=True,
            database=None,
        )
        def requests_conform(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {KEY}"},
                # Rules beyond JSON Schema (durations, time zones, references to other
                # definitions) rightly refuse some schema-valid bodies, with a 422 naming
                # the field.
                excluded_checks=[checks.positive_data_acceptance],
            )

        requests_conform()
        checked.append(operation.label)
    assert len(checked) >= 20, checked
