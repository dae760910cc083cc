"""A short simulated training run showing what ckpt does: ``python -m ckpt.demo [DIR]``.

The same as ``ckpt demo [DIR]``: an RL run saving every step under hybrid retention,
killed in the middle of a save, restarted with recovery, then summarized (and plotted
when matplotlib is installed). The engine is `ckpt.cli._demo`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ckpt.cli import main as _cli_main


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ckpt demo`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    return _cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
