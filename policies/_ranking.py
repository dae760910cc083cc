"""Rankings: orderings of checkpoints, best first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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


@dataclass(frozen=True)
class ByRecency:
    """Rank by step: the highest step is the best."""

    def rank(self, checkpoints: Sequence[CheckpointView], /) -> list[CheckpointView]:
        """Order ``checkpoints`` by step, highest first."""
        return sorted(checkpoints, key=self.key)

    def key(self, view: CheckpointView, /) -> int:
        """The sort key `rank` orders by, smallest first."""
        return -view.step
