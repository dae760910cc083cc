"""How a retention policy can be applied per save, at a cost that does not grow with history.

A policy that declares ``incremental()`` tells the manager the shape of what it keeps,
as a union of parts of two shapes:

* `PerCheckpoint`: a checkpoint is kept or not by itself alone (``keep([view])``), so
  its answer never changes once given (`KeepAll`, `EveryNSteps`).
* `Bounded`: at most ``k`` eligible checkpoints, the smallest by a fixed ``key`` (and,
  with ``plus_latest``, the latest of all), so a new checkpoint can only enter the set,
  pushing out at most one other (`TopK`, `Hybrid`, `LatestN`).

The manager keeps each bounded part's answer in a heap: a save costs O(log N) per
part. ``incremental()`` returning ``None`` (or not being there) means "decide over
every checkpoint", which is always correct. The shape must describe ``keep`` exactly:
`incremental_parts` trusts a declaration only from the class that defines ``keep``,
so a subclass that changes ``keep`` without declaring its own shape is decided in full.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policies._view import CheckpointView


@dataclass(frozen=True)
class PerCheckpoint:
    """A part whose ``keep([view])`` decides each checkpoint by itself alone.

    Attributes:
        policy: The part; the manager asks it about each new checkpoint alone.
    """

    policy: Any


@dataclass(frozen=True)
class Bounded:
    """A part that keeps the ``k`` eligible checkpoints smallest by ``key``.

    Attributes:
        k: How many it keeps (0: none but the latest, with ``plus_latest``).
        key: A fixed sort key per checkpoint, smallest first (a ranking's ``key``).
        every_n_steps: When set, only multiples of it are eligible.
        plus_latest: Whether the latest checkpoint of all is kept too (`Hybrid`).
    """

    k: int
    key: Callable[[CheckpointView], Any]
    every_n_steps: int | None = None
    plus_latest: bool = False


IncrementalPart = PerCheckpoint | Bounded


def _declared_with(kind: type, declared: str, behaviour: str) -> bool:
    """Whether the class that gives ``kind`` its ``declared`` also gives its ``behaviour``."""
    for klass in kind.__mro__:
        has_declared, has_behaviour = declared in vars(klass), behaviour in vars(klass)
        if has_declared or has_behaviour:
            return has_declared and has_behaviour
    return False


def fixed_key(ranking: Any) -> Callable[[CheckpointView], Any] | None:
    """The ranking's ``key``, where ``rank`` is a sort by it (declared by one class)."""
    if not _declared_with(type(ranking), "key", "rank"):
        return None
    key: Callable[[CheckpointView], Any] = ranking.key
    return key


def incremental_parts(policy: Any) -> tuple[IncrementalPart, ...] | None:
    """The parts ``policy`` declares (see the module docstring), or ``None``."""
    if not _declared_with(type(policy), "incremental", "keep"):
        return None
    parts: tuple[IncrementalPart, ...] | None = policy.incremental()
    return parts
