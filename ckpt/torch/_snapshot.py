"""The host copy a background save writes from (`CheckpointManager.save_async`).

The caller pays for one copy of its tensors into host buffers that are kept and reused
from one save to the next (a fresh allocation of a large state costs more than the
copy).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch

from ckpt.torch._plan import view_key

Buffers = dict[tuple[Any, ...], torch.Tensor]


def snapshot(state: Any, buffers: Buffers) -> Any:
    """Copy ``state`` with every tensor moved into a host buffer from ``buffers``.

    ``state`` has been checked already (`ckpt.torch` refuses what it cannot save). A
    buffer is reused when the tensor at the same place has the same shape and dtype as
    last time. Two places holding the same view of the same memory (tied weights) get
    one copy, so they stay tied in the file.
    """
    copies: dict[tuple[Any, ...], Any] = {}
    cuda = False

    sharded = sharded_tensor_type()

    def copy(value: Any, where: tuple[Any, ...]) -> Any:
        nonlocal cuda
        if sharded is not None and isinstance(value, sharded):
            # This rank's shard is what it saves: copy it, and keep the layout DCP reads.
            local = copy(value.to_local(), (*where, "local"))
            return sharded.from_local(
                local,
                value.device_mesh,
                value.placements,
                run_check=False,
                shape=value.shape,
                stride=value.stride(),
            )
        if isinstance(value, torch.Tensor):
            source = value.detach()
            memory = view_key(source)  # the same key `save_state` ties tensors by
            if memory in copies:
                return copies[memory]
            buffer = buffers.get(where)
            if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
                pin = source.is_cuda and torch.cuda.is_available()
                buffer = torch.empty(source.shape, dtype=source.dtype, pin_memory=pin)
                buffers[where] = buffer
            buffer.copy_(source, non_blocking=source.is_cuda)
            cuda = cuda or source.is_cuda
            copies[memory] = buffer
            return buffer
        if isinstance(value, Mapping):
            return {key: copy(item, (*where, key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            items = [copy(item, (*where, i)) for i, item in enumerate(value)]
            return items if isinstance(value, list) else tuple(items)
        return value  # a number, string, bool or None

    result = copy(state, ())
    if cuda:
        torch.cuda.synchronize()  # the non-blocking copies must land before we return
    return result


def sharded_tensor_type() -> Any:
    """The DTensor class, or ``None`` where no DTensor can exist yet.

    Without ``torch.distributed.tensor`` imported there is no DTensor to find, and
    importing it costs more than half a second: a job of plain tensors never pays it.
    """
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)
