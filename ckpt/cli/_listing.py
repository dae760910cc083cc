"""``ckpt ls``: every checkpoint with its metrics, size, pin and retention decision."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ckpt import CheckpointManager, CheckpointRecord, PreemptionRecord
from ckpt.cli._configs import _config_for
from ckpt.cli._output import _iso, _local, _plural, _Progress, _size, _table, _value
from ckpt.storage import CheckpointPath, open_storage, redact_url, url_protocol, walk_files
from policies import Decision, metric_value


@dataclass(frozen=True)
class _Listing:
    directory: str
    config_file: str | None
    metric_name: str | None
    ranking: str | None
    #: The retention's repr, and where it came from; ``None`` where nothing is known.
    retention: str | None
    retention_source: str | None
    records: list[CheckpointRecord]
    decisions: dict[int, Decision] | None
    sizes: dict[int, int | None]
    best: CheckpointRecord | None
    latest: CheckpointRecord | None
    preemption: PreemptionRecord | None = None
    #: With ``replicate:``: where the replica is, each step's tier, or why it is unknown.
    replica: str | None = None
    replication: dict[int, str] | None = None
    replica_error: str | None = None
    #: Whether the replica was asked (``--config`` names it), or only the record read.
    replica_contacted: bool = True

    def metrics(self) -> dict[str, int]:
        return _metric_counts(self.records, first=self.metric_name)

    def to_dict(self) -> dict[str, Any]:
        decisions = self.decisions
        return {
            "schema": JSON_SCHEMA_VERSION,
            "directory": str(self.directory),
            "config": self.config_file,
            "metric_name": self.metric_name,
            "ranking": self.ranking,
            "retention": self.retention,
            "retention_source": self.retention_source,
            "checkpoints": [
                {
                    "step": r.step,
                    "path": str(r.path),
                    "size_bytes": self.sizes.get(r.step),
                    "committed_at": _iso(r.committed_at),
                    "pinned": r.pinned,
                    "damaged": r.damaged,
                    "keep": None if decisions is None else decisions[r.step].keep,
                    "reason": None if decisions is None else decisions[r.step].reason,
                    "info": dict(r.info),
                }
                for r in self.records
            ],
            "best": str(self.best.path) if self.best else None,
            "latest": str(self.latest.path) if self.latest else None,
            "metrics": self.metrics(),
            "total_size_bytes": sum(s or 0 for s in self.sizes.values()),
            "preemption": None if self.preemption is None else asdict(self.preemption),
            "replication": None
            if self.replica is None
            else {
                "to": self.replica,
                "contacted": self.replica_contacted,
                "steps": None
                if self.replication is None
                else {str(step): status for step, status in self.replication.items()},
                "error": self.replica_error,
            },
        }

    def lines(self) -> list[str]:
        if not self.records:
            return [f"{self.directory}: no checkpoints"]
        total = _size(sum(s or 0 for s in self.sizes.values()))
        if self.retention is None and self.ranking is not None and self.metric_name is None:
            policy = (
                f"retention unknown: the run ranks by {self.ranking}, an object of its own "
                f"(recorded); order and best below are by recency"
            )
        elif self.retention is None:
            policy = "retention unknown (no --config, and the run recorded none)"
        else:
            policy = f"retention {self.retention} ({self.retention_source})"
        count = _plural(len(self.records), "checkpoint")
        named = self.ranking is None or self.ranking in (self.retention or "")
        if self.decisions is not None and not named:
            policy += f"; ranking {self.ranking}"  # once here, not on every row
        where = "on disk" if url_protocol(self.directory) is None else "stored"
        out = [f"{self.directory}: {count}, {total} {where}; {policy}"]
        shown = list(self.metrics())[:3]
        header = ["step", *shown, "size", "committed", "pinned"]
        damaged = [r.step for r in self.records if r.damaged]
        extra = self._extra_columns(bool(damaged))
        header += [name for name, _ in extra]
        if self.decisions is not None:
            header += ["retention", "why"]
        rows = []
        for r in self.records:
            row = [str(r.step), *(_value(r.info.get(m)) for m in shown)]
            row += [_size(self.sizes.get(r.step)), _local(r.committed_at)]
            row.append("pinned" if r.pinned else "")
            row += [column(r) for _, column in extra]
            if self.decisions is not None:
                decision = self.decisions[r.step]
                row += ["keep" if decision.keep else "prune", self._why(decision.reason)]
            rows.append(row)
        out += _table(header, rows, numeric=len(shown) + 2)
        if self.best is not None and self.metric_name is not None:
            value = _value(self.best.info.get(self.metric_name))
            out.append(f"best:    {self.best.path} ({self.metric_name} {value})")
        out.append(f"latest:  {self.latest.path if self.latest else 'none'}")
        out += self._notes(damaged)
        counts = [f"{name} ({n} of {len(self.records)})" for name, n in self.metrics().items()]
        out.append(f"metrics: {', '.join(counts) or 'none'}")
        if self.decisions is None:
            out.append("(pass --config CFG to see what its retention keeps and why)")
        return out

    def _extra_columns(self, damaged: bool) -> list[tuple[str, Callable[[CheckpointRecord], str]]]:
        """The columns shown only where they say something: damage, the replica's state."""
        columns: list[tuple[str, Callable[[CheckpointRecord], str]]] = []
        if damaged:
            columns.append(("damaged", lambda r: "damaged" if r.damaged else ""))
        tiers = self.replication or {}
        if tiers:
            shown = {
                "replicated": "yes",
                "local": "pending",
                "uploading": "uploading",
                "pruned": "pruned there",
            }
            columns.append(("replica", lambda r: shown.get(tiers.get(r.step, ""), "")))
        return columns

    def _notes(self, damaged: list[int]) -> list[str]:
        """The lines on damage and on the last preemption, where there is any."""
        out = []
        if damaged:
            steps = ", ".join(map(str, damaged))
            out.append(
                f"damaged: step {steps}, found by `ckpt check --deep`: best and latest skip "
                f"{'them' if len(damaged) > 1 else 'it'}"
            )
        if self.preemption is not None:
            out.append(f"last:    {self.preemption.describe()}")
        if self.replica is not None:
            where = self.replica if self.replica_contacted else f"{self.replica} (as recorded)"
            out.append(f"replica: {where}: {self._replica_line()}")
        return out

    def _replica_line(self) -> str:
        if self.replication is None:
            return f"not reachable ({self.replica_error})"
        local = {r.step for r in self.records}
        there = [s for s, status in self.replication.items() if status == "replicated"]
        only = [s for s in there if s not in local]
        pending = [s for s, status in self.replication.items() if status in ("local", "uploading")]
        line = f"{_plural(len(there), 'checkpoint')} replicated"
        if not self.replica_contacted:
            line += " by this directory's record (not contacted: pass --config CFG to look)"
        if only:
            line += f" (only there: step {', '.join(map(str, only))})"
        if pending:
            line += f"; not yet: step {', '.join(map(str, pending))}"
        return line

    def _why(self, reason: str) -> str:
        """A decision's reason without the policies the header names: ``top-3 #1``."""
        if self.ranking is not None:
            reason = reason.replace(f" by {self.ranking}: #", " #")
        if self.retention is not None:
            reason = reason.replace(f"not kept by {self.retention}", "not kept")
        return reason


#: The version of ``ckpt ls --json``'s layout (see docs/cli.md): bumped when it changes.
JSON_SCHEMA_VERSION = 2


def list_lines(directory: str, config_file: str | None) -> list[str]:
    """The lines ``ckpt ls DIR [--config CFG]`` prints; the demo shows them too."""
    return _list(directory, config_file).lines()


def _list(directory: str, config_file: str | None) -> _Listing:
    # Without a config, the listing ranks and retains the way the run does, as far as it
    # recorded it; where it recorded no retention, no decision is shown.
    recorded = recorded_config(directory) if config_file is None else None
    custom = recorded_custom_ranking(directory) if config_file is None else None
    if config_file is None and recorded is None:
        run_ranking = _recorded(directory)[0]  # ranked as the run does, retention unknown
        config = _config_for(directory, None, run_ranking)
    else:
        config = _config_for(directory, config_file, recorded)
    known = config_file is not None or recorded is not None
    with CheckpointManager(config, read_only=True) as manager:
        overview = manager.overview()  # one look: a live run may change the directory
        retention, ranking = repr(manager.retention), repr(manager.ranking)
        preemption = manager.last_preemption()
        replicate = manager.config.replicate
        replica = None if replicate is None else redact_url(str(replicate.to))
        replication: dict[int, str] | None = None
        replica_error = None
        try:
            # Without --config, a local tier's own record says what was uploaded; the
            # place it names is shown and never contacted.
            replication = manager.replication_status() or None
        except (OSError, ValueError) as exc:
            replica_error = str(exc)
        if replicate is None and replication is not None:
            replica = manager.recorded_replica()
    records = list(overview.records)
    return _Listing(
        directory=directory,
        config_file=config_file,
        metric_name=config.metric_name,
        ranking=custom if custom is not None else ranking if known or config.metric_name else None,
        retention=retention if known else None,
        retention_source=(
            None if not known else "from --config" if config_file else "recorded by the run"
        ),
        records=records,
        decisions={d.step: d for d in overview.decisions} if known else None,
        sizes=_sizes(records),
        best=overview.best if config.metric_name else None,
        latest=overview.latest,
        preemption=preemption,
        replica=replica,
        replica_contacted=replicate is not None,
        replication=replication,
        replica_error=replica_error,
    )


def recorded_ranking(directory: str) -> dict[str, Any] | None:
    """The metric and direction the run's writer ranks by; ``None`` if not recorded."""
    recorded = _recorded(directory)[0]
    if recorded is None or recorded["metric_name"] is None:
        return None  # ranked by recency
    return recorded


def recorded_config(directory: str) -> dict[str, Any] | None:
    """The config fields that give the writer's ranking and retention; ``None``: unknown.

    A replicated run's local tier records where its replica is too: that is shown, never
    used. The command acts only on the directory it is given, and on a replica only
    when ``--config`` names it.
    """
    ranking, retention = _recorded(directory)
    if ranking is None or retention is None:
        return None  # an older writer's, or a policy object only the run's code has
    recorded = {**ranking, **{k: v for k, v in retention.items() if k != "replicate"}}
    try:
        _config_for(directory, None, recorded)
    except ValueError as exc:  # a record no writer of ours wrote: say so, trust nothing
        logging.getLogger("ckpt").warning("ignoring the run's recorded retention: %s", exc)
        return None
    return recorded


def _records(directory: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The run's ranking and retention records as written; ``None``s where unusable."""
    try:
        with CheckpointManager(_config_for(directory, None), read_only=True) as reader:
            return reader.recorded_ranking(), reader.recorded_retention()
    except (OSError, ValueError) as exc:
        logging.getLogger("ckpt").warning("ignoring the run's recorded ranking: %s", exc)
        return None, None


def _recorded(directory: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    ranking, retention = _records(directory)
    if ranking is None or "custom" in ranking:
        return None, None  # ranked by an object only the run's code has
    return ranking, None if retention is None else retention.get("config")


def recorded_custom_ranking(directory: str) -> str | None:
    """The repr of the run's own ranking object, as its writer recorded it; else ``None``."""
    ranking = _records(directory)[0]
    custom = None if ranking is None else ranking.get("custom")
    return custom if isinstance(custom, str) else None


# Bookkeeping a trainer logs beside its metrics (the HF Trainer's eval_runtime,
# eval_samples_per_second, total_flos, epoch...): listed after the metrics proper.
_TIMING = re.compile(r"(runtime|_per_second|flos|(^|_)epoch|_time|(^|_)(global_)?step)$")


def _metric_counts(records: Sequence[CheckpointRecord], first: str | None = None) -> dict[str, int]:
    """How many checkpoints have a usable value of each numeric metric.

    ``first`` (the ranking's metric) comes first, then the metrics in the order the
    checkpoints give them, then timings and counters (`_TIMING`), which make poor columns.
    """
    counts: dict[str, int] = {first: 0} if first else {}
    for record in records:
        for key in record.info:
            if key != "step" and metric_value(record.info, key) is not None:
                counts[key] = counts.get(key, 0) + 1
    order = sorted(counts, key=lambda k: (k != first, bool(_TIMING.search(k))))
    return {key: counts[key] for key in order}


def _sizes(records: Sequence[CheckpointRecord]) -> dict[int, int | None]:
    with _Progress("measuring sizes", len(records)) as bar:
        sizes = {}
        for record in records:
            sizes[record.step] = _disk_usage(record.path)
            bar.advance()
    return sizes


def _disk_usage(path: CheckpointPath) -> int | None:
    """Bytes in the files under ``path``; ``None`` if it is gone (pruned by a live run)."""
    storage, where = open_storage(path)
    if storage.entry(where) is None:
        return None
    return sum(entry.size for _, entry in walk_files(storage, where))
