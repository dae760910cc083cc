"""Where ckpt's bytes go: the storage interface and its backends.

This package is the only code of ckpt that touches a file system or a store; every
layer above it (commit protocols, the manager, ``ckpt.torch``, the CLI) asks a
`Storage`. A backend is a module: `LocalStorage` (the default, POSIX local disk) and
`MemoryStorage` (in memory, with simulated power cuts, for tests).
"""

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
from ckpt.storage.local import LocalStorage
from ckpt.storage.memory import MemoryStorage

__all__ = [
    "MAX_READ_BYTES",
    "Capabilities",
    "Entry",
    "EntryKind",
    "LocalStorage",
    "Lock",
    "MemoryStorage",
    "Storage",
    "describe_kind",
    "join",
    "name_of",
    "parent_of",
    "walk_files",
]
