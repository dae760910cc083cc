"""`Storage` on a local POSIX file system: the default."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import io
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from typing import BinaryIO

from ckpt._errors import CheckpointDirLockedError, UnsafeFileError
from ckpt.storage.base import MAX_READ_BYTES, Capabilities, Entry, EntryKind, describe_kind

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


def _rename2(src: str, dst: str, flags: int) -> bool:
    """``renameat2`` with ``flags``; ``False`` where the OS or file system lacks it."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _open_regular(
    path: str, flags: int, *, create: bool = False, follow: bool = False
) -> tuple[int, int]:
    """Open the regular file ``path`` without following a link or blocking on a FIFO.

    Returns the descriptor (the caller closes it) and the file's size.
    """
    flags |= os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    if not create:
        # Look before opening: opening a device can have effects of its own.
        st = os.stat(path) if follow else os.lstat(path)
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


def _unsafe(path: str, kind: EntryKind) -> UnsafeFileError:
    return UnsafeFileError(
        errno.EINVAL,
        f"ckpt uses only regular files here and will not follow or open a "
        f"{describe_kind(kind)}; move it away",
        os.fspath(path),
    )


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Call fsync on the directory ``path``, so that renames in it are durable."""
    _fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


class _FileLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the POSIX record lock
            self._fd = None

    def check(self) -> None:
        """Nothing: the kernel holds the lock until it is released."""


def _kind(mode: int) -> EntryKind:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


_LOCAL = Capabilities(
    atomic_rename=True,
    atomic_exchange=True,
    directories=True,
    fsync=True,
    exclusive_create=True,
    locking=True,
)


def _entry(name: str, st: os.stat_result) -> Entry:
    kind = _kind(st.st_mode)
    size = st.st_size if kind == "file" else 0
    return Entry(name, kind, st.st_mtime, f"{st.st_ino}:{st.st_mtime_ns}", size)


def _partial(path: str) -> str:
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.partial")


class LocalStorage:
    """`Storage` on a local POSIX file system.

    Paths are file system paths (``str`` or ``os.PathLike``); a directory is renamed,
    exchanged (``renameat2`` where Linux has it) and fsynced as POSIX defines, and the
    writer lock is a POSIX record lock.
    """

    def __repr__(self) -> str:
        return "LocalStorage()"

    @property
    def capabilities(self) -> Capabilities:
        """Everything: atomic renames and exchanges, directories, fsync, locks."""
        return _LOCAL

    def canonical(self, path: str) -> str:
        """The real path of ``path``, every link and ``..`` resolved."""
        return os.path.realpath(path)

    def list_dir(self, path: str) -> list[Entry]:
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
                entries.append(_entry(item.name, st))
        return entries

    def entry(self, path: str) -> Entry | None:
        """Describe ``path`` without following a final symbolic link; ``None`` if absent."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return _entry(os.path.basename(os.fspath(path)), st)

    def open_read(self, path: str, *, follow_links: bool = False) -> BinaryIO:
        """Open the regular file ``path`` for unbuffered streaming reads.

        Args:
            path: The file.
            follow_links: Read through a symbolic link (a user's file may be one;
                ckpt's own never are).

        Raises:
            FileNotFoundError: If there is nothing at ``path``.
            UnsafeFileError: If it is a FIFO, a device or a directory (or a link, unless
                ``follow_links``); nothing blocks then.
        """
        fd, _ = _open_regular(path, os.O_RDONLY, follow=follow_links)
        return io.FileIO(fd, "rb")

    @contextlib.contextmanager
    def open_write(self, path: str, *, durable: bool) -> Iterator[BinaryIO]:
        """A buffered stream whose bytes replace the file ``path`` when the block exits.

        The bytes go to ``.NAME.partial`` beside it (created afresh, never through a
        link), which is renamed over ``path`` at the end, after an fsync if ``durable``
        (and the directory's fsync after the rename); an exception removes it instead.
        """
        partial = _partial(path)
        found = self.entry(partial)
        if found is not None and found.kind != "dir":  # a crash's leftover, or a link
            os.unlink(partial)
        fd = os.open(
            partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        try:
            with open(fd, "wb", buffering=1 << 20) as f:
                yield f
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        if durable:
            fsync_dir(os.path.dirname(os.fspath(path)) or ".")

    def read_bytes(self, path: str, *, limit: int = MAX_READ_BYTES) -> bytes:
        """Return the contents of the regular file at ``path``.

        Raises:
            FileNotFoundError: If there is nothing at ``path``.
            UnsafeFileError: If it is a symbolic link, a FIFO, a device or a directory,
                or holds more than ``limit`` bytes; nothing blocks or is read then.
        """
        fd, size = _open_regular(path, os.O_RDONLY)
        try:
            chunks: list[bytes] = []
            total = 0
            # What fstat says is there, then blocks until the end of a file still growing;
            # never one read of the whole limit (that allocates it).
            while size <= limit and (chunk := os.read(fd, max(size - total, 1 << 16))):
                total += len(chunk)
                size = max(size, total)
                chunks.append(chunk)
            if size <= limit:
                return b"".join(chunks)
        finally:
            os.close(fd)
        raise UnsafeFileError(
            errno.EFBIG,
            f"larger than the {limit >> 20} MiB ckpt reads of its own files",
            os.fspath(path),
        )

    def write_bytes(self, path: str, data: bytes) -> None:
        """Create the file ``path`` (which must not exist) holding ``data``."""
        with open(path, "xb") as f:  # O_EXCL: an existing name, a link too, is refused
            f.write(data)

    def replace_file(self, path: str, data: bytes, *, durable: bool) -> None:
        """Atomically replace the file ``path`` with ``data``; fsync it if ``durable``.

        The data goes to ``.NAME.partial`` beside it first (created afresh, never
        through a link), which a failure removes again.
        """
        with self.open_write(path, durable=durable) as f:
            f.write(data)

    def make_dir(self, path: str) -> None:
        """Create the directory ``path``; it must not exist."""
        os.mkdir(path)

    def make_dirs(self, path: str) -> None:
        """Create ``path`` and its parents where missing."""
        os.makedirs(path, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` atomically; ``dst`` must not exist."""
        src, dst = os.fspath(src), os.fspath(dst)
        if _rename2(src, dst, _RENAME_NOREPLACE):
            return
        if os.path.lexists(dst):  # no RENAME_NOREPLACE here: the writer lock makes this safe
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
        os.rename(src, dst)

    def exchange(self, a: str, b: str) -> bool:
        """Atomically swap ``a`` and ``b``; ``False`` (and nothing done) if unsupported."""
        return _rename2(os.fspath(a), os.fspath(b), _RENAME_EXCHANGE)

    def remove_file(self, path: str) -> None:
        """Remove the file (or link) ``path``; nothing if it is absent."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def remove_tree(self, path: str) -> None:
        """Remove ``path`` and everything under it, never following symbolic links."""
        found = self.entry(path)
        if found is None:
            return
        if found.kind == "dir":
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def sync_tree(self, path: str) -> None:
        """Call fsync on every file and directory under ``path``, and ``path`` itself.

        ``path`` may be a regular file: then it alone is synced.
        """
        if stat.S_ISREG(os.lstat(path).st_mode):
            _fsync_path(path, os.O_RDONLY)
            return
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

    def sync_dir(self, path: str) -> None:
        """Call fsync on the directory ``path`` so renames in it are durable."""
        fsync_dir(os.fspath(path))

    def lock(self, path: str) -> _FileLock:
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

    def lock_held(self, path: str) -> bool:
        """Whether a writer holds the lock file ``path`` (taken with `lock`).

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


def read_named_file(path: str | os.PathLike[str], *, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a file a user named (a config).

    One byte more than ``limit`` lets the caller tell a file that is too large. Links are
    followed, and a FIFO is read to its end (``ckpt config validate <(make-config)``).

    Raises:
        OSError: If it cannot be read.
    """
    with open(path, "rb") as f:
        return f.read(limit + 1)


def is_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory, or a link to one."""
    return os.path.isdir(path)


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether anything is at ``path``, following links."""
    return os.path.exists(path)
