"""Pure ranking and retention policies for checkpoints: no I/O, no clock.

A policy sees read-only `CheckpointView`s and returns a decision; only the manager in
the ``ckpt`` package touches the disk.
"""

from policies._decide import Decision, decide
from policies._incremental import (
    Bounded,
    PerCheckpoint,
    fixed_key,
    incremental_parts,
)
from policies._ranking import ByKey, ByMetric, ByRecency, Ranking, ranked
from policies._retention import (
    AnyOf,
    EveryNSteps,
    Hybrid,
    KeepAll,
    KeepNone,
    LatestN,
    RetentionPolicy,
    TopK,
)
from policies._view import CheckpointView, metric_value

__all__ = [
    "AnyOf",
    "Bounded",
    "ByKey",
    "ByMetric",
    "ByRecency",
    "CheckpointView",
    "Decision",
    "EveryNSteps",
    "Hybrid",
    "KeepAll",
    "KeepNone",
    "LatestN",
    "PerCheckpoint",
    "Ranking",
    "RetentionPolicy",
    "TopK",
    "decide",
    "fixed_key",
    "incremental_parts",
    "metric_value",
    "ranked",
]
