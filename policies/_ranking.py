"""Rankings: orderings of checkpoints, best first."""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from policies._view import CheckpointView, metric_value


@runtime_checkable
class Ranking(Protocol):
    """Orders checkpoints from best to worst.

    Implement ``rank`` to plug a custom ordering into the manager: the same ranking
    decides which checkpoint is "best" and which ones top-k retention protects.
    """

    def rank(self, checkpoints: Sequence[CheckpointView], /) -> list[CheckpointView]:
        """Return ``checkpoints`` ordered best first.

        Args:
            checkpoints: The finalized checkpoints, in no particular order.

        Returns:
            The same views, best first. The result must not depend on the order the
            views were given in.
        """
        ...


V = TypeVar("V", bound=CheckpointView)


def ranked(ranking: Ranking, checkpoints: Sequence[V]) -> list[V]:
    """``ranking.rank(checkpoints)``, checked to be exactly those checkpoints, best first.

    A ranking of one's own that returns something else (steps, metrics, a generator
    already spent) would otherwise fail far from its cause, after a checkpoint was
    committed; every caller of ``rank`` in ckpt goes through here.

    Raises:
        TypeError: Naming the ranking and what it returned.
    """
    given = list(checkpoints)
    result = ranking.rank(given)
    out = list(result) if isinstance(result, (list, tuple)) else None
    ids = {id(view) for view in given}
    if out is None or len(out) != len(given) or not all(id(view) in ids for view in out):
        shown = reprlib.repr(result)
        raise TypeError(
            f"{ranking!r}.rank() must return the checkpoints it was given (the same "
            f"view objects, best first, as a list), got {shown}"
        )
    return cast(list[V], out)


@dataclass(frozen=True)
class ByMetric:
    """Rank by a metric in the training info.

    A checkpoint whose metric is missing, NaN, infinite or not a number ranks after
    every checkpoint that has a usable value, whatever the direction. Ties, and
    checkpoints without a usable value, go to the higher step.

    Attributes:
        name: The metric's key in ``training_info``.
        higher_is_better: Whether a larger value is better (reward, accuracy) or a
            smaller one (loss).
    """

    name: str
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ByMetric needs a non-empty metric name, got {self.name!r}")

    def rank(self, checkpoints: Sequence[CheckpointView], /) -> list[CheckpointView]:
        """Order ``checkpoints`` by the metric, best first (see the class docstring)."""
        return sorted(checkpoints, key=self.key)

    def key(self, view: CheckpointView, /) -> tuple[int, int | float, int]:
        """The sort key `rank` orders by, smallest first: a total order, ties by step."""
        value = metric_value(view.info, self.name)
        if value is None:
            return (1, 0, -view.step)
        return (0, -value if self.higher_is_better else value, -view.step)


@dataclass(frozen=True, repr=False)
class ByKey:
    """Rank by a number a function computes from each checkpoint's training info.

    Orbax's ``best_fn``: ``ByKey(lambda info: info["reward"] - 0.1 * info["kl"])``. A
    checkpoint for which ``key`` returns ``None``, NaN, infinity or no number, or raises
    `KeyError`, `TypeError`, `ValueError` or `ArithmeticError` (a metric it lacks),
    ranks after every checkpoint that has a value, as with `ByMetric`; ties go to the
    higher step.

    A manager records the ranking it uses (``.ckpt/ranking.json``) for ``ckpt ls`` and
    ``ckpt best``: a ``ByKey`` is recorded as its repr, which names ``key`` by its
    qualified name (give it a named function rather than a lambda, so that the record
    says which). The command line cannot rank by it; pass ``--metric`` there.

    Attributes:
        key: A function of the training info (a mapping) to a number.
        higher_is_better: Whether a larger number is better.
    """

    key: Callable[[Mapping[str, Any]], Any]
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not callable(self.key):
            raise TypeError(f"ByKey needs a function of the training info, got {self.key!r}")

    def __repr__(self) -> str:
        module = getattr(self.key, "__module__", None)
        name = getattr(self.key, "__qualname__", None) or repr(self.key)
        where = f"{module}.{name}" if module and module != "builtins" else name
        return f"ByKey({where}, higher_is_better={self.higher_is_better!r})"

    def rank(self, checkpoints: Sequence[CheckpointView], /) -> list[CheckpointView]:
        """Order ``checkpoints`` by ``key``, best first (see the class docstring)."""
        return sorted(checkpoints, key=self._sort_key)

    def _sort_key(self, view: CheckpointView, /) -> tuple[int, int | float, int]:
        try:
            found = self.key(view.info)
        except (KeyError, TypeError, ValueError, ArithmeticError):
            found = None
        value = metric_value({"value": found}, "value")
        if value is None:
            return (1, 0, -view.step)
        return (0, -value if self.higher_is_better else value, -view.step)


@dataclass(frozen=True)
class ByRecency:
    """Rank by step: the highest step is the best."""

    def rank(self, checkpoints: Sequence[CheckpointView], /) -> list[CheckpointView]:
        """Order ``checkpoints`` by step, highest first."""
        return sorted(checkpoints, key=self.key)

    def key(self, view: CheckpointView, /) -> int:
        """The sort key `rank` orders by, smallest first."""
        return -view.step
