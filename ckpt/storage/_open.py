"""From what a user names (a path, a URL, a path object) to a storage and a location."""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ckpt._text import USERINFO, redact_url
from ckpt.storage.base import Storage
from ckpt.storage.fsspec import FsspecStorage
from ckpt.storage.local import LocalStorage

if TYPE_CHECKING:
    from upath import UPath

# universal-pathlib (and fsspec under it) is imported only when a URL needs it: a run
# on local disk does not pay for it at start-up.
CheckpointPath = Union[Path, "UPath"]
"""A path handed to users: a `pathlib.Path` on local disk, a ``UPath`` for a URL."""


class PathStr(str):
    """A checkpoint's path as NeMo RL's manager returns it, a ``str``, that joins with ``/``.

    `CheckpointManager.get_latest_checkpoint_path` and `get_best_checkpoint_path`
    return one: it is the string NeMo RL's callers expect (``os.path.join``, ``==``,
    ``json.dumps``, f-strings all take it), and ``path / "model.pt"`` (or `path`) gives
    the storage's own path type, the one `init_tmp_checkpoint` returns: a
    `pathlib.Path` on local disk, a ``UPath`` on a store, with the store's options. So
    one resume snippet runs on both.
    """

    __module__ = "ckpt.storage"  # where users import it from, and what its type prints

    path: CheckpointPath
    """The same location as the storage's path type."""

    def __new__(cls, path: CheckpointPath) -> PathStr:
        made = super().__new__(cls, str(path))
        made.path = path
        return made

    def __truediv__(self, other: str | os.PathLike[str]) -> CheckpointPath:
        return self.path / other

    def __reduce__(self) -> tuple[Any, ...]:
        return (PathStr, (self.path,))


PathInput = Union[str, "os.PathLike[str]", "UPath"]
"""What users may name a location with: a path, a URL, or a path object of either."""

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_LOCAL = ("file", "local")  # fsspec's names for the local file system

# The package each fsspec protocol needs, and the extra of ckpt that installs it.
_EXTRAS = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
}


def _upath(value: PathInput) -> UPath | None:
    if isinstance(value, PathStr):
        value = value.path  # the path a manager returned: its store's options travel with it
    upath = sys.modules.get("upath")  # a UPath exists only once upath is imported
    return value if upath is not None and isinstance(value, upath.UPath) else None


def _protocol(value: PathInput) -> str | None:
    as_upath = _upath(value)
    if as_upath is not None:
        return str(as_upath.protocol) or None
    if isinstance(value, os.PathLike):
        return None
    match = _URL.match(str(value))
    return match.group(1).lower() if match else None


def url_protocol(value: PathInput) -> str | None:
    """The protocol of a URL on a store (``"s3"`` for ``s3://b/run``).

    ``None`` for a plain path and for a ``file://`` URL, which are local disk.
    """
    protocol = _protocol(value)
    return None if protocol in _LOCAL else protocol


def _local(value: PathInput) -> str:
    text = str(value)
    if _protocol(value) in _LOCAL:
        text = text.split("://", 1)[1]
    return os.path.abspath(os.fspath(text))


def refuse_credentials(value: PathInput, field: str = "checkpoint_dir") -> None:
    """Refuse a URL that carries credentials (``s3://KEY:SECRET@bucket/run``).

    No fsspec store ckpt supports reads credentials from the URL (s3fs would send
    ``KEY:SECRET@bucket`` as the bucket's name, and boto echo it in its error), and a
    URL is printed in logs and messages: credentials belong in ``storage_options`` or
    the environment.

    Raises:
        ValueError: Naming the URL with its credentials hidden.
    """
    text = str(value)
    if url_protocol(value) is not None and USERINFO.match(text) is not None:
        raise ValueError(
            f"`{field}` {redact_url(text)!r} carries credentials in the URL (hidden here): "
            f"pass them in `storage_options` (key=..., secret=... for s3://) or the "
            f"environment (AWS_ACCESS_KEY_ID, ...), never in the URL"
        )


def open_storage(
    checkpoint_dir: PathInput,
    storage_options: Mapping[str, Any] | None = None,
    *,
    lease_seconds: float = 30.0,
    storage: Storage | None = None,
) -> tuple[Storage, str]:
    """The storage a ``checkpoint_dir`` names, and its location there.

    A plain path (or ``file://`` URL) is local disk (`LocalStorage`); any other URL is
    opened with fsspec, passing ``storage_options`` (credentials, ``endpoint_url``...)
    to its file system (`FsspecStorage`). Given a ``storage``, that one is used and
    only the location is worked out.

    Raises:
        ImportError: If the URL's protocol needs a package that is not installed; the
            message names ckpt's extra that installs it.
        ValueError: If fsspec knows no such protocol, or the URL carries credentials.
    """
    refuse_credentials(checkpoint_dir)
    if storage is not None:
        return storage, location_of(storage, checkpoint_dir)
    protocol = url_protocol(checkpoint_dir)
    if protocol is None:
        return LocalStorage(), _local(checkpoint_dir)
    import fsspec  # noqa: PLC0415 - only a URL needs it, and it is slow to import

    as_upath = _upath(checkpoint_dir)
    options = {
        **(as_upath.storage_options if as_upath is not None else {}),
        **(storage_options or {}),
    }
    try:
        fs = fsspec.filesystem(protocol, **options)
    except ImportError as exc:
        package, extra = _EXTRAS.get(protocol, (None, None))
        if extra is None:
            raise
        raise ImportError(
            f"a {protocol}:// checkpoint_dir needs {package}: "
            f"pip install -e '.[{extra}]' in ckpt's clone ({exc})"
        ) from exc
    opened = FsspecStorage(fs, lease_seconds=lease_seconds)
    return opened, opened.canonical(str(checkpoint_dir))


# Two spellings of one store's scheme: s3fs answers both, gcsfs both.
_SCHEME_ALIASES = {"s3a": "s3", "gcs": "gs"}


def _place_key(value: PathInput) -> tuple[str, str]:
    """A place as it resolves: a local path through its links, a URL in one spelling."""
    protocol = url_protocol(value)
    if protocol is None:
        return "", os.path.realpath(_local(value))
    rest = str(value).split("://", 1)[1]
    return _SCHEME_ALIASES.get(protocol, protocol), rest.rstrip("/")


def same_place(a: PathInput, b: PathInput) -> bool:
    """Whether two ``checkpoint_dir`` values name one place, or one is inside the other.

    Compared as they resolve, not as they are spelt: a link to the directory, or
    ``s3a://`` for ``s3://``, is the same place.
    """
    (p, x), (q, y) = _place_key(a), _place_key(b)
    sep = "/" if p else os.sep
    return p == q and (x == y or x.startswith(y + sep) or y.startswith(x + sep))


def location_of(storage: Storage, value: PathInput) -> str:
    """The location string of ``value`` (a user's path or URL) on ``storage``."""
    if isinstance(storage, FsspecStorage):
        return storage.canonical(str(value))
    if url_protocol(value) is not None:
        return str(value).rstrip("/")  # a storage of one's own that takes URLs
    return _local(value)


def user_path(storage: Storage, location: str) -> CheckpointPath:
    """``location`` as the path object users get: a ``UPath`` on an fsspec store."""
    fsspec_storage = isinstance(storage, FsspecStorage)
    if not fsspec_storage and url_protocol(location) is None:
        return Path(location)
    from upath import UPath  # noqa: PLC0415 - see CheckpointPath

    options = storage.fs.storage_options if isinstance(storage, FsspecStorage) else {}
    with warnings.catch_warnings():
        # universal-pathlib warns of each file system it has no class of its own for.
        warnings.filterwarnings("ignore", "UPath .* not explicitly implemented")
        path: UPath = UPath(location, **options)
    return path
