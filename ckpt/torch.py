r"""Save and load a nested state of tensors: safely, durably, at the disk's speed.

`save_state` writes a state into one file, `STATE_FILE` (``state.ckpt``), in a
checkpoint's temporary directory (the one `CheckpointManager.init_tmp_checkpoint`
returns, or that a ``with manager.checkpoint(...) as path`` block gets); `load_state`
reads it back. This module needs the ``torch`` extra; ``import ckpt`` never imports it.

A state is a tree of dicts (any mapping), lists and tuples whose leaves are tensors,
ints, floats, strings, bools and None; dict keys are ints, floats, strings, bools or
None. This covers ``model.state_dict()`` and ``optimizer.state_dict()``. Anything else
is refused with `ckpt.SerializationError` before a byte is written.

Why not ``torch.save``: its file holds a pickle, and loading it safely depends on
``torch.load(weights_only=True)``'s restricted unpickler; it computes a CRC-32 of every
tensor on the calling thread (about 4 GB/s on one core: on a disk that ``dd`` writes at
2 GB/s, ``torch.save`` + fsync reached 0.6-0.7 of dd's bandwidth, and this module about
1.0, see ``benchmarks/state_bandwidth.py``); it writes a view's whole storage (a small
slice of a large tensor costs the large tensor); and it copies each GPU storage whole to
host memory. This format holds no pickle at all, so loading cannot run code whatever
the file holds.

The file (every integer little-endian)::

    8 bytes   magic b"\x89CKPTST\n"
    8 bytes   the length H of the header
    H bytes   the header: UTF-8 JSON (below)
    zeros     to the next multiple of 4096: the data section starts there
    data      each tensor's bytes, C-contiguous, in the machine's byte order, each
              starting at a multiple of 64 from the data section's start

The header is ``{"format": 1, "byteorder": "little", "data_size": N, "tensors":
[{"dtype": "float32", "shape": [2, 3], "offset": 0, "device": "cuda:0"}, ...],
"state": S}``, the file's size is exactly the data section's start plus ``data_size``,
and ``S`` is the state as JSON: None, bools, ints, strings, finite floats and lists
stand for themselves; every JSON object is a tagged value, one of ``{"dict": [[key,
value], ...]}``, ``{"tuple": [...]}``, ``{"tensor": index}`` (into ``tensors``) and
``{"float": "nan" | "inf" | "-inf"}``.

There is no checksum (computing one would cost what ``torch.save``'s CRC costs);
durability comes from fsync and the manager's atomic publish, and a truncated or
foreign file is refused by its size and header.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import secrets
import stat
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import torch

from ckpt._errors import (
    CheckpointError,
    DeviceUnavailableError,
    SerializationError,
    StateNotFoundError,
)
from ckpt._storage import fsync_dir

__all__ = ["STATE_FILE", "MapLocation", "load_state", "save_state"]

STATE_FILE = "state.ckpt"
"""The name of the file `save_state` writes in a checkpoint directory."""

MapLocation: TypeAlias = str | torch.device | Mapping[str, str | torch.device] | None
"""Where `load_state` puts tensors: ``None``, one device, or saved device -> device."""

_MAGIC = b"\x89CKPTST\n"
_FORMAT = 1
_DATA_ALIGN = 4096  # where the data section starts: page-aligned, for mmap or O_DIRECT
_TENSOR_ALIGN = 64  # each tensor's start, from the data section's start
_MAX_HEADER = 1 << 30
_MAX_DIM = (1 << 62) - 1  # a dimension torch can represent (its sizes are signed 64-bit)
_MAX_IO = 256 << 20  # bytes per write or read call (Linux caps one at just under 2 GiB)
_BUFFER = 1 << 20  # the file buffer, which gathers small tensors into large writes
_MAX_STAGING = 64 << 20  # the host buffer that bounces tensors not in CPU memory
_MIN_STAGING = 1 << 20
# Tensors on these devices are written from, and read into, their own memory; any other
# device goes through a small host buffer, in blocks (tests patch this to cover that).
_DIRECT_DEVICES = frozenset({"cpu"})

_DTYPE_NAMES = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
)
_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in _DTYPE_NAMES
    if isinstance(getattr(torch, name, None), torch.dtype)
}
_DTYPE_NAME = {dtype: name for name, dtype in _DTYPES.items()}
_ITEMSIZE = {dtype: dtype.itemsize for dtype in _DTYPES.values()}  # a lookup is faster
_ENTRY_KEYS = frozenset({"dtype", "shape", "offset", "device"})

_ACCEPTED = (
    "a state holds tensors, ints, floats, strings, bools and None in dicts, lists and tuples"
)


# --- saving ---------------------------------------------------------------------------


@dataclass
class _Plan:
    """What `save_state` will write: the tensors, in file order, and the header bytes."""

    tensors: list[torch.Tensor] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    data_size: int = 0
    largest_bounce: int = 0  # bytes of the largest tensor that goes through the buffer
    prefix: bytes = b""


def _direct(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s own memory can be written as it is."""
    return (
        tensor.device.type in _DIRECT_DEVICES
        and tensor.is_contiguous()
        and not tensor.is_conj()
        and not tensor.is_neg()
    )


def _check_tensor(value: torch.Tensor, where: str) -> torch.Tensor:
    kind = type(value)
    if kind is not torch.Tensor and kind is not torch.nn.Parameter:
        raise SerializationError(
            f"cannot save a {kind.__name__} at {where}: only plain tensors and "
            f"Parameters can be saved; convert it to a plain tensor first"
        )
    if value.layout != torch.strided or value.is_quantized or value.is_nested:
        raise SerializationError(
            f"cannot save the {value.layout} {value.dtype} tensor at {where}: only dense "
            f"tensors can be saved; convert it first (e.g. with .to_dense() or "
            f".dequantize())"
        )
    if value.dtype not in _DTYPE_NAME:
        raise SerializationError(
            f"cannot save the tensor at {where}: its dtype {value.dtype} is not supported "
            f"(supported: {', '.join(_DTYPES)})"
        )
    if value.device.type == "meta":
        raise SerializationError(
            f"cannot save the tensor at {where}: it is on the meta device and has no data"
        )
    return value.detach()


def _scalar(value: Any) -> Any:
    """``value`` as JSON if it is a plain scalar; `TypeError` otherwise."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        value = float(value)
        if math.isfinite(value):
            return value
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, str):
        return str(value)
    raise TypeError


def _view_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    """Equal for two tensors that are the same view of the same memory (tied weights)."""
    return (
        tensor.device,
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
        tensor.is_conj(),
        tensor.is_neg(),
    )


def _child(where: str, key: Any) -> str:
    return f"{where}/{key}" if where else str(key)


class _Planner:
    """Checks a state and lays out its file; see `_plan`."""

    def __init__(self) -> None:
        self.plan = _Plan()
        self.seen: dict[tuple[Any, ...], int] = {}  # one entry per distinct view: ties stay
        self.active: set[int] = set()  # containers on the current path, to catch cycles

    def tensor(self, value: torch.Tensor, where: str) -> dict[str, int]:
        plan = self.plan
        value = _check_tensor(value, where)
        key = _view_key(value)
        if value.numel() and key in self.seen:
            return {"tensor": self.seen[key]}
        index = len(plan.tensors)
        self.seen[key] = index
        offset = -(-plan.data_size // _TENSOR_ALIGN) * _TENSOR_ALIGN
        nbytes = value.numel() * value.element_size()
        plan.tensors.append(value)
        plan.entries.append(
            {
                "dtype": _DTYPE_NAME[value.dtype],
                "shape": list(value.shape),
                "offset": offset,
                "device": str(value.device),
            }
        )
        plan.data_size = offset + nbytes
        if not _direct(value):
            plan.largest_bounce = max(plan.largest_bounce, nbytes)
        return {"tensor": index}

    def mapping(self, value: Mapping[Any, Any], where: str) -> dict[str, Any]:
        items = []
        for key, item in value.items():
            try:
                encoded = _scalar(key)
            except TypeError:
                raise SerializationError(
                    f"cannot save the dict at {where or 'the top of the state'}: it has a key "
                    f"of type {type(key).__name__} ({key!r}); keys must be ints, floats, "
                    f"strings, bools or None"
                ) from None
            items.append([encoded, self.encode(item, _child(where, key))])
        return {"dict": items}

    def encode(self, value: Any, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            return self.tensor(value, where)
        if isinstance(value, (Mapping, list, tuple)):
            if id(value) in self.active:
                raise SerializationError(
                    f"cannot save {where or 'the state'}: it contains itself (a circular reference)"
                )
            self.active.add(id(value))
            try:
                if isinstance(value, Mapping):
                    return self.mapping(value, where)
                items = [self.encode(item, _child(where, i)) for i, item in enumerate(value)]
                return items if isinstance(value, list) else {"tuple": items}
            finally:
                self.active.discard(id(value))
        try:
            return _scalar(value)
        except TypeError:
            raise SerializationError(
                f"cannot save a {type(value).__name__} at {where or 'the top of the state'}: "
                f"{_ACCEPTED}"
            ) from None


def _plan(state: Any) -> _Plan:
    """Check ``state`` and lay out the file, or raise `SerializationError`."""
    planner = _Planner()
    encoded = planner.encode(state, "")
    plan = planner.plan
    header = {
        "format": _FORMAT,
        "byteorder": sys.byteorder,
        "data_size": plan.data_size,
        "tensors": plan.entries,
        "state": encoded,
    }
    try:
        text = json.dumps(header, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # an int too long to convert, say
        raise SerializationError(f"cannot save the state: {exc}") from exc
    body = text.encode()
    head = _MAGIC + len(body).to_bytes(8, "little") + body
    plan.prefix = head + bytes(-len(head) % _DATA_ALIGN)
    return plan


class _Staging:
    """One reused host buffer for tensors that cannot be written from their own memory."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buffer: torch.Tensor | None = None

    def get(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """A CPU uint8 tensor of ``nbytes`` bytes (valid until the next call)."""
        buffer = self._buffer
        if buffer is None or buffer.numel() < nbytes:
            pin = device.type == "cuda" and torch.cuda.is_available()
            buffer = torch.empty(max(nbytes, self.size), dtype=torch.uint8, pin_memory=pin)
            self._buffer = buffer
        return buffer[:nbytes]


def _byte_blocks(tensor: torch.Tensor, staging: _Staging) -> Iterator[memoryview]:
    """``tensor``'s bytes in row-major order, in blocks that must be used in turn."""
    if tensor.numel() == 0:
        return
    if _direct(tensor):
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


def save_state(directory: str | os.PathLike[str], state: Any, *, fsync: bool = True) -> Path:
    """Write ``state`` into ``directory`` as `STATE_FILE`, replacing one already there.

    The whole state is checked first, so a state that cannot be saved leaves nothing
    behind. The file is written under a temporary name in ``directory``, fsynced, and
    renamed to `STATE_FILE`; a failure part-way removes the temporary file, so the final
    name only ever holds a complete file. A later `CheckpointManager.finalize_checkpoint`
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
    plan = _plan(state)
    directory = Path(directory)
    if not directory.is_dir():
        if not directory.exists():
            raise FileNotFoundError(
                errno.ENOENT,
                "save_state writes into an existing directory (such as the one "
                "init_tmp_checkpoint returns), and there is none at",
                str(directory),
            )
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
    final = directory / STATE_FILE
    partial = directory / f".{STATE_FILE}.{secrets.token_hex(4)}.partial"
    size = min(_MAX_STAGING, max(_MIN_STAGING, plan.largest_bounce))
    staging = _Staging(size)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with open(fd, "wb", buffering=_BUFFER) as f:
            _write(f, plan, staging)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(partial, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    if fsync:
        fsync_dir(directory)
    return final


def _write(f: BinaryIO, plan: _Plan, staging: _Staging) -> None:
    f.write(plan.prefix)
    position = 0  # from the data section's start
    for tensor, entry in zip(plan.tensors, plan.entries, strict=True):
        f.write(bytes(entry["offset"] - position))
        position = entry["offset"]
        for block in _byte_blocks(tensor, staging):
            f.write(block)
            position += len(block)
    if position != plan.data_size:
        raise CheckpointError(
            f"the state changed while it was being saved ({position} bytes of tensor data "
            f"instead of {plan.data_size}); no file was written"
        )


# --- loading --------------------------------------------------------------------------


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


class _Invalid(Exception):
    """A state file's header is not what `save_state` writes."""


def _int(value: Any, what: str, low: int = 0) -> int:
    if type(value) is not int or value < low:
        raise _Invalid(f"{what} is {value!r}, not an integer >= {low}")
    return value


@dataclass(frozen=True, slots=True)
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    device: str

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


def _entries(header: Any) -> tuple[list[_Entry], int]:
    if not isinstance(header, dict):
        raise _Invalid("the header is not a JSON object")
    if header.get("format") != _FORMAT:
        raise _Invalid(
            f"format {header.get('format')!r} is not {_FORMAT} (written by another version "
            f"of ckpt?)"
        )
    if header.get("byteorder") != sys.byteorder:
        raise _Invalid(
            f"it was written on a {header.get('byteorder')} machine; this one is {sys.byteorder}"
        )
    if "state" not in header:
        raise _Invalid("the header has no state")
    data_size = _int(header.get("data_size"), "data_size")
    tensors = header.get("tensors")
    if not isinstance(tensors, list):
        raise _Invalid("'tensors' is not a list")
    entries: list[_Entry] = []
    devices: set[str] = set()  # checked once each: a state has a handful
    for i, item in enumerate(tensors):
        entries.append(_entry(i, item, entries[-1].end if entries else 0, data_size, devices))
    return entries, data_size


def _entry(i: int, item: Any, end: int, data_size: int, devices: set[str]) -> _Entry:
    """Tensor ``i``'s description, which must start at or after ``end``."""
    if not isinstance(item, dict) or item.keys() != _ENTRY_KEYS:
        raise _Invalid(f"tensor {i} is not described by dtype, shape, offset and device")
    dtype = _DTYPES.get(item["dtype"]) if isinstance(item["dtype"], str) else None
    if dtype is None:
        raise _Invalid(f"tensor {i} has the unsupported dtype {item['dtype']!r}")
    if not isinstance(item["shape"], list):
        raise _Invalid(f"tensor {i} has the shape {item['shape']!r}, not a list")
    shape = tuple(_int(n, f"a dimension of tensor {i}") for n in item["shape"])
    if any(n > _MAX_DIM for n in shape):  # torch cannot even allocate an empty one
        raise _Invalid(f"tensor {i} has the shape {shape}, beyond what a tensor can hold")
    offset = _int(item["offset"], f"the offset of tensor {i}", low=end)
    if offset % _TENSOR_ALIGN:
        raise _Invalid(f"the offset of tensor {i} is not a multiple of {_TENSOR_ALIGN}")
    nbytes = math.prod(shape) * _ITEMSIZE[dtype]
    if offset + nbytes > data_size:
        raise _Invalid(f"tensor {i} ends after the data ({offset + nbytes} > {data_size} bytes)")
    device = item["device"]
    if not isinstance(device, str):
        raise _Invalid(f"tensor {i} has the device {device!r}, not a string")
    if device not in devices:
        try:
            torch.device(device)
        except RuntimeError:
            raise _Invalid(f"tensor {i} has the device {device[:100]!r}") from None
        devices.add(device)
    return _Entry(dtype, shape, offset, nbytes, device)


def _decode(node: Any, tensors: list[torch.Tensor]) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(item, tensors) for item in node]
    if isinstance(node, dict) and len(node) == 1:
        ((tag, value),) = node.items()
        if tag == "tensor" and type(value) is int and 0 <= value < len(tensors):
            return tensors[value]
        if tag == "tuple" and isinstance(value, list):
            return tuple(_decode(item, tensors) for item in value)
        if tag == "float" and value in ("nan", "inf", "-inf"):
            return float(value)
        if tag == "dict" and isinstance(value, list):
            out = {}
            for pair in value:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise _Invalid(f"a dict item is {pair!r}, not a [key, value] pair")
                key = _decode(pair[0], tensors)
                if key is not None and not isinstance(key, (bool, int, float, str)):
                    raise _Invalid(f"a dict key is {pair[0]!r}")
                out[key] = _decode(pair[1], tensors)
            return out
    raise _Invalid(f"unexpected value {str(node)[:100]!r}")


def _read_exact(f: io.RawIOBase, view: memoryview, path: Path) -> None:
    done = 0
    while done < len(view):
        n = f.readinto(view[done : done + _MAX_IO])
        if not n:
            raise SerializationError(f"{path} is truncated (it was changed while being read?)")
        done += n


def _read_tensor(f: io.RawIOBase, entry: _Entry, device: torch.device, path: Path) -> torch.Tensor:
    if device.type in _DIRECT_DEVICES:
        raw = torch.empty(entry.nbytes, dtype=torch.uint8, device=device)
        _read_exact(f, raw.numpy().data, path)
        return raw.view(entry.dtype).reshape(entry.shape)
    out = torch.empty(entry.shape, dtype=entry.dtype, device=device)
    target = out.reshape(-1).view(torch.uint8)
    staging = _Staging(min(_MAX_STAGING, max(_MIN_STAGING, entry.nbytes)))
    for start in range(0, entry.nbytes, staging.size):
        buffer = staging.get(min(staging.size, entry.nbytes - start), device)
        _read_exact(f, buffer.numpy().data, path)
        target[start : start + buffer.numel()].copy_(buffer)
    return out


def _read_tensors(
    f: io.RawIOBase, entries: list[_Entry], data_start: int, map_location: MapLocation, path: Path
) -> list[torch.Tensor]:
    """Every tensor of the file, on its device; `DeviceUnavailableError` before any read."""
    targets = {name: _device_for(name, map_location) for name in {e.device for e in entries}}
    for device in set(targets.values()):
        _check_device(device)
    tensors = []
    position = -1
    for entry in entries:
        device = targets[entry.device]
        if not entry.nbytes:  # nothing to read: no seek, no buffer
            tensors.append(torch.empty(entry.shape, dtype=entry.dtype, device=device))
            continue
        if position != data_start + entry.offset:
            f.seek(data_start + entry.offset)
        tensors.append(_read_tensor(f, entry, device, path))
        position = data_start + entry.end
    return tensors


def _open_state(path: Path) -> io.FileIO:
    """Open the regular file ``path`` (through a link is fine) without blocking on a FIFO."""
    st = os.stat(path)  # look before opening: opening a FIFO or a device can block or act
    if not stat.S_ISREG(st.st_mode):
        raise SerializationError(
            f"{path} is a {_kind_name(st.st_mode)}, not a state file written by "
            f"ckpt.torch.save_state"
        )
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the look and the open
        os.close(fd)
        raise SerializationError(f"{path} changed into a special file while it was opened")
    return io.FileIO(fd, "rb")


def _kind_name(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    return "device or socket"


def load_state(directory: str | os.PathLike[str], map_location: MapLocation = None) -> Any:
    """Read the state `save_state` wrote into ``directory``.

    Loading runs no code from the file: the structure is JSON, checked against what
    `save_state` writes, and tensors are read as raw bytes into new tensors. Dicts come
    back as plain dicts (in their saved order), tuples as tuples, tensors as plain
    tensors that do not require grad; tied tensors come back as one tensor.

    Args:
        directory: A checkpoint directory (``step_N``) or temporary directory.
        map_location: Where to put the tensors: ``None`` for the device each was saved
            from (as ``torch.load`` does), a device (``"cpu"``, ``torch.device("cuda:1")``)
            for all of them, or a mapping from saved device names to devices, e.g.
            ``{"cuda:1": "cuda:0"}`` (devices not in it stay where they were).
            Tensors bound for a device other than the CPU go through a host buffer of at
            most 64 MiB.

    Returns:
        The state, as saved.

    Raises:
        StateNotFoundError: If ``directory`` or its `STATE_FILE` does not exist (a
            `FileNotFoundError`).
        SerializationError: If the file is not one `save_state` wrote (another format, a
            pickle, a truncated or altered file, a directory, a FIFO or a device).
        DeviceUnavailableError: If a tensor would go to a device this process cannot use
            (a `RuntimeError`); nothing is read then. Pass ``map_location="cpu"``, say.
        TypeError: If ``map_location`` is not one of the forms above.
        OSError: If reading fails.
    """
    if not (map_location is None or isinstance(map_location, (str, torch.device, Mapping))):
        raise TypeError(
            f"map_location must be None, a device or a mapping of device names, got "
            f"{type(map_location).__name__}"
        )
    path = Path(directory) / STATE_FILE
    try:
        f = _open_state(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not os.path.exists(directory):
            where = f"there is no directory {directory}"
        elif not os.path.isdir(directory):
            where = f"{directory} is not a directory"
        else:
            where = f"{directory} has no {STATE_FILE}"
        raise StateNotFoundError(
            errno.ENOENT,
            f"no saved state: {where} (save_state writes it; a checkpoint saved some "
            f"other way holds its own files)",
            str(path),
        ) from exc
    with f:
        try:
            head = f.read(16)
            if len(head) < 16 or head[:8] != _MAGIC:
                raise _Invalid("it does not start as a ckpt state file")
            size = os.fstat(f.fileno()).st_size
            length = int.from_bytes(head[8:], "little")
            if length > min(size - 16, _MAX_HEADER):
                raise _Invalid("its header is longer than the file")
            try:
                header = json.loads(f.read(length))
            except (ValueError, RecursionError) as exc:
                raise _Invalid(f"its header is not JSON ({exc})") from None
            entries, data_size = _entries(header)
            del header["tensors"]  # the parsed descriptions: entries hold what is needed
            data_start = -(-(16 + length) // _DATA_ALIGN) * _DATA_ALIGN
            if size != data_start + data_size:
                raise _Invalid(
                    f"it is {size} bytes long, not {data_start + data_size} (truncated?)"
                )
            tensors = _read_tensors(f, entries, data_start, map_location, path)
            return _decode(header["state"], tensors)
        except (_Invalid, RecursionError) as exc:
            raise SerializationError(
                f"{path} is not a state file written by ckpt.torch.save_state: {exc}"
            ) from None
