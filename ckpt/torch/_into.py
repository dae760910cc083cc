"""Matching a caller's state (``load_state(..., into=state)``) to a state file's contents.

Pure: it walks the file's decoded structure beside ``into`` and says which of
``into``'s tensors each tensor of the file fills, and which plain values replace what
``into`` holds, checking everything before a byte is read. What it accepts is DCP's
contract for ``into``: every value ``into`` holds must be in the file at the same place
(nested keys), a tensor with the same shape and dtype; what the file holds beyond
``into`` is not loaded into it.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, MutableSequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ckpt._errors import SerializationError
from ckpt.torch._format import Invalid, TensorEntry, decode_state


@dataclass
class Plan:
    """Which of ``into``'s tensors each file tensor fills, and the values to set after."""

    targets: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    settings: list[Callable[[list[torch.Tensor]], None]] = field(default_factory=list)

    def apply(self, tensors: list[torch.Tensor]) -> None:
        """Put the plain values (and containers ``into`` lacked tensors for) in place."""
        for setting in self.settings:
            setting(tensors)


def _name(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path) or "the state itself"


def _kind(node: Any) -> str:
    """What the encoded ``node`` is: 'tensor', 'dict', 'list', 'tuple' or 'value'."""
    if isinstance(node, list):
        return "list"
    if isinstance(node, dict) and len(node) == 1:
        tag = next(iter(node))
        if tag in ("tensor", "dict", "tuple"):
            return str(tag)
    return "value"


def plan_into(node: Any, into: Any, entries: list[TensorEntry]) -> Plan:
    """Check ``into`` against the file's encoded state ``node``; what to fill and set.

    Raises:
        SerializationError: Naming the first key of ``into`` the file does not hold,
            or holds with another shape, dtype or kind; nothing is changed then.
        TypeError: If ``into`` is not a dict.
        Invalid: If the file's structure is not one `save_state` writes.
    """
    if not isinstance(into, MutableMapping):
        raise TypeError(
            f"`into` must be a dict (the state to load into, in place), got {type(into).__name__}"
        )
    walker = _Walker(entries)
    walker.walk(node, into, ())
    return walker.plan


class _Walker:
    def __init__(self, entries: list[TensorEntry]) -> None:
        self.entries = entries
        self.plan = Plan()

    def walk(self, node: Any, into: Any, path: tuple[Any, ...]) -> None:
        """Check the container or tensor ``into`` against ``node``, recording what to do."""
        if isinstance(into, torch.Tensor):
            self._tensor(node, into, path)
        elif isinstance(into, MutableMapping):
            self._mapping(node, into, path)
        else:  # a list or a tuple: callers walk only `_CONTAINERS`
            self._sequence(node, into, path)

    def _tensor(self, node: Any, into: torch.Tensor, path: tuple[Any, ...]) -> None:
        kind = _kind(node)
        if kind != "tensor":
            raise SerializationError(
                f"`into` holds a tensor at `{_name(path)}`, where the checkpoint holds a {kind}"
            )
        index = node["tensor"]
        if type(index) is not int or not 0 <= index < len(self.entries):
            raise Invalid(f"unexpected value {str(node)[:100]!r}")
        entry = self.entries[index]
        if tuple(into.shape) != entry.shape or into.dtype != entry.dtype:
            raise SerializationError(
                f"cannot load `{_name(path)}` into the tensor `into` holds there: the "
                f"checkpoint's is {entry.dtype} of shape {list(entry.shape)}, `into`'s "
                f"is {into.dtype} of shape {list(into.shape)}; nothing was loaded"
            )
        self.plan.targets.setdefault(index, []).append(into)

    def _mapping(self, node: Any, into: MutableMapping[Any, Any], path: tuple[Any, ...]) -> None:
        kind = _kind(node)
        if kind != "dict":
            raise SerializationError(
                f"`into` holds a dict at `{_name(path)}`, where the checkpoint holds a {kind}"
            )
        saved: dict[Any, Any] = {}
        for pair in node["dict"]:
            if not isinstance(pair, list) or len(pair) != 2:
                raise Invalid(f"a dict item is {pair!r}, not a [key, value] pair")
            saved[decode_state(pair[0], [])] = pair[1]
        for key in list(into):
            if key not in saved:
                raise SerializationError(
                    f"`into` holds `{_name((*path, key))}`, which the checkpoint does not "
                    f"(it holds {sorted(map(str, saved))[:20]} there); nothing was loaded"
                )
            self._slot(saved[key], into, key, (*path, key))

    def _sequence(self, node: Any, into: Any, path: tuple[Any, ...]) -> None:
        kind = _kind(node)
        want = "list" if isinstance(into, MutableSequence) else "tuple"
        items = node if kind == "list" else node.get("tuple") if kind == "tuple" else None
        if kind != want or not isinstance(items, list) or len(items) != len(into):
            shown = f"a {kind}" + (f" of {len(items)}" if isinstance(items, list) else "")
            raise SerializationError(
                f"`into` holds a {want} of {len(into)} at `{_name(path)}`, where the "
                f"checkpoint holds {shown}"
            )
        for i, item in enumerate(items):
            if isinstance(into, MutableSequence):
                self._slot(item, into, i, (*path, i))
            elif isinstance(into[i], _CONTAINERS):
                self.walk(item, into[i], (*path, i))
            elif _kind(item) == "tensor":  # a plain value in a tuple: `_rebuilt` sets it
                raise SerializationError(
                    f"`into` holds a {type(into[i]).__name__} at `{_name((*path, i))}`, "
                    f"where the checkpoint holds a tensor"
                )

    def _slot(self, node: Any, parent: Any, key: Any, path: tuple[Any, ...]) -> None:
        """``parent[key]`` is filled in place (tensors, containers) or set from the file."""
        held = parent[key]
        if isinstance(held, _CONTAINERS):
            self.walk(node, held, path)
            if isinstance(held, tuple):  # immutable: its slot gets one with the same tensors

                def set_tuple(tensors: list[torch.Tensor]) -> None:
                    parent[key] = _rebuilt(node, held, tensors)

                self.plan.settings.append(set_tuple)
            return
        if _kind(node) == "tensor":
            raise SerializationError(
                f"`into` holds a {type(held).__name__} at `{_name(path)}`, where the "
                f"checkpoint holds a tensor: put a tensor of its shape there to load it in place"
            )

        def set_value(tensors: list[torch.Tensor]) -> None:
            parent[key] = decode_state(node, tensors)

        self.plan.settings.append(set_value)


_CONTAINERS = (torch.Tensor, MutableMapping, MutableSequence, tuple)


def _rebuilt(node: Any, held: Any, tensors: list[torch.Tensor]) -> Any:
    """A tuple like ``held`` (the caller's) with the file's plain values in it."""
    if isinstance(held, tuple):
        pairs = zip(node["tuple"], held, strict=True)
        return tuple(_rebuilt(item, h, tensors) for item, h in pairs)
    if isinstance(held, _CONTAINERS):
        return held
    return decode_state(node, tensors)
