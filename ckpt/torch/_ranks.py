"""Each rank's part of a distributed checkpoint: a state file per rank, or DCP's files.

A rank saving plain tensors writes its own state file, named for its rank and the
world size (``state.rank00001-of-00004.ckpt``), so a loader knows which file is its
own and when the world size changed. State holding DTensors is saved with
``torch.distributed.checkpoint`` (DCP) into the checkpoint's root (its ``.metadata``
and ``__<rank>_0.distcp`` files), so DCP's format and its resharding on load are
kept, and ``torch.distributed.checkpoint.load`` reads the directory as it is.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

from ckpt import _layout
from ckpt._errors import SerializationError
from ckpt._unpickle import load_dcp_metadata, load_weights_only
from ckpt.storage import LocalStorage, Storage, join
from ckpt.torch._snapshot import sharded_tensor_type

DCP_METADATA = ".metadata"
RANK_FILE = re.compile(r"state\.rank(\d{5})-of-(\d{5})\.ckpt")


def rank_file(rank: int, world_size: int) -> str:
    """The state file of ``rank`` in a job of ``world_size`` ranks."""
    return f"state.rank{rank:05d}-of-{world_size:05d}.ckpt"


def is_sharded(state: Any) -> bool:
    """Whether ``state`` holds a DTensor anywhere (then DCP saves it)."""
    DTensor = sharded_tensor_type()
    if DTensor is None:  # torch.distributed.tensor not imported: no DTensor exists
        return False
    stack = [state]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, DTensor):
            return True
        if id(node) in seen:
            continue
        if isinstance(node, Mapping):
            seen.add(id(node))
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            seen.add(id(node))
            stack.extend(node)
    return False


def local_dir(storage: Storage, where: str, what: str) -> str:
    """``where`` as a local path DCP can write or read; `ValueError` on another storage."""
    if not isinstance(storage, LocalStorage):
        raise ValueError(
            f"{what} state holding DTensors goes through torch.distributed.checkpoint's "
            f"file system writer, which needs a local or shared file system; {where} is "
            f"on {storage!r}"
        )
    return where


def save_dcp(storage: Storage, where: str, state: Any, process_group: Any, *, fsync: bool) -> Any:
    """Save ``state`` with DCP into ``where``, collectively over ``process_group``.

    Returns DCP's `Metadata` (every rank gets it).
    """
    from torch.distributed.checkpoint.filesystem import FileSystemWriter  # noqa: PLC0415
    from torch.distributed.checkpoint.state_dict_saver import save  # noqa: PLC0415

    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise TypeError("state holding DTensors must be a dict with string keys, as DCP takes")
    writer = FileSystemWriter(local_dir(storage, where, "saving"), sync_files=fsync)
    return save(dict(state), storage_writer=writer, process_group=process_group)


def dcp_files(metadata: Any) -> dict[str, int]:
    """Each file DCP's ``metadata`` names, with the least size it must have."""
    files: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = int(info.offset) + int(info.length)
        files[info.relative_path] = max(files.get(info.relative_path, 0), end)
    return files


def _safe_dcp(where: str, metadata: Any) -> tuple[type[Any], type[Any]]:
    """DCP's file reader and load planner, reading no pickle with `pickle.load`.

    DCP unpickles its ``.metadata`` and ``torch.load``s non-tensor values with
    ``weights_only=False``: either runs whatever a crafted file names. The reader hands
    DCP the ``metadata`` ckpt's restricted unpickler read; the planner loads the values
    with ``weights_only=True``.
    """
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner  # noqa: PLC0415
    from torch.distributed.checkpoint.filesystem import FileSystemReader  # noqa: PLC0415
    from torch.distributed.checkpoint.metadata import StorageMeta  # noqa: PLC0415

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            if hasattr(self, "load_id"):
                metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            item = f"the value {read_item.dest_index.fqn!r} of the DCP checkpoint {where}"
            loaded = load_weights_only(value, item)
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._traverse import set_element  # noqa: PLC0415

                set_element(
                    self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded
                )
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafeReader, SafePlanner


def load_dcp(storage: Storage, where: str, into: Any, process_group: Any) -> Any:
    """Load the DCP checkpoint at ``where`` into ``into`` (resharded as DCP does).

    Raises:
        SerializationError: If its metadata or a value names anything but plain data.
    """
    from torch.distributed.checkpoint.api import CheckpointException  # noqa: PLC0415
    from torch.distributed.checkpoint.state_dict_loader import load  # noqa: PLC0415

    if not isinstance(into, dict):
        raise TypeError(
            f"{join(where, DCP_METADATA)} is a torch.distributed.checkpoint checkpoint: "
            f"pass `into=`, a state dict laid out as this job wants it (its DTensors on "
            f"this job's mesh), and DCP loads into it in place; got {type(into).__name__}"
        )
    path = join(where, DCP_METADATA)
    with storage.open_read(path) as f:
        # Read once, here: a refused file is one clear error, not one per rank from DCP.
        metadata = load_dcp_metadata(f, path)
    _check_dcp_paths(path, metadata)
    reader_type, planner_type = _safe_dcp(where, metadata)
    reader = reader_type(local_dir(storage, where, "loading"))
    try:
        with warnings.catch_warnings():
            # One process loading a DCP checkpoint is what `into=` is for outside a job.
            warnings.filterwarnings(
                "ignore", message="torch.distributed is disabled", category=UserWarning
            )
            load(
                into,
                storage_reader=reader,
                planner=planner_type(),
                process_group=process_group,
                no_dist=this_rank(process_group) is None,
            )
    except CheckpointException as exc:
        # DCP gathers each rank's failure: a refused file is the one to tell.
        for failure in getattr(exc, "failures", {}).values():
            found = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(found, SerializationError):
                raise SerializationError(str(found)) from exc
        # torch's CheckpointException is a BaseException: `except Exception` misses it.
        raise SerializationError(
            f"the DCP checkpoint {where} could not be loaded into `into`: {_failures(exc)}; "
            f"its shards are cut short or do not match its .metadata (`ckpt check --deep` "
            f"names a damaged file), or `into` is laid out for another checkpoint"
        ) from exc
    return into


def _failures(exc: BaseException) -> str:
    """What each rank's failure in DCP's exception was, in one short line."""
    failures = getattr(exc, "failures", None)
    if not isinstance(failures, dict) or not failures:
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    parts = []
    for rank, failure in sorted(failures.items())[:4]:
        found = failure[0] if isinstance(failure, tuple) else failure
        parts.append(f"rank {rank}: {type(found).__name__}: {str(found)[:200]}")
    return "; ".join(parts)


def _check_dcp_paths(path: str, metadata: Any) -> None:
    """Refuse a ``.metadata`` whose shards are anywhere but files beside it.

    DCP joins each ``relative_path`` to the checkpoint's directory as it is: a crafted
    ``../other/__0_0.distcp`` would read another directory's file.

    Raises:
        SerializationError: Naming the first path that is not a plain file name.
    """
    storage_data = getattr(metadata, "storage_data", None) or {}
    if not isinstance(storage_data, dict):
        raise SerializationError(f"{path} is not DCP metadata: its storage_data is no mapping")
    for index, info in storage_data.items():
        relative = getattr(info, "relative_path", None)
        offset, length = getattr(info, "offset", 0), getattr(info, "length", 0)
        plain = _layout.plain_relative(relative) and "/" not in str(relative)
        if not plain or not all(isinstance(n, int) and n >= 0 for n in (offset, length)):
            raise SerializationError(
                f"{path} names {relative!r} (offset {offset!r}, length {length!r}) for "
                f"{getattr(index, 'fqn', index)!r}: a DCP checkpoint's shards are files "
                f"beside its .metadata, so it is not loaded"
            )


def this_rank(process_group: Any) -> tuple[int, int] | None:
    """``(rank, world size)`` of this process in an initialized job, else ``None``."""
    import torch.distributed as dist  # noqa: PLC0415

    if not dist.is_available() or not dist.is_initialized():
        return None
    return dist.get_rank(process_group), dist.get_world_size(process_group)
