"""Retention, best and latest kept up to date per save, at a cost that does not grow with history.

Deciding retention over every checkpoint on each save costs O(N). For the built-in
policies it need not: a policy splits into parts of two shapes.

* Per-checkpoint parts (`KeepAll`, `EveryNSteps`) keep a checkpoint or not by itself
  alone, so their answer never changes once given.
* Bounded parts (`TopK`, `Hybrid`, `LatestN`, `KeepNone`, under a ranking that orders
  by a fixed per-checkpoint key: `ByMetric`, `ByRecency`) keep a set that a new
  checkpoint can only enter: what such a part keeps out of ``S + [new]`` is what it
  keeps out of ``K + [new]`` for any ``K`` between its previous answer and ``S``.

So a save re-decides only over each bounded part's previous answer plus the new
checkpoint. Anything the tracker did not see happen (an overwrite, a pin, a prune
with other settings, another manager's change, a failed delete) and any custom policy
or ranking send the manager back to deciding over everything, which also resyncs the
tracker.
"""

from __future__ import annotations

from collections.abc import Mapping

from ckpt._records import CheckpointRecord
from policies import (
    AnyOf,
    ByMetric,
    ByRecency,
    EveryNSteps,
    Hybrid,
    KeepAll,
    KeepNone,
    LatestN,
    Ranking,
    RetentionPolicy,
    TopK,
)

_Parts = tuple[tuple[RetentionPolicy, ...], tuple[RetentionPolicy, ...]]


def _keyed(ranking: Ranking) -> bool:
    # Exact types: a subclass may override rank() with an order that is not a fixed key.
    return type(ranking) in (ByMetric, ByRecency)


def split(policy: RetentionPolicy) -> _Parts | None:
    """(per-checkpoint parts, bounded parts) of a built-in policy; ``None`` otherwise."""
    kind = type(policy)
    if kind in (KeepAll, EveryNSteps):
        return (policy,), ()
    if kind is KeepNone:
        return (), ()
    if kind is LatestN:
        return (), (policy,)
    if isinstance(policy, (TopK, Hybrid)) and kind in (TopK, Hybrid):
        return ((), (policy,)) if _keyed(policy.ranking) else None
    if isinstance(policy, AnyOf) and kind is AnyOf:
        alone: list[RetentionPolicy] = []
        bounded: list[RetentionPolicy] = []
        for part in policy.policies:
            parts = split(part)
            if parts is None:
                return None
            alone += parts[0]
            bounded += parts[1]
        return tuple(alone), tuple(bounded)
    return None


class Tracker:
    """One manager's running answers about its directory.

    ``best`` and ``latest`` describe the directory at ``version`` (``None``: not known
    yet, compute from the index); the bounded parts' answers describe it at
    ``frontier_version``. The manager moves both versions along with each change it
    makes and reports here; a change it did not report leaves them behind, and then
    `sync` forgets best and latest, and the next prune decides over everything.
    """

    def __init__(self, policy: RetentionPolicy, ranking: Ranking) -> None:
        self.parts = split(policy)
        self.ranking = ranking
        self.keyed = _keyed(ranking)
        self.version = -1
        self.best: int | None = None
        self.latest: int | None = None
        self.frontier_version = -1
        self._frontiers: list[set[int]] = []

    def sync(self, version: int) -> None:
        """Forget best and latest unless they describe ``version``."""
        if self.version != version:
            self.best = self.latest = None
            self.version = version

    def added(self, index: Mapping[int, CheckpointRecord], step: int, version: int) -> None:
        """Update best and latest for the new ``step`` (not an overwrite) at ``version``."""
        self.version = version
        if self.latest is not None:
            self.latest = max(self.latest, step)
        if self.best is not None:
            self.best = (
                self.ranking.rank([index[self.best], index[step]])[0].step if self.keyed else None
            )

    def doomed(self, index: Mapping[int, CheckpointRecord], step: int) -> list[int]:
        """The steps retention deletes now that the new ``step`` is in ``index``.

        Only valid while ``frontier_version`` was current before the commit.
        """
        assert self.parts is not None
        alone, bounded = self.parts
        candidates = {step}.union(*self._frontiers)
        self._frontiers = [
            set(part.keep([index[s] for s in frontier | {step}]))
            for part, frontier in zip(bounded, self._frontiers, strict=True)
        ]
        kept = set().union(*self._frontiers)
        return sorted(
            s
            for s in candidates - kept
            if not index[s].pinned and not any(part.keep([index[s]]) for part in alone)
        )

    def resync_frontiers(self, index: Mapping[int, CheckpointRecord]) -> None:
        """Recompute the bounded parts' answers from the whole index (O(N))."""
        if self.parts is not None:
            views = list(index.values())
            self._frontiers = [set(part.keep(views)) for part in self.parts[1]]

    def removed(self, step: int) -> None:
        """Account for the deletion of ``step``."""
        for frontier in self._frontiers:
            frontier.discard(step)
        if step == self.best:
            self.best = None
        if step == self.latest:
            self.latest = None
