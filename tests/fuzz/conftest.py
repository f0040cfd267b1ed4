"""A fixed Hypothesis budget for the fuzzers, so CI time is bounded.

`PARCOURS_FUZZ_EXAMPLES` raises it for a longer local run; the database is not part of it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("PARCOURS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FUZZ = settings.get_profile("fuzz")
