"""Activities are methods of objects bound to the worker's settings, so one worker process
serves one store and one set of credentials without globals."""

from __future__ import annotations

from functools import cached_property

from sqlalchemy.engine import Engine

from activities.db import engine_for
from parcours.settings import Settings


class BoundActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def engine(self) -> Engine:
        return engine_for(self.settings.database_url)
