"""From what a user names (a path, a URL, a path object) to a storage and a location."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

from upath import UPath

from ckpt.storage.base import Storage
from ckpt.storage.fsspec import FsspecStorage
from ckpt.storage.local import LocalStorage

CheckpointPath = Union[Path, UPath]  # noqa: UP007 - a runtime alias on Python 3.10
"""A path handed to users: a `pathlib.Path` on local disk, a ``UPath`` for a URL."""

PathInput = Union[str, "os.PathLike[str]", UPath]
"""What users may name a location with: a path, a URL, or a path object of either."""

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")

# The package each fsspec protocol needs, and the extra of ckpt that installs it.
_EXTRAS = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
}


def url_protocol(value: PathInput) -> str | None:
    """The protocol of a URL (``"s3"`` for ``s3://b/run``); ``None`` for a plain path."""
    if isinstance(value, UPath):
        return str(value.protocol) or None
    if isinstance(value, os.PathLike):
        return None
    match = _URL.match(value)
    return match.group(1).lower() if match else None


def _local(value: PathInput) -> str:
    text = str(value)
    if url_protocol(value) in ("file", "local"):
        text = text.split("://", 1)[1]
    return os.path.abspath(os.fspath(text))


def open_storage(
    checkpoint_dir: PathInput,
    storage_options: Mapping[str, Any] | None = None,
    *,
    lease_seconds: float = 30.0,
) -> tuple[Storage, str]:
    """The storage a ``checkpoint_dir`` names, and its location there.

    A plain path (or ``file://`` URL) is local disk (`LocalStorage`); any other URL is
    opened with fsspec, passing ``storage_options`` (credentials, ``endpoint_url``...)
    to its file system (`FsspecStorage`).

    Raises:
        ImportError: If the URL's protocol needs a package that is not installed; the
            message names ckpt's extra that installs it.
        ValueError: If fsspec knows no such protocol.
    """
    protocol = url_protocol(checkpoint_dir)
    if protocol is None or protocol in ("file", "local"):
        return LocalStorage(), _local(checkpoint_dir)
    import fsspec  # noqa: PLC0415 - only a URL needs it, and it is slow to import

    options = dict(storage_options or {})
    if isinstance(checkpoint_dir, UPath):
        options = {**checkpoint_dir.storage_options, **options}
    try:
        fs = fsspec.filesystem(protocol, **options)
    except ImportError as exc:
        package, extra = _EXTRAS.get(protocol, (None, None))
        if extra is None:
            raise
        raise ImportError(
            f"a {protocol}:// checkpoint_dir needs {package}: "
            f"pip install 'ckpt-warden[{extra}]' ({exc})"
        ) from exc
    storage = FsspecStorage(fs, lease_seconds=lease_seconds)
    return storage, storage.url(str(checkpoint_dir))


def location_of(storage: Storage, value: PathInput) -> str:
    """The location string of ``value`` (a user's path or URL) on ``storage``."""
    if isinstance(storage, FsspecStorage):
        return storage.url(str(value))
    if url_protocol(value) not in (None, "file", "local"):
        return str(value).rstrip("/")  # a storage of one's own that takes URLs
    return _local(value)


def user_path(storage: Storage, location: str) -> CheckpointPath:
    """``location`` as the path object users get: a ``UPath`` on an fsspec store."""
    fsspec_storage = isinstance(storage, FsspecStorage)
    if fsspec_storage or url_protocol(location) not in (None, "file", "local"):
        options = storage.fs.storage_options if isinstance(storage, FsspecStorage) else {}
        with warnings.catch_warnings():
            # universal-pathlib warns of each file system it has no class of its own for.
            warnings.filterwarnings("ignore", "UPath .* not explicitly implemented")
            path: UPath = UPath(location, **options)
        return path
    return Path(location)
