"""Properties of the pure policies on random histories (NaN, missing, ties, huge values)."""

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from policies import (
    AnyOf,
    ByMetric,
    CheckpointView,
    Hybrid,
    LatestN,
    TopK,
    decide,
    metric_value,
)

metric = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0.0, 1.0, 1.0, -1.0]),  # ties are common
    st.none(),
    st.text(max_size=3),
)


@st.composite
def histories(draw: st.DrawFn) -> list[CheckpointView]:
    steps = draw(st.lists(st.integers(0, 10**6), unique=True, max_size=25))
    views = []
    for step in steps:
        info = {} if draw(st.booleans()) and draw(st.booleans()) else {"m": draw(metric)}
        views.append(CheckpointView(step, info, pinned=draw(st.booleans()) and step % 7 == 0))
    return views


rankings = st.builds(ByMetric, st.just("m"), st.booleans())


def _usable_key(view: CheckpointView, higher: bool) -> tuple[int, float, int]:
    value = metric_value(view.info, "m")
    if value is None:
        return (1, 0.0, -view.step)
    return (0, -value if higher else value, -view.step)


@given(histories(), rankings, st.randoms())
def test_ranking_is_a_total_order_independent_of_input_order(
    views: list[CheckpointView], ranking: ByMetric, rnd: random.Random
) -> None:
    shuffled = list(views)
    rnd.shuffle(shuffled)
    assert ranking.rank(views) == ranking.rank(shuffled)
    ranked = ranking.rank(views)
    usable = [metric_value(v.info, "m") is not None for v in ranked]
    assert usable == sorted(usable, reverse=True)  # every usable value before any unusable
    for better, worse in itertools.pairwise(ranked):
        assert _usable_key(better, ranking.higher_is_better) < _usable_key(
            worse, ranking.higher_is_better
        )


@given(histories(), rankings, st.integers(1, 6))
def test_top_k_keeps_exactly_the_k_best(
    views: list[CheckpointView], ranking: ByMetric, k: int
) -> None:
    kept = TopK(k, ranking).keep(views)
    assert set(kept) == {v.step for v in ranking.rank(views)[:k]}
    assert len(kept) == min(k, len(views))


@given(histories(), rankings, st.integers(0, 6))
def test_hybrid_keeps_the_best_and_the_latest(
    views: list[CheckpointView], ranking: ByMetric, k: int
) -> None:
    kept = Hybrid(k, ranking).keep(views)
    assert len(kept) <= k + 1
    if views:
        assert max(v.step for v in views) in kept
        if k:
            assert ranking.rank(views)[0].step in kept  # "best" is what top-k protects first


@given(histories(), rankings, st.integers(1, 4), st.integers(1, 4), st.randoms())
def test_decisions_are_deterministic_keep_pins_and_union(
    views: list[CheckpointView], ranking: ByMetric, k: int, n: int, rnd: random.Random
) -> None:
    policy = AnyOf((TopK(k, ranking), LatestN(n)))
    shuffled = list(views)
    rnd.shuffle(shuffled)
    decisions = decide(policy, views)
    assert decisions == decide(policy, shuffled)
    kept = {d.step for d in decisions if d.keep}
    union = set(TopK(k, ranking).keep(views)) | set(LatestN(n).keep(views))
    assert kept == union | {v.step for v in views if v.pinned}
    assert all(d.reason for d in decisions)
