"""Turning a policy's answer into a keep-or-delete decision for every checkpoint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from policies._retention import RetentionPolicy
from policies._view import CheckpointView


@dataclass(frozen=True)
class Decision:
    """What retention decided for one checkpoint.

    Attributes:
        step: The checkpoint's step.
        keep: ``True`` to keep it, ``False`` to delete it.
        reason: Why, in words (for dry runs and logs).
    """

    step: int
    keep: bool
    reason: str


def decide(
    policy: RetentionPolicy,
    checkpoints: Sequence[CheckpointView],
    *,
    protected: Mapping[int, str] | None = None,
) -> list[Decision]:
    """Decide, for every checkpoint, whether ``policy`` keeps it, and why.

    A pinned checkpoint is always kept, and so is every step in ``protected``,
    whatever the policy says. Steps the policy returns that are not among
    ``checkpoints`` are ignored.

    Args:
        policy: The retention policy to apply.
        checkpoints: The finalized checkpoints.
        protected: Extra steps to keep, each with its reason (for example the latest
            step, or one a save in flight is replacing).

    Returns:
        One decision per checkpoint, sorted by step.

    Raises:
        TypeError: If the policy does not return a mapping of steps to reasons.
    """
    kept = policy.keep(checkpoints)
    if not isinstance(kept, Mapping):
        raise TypeError(
            f"{policy!r}.keep() must return a mapping of step -> reason, got {type(kept).__name__}"
        )
    extra = protected or {}
    decisions = []
    for view in sorted(checkpoints, key=lambda v: v.step):
        reasons = []
        if view.pinned:
            reasons.append("pinned")
        if view.step in extra:
            reasons.append(extra[view.step])
        if view.step in kept:
            reasons.append(str(kept[view.step]))
        if reasons:
            decisions.append(Decision(view.step, True, "; ".join(reasons)))
        else:
            decisions.append(Decision(view.step, False, f"not kept by {policy!r}"))
    return decisions
