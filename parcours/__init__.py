"""Parcours: customer journeys and campaigns as durable Temporal workflows.

This package is the domain (models, languages, validation, settings) and is safe to import
inside workflows. `ParcoursPlugin` is loaded lazily because it brings in the activities and
their I/O libraries, which workflow code must never import.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parcours.plugin import ParcoursPlugin

__all__ = ["ParcoursPlugin"]


def __getattr__(name: str) -> Any:
    if name == "ParcoursPlugin":
        from parcours.plugin import ParcoursPlugin

        return ParcoursPlugin
    raise AttributeError(name)
