"""What a policy is allowed to see of a checkpoint."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CheckpointView:
    """A read-only view of one finalized checkpoint, as rankings and retention see it.

    Attributes:
        step: The training step the checkpoint was saved at.
        info: The checkpoint's training info (metrics and counters), read from its
            ``training_info.json``. Treat it as read-only.
        committed_at: When the checkpoint was published, in seconds since the epoch, or
            ``None`` where that is not known.
        pinned: Whether the checkpoint is pinned; a pinned checkpoint is never pruned.
    """

    step: int
    info: Mapping[str, Any] = field(default_factory=dict)
    committed_at: float | None = None
    pinned: bool = False


def metric_value(info: Mapping[str, Any], name: str) -> int | float | None:
    """Return the usable value of metric ``name`` in ``info``, or ``None``.

    A value is usable when it is a finite real number. Missing keys, ``None``, NaN,
    infinities, booleans and anything that is not a number give ``None``: such a
    checkpoint ranks after every checkpoint that has a usable value.

    Args:
        info: A checkpoint's training info.
        name: The metric's key in ``info``.

    Returns:
        The value unchanged (an ``int`` stays exact), or ``None`` when it is not usable.
    """
    value = info.get(name)
    kind = type(value)
    if kind is float:  # what JSON gives: answered without the ABC checks below (hot path)
        return value if math.isfinite(value) else None  # type: ignore[arg-type]
    if kind is int:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    try:
        as_float = float(value)
    except OverflowError:  # e.g. a huge Fraction: no finite float stands for it
        return None
    return as_float if math.isfinite(as_float) else None
