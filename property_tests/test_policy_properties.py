"""Properties of the pure policies on random histories (NaN, missing, ties, huge values)."""

import functools
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ckpt import CheckpointConfig, policies_from_config
from policies import (
    AnyOf,
    ByMetric,
    ByRecency,
    CheckpointView,
    EveryNSteps,
    Hybrid,
    KeepAll,
    KeepNone,
    LatestN,
    RetentionPolicy,
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


# --- an independent oracle ----------------------------------------------------------------
#
# The rule, as README and DESIGN state it, written out without the code under test: a metric
# counts when it is a finite real number (a bool does not; a huge int stays exact; a Fraction
# or numpy float counts by its float value, and one too big for a float does not count).
# Every checkpoint whose metric counts ranks before every one whose metric does not; among
# those that count, the better value first; ties, and checkpoints whose metric does not
# count, go to the higher step.

_MISSING = object()


def oracle_value(info: Mapping[str, Any], name: str = "m") -> int | float | None:
    value = info.get(name, _MISSING)
    if value is _MISSING or value is None or isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating, Fraction)):
        try:
            as_float = float(value)
        except OverflowError:
            return None
        return as_float if math.isfinite(as_float) else None
    return None  # str, Decimal, lists, ...: not a number the ranking accepts


def oracle_better(a: CheckpointView, b: CheckpointView, name: str, higher: bool) -> bool:
    """Whether ``a`` ranks strictly before ``b``."""
    va, vb = oracle_value(a.info, name), oracle_value(b.info, name)
    if (va is None) != (vb is None):
        return va is not None
    if va is not None and vb is not None and va != vb:
        return va > vb if higher else va < vb
    return a.step > b.step


def oracle_rank(views: Sequence[CheckpointView], name: str, higher: bool) -> list[int]:
    """Steps best first, by a comparison sort over `oracle_better`."""

    def compare(a: CheckpointView, b: CheckpointView) -> int:
        if oracle_better(a, b, name, higher):
            return -1
        return 1 if oracle_better(b, a, name, higher) else 0

    return [v.step for v in sorted(views, key=functools.cmp_to_key(compare))]


def oracle_rank_by(ranking: object, views: Sequence[CheckpointView]) -> list[int]:
    if isinstance(ranking, ByRecency):
        return sorted((v.step for v in views), reverse=True)
    assert isinstance(ranking, ByMetric)
    return oracle_rank(views, ranking.name, ranking.higher_is_better)


def oracle_keep(policy: object, views: Sequence[CheckpointView]) -> set[int]:
    """The steps ``policy`` keeps, from its fields and the written-out rules above."""
    steps = {v.step for v in views}
    if isinstance(policy, (TopK, Hybrid)):
        period = policy.every_n_steps
        candidates = [v for v in views if period is None or v.step % period == 0]
        kept = set(oracle_rank_by(policy.ranking, candidates)[: policy.k])
        if isinstance(policy, Hybrid) and steps:
            kept.add(max(steps))
        return kept
    if isinstance(policy, LatestN):
        return set(sorted(steps, reverse=True)[: policy.n])
    if isinstance(policy, EveryNSteps):
        return {s for s in steps if s % policy.n == 0}
    if isinstance(policy, KeepAll):
        return steps
    if isinstance(policy, KeepNone):
        return set()
    assert isinstance(policy, AnyOf)
    return set().union(*(oracle_keep(part, views) for part in policy.policies))


# --- richer histories ----------------------------------------------------------------------

wild_metric = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 1.0, -1.0, 2, 2.0, 0.5]),  # ties, int/float ties included
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**400), 10**400),  # beyond any float, compared exactly
    st.sampled_from([1e308, -1e308, 5e-324, -5e-324, 10**400, -(10**400), 2**53 + 1]),
    st.sampled_from([math.nan, math.inf, -math.inf, None, True, False, "1.0", "nan", []]),
    st.fractions(max_denominator=10),
    st.sampled_from([Fraction(10**400, 3), -Fraction(10**400, 7)]),  # too big for a float
    st.floats(width=32).map(np.float32),
    st.integers(-(2**62), 2**62).map(np.int64),
    st.sampled_from([np.float64("nan"), np.float64(1.0), np.bool_(True), np.float32("inf")]),
)


@st.composite
def wild_histories(draw: st.DrawFn, max_size: int = 20) -> list[CheckpointView]:
    steps = draw(
        st.lists(st.integers(0, 60) | st.integers(0, 10**12), unique=True, max_size=max_size)
    )
    views = []
    for step in steps:
        info: dict[str, Any] = {"other": step}
        if draw(st.integers(0, 5)):  # missing one time in six
            info["m"] = draw(wild_metric)
        views.append(CheckpointView(step, info, committed_at=None, pinned=draw(st.booleans())))
    return views


any_ranking = st.one_of(st.builds(ByMetric, st.just("m"), st.booleans()), st.just(ByRecency()))
period = st.none() | st.integers(1, 4)
leaf_policies = st.one_of(
    st.builds(TopK, st.integers(1, 6), any_ranking, period),
    st.builds(Hybrid, st.integers(0, 6), any_ranking, period),
    st.builds(LatestN, st.integers(1, 6)),
    st.builds(EveryNSteps, st.integers(1, 7)),
    st.just(KeepAll()),
    st.just(KeepNone()),
)
any_policy = st.recursive(
    leaf_policies,
    lambda inner: st.lists(inner, min_size=1, max_size=3).map(lambda ps: AnyOf(tuple(ps))),
    max_leaves=5,
)


@given(wild_histories(), st.builds(ByMetric, st.just("m"), st.booleans()), st.randoms())
def test_ranking_matches_the_oracle(
    views: list[CheckpointView], ranking: ByMetric, rnd: random.Random
) -> None:
    shuffled = list(views)
    rnd.shuffle(shuffled)
    expected = oracle_rank(views, "m", ranking.higher_is_better)
    assert [v.step for v in ranking.rank(shuffled)] == expected
    assert [v.step for v in ranking.rank(views)] == expected
    assert [v.step for v in ByRecency().rank(shuffled)] == sorted(expected, reverse=True)


@given(wild_histories(), st.builds(ByMetric, st.just("m"), st.booleans()), st.integers(1, 8))
def test_top_k_keeps_exactly_the_k_best_by_the_oracle(
    views: list[CheckpointView], ranking: ByMetric, k: int
) -> None:
    kept = TopK(k, ranking).keep(views)
    best_first = oracle_rank(views, "m", ranking.higher_is_better)
    assert set(kept) == set(best_first[:k])
    assert len(kept) == min(k, len(views))
    if views:
        assert best_first[0] in kept  # what get_best_checkpoint_path returns is kept


@given(wild_histories(), st.builds(ByMetric, st.just("m"), st.booleans()), st.integers(0, 8))
def test_hybrid_keeps_the_k_best_and_the_latest_by_the_oracle(
    views: list[CheckpointView], ranking: ByMetric, k: int
) -> None:
    kept = Hybrid(k, ranking).keep(views)
    best_first = oracle_rank(views, "m", ranking.higher_is_better)
    latest = {max(v.step for v in views)} if views else set()
    assert set(kept) == set(best_first[:k]) | latest
    assert len(kept) <= k + 1
    if views and k:
        assert best_first[0] in kept
    assert set(Hybrid(k, ranking).without_latest().keep(views)) == set(best_first[:k])


@given(wild_histories(), st.integers(1, 8))
def test_latest_n_keeps_the_n_highest_steps(views: list[CheckpointView], n: int) -> None:
    steps = sorted((v.step for v in views), reverse=True)
    assert set(LatestN(n).keep(views)) == set(steps[:n])
    assert set(TopK(n, ByRecency()).keep(views)) == set(steps[:n])  # the same thing


@given(wild_histories(), any_policy)
def test_every_policy_keeps_what_the_oracle_keeps(
    views: list[CheckpointView], policy: RetentionPolicy
) -> None:
    kept = policy.keep(views)
    assert set(kept) == oracle_keep(policy, views)
    assert all(isinstance(reason, str) and reason for reason in kept.values())
    if isinstance(policy, AnyOf):  # the union of its parts, each decided alone
        union = set().union(*(set(part.keep(views)) for part in policy.policies))
        assert set(kept) == union


@given(
    wild_histories(),
    any_policy,
    st.randoms(),
    st.dictionaries(st.integers(0, 60), st.text(min_size=1, max_size=5), max_size=4),
)
def test_decide_is_deterministic_order_free_and_keeps_pins(
    views: list[CheckpointView],
    policy: RetentionPolicy,
    rnd: random.Random,
    protected: dict[int, str],
) -> None:
    shuffled = list(views)
    rnd.shuffle(shuffled)
    assert policy.keep(views) == policy.keep(shuffled)  # reasons included
    assert policy.keep(views) == policy.keep(list(views))  # and the same twice
    decisions = decide(policy, views, protected=protected)
    assert decisions == decide(policy, shuffled, protected=protected)
    assert [d.step for d in decisions] == sorted(v.step for v in views)
    expected = (
        oracle_keep(policy, views)
        | {v.step for v in views if v.pinned}
        | (protected.keys() & {v.step for v in views})
    )
    assert {d.step for d in decisions if d.keep} == expected
    for view, decision in zip(sorted(views, key=lambda v: v.step), decisions, strict=True):
        assert decision.reason
        if view.pinned:
            assert decision.keep
            assert "pinned" in decision.reason


@given(
    wild_histories(),
    st.booleans(),
    st.integers(1, 5),
    st.none() | st.integers(1, 5),
    st.none() | st.integers(0, 3),
)
def test_the_best_is_kept_by_every_top_k_config_with_protect_best(
    views: list[CheckpointView],
    higher: bool,
    k: int,
    save_period: int | None,
    ft_keep_latest_k: int | None,
) -> None:
    """With protect_best, the manager's best (the ranking's first) is always kept."""
    config = CheckpointConfig(
        checkpoint_dir="unused",
        metric_name="m",
        higher_is_better=higher,
        keep_top_k=k,
        save_period=save_period,
        ft_keep_latest_k=ft_keep_latest_k,
        protect_best=True,
    )
    ranking, policy = policies_from_config(config)
    if not views:
        assert policy.keep(views) == {}
        return
    best = oracle_rank(views, "m", higher)[0]
    assert ranking.rank(views)[0].step == best  # what get_best_checkpoint_path picks
    assert best in policy.keep(views)
    assert best in {d.step for d in decide(policy, views) if d.keep}
    for strict in (TopK(k, ranking), Hybrid(k, ranking)):
        assert best in strict.keep(views)
