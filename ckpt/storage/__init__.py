"""Where ckpt's bytes go: the storage interface and its backends.

This package is the only code of ckpt that touches a file system or a store; every
layer above it (commit protocols, the manager, ``ckpt.torch``, the CLI) asks a
`Storage`. A backend is a module: `LocalStorage` (the default, POSIX local disk) and
`MemoryStorage` (in memory, with simulated power cuts, for tests) and `FsspecStorage`
(any fsspec URL: S3, GCS, ``memory://``). `open_storage` picks one for a path or URL.
"""

from ckpt._text import redact_url
from ckpt.storage._open import (
    CheckpointPath,
    PathInput,
    PathStr,
    location_of,
    open_storage,
    refuse_credentials,
    url_protocol,
    user_path,
)
from ckpt.storage.base import (
    MAX_READ_BYTES,
    Capabilities,
    Entry,
    EntryKind,
    Lock,
    Storage,
    describe_kind,
    join,
    name_of,
    parent_of,
    walk_files,
)
from ckpt.storage.fsspec import FsspecStorage
from ckpt.storage.local import LocalStorage
from ckpt.storage.memory import MemoryStorage

__all__ = [
    "MAX_READ_BYTES",
    "Capabilities",
    "CheckpointPath",
    "Entry",
    "EntryKind",
    "FsspecStorage",
    "LocalStorage",
    "Lock",
    "MemoryStorage",
    "PathInput",
    "PathStr",
    "Storage",
    "describe_kind",
    "join",
    "location_of",
    "name_of",
    "open_storage",
    "parent_of",
    "redact_url",
    "refuse_credentials",
    "url_protocol",
    "user_path",
    "walk_files",
]
