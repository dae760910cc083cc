"""The ``ckpt`` command line: list, find, check, prune and pin checkpoints.

Each command prints for people; ``--json`` (where offered) prints for scripts. Errors
are one ``ckpt: error: ...`` line on stderr (``--debug`` adds tracebacks and the
library's log), and the exit status is 0 on success, 1 on a failure, a problem found or
nothing found, 2 on a usage error.

It is built on the library's public API (`ckpt`, `ckpt.storage`, `policies`) only.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Sequence

from ckpt import CheckpointWarning
from ckpt.cli._commands import _describe
from ckpt.cli._output import _error, _library_log
from ckpt.cli._parser import _parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ckpt`` command line.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status: 0 success, 1 failure, problems found or nothing found. A usage
        error exits with status 2 through argparse's `SystemExit`.
    """
    args = _parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    # The demo tells its own story; elsewhere the library's warnings (recovery, files
    # it ignores) are part of the answer.
    with (
        _library_log(debug=debug, shown=debug or args.command != "demo"),
        warnings.catch_warnings(),
    ):
        # Commands say themselves which checkpoints lack a metric (`best` fails, `ls`
        # counts them), and every other warning of ckpt's is on the logger shown above:
        # the warning itself would only repeat them.
        warnings.simplefilter("ignore", CheckpointWarning)
        try:
            return int(args.handler(args))
        except KeyboardInterrupt:
            _error("interrupted")
            return 130
        except BrokenPipeError:
            # The reader went away (`ckpt ls DIR | head`): stop quietly, as other tools do,
            # and keep Python from complaining when it flushes stdout at exit.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except Exception as exc:
            if debug:
                raise
            _error(_describe(exc))
            return 1
