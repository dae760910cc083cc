"""Writing and reading state files through a storage's streams."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import torch

from ckpt._errors import (
    CheckpointError,
    ChecksumMismatchError,
    DeviceUnavailableError,
    SerializationError,
    StateNotFoundError,
    UnsafeFileError,
)
from ckpt.storage import (
    CheckpointPath,
    PathInput,
    Storage,
    _digest,
    describe_kind,
    join,
    open_storage,
    user_path,
)
from ckpt.torch import _into, _plan, _ranks, _read
from ckpt.torch._format import (
    _MAGIC,
    _MAX_HEADER,
    STATE_FILE,
    TRAILER,
    Invalid,
    MapLocation,
    TensorEntry,
    data_start,
    decode_state,
    entries_of,
    has_trailer,
)
from ckpt.torch._plan import _Plan, plan_state

_MAX_IO = 256 << 20  # bytes per write or read call (Linux caps one at just under 2 GiB)
_MAX_STAGING = 64 << 20  # the host buffer that bounces tensors not in CPU memory
_MIN_STAGING = 1 << 20
_OVERLAP_MIN = 1 << 20  # blocks hashed on the helper thread: from 1 MiB
_OVERLAP_PIECE = 4 << 20  # ...a piece at a time, each written while it is hashed


def _byte_blocks(tensor: torch.Tensor, staging: _read.Staging) -> Iterator[memoryview]:
    """``tensor``'s bytes in row-major order, in blocks that must be used in turn."""
    if tensor.numel() == 0:
        return
    if _plan._direct(tensor):
        # as_strided, not reshape: a one-element tensor can be contiguous with any stride
        raw = tensor.as_strided((tensor.numel(),), (1,)).view(torch.uint8).numpy().data
        for start in range(0, len(raw), _MAX_IO):
            yield raw[start : start + _MAX_IO]
        return
    # Copy blocks of whole rows (along the first dimension) into the host buffer: this
    # also makes strided views, conjugate or negative views and expanded tensors dense.
    rows = tensor.reshape(1) if tensor.dim() == 0 else tensor
    row_bytes = rows[0].numel() * rows.element_size()
    per_block = max(1, staging.size // max(row_bytes, 1))
    for start in range(0, rows.shape[0], per_block):
        block = rows[start : start + per_block]
        buffer = staging.get(block.numel() * block.element_size(), tensor.device)
        buffer.view(block.dtype).view(block.shape).copy_(block)
        yield buffer.numpy().data


def save_state(
    directory: PathInput,
    state: Any,
    *,
    fsync: bool = True,
    storage: Storage | None = None,
) -> CheckpointPath:
    """Write ``state`` into ``directory`` as `STATE_FILE`, replacing one already there.

    The whole state is checked first, so a state that cannot be saved leaves nothing
    behind. The file is written as one stream of the storage's (`Storage.open_write`):
    on local disk under a temporary name in ``directory``, fsynced, and renamed to
    `STATE_FILE`; a failure part-way removes the temporary file, so the final name only
    ever holds a complete file. A later `CheckpointManager.finalize_checkpoint`
    then publishes it.

    Tensors are written from their own memory when they are contiguous and on the CPU;
    others (GPU tensors, strided views) are copied through one host buffer of at most
    64 MiB, a block of rows (along the first dimension) at a time, or one row where a
    row is larger, so the save never holds an extra copy of the state. Parameters and
    tensors that require grad are saved as plain tensors. Two places holding the same
    view of the same memory (tied weights) are written once and loaded as one tensor;
    other views are written as their own data.

    Args:
        directory: An existing directory, typically a checkpoint's temporary directory.
        state: A tree of dicts, lists and tuples holding tensors, ints, floats, strings,
            bools and None; dict keys are ints, floats, strings, bools or None.
        fsync: Flush the file and the directory entry to the disk before returning.
        storage: Where ``directory`` is (default: the storage its path or URL names:
            local disk, or an fsspec store for a ``UPath`` or URL, where the file is
            one multipart upload); the manager passes its own.

    Returns:
        The path of the file written.

    Raises:
        SerializationError: If the state holds anything else (a numpy array, an object,
            a sparse or quantized tensor, a tensor subclass, a circular reference);
            nothing is written then.
        FileNotFoundError: If ``directory`` does not exist.
        NotADirectoryError: If ``directory`` is not a directory.
        OSError: If writing fails (a full disk, say); no file is left behind then.
    """
    return save_file(directory, plan_state(state), STATE_FILE, fsync=fsync, storage=storage)[0]


def save_file(
    directory: PathInput, plan: _Plan, name: str, *, fsync: bool, storage: Storage | None
) -> tuple[CheckpointPath, int, str]:
    """Write the planned state into the file ``name``; its path, size and digest.

    A distributed save writes each rank's own file this way, from the plan its check
    of the state made already. The digest is remembered for the commit that records
    it (`ckpt.storage._digest`), so the file is never read back to hash it.
    """
    storage, where = open_storage(directory, storage=storage)
    found = storage.entry(where)
    if found is None:
        raise FileNotFoundError(
            errno.ENOENT,
            "save_state writes into an existing directory (such as the one "
            "init_tmp_checkpoint returns), and there is none at",
            where,
        )
    if found.kind not in ("dir", "symlink"):  # a link to a directory is fine
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", where)
    final = join(where, name)
    staging = _read.Staging(min(_MAX_STAGING, max(_MIN_STAGING, plan.largest_bounce)))
    with storage.open_write(final, durable=fsync) as f:
        digest = _write(f, plan, staging)
    _digest.remember(storage, where, name, digest)
    return user_path(storage, final), len(plan.prefix) + plan.data_size + TRAILER, digest


def _write_hashed(f: BinaryIO, checked: _read.Checked, block: memoryview | bytes) -> None:
    """Write ``block`` to ``f`` while the helper thread hashes it, a piece at a time.

    xxhash releases the GIL for inputs over 64 KiB, and so does a write, so on two
    cores the digest costs a save almost nothing (inline it cost ~9% of a save at
    2.4 GB/s). Each piece is hashed before the next is written, so a reused staging
    buffer is never changed under the hash, and the hash reads what the write just
    read: from the cache.
    """
    view = memoryview(block)
    for start in range(0, len(view), _OVERLAP_PIECE):
        piece = view[start : start + _OVERLAP_PIECE]
        checked.update(piece)
        try:
            f.write(piece)
        finally:
            checked.sync()  # the piece is free again only once hashed


def _write(f: BinaryIO, plan: _Plan, staging: _read.Staging) -> str:
    """Stream the file into ``f``, hashing it as it goes; the whole file's hex digest.

    The trailer is the digest of every byte before it; the digest returned (what a
    checkpoint's record holds) covers the trailer too, from the same single pass.
    """
    # Blocks under `_OVERLAP_MIN` are hashed inline: for them a thread's hand-off costs
    # more than the hash.
    with _read.checking(True, offload_from=_OVERLAP_MIN) as checked:
        assert checked is not None
        _write_hashed(f, checked, plan.prefix)
        position = 0  # from the data section's start
        for tensor, entry in zip(plan.tensors, plan.entries, strict=True):
            _write_hashed(f, checked, bytes(entry["offset"] - position))
            position = entry["offset"]
            for block in _byte_blocks(tensor, staging):
                _write_hashed(f, checked, block)
                position += len(block)
    if position != plan.data_size:
        raise CheckpointError(
            f"the state changed while it was being saved ({position} bytes of tensor data "
            f"instead of {plan.data_size}); no file was written"
        )
    digest = checked.digest
    trailer = digest.digest()
    f.write(trailer)
    digest.update(trailer)
    return digest.hexdigest()


def _device_for(saved: str, map_location: MapLocation) -> torch.device:
    if map_location is None:
        return torch.device(saved)
    if isinstance(map_location, Mapping):
        return torch.device(map_location.get(saved, saved))
    return torch.device(map_location)


def _check_device(device: torch.device) -> None:
    try:
        torch.empty(0, device=device)
    except Exception as exc:  # torch raises RuntimeError, AssertionError, ImportError...
        raise DeviceUnavailableError(
            f"cannot load tensors onto {device}: {exc}; pass map_location='cpu' (or a "
            f"mapping such as {{'{device}': 'cpu'}}) to load them elsewhere"
        ) from exc


def _read_tensors(
    f: BinaryIO,
    entries: list[TensorEntry],
    data_size: int,
    map_location: MapLocation,
    path: str,
    *,
    checked: _read.Checked | None,
    targets: dict[int, list[torch.Tensor]] | None = None,
) -> list[torch.Tensor]:
    """Every tensor of the file, in file order, on its device.

    ``f`` is at the data section's start, which is ``data_size`` bytes long. With
    ``checked``, every byte to the section's end is read into it in order (the gaps
    between tensors too), else gaps are skipped. A tensor with ``targets`` (from
    ``into``) is read into the first and copied to the others, which are returned in
    its place; the others are new. `DeviceUnavailableError` comes before any read.
    """
    targets = targets or {}
    new = [e for i, e in enumerate(entries) if i not in targets]
    devices = {name: _device_for(name, map_location) for name in {e.device for e in new}}
    for device in set(devices.values()):
        _check_device(device)
    staging = _read.Staging(_read._MIN_STAGING)
    tensors = []
    position = 0  # from the data section's start
    for index, entry in enumerate(entries):
        wanted = targets.get(index)
        tensor = (
            wanted[0]
            if wanted
            else torch.empty(entry.shape, dtype=entry.dtype, device=devices[entry.device])
        )
        if entry.nbytes:
            if position != entry.offset:
                _read.skip(f, entry.offset - position, path, checked)
            _read.fill(f, entry, tensor, staging=staging, path=path, checked=checked)
            position = entry.end
        if wanted:
            with torch.no_grad():
                for other in wanted[1:]:
                    other.copy_(tensor)
        tensors.append(tensor)
    if checked is not None and position != data_size:
        _read.skip(f, data_size - position, path, checked)
    return tensors


def load_state(
    directory: PathInput,
    map_location: MapLocation = None,
    *,
    storage: Storage | None = None,
    into: dict[str, Any] | None = None,
    rank: int | None = None,
    process_group: Any = None,
) -> Any:
    """Read the state `save_state` (or a distributed manager's save) wrote into ``directory``.

    Loading runs no code from the file: the structure is JSON, checked against what
    `save_state` writes, and tensors are read as raw bytes into new tensors (a file
    claiming more elements than it holds, or the data-less ``meta`` device, is
    refused). A DCP checkpoint keeps its plan as a pickle (``.metadata``): ckpt reads
    it with an unpickler that admits only DCP's metadata classes, torch sizes, dtypes
    and layouts, paths and plain containers, and reads DCP's non-tensor values with
    ``torch.load(weights_only=True)``; anything else is a `SerializationError`
    before it is called. Dicts come
    back as plain dicts (in their saved order), tuples as tuples, tensors as plain
    tensors that do not require grad; tied tensors come back as one tensor.

    A checkpoint a distributed job saved holds each rank's part. Called on every rank,
    this returns the rank's own: its state file (``state.rank<r>-of-<n>.ckpt``), which
    needs the same world size; or, for state saved with DTensors, the DCP checkpoint
    loaded into ``into`` and resharded by ``torch.distributed.checkpoint`` as this
    job's DTensors ask, on any world size.

    Args:
        directory: A checkpoint directory (``step_N``) or temporary directory.
        map_location: Where to put the tensors: ``None`` for the device each was saved
            from (as ``torch.load`` does), a device (``"cpu"``, ``torch.device("cuda:1")``)
            for all of them, or a mapping from saved device names to devices, e.g.
            ``{"cuda:1": "cuda:0"}`` (devices not in it stay where they were).
            Tensors bound for a device other than the CPU go through a host buffer of at
            most 64 MiB.
        storage: Where ``directory`` is (default: the storage its path or URL names;
            on an object store the file is read in ranged requests).
        into: A state dict to load into, in place, and return (DCP's contract): every
            key it holds (nested) must be in the checkpoint, a tensor of the same shape
            and dtype, filled where it is; plain values are set; what the checkpoint
            holds beyond it is not loaded. For a DCP checkpoint (one saved with
            DTensors) its DTensors are laid out on this job's mesh and DCP reshards.
        rank: Which rank's part of a distributed checkpoint to read (default: this
            process's rank in ``process_group``; needed outside a distributed job).
        process_group: The group whose rank and size count (default: the default
            group of an initialized torch.distributed job).

    Returns:
        The state, as saved (for DCP, ``into``, loaded).

    Raises:
        StateNotFoundError: If ``directory`` or its `STATE_FILE` does not exist (a
            `FileNotFoundError`).
        SerializationError: If the file is not one `save_state` wrote (another format, a
            pickle, a truncated or altered file, a directory, a FIFO or a device), or
            ``into`` does not match it (naming the key; nothing is changed then).
        DeviceUnavailableError: If a tensor would go to a device this process cannot use
            (a `RuntimeError`); nothing is read then. Pass ``map_location="cpu"``, say.
        TypeError: If ``map_location`` is not one of the forms above, ``into`` is not
            a dict, or a DCP checkpoint is loaded without ``into``.
        ValueError: If a distributed checkpoint was saved by another number of ranks
            than this job has and its parts are plain state files (only DCP reshards),
            or ``rank`` is needed and not given.
        OSError: If reading fails.
    """
    if not (map_location is None or isinstance(map_location, (str, torch.device, Mapping))):
        raise TypeError(
            f"map_location must be None, a device or a mapping of device names, got "
            f"{type(map_location).__name__}"
        )
    storage, where = open_storage(directory, storage=storage)
    path = join(where, STATE_FILE)
    if into is not None:
        parts = _parts(storage, where)
        if parts is not None and _ranks.DCP_METADATA in parts:
            return _ranks.load_dcp(storage, where, into, process_group)
        if not isinstance(into, dict):
            raise TypeError(
                f"`into` must be a dict (the state to load into, in place), got "
                f"{type(into).__name__}"
            )
    try:
        f = storage.open_read(path, follow_links=True)
    except UnsafeFileError:
        found = storage.entry(path)
        kind = describe_kind(found.kind) if found is not None else "special file"
        raise SerializationError(
            f"{path} is a {kind}, not a state file written by ckpt.torch.save_state"
        ) from None
    except (FileNotFoundError, NotADirectoryError) as exc:
        parts = _parts(storage, where)
        if parts is not None:
            return _load_part(
                storage,
                where,
                parts,
                map_location,
                rank=rank,
                process_group=process_group,
                into=into,
            )
        found = storage.entry(where)
        if found is None:
            why = f"there is no directory {where}"
        elif found.kind not in ("dir", "symlink"):
            why = f"{where} is not a directory"
        else:
            why = f"{where} has no {STATE_FILE}"
        raise StateNotFoundError(
            errno.ENOENT,
            f"no saved state: {why} (save_state writes it; a checkpoint saved some "
            f"other way holds its own files)",
            path,
        ) from exc
    return _read_file(f, path, map_location, into)


def load_file(
    storage: Storage, path: str, map_location: MapLocation, into: dict[str, Any] | None = None
) -> Any:
    """Read the state file at ``path`` (a rank's own file of a distributed checkpoint)."""
    try:
        f = storage.open_read(path, follow_links=True)
    except UnsafeFileError:
        raise SerializationError(
            f"{path} is not a plain file, not a state file written by ckpt.torch"
        ) from None
    return _read_file(f, path, map_location, into)


def _read_file(
    f: BinaryIO, path: str, map_location: MapLocation, into: dict[str, Any] | None
) -> Any:
    with f:
        try:
            head = f.read(16)
            if len(head) < 16 or head[:8] != _MAGIC:
                raise Invalid("it does not start as a ckpt state file")
            size = f.seek(0, os.SEEK_END)
            f.seek(16)
            length = int.from_bytes(head[8:], "little")
            if length > min(size - 16, _MAX_HEADER):
                raise Invalid("its header is longer than the file")
            body = f.read(length)
            try:
                header = json.loads(body)
            except (ValueError, RecursionError) as exc:
                raise Invalid(f"its header is not JSON ({exc})") from None
            entries, data_size = entries_of(header)
            del header["tensors"]  # the parsed descriptions: entries hold what is needed
            plan = None if into is None else _into.plan_into(header["state"], into, entries)
            start = data_start(length)
            expected = start + data_size + (TRAILER if has_trailer(header) else 0)
            if size != expected:
                raise Invalid(f"it is {size} bytes long, not {expected} (truncated?)")
            with _read.checking(has_trailer(header)) as checked:
                if checked is not None:
                    checked.update(head)
                    checked.update(body)
                    _read.skip(f, start - 16 - len(body), path, checked)
                else:
                    f.seek(start)
                tensors = _read_tensors(
                    f,
                    entries,
                    data_size,
                    map_location,
                    path,
                    checked=checked,
                    targets=None if plan is None else plan.targets,
                )
                if checked is not None and f.read(TRAILER) != _read.expected_trailer(checked):
                    into_note = "; the tensors of `into` hold its unchecked bytes" if into else ""
                    raise ChecksumMismatchError(
                        f"{path} is damaged: its bytes do not hash to the XXH3-128 digest "
                        f"it ends with (a flipped bit, or a change made after it was "
                        f"written); nothing was loaded{into_note}. Load another "
                        f"checkpoint, or restore this one from a copy",
                        path=path,
                    )
            if plan is not None and into is not None:
                plan.apply(tensors)
                return into
            return decode_state(header["state"], tensors)
        except (Invalid, RecursionError) as exc:
            raise SerializationError(
                f"{path} is not a state file written by ckpt.torch.save_state: {exc}"
            ) from None


def _parts(storage: Storage, where: str) -> dict[str, int] | None:
    """A distributed checkpoint's parts in ``where`` (name -> size), else ``None``."""
    try:
        entries = storage.list_dir(where)
    except OSError:
        return None
    names = {entry.name: entry.size for entry in entries if entry.kind == "file"}
    parts = {
        name: size
        for name, size in names.items()
        if name == _ranks.DCP_METADATA or _ranks.RANK_FILE.fullmatch(name)
    }
    return parts or None


def _load_part(
    storage: Storage,
    where: str,
    parts: dict[str, int],
    map_location: MapLocation,
    *,
    rank: int | None,
    process_group: Any,
    into: dict[str, Any] | None,
) -> Any:
    if _ranks.DCP_METADATA in parts:
        return _ranks.load_dcp(storage, where, None, process_group)  # says `into` is needed
    saved = sorted(
        {int(m.group(2)) for name in parts if (m := _ranks.RANK_FILE.fullmatch(name)) is not None}
    )
    shown = "/".join(map(str, saved))
    job = _ranks.this_rank(process_group)
    if rank is None and job is None:
        raise ValueError(
            f"{where} holds one state file per rank of a {shown}-rank job; outside a "
            f"distributed job, pass `rank=` to say whose to read"
        )
    if rank is not None:
        me, world = rank, saved[0] if len(saved) == 1 or job is None else job[1]
    else:
        assert job is not None
        me, world = job
    if world not in saved:
        raise ValueError(
            f"{where} was saved by {shown} ranks and this job has {world}: a plain "
            f"state file per rank cannot be resharded (state saved with DTensors is "
            f"saved with torch.distributed.checkpoint, which reshards on load)"
        )
    name = _ranks.rank_file(me, world)
    if name not in parts:
        raise StateNotFoundError(
            errno.ENOENT, f"no saved state for rank {me} of {world} in {where}", name
        )
    return load_file(storage, join(where, name), map_location, into)
