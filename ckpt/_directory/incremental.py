"""Retention, best and latest kept up to date per save, at a cost that does not grow with history.

Deciding retention over every checkpoint on each save costs O(N). A policy that
declares its shape (`policies.incremental_parts`: per-checkpoint parts and bounded
parts; every built-in does, and a user's policy can) need not: each bounded part's
answer is kept in a heap with its worst member on top, so a save costs O(log N) per
part however large ``k`` is: a new checkpoint goes in, and what no longer fits comes
out and is deleted unless another part, a pin or a per-checkpoint part keeps it.
Anything the tracker did not see happen (an overwrite, a pin, a prune with other
settings, another manager's change, a failed delete) and any policy without a shape
send the manager back to deciding over everything, which also rebuilds the heaps.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ckpt._directory.records import CheckpointRecord
from policies import (
    Bounded,
    ByMetric,
    CheckpointView,
    PerCheckpoint,
    Ranking,
    RetentionPolicy,
    fixed_key,
    incremental_parts,
    metric_value,
    ranked,
)

_Parts = tuple[tuple[RetentionPolicy, ...], tuple[Bounded, ...]]


def split(policy: RetentionPolicy) -> _Parts | None:
    """(per-checkpoint policies, bounded parts) of a policy that declares them, else ``None``."""
    parts = incremental_parts(policy)
    if parts is None:
        return None
    alone = tuple(part.policy for part in parts if isinstance(part, PerCheckpoint))
    return alone, tuple(part for part in parts if isinstance(part, Bounded))


def _worst_first(key: Any) -> Any:
    """A heap key that puts the largest (worst) of the ranking's keys on top."""
    return tuple(-part for part in key) if isinstance(key, tuple) else -key


class _Best:
    """The ``k`` best eligible checkpoints by a fixed key: a bounded part's answer."""

    def __init__(self, k: int, key: Callable[[CheckpointView], Any], every: int | None) -> None:
        self.k = k
        self.key = key
        self.every = every
        self.members: set[int] = set()
        # Stale entries (steps discarded since) are skipped as they surface.
        self._heap: list[tuple[Any, int]] = []

    def add(self, view: CheckpointView, index: Mapping[int, CheckpointRecord]) -> set[int]:
        """Take in the new ``view``; return the steps that are no longer kept."""
        step = view.step
        if self.k == 0 or (self.every is not None and step % self.every):
            return {step}
        heapq.heappush(self._heap, (_worst_first(self.key(view)), step))
        self.members.add(step)
        out = set()
        while len(self.members) > self.k:
            _, worst = heapq.heappop(self._heap)
            if worst in self.members:
                self.members.discard(worst)
                out.add(worst)
        return out

    def discard(self, step: int) -> None:
        self.members.discard(step)

    def __contains__(self, step: int) -> bool:
        return step in self.members


class _BestAndLatest(_Best):
    """`Hybrid`'s answer: the ``k`` best eligible checkpoints, and the latest of all."""

    latest: int | None = None

    def add(self, view: CheckpointView, index: Mapping[int, CheckpointRecord]) -> set[int]:
        out = super().add(view, index)
        previous = self.latest
        if previous is None:  # never known, or deleted: the latest of the others
            previous = max((s for s in index if s != view.step), default=None)
        if previous is None or view.step > previous:
            self.latest = view.step
            out.discard(view.step)
            if previous is not None:
                out.add(previous)
        else:
            self.latest = previous
        return {s for s in out if s not in self}

    def discard(self, step: int) -> None:
        super().discard(step)
        if step == self.latest:
            self.latest = None

    def __contains__(self, step: int) -> bool:
        return step in self.members or step == self.latest


def _frontier(part: Bounded, views: Iterable[CheckpointView]) -> _Best:
    kind = _BestAndLatest if part.plus_latest else _Best
    frontier = kind(part.k, part.key, part.every_n_steps)
    for view in sorted(views, key=lambda v: v.step):
        frontier.add(view, {})
    return frontier


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
        self.keyed = fixed_key(ranking) is not None
        self.version = -1
        self.best: int | None = None
        self.latest: int | None = None
        self.frontier_version = -1
        self._frontiers: list[_Best] = []
        self._missing: set[int] | None = None  # steps without a usable metric

    def sync(self, version: int) -> None:
        """Forget best and latest unless they describe ``version``."""
        if self.version != version:
            self.best = self.latest = None
            self._missing = None
            self.version = version

    def missing_steps(self, index: Mapping[int, CheckpointRecord], metric: str) -> set[int]:
        """The steps of ``index`` without a usable ``metric``, kept up to date per save."""
        if self._missing is None:
            self._missing = {s for s, r in index.items() if metric_value(r.info, metric) is None}
        return self._missing

    def added(self, index: Mapping[int, CheckpointRecord], step: int, version: int) -> None:
        """Update best and latest for the new ``step`` (not an overwrite) at ``version``."""
        self.version = version
        if self.latest is not None:
            self.latest = max(self.latest, step)
        ranking = self.ranking
        if (
            self._missing is not None
            and isinstance(ranking, ByMetric)
            and metric_value(index[step].info, ranking.name) is None
        ):
            self._missing.add(step)
        if self.best is not None:
            pair = [index[self.best], index[step]]
            self.best = ranked(self.ranking, pair)[0].step if self.keyed else None

    def doomed(self, index: Mapping[int, CheckpointRecord], step: int) -> list[int]:
        """The steps retention deletes now that the new ``step`` is in ``index``.

        Only valid while ``frontier_version`` was current before the commit.
        """
        assert self.parts is not None
        alone = self.parts[0]
        candidates = {step}
        for frontier in self._frontiers:
            candidates |= frontier.add(index[step], index)
        return sorted(
            s
            for s in candidates
            if not index[s].pinned
            and not any(s in frontier for frontier in self._frontiers)
            and not any(part.keep([index[s]]) for part in alone)
        )

    def resync_frontiers(self, index: Mapping[int, CheckpointRecord]) -> None:
        """Rebuild the bounded parts' answers from the whole index (O(N log N))."""
        if self.parts is not None:
            views = list(index.values())
            self._frontiers = [_frontier(part, views) for part in self.parts[1]]

    def removed(self, step: int) -> None:
        """Account for the deletion of ``step``."""
        for frontier in self._frontiers:
            frontier.discard(step)
        if self._missing is not None:
            self._missing.discard(step)
        if step == self.best:
            self.best = None
        if step == self.latest:
            self.latest = None
