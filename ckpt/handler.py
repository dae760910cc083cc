"""The seam between a save and a state format: `StateHandler`.

`CheckpointManager.save` and `save_async` never look inside the state they are given:
a handler checks it, writes this process's part of it into the save's attempt, copies
it to host memory for a background save, and reads it back. ckpt's own format is
``ckpt.torch.TorchHandler`` (the default; a state holding DTensors goes through
``torch.distributed.checkpoint``); pass ``handler=`` to save another format
(safetensors, a JAX pytree, plain bytes).

This module imports nothing but the standard library and `ckpt.storage`: a handler
of another framework needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ckpt.storage import Storage

__all__ = ["Part", "StateHandler", "WrittenFile"]


@dataclass(frozen=True)
class Part:
    """Which part of one save this process writes.

    Attributes:
        rank: This process's rank in the save's group (0 in a job of one process).
        size: How many processes write a part (1 in a job of one process).
        group: The torch.distributed process group of a collective save, ``None`` in a
            job of one process (a handler names its file by it: ``state.ckpt`` alone,
            ``state.rank00001-of-00004.ckpt`` in a group).
    """

    rank: int = 0
    size: int = 1
    group: Any = None


@dataclass(frozen=True)
class WrittenFile:
    """A file a handler wrote into the attempt, as the commit checks it.

    Attributes:
        name: Its path relative to the attempt (``state.ckpt``, ``shards/00001.bin``).
        size: Its size in bytes; with ``exact=False`` the least size it must have.
        exact: Whether ``size`` is exact (a format that knows only where its data ends,
            as DCP's metadata does, reports a least size).
        digest: The file's XXH3-128 hex digest, where the handler hashed the bytes as
            it wrote them (``xxhash.xxh3_128``); the commit records it instead of
            reading the file back. ``None``: the commit reads the file once to hash it.
    """

    name: str
    size: int
    exact: bool = True
    digest: str | None = None


@runtime_checkable
class StateHandler(Protocol):
    """How a state is checked, written, snapshotted and read back.

    Every method but `load` is called by the manager; `load` is for the loop that
    resumes (``handler.load(storage, path)``), so one object describes the format both
    ways. A handler holds no per-save state: one object serves every save.
    """

    def is_sharded(self, state: Any, /) -> bool:
        """Whether each rank writes a share of one state (DCP's DTensors).

        A sharded state is described by one metadata file for every rank; any other
        state is a whole state per rank.
        """
        ...

    def plan(self, state: Any, /) -> Any:
        """Check ``state`` and return what `write_part` needs to write it.

        It runs before anything is written, so that a state that cannot be saved
        leaves nothing behind; in a collective save every rank plans before the first
        round, and a rank's error fails the save on every rank.

        Raises:
            ckpt.SerializationError: If the state holds what the format cannot store.
        """
        ...

    def write_part(
        self, storage: Storage, attempt: str, state: Any, plan: Any, part: Part, /, *, fsync: bool
    ) -> list[WrittenFile]:
        """Write this process's part of ``state`` into ``attempt`` (a storage path).

        ``plan`` is `plan`'s answer for this ``state``, or ``None`` where it was not
        planned (a snapshot, or a sharded state): plan it then. Every file is written
        through ``storage`` (``Storage.open_write(path, durable=fsync)`` makes it appear
        whole or not at all). The files returned are checked against one listing of
        the attempt before it is committed.
        """
        ...

    def snapshot(self, state: Any, buffers: dict[Any, Any], /) -> Any:
        """A copy of ``state`` that the caller may change at once (`save_async`).

        ``buffers`` is kept from one save to the next of one manager: reuse what it
        holds where the shapes agree.
        """
        ...

    def load(self, storage: Storage, checkpoint: str, /, **options: Any) -> Any:
        """Read back the state saved into ``checkpoint`` (a storage path)."""
        ...
