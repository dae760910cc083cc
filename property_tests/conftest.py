"""Hypothesis profiles: ``ci`` (the default, bounded for 2 cores) and ``thorough``.

Pick one with ``HYPOTHESIS_PROFILE=thorough python -m pytest property_tests``.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
