"""`Storage` in memory, modelling what survives a power cut.

Every file remembers the bytes it last had when it was synced, and every directory the
names it last had when it was synced. `MemoryStorage.power_cut` throws away everything
else, as a machine that loses power does: file contents written since their last sync
(a file never synced comes back empty), and names created, renamed or removed in a
directory since that directory's last sync. It is what the property tests use to show
that a finalized checkpoint survives a power cut at any point of any protocol.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import posixpath
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from ckpt._errors import CheckpointDirLockedError, UnsafeFileError
from ckpt.storage.base import MAX_READ_BYTES, Capabilities, Entry

_ids = itertools.count(1)


class _Node:
    def __init__(self) -> None:
        self.id = next(_ids)
        self.generation = 0
        self.mtime = time.time()

    def touched(self) -> None:
        self.generation += 1
        self.mtime = time.time()


class _File(_Node):
    def __init__(self, data: bytes = b"") -> None:
        super().__init__()
        self.data = bytes(data)
        self.durable: bytes | None = None  # what the last sync left; None: never synced


class _Dir(_Node):
    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[str, _Node] = {}
        self.durable: dict[str, _Node] | None = None


def _error(code: int, path: str) -> OSError:
    return OSError(code, f"{errno.errorcode[code]}: {path}", path)


class _Lock:
    def __init__(self, storage: MemoryStorage, path: str) -> None:
        self._storage: MemoryStorage | None = storage
        self._path = path

    def release(self) -> None:
        if self._storage is not None:
            self._storage._release(self._path)
            self._storage = None

    def check(self) -> None:
        """Nothing: the lock is held until it is released."""


class MemoryStorage:
    """A `Storage` that keeps everything in this process's memory.

    Paths are absolute POSIX-style strings (``/run``); the root ``/`` always exists.
    It is thread-safe, and it offers what local disk offers (atomic renames, directories,
    fsync, exclusive creates, locks), so both commit protocols run on it.

    Args:
        exchange: Whether `exchange` swaps atomically (``False`` makes it answer
            ``False``, as on a file system without ``RENAME_EXCHANGE``).
    """

    def __init__(self, *, exchange: bool = True) -> None:
        self._root = _Dir()
        self._root.durable = {}
        self._mutex = threading.RLock()
        self._locks: set[str] = set()
        self._exchange = exchange
        self._capabilities = Capabilities(
            atomic_rename=True,
            atomic_exchange=exchange,
            directories=True,
            fsync=True,
            exclusive_create=True,
            locking=True,
        )

    def __repr__(self) -> str:
        return f"MemoryStorage(exchange={self._exchange!r})"

    @property
    def capabilities(self) -> Capabilities:
        """Those of local disk (without atomic exchange if so constructed)."""
        return self._capabilities

    # --- paths ----------------------------------------------------------------------

    @staticmethod
    def _parts(path: str) -> list[str]:
        text = posixpath.normpath(str(path))
        if not text.startswith("/"):
            raise ValueError(f"MemoryStorage paths are absolute, got {path!r}")
        return [part for part in text.split("/") if part]

    def canonical(self, path: str) -> str:
        """``memory:<this storage>:<normalized path>``: unique to this instance."""
        return f"memory:{id(self):x}:/" + "/".join(self._parts(path))

    def _find(self, path: str) -> _Node | None:
        node: _Node = self._root
        for part in self._parts(path):
            if not isinstance(node, _Dir):  # a file where a directory should be
                raise _error(errno.ENOTDIR, path)
            found = node.entries.get(part)
            if found is None:
                return None
            node = found
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        parts = self._parts(path)
        if not parts:
            raise _error(errno.EBUSY, path)
        parent = self._find("/" + "/".join(parts[:-1]))
        if parent is None:
            raise _error(errno.ENOENT, path)
        if not isinstance(parent, _Dir):
            raise _error(errno.ENOTDIR, path)
        return parent, parts[-1]

    def _dir(self, path: str) -> _Dir:
        node = self._find(path)
        if node is None:
            raise _error(errno.ENOENT, path)
        if not isinstance(node, _Dir):
            raise _error(errno.ENOTDIR, path)
        return node

    @staticmethod
    def _describe(name: str, node: _Node) -> Entry:
        if isinstance(node, _File):
            return Entry(name, "file", node.mtime, f"{node.id}:{node.generation}", len(node.data))
        return Entry(name, "dir", node.mtime, f"{node.id}:{node.generation}")

    # --- reading --------------------------------------------------------------------

    def list_dir(self, path: str) -> list[Entry]:
        """List ``path``; an empty list if it does not exist."""
        with self._mutex:
            node = self._find(path)
            if node is None:
                return []
            if not isinstance(node, _Dir):
                raise _error(errno.ENOTDIR, path)
            return [self._describe(name, child) for name, child in node.entries.items()]

    def entry(self, path: str) -> Entry | None:
        """Describe ``path``; ``None`` if absent."""
        with self._mutex:
            node = self._find(path)
            return None if node is None else self._describe(posixpath.basename(path), node)

    def _file(self, path: str) -> _File:
        node = self._find(path)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
        if not isinstance(node, _File):
            raise UnsafeFileError(errno.EISDIR, "a directory, not a file", str(path))
        return node

    def open_read(self, path: str, *, follow_links: bool = False) -> BinaryIO:
        """A stream over the file's bytes as they are now (there are no links here)."""
        with self._mutex:
            return io.BytesIO(self._file(path).data)

    def read_bytes(self, path: str, *, limit: int = MAX_READ_BYTES) -> bytes:
        """Return the file's bytes; `UnsafeFileError` past ``limit``."""
        with self._mutex:
            data = self._file(path).data
        if len(data) > limit:
            raise UnsafeFileError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return data

    # --- writing --------------------------------------------------------------------

    def _put(self, path: str, data: bytes, *, exclusive: bool, durable: bool) -> None:
        with self._mutex:
            parent, name = self._parent(path)
            old = parent.entries.get(name)
            if old is not None and (exclusive or isinstance(old, _Dir)):
                raise _error(errno.EEXIST if exclusive else errno.EISDIR, path)
            node = _File(data)
            if durable:
                node.durable = node.data
            parent.entries[name] = node
            parent.touched()
            if durable:
                parent.durable = dict(parent.entries)

    @contextlib.contextmanager
    def open_write(self, path: str, *, durable: bool) -> Iterator[BinaryIO]:
        """A buffer whose bytes replace the file ``path`` when the block exits cleanly."""
        buffer = io.BytesIO()
        yield buffer
        self._put(path, buffer.getvalue(), exclusive=False, durable=durable)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Create the file ``path`` (which must not exist); not yet durable."""
        self._put(path, data, exclusive=True, durable=False)

    def replace_file(self, path: str, data: bytes, *, durable: bool) -> None:
        """Atomically replace the file ``path`` with ``data``."""
        self._put(path, data, exclusive=False, durable=durable)

    def make_dir(self, path: str) -> None:
        """Create the directory ``path``; it must not exist."""
        with self._mutex:
            parent, name = self._parent(path)
            if name in parent.entries:
                raise _error(errno.EEXIST, path)
            parent.entries[name] = _Dir()
            parent.touched()

    def make_dirs(self, path: str) -> None:
        """Create ``path`` and its parents where missing."""
        with self._mutex:
            current = ""
            for part in self._parts(path):
                current += "/" + part
                node = self._find(current)
                if node is None:
                    self.make_dir(current)
                elif not isinstance(node, _Dir):  # as os.makedirs says it
                    last = current == "/" + "/".join(self._parts(path))
                    raise _error(errno.EEXIST if last else errno.ENOTDIR, current)

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` (which must not exist) in one step."""
        with self._mutex:
            src_parent, src_name = self._parent(src)
            dst_parent, dst_name = self._parent(dst)
            node = src_parent.entries.get(src_name)
            if node is None:
                raise _error(errno.ENOENT, src)
            if dst_name in dst_parent.entries:
                raise _error(errno.EEXIST, dst)
            self._refuse_cycle(src, dst)
            del src_parent.entries[src_name]
            dst_parent.entries[dst_name] = node
            src_parent.touched()
            dst_parent.touched()

    def _refuse_cycle(self, src: str, dst: str) -> None:
        """A directory cannot move into itself (``rename(2)`` says EINVAL)."""
        outer, inner = self._parts(src), self._parts(dst)
        if len(inner) > len(outer) and inner[: len(outer)] == outer:
            raise _error(errno.EINVAL, dst)

    def exchange(self, a: str, b: str) -> bool:
        """Swap ``a`` and ``b`` in one step (``False`` if constructed without it)."""
        if not self._exchange:
            return False
        with self._mutex:
            a_parent, a_name = self._parent(a)
            b_parent, b_name = self._parent(b)
            a_node, b_node = a_parent.entries.get(a_name), b_parent.entries.get(b_name)
            if a_node is None or b_node is None:
                raise _error(errno.ENOENT, a if a_node is None else b)
            self._refuse_cycle(a, b)
            self._refuse_cycle(b, a)
            a_parent.entries[a_name], b_parent.entries[b_name] = b_node, a_node
            a_parent.touched()
            b_parent.touched()
            return True

    def remove_file(self, path: str) -> None:
        """Remove the file ``path``; nothing if it is absent."""
        with self._mutex:
            try:
                parent, name = self._parent(path)
            except FileNotFoundError:
                return
            node = parent.entries.get(name)
            if node is None:
                return
            if isinstance(node, _Dir):
                raise _error(errno.EISDIR, path)
            del parent.entries[name]
            parent.touched()

    def remove_tree(self, path: str) -> None:
        """Remove ``path`` and everything under it."""
        with self._mutex:
            try:
                parent, name = self._parent(path)
            except FileNotFoundError:
                return
            if parent.entries.pop(name, None) is not None:
                parent.touched()

    # --- durability -----------------------------------------------------------------

    def sync_tree(self, path: str) -> None:
        """Make every file and directory name under ``path`` (and ``path``) durable.

        ``path`` may be a file: then its contents are made durable.
        """
        with self._mutex:
            node = self._find(path)
            if node is None:
                raise _error(errno.ENOENT, path)
            pending: list[_Node] = [node]
            while pending:
                node = pending.pop()
                if isinstance(node, _File):
                    node.durable = node.data
                elif isinstance(node, _Dir):
                    node.durable = dict(node.entries)
                    pending.extend(node.entries.values())

    def sync_dir(self, path: str) -> None:
        """Make the names in the directory ``path`` durable."""
        with self._mutex:
            node = self._dir(path)
            node.durable = dict(node.entries)

    def power_cut(self) -> None:
        """Lose everything not durable, and every lock, as a machine losing power does."""
        with self._mutex:
            seen: set[int] = set()
            pending: list[_Node] = [self._root]
            while pending:
                node = pending.pop()
                if node.id in seen:
                    continue
                seen.add(node.id)
                if isinstance(node, _File):
                    survived = node.durable if node.durable is not None else b""
                    if survived != node.data:
                        node.data = survived
                        node.touched()
                    node.durable = node.data
                elif isinstance(node, _Dir):
                    survived_entries = dict(node.durable or {})
                    if survived_entries != node.entries:
                        node.entries = survived_entries
                        node.touched()
                    node.durable = dict(node.entries)
                    pending.extend(node.entries.values())
            self._locks.clear()

    # --- locks ----------------------------------------------------------------------

    def lock(self, path: str) -> _Lock:
        """Take the writer lock of ``path`` (a file it creates), held until released.

        Raises:
            CheckpointDirLockedError: If it is held (by another manager of this storage
                that is not sharing the directory).
        """
        key = self.canonical(path)
        with self._mutex:
            if key in self._locks:
                raise CheckpointDirLockedError(
                    f"another writer holds {path} in this MemoryStorage; only one writer "
                    f"per directory is allowed"
                )
            node = self._find(path)
            if node is None:
                self._put(path, b"", exclusive=True, durable=False)
            elif not isinstance(node, _File):
                raise UnsafeFileError(errno.EISDIR, "the lock is a directory", str(path))
            self._locks.add(key)
        return _Lock(self, key)

    def _release(self, key: str) -> None:
        with self._mutex:
            self._locks.discard(key)

    def lock_held(self, path: str) -> bool:
        """Whether the lock of ``path`` is held."""
        with self._mutex:
            return self.canonical(path) in self._locks

    # --- inspection, for tests ------------------------------------------------------

    def files(self, path: str = "/") -> dict[str, bytes]:
        """Every file under ``path``, by its path relative to ``path``."""
        with self._mutex:
            out: dict[str, bytes] = {}
            pending: list[tuple[str, _Node]] = [("", self._dir(path))]
            while pending:
                prefix, node = pending.pop()
                if isinstance(node, _File):
                    out[prefix] = node.data
                elif isinstance(node, _Dir):
                    for name, child in node.entries.items():
                        pending.append((f"{prefix}/{name}" if prefix else name, child))
            return out
