"""The manager's per-save shortcut decides exactly what deciding over everything decides."""

from __future__ import annotations

import math
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ckpt._directory.incremental import Tracker, split
from ckpt._directory.records import CheckpointRecord
from policies import (
    AnyOf,
    ByMetric,
    ByRecency,
    EveryNSteps,
    Hybrid,
    KeepAll,
    KeepNone,
    LatestN,
    RetentionPolicy,
    TopK,
    decide,
)

rankings = st.one_of(
    st.builds(ByMetric, st.just("m"), st.booleans()),
    st.just(ByRecency()),
)
periods = st.none() | st.integers(1, 4)
# Small k fills up and evicts; a k larger than the history (up to 40 saves) never does.
counts = st.integers(1, 4) | st.integers(30, 100)
leaves: st.SearchStrategy[RetentionPolicy] = st.one_of(
    st.builds(TopK, counts, rankings, periods),
    st.builds(Hybrid, counts | st.just(0), rankings, periods),
    st.builds(LatestN, counts),
    st.builds(EveryNSteps, st.integers(1, 5)),
    st.just(KeepAll()),
    st.just(KeepNone()),
)
retention = st.one_of(
    leaves, st.lists(leaves, min_size=1, max_size=3).map(lambda ps: AnyOf(tuple(ps)))
)
metrics = st.one_of(
    st.none(),
    st.just(math.nan),
    st.sampled_from([0.0, 1.0, -1.0, 1e300]),
    st.floats(-10, 10, allow_nan=False),
)


def record(step: int, metric: float | None, pinned: bool) -> CheckpointRecord:
    info: dict[str, Any] = {} if metric is None else {"m": metric}
    return CheckpointRecord(
        step=step,
        path=Path(f"/ckpt/step_{step}"),
        info=MappingProxyType(info),
        committed_at=float(step),
        pinned=pinned,
    )


@given(
    policy=retention,
    ranking=rankings,
    saves=st.lists(st.tuples(st.integers(0, 60), metrics, st.booleans()), min_size=1, max_size=40),
)
def test_per_save_decisions_match_deciding_over_everything(
    policy: RetentionPolicy, ranking: ByMetric | ByRecency, saves: list[Any]
) -> None:
    assert split(policy) is not None
    tracker = Tracker(policy, ranking)
    index: dict[int, CheckpointRecord] = {}
    version = 0
    for step, metric, pinned in saves:
        if step in index:
            continue  # overwrites take the full path in the manager
        index[step] = record(step, metric, pinned and len(index) % 3 == 0)
        full = {d.step for d in decide(policy, list(index.values())) if not d.keep}
        if version == 0:  # the first save after opening decides over everything
            doomed = full
            for gone in doomed:
                del index[gone]
            tracker.resync_frontiers(index)
        else:
            tracker.added(index, step, version + 1)
            doomed = set(tracker.doomed(index, step))
            for gone in doomed:
                del index[gone]
                tracker.removed(gone)
        assert doomed == full, (policy, sorted(index))
        version += 1
        tracker.version = version
        # Best and latest, as kept up to date, are what a full computation gives.
        if index:
            if tracker.best is None:
                tracker.best = ranking.rank(list(index.values()))[0].step
            if tracker.latest is None:
                tracker.latest = max(index)
            assert tracker.best == ranking.rank(list(index.values()))[0].step
            assert tracker.latest == max(index)


class _Custom:
    def keep(self, checkpoints: Any, /) -> dict[int, str]:
        return {}


class _MyTopK(TopK):
    pass


class _OtherTopK(TopK):
    def keep(self, checkpoints: Any, /) -> dict[int, str]:
        return {}


def test_only_policies_with_a_declared_shape_take_the_shortcut() -> None:
    assert split(_Custom()) is None
    assert split(_OtherTopK(1, ByRecency())) is None  # changed keep(), no shape of its own
    assert split(_MyTopK(1, ByRecency())) is not None  # keep() and its shape inherited
    assert split(TopK(1, _Ranking())) is None  # rank() is no sort by a fixed key
    assert split(AnyOf((KeepAll(), _Custom()))) is None
    parts = split(AnyOf((KeepAll(), LatestN(2))))
    assert parts is not None
    alone, (bounded,) = parts
    assert alone == (KeepAll(),)
    assert (bounded.k, bounded.every_n_steps, bounded.plus_latest) == (2, None, False)


class _Ranking:
    def rank(self, checkpoints: Any, /) -> list[Any]:
        return list(checkpoints)
