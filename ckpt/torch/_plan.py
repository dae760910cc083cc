"""What a save writes: the state checked, its tensors in file order, the header.

The planner is shared by `ckpt.torch.save_state` and the asynchronous snapshot of
`CheckpointManager.save_async` (which ties tensors by the same `view_key`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ckpt._errors import SerializationError
from ckpt.torch._format import (
    _ACCEPTED,
    _DTYPE_NAME,
    _DTYPES,
    _TENSOR_ALIGN,
    encode_header,
)

# Tensors on these devices are written from, and read into, their own memory; any other
# device goes through a small host buffer, in blocks (tests patch this to cover that).
_DIRECT_DEVICES = frozenset({"cpu"})


def direct_devices() -> frozenset[str]:
    return _DIRECT_DEVICES


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
        tensor.device.type in direct_devices()
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


def view_key(tensor: torch.Tensor) -> tuple[Any, ...]:
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
        key = view_key(value)
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


def plan_state(state: Any) -> _Plan:
    """Check ``state`` and lay out the file, or raise `SerializationError`."""
    planner = _Planner()
    encoded = planner.encode(state, "")
    plan = planner.plan
    plan.prefix = encode_header(plan.data_size, plan.entries, encoded)
    return plan
