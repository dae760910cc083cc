"""What the trainer adapters share: a ckpt config built from a trainer's own arguments.

Built on the public API only (`CheckpointConfig`), like the adapters themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from ckpt import CheckpointConfig, LocalStorage

#: The config keys that choose what is kept; a trainer's own retention arguments
#: cannot be combined with any of them.
RETENTION_KEYS = ("retention", "keep_top_k", "ft_keep_latest_k")


def given_keys(config: CheckpointConfig | Mapping[str, Any] | BaseModel | None) -> dict[str, Any]:
    """The keys ``config`` sets explicitly, as a plain dict (defaults left out).

    Raises:
        TypeError: If ``config`` is none of the accepted kinds.
    """
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, BaseModel):  # a CheckpointConfig, or NeMo RL's CheckpointingConfig
        return config.model_dump(exclude_unset=True)
    raise TypeError(
        "`config` must be a CheckpointConfig, a mapping of config keys or a pydantic model "
        f"of them, got {type(config).__name__}"
    )


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "checkpoint_dir" and "://" not in str(a) and "://" not in str(b):
        a, b = (LocalStorage().canonical(str(p)) for p in (a, b))
    same: bool = a == b
    return same


def merge(
    owner: str,
    given: Mapping[str, Any],
    derived: Mapping[str, tuple[str, Any, Any]],
) -> dict[str, Any]:
    """``given`` plus the keys ``derived`` from the trainer's arguments.

    ``derived`` maps a config key to ``(argument, given as, value)``: the argument of
    ``owner`` that sets it, what the user gave it, and the config value that makes. A
    key both give must agree.

    Raises:
        ValueError: If ``given`` and an argument disagree, naming both.
    """
    merged = dict(given)
    for key, (argument, shown, value) in derived.items():
        if key in merged and not _same(key, merged[key], value):
            raise ValueError(
                f"{owner}: `{argument}`={shown!r} and the config's `{key}`={merged[key]!r} "
                f"disagree; give one of them, or the same value in both"
            )
        merged[key] = value
    return merged
