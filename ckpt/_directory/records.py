"""What the manager reports about a finalized checkpoint, and how it reads one."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

from ckpt import _layout
from ckpt._config.serialize import decode_training_info
from ckpt.commit.base import Committed
from ckpt.storage import CheckpointPath, user_path
from ckpt.storage.base import EntryKind, Storage, describe_kind, join
from policies import CheckpointView, Decision


@dataclass(frozen=True, kw_only=True)
class CheckpointRecord(CheckpointView):
    """A finalized checkpoint: a `policies.CheckpointView` plus where it lives.

    Attributes:
        step: The training step.
        path: The checkpoint's directory, ``checkpoint_dir/step_N`` (its attempt
            ``step_N.<token>`` under the manifest protocol): a `pathlib.Path` on
            local disk, a ``UPath`` on an fsspec store.
        info: Its training info; treat it as read-only.
        committed_at: When it was published (the directory's modification time).
        pinned: Whether it is pinned against pruning.
        damaged: Whether a deep check (``verify(deep=True)``, ``ckpt check --deep``)
            found a file of it that does not match its recorded digest; best and
            latest skip it.
    """

    path: CheckpointPath
    damaged: bool = False


@dataclass(frozen=True)
class Overview:
    """One consistent look at a directory: what `CheckpointManager.overview` returns.

    Attributes:
        records: Every finalized checkpoint, sorted by step.
        decisions: What retention decides for each (as `plan_retention` says), sorted
            by step.
        best: The best checkpoint by the ranking (as `get_best_checkpoint_path`), or
            ``None`` without checkpoints.
        latest: The checkpoint with the highest step (of those a deep check did not
            find damaged), or ``None``.
    """

    records: tuple[CheckpointRecord, ...]
    decisions: tuple[Decision, ...]
    best: CheckpointRecord | None
    latest: CheckpointRecord | None


class NotACheckpointError(Exception):
    """A ``step_N`` entry that is not a checkpoint; ``code`` says why (for `verify`)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class VanishedError(NotACheckpointError):
    """The entry was removed or replaced while it was read: a live writer's doing."""

    def __init__(self) -> None:
        super().__init__("vanished", "it was removed while it was read")


def load_record(
    storage: Storage,
    checkpoint: Committed,
    kind: EntryKind,
    shown: CheckpointPath | None = None,
) -> CheckpointRecord:
    """Read the committed ``checkpoint``, whose listing entry is of ``kind``.

    ``shown`` is the record's ``path`` when the caller has it as a `Path` already (a
    directory's ``Path`` joined with one name costs a tenth of parsing the whole string).

    A writer may prune or replace ``step_N`` while it is read: a read that fails is
    looked at again, and a checkpoint that is gone is `VanishedError` (a race, not
    damage), one that was replaced is read anew.

    Raises:
        NotACheckpointError: If it is not a directory with a readable training info.
        VanishedError: If it disappeared while it was read.
    """
    step, path, version, mtime = (
        checkpoint.step,
        checkpoint.path,
        checkpoint.version,
        checkpoint.mtime,
    )
    # A manifest names its attempt; the entry that changes on a replace is the manifest.
    watched = checkpoint.manifest if checkpoint.manifest is not None else path
    for _ in range(3):
        if kind != "dir":
            raise NotACheckpointError(
                "not_a_directory",
                f"it is a {describe_kind(kind)}, not a checkpoint directory",
            )
        try:
            carried = checkpoint.training_info
            raw = (
                carried
                if carried is not None
                else storage.read_bytes(join(path, _layout.INFO_FILE))
            )
            info = decode_training_info(raw)
        except (OSError, ValueError) as exc:
            now = storage.entry(watched)
            if now is None:
                raise VanishedError from exc
            if now.version == version or checkpoint.manifest is not None:
                raise NotACheckpointError(
                    "unreadable_info", f"no readable {_layout.INFO_FILE} ({exc})"
                ) from exc
            version, mtime, kind = now.version, now.mtime, now.kind
            continue
        return CheckpointRecord(
            step=step,
            path=shown if shown is not None else user_path(storage, path),
            info=MappingProxyType(info),
            committed_at=mtime,
        )
    raise VanishedError  # replaced on every look: a writer overwriting it in a loop


def describe_steps(steps: Iterable[int]) -> str:
    """``1-4, 7, 9-12``: runs of consecutive steps, the first ten runs at most."""
    ordered = sorted(steps)
    runs: list[list[int]] = []
    for step in ordered:
        if runs and step == runs[-1][-1] + 1:
            runs[-1].append(step)
        else:
            runs.append([step])
    parts = [f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs]
    return ", ".join(parts[:10]) + (f", ... ({len(ordered)} in all)" if len(parts) > 10 else "")


@dataclass(frozen=True)
class PreemptionRecord:
    """The last preemption of a run, as ``.ckpt/preemption.json`` records it.

    `CheckpointManager.last_preemption` returns it and ``ckpt ls`` shows it.

    Attributes:
        signal: The signal's name (``"SIGTERM"``).
        received_at: When it came (seconds since the epoch).
        grace_s: The grace the config gave.
        step: The step committed for it, or ``None`` if nothing was.
        emergency: Whether that was the watchdog's emergency save (the newest
            ``save_async`` snapshot, committed because no save was started by the
            middle of the grace) rather than the loop's save at a step boundary.
        skipped: Snapshots still queued that the emergency save dropped for a newer one.
        saved_after_s: Seconds from the signal to that commit.
    """

    signal: str
    received_at: float
    grace_s: float
    step: int | None
    emergency: bool
    skipped: tuple[int, ...] = ()
    saved_after_s: float | None = None

    def describe(self) -> str:
        """One line for `ckpt ls` and the log."""
        if self.step is None:
            saved = "nothing was committed for it"
        else:
            how = (
                "the emergency save of the newest save_async snapshot"
                if self.emergency
                else ("saved at the next step boundary")
            )
            after = "" if self.saved_after_s is None else f" {self.saved_after_s:.1f} s after it"
            late = (self.saved_after_s or 0.0) - self.grace_s
            after += f", late by {late:.1f} s" if late > 0 else ""
            saved = f"step {self.step} was committed{after} ({how})"
        if self.skipped:
            saved += f"; queued snapshots of step(s) {', '.join(map(str, self.skipped))} dropped"
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.received_at))
        return f"preempted by {self.signal} at {when} (grace {self.grace_s:g} s): {saved}"
