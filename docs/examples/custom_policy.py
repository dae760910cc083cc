"""A custom ranking and a custom retention policy, plugged into a manager.

An RL run logs a reward and the KL divergence from the reference policy. A checkpoint
whose KL is over budget may have a high reward by exploiting the reward model, so it
should never count as "best". The run also flags milestones (the end of a curriculum
stage) that must be kept whatever their reward.

Run it with ``python docs/examples/custom_policy.py``; the documentation's test suite
runs it too (tests/test_docs.py).
"""

from __future__ import annotations

# --8<-- [start:imports]
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ckpt import CheckpointManager
from policies import AnyOf, CheckpointView, LatestN, TopK, decide, metric_value

# --8<-- [end:imports]


# --8<-- [start:ranking]
@dataclass(frozen=True)
class RewardWithinKL:
    """Rank by reward, best first, among checkpoints whose KL is within budget.

    A checkpoint over the budget, or without a usable reward or KL, ranks after every
    checkpoint within it. Ties go to the higher step, as in the built-in rankings, so
    the order never depends on the order the checkpoints are given in.
    """

    max_kl: float
    reward: str = "reward"
    kl: str = "kl"

    def rank(self, checkpoints: Sequence[CheckpointView], /) -> list[CheckpointView]:
        """Order ``checkpoints`` best first."""
        return sorted(checkpoints, key=self._key)

    def _key(self, view: CheckpointView) -> tuple[int, float, int]:
        # metric_value gives None for a missing, NaN, infinite or non-numeric value.
        reward = metric_value(view.info, self.reward)
        kl = metric_value(view.info, self.kl)
        if reward is None or kl is None or kl > self.max_kl:
            return (1, 0.0, -view.step)
        return (0, -reward, -view.step)


# --8<-- [end:ranking]


# --8<-- [start:retention]
@dataclass(frozen=True)
class KeepMilestones:
    """Keep every checkpoint saved with ``"milestone": true`` in its training info."""

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
        """Return the milestone steps, each with the reason it is kept."""
        return {
            view.step: f"milestone {view.info.get('stage', '')}".strip()
            for view in checkpoints
            if view.info.get("milestone") is True
        }


# --8<-- [end:retention]


# --8<-- [start:manager]
def open_manager(checkpoint_dir: Path) -> CheckpointManager:
    """A manager that keeps the 2 best within the KL budget, the latest and milestones."""
    ranking = RewardWithinKL(max_kl=0.1)
    retention = AnyOf((TopK(2, ranking), LatestN(1), KeepMilestones()))
    # `ranking=` also decides get_best_checkpoint_path, so "best" is what TopK protects.
    return CheckpointManager(
        {"checkpoint_dir": str(checkpoint_dir)}, ranking=ranking, retention=retention
    )


# --8<-- [end:manager]

# (step, reward, kl, milestone): step 3 has the highest reward, with a KL over budget.
RUN = [
    (1, 0.10, 0.02, False),
    (2, 0.30, 0.03, False),
    (3, 0.90, 0.40, False),
    (4, 0.45, 0.05, True),
    (5, 0.50, 0.06, False),
    (6, 0.20, 0.08, False),
    (7, 0.40, 0.07, False),
    (8, 0.35, 0.09, False),
]


# --8<-- [start:run]
def run(checkpoint_dir: Path) -> CheckpointManager:
    """Simulate a short run; return the (still open) manager."""
    manager = open_manager(checkpoint_dir)
    for step, reward, kl, milestone in RUN:
        info = {"step": step, "reward": reward, "kl": kl}
        if milestone:
            info.update(milestone=True, stage="curriculum-1")
        with manager.checkpoint(step, info) as path:
            (path / "model.bin").write_bytes(b"weights of step %d" % step)
    return manager


def main(directory: str | None = None) -> None:
    """Run the simulation and print, for every checkpoint left, why it is kept."""
    with (
        tempfile.TemporaryDirectory() as scratch,
        run(Path(directory or scratch) / "checkpoints") as manager,
    ):
        for decision in manager.plan_retention():
            print(f"step {decision.step}: {decision.reason}")
        print("best:", manager.get_best_checkpoint_path())


# --8<-- [end:run]


# --8<-- [start:pure]
def check_without_disk() -> None:
    """Policies are pure: test them on views built by hand, with no directory."""
    views = [
        CheckpointView(step=1, info={"reward": 0.2, "kl": 0.01}, pinned=True),
        CheckpointView(step=2, info={"reward": 0.9, "kl": 0.50}),
        CheckpointView(step=3, info={"reward": 0.4, "kl": 0.02, "milestone": True}),
    ]
    policy = AnyOf((TopK(1, RewardWithinKL(max_kl=0.1)), KeepMilestones()))
    decisions = decide(policy, views)  # what the manager would apply, with reasons
    assert [d.step for d in decisions if d.keep] == [1, 3]
    assert decisions[0].reason == "pinned"  # pins are kept whatever the policy says
    assert decisions[2].reason.endswith(": #1; milestone")
    assert decide(policy, views[::-1]) == decisions  # the order of views must not matter


# --8<-- [end:pure]

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
