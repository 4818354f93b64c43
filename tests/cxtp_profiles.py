"""Hypothesis profiles for the CXTP property tests: "dev" (default, quick) and "ci" (thorough).

Select with HYPOTHESIS_PROFILE=ci.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
