"""Errors a model-level check raises at the field it is about.

A check that needs several fields runs after the model is built, where a plain `ValueError`
would be reported at the model itself: the document root for a template, `nodes[3]` for a
node. Raising pydantic's own `ValidationError` there keeps the field in its location, so the
loader, the CLI and the API's 422 answers all name it (`subject`, `nodes[3].until`), with the
same "Value error, ..." message as any field validator.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails


def error_at(field: str | tuple[str | int, ...], message: str, value: Any) -> ValidationError:
    """An error about `value`, found at `field` (a name, or a path below the model)."""
    loc = (field,) if isinstance(field, str) else field
    detail = InitErrorDetails(
        type="value_error", loc=loc, input=value, ctx={"error": ValueError(message)}
    )
    return ValidationError.from_exception_data("field check", [detail])


def exactly_one(model: Any, given: list[str], message: str) -> None:
    """Refuse unless exactly one of the options was `given`: at the second one given, or, with
    none given, at the model itself (no one field is at fault)."""
    if len(given) != 1:
        raise error_at(tuple(given[1:2]), message, getattr(model, given[1]) if given else None)
