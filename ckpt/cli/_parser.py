"""The ``ckpt`` argument parser: commands, their arguments and their help."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from ckpt import PROBLEM_CODES, __version__
from ckpt.cli._commands import (
    _cmd_best,
    _cmd_check,
    _cmd_demo,
    _cmd_latest,
    _cmd_ls,
    _cmd_pin,
    _cmd_prune,
    _cmd_schema,
    _cmd_validate,
)

_EXIT_STATUS = """\
exit status: 0 success, 1 failure (an error, a problem found, nothing found),
2 usage error. Errors are one line on stderr; --debug shows the traceback."""

_CHECK_EPILOG = """\
exit status: 0 when no problem is found; 1 when a problem is found, by default an
error (a damaged checkpoint, an interrupted overwrite) or a warning (a crash leftover
that the next writer cleans up, a checkpoint the config's retention would prune, one
without the ranking metric); with --fail-on error, errors only; 2 on a usage error.
Accept known warnings with --ignore CODE, for example --ignore missing_metric.
--deep reads every file and checks it against the digest recorded at its commit
(checksum_mismatch), and remembers the damaged checkpoints so that best and latest
skip them.

""" + "\n".join(
    textwrap.fill(
        f"{label}: " + ", ".join(sorted(c for c, s in PROBLEM_CODES.items() if s == severity)),
        width=84,
        subsequent_indent="  ",
    )
    for label, severity in (("errors", "error"), ("warnings", "warning"))
)


def _step(text: str) -> int:
    try:
        step = int(text)
    except ValueError:
        step = -1
    if step < 0:
        raise argparse.ArgumentTypeError(f"a step is a non-negative integer, got {text!r}")
    return step


class _Commands:
    """Adds subcommands that share ``--debug`` and the exit-status epilog."""

    def __init__(self, parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
        self._actions = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
        self._common = common

    def add(
        self, name: str, help_text: str, handler: Any, epilog: str = _EXIT_STATUS, **defaults: Any
    ) -> argparse.ArgumentParser:
        sub = self._actions.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            parents=[self._common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler, parser=sub, **defaults)
        return sub


def _with_dir(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub.add_argument("directory", metavar="DIR", help="the checkpoint directory")
    return sub


def _with_config(sub: argparse.ArgumentParser, *, required: bool = False) -> None:
    sub.add_argument(
        "--config",
        metavar="CFG",
        required=required,
        help="a YAML checkpointing config (the section itself, or a run config with a "
        "`checkpointing:` key); DIR replaces its checkpoint_dir",
    )


def _with_json(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", action="store_true", help="print JSON for scripts")


def _parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the command; SUPPRESS keeps a subcommand's
    # default from overwriting a --debug given before it. The action is shared by every
    # parser, so no set_defaults may give it a default (main reads it with getattr).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and the library's log",
    )
    parser = argparse.ArgumentParser(
        prog="ckpt",
        description="Inspect, check, prune and pin the checkpoints of a ckpt directory.",
        epilog=_EXIT_STATUS,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = _Commands(parser, common)
    _add_queries(commands)
    _add_changes(commands)
    config = commands.add("config", "validate a config file, or print its JSON Schema", None)
    actions = _Commands(config, common)
    validate = actions.add("validate", "validate a YAML checkpointing config", _cmd_validate)
    validate.add_argument("file", metavar="CFG", help="the YAML file")
    actions.add("schema", "print the config's JSON Schema, for editors", _cmd_schema)
    demo = commands.add(
        "demo", "a simulated RL run: retention, a crash mid-save, a recovering restart", _cmd_demo
    )
    demo.add_argument(
        "directory", metavar="DIR", nargs="?", help="where to write (default: a new temp dir)"
    )
    return parser


def _add_queries(commands: _Commands) -> None:
    sub = _with_dir(commands.add("ls", "list checkpoints: metrics, size, pins, retention", _cmd_ls))
    _with_config(sub)
    _with_json(sub)

    sub = _with_dir(commands.add("best", "print the path of the best checkpoint", _cmd_best))
    sub.add_argument("--metric", metavar="NAME", help="the training_info key to rank by")
    direction = sub.add_mutually_exclusive_group()
    for flag, higher, text in [
        ("--max", True, "higher is better"),
        ("--min", False, "lower is better"),
    ]:
        direction.add_argument(
            flag, dest="higher_is_better", action="store_const", const=higher, help=text
        )
    _with_config(sub)

    _with_dir(commands.add("latest", "print the path of the latest checkpoint", _cmd_latest))

    sub = commands.add(
        "check", "check a directory for damage and leftovers", _cmd_check, _CHECK_EPILOG
    )
    _with_dir(sub)
    _with_config(sub)
    sub.add_argument(
        "--ignore",
        metavar="CODE",
        action="append",
        default=[],
        choices=sorted(PROBLEM_CODES),
        help="do not count problems with this code (repeatable): %(choices)s",
    )
    sub.add_argument(
        "--deep",
        action="store_true",
        help="read every file of every checkpoint and check its digest (reads all bytes)",
    )
    sub.add_argument(
        "--fail-on",
        choices=("error", "warning"),
        default="warning",
        help="the least severe problem that makes the exit status 1 (default: warning, "
        "any problem; error: damage only, warnings printed but not failing)",
    )
    _with_json(sub)


def _add_changes(commands: _Commands) -> None:
    sub = _with_dir(
        commands.add(
            "prune",
            "delete what retention does not keep (the config's, or the one the run recorded)",
            _cmd_prune,
        )
    )
    _with_config(sub)
    sub.add_argument(
        "--dry-run", action="store_true", help="say what would go and why; change nothing"
    )
    sub.add_argument(
        "--prune-latest",
        action="store_true",
        help="let retention prune the latest checkpoint too (by default it is kept, so a "
        "restart can resume from it)",
    )
    _with_json(sub)
    for name, pinned, text in [
        ("pin", True, "protect a checkpoint from pruning"),
        ("unpin", False, "remove a checkpoint's pin"),
    ]:
        sub = _with_dir(commands.add(name, text, _cmd_pin, pinned=pinned))
        sub.add_argument("step", metavar="STEP", type=_step, help="the checkpoint's step")
