"""Checking a caller's key: the HTTP API and the codec server share one comparison."""

from __future__ import annotations

import hmac
from collections.abc import Sequence


def known_key(given: str, keys: Sequence[str]) -> bool:
    # Compared in constant time, against every key, so timing tells nothing.
    matches = [hmac.compare_digest(given.encode(), key.encode()) for key in keys]
    return bool(given) and any(matches)


def bearer_key(header: str | None) -> str:
    """The key of an `Authorization: Bearer KEY` header, or "" when there is none."""
    scheme, _, given = (header or "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""
