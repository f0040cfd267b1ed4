"""Logging for the long-running processes (`parcours worker`, `parcours api`, and the children
of `parcours dev`): one JSON object a line by default, or plain text lines.

A JSON line has `time`, `level`, `logger` and `message`, and `workflow_id`, `run_id` (and
`activity` for an activity) when the record comes from `workflow.logger` or `activity.logger`:
the Temporal SDK puts that context in the record's `temporal_workflow` / `temporal_activity`
extras. Other `extra` fields given to a log call are kept as fields of their own.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from temporalio import activity, workflow

LogFormat = Literal["json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from a call's `extra`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# Read into fields of their own, already in the message (the SDK core's forwarded fields), or
# a copy of the message with terminal colours (uvicorn's).
_IGNORED = frozenset({"temporal_workflow", "temporal_activity", "temporal_log", "color_message"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(temporal_context(record))
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _IGNORED and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def temporal_context(record: logging.LogRecord) -> dict[str, Any]:
    """The workflow (and activity) a record was logged from, when it was."""
    info: dict[str, Any] | None = getattr(record, "temporal_activity", None)
    if info:
        fields = {
            "workflow_id": info.get("workflow_id"),
            "run_id": info.get("workflow_run_id"),
            "workflow_type": info.get("workflow_type"),
            "activity": info.get("activity_type"),
            "activity_id": info.get("activity_id"),
            "attempt": info.get("attempt"),
        }
        return {k: v for k, v in fields.items() if v is not None}
    info = getattr(record, "temporal_workflow", None)
    if info:
        fields = {
            "workflow_id": info.get("workflow_id"),
            "run_id": info.get("run_id"),
            "workflow_type": info.get("workflow_type"),
            "attempt": info.get("attempt"),
        }
        return {k: v for k, v in fields.items() if v is not None}
    return {}


def configure(log_format: LogFormat, level: str = "INFO") -> None:
    """Send every log record to stderr in this format, replacing earlier handlers."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # In JSON the workflow and activity are fields already; the SDK would also append them to
    # every message as a dict's text. Plain text keeps them in the message, its only place.
    activity.logger.activity_info_on_message = log_format == "text"
    workflow.logger.workflow_info_on_message = log_format == "text"
