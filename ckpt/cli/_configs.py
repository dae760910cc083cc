"""The command line's configs and directories: reading, validating, opening."""

from __future__ import annotations

from collections.abc import Mapping
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
from ckpt.storage import Storage, join, open_storage, url_protocol
from ckpt.storage.local import is_dir


class CliError(Exception):
    """A failure reported as one ``ckpt: error:`` line, with exit status 1."""


def _open(path: str, config_file: str | None = None) -> tuple[Storage, str]:
    """DIR's storage and location, as the library names them.

    A store's credentials come from the environment or the config's ``storage_options``.
    """
    options = None
    if config_file is not None:
        found = _read_config_file(config_file)[0].get("storage_options")
        options = found if isinstance(found, Mapping) else None
    try:
        return open_storage(path, options)
    except (ImportError, ValueError) as exc:
        raise CliError(f"cannot open {path}: {exc}") from exc


def location(path: str) -> str:
    """DIR as the library names it: a URL as given, a local path made absolute."""
    return _open(path)[1]


def _existing_dir(path: str, config_file: str | None = None) -> str:
    """DIR, checked to exist (on a store: to hold objects)."""
    storage, directory = _open(path, config_file)
    found = storage.entry(directory)
    local = url_protocol(directory) is None
    if found is None or (found.kind != "dir" and not (local and is_dir(directory))):
        what = "does not exist" if found is None else "is not a directory"
        raise CliError(f"{directory} {what}")
    return directory


def _writer(config: CheckpointConfig, doing: str) -> CheckpointManager:
    """Open the config's directory as its writer, which runs recovery first."""
    storage, directory = open_storage(config.checkpoint_dir, config.storage_options)
    # A writer creates .ckpt/ for its lock: never in a directory mistyped on the command line.
    if storage.entry(join(directory, ".ckpt")) is None:
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
        raise CliError(str(exc)) from exc  # a YAML error's caret is on a line of its own


def _load_config(path: str, overrides: Mapping[str, Any]) -> CheckpointConfig:
    data, where = _read_config_file(path)
    try:
        return load_config({**data, **overrides})
    except ValidationError as exc:
        raise CliError(explain_config_error(exc, path, where)) from exc


def _config_for(
    directory: str, path: str | None, overrides: Mapping[str, Any] | None = None
) -> CheckpointConfig:
    """The config of ``path`` (keep-all without one) for ``directory``, with ``overrides``."""
    keys = {**(overrides or {}), "checkpoint_dir": directory}
    if path is None:
        return load_config(keys)
    return _load_config(path, keys)
