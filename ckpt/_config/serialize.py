"""Turning training info and run configs into bytes, or a clear error before any write."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from ckpt._errors import NonFiniteMetricWarning, SerializationError, warn
from ckpt._text import short_repr

logger = logging.getLogger("ckpt")

_ACCEPTED = (
    "accepted: str, int, float, bool, None, numpy scalars, one-element arrays or "
    "tensors, paths, and lists, tuples and string-keyed dicts of these"
)


def _scalar_from_array(value: Any, where: str, kind: str) -> Any:
    size = int(value.size) if kind == "numpy array" else int(value.numel())
    if size != 1:
        shape = tuple(value.shape)
        raise SerializationError(
            f"{where} is a {kind} of shape {shape} ({size} elements); only single-element "
            f"values can be stored: pass a number, e.g. value.mean().item()"
        )
    try:
        return value.item()
    except (RuntimeError, NotImplementedError) as exc:  # a meta tensor has no value to read
        device = getattr(value, "device", "cpu")
        raise SerializationError(
            f"{where} is a {kind} whose value cannot be read on {device} ({exc}); pass a "
            f"number computed on a real device"
        ) from None


_MAX_DEPTH = 64  # how deep training info and a run config may nest
_MAX_INT_BITS = 1024  # far beyond any counter; a longer int fails to print as a number


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported
    return torch is not None and isinstance(value, torch.Tensor)


def _to_plain(root: Any, name: str, *, json_keys: bool, nonfinite_to_none: bool) -> Any:
    """A copy of ``root`` made only of JSON/YAML-safe types, or `SerializationError`."""
    active: set[int] = set()  # containers on the current path, to catch cycles

    def container(value: Any, where: str) -> Any:
        if len(active) >= _MAX_DEPTH:
            raise SerializationError(
                f"{where[:100]}... nests more than {_MAX_DEPTH} levels deep, which cannot be "
                f"stored; flatten it"
            )
        if id(value) in active:
            raise SerializationError(
                f"{where} contains itself (a circular reference), which cannot be stored"
            )
        active.add(id(value))
        try:
            if isinstance(value, Mapping):
                out = {}
                for key, item in value.items():
                    if json_keys and not isinstance(key, str):
                        raise SerializationError(
                            f"{where} has the key {key!r} of type {type(key).__name__}; "
                            f"JSON objects need string keys: convert it with str()"
                        )
                    out[key] = convert(item, f"{where}[{key!r}]")
                return out
            return [convert(item, f"{where}[{i}]") for i, item in enumerate(value)]
        finally:
            active.discard(id(value))

    def convert(value: Any, where: str) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = _scalar_from_array(value, where, "numpy array")
        elif _is_tensor(value):
            value = _scalar_from_array(value, where, "torch tensor")
        if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            raise SerializationError(
                f"{where} is an integer of {value.bit_length()} bits, too large to store "
                f"as a number (at most {_MAX_INT_BITS} bits); store it as a string"
            )
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float):
            if nonfinite_to_none and not math.isfinite(value):
                text = f"{where} is {value!r}: stored as null (JSON has no NaN or inf)"
                warn(NonFiniteMetricWarning, text)
                return None
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (Mapping, list, tuple)):
            return container(value, where)
        raise SerializationError(
            f"{where} is a {type(value).__module__}.{type(value).__qualname__} "
            f"({short_repr(value)}), "
            f"which cannot be stored; {_ACCEPTED}"
        )

    return convert(root, name)


def encode_training_info(training_info: Mapping[str, Any]) -> bytes:
    """Return ``training_info`` as JSON bytes that any parser reads.

    The caller's mapping is never modified. Tensors and numpy scalars become numbers;
    NaN and infinities become ``null`` (with a warning), since standard JSON has no
    spelling for them.

    Raises:
        SerializationError: If a value cannot be stored, naming where it is.
    """
    if not isinstance(training_info, Mapping):
        raise SerializationError(
            f"training_info must be a dict, got {type(training_info).__name__}"
        )
    plain = _to_plain(training_info, "training_info", json_keys=True, nonfinite_to_none=True)
    return json.dumps(plain, allow_nan=False, indent=2).encode()


def encode_run_config(run_config: Any) -> bytes:
    """Return ``run_config`` as YAML bytes (``yaml.safe_dump``); the input is not modified.

    A pydantic model (anything with ``model_dump``, as NeMo RL passes its run config) is
    dumped with ``mode="json"`` first, so enums and paths become plain values.

    Raises:
        SerializationError: If a value cannot be stored, naming where it is.
    """
    dump = getattr(run_config, "model_dump", None)
    if not isinstance(run_config, Mapping) and callable(dump):
        run_config = dump(mode="json")
    if not isinstance(run_config, Mapping):
        raise SerializationError(f"run_config must be a dict, got {type(run_config).__name__}")
    plain = _to_plain(run_config, "run_config", json_keys=False, nonfinite_to_none=False)
    try:
        return yaml.safe_dump(plain).encode()
    except yaml.YAMLError as exc:  # e.g. a key YAML cannot represent
        raise SerializationError(f"run_config cannot be written as YAML: {exc}") from exc


def _json(data: bytes) -> Any:
    """``json.loads``, with nesting too deep for it reported as a `ValueError`."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("it is nested too deeply to be read") from None


def decode_training_info(data: bytes) -> dict[str, Any]:
    """Parse a ``training_info.json`` (NeMo RL's manager's ``NaN`` spellings included).

    Raises:
        ValueError: If it is not a JSON object (or not UTF-8 JSON at all).
    """
    parsed = _json(data)
    if not isinstance(parsed, dict):
        raise ValueError(f"expected a JSON object, found {type(parsed).__name__}")
    return parsed


#: The config fields that, with the ranking, decide what retention keeps.
RETENTION_FIELDS = ("retention", "keep_top_k", "ft_keep_latest_k", "save_period", "protect_best")


def encode_ranking(
    metric_name: str | None,
    higher_is_better: bool,
    custom: str | None,
    retention: Mapping[str, Any] | None = None,
) -> bytes:
    """The contents of ``.ckpt/ranking.json``: the ranking a run's writer commits with.

    ``retention`` is ``{"config": {field: value}}`` (the `RETENTION_FIELDS` of the
    writer's config) or ``{"custom": repr}`` for a policy object of the run's own.
    """
    record: dict[str, Any] = (
        {"custom": custom}
        if custom is not None
        else {"metric_name": metric_name, "higher_is_better": higher_is_better}
    )
    if retention is not None:
        record["retention"] = dict(retention)
    return json.dumps(record).encode()


def decode_ranking(data: bytes) -> dict[str, Any]:
    """Parse ``.ckpt/ranking.json`` (a record without ``retention`` is an older writer's).

    Raises:
        ValueError: If it is not what `encode_ranking` writes.
    """
    parsed = _json(data)
    if isinstance(parsed, dict) and "retention" in parsed:
        retention = parsed["retention"]
        custom = isinstance(retention, dict) and retention.keys() == {"custom"}
        fields = (
            isinstance(retention, dict)
            and retention.keys() == {"config"}
            and isinstance(retention["config"], dict)
            # A replicated local tier records where its replica is too.
            and retention["config"].keys() - {"replicate"} == set(RETENTION_FIELDS)
        )
        if not (fields or (custom and isinstance(retention["custom"], str))):
            raise ValueError(f"expected a retention record, found {short_repr(retention)}")
    keys = set(parsed) - {"retention"} if isinstance(parsed, dict) else set()
    if isinstance(parsed, dict) and keys == {"custom"}:
        if isinstance(parsed["custom"], str):
            return parsed
    elif isinstance(parsed, dict) and keys == {"metric_name", "higher_is_better"}:
        name, higher = parsed["metric_name"], parsed["higher_is_better"]
        if (name is None or (isinstance(name, str) and name)) and isinstance(higher, bool):
            return parsed
    raise ValueError(f"expected a ranking record, found {short_repr(parsed)}")


def encode_pins(pins: set[int]) -> bytes:
    """The contents of ``.ckpt/pins.json``."""
    return json.dumps({"pinned": sorted(pins)}).encode()


def decode_pins(data: bytes) -> set[int]:
    """Parse ``.ckpt/pins.json``: ``{"pinned": [step, ...]}``.

    Raises:
        ValueError: If it is not JSON of that shape, with non-negative integer steps.
    """
    parsed = _json(data)
    pinned = parsed.get("pinned") if isinstance(parsed, dict) else None
    if not isinstance(pinned, list):
        raise ValueError(f'expected {{"pinned": [step, ...]}}, found {short_repr(parsed)}')
    for step in pinned:
        if type(step) is not int or step < 0:
            raise ValueError(
                f"`pinned` holds {short_repr(step)}, which is not a step (a non-negative integer)"
            )
    return set(pinned)
