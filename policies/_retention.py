"""Retention policies: which finalized checkpoints to keep, and why."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from policies._incremental import (
    Bounded,
    IncrementalPart,
    PerCheckpoint,
    fixed_key,
    incremental_parts,
)
from policies._ranking import ByRecency, Ranking, ranked
from policies._view import CheckpointView


@runtime_checkable
class RetentionPolicy(Protocol):
    """Chooses the checkpoints to keep.

    Implement ``keep`` to plug a custom policy into the manager. Every checkpoint that
    is not returned (and is not pinned or otherwise protected by the manager) is
    deleted.
    """

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> Mapping[int, str]:
        """Return the steps to keep, each with a short human-readable reason.

        Args:
            checkpoints: The finalized checkpoints, in no particular order.

        Returns:
            A mapping from each kept step to the reason it is kept. The result must not
            depend on the order the views were given in.
        """
        ...


def _check_count(owner: str, field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{field} must be an integer >= {minimum}, got {value!r}")


def _check_ranking(owner: str, ranking: object) -> None:
    if isinstance(ranking, type) or not isinstance(ranking, Ranking):
        raise TypeError(
            f"{owner}.ranking must have a rank(checkpoints) method "
            f"(ByMetric, ByRecency or your own), got {ranking!r}"
        )


def _top(
    k: int, ranking: Ranking, every_n_steps: int | None, checkpoints: Sequence[CheckpointView]
) -> dict[int, str]:
    candidates = [
        view for view in checkpoints if every_n_steps is None or view.step % every_n_steps == 0
    ]
    best = ranked(ranking, candidates)[:k]
    scope = f" among multiples of {every_n_steps}" if every_n_steps is not None else ""
    return {view.step: f"top-{k}{scope} by {ranking!r}: #{i}" for i, view in enumerate(best, 1)}


@dataclass(frozen=True)
class TopK:
    """Keep the ``k`` best checkpoints by ``ranking``.

    The latest checkpoint gets no exemption: use `Hybrid` to always keep it too.

    Attributes:
        k: How many to keep; at least 1.
        ranking: The ordering that decides what "best" means.
        every_n_steps: When set, only steps that are multiples of it are candidates
            (NeMo RL's ``save_period``); other steps are not kept by this policy.
    """

    k: int
    ranking: Ranking
    every_n_steps: int | None = None

    def __post_init__(self) -> None:
        _check_count("TopK", "k", self.k, 1)
        _check_ranking("TopK", self.ranking)
        if self.every_n_steps is not None:
            _check_count("TopK", "every_n_steps", self.every_n_steps, 1)

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
        """Keep the ``k`` best (see the class docstring)."""
        return _top(self.k, self.ranking, self.every_n_steps, checkpoints)

    def incremental(self) -> tuple[IncrementalPart, ...] | None:
        """One bounded part, where the ranking sorts by a fixed key."""
        key = fixed_key(self.ranking)
        return None if key is None else (Bounded(self.k, key, self.every_n_steps),)


@dataclass(frozen=True)
class Hybrid:
    """Keep the ``k`` best checkpoints by ``ranking``, plus the latest one.

    This is the seed's behaviour for ``keep_top_k``: at most ``k + 1`` checkpoints
    survive, and the one a restart resumes from is never pruned. ``k=0`` keeps only
    the latest.

    Attributes:
        k: How many of the best to keep; at least 0.
        ranking: The ordering that decides what "best" means.
        every_n_steps: When set, only steps that are multiples of it compete for the
            top ``k`` (NeMo RL's ``save_period``).
    """

    k: int
    ranking: Ranking
    every_n_steps: int | None = None

    def __post_init__(self) -> None:
        _check_count("Hybrid", "k", self.k, 0)
        _check_ranking("Hybrid", self.ranking)
        if self.every_n_steps is not None:
            _check_count("Hybrid", "every_n_steps", self.every_n_steps, 1)

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
        """Keep the ``k`` best and the latest (see the class docstring)."""
        kept = _top(self.k, self.ranking, self.every_n_steps, checkpoints) if self.k else {}
        if checkpoints:
            latest = max(view.step for view in checkpoints)
            kept.setdefault(latest, "latest step (exempt from top-k)")
        return kept

    def incremental(self) -> tuple[IncrementalPart, ...] | None:
        """One bounded part plus the latest, where the ranking sorts by a fixed key."""
        key = fixed_key(self.ranking)
        if key is None:
            return None
        return (Bounded(self.k, key, self.every_n_steps, plus_latest=True),)

    def without_latest(self) -> TopK | KeepNone:
        """Return this policy without its latest-step exemption."""
        if self.k == 0:
            return KeepNone()
        return TopK(self.k, self.ranking, self.every_n_steps)


@dataclass(frozen=True)
class LatestN:
    """Keep the ``n`` checkpoints with the highest steps.

    Attributes:
        n: How many to keep; at least 1.
    """

    n: int

    def __post_init__(self) -> None:
        _check_count("LatestN", "n", self.n, 1)

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
        """Keep the ``n`` most recent steps."""
        steps = sorted((view.step for view in checkpoints), reverse=True)[: self.n]
        return {step: f"latest-{self.n}: #{i}" for i, step in enumerate(steps, 1)}

    def incremental(self) -> tuple[IncrementalPart, ...]:
        """One bounded part: the ``n`` highest steps."""
        return (Bounded(self.n, ByRecency().key),)


@dataclass(frozen=True)
class EveryNSteps:
    """Keep every checkpoint whose step is a multiple of ``n`` (step 0 included).

    Attributes:
        n: The period in steps; at least 1.
    """

    n: int

    def __post_init__(self) -> None:
        _check_count("EveryNSteps", "n", self.n, 1)

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
        """Keep the steps that are multiples of ``n``."""
        return {
            view.step: f"step is a multiple of {self.n}"
            for view in checkpoints
            if view.step % self.n == 0
        }

    def incremental(self) -> tuple[IncrementalPart, ...]:
        """Each step is kept or not by itself."""
        return (PerCheckpoint(self),)


@dataclass(frozen=True)
class KeepAll:
    """Keep every checkpoint: nothing is ever pruned."""

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
        """Keep every step."""
        return {view.step: "keep all" for view in checkpoints}

    def incremental(self) -> tuple[IncrementalPart, ...]:
        """Each step is kept by itself."""
        return (PerCheckpoint(self),)


@dataclass(frozen=True)
class KeepNone:
    """Keep nothing by itself: only pinned or otherwise protected checkpoints survive.

    Useful as a part of `AnyOf`, or what a `Hybrid` with ``k=0`` becomes without its
    latest-step exemption.
    """

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
        """Keep no step."""
        return {}

    def incremental(self) -> tuple[IncrementalPart, ...]:
        """No part: nothing is kept."""
        return ()


@dataclass(frozen=True)
class AnyOf:
    """Keep a checkpoint when any of ``policies`` keeps it (their union).

    Attributes:
        policies: The policies to combine; at least one.
    """

    policies: tuple[RetentionPolicy, ...]

    def __post_init__(self) -> None:
        if isinstance(self.policies, RetentionPolicy) or not hasattr(self.policies, "__iter__"):
            raise TypeError(
                f"AnyOf.policies must be a tuple of policies, got {self.policies!r}; "
                f"write AnyOf((first, second))"
            )
        policies = tuple(self.policies)
        if not policies:
            raise ValueError("AnyOf.policies needs at least one policy, got none")
        for policy in policies:
            if isinstance(policy, type) or not isinstance(policy, RetentionPolicy):
                raise TypeError(
                    f"AnyOf.policies must hold objects with a keep(checkpoints) method, "
                    f"got {policy!r}"
                )
        object.__setattr__(self, "policies", policies)

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
        """Keep the union of what each part keeps, joining their reasons."""
        reasons: dict[int, list[str]] = {}
        for policy in self.policies:
            for step, reason in policy.keep(checkpoints).items():
                reasons.setdefault(step, []).append(reason)
        return {step: "; ".join(parts) for step, parts in reasons.items()}

    def incremental(self) -> tuple[IncrementalPart, ...] | None:
        """The parts of every policy, where each declares its own."""
        found: list[IncrementalPart] = []
        for policy in self.policies:
            parts = incremental_parts(policy)
            if parts is None:
                return None
            found += parts
        return tuple(found)
