"""Checks on JSON values a caller sends (attributes, properties, rule operands)."""

from __future__ import annotations

from typing import Any


def nul_at(value: Any, path: str) -> str | None:
    """Where a JSON value holds a NUL character (in a key or a string), or None. PostgreSQL's
    jsonb, which stores attributes and properties, cannot keep one: such input is refused at
    the door, on every store alike, rather than by the database halfway through a write."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return path
            found = nul_at(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = nul_at(item, f"{path}[{i}]")
            if found:
                return found
    return None
