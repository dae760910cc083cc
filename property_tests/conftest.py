"""Hypothesis profiles: ``ci`` (the default, bounded for 2 cores) and ``thorough``.

Pick one with ``HYPOTHESIS_PROFILE=thorough python -m pytest property_tests``.

``max_examples`` is the number of histories for the pure properties and of runs for the
state machine in ``test_manager_machine.py``; ``stateful_step_count`` is the length of
each run. Under ``ci`` the whole directory takes well under 5 minutes on 2 cores.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    stateful_step_count=150,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
