"""What the manager reports about a finalized checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from policies import CheckpointView


@dataclass(frozen=True, kw_only=True)
class CheckpointRecord(CheckpointView):
    """A finalized checkpoint: a `policies.CheckpointView` plus where it lives.

    Attributes:
        step: The training step.
        path: The checkpoint's directory, ``checkpoint_dir/step_N``.
        info: Its training info; treat it as read-only.
        committed_at: When it was published (the directory's modification time).
        pinned: Whether it is pinned against pruning.
    """

    path: Path
