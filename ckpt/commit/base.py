"""What a commit protocol is, and what it reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ckpt.commit.reaper import Reaper
from ckpt.storage import CheckpointPath, Storage

CommitKind = Literal["rename", "manifest"]

RecoveryKind = Literal[
    "removed_temporary",
    "rolled_back_overwrite",
    "removed_displaced",
    "finished_delete",
    "removed_broken_manifest",
]


@dataclass(frozen=True)
class Place:
    """A checkpoint directory, bound once to its storage and to how durably it is changed.

    Every change a protocol, a delete or a recovery makes takes one `Place`: the
    ``durable`` choice (fsync every file and directory, or not) is made where the
    place is built, as DCP's ``FileSystemWriter(sync_files=...)`` makes it, and never
    passed call by call.

    Attributes:
        storage: Where the directory is.
        directory: The checkpoint directory, as a storage path.
        durable: Whether each change is synced to the disk before it counts as done.
        reaper: Removes what deletes took out of sight, in the background (a writer's
            place has one); without one, `reap` removes at once.
    """

    storage: Storage
    directory: str
    durable: bool
    reaper: Reaper | None = field(default=None, compare=False)

    def sync(self, path: str | None = None) -> None:
        """Sync the directory (or ``path``, a directory in it), where this place is durable."""
        if self.durable:
            self.storage.sync_dir(self.directory if path is None else path)

    def reap(self, path: str) -> None:
        """Remove ``path``, which a delete has taken out of sight already (see `Reaper`)."""
        if self.reaper is not None:
            self.reaper.submit(path)
        else:
            self.storage.remove_tree(path)


@dataclass(frozen=True)
class Committed:
    """Where a committed checkpoint is, and which protocol committed it.

    Attributes:
        step: The training step.
        kind: ``"rename"`` (a ``step_N`` directory) or ``"manifest"`` (an attempt
            prefix ``step_N.<token>`` named by ``step_N.manifest.json``).
        path: The checkpoint's files: ``step_N``, or the attempt prefix.
        version: Changes when the checkpoint is replaced (the entry's version).
        mtime: When it was committed.
        manifest: The manifest's path (manifest protocol only).
        training_info: The training info the manifest carries (manifest protocol
            only), so that reading a checkpoint takes no request more.
    """

    step: int
    kind: CommitKind
    path: str
    version: str
    mtime: float
    manifest: str | None = None
    training_info: bytes | None = None


@dataclass(frozen=True)
class RecoveryAction:
    """One thing restart recovery did to a checkpoint directory.

    Attributes:
        kind: What was done: ``"removed_temporary"``, ``"rolled_back_overwrite"``,
            ``"removed_displaced"``, ``"finished_delete"`` or
            ``"removed_broken_manifest"``.
        path: The entry acted on.
        detail: A sentence for logs and reports.
    """

    kind: RecoveryKind
    path: CheckpointPath
    detail: str


class CommitProtocol(Protocol):
    """How a finished attempt becomes a checkpoint that survives any crash.

    A protocol gives each save an attempt (a place for its files), and commits it;
    reading, deleting and recovering know every protocol (`ckpt.commit.scan`,
    `ckpt.commit.delete`, `ckpt.commit.recover`), so a directory stays readable
    whichever one wrote it.
    """

    @property
    def name(self) -> CommitKind:
        """``"rename"`` or ``"manifest"``."""
        ...

    def prepare(self, place: Place, step: int) -> str:
        """Make and return a fresh, empty attempt for ``step`` in the place's directory."""
        ...

    def attempt_step(self, name: str) -> int | None:
        """The step of an attempt named ``name`` (as `prepare` names them), else ``None``."""
        ...

    def commit(
        self,
        place: Place,
        attempt: str,
        step: int,
        *,
        existing: Committed | None,
        training_info: bytes | None = None,
        digests: Mapping[str, str] | None = None,
    ) -> Committed:
        """Make the finished ``attempt`` the checkpoint of ``step``, atomically.

        ``existing`` is the checkpoint of ``step`` it replaces, if any; it is removed
        once the new one is committed. ``training_info`` is the attempt's
        ``training_info.json`` when the caller has read it already. The commit records
        every file's size and digest; ``digests`` are those other processes computed
        as they wrote their files (by path under the attempt), so they are not read.
        """
        ...
