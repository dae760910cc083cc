"""Example-based tests of the pure ranking and retention policies in ``policies``."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

import ckpt
import policies
from policies import (
    AnyOf,
    ByMetric,
    ByRecency,
    CheckpointView,
    Decision,
    EveryNSteps,
    Hybrid,
    KeepAll,
    KeepNone,
    LatestN,
    Ranking,
    RetentionPolicy,
    TopK,
    decide,
    metric_value,
)

NAN = float("nan")
INF = float("inf")


def views(metrics: Mapping[int, Any], name: str = "m") -> list[CheckpointView]:
    """One view per step; a value of ``...`` means the metric is missing."""
    return [
        CheckpointView(step, {} if value is ... else {name: value})
        for step, value in metrics.items()
    ]


def steps(ranked: Sequence[CheckpointView]) -> list[int]:
    return [view.step for view in ranked]


# --- metric_value -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, -7, 0.5, -2.25, 0.0, 1e300, -1e-300])
def test_metric_value_returns_finite_numbers(value: float) -> None:
    result = metric_value({"m": value}, "m")
    assert result == value
    assert type(result) is type(value)


@pytest.mark.parametrize("value", [10**30, -(10**30), 10**400, 2**53 + 1])
def test_metric_value_keeps_huge_ints_exact(value: int) -> None:
    result = metric_value({"m": value}, "m")
    assert type(result) is int
    assert result == value


@pytest.mark.parametrize(
    "value",
    [None, NAN, INF, -INF, True, False, "0.5", "1", [0.5], (1,), {"v": 1}, b"1", 1j],
    ids=repr,
)
def test_metric_value_unusable_values_give_none(value: object) -> None:
    assert metric_value({"m": value}, "m") is None


def test_metric_value_missing_key_gives_none() -> None:
    assert metric_value({}, "m") is None
    assert metric_value({"other": 1.0}, "m") is None


def test_metric_value_accepts_numpy_scalars() -> None:
    np = pytest.importorskip("numpy")
    as_float = metric_value({"m": np.float64(0.25)}, "m")
    assert as_float == 0.25
    assert isinstance(as_float, float)
    as_int = metric_value({"m": np.int64(2**62)}, "m")
    assert as_int == 2**62
    assert type(as_int) is int
    assert metric_value({"m": np.float64("nan")}, "m") is None
    assert metric_value({"m": np.float32("inf")}, "m") is None
    assert metric_value({"m": np.float64("-inf")}, "m") is None
    assert metric_value({"m": np.bool_(True)}, "m") is None


def test_metric_value_fraction_too_large_for_float_does_not_raise() -> None:
    # A finite real number must give its value or None, never an exception.
    huge = Fraction(10**400, 3)
    assert metric_value({"m": huge}, "m") in (huge, None)
    assert metric_value({"m": Fraction(1, 4)}, "m") == 0.25


# --- ByMetric -----------------------------------------------------------------------------


def test_by_metric_higher_is_better_orders_best_first() -> None:
    ranked = ByMetric("m").rank(views({1: 0.1, 2: 0.9, 3: 0.5, 4: -3}))
    assert steps(ranked) == [2, 3, 1, 4]


def test_by_metric_lower_is_better_orders_best_first() -> None:
    ranked = ByMetric("m", higher_is_better=False).rank(views({1: 0.1, 2: 0.9, 3: 0.5, 4: -3}))
    assert steps(ranked) == [4, 1, 3, 2]


def test_by_metric_default_direction_is_higher_is_better() -> None:
    assert ByMetric("m").higher_is_better is True


def test_by_metric_huge_ints_compare_exactly() -> None:
    ranked = ByMetric("m").rank(views({1: 10**30, 2: 10**30 + 1, 3: 1e30, 4: 0.5}))
    # The float 1e30 is exactly 1000000000000000019884624838656, above 10**30 + 1.
    assert steps(ranked) == [3, 2, 1, 4]


UNUSABLE = [NAN, INF, -INF, ..., None, "0.5", True, [1.0]]


@pytest.mark.parametrize("higher_is_better", [True, False])
@pytest.mark.parametrize("bad", UNUSABLE, ids=repr)
def test_by_metric_unusable_values_rank_last(higher_is_better: bool, bad: object) -> None:
    metrics = {1: 0.5, 2: bad, 3: 0.9, 4: -1e300, 5: 1e300}
    ranked = ByMetric("m", higher_is_better).rank(views(metrics))
    assert ranked[-1].step == 2
    usable = [1, 3, 4, 5]
    assert sorted(steps(ranked[:-1])) == usable


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_by_metric_all_unusable_rank_after_usable_by_step_descending(
    higher_is_better: bool,
) -> None:
    metrics = {10: NAN, 20: 1.0, 30: ..., 40: INF, 50: "x", 60: 2.0, 70: -INF, 5: None}
    ranked = ByMetric("m", higher_is_better).rank(views(metrics))
    head = [60, 20] if higher_is_better else [20, 60]
    assert steps(ranked) == [*head, 70, 50, 40, 30, 10, 5]


def test_by_metric_all_missing_ranks_by_step_descending() -> None:
    ranked = ByMetric("m").rank([CheckpointView(s) for s in (3, 10, 1, 7)])
    assert steps(ranked) == [10, 7, 3, 1]


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_by_metric_ties_go_to_higher_step(higher_is_better: bool) -> None:
    metrics = {1: 0.5, 5: 0.5, 3: 0.5, 2: 0.1, 4: 0.9}
    ranked = ByMetric("m", higher_is_better).rank(views(metrics))
    if higher_is_better:
        assert steps(ranked) == [4, 5, 3, 1, 2]
    else:
        assert steps(ranked) == [2, 5, 3, 1, 4]


def test_by_metric_int_and_float_ties_go_to_higher_step() -> None:
    ranked = ByMetric("m").rank(views({1: 1, 2: 1.0, 3: 0}))
    assert steps(ranked) == [2, 1, 3]


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_by_metric_result_is_independent_of_input_order(higher_is_better: bool) -> None:
    metrics = {
        1: 0.5,
        2: NAN,
        3: 0.9,
        4: 0.5,
        5: ...,
        6: INF,
        7: -INF,
        8: 10**30,
        9: "bad",
        10: -0.0,
        11: 0.0,
        12: None,
    }
    ranking = ByMetric("m", higher_is_better)
    history = views(metrics)
    expected = steps(ranking.rank(history))
    rng = random.Random(1234)
    for _ in range(50):
        shuffled = history[:]
        rng.shuffle(shuffled)
        assert steps(ranking.rank(shuffled)) == expected


def test_by_metric_uses_the_named_metric_only() -> None:
    history = [
        CheckpointView(1, {"loss": 0.1, "reward": 1.0}),
        CheckpointView(2, {"loss": 0.5, "reward": 9.0}),
    ]
    assert steps(ByMetric("loss", higher_is_better=False).rank(history)) == [1, 2]
    assert steps(ByMetric("reward").rank(history)) == [2, 1]


def test_by_metric_rank_does_not_mutate_its_input() -> None:
    history = views({1: 0.1, 2: 0.9})
    before = list(history)
    ByMetric("m").rank(history)
    assert history == before


def test_by_metric_empty_input() -> None:
    assert ByMetric("m").rank([]) == []


@pytest.mark.parametrize("name", ["", None, 3])
def test_by_metric_rejects_bad_name(name: object) -> None:
    with pytest.raises(ValueError, match="name"):
        ByMetric(name)  # type: ignore[arg-type]


# --- ByRecency ----------------------------------------------------------------------------


def test_by_recency_orders_highest_step_first_ignoring_metrics() -> None:
    history = views({3: 0.1, 10: NAN, 1: 100.0, 7: ...})
    assert steps(ByRecency().rank(history)) == [10, 7, 3, 1]
    assert ByRecency().rank([]) == []


def test_by_recency_independent_of_input_order() -> None:
    history = [CheckpointView(s) for s in range(20)]
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(history)
        assert steps(ByRecency().rank(history)) == list(range(19, -1, -1))


# --- Seed defect regressions ---------------------------------------------------------------


def test_defect_1_nan_is_not_kept_over_the_best_higher_is_better() -> None:
    kept = TopK(1, ByMetric("m", higher_is_better=True)).keep(views({1: 0.5, 2: NAN, 3: 0.9}))
    assert set(kept) == {3}


def test_defect_1_nan_is_not_kept_over_the_best_lower_is_better() -> None:
    kept = TopK(1, ByMetric("m", higher_is_better=False)).keep(views({1: 0.5, 2: NAN, 3: 0.9}))
    assert set(kept) == {1}


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_defect_1_nan_first_in_input_is_still_not_kept(higher_is_better: bool) -> None:
    history = views({2: NAN, 1: 0.5, 3: 0.9, 4: NAN})
    kept = TopK(2, ByMetric("m", higher_is_better)).keep(history)
    assert set(kept) == {1, 3}


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_defect_8_ties_topk_keeps_higher_step(higher_is_better: bool) -> None:
    history = views({1: 0.5, 2: 0.5, 3: 0.5})
    assert set(TopK(1, ByMetric("m", higher_is_better)).keep(history)) == {3}
    assert set(TopK(2, ByMetric("m", higher_is_better)).keep(history)) == {2, 3}


# --- TopK ----------------------------------------------------------------------------------


def test_topk_keeps_k_best_with_ranked_reasons() -> None:
    ranking = ByMetric("loss", higher_is_better=False)
    history = views({1: 0.9, 2: 0.1, 3: 0.5, 4: 0.3}, name="loss")
    kept = TopK(2, ranking).keep(history)
    assert set(kept) == {2, 4}
    assert "#1" in kept[2]
    assert "#2" in kept[4]
    for reason in kept.values():
        assert "top-2" in reason
        assert "loss" in reason


def test_topk_gives_no_latest_exemption() -> None:
    kept = TopK(1, ByMetric("m")).keep(views({1: 0.9, 2: 0.1, 3: 0.2}))
    assert set(kept) == {1}


def test_topk_with_fewer_checkpoints_than_k_keeps_all() -> None:
    assert set(TopK(5, ByRecency()).keep(views({1: 0, 2: 0}))) == {1, 2}
    assert TopK(5, ByRecency()).keep([]) == {}


def test_topk_every_n_steps_restricts_candidates() -> None:
    history = views({5: 100.0, 10: 0.1, 15: 99.0, 20: 0.2, 25: 98.0, 30: 0.3})
    kept = TopK(2, ByMetric("m"), every_n_steps=10).keep(history)
    assert set(kept) == {30, 20}
    for reason in kept.values():
        assert "multiples of 10" in reason


def test_topk_every_n_steps_includes_step_zero() -> None:
    kept = TopK(1, ByMetric("m"), every_n_steps=3).keep(views({0: 5.0, 1: 9.0, 3: 1.0}))
    assert set(kept) == {0}


def test_topk_every_n_steps_without_candidates_keeps_nothing() -> None:
    assert TopK(2, ByRecency(), every_n_steps=100).keep(views({1: 0, 2: 0})) == {}


def test_topk_with_by_recency() -> None:
    kept = TopK(2, ByRecency()).keep([CheckpointView(s) for s in (4, 8, 1, 6)])
    assert set(kept) == {8, 6}


# --- Hybrid --------------------------------------------------------------------------------


def test_hybrid_keeps_k_best_plus_latest() -> None:
    history = views({1: 0.9, 2: 0.8, 3: 0.1, 4: 0.2})
    kept = Hybrid(2, ByMetric("m")).keep(history)
    assert set(kept) == {1, 2, 4}
    assert "latest" in kept[4]
    assert "#1" in kept[1]
    assert "#2" in kept[2]


def test_hybrid_keeps_at_most_k_plus_one() -> None:
    rng = random.Random(0)
    history = views({s: rng.random() for s in range(1, 40)})
    for k in range(6):
        kept = Hybrid(k, ByMetric("m")).keep(history)
        assert len(kept) <= k + 1
        assert 39 in kept


def test_hybrid_latest_already_in_top_k_gives_exactly_k() -> None:
    history = views({1: 0.1, 2: 0.5, 3: 0.9})
    kept = Hybrid(2, ByMetric("m")).keep(history)
    assert set(kept) == {3, 2}
    assert "#1" in kept[3]


def test_hybrid_latest_exempt_even_when_nan() -> None:
    kept = Hybrid(1, ByMetric("m")).keep(views({1: 0.5, 2: 0.9, 3: NAN}))
    assert set(kept) == {2, 3}
    assert "latest" in kept[3]


def test_hybrid_k_zero_keeps_only_latest() -> None:
    kept = Hybrid(0, ByMetric("m")).keep(views({1: 0.9, 2: 0.8, 3: 0.1}))
    assert set(kept) == {3}
    assert "latest" in kept[3]


def test_hybrid_empty_history() -> None:
    assert Hybrid(2, ByMetric("m")).keep([]) == {}
    assert Hybrid(0, ByMetric("m")).keep([]) == {}


def test_hybrid_every_n_steps_restricts_top_k_but_latest_exempt() -> None:
    history = views({5: 100.0, 10: 0.1, 15: 99.0, 20: 0.2, 23: 0.0})
    kept = Hybrid(1, ByMetric("m"), every_n_steps=10).keep(history)
    assert set(kept) == {20, 23}
    assert "multiples of 10" in kept[20]
    assert "latest" in kept[23]


def test_hybrid_without_latest() -> None:
    ranking = ByMetric("m")
    assert Hybrid(3, ranking).without_latest() == TopK(3, ranking)
    assert Hybrid(3, ranking, every_n_steps=5).without_latest() == TopK(3, ranking, 5)
    assert Hybrid(0, ranking).without_latest() == KeepNone()
    history = views({1: 0.9, 2: 0.1})
    assert set(Hybrid(1, ranking).without_latest().keep(history)) == {1}


# --- LatestN, EveryNSteps, KeepAll, KeepNone ---------------------------------------------


def test_latest_n_keeps_highest_steps_with_reasons() -> None:
    history = views({3: 0.9, 10: NAN, 1: 5.0, 7: ...})
    kept = LatestN(2).keep(history)
    assert set(kept) == {10, 7}
    assert "#1" in kept[10]
    assert "#2" in kept[7]
    assert "latest-2" in kept[10]


def test_latest_n_more_than_available() -> None:
    assert set(LatestN(10).keep(views({1: 0, 2: 0}))) == {1, 2}
    assert LatestN(1).keep([]) == {}


def test_every_n_steps_keeps_multiples_including_zero() -> None:
    kept = EveryNSteps(5).keep([CheckpointView(s) for s in (0, 1, 4, 5, 9, 10, 11, 15)])
    assert set(kept) == {0, 5, 10, 15}
    assert all("multiple of 5" in reason for reason in kept.values())


def test_every_n_steps_one_keeps_everything() -> None:
    assert set(EveryNSteps(1).keep([CheckpointView(s) for s in range(5)])) == set(range(5))


def test_keep_all_and_keep_none() -> None:
    history = views({1: NAN, 2: 0.0, 3: ...})
    kept = KeepAll().keep(history)
    assert set(kept) == {1, 2, 3}
    assert all("keep all" in reason for reason in kept.values())
    assert KeepNone().keep(history) == {}
    assert KeepAll().keep([]) == {}


# --- AnyOf ---------------------------------------------------------------------------------


def test_any_of_is_the_union_and_joins_reasons() -> None:
    history = [CheckpointView(s) for s in (1, 2, 3, 4, 5, 6)]
    policy = AnyOf((LatestN(2), EveryNSteps(2)))
    kept = policy.keep(history)
    assert set(kept) == {2, 4, 5, 6}
    assert "latest-2" in kept[6]
    assert "multiple of 2" in kept[6]
    assert "; " in kept[6]
    assert kept[5] == LatestN(2).keep(history)[5]
    assert kept[2] == "step is a multiple of 2"


def test_any_of_accepts_a_list_and_stores_a_tuple() -> None:
    policy = AnyOf([KeepNone(), LatestN(1)])  # type: ignore[arg-type]
    assert isinstance(policy.policies, tuple)
    assert policy == AnyOf((KeepNone(), LatestN(1)))
    assert set(policy.keep([CheckpointView(1), CheckpointView(2)])) == {2}


def test_any_of_empty_raises() -> None:
    with pytest.raises(ValueError, match="policies"):
        AnyOf(())
    with pytest.raises(ValueError, match="policies"):
        AnyOf([])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [ByMetric("m"), 3, "keep", None])
def test_any_of_rejects_non_policies(bad: object) -> None:
    with pytest.raises(TypeError, match="policies"):
        AnyOf((LatestN(1), bad))  # type: ignore[arg-type]


def test_any_of_nested() -> None:
    inner = AnyOf((EveryNSteps(3),))
    outer = AnyOf((inner, LatestN(1)))
    kept = outer.keep([CheckpointView(s) for s in range(1, 8)])
    assert set(kept) == {3, 6, 7}


# --- Constructor validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: TopK(-1, ByRecency()), "k"),
        (lambda: TopK(0, ByRecency()), "k"),
        (lambda: TopK(True, ByRecency()), "k"),
        (lambda: TopK(1.0, ByRecency()), "k"),  # type: ignore[arg-type]
        (lambda: TopK("2", ByRecency()), "k"),  # type: ignore[arg-type]
        (lambda: TopK(1, ByRecency(), every_n_steps=0), "every_n_steps"),
        (lambda: TopK(1, ByRecency(), every_n_steps=True), "every_n_steps"),
        (lambda: Hybrid(-1, ByRecency()), "k"),
        (lambda: Hybrid(False, ByRecency()), "k"),
        (lambda: Hybrid(1, ByRecency(), every_n_steps=-5), "every_n_steps"),
        (lambda: LatestN(0), "n"),
        (lambda: LatestN(-1), "n"),
        (lambda: LatestN(True), "n"),
        (lambda: EveryNSteps(0), "n"),
        (lambda: EveryNSteps(2.0), "n"),  # type: ignore[arg-type]
    ],
)
def test_bad_counts_raise_value_error_naming_the_field(factory: Any, field: str) -> None:
    with pytest.raises(ValueError, match=rf"\.{field} must be"):
        factory()


@pytest.mark.parametrize("cls", [TopK, Hybrid])
@pytest.mark.parametrize(
    "bad",
    ["m", None, 3, KeepAll(), object()],
    ids=lambda v: type(v).__name__ if type(v) is object else repr(v),
)
def test_ranking_that_is_not_a_ranking_raises_type_error(cls: Any, bad: object) -> None:
    with pytest.raises(TypeError, match=r"\.ranking"):
        cls(1, bad)


@pytest.mark.parametrize("cls", [TopK, Hybrid])
@pytest.mark.parametrize("bad", [ByMetric, ByRecency], ids=lambda c: c.__name__)
def test_ranking_class_instead_of_instance_is_rejected(cls: Any, bad: type) -> None:
    # A class has a ``rank`` attribute, but it is not a ranking: rank() needs an instance.
    with pytest.raises(TypeError, match=r"\.ranking"):
        cls(1, bad)


@pytest.mark.parametrize("bad", [KeepAll, LatestN], ids=lambda c: c.__name__)
def test_any_of_rejects_a_policy_class_instead_of_an_instance(bad: type) -> None:
    with pytest.raises(TypeError, match="policies"):
        AnyOf((LatestN(1), bad))  # type: ignore[arg-type]


def test_any_of_given_a_bare_policy_names_the_field() -> None:
    # A single policy not wrapped in a tuple: the error should say what AnyOf.policies wants.
    with pytest.raises(TypeError, match="policies"):
        AnyOf(LatestN(1))  # type: ignore[arg-type]


def test_policies_are_frozen() -> None:
    policy = TopK(1, ByRecency())
    with pytest.raises(AttributeError):
        policy.k = 2  # type: ignore[misc]


# --- repr round trips ----------------------------------------------------------------------

ALL_BUILT_INS = [
    ByMetric("loss"),
    ByMetric("reward", higher_is_better=False),
    ByMetric("name with 'quotes' and \"more\""),
    ByRecency(),
    TopK(3, ByMetric("loss", higher_is_better=False)),
    TopK(1, ByRecency(), every_n_steps=10),
    Hybrid(0, ByRecency()),
    Hybrid(2, ByMetric("acc"), every_n_steps=5),
    LatestN(4),
    EveryNSteps(100),
    KeepAll(),
    KeepNone(),
    AnyOf((LatestN(1),)),
    AnyOf((TopK(2, ByMetric("loss", False)), EveryNSteps(10), KeepNone())),
    AnyOf((AnyOf((LatestN(2), KeepAll())), Hybrid(1, ByRecency(), 3))),
    CheckpointView(3, {"loss": 0.5}, committed_at=1.5, pinned=True),
    Decision(4, keep=False, reason="x"),
]


@pytest.mark.parametrize("obj", ALL_BUILT_INS, ids=repr)
def test_repr_is_valid_python(obj: object) -> None:
    rebuilt = eval(repr(obj), vars(policies))
    assert rebuilt == obj
    assert type(rebuilt) is type(obj)


def test_equal_policies_hash_equal() -> None:
    assert hash(TopK(2, ByMetric("m"))) == hash(TopK(2, ByMetric("m")))
    assert TopK(2, ByMetric("m")) != TopK(2, ByMetric("m", higher_is_better=False))


# --- decide --------------------------------------------------------------------------------


def test_decide_sorted_by_step_with_keep_and_delete_reasons() -> None:
    history = views({5: 0.1, 1: 0.9, 3: 0.5, 2: 0.2})
    policy = TopK(2, ByMetric("m"))
    decisions = decide(policy, history)
    assert [d.step for d in decisions] == [1, 2, 3, 5]
    assert [d.keep for d in decisions] == [True, False, True, False]
    kept = policy.keep(history)
    assert decisions[0].reason == kept[1]
    assert decisions[2].reason == kept[3]
    for decision in decisions:
        if not decision.keep:
            assert repr(policy) in decision.reason
            assert "TopK" in decision.reason


def test_decide_pinned_always_kept() -> None:
    history = [CheckpointView(1, pinned=True), CheckpointView(2), CheckpointView(3, pinned=True)]
    decisions = decide(KeepNone(), history)
    assert decisions == [
        Decision(1, True, "pinned"),
        Decision(2, False, f"not kept by {KeepNone()!r}"),
        Decision(3, True, "pinned"),
    ]


def test_decide_pinned_and_kept_mentions_both() -> None:
    decisions = decide(KeepAll(), [CheckpointView(1, pinned=True)])
    assert decisions[0].keep
    assert "pinned" in decisions[0].reason
    assert "keep all" in decisions[0].reason


def test_decide_protected_steps_kept_with_their_reason() -> None:
    history = [CheckpointView(s) for s in (1, 2, 3)]
    decisions = decide(KeepNone(), history, protected={2: "save in flight", 99: "absent"})
    assert [d.step for d in decisions] == [1, 2, 3]
    assert decisions[1] == Decision(2, True, "save in flight")
    assert not decisions[0].keep
    assert not decisions[2].keep


def test_decide_ignores_unknown_steps_from_the_policy() -> None:
    class Overeager:
        def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
            return {1: "one", 42: "not a checkpoint", -1: "nor this"}

    decisions = decide(Overeager(), [CheckpointView(1), CheckpointView(2)])
    assert decisions == [
        Decision(1, True, "one"),
        Decision(2, False, decisions[1].reason),
    ]
    assert "Overeager" in decisions[1].reason


@pytest.mark.parametrize("answer", [[1, 2], {1, 2}, (1,), None, "1"], ids=repr)
def test_decide_rejects_a_policy_that_does_not_return_a_mapping(answer: object) -> None:
    class Wrong:
        def keep(self, checkpoints: Sequence[CheckpointView], /) -> object:
            return answer

    with pytest.raises(TypeError, match="mapping"):
        decide(Wrong(), [CheckpointView(1), CheckpointView(2)])  # type: ignore[arg-type]


def test_decide_empty_history() -> None:
    assert decide(KeepAll(), []) == []
    assert decide(Hybrid(2, ByRecency()), [], protected={1: "x"}) == []


def test_decide_hybrid_keeps_latest() -> None:
    decisions = decide(Hybrid(1, ByMetric("m")), views({1: 0.9, 2: 0.1, 3: 0.2}))
    assert [(d.step, d.keep) for d in decisions] == [(1, True), (2, False), (3, True)]
    assert "latest" in decisions[2].reason
    assert "Hybrid" in decisions[1].reason


def test_decide_does_not_depend_on_input_order() -> None:
    history = views({1: 0.5, 2: NAN, 3: 0.9, 4: 0.5, 5: ..., 6: 0.1})
    policy = AnyOf((Hybrid(2, ByMetric("m")), EveryNSteps(5)))
    expected = decide(policy, history, protected={2: "p"})
    rng = random.Random(3)
    for _ in range(20):
        shuffled = history[:]
        rng.shuffle(shuffled)
        assert decide(policy, shuffled, protected={2: "p"}) == expected


# --- Custom rankings and policies ------------------------------------------------------------


class ByStepParity:
    """Custom ranking: even steps first, then by step descending."""

    def rank(self, checkpoints: Sequence[CheckpointView], /) -> list[CheckpointView]:
        return sorted(checkpoints, key=lambda v: (v.step % 2, -v.step))

    def __repr__(self) -> str:
        return "ByStepParity()"


class KeepOdd:
    """Custom retention: keep odd steps."""

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
        return {v.step: "odd" for v in checkpoints if v.step % 2}


def test_custom_objects_satisfy_the_protocols() -> None:
    assert isinstance(ByStepParity(), Ranking)
    assert isinstance(KeepOdd(), RetentionPolicy)
    assert not isinstance(KeepOdd(), Ranking)
    assert not isinstance(ByStepParity(), RetentionPolicy)
    for ranking in (ByMetric("m"), ByRecency()):
        assert isinstance(ranking, Ranking)
    for policy in ALL_BUILT_INS[4:15]:
        assert isinstance(policy, RetentionPolicy)


def test_custom_ranking_works_with_topk_and_hybrid() -> None:
    history = [CheckpointView(s) for s in (1, 2, 3, 4, 5)]
    kept = TopK(2, ByStepParity()).keep(history)
    assert set(kept) == {4, 2}
    assert "ByStepParity()" in kept[4]
    assert set(Hybrid(1, ByStepParity()).keep(history)) == {4, 5}


def test_custom_policy_works_with_decide_and_any_of() -> None:
    history = [CheckpointView(s) for s in (1, 2, 3, 4)]
    decisions = decide(KeepOdd(), history)
    assert [(d.step, d.keep) for d in decisions] == [(1, True), (2, False), (3, True), (4, False)]
    assert decisions[0].reason == "odd"
    union = AnyOf((KeepOdd(), LatestN(1)))
    assert set(union.keep(history)) == {1, 3, 4}


def test_decide_converts_non_string_reasons_to_strings() -> None:
    class Numbered:
        def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, object]:
            return {v.step: v.step * 10 for v in checkpoints}

    decisions = decide(Numbered(), [CheckpointView(2)])  # type: ignore[arg-type]
    assert decisions == [Decision(2, True, "20")]


# --- Import isolation ----------------------------------------------------------------------


@pytest.mark.subprocess
def test_policies_never_imports_ckpt() -> None:
    code = "import policies, sys; assert 'ckpt' not in sys.modules, sorted(sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


# --- ByKey: a function of the training info as the ranking (issue 37 #12) -----------------------


def _reward_minus_kl(info: Any) -> Any:
    return info["reward"] - 0.1 * info["kl"]


def test_by_key_ranks_by_a_function_and_puts_what_it_cannot_score_last() -> None:
    ranking = policies.ByKey(_reward_minus_kl)
    views = [
        policies.CheckpointView(1, {"reward": 1.0, "kl": 2.0}),  # 0.8
        policies.CheckpointView(2, {"reward": 0.9, "kl": 0.1}),  # 0.89
        policies.CheckpointView(3, {"reward": 5.0}),  # no kl
        policies.CheckpointView(4, {"reward": float("nan"), "kl": 0.0}),
        policies.CheckpointView(5, {"reward": 0.9, "kl": 0.1}),  # ties with 2: higher step
    ]
    assert [v.step for v in ranking.rank(views)] == [5, 2, 1, 4, 3]
    lower = policies.ByKey(_reward_minus_kl, higher_is_better=False)
    assert [v.step for v in lower.rank(views)][:3] == [1, 5, 2]
    assert repr(ranking) == (f"ByKey({__name__}._reward_minus_kl, higher_is_better=True)")
    with pytest.raises(TypeError, match="ByKey needs a function"):
        policies.ByKey("reward")  # type: ignore[arg-type]


def test_by_key_drives_best_and_top_k_and_is_named_by_ckpt_ls(tmp_path: Path, capsys: Any) -> None:
    from ckpt.cli import main as cli_main

    run = tmp_path / "run"
    config = {"checkpoint_dir": str(run), "fsync": False, "keep_top_k": 1}
    with ckpt.CheckpointManager(config, ranking=policies.ByKey(_reward_minus_kl)) as manager:
        for step, (reward, kl) in enumerate([(1.0, 2.0), (0.9, 0.1), (0.5, 0.0)], 1):
            with manager.checkpoint(step, {"reward": reward, "kl": kl}):
                pass
        assert Path(manager.get_best_checkpoint_path() or "").name == "step_2"
        assert [r.step for r in manager.list_checkpoints()] == [2, 3]  # top-1 and the latest
    capsys.readouterr()
    assert cli_main(["ls", str(run)]) == 0
    assert "ranks by ByKey(" in capsys.readouterr().out
