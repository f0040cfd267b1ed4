"""`parcours apply`: validate definition files against what is published, then publish them
all or nothing, and bring the membership of new or changed segments up to date."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import Engine

from activities import catalog, segments
from parcours.loader import LoadFailed, LoadResult, load_documents, load_paths


def apply_paths(
    engine: Engine, paths: Iterable[Path], status: Literal["live", "draft"] = "live"
) -> list[catalog.Published]:
    loaded = load_paths(paths, catalog.known_templates(engine), catalog.known_segments(engine))
    return _publish(engine, loaded, status)


def apply_documents(
    engine: Engine, documents: Iterable[tuple[str, Any]], status: Literal["live", "draft"] = "live"
) -> list[catalog.Published]:
    """The same as `apply_paths`, for definitions that did not come from files."""
    loaded = load_documents(
        documents, catalog.known_templates(engine), catalog.known_segments(engine)
    )
    return _publish(engine, loaded, status)


def _publish(
    engine: Engine, loaded: LoadResult, status: Literal["live", "draft"]
) -> list[catalog.Published]:
    if loaded.errors:
        raise LoadFailed(loaded.errors)
    results = catalog.publish(engine, loaded, status)
    for result in results:
        if result.kind == "segment" and result.outcome != "unchanged":
            # A segment's first members are computed, not "entered": publishing a segment must
            # not start a journey for everyone already in it.
            segments.rebuild(engine, result.id)
    return results
