"""The ``ckpt`` command line: list, find, check, prune and pin checkpoints.

Each command prints for people; ``--json`` (where offered) prints for scripts. Errors
are one ``ckpt: error: ...`` line on stderr (``--debug`` adds tracebacks and the
library's log), and the exit status is 0 on success, 1 on a failure, a problem found or
nothing found, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ckpt import __version__, _layout, _protocol
from ckpt._cli_output import (
    _error,
    _iso,
    _library_log,
    _local,
    _plural,
    _print_json,
    _Progress,
    _size,
    _table,
    _value,
)
from ckpt._config import (
    RETENTION_KINDS,
    CheckpointConfig,
    config_section,
    load_config,
    read_config_file,
)
from ckpt._errors import (
    CheckpointDirLockedError,
    CheckpointError,
    ConfigFileError,
    MissingMetricWarning,
)
from ckpt._manager import CheckpointManager
from ckpt._records import CheckpointRecord, describe_steps
from ckpt._resolve import policies_from_config
from ckpt._storage import LocalStorage
from ckpt._verify import SEVERITIES, Problem, VerifyReport, verify
from policies import Decision, decide, metric_value

_EXIT_STATUS = """\
exit status: 0 success, 1 failure (an error, a problem found, nothing found),
2 usage error. Errors are one line on stderr; --debug shows the traceback."""

_CHECK_EPILOG = """\
exit status: 0 when no problem is found; 1 when any problem is found, an error
(a damaged checkpoint, an interrupted overwrite) or a warning (a crash leftover that
the next writer cleans up, a checkpoint the config's retention would prune, one
without the ranking metric); 2 on a usage error. Accept known warnings with
--ignore CODE, for example --ignore missing_metric."""


class CliError(Exception):
    """A failure reported as one ``ckpt: error:`` line, with exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ckpt`` command line.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status: 0 success, 1 failure, problems found or nothing found. A usage
        error exits with status 2 through argparse's `SystemExit`.
    """
    args = _parser().parse_args(argv)
    debug: bool = args.debug
    # The demo tells its own story; elsewhere the library's warnings (recovery, files
    # it ignores) are part of the answer.
    with (
        _library_log(debug=debug, shown=debug or args.command != "demo"),
        warnings.catch_warnings(),
    ):
        # Commands say themselves which checkpoints lack a metric (`best` fails, `ls`
        # counts them); the library's warning about it would only repeat that.
        warnings.simplefilter("ignore", MissingMetricWarning)
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


# --- commands -------------------------------------------------------------------------


def _cmd_ls(args: argparse.Namespace) -> int:
    directory = _existing_dir(args.directory)
    listing = _list(directory, args.config)
    if args.json:
        _print_json(listing.to_dict())
    else:
        for line in listing.lines():
            print(line)
    return 0


def _cmd_best(args: argparse.Namespace) -> int:
    directory = _existing_dir(args.directory)
    parser: argparse.ArgumentParser = args.parser
    recorded = _recorded_ranking(directory)
    overrides: dict[str, Any] = {}
    if args.metric is not None:
        overrides["metric_name"] = args.metric
    if args.higher_is_better is not None:
        overrides["higher_is_better"] = args.higher_is_better
    if args.config is None:
        if args.metric is None and recorded is None:
            parser.error(
                f"give --metric NAME and --max or --min (or a --config that sets "
                f"metric_name): {directory} records no ranking of its own"
            )
        if args.metric is None:
            overrides = {**recorded, **overrides}  # type: ignore[dict-item]
        elif args.higher_is_better is None:
            if recorded is None or recorded.get("metric_name") != args.metric:
                parser.error(
                    f"say --max (higher is better) or --min (lower is better) for "
                    f"`{args.metric}`: {directory} does not record a direction for it"
                )
            overrides["higher_is_better"] = recorded["higher_is_better"]
    config = _config_for(directory, args.config, overrides)
    name = config.metric_name
    if name is None:
        parser.error("give --metric NAME, or a --config that sets metric_name")
    _warn_if_contradicting(directory, recorded, config)
    with CheckpointManager(config, read_only=True) as manager:
        best = manager.get_best_checkpoint_path()
        if best is None:
            raise CliError(f"no checkpoints in {directory}")
        # The library falls back to the latest when no checkpoint has the metric; a
        # shell asking for the best by a misspelt name must hear about it instead.
        if metric_value(manager.load_training_info(best) or {}, name) is None:
            found = ", ".join(_metric_counts(manager.list_checkpoints())) or "none"
            raise CliError(
                f"no checkpoint in {directory} has a usable `{name}` (missing, null or NaN "
                f"everywhere); metrics found: {found}"
            )
    print(best)
    return 0


def _cmd_latest(args: argparse.Namespace) -> int:
    directory = _existing_dir(args.directory)
    with CheckpointManager(_config_for(directory, None), read_only=True) as manager:
        latest = manager.get_latest_checkpoint_path()
    if latest is None:
        raise CliError(f"no checkpoints in {directory}")
    print(latest)
    return 0


def _recorded_ranking(directory: Path) -> dict[str, Any] | None:
    """The metric and direction the run's writer ranks by; ``None`` if not recorded."""
    try:
        recorded = _protocol.read_ranking(LocalStorage(), directory)
    except (OSError, ValueError) as exc:
        logging.getLogger("ckpt").warning("ignoring the run's recorded ranking: %s", exc)
        return None
    if recorded is None or "custom" in recorded or recorded["metric_name"] is None:
        return None  # ranked by recency, or by an object only the run's code has
    return recorded


def _warn_if_contradicting(
    directory: Path, recorded: Mapping[str, Any] | None, config: CheckpointConfig
) -> None:
    if recorded is None or recorded["metric_name"] != config.metric_name:
        return
    if recorded["higher_is_better"] != config.higher_is_better:
        run = "higher" if recorded["higher_is_better"] else "lower"
        asked = "higher" if config.higher_is_better else "lower"
        logging.getLogger("ckpt").warning(
            f"{directory} ranks `{config.metric_name}` {run} is better, and this asks for "
            f"{asked} is better: the path printed is the run's worst by its own ranking"
        )


def _cmd_check(args: argparse.Namespace) -> int:
    directory = Path(os.path.abspath(args.directory))
    config = _config_for(directory, args.config) if args.config else None
    # `verify` has no progress hook: a status line says what is going on meanwhile.
    with _Progress(f"checking {directory}"):
        report = verify(directory, config)
    ignore = set(args.ignore)
    ignored = [p for p in report.problems if p.code in ignore]
    report = replace(report, problems=tuple(p for p in report.problems if p.code not in ignore))
    if args.json:
        _print_json({**report.to_dict(), "ignored": [p.to_dict() for p in ignored]})
    else:
        for line in _report_lines(report, len(ignored)):
            print(line)
    return 1 if report.problems else 0


def _cmd_prune(args: argparse.Namespace) -> int:
    directory = _existing_dir(args.directory)
    # `enabled: false` tells a training loop not to save; it does not forbid a prune the
    # user asks for by name.
    config = _config_for(directory, args.config, {"enabled": True})
    keep_latest = not args.prune_latest
    failed: list[int] = []
    if args.dry_run:
        # A reader: no lock, no recovery, nothing changed, so it also works beside a live run.
        with CheckpointManager(config, read_only=True) as manager:
            records = manager.list_checkpoints()
            plan = manager.plan_retention(exclude_latest=keep_latest)
            retention = repr(manager.retention)
        sizes = _sizes(_doomed(records, plan))
    else:
        with _writer(config, f"prune {directory}") as manager:
            records = manager.list_checkpoints()
            plan = manager.plan_retention(exclude_latest=keep_latest)
            retention = repr(manager.retention)
            doomed = _doomed(records, plan)
            sizes = _sizes(doomed)  # while they are still there
            with _Progress("pruning", len(doomed)) as bar, _tick_on_info(bar):
                manager.remove_old_checkpoints(exclude_latest=keep_latest)
            left = {r.step for r in manager.list_checkpoints()}
            failed = [r.step for r in doomed if r.step in left]
    paths = {r.step: r.path for r in records}
    if args.json:
        _print_json(
            {
                "directory": str(directory),
                "dry_run": args.dry_run,
                "retention": retention,
                "keep_latest": keep_latest,
                "pruned": [
                    {
                        "step": d.step,
                        "path": str(paths[d.step]),
                        "reason": d.reason,
                        "size_bytes": sizes.get(d.step),
                    }
                    for d in plan
                    if not d.keep and d.step not in failed
                ],
                "kept": [{"step": d.step, "reason": d.reason} for d in plan if d.keep],
                "failed": [{"step": s, "path": str(paths[s])} for s in failed],
            }
        )
    else:
        for line in _prune_lines(directory, plan, sizes, failed, dry_run=args.dry_run):
            print(line)
    if failed:
        raise CliError(f"could not prune {describe_steps(failed)} (see the errors above)")
    return 0


def _cmd_pin(args: argparse.Namespace) -> int:
    directory = _existing_dir(args.directory)
    step: int = args.step
    verb = "pin" if args.pinned else "unpin"
    with _writer(_config_for(directory, None), f"{verb} step {step}") as manager:
        before = {r.step: r.pinned for r in manager.list_checkpoints()}
        if args.pinned:
            manager.pin(step)
        else:
            manager.unpin(step)
    path = directory / f"step_{step}"
    if before.get(step) == args.pinned:
        print(f"step {step} was already {verb}ned: {path}")
    else:
        print(f"{verb}ned step {step}: {path}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    config = _load_config(args.file, {})
    ranking, retention = policies_from_config(config)
    print(f"{args.file}: valid")
    print(f"  ranking:   {ranking!r}")
    print(f"  retention: {retention!r}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    schema = CheckpointConfig.model_json_schema()
    _print_json({"$schema": "https://json-schema.org/draft/2020-12/schema", **schema})
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ckpt import _demo  # noqa: PLC0415 - the other commands do not need it

    if args.directory is None:
        workdir = Path(tempfile.mkdtemp(prefix="ckpt-demo-"))
    else:
        workdir = Path(os.path.abspath(args.directory))
    try:
        _demo.run_demo(workdir)
    except _demo.DemoError as exc:
        raise CliError(str(exc)) from exc
    return 0


# --- the parser -----------------------------------------------------------------------


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
    # default from overwriting a --debug given before it.
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
    parser.set_defaults(debug=False)
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
        choices=sorted(SEVERITIES),
        help="do not count problems with this code (repeatable): %(choices)s",
    )
    _with_json(sub)


def _add_changes(commands: _Commands) -> None:
    sub = _with_dir(
        commands.add("prune", "delete what the config's retention does not keep", _cmd_prune)
    )
    _with_config(sub, required=True)
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


# --- configs and directories ----------------------------------------------------------


def _existing_dir(path: str) -> Path:
    directory = Path(os.path.abspath(path))
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise CliError(f"{directory} {what}")
    return directory


def _writer(config: CheckpointConfig, doing: str) -> CheckpointManager:
    """Open the config's directory as its writer, which runs recovery first."""
    directory = Path(config.checkpoint_dir)
    # A writer creates .ckpt/ for its lock: never in a directory mistyped on the command line.
    names = [entry.name for entry in os.scandir(directory)]
    ours = _layout.META_DIR in names
    if not ours and all(_layout.parse(_layout.STEP, name) is None for name in names):
        raise CliError(f"cannot {doing}: {directory} holds no checkpoints")
    try:
        return CheckpointManager(config)
    except CheckpointDirLockedError as exc:
        raise CliError(f"cannot {doing}: {exc}") from exc


def _read_config_file(path: str) -> tuple[Mapping[str, Any], tuple[str, ...]]:
    """The checkpointing keys of a YAML file, and where they sit in it (for messages)."""
    try:
        data, where = config_section(read_config_file(path))
    except OSError as exc:
        raise CliError(f"cannot read the config {path}: {exc.strerror or exc}") from exc
    except ConfigFileError as exc:
        raise CliError(" ".join(str(exc).split())) from exc
    if not isinstance(data, Mapping):
        raise CliError(f"{path} holds {type(data).__name__}, not a mapping of config keys")
    return data, where


def _load_config(path: str, overrides: Mapping[str, Any]) -> CheckpointConfig:
    data, where = _read_config_file(path)
    try:
        return load_config({**data, **overrides})
    except ValidationError as exc:
        raise CliError(_invalid(path, exc, where)) from exc


def _config_for(
    directory: Path, path: str | None, overrides: Mapping[str, Any] | None = None
) -> CheckpointConfig:
    """The config of ``path`` (keep-all without one) for ``directory``, with ``overrides``."""
    keys = {**(overrides or {}), "checkpoint_dir": str(directory)}
    if path is None:
        return load_config(keys)
    return _load_config(path, keys)


def _invalid(source: str, exc: ValidationError, where: tuple[str, ...]) -> str:
    lines = [f"{source} is not a valid checkpointing config:"]
    for error in exc.errors(include_url=False):
        loc = ""
        for part in (*where, *error["loc"]):
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part not in RETENTION_KINDS:  # pydantic's tag of a retention block
                loc += f".{part}" if loc else str(part)
        lines.append(f"  {loc}: {error['msg']}" if loc else f"  {error['msg']}")
    return "\n".join(lines)


# --- ls -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Listing:
    directory: Path
    config_file: str | None
    metric_name: str | None
    retention: str
    records: list[CheckpointRecord]
    decisions: dict[int, Decision]
    sizes: dict[int, int | None]
    best: CheckpointRecord | None

    def metrics(self) -> dict[str, int]:
        return _metric_counts(self.records, first=self.metric_name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "config": self.config_file,
            "metric_name": self.metric_name,
            "retention": self.retention,
            "checkpoints": [
                {
                    "step": r.step,
                    "path": str(r.path),
                    "size_bytes": self.sizes.get(r.step),
                    "committed_at": _iso(r.committed_at),
                    "pinned": r.pinned,
                    "keep": self.decisions[r.step].keep,
                    "reason": self.decisions[r.step].reason,
                    "info": dict(r.info),
                }
                for r in self.records
            ],
            "best": str(self.best.path) if self.best else None,
            "latest": str(self.records[-1].path) if self.records else None,
            "metrics": self.metrics(),
            "total_size_bytes": sum(s or 0 for s in self.sizes.values()),
        }

    def lines(self) -> list[str]:
        if not self.records:
            return [f"{self.directory}: no checkpoints"]
        total = _size(sum(s or 0 for s in self.sizes.values()))
        configured = self.config_file is not None
        policy = f"retention {self.retention}" if configured else "no --config"
        count = _plural(len(self.records), "checkpoint")
        out = [f"{self.directory}: {count}, {total} on disk; {policy}"]
        shown = list(self.metrics())[:3]
        header = ["step", *shown, "size", "committed", "pinned"]
        if configured:
            header += ["retention", "why"]
        rows = []
        for r in self.records:
            row = [str(r.step), *(_value(r.info.get(m)) for m in shown)]
            row += [_size(self.sizes.get(r.step)), _local(r.committed_at)]
            row.append("pinned" if r.pinned else "")
            if configured:
                decision = self.decisions[r.step]
                row += ["keep" if decision.keep else "prune", decision.reason]
            rows.append(row)
        out += _table(header, rows, numeric=len(shown) + 2)
        if self.best is not None and self.metric_name is not None:
            value = _value(self.best.info.get(self.metric_name))
            out.append(f"best:    {self.best.path} ({self.metric_name} {value})")
        out.append(f"latest:  {self.records[-1].path}")
        counts = [f"{name} ({n} of {len(self.records)})" for name, n in self.metrics().items()]
        out.append(f"metrics: {', '.join(counts) or 'none'}")
        if not configured:
            out.append("(pass --config CFG to see what its retention keeps and why)")
        return out


def list_lines(directory: Path, config_file: str | None) -> list[str]:
    """The lines ``ckpt ls DIR [--config CFG]`` prints; the demo shows them too."""
    return _list(directory, config_file).lines()


def _list(directory: Path, config_file: str | None) -> _Listing:
    # Without a config, the listing ranks the way the run does, as far as it recorded it.
    recorded = _recorded_ranking(directory) if config_file is None else None
    config = _config_for(directory, config_file, recorded)
    with CheckpointManager(config, read_only=True) as manager:
        records = manager.list_checkpoints()
        # What plan_retention() and get_best_checkpoint_path() give, over this one
        # listing: a live run may change the directory between two calls.
        decisions = {d.step: d for d in decide(manager.retention, records)}
        ranked = manager.ranking.rank(records) if config.metric_name else []
        retention = repr(manager.retention)
    best = next(r for r in records if r.step == ranked[0].step) if ranked else None
    return _Listing(
        directory=directory,
        config_file=config_file,
        metric_name=config.metric_name,
        retention=retention,
        records=records,
        decisions=decisions,
        sizes=_sizes(records),
        best=best,
    )


def _metric_counts(records: Sequence[CheckpointRecord], first: str | None = None) -> dict[str, int]:
    """How many checkpoints have a usable value of each numeric metric, ``first`` first."""
    counts: dict[str, int] = {first: 0} if first else {}
    for record in records:
        for key in record.info:
            if key != "step" and metric_value(record.info, key) is not None:
                counts[key] = counts.get(key, 0) + 1
    return counts


def _sizes(records: Sequence[CheckpointRecord]) -> dict[int, int | None]:
    with _Progress("measuring sizes", len(records)) as bar:
        sizes = {}
        for record in records:
            sizes[record.step] = _disk_usage(record.path)
            bar.advance()
    return sizes


def _disk_usage(path: Path) -> int | None:
    """Bytes allocated under ``path``, as ``du`` counts them; ``None`` if it is gone."""
    try:
        total = os.lstat(path).st_blocks * 512
    except FileNotFoundError:
        return None
    pending = [str(path)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except FileNotFoundError:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # pruned by a live run while we walked
    return total


# --- prune ----------------------------------------------------------------------------


def _doomed(
    records: Sequence[CheckpointRecord], plan: Sequence[Decision]
) -> list[CheckpointRecord]:
    doomed = {d.step for d in plan if not d.keep}
    return [r for r in records if r.step in doomed]


def _prune_lines(
    directory: Path,
    plan: Sequence[Decision],
    sizes: Mapping[int, int | None],
    failed: Sequence[int],
    *,
    dry_run: bool,
) -> list[str]:
    doomed = [d.step for d in plan if not d.keep and d.step not in failed]
    freed = _size(sum(sizes.get(step) or 0 for step in doomed))
    verb = "would prune" if dry_run else "pruned"  # the action column: "prune" or "pruned"
    head = f"{verb} {len(doomed)} of {_plural(len(plan), 'checkpoint')} in {directory} ({freed})"
    out = [head + ("; dry run, nothing changed" if dry_run else "")]
    rows = []
    for d in plan:
        action = "keep" if d.keep else "FAILED" if d.step in failed else verb.rsplit(maxsplit=1)[-1]
        size = _size(sizes.get(d.step)) if not d.keep else ""
        rows.append([str(d.step), size, action, d.reason])
    return out + _table(["step", "size", "action", "why"], rows, numeric=2)


class _Tick(logging.Handler):
    def __init__(self, bar: _Progress) -> None:
        super().__init__(logging.INFO)
        self._bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.INFO:
            self._bar.advance()


@contextlib.contextmanager
def _tick_on_info(bar: _Progress) -> Iterator[None]:
    """Advance ``bar`` on each INFO message of the ``ckpt`` logger.

    The manager has no progress hook; while it prunes, its INFO messages are one per
    deleted checkpoint, which is all a progress bar needs.
    """
    logger = logging.getLogger("ckpt")
    handler = _Tick(bar)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


# --- check ----------------------------------------------------------------------------


def _report_lines(report: VerifyReport, ignored: int) -> list[str]:
    steps = f"steps {describe_steps(report.steps)}" if report.steps else "none"
    head = f"{report.directory}: {_plural(len(report.steps), 'checkpoint')} ({steps})"
    if report.writer_active:
        head += "; a writer is active (its temporaries are saves in progress)"
    out = [head]
    skipped = f" ({ignored} ignored)" if ignored else ""
    if not report.problems:
        return [*out, f"ok: no problems{skipped}"]
    counts = [_plural(len(report.errors), "error"), _plural(len(report.warnings), "warning")]
    out.append(f"{_plural(len(report.problems), 'problem')}: {', '.join(counts)}{skipped}")
    width = max(len(p.code) for p in report.problems)
    for problem in report.problems:
        out.append(f"{problem.severity:<7}  {problem.code:<{width}}  {_where(report, problem)}")
        out.append(f"         {problem.message}")
        out.append(f"         fix: {problem.hint}")
    return out


def _where(report: VerifyReport, problem: Problem) -> str:
    try:
        return str(problem.path.relative_to(report.directory)) or "."
    except ValueError:
        return str(problem.path)


# --- errors ---------------------------------------------------------------------------


def _describe(exc: Exception) -> str:
    if isinstance(exc, (CliError, CheckpointError)):
        return str(exc)
    if isinstance(exc, ValidationError):
        return _invalid("the config", exc, ())
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
