"""The state file's format, as pure functions: the header's encoding and its checks.

No I/O here: `ckpt.torch._io` reads and writes through a storage stream, and
`ckpt.torch._plan` decides what goes in.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch

from ckpt import _layout
from ckpt._errors import SerializationError

STATE_FILE = "state.ckpt"
"""The name of the file `save_state` writes in a checkpoint directory."""

MapLocation: TypeAlias = str | torch.device | Mapping[str, str | torch.device] | None
"""Where `load_state` puts tensors: ``None``, one device, or saved device -> device."""

_MAGIC = _layout.STATE_MAGIC
_FORMAT = 2
_FORMATS = (1, 2)  # 1: no trailer (written before ckpt hashed its files); still read
TRAILER = _layout.STATE_TRAILER
"""Format 2 ends with the XXH3-128 digest (16 bytes) of every byte before it."""
_DATA_ALIGN = 4096  # where the data section starts: page-aligned, for mmap or O_DIRECT
_TENSOR_ALIGN = 64  # each tensor's start, from the data section's start
_MAX_HEADER = 1 << 30
_MAX_DIM = (1 << 62) - 1  # a dimension torch can represent (its sizes are signed 64-bit)

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


def encode_header(data_size: int, entries: list[dict[str, Any]], state: Any) -> bytes:
    """The file's first bytes: magic, header length, header, zeros to the data section.

    Raises:
        SerializationError: If the header cannot be JSON (an int too long, say).
    """
    header = {
        "format": _FORMAT,
        "byteorder": sys.byteorder,
        "data_size": data_size,
        "tensors": entries,
        "state": state,
    }
    try:
        text = json.dumps(header, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # an int too long to convert, say
        raise SerializationError(f"cannot save the state: {exc}") from exc
    body = text.encode()
    head = _MAGIC + len(body).to_bytes(8, "little") + body
    return head + bytes(-len(head) % _DATA_ALIGN)


def has_trailer(header: dict[str, Any]) -> bool:
    """Whether a file with this (checked) header ends with its digest (format 2 on)."""
    return bool(header["format"] >= 2)


def data_start(header_length: int) -> int:
    """Where the data section of a file whose header is ``header_length`` bytes starts."""
    return -(-(16 + header_length) // _DATA_ALIGN) * _DATA_ALIGN


class Invalid(Exception):
    """A state file's header is not what `save_state` writes."""


def _int(value: Any, what: str, low: int = 0) -> int:
    if type(value) is not int or value < low:
        raise Invalid(f"{what} is {value!r}, not an integer >= {low}")
    return value


@dataclass(frozen=True, slots=True)
class TensorEntry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    device: str

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


def entries_of(header: Any) -> tuple[list[TensorEntry], int]:
    if not isinstance(header, dict):
        raise Invalid("the header is not a JSON object")
    if header.get("format") not in _FORMATS:
        raise Invalid(
            f"format {header.get('format')!r} is not one of {', '.join(map(str, _FORMATS))} "
            f"(written by another version of ckpt?)"
        )
    if header.get("byteorder") != sys.byteorder:
        raise Invalid(
            f"it was written on a {header.get('byteorder')} machine; this one is {sys.byteorder}"
        )
    if "state" not in header:
        raise Invalid("the header has no state")
    data_size = _int(header.get("data_size"), "data_size")
    tensors = header.get("tensors")
    if not isinstance(tensors, list):
        raise Invalid("'tensors' is not a list")
    entries: list[TensorEntry] = []
    devices: set[str] = set()  # checked once each: a state has a handful
    for i, item in enumerate(tensors):
        entries.append(_entry(i, item, entries[-1].end if entries else 0, data_size, devices))
    return entries, data_size


def _entry(i: int, item: Any, end: int, data_size: int, devices: set[str]) -> TensorEntry:
    """Tensor ``i``'s description, which must start at or after ``end``."""
    if not isinstance(item, dict) or item.keys() != _ENTRY_KEYS:
        raise Invalid(f"tensor {i} is not described by dtype, shape, offset and device")
    dtype = _DTYPES.get(item["dtype"]) if isinstance(item["dtype"], str) else None
    if dtype is None:
        raise Invalid(f"tensor {i} has the unsupported dtype {item['dtype']!r}")
    if not isinstance(item["shape"], list):
        raise Invalid(f"tensor {i} has the shape {item['shape']!r}, not a list")
    shape = tuple(_int(n, f"a dimension of tensor {i}") for n in item["shape"])
    # torch computes strides from every non-zero dimension even when one is zero: their
    # product must fit too, or it refuses an empty tensor with an overflow of its own.
    if any(n > _MAX_DIM for n in shape) or math.prod(n for n in shape if n) > _MAX_DIM:
        raise Invalid(f"tensor {i} has the shape {shape}, beyond what a tensor can hold")
    offset = _int(item["offset"], f"the offset of tensor {i}", low=end)
    if offset % _TENSOR_ALIGN:
        raise Invalid(f"the offset of tensor {i} is not a multiple of {_TENSOR_ALIGN}")
    nbytes = math.prod(shape) * _ITEMSIZE[dtype]
    if offset + nbytes > data_size:
        raise Invalid(f"tensor {i} ends after the data ({offset + nbytes} > {data_size} bytes)")
    device = item["device"]
    if not isinstance(device, str):
        raise Invalid(f"tensor {i} has the device {device!r}, not a string")
    if device.split(":", 1)[0].strip().lower() == "meta":
        raise Invalid(
            f"tensor {i} claims the device 'meta', which holds no data; save_state never "
            f"writes one, so the file was not written by it"
        )
    if device not in devices:
        try:
            torch.device(device)
        except RuntimeError:
            raise Invalid(f"tensor {i} has the device {device[:100]!r}") from None
        devices.add(device)
    return TensorEntry(dtype, shape, offset, nbytes, device)


def decode_state(node: Any, tensors: list[torch.Tensor]) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [decode_state(item, tensors) for item in node]
    if isinstance(node, dict) and len(node) == 1:
        ((tag, value),) = node.items()
        if tag == "tensor" and type(value) is int and 0 <= value < len(tensors):
            return tensors[value]
        if tag == "tuple" and isinstance(value, list):
            return tuple(decode_state(item, tensors) for item in value)
        if tag == "float" and value in ("nan", "inf", "-inf"):
            return float(value)
        if tag == "dict" and isinstance(value, list):
            return _decode_dict(value, tensors)
    raise Invalid(f"unexpected value {str(node)[:100]!r}")


def _decode_dict(pairs: list[Any], tensors: list[torch.Tensor]) -> dict[Any, Any]:
    out = {}
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2:
            raise Invalid(f"a dict item is {pair!r}, not a [key, value] pair")
        key = decode_state(pair[0], tensors)
        if key is not None and not isinstance(key, (bool, int, float, str)):
            raise Invalid(f"a dict key is {pair[0]!r}")
        out[key] = decode_state(pair[1], tensors)
    return out
