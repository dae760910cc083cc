"""Content hashes of the files in a checkpoint: the one algorithm, and what is known already.

ckpt hashes every file of a checkpoint with XXH3-128 (``xxhash``): about 30 GB/s on
one core, where SHA-256 (1.6 GB/s) would cost a save at 2 GB/s more than half its
speed (``ckpt.torch`` hashes on a helper thread besides, so a save does not wait). It
is a check against damage (a flipped bit, a truncated copy, a file rewritten by hand),
not against an attacker, who could rewrite the record too.

A file ckpt writes itself (``ckpt.torch.save_state``) is hashed as its bytes stream
out, and the digest is remembered here, for this process, under the file's path (as
the writer spelled it: the commit spells it the same way, and a path spelled another
way costs a read, never a wrong digest) and the version its storage gave it once
written. The commit that records the checkpoint's hashes takes a remembered digest
whose version still matches instead of reading the file back; any other file (one the
loop or a trainer wrote) is read once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

import xxhash

from ckpt.storage.base import Entry, Storage, join

_CHUNK = 4 << 20
_REMEMBERED = 4096  # digests kept per process: far more than the files of saves in flight


def hasher() -> xxhash.xxh3_128:
    """A fresh XXH3-128 hasher (``update``, ``copy``, ``digest``, ``hexdigest``)."""
    return xxhash.xxh3_128()


def digest_of(data: bytes) -> str:
    """The hex digest of ``data``."""
    return xxhash.xxh3_128_hexdigest(data)


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


class Hasher(Protocol):
    """What `hash_file` needs of a hash: XXH3-128's, or hashlib's (SHA-256 of old records)."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def hash_file(storage: Storage, path: str, new: Callable[[], Hasher] = hasher) -> tuple[int, str]:
    """Read the file ``path`` once: its size in bytes and its hex digest (by ``new``).

    Raises:
        FileNotFoundError: If there is nothing at ``path``.
        UnsafeFileError: If it is not a regular file.
        OSError: If reading fails.
    """
    digest = new()
    size = 0
    with storage.open_read(path) as f:
        for chunk in _chunks(f):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def copy_file(
    source: Storage, path: str, target: Storage, to: str, *, durable: bool
) -> tuple[int, str]:
    """Stream the file ``path`` of ``source`` to ``to`` on ``target``, hashing it on the way.

    One read of the source, one write of the target (a multipart upload on a store,
    complete only once the copy is), and no second pass: its size and hex digest.

    Raises:
        FileNotFoundError: If there is nothing at ``path``.
        UnsafeFileError: If it is not a regular file.
        OSError: If reading or writing fails; the target file is then not left whole.
    """
    digest = hasher()
    size = 0
    with source.open_read(path) as f, target.open_write(to, durable=durable) as out:
        for chunk in _chunks(f):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class _Memo:
    """Digests of files this process wrote, by location, with the version each had."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: OrderedDict[str, tuple[str, int, str]] = OrderedDict()

    def remember(self, storage: Storage, directory: str, name: str, digest: str) -> None:
        entry = storage.entry(join(directory, name))
        if entry is None or entry.kind != "file":
            return
        key = join(directory, name)
        with self._lock:
            self._known[key] = (entry.version, entry.size, digest)
            self._known.move_to_end(key)
            while len(self._known) > _REMEMBERED:
                self._known.popitem(last=False)

    def recall(self, key: str, entry: Entry) -> str | None:
        if not self._known:
            return None  # the common case of a loop's own files: no lock taken
        with self._lock:
            found = self._known.pop(key, None)
        if found is None or found[:2] != (entry.version, entry.size):
            return None  # rewritten since, or never written here: read it
        return found[2]


_memo = _Memo()


def remember(storage: Storage, directory: str, name: str, digest: str) -> None:
    """Record the digest of the file ``name`` in ``directory``, just written whole."""
    _memo.remember(storage, directory, name, digest)


def file_digests(
    storage: Storage, directory: str, files: list[tuple[str, Entry]], known: dict[str, str]
) -> dict[str, str]:
    """The digest of each of ``files`` (path under ``directory``, entry), by path.

    A digest given in ``known`` (reported by the process that wrote the file) or
    remembered by this process is taken as it is; every other file is read once.
    """
    found = {}
    for relative, entry in files:
        digest = _memo.recall(join(directory, relative), entry)
        if digest is None:
            digest = known.get(relative)
        if digest is None:
            digest = hash_file(storage, join(directory, relative))[1]
        found[relative] = digest
    return found
