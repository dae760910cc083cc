"""The storage interface: what ckpt asks of a file system or an object store.

Paths are strings. A checkpoint directory is a location string (``/data/run1`` on local
disk; a URL root fits the same way), and every path below it is made with `join`, so
no layer above the storage parses, resolves or normalizes a path itself.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol, runtime_checkable

EntryKind = Literal["dir", "file", "symlink", "other"]

MAX_READ_BYTES = 64 << 20
"""The largest file `Storage.read_bytes` reads by default: ckpt's own files are small."""


@dataclass(frozen=True)
class Entry:
    """One name in a directory listing, as seen without following symbolic links.

    Attributes:
        name: The entry's name.
        kind: ``"dir"``, ``"file"``, ``"symlink"`` or ``"other"``.
        mtime: Modification time in seconds since the epoch.
        version: An opaque string that changes when the entry is replaced or modified
            (inode and modification time on POSIX, a generation in memory, an ETag on
            an object store). Compare it for equality only.
        size: The size in bytes of a file; 0 for anything else.
    """

    name: str
    kind: EntryKind
    mtime: float
    version: str
    size: int = 0


@dataclass(frozen=True)
class Capabilities:
    """What a storage guarantees; the layers above ask these instead of assuming.

    Attributes:
        atomic_rename: `Storage.rename` moves a file or a whole directory in one
            atomic step, and refuses an existing target.
        atomic_exchange: `Storage.exchange` may swap two names atomically (it still
            answers ``False`` where a particular file system lacks it).
        directories: Directories are entries of their own: an empty one exists.
        fsync: Writes are durable only once synced (`Storage.sync_tree`,
            `Storage.sync_dir`, ``durable=True``); without it, a write that returned is
            durable.
        exclusive_create: `Storage.write_bytes` refuses an existing name atomically.
        locking: `Storage.lock` is an exclusive lock that the death of its holder
            releases (where it is not, the lock is a lease that expires).
        conditional_replace: The storage can replace a file only if it is still the
            version read (``FsspecStorage.replace_if``): what a lease needs.
        content_versions: A file's `Entry.version` names its content (an S3 ETag), so
            a manifest can record it instead of a digest of the bytes.
    """

    atomic_rename: bool = False
    atomic_exchange: bool = False
    directories: bool = False
    fsync: bool = False
    exclusive_create: bool = False
    locking: bool = False
    conditional_replace: bool = False
    content_versions: bool = False


class Lock(Protocol):
    """A held writer lock."""

    def release(self) -> None:
        """Release the lock; calling it twice is harmless."""
        ...

    def check(self) -> None:
        """Raise `LeaseLostError` if the lock is no longer this writer's.

        A lock the kernel holds is never lost; a lease on a store is, when it went
        unrenewed for its whole duration.
        """
        ...


@runtime_checkable
class Storage(Protocol):
    """The file operations ckpt needs; the only code that touches a file system or store.

    None of them follows a symbolic link in the last component of a path: a link is
    listed, renamed and removed as a link, and never read or written through.
    """

    @property
    def capabilities(self) -> Capabilities:
        """What this storage guarantees."""
        ...

    def canonical(self, path: str) -> str:
        """A string naming the location ``path`` is, the same for every spelling of it."""
        ...

    def list_dir(self, path: str) -> list[Entry]:
        """List ``path``; an empty list if it does not exist."""
        ...

    def entry(self, path: str) -> Entry | None:
        """Describe ``path`` without following a final symbolic link; ``None`` if absent."""
        ...

    def open_read(self, path: str, *, follow_links: bool = False) -> BinaryIO:
        """Open the regular file ``path`` for streaming reads (the caller closes it).

        ``follow_links`` reads through a symbolic link (a user's file may be one;
        ckpt's own never are).

        Raises:
            FileNotFoundError: If there is nothing at ``path``.
            UnsafeFileError: If it is a FIFO, a device or a directory (or a link, unless
                ``follow_links``); nothing blocks then.
        """
        ...

    def open_write(self, path: str, *, durable: bool) -> AbstractContextManager[BinaryIO]:
        """A stream whose bytes replace the file ``path`` when the block exits cleanly.

        Readers never see a partial file under ``path``: they see the previous file (or
        none) until the block ends, and after an exception nothing is left behind.
        With ``durable`` the file and its name are synced before the block returns.
        """
        ...

    def read_bytes(self, path: str, *, limit: int = MAX_READ_BYTES) -> bytes:
        """Return the contents of the regular file at ``path``.

        Raises:
            FileNotFoundError: If there is nothing at ``path``.
            UnsafeFileError: If it is a symbolic link, a FIFO, a device or a directory,
                or holds more than ``limit`` bytes; nothing blocks or is read then.
        """
        ...

    def write_bytes(self, path: str, data: bytes) -> None:
        """Create the file ``path`` (which must not exist) holding ``data``."""
        ...

    def replace_file(self, path: str, data: bytes, *, durable: bool) -> None:
        """Atomically replace the file ``path`` with ``data``; sync it if ``durable``."""
        ...

    def make_dir(self, path: str) -> None:
        """Create the directory ``path``; it must not exist."""
        ...

    def make_dirs(self, path: str) -> None:
        """Create ``path`` and its parents where missing."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` atomically; ``dst`` must not exist."""
        ...

    def exchange(self, a: str, b: str) -> bool:
        """Atomically swap ``a`` and ``b``; ``False`` (and nothing done) if unsupported."""
        ...

    def remove_file(self, path: str) -> None:
        """Remove the file (or link) ``path``; nothing if it is absent."""
        ...

    def remove_tree(self, path: str) -> None:
        """Remove ``path`` and everything under it, never following symbolic links."""
        ...

    def sync_tree(self, path: str) -> None:
        """Make every file and directory under ``path``, and ``path`` itself, durable.

        ``path`` may be a file: then its contents are made durable (not its name: sync
        its directory for that).
        """
        ...

    def sync_dir(self, path: str) -> None:
        """Make the names in the directory ``path`` (renames, removals) durable."""
        ...

    def lock(self, path: str) -> Lock:
        """Take the exclusive writer lock held in the file ``path``.

        Raises:
            CheckpointDirLockedError: If another process holds it.
            UnsafeFileError: If ``path`` is a symbolic link or not a regular file.
        """
        ...

    def lock_held(self, path: str) -> bool:
        """Whether a writer (of another process) holds the lock file ``path``."""
        ...


@runtime_checkable
class ConditionalStorage(Storage, Protocol):
    """A `Storage` that can replace a file only if it is still the version read."""

    def replace_if(self, path: str, data: bytes, version: str) -> bool:
        """Put ``data`` at ``path`` if its `Entry.version` is still ``version``.

        Returns:
            Whether it was replaced.
        """
        ...

    def remove_if(self, path: str, version: str) -> bool:
        """Remove the file ``path`` if its `Entry.version` is still ``version``.

        Returns:
            Whether it was removed (``False`` if it changed or was absent).
        """
        ...


def join(base: str, *names: str) -> str:
    """``base`` with ``names`` appended, one ``/`` between each (a URL root works too)."""
    return posixpath.join(base, *names)


def name_of(path: str) -> str:
    """The last component of ``path``."""
    return posixpath.basename(path.rstrip("/") or "/")


def parent_of(path: str) -> str:
    """``path`` without its last component."""
    return posixpath.dirname(path.rstrip("/") or "/")


def walk_files(storage: Storage, path: str) -> Iterator[tuple[str, Entry]]:
    """Every file under the directory ``path`` (never through a link), with its path."""
    pending = [path]
    while pending:
        directory = pending.pop()
        for entry in storage.list_dir(directory):
            full = join(directory, entry.name)
            if entry.kind == "dir":
                pending.append(full)
            elif entry.kind == "file":
                yield full, entry


_KIND_NAMES = {"dir": "directory", "symlink": "symbolic link", "other": "FIFO, socket or device"}


def describe_kind(kind: EntryKind) -> str:
    """``kind`` in words, for messages: ``"symbolic link"``, ``"directory"``..."""
    return _KIND_NAMES.get(kind, kind)
