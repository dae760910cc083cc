"""The retention applier: decides what a directory keeps, protects, deletes, ranks first.

It owns the incremental tracker (`ckpt._directory.incremental`): the manager tells it what was
committed and asks it what to delete, which checkpoint is latest and which is best,
and never touches the tracker itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from ckpt._directory.incremental import Tracker
from ckpt._directory.index import Index, gc_paused
from ckpt._directory.records import CheckpointRecord
from ckpt.commit import directory as commits
from ckpt.commit.base import Place
from policies import (
    AnyOf,
    ByMetric,
    Decision,
    Hybrid,
    Ranking,
    RetentionPolicy,
    decide,
)
from policies import ranked as rank

logger = logging.getLogger("ckpt")


class RetentionApplier:
    """Applies ``retention`` (ranked by ``ranking``) to an `Index` and its storage."""

    def __init__(self, retention: RetentionPolicy, ranking: Ranking) -> None:
        self.retention = retention
        self.ranking = ranking
        self._tracker = Tracker(retention, ranking)

    def committed(self, index: Index, step: int, *, new: bool, version_before: int) -> bool:
        """Note that ``step`` was just committed and indexed (``new``: not an overwrite).

        Returns whether the commit can be decided incrementally (`after_commit`).
        """
        tracker = self._tracker
        incremental = new and tracker.version == version_before
        frontier_current = incremental and tracker.frontier_version == version_before
        if incremental:
            tracker.added(index.records, step, index.version)
        tracker.sync(index.version)
        return frontier_current

    def forget_frontier(self) -> None:
        """Decide over every checkpoint next time (a commit happened out of order)."""
        self._tracker.frontier_version = -1

    def after_commit(
        self,
        index: Index,
        step: int,
        protected: Mapping[int, str],
        *,
        frontier_current: bool,
        place: Place,
    ) -> bool:
        """Apply retention after the commit of ``step``; ``True`` if a delete failed."""
        tracker = self._tracker
        if frontier_current and tracker.parts is not None:
            reason = f"not kept by {self.retention!r}"
            doomed = dict.fromkeys(tracker.doomed(index.records, step), reason)
            held = [s for s in doomed if s in protected]
            failed = self._delete(index, {s: doomed[s] for s in doomed if s not in held}, place)
            failed = failed or bool(held)  # kept for now: decide over everything next time
            tracker.frontier_version = -1 if failed else index.version
            return failed
        return self.prune_all(index, protected, place=place)

    def prune_all(self, index: Index, protected: Mapping[int, str], *, place: Place) -> bool:
        """Decide over every checkpoint and delete what is not kept; ``True`` if one failed."""
        failed = self.prune(index, self.retention, protected, place=place)
        self._tracker.resync_frontiers(index.records)
        self._tracker.frontier_version = -1 if failed else index.version
        return failed

    def prune(
        self,
        index: Index,
        policy: RetentionPolicy,
        protected: Mapping[int, str],
        *,
        place: Place,
        on_delete: Callable[[CheckpointRecord], object] | None = None,
    ) -> bool:
        """Apply ``policy`` to every checkpoint; ``True`` if a delete failed."""
        decisions = decide(policy, list(index.records.values()), protected=protected)
        doomed = {d.step: d.reason for d in decisions if not d.keep}
        return self._delete(index, doomed, place, on_delete)

    def _delete(
        self,
        index: Index,
        doomed: Mapping[int, str],
        place: Place,
        on_delete: Callable[[CheckpointRecord], object] | None = None,
    ) -> bool:
        """Delete the checkpoints at ``doomed`` (step -> reason); ``True`` if one failed."""
        tracker = self._tracker
        current = tracker.version == index.version
        failed = False
        for step, reason in sorted(doomed.items()):
            record = index.records[step]
            try:
                commits.delete(place, index.committed[step])
            except OSError as exc:
                logger.error("could not prune %s (kept): %s", record.path, exc)
                failed = True
                continue
            index.remove(step)
            tracker.removed(step)
            logger.info("pruned %s: %s", record.path, reason)
            if on_delete is not None:
                on_delete(record)
        if current:
            tracker.version = index.version
        return failed

    def manual_policy(
        self, index: Index, protected: Mapping[int, str], exclude_latest: bool
    ) -> tuple[RetentionPolicy, dict[int, str]]:
        """The policy and protections of `remove_old_checkpoints(exclude_latest)`."""
        policy = self.retention
        protect = dict(protected)
        parts = policy.policies if isinstance(policy, AnyOf) else (policy,)
        if exclude_latest and index.records and not any(isinstance(p, Hybrid) for p in parts):
            # Hybrid exempts the latest itself: a second reason would only repeat it.
            protect[max(index.records)] = "latest step (exclude_latest=True)"
        elif not exclude_latest and isinstance(policy, Hybrid):
            policy = policy.without_latest()
        return policy, protect

    def plan(
        self, index: Index, policy: RetentionPolicy, protected: Mapping[int, str]
    ) -> list[Decision]:
        """What ``policy`` would decide now, changing nothing."""
        return decide(policy, list(index.records.values()), protected=protected)

    def latest(self, index: Index) -> int | None:
        """The highest step not found damaged, kept current per commit."""
        tracker = self._tracker
        tracker.sync(index.version)
        if tracker.latest is None and index.records:
            tracker.latest = max(index.records)
        if index.damaged and tracker.latest is not None and index.is_damaged(tracker.latest):
            return max((s for s in index.records if not index.is_damaged(s)), default=None)
        return tracker.latest

    def first(self, candidates: list[CheckpointRecord]) -> CheckpointRecord:
        """The best of ``candidates`` (not empty) by this applier's ranking."""
        return rank(self.ranking, candidates)[0]

    def best(self, index: Index) -> int | None:
        """The first checkpoint by the ranking not found damaged, kept current per commit."""
        tracker = self._tracker
        tracker.sync(index.version)
        if tracker.best is None and index.records:
            with gc_paused():
                ranked = rank(self.ranking, list(index.records.values()))
            tracker.best = ranked[0].step if ranked else None
        if index.damaged and tracker.best is not None and index.is_damaged(tracker.best):
            healthy = [r for s, r in index.records.items() if not index.is_damaged(s)]
            ranked = rank(self.ranking, healthy)
            return ranked[0].step if ranked else None
        return tracker.best

    def missing_metric(self, index: Index) -> set[int]:
        """The steps whose ranking metric is missing (a metric ranking only)."""
        if not isinstance(self.ranking, ByMetric):
            return set()
        return self._tracker.missing_steps(index.records, self.ranking.name)
