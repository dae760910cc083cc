"""What each ``ckpt`` command does, on the library's public API only."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ckpt import (
    CheckpointConfig,
    CheckpointError,
    CheckpointManager,
    CheckpointRecord,
    Problem,
    VerifyReport,
    explain_config_error,
    policies_from_config,
    verify,
)
from ckpt.cli._configs import CliError, _config_for, _existing_dir, _load_config, _writer, location
from ckpt.cli._listing import (
    _list,
    _metric_counts,
    _sizes,
    recorded_config,
    recorded_custom_ranking,
    recorded_ranking,
)
from ckpt.cli._output import _plural, _print_json, _Progress, _size, _table, step_ranges
from policies import Decision, metric_value


def _cmd_ls(args: argparse.Namespace) -> int:
    directory = _existing_dir(args.directory, args.config)
    listing = _list(directory, args.config)
    if args.json:
        _print_json(listing.to_dict())
    else:
        for line in listing.lines():
            print(line)
    return 0


def _cmd_best(args: argparse.Namespace) -> int:
    directory = _existing_dir(args.directory, args.config)
    parser: argparse.ArgumentParser = args.parser
    recorded = recorded_ranking(directory)
    overrides: dict[str, Any] = {}
    if args.metric is not None:
        overrides["metric_name"] = args.metric
    if args.higher_is_better is not None:
        overrides["higher_is_better"] = args.higher_is_better
    if args.metric is not None:
        _refuse_unrecorded_metric(directory, args.metric)
    if args.config is None:
        if args.metric is None and recorded is None:
            custom = recorded_custom_ranking(directory)
            why = (
                f"{directory} ranks by {custom}, an object of the run's own that only its code has"
                if custom is not None
                else f"{directory} records no ranking of its own"
            )
            parser.error(
                f"give --metric NAME and --max or --min (or a --config that sets "
                f"metric_name): {why}"
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
        records = manager.list_checkpoints()
        listed = {record.step for record in records}
        answer = next(r.step for r in records if str(r.path) == str(best))
    # A broken checkpoint the ranking could not read may have been the best.
    _refuse_if_damaged(directory, config, "best", answer, lambda step: step not in listed)
    print(best)
    return 0


def _refuse_unrecorded_metric(directory: str, name: str) -> None:
    """Fail first on a metric no checkpoint records (a typo), naming the closest ones."""
    with CheckpointManager(_config_for(directory, None), read_only=True) as reader:
        records = reader.list_checkpoints()
    if not records or any(metric_value(r.info, name) is not None for r in records):
        return  # "no checkpoints" is said once the ranking is known
    recorded = sorted(
        _metric_counts(records),
        key=lambda known: (-difflib.SequenceMatcher(None, name, known).ratio(), known),
    )
    closest = ", ".join(f"`{known}`" for known in recorded[:5])
    raise CliError(
        f"no checkpoint in {directory} records `{name}`"
        + (f"; the closest recorded metrics: {closest}" if closest else "; none records a metric")
    )


def _cmd_latest(args: argparse.Namespace) -> int:
    directory = _existing_dir(args.directory)
    config = _config_for(directory, None)
    with CheckpointManager(config, read_only=True) as manager:
        latest = manager.get_latest_checkpoint_path()
        records = manager.list_checkpoints()
    if latest is None:
        _refuse_if_damaged(directory, config, "latest", None, lambda step: True)
        raise CliError(f"no checkpoints in {directory}")
    answer = max(record.step for record in records)
    _refuse_if_damaged(directory, config, "latest", answer, lambda step: step > answer)
    print(latest)
    return 0


# The `ckpt check` codes that say a step's checkpoint is damaged or only recovery reaches it.
_DAMAGE = frozenset(
    {"broken_manifest", "unreadable_info", "not_a_directory", "interrupted_overwrite"}
)
_STEP_IN_NAME = re.compile(r"^(?:tmp_|old_)?step_(\d+)(?:$|\.)")


def _refuse_if_damaged(
    directory: str,
    config: CheckpointConfig,
    what: str,
    answer: int | None,
    skipped: Callable[[int], bool],
) -> None:
    """Exit non-zero if the answer is damaged; warn of a damaged one it was chosen over.

    A shell resuming from ``ckpt latest`` must never get a path that holds no
    checkpoint. One damaged step does not stop it from getting the intact answer, but
    it hears which step was passed over, and why.
    """
    damaged: dict[int, Problem] = {}
    for problem in verify(directory, config).errors:
        match = _STEP_IN_NAME.match(str(problem.path).rstrip("/").rsplit("/", 1)[-1])
        if match is not None and problem.code in _DAMAGE:
            damaged.setdefault(int(match.group(1)), problem)
    if answer in damaged:
        problem = damaged[answer]
        raise CliError(
            f"the {what} checkpoint, step {answer}, is damaged: {problem.message} "
            f"({problem.hint}; `ckpt check {directory}` lists every problem)"
        )
    passed = sorted(step for step in damaged if skipped(step))
    if passed:
        problem = damaged[passed[-1]]
        logging.getLogger("ckpt").warning(
            "step %d could be the %s checkpoint but is damaged: %s (%s); `ckpt check %s` "
            "lists every problem",
            passed[-1],
            what,
            problem.message,
            problem.hint,
            directory,
        )


def _warn_if_contradicting(
    directory: str, recorded: Mapping[str, Any] | None, config: CheckpointConfig
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


#: The version of ``ckpt check --json``'s layout (see docs/cli.md): bumped when it changes.
CHECK_JSON_SCHEMA = 1


def _cmd_check(args: argparse.Namespace) -> int:
    directory = location(args.directory)
    config = _config_for(directory, args.config) if args.config else None
    # `verify` has no progress hook: a status line says what is going on meanwhile.
    with _Progress(f"checking {directory}" + (" (every file's digest)" if args.deep else "")):
        report = verify(directory, config, deep=args.deep)
    ignore = set(args.ignore)
    ignored = [p for p in report.problems if p.code in ignore]
    report = replace(report, problems=tuple(p for p in report.problems if p.code not in ignore))
    failing = report.problems if args.fail_on == "warning" else report.errors
    if args.json:
        _print_json(
            {
                "schema": CHECK_JSON_SCHEMA,
                **report.to_dict(),
                "ignored": [p.to_dict() for p in ignored],
                "fail_on": args.fail_on,
            }
        )
    else:
        for line in _report_lines(report, len(ignored)):
            print(line)
    return 1 if failing else 0


def _cmd_prune(args: argparse.Namespace) -> int:
    directory = _existing_dir(args.directory, args.config)
    # `enabled: false` tells a training loop not to save; it does not forbid a prune the
    # user asks for by name.
    if args.config is not None:
        config = _config_for(directory, args.config, {"enabled": True})
    else:
        recorded = recorded_config(directory)
        if recorded is None:
            parser: argparse.ArgumentParser = args.parser
            parser.error(
                f"give --config CFG: {directory} records no retention of its own (written "
                f"by NeMo RL's manager or an older ckpt, or by a run with a policy object "
                f"of its own), and prune will not guess what to delete"
            )
        config = _config_for(directory, None, {**recorded, "enabled": True})
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
            with _Progress("pruning", len(doomed)) as bar:
                manager.remove_old_checkpoints(
                    exclude_latest=keep_latest, on_delete=lambda _: bar.advance()
                )
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
        raise CliError(f"could not prune {step_ranges(failed)} (see the errors above)")
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
        # The checkpoint's own path: step_N.<id> on a store, where step_N is no directory.
        paths = {r.step: str(r.path) for r in manager.list_checkpoints()}
    where = f": {paths[step]}" if step in paths else " (no checkpoint of it is committed)"
    if before.get(step) == args.pinned:
        print(f"step {step} was already {verb}ned{where}")
    else:
        print(f"{verb}ned step {step}{where}")
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
    from ckpt.cli import _demo  # noqa: PLC0415 - the other commands do not need it

    if args.directory is None:
        workdir = Path(tempfile.mkdtemp(prefix="ckpt-demo-"))
    else:
        workdir = Path(os.path.abspath(args.directory))
    try:
        _demo.run_demo(workdir)
    except _demo.DemoError as exc:
        raise CliError(str(exc)) from exc
    return 0


def _doomed(
    records: Sequence[CheckpointRecord], plan: Sequence[Decision]
) -> list[CheckpointRecord]:
    doomed = {d.step for d in plan if not d.keep}
    return [r for r in records if r.step in doomed]


def _prune_lines(
    directory: str,
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


def _report_lines(report: VerifyReport, ignored: int) -> list[str]:
    steps = f"steps {step_ranges(report.steps)}" if report.steps else "none"
    head = f"{report.directory}: {_plural(len(report.steps), 'checkpoint')} ({steps})"
    if report.writer_active:
        head += "; a writer is active (its temporaries are saves in progress)"
    out = [head]
    if report.deleting:
        out.append(
            f"deleting: {_plural(len(report.deleting), 'deleted checkpoint')} whose files the "
            f"writer is removing in the background (nothing reads them)"
        )
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
    root, path = str(report.directory).rstrip("/"), str(problem.path)
    return "." if path == root else path.removeprefix(root + "/")


def _describe(exc: Exception) -> str:
    if isinstance(exc, (CliError, CheckpointError)):
        return str(exc)
    if isinstance(exc, ValidationError):
        return explain_config_error(exc, "the config")
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
