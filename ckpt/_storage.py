"""The storage interface, and its local POSIX implementation.

Every file operation the manager makes goes through a `Storage`, so that other
backends (object stores, multi-process coordination) and fault-injection tests plug
in at one place.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ckpt._errors import CheckpointDirLockedError, UnsafeFileError

EntryKind = Literal["dir", "file", "symlink", "other"]


@dataclass(frozen=True)
class Entry:
    """One name in a directory listing, as seen without following symbolic links.

    Attributes:
        name: The entry's name.
        kind: ``"dir"``, ``"file"``, ``"symlink"`` or ``"other"``.
        mtime: Modification time in seconds since the epoch.
        identity: A value that changes when the entry is replaced or modified
            (inode and modification time on POSIX).
    """

    name: str
    kind: EntryKind
    mtime: float
    identity: tuple[int, int]


class Lock(Protocol):
    """A held writer lock."""

    def release(self) -> None:
        """Release the lock; calling it twice is harmless."""
        ...


MAX_READ_BYTES = 64 << 20
"""The largest file `Storage.read_bytes` reads: ckpt's own files are small."""


class Storage(Protocol):
    """The file operations the manager needs. Paths are absolute.

    None of them follows a symbolic link in the last component of a path: a link is
    listed, renamed and removed as a link, and never read or written through.
    """

    def list_dir(self, path: Path) -> list[Entry]:
        """List ``path``; an empty list if it does not exist."""
        ...

    def entry(self, path: Path) -> Entry | None:
        """Describe ``path`` without following a final symbolic link; ``None`` if absent."""
        ...

    def read_bytes(self, path: Path) -> bytes:
        """Return the contents of the regular file at ``path``.

        Raises:
            FileNotFoundError: If there is nothing at ``path``.
            UnsafeFileError: If it is a symbolic link, a FIFO, a device or a directory,
                or holds more than `MAX_READ_BYTES`; nothing blocks or is read then.
        """
        ...

    def write_bytes(self, path: Path, data: bytes) -> None:
        """Create the file ``path`` (which must not exist) holding ``data``."""
        ...

    def replace_file(self, path: Path, data: bytes, *, durable: bool) -> None:
        """Atomically replace the file ``path`` with ``data``; fsync it if ``durable``."""
        ...

    def make_dir(self, path: Path) -> None:
        """Create the directory ``path``; it must not exist."""
        ...

    def make_dirs(self, path: Path) -> None:
        """Create ``path`` and its parents where missing."""
        ...

    def rename(self, src: Path, dst: Path) -> None:
        """Rename ``src`` to ``dst`` atomically; ``dst`` must not exist."""
        ...

    def exchange(self, a: Path, b: Path) -> bool:
        """Atomically swap ``a`` and ``b``; ``False`` (and nothing done) if unsupported."""
        ...

    def remove_tree(self, path: Path) -> None:
        """Remove ``path`` and everything under it, never following symbolic links."""
        ...

    def sync_tree(self, path: Path) -> None:
        """Call fsync on every file and directory under ``path``, and ``path`` itself."""
        ...

    def sync_dir(self, path: Path) -> None:
        """Call fsync on the directory ``path`` so renames in it are durable."""
        ...

    def lock(self, path: Path) -> Lock:
        """Take the exclusive writer lock held in the file ``path``.

        Raises:
            CheckpointDirLockedError: If another process holds it.
            UnsafeFileError: If ``path`` is a symbolic link or not a regular file.
        """
        ...


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _load_renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2`` with ``flags``; ``False`` where the OS or file system lacks it."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


_KIND_NAMES = {"dir": "directory", "symlink": "symbolic link", "other": "FIFO, socket or device"}


def describe_kind(kind: EntryKind) -> str:
    """``kind`` in words, for messages: ``"symbolic link"``, ``"directory"``..."""
    return _KIND_NAMES.get(kind, kind)


def _open_regular(path: Path, flags: int, *, create: bool = False) -> tuple[int, int]:
    """Open the regular file ``path`` without following a link or blocking on a FIFO.

    Returns the descriptor (the caller closes it) and the file's size.
    """
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    if not create:
        # Look before opening: opening a device can have effects of its own.
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(path, _kind(st.st_mode))
    try:
        fd = os.open(path, flags | (os.O_CREAT if create else 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise _unsafe(path, "symlink") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # it changed between the look and the open
        os.close(fd)
        raise _unsafe(path, _kind(st.st_mode))
    return fd, st.st_size


def _unsafe(path: Path, kind: EntryKind) -> UnsafeFileError:
    return UnsafeFileError(
        errno.EINVAL,
        f"ckpt uses only regular files here and will not follow or open a "
        f"{describe_kind(kind)}; move it away",
        str(path),
    )


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Call fsync on the directory ``path``, so that renames in it are durable."""
    _fsync_path(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY)


class _FileLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the POSIX record lock
            self._fd = None


def _kind(mode: int) -> EntryKind:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


class LocalStorage:
    """`Storage` on a local POSIX file system."""

    def __repr__(self) -> str:
        return "LocalStorage()"

    def list_dir(self, path: Path) -> list[Entry]:
        """List ``path``; an empty list if it does not exist."""
        try:
            scanner = os.scandir(path)
        except FileNotFoundError:
            return []
        entries = []
        with scanner:
            for item in scanner:
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed while listing
                    continue
                entries.append(
                    Entry(item.name, _kind(st.st_mode), st.st_mtime, (st.st_ino, st.st_mtime_ns))
                )
        return entries

    def entry(self, path: Path) -> Entry | None:
        """Describe ``path`` without following a final symbolic link; ``None`` if absent."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return Entry(path.name, _kind(st.st_mode), st.st_mtime, (st.st_ino, st.st_mtime_ns))

    def read_bytes(self, path: Path) -> bytes:
        """Return the contents of the regular file at ``path``.

        Raises:
            FileNotFoundError: If there is nothing at ``path``.
            UnsafeFileError: If it is a symbolic link, a FIFO, a device or a directory,
                or holds more than `MAX_READ_BYTES`; nothing blocks or is read then.
        """
        fd, size = _open_regular(path, os.O_RDONLY)
        try:
            chunks: list[bytes] = []
            total = 0
            # What fstat says is there, then blocks until the end of a file still growing;
            # never one read of the whole limit (that allocates it).
            while size <= MAX_READ_BYTES and (chunk := os.read(fd, max(size - total, 1 << 16))):
                total += len(chunk)
                size = max(size, total)
                chunks.append(chunk)
            if size <= MAX_READ_BYTES:
                return b"".join(chunks)
        finally:
            os.close(fd)
        raise UnsafeFileError(
            errno.EFBIG,
            f"larger than the {MAX_READ_BYTES >> 20} MiB ckpt reads of its own files",
            str(path),
        )

    def write_bytes(self, path: Path, data: bytes) -> None:
        """Create the file ``path`` (which must not exist) holding ``data``."""
        with open(path, "xb") as f:  # O_EXCL: an existing name, a link too, is refused
            f.write(data)

    def replace_file(self, path: Path, data: bytes, *, durable: bool) -> None:
        """Atomically replace the file ``path`` with ``data``; fsync it if ``durable``.

        The data goes to ``.NAME.partial`` beside it first (created afresh, never
        through a link), which a failure removes again.
        """
        partial = path.with_name(f".{path.name}.partial")
        entry = self.entry(partial)
        if entry is not None and entry.kind != "dir":  # a crash's leftover, or a link
            os.unlink(partial)
        try:
            with open(partial, "xb") as f:
                f.write(data)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        if durable:
            self.sync_dir(path.parent)

    def make_dir(self, path: Path) -> None:
        """Create the directory ``path``; it must not exist."""
        os.mkdir(path)

    def make_dirs(self, path: Path) -> None:
        """Create ``path`` and its parents where missing."""
        os.makedirs(path, exist_ok=True)

    def rename(self, src: Path, dst: Path) -> None:
        """Rename ``src`` to ``dst`` atomically; ``dst`` must not exist."""
        if _rename2(src, dst, _RENAME_NOREPLACE):
            return
        if os.path.lexists(dst):  # no RENAME_NOREPLACE here: the writer lock makes this safe
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        os.rename(src, dst)

    def exchange(self, a: Path, b: Path) -> bool:
        """Atomically swap ``a`` and ``b``; ``False`` (and nothing done) if unsupported."""
        return _rename2(a, b, _RENAME_EXCHANGE)

    def remove_tree(self, path: Path) -> None:
        """Remove ``path`` and everything under it, never following symbolic links."""
        if self.entry(path) is None:
            return
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def sync_tree(self, path: Path) -> None:
        """Call fsync on every file and directory under ``path``, and ``path`` itself."""
        for root, dirs, files in os.walk(path, topdown=False, followlinks=False):
            for name in files:
                full = os.path.join(root, name)
                if stat.S_ISREG(os.lstat(full).st_mode):
                    _fsync_path(full, os.O_RDONLY)
            for name in dirs:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    _fsync_path(full, os.O_RDONLY | os.O_DIRECTORY)
        self.sync_dir(path)

    def sync_dir(self, path: Path) -> None:
        """Call fsync on the directory ``path`` so renames in it are durable."""
        fsync_dir(path)

    def lock(self, path: Path) -> _FileLock:
        """Take the exclusive writer lock held in the file ``path``.

        A POSIX record lock: the kernel drops it when the process dies, so a restart
        after ``kill -9`` is never blocked, and a forked child does not inherit it.

        Raises:
            CheckpointDirLockedError: If another process holds it.
            UnsafeFileError: If ``path`` is a symbolic link or not a regular file.
        """
        fd, _ = _open_regular(path, os.O_RDWR, create=True)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise CheckpointDirLockedError(
                f"another process ({holder}) is the writer of this checkpoint directory "
                f"(it holds {path}); only one writer per directory is allowed: stop the "
                f"other run, or open this one with read_only=True to inspect it"
            ) from exc
        with contextlib.suppress(OSError):  # who holds it is only for the message above
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        return _FileLock(fd)


def lock_held(path: Path) -> bool:
    """Whether a writer holds the lock file ``path`` (taken with `LocalStorage.lock`).

    Never call it for a lock this process holds: closing any descriptor of the file
    drops the process's own POSIX lock on it.
    """
    try:
        fd, _ = _open_regular(path, os.O_RDONLY)
    except OSError:  # absent, or not a lock ckpt made
        return False
    try:
        # A shared lock conflicts only with a writer's exclusive one.
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False
