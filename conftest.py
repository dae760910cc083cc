"""Every test run uses a random hypothesis seed that it prints, so a failure replays.

Hypothesis draws a fresh seed per test by default and prints none for an ordinary
failure (its example blob replays it, but only where the same code runs). We draw one
seed per run instead, show it in the header, and repeat it under a failure, so CI's
`derandomize=False` runs can be replayed with ``pytest --hypothesis-seed=N``.
"""

from __future__ import annotations

import random

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Before hypothesis' own pytest_configure, which reads the option.
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(random.SystemRandom().getrandbits(32))


def pytest_report_header(config: pytest.Config) -> str:
    return f"hypothesis seed: {config.option.hypothesis_seed}"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    if exitstatus != 0:
        seed = config.option.hypothesis_seed
        terminalreporter.write_line(
            f"hypothesis seed was {seed}: rerun with `pytest --hypothesis-seed={seed}`"
        )
