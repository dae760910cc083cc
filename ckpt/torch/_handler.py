"""ckpt's own state format as a `ckpt.handler.StateHandler`: the manager's default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckpt.handler import Part, WrittenFile
from ckpt.storage import Storage
from ckpt.torch import _ranks
from ckpt.torch._format import STATE_FILE
from ckpt.torch._io import load_state, save_file
from ckpt.torch._plan import plan_state
from ckpt.torch._snapshot import Buffers, snapshot


@dataclass(frozen=True)
class TorchHandler:
    """Nested dicts of tensors in ckpt's file format; DTensors in DCP's.

    Alone, a process writes `STATE_FILE` (``state.ckpt``); each rank of a collective
    save writes ``state.rank<r>-of-<n>.ckpt``; a state holding DTensors is saved with
    ``torch.distributed.checkpoint`` into the attempt's root, and rank 0 reports every
    rank's files from DCP's metadata. `load` is `ckpt.torch.load_state`.
    """

    def is_sharded(self, state: Any, /) -> bool:
        """Whether ``state`` holds a DTensor anywhere (then DCP saves it)."""
        return _ranks.is_sharded(state)

    def plan(self, state: Any, /) -> Any:
        """Check ``state`` and lay out its file (`ckpt.torch.save_state`'s check).

        Raises:
            ckpt.SerializationError: If the state holds what the format cannot store.
        """
        return plan_state(state)

    def write_part(
        self, storage: Storage, attempt: str, state: Any, plan: Any, part: Part, /, *, fsync: bool
    ) -> list[WrittenFile]:
        """Write this process's state file, or its share of a DCP checkpoint."""
        if self.is_sharded(state):
            metadata = _ranks.save_dcp(storage, attempt, state, part.group, fsync=fsync)
            if part.rank != 0:
                return []  # DCP's metadata names every rank's files: rank 0 reports them
            files = _ranks.dcp_files(metadata)
            return [WrittenFile(_ranks.DCP_METADATA, 1, exact=False)] + [
                WrittenFile(name, size, exact=False) for name, size in files.items()
            ]
        name = STATE_FILE if part.group is None else _ranks.rank_file(part.rank, part.size)
        planned = plan if plan is not None else plan_state(state)
        _, size, digest = save_file(attempt, planned, name, fsync=fsync, storage=storage)
        return [WrittenFile(name, size, digest=digest)]

    def snapshot(self, state: Any, buffers: Buffers, /) -> Any:
        """Copy ``state`` into host buffers reused from save to save (ties kept)."""
        return snapshot(state, buffers)

    def load(self, storage: Storage, checkpoint: str, /, **options: Any) -> Any:
        """`ckpt.torch.load_state` of ``checkpoint``; ``options`` are its keywords."""
        return load_state(checkpoint, storage=storage, **options)
