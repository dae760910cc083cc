"""The command line's configs and directories: reading, validating, opening."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ckpt import (
    CheckpointConfig,
    CheckpointDirLockedError,
    CheckpointManager,
    ConfigFileError,
    explain_config_error,
    load_config,
    read_config_section,
)
from ckpt.storage import LocalStorage, join
from ckpt.storage.local import is_dir


class CliError(Exception):
    """A failure reported as one ``ckpt: error:`` line, with exit status 1."""


def _existing_dir(path: str) -> Path:
    directory = Path(os.path.abspath(path))
    found = LocalStorage().entry(str(directory))
    if found is None or (found.kind != "dir" and not is_dir(directory)):
        what = "does not exist" if found is None else "is not a directory"
        raise CliError(f"{directory} {what}")
    return directory


def _writer(config: CheckpointConfig, doing: str) -> CheckpointManager:
    """Open the config's directory as its writer, which runs recovery first."""
    directory = str(config.checkpoint_dir)
    # A writer creates .ckpt/ for its lock: never in a directory mistyped on the command line.
    if LocalStorage().entry(join(directory, ".ckpt")) is None:
        with CheckpointManager(config, read_only=True) as reader:
            if not reader.list_checkpoints():
                raise CliError(f"cannot {doing}: {directory} holds no checkpoints")
    try:
        return CheckpointManager(config)
    except CheckpointDirLockedError as exc:
        raise CliError(f"cannot {doing}: {exc}") from exc


def _read_config_file(path: str) -> tuple[Mapping[str, Any], tuple[str, ...]]:
    """The checkpointing keys of a YAML file, and where they sit in it (for messages)."""
    try:
        return read_config_section(path)
    except OSError as exc:
        raise CliError(f"cannot read the config {path}: {exc.strerror or exc}") from exc
    except ConfigFileError as exc:
        raise CliError(" ".join(str(exc).split())) from exc


def _load_config(path: str, overrides: Mapping[str, Any]) -> CheckpointConfig:
    data, where = _read_config_file(path)
    try:
        return load_config({**data, **overrides})
    except ValidationError as exc:
        raise CliError(explain_config_error(exc, path, where)) from exc


def _config_for(
    directory: Path, path: str | None, overrides: Mapping[str, Any] | None = None
) -> CheckpointConfig:
    """The config of ``path`` (keep-all without one) for ``directory``, with ``overrides``."""
    keys = {**(overrides or {}), "checkpoint_dir": str(directory)}
    if path is None:
        return load_config(keys)
    return _load_config(path, keys)
