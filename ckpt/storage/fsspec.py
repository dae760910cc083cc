"""`Storage` on any fsspec file system: S3 (s3fs), GCS (gcsfs), ``memory://`` and more.

An object store has no rename, no directories and no fsync, and says so in its
`Capabilities`: the manager then commits by manifest (`ckpt.commit.ManifestProtocol`).
What a store offers beyond plain puts and gets decides the rest:

* **S3** (s3fs): exclusive creates (``If-None-Match: *``) and conditional replaces
  (``If-Match: <ETag>``), which the writer lease needs; an object's ETag names its
  content, so a manifest records ETags instead of reading every file back.
* **memory://** (fsspec's in-process store): both, made atomic by a lock of this
  process (its objects live in this process only).
* **Any other fsspec store** (gcsfs among them): neither is relied on; a writer is
  refused there, with a message saying why (see `FsspecStorage.lock`), and readers
  work.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import posixpath
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TypeVar, cast

from ckpt._errors import StoreUnavailableError, UnsafeFileError
from ckpt._text import redact_url
from ckpt.storage.base import MAX_READ_BYTES, Capabilities, Entry, EntryKind
from ckpt.storage.lease import Lease, lease_live

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

Dialect = Literal["s3", "memory", "generic"]
_T = TypeVar("_T")
logger = logging.getLogger("ckpt")

WRITE_PART_BYTES = 16 << 20
"""The part size of streamed writes: a multipart upload holds one part in memory."""

READ_BLOCK_BYTES = 8 << 20
"""The block of a streamed read: one ranged GET each."""

_memory_mutex = threading.RLock()  # memory:// lives in this process: a lock makes it atomic


def _dialect(fs: AbstractFileSystem) -> Dialect:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "s3" in protocols or "s3a" in protocols:
        return "s3"
    if "memory" in protocols:
        return "memory"
    return "generic"


def _mtime(info: Mapping[str, Any]) -> float:
    for key in ("LastModified", "mtime", "created", "updated", "last_modified"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


def _version(info: Mapping[str, Any]) -> str:
    for key in ("ETag", "etag", "generation", "md5Hash"):
        value = info.get(key)
        if value:
            return str(value)
    # memory:// has no ETag: a replaced object is a new one, with its own creation time.
    return f"{_mtime(info)!r}:{info.get('size', 0)}"


def _precondition_failed(exc: OSError) -> bool:
    """Whether s3fs's error is S3 refusing a conditional request (412)."""
    return "PreconditionFailed" in str(exc) or "pre-condition" in str(exc)


# The packages between s3fs and the network: what they raise for a refused, stalled or cut
# connection is no OSError (botocore's EndpointConnectionError, ReadTimeoutError...).
_TRANSPORT = frozenset({"botocore", "aiobotocore", "aiohttp", "urllib3"})
# What a file system answers about the object itself: never a transport failure.
_ANSWERS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, UnsafeFileError)


def transport_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the store was not reached (or stopped answering), not what it holds."""
    if isinstance(exc, _ANSWERS) or not isinstance(exc, Exception):
        return False
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return True
    return type(exc).__module__.split(".", 1)[0] in _TRANSPORT


def _ride_out_outages(fs: Any, seconds: float) -> None:
    """Have s3fs retry a refused or dropped connection, for about ``seconds`` in all.

    s3fs retries read timeouts and cut responses, but not a refused connection
    (botocore's ``EndpointConnectionError``), and gives up after 5 tries (about 2 s of
    pauses): a part of an upload, which ckpt cannot send again once streamed, would fail
    on an outage much shorter than the lease. So connection errors are made retryable
    (s3fs's own hook; once per process) and the file system gets enough tries for its
    growing pauses (0.1 s x 1.7^i, at most 15 s each) to span ``seconds``.
    """
    import botocore.exceptions  # noqa: PLC0415 - s3fs is here, and so is botocore
    from s3fs import core  # noqa: PLC0415

    kinds: list[type[BaseException]] = [botocore.exceptions.ConnectionError]
    with contextlib.suppress(ImportError):
        import aiohttp  # noqa: PLC0415

        kinds.append(aiohttp.ClientConnectionError)
    with _retry_mutex:
        for kind in kinds:
            if not issubclass(kind, core.S3_RETRYABLE_ERRORS):
                core.add_retryable_error(kind)
    tries, waited = 0, 0.0
    while waited < seconds:
        waited += min(1.7**tries * 0.1, 15.0)
        tries += 1
    fs.retries = max(int(getattr(fs, "retries", 5)), tries + 1)


_retry_mutex = threading.Lock()


class _Translated:
    """A file of the store whose transport failures surface as `StoreUnavailableError`."""

    def __init__(self, f: Any, fail: Callable[[Exception], Exception]) -> None:
        object.__setattr__(self, "_f", f)
        object.__setattr__(self, "_fail", fail)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._f, name)
        if not callable(value):
            return value
        fail = self._fail

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except Exception as exc:
                if not transport_failure(exc):
                    raise
                raise fail(exc) from exc

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._f, name, value)

    def __enter__(self) -> _Translated:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kind(info: Mapping[str, Any]) -> EntryKind:
    kind = info.get("type")
    if kind == "directory":
        return "dir"
    return "file" if kind == "file" else "other"


class _PartWriter(io.RawIOBase):
    """Feeds a buffered upload at most one part at a time, so it never holds more.

    fsspec's files buffer each ``write`` whole before uploading it: a 1 GiB tensor
    written in one call would be copied whole into memory.
    """

    def __init__(self, f: Any) -> None:
        super().__init__()
        self._f = f

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), WRITE_PART_BYTES):
            self._f.write(view[start : start + WRITE_PART_BYTES])
        return len(view)

    def tell(self) -> int:
        return int(self._f.tell())


class FsspecStorage:
    """A `Storage` over an fsspec file system, for object stores and fsspec URLs.

    Paths are URLs (``s3://bucket/run/step_3.manifest.json``) or paths as the file
    system takes them; a "directory" is a key prefix, present while an object is under
    it. Writes are durable when they return; a streamed write is a multipart upload
    that appears whole when it completes, or not at all.

    Args:
        fs: The fsspec file system (``s3fs.S3FileSystem(...)``,
            ``fsspec.filesystem("memory")``...).
        lease_seconds: How long the writer lease (`lock`) lasts without a renewal:
            a crashed writer blocks a restart for at most this long.
    """

    def __init__(self, fs: AbstractFileSystem, *, lease_seconds: float = 30.0) -> None:
        if not lease_seconds > 0:
            raise ValueError(f"`lease_seconds` must be positive, got {lease_seconds!r}")
        self.fs = fs
        self.lease_seconds = float(lease_seconds)
        self.dialect: Dialect = _dialect(fs)
        conditional = self.dialect in ("s3", "memory")
        self._capabilities = Capabilities(
            exclusive_create=conditional,
            conditional_replace=conditional,
            content_versions=self.dialect == "s3",
        )
        if self.dialect == "s3":
            _ride_out_outages(fs, self.lease_seconds)
        # The leases `lock` took: (the key prefix each guards, its own key, the lease).
        self._leases: list[tuple[str, str, Lease]] = []
        self._leases_mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"FsspecStorage({type(self.fs).__name__}(...), lease_seconds={self.lease_seconds!r})"

    @property
    def capabilities(self) -> Capabilities:
        """No rename, no directories, no fsync, no locks; conditional writes on S3."""
        return self._capabilities

    # --- paths ----------------------------------------------------------------------

    def _path(self, path: str) -> str:
        return cast(str, self.fs._strip_protocol(path)).rstrip("/")

    def _fence(self, path: str) -> str:
        """Check the lease guarding ``path`` (if this storage holds one); its key.

        Every request that changes the store goes through here first, so a writer whose
        lease lapsed changes nothing (`LeaseLostError`).
        """
        key = self._path(path)
        with self._leases_mutex:
            guarding = [
                lease
                for prefix, own, lease in self._leases
                # Its own object is left to it: the lease renews and releases it.
                if key != own
                and not lease.released
                and (key == prefix or key.startswith(prefix + "/"))
            ]
        for lease in guarding:
            lease.guard(path)
        return key

    def canonical(self, path: str) -> str:
        """The store's own URL of ``path``, spelt as a ``UPath`` of it prints."""
        key = self._path(path)
        if self.dialect == "memory":
            return "memory://" + key.lstrip("/")  # not fsspec's memory:///key
        return cast(str, self.fs.unstrip_protocol(key))

    def unavailable(self, path: str, exc: BaseException) -> StoreUnavailableError:
        """The error for a request about ``path`` that never got the store's answer."""
        url = redact_url(self.canonical(path))
        detail = redact_url(str(exc))[:300]
        return StoreUnavailableError(
            f"the store did not answer a request for {url}, retried for up to "
            f"{self.lease_seconds:g} s ({type(exc).__name__}: {detail}); what it was part "
            f"of did not complete: "
            f"try again once the store is reachable",
            url=url,
        )

    def _request(self, path: str, call: Callable[[], _T], *, changes: bool = False) -> _T:
        """``call()`` (requests about ``path``), tried again while the store does not answer.

        A refused, stalled or cut connection is tried again, with a growing pause, for
        up to `lease_seconds`: an outage shorter than the lease costs a save time and a
        warning, not an error. A request that changes the store checks the lease again
        before each try, so a retry never lands after the lease could have been taken
        over. Past that, `StoreUnavailableError`.
        """
        deadline = None
        pause = 0.2
        while True:
            if changes:
                self._fence(path)
            try:
                return call()
            except Exception as exc:
                if not transport_failure(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.lease_seconds
                    logger.warning(
                        "the store does not answer a request for %s (%s): trying again for "
                        "up to %g s",
                        redact_url(self.canonical(path)),
                        type(exc).__name__,
                        self.lease_seconds,
                    )
                if now + pause > deadline:
                    raise self.unavailable(path, exc) from exc
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    # --- reading --------------------------------------------------------------------

    def _entry(self, info: Mapping[str, Any]) -> Entry:
        name = posixpath.basename(str(info["name"]).rstrip("/"))
        kind = _kind(info)
        size = int(info.get("size") or 0) if kind == "file" else 0
        version = _version(info) if kind == "file" else ""
        return Entry(name, kind, _mtime(info), version, size)

    def list_dir(self, path: str) -> list[Entry]:
        """The objects and prefixes directly under ``path``; empty if there are none."""
        key = self._path(path)
        try:
            listing = self._request(path, lambda: self.fs.ls(key, detail=True, refresh=True))
        except FileNotFoundError:
            return []
        # A listing of an object's own key names that object: it is no directory.
        return [
            self._entry(info)
            for info in listing
            if str(info["name"]).rstrip("/") != key and self._path(str(info["name"])) != key
        ]

    def entry(self, path: str) -> Entry | None:
        """The object at ``path``, or the prefix if objects are under it; ``None`` else."""
        key = self._path(path)
        self.fs.invalidate_cache(key)
        try:
            info = self._request(path, lambda: self.fs.info(key))
        except FileNotFoundError:
            return None
        return self._entry(info)

    def _check_file(self, path: str) -> None:
        found = self.entry(path)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", path)
        if found.kind != "file":
            raise UnsafeFileError(errno.EISDIR, "a prefix, not an object", path)

    def open_read(self, path: str, *, follow_links: bool = False) -> BinaryIO:
        """A stream over the object, read in ranged requests of `READ_BLOCK_BYTES`.

        s3fs retries each ranged read; a read that still fails raises
        `StoreUnavailableError`.
        """
        self._check_file(path)
        f = self._request(
            path,
            lambda: self.fs.open(
                self._path(path), "rb", block_size=READ_BLOCK_BYTES, cache_type="readahead"
            ),
        )
        return cast(BinaryIO, _Translated(f, lambda exc: self.unavailable(path, exc)))

    def read_bytes(self, path: str, *, limit: int = MAX_READ_BYTES) -> bytes:
        """The object's bytes (one GET of at most ``limit + 1`` bytes)."""
        key = self._path(path)
        try:
            data = self._request(
                path, lambda: cast(bytes, self.fs.cat_file(key, start=0, end=limit + 1))
            )
        except IsADirectoryError:
            raise UnsafeFileError(errno.EISDIR, "a prefix, not an object", path) from None
        except OSError as exc:
            # S3 answers a ranged GET of an empty object with 416 (InvalidRange).
            found = self.entry(path) if exc.errno == errno.EINVAL else None
            if found is None or found.kind != "file" or found.size != 0:
                raise
            return b""
        if len(data) > limit:
            raise UnsafeFileError(errno.EFBIG, f"larger than {limit} bytes", path)
        return data

    def read_versioned(self, path: str) -> tuple[bytes, str] | None:
        """The object's bytes and a version no newer than them; ``None`` if absent.

        The version is read first: a conditional replace with it fails if the object
        changed since, whichever bytes were read.
        """
        found = self.entry(path)
        if found is None or found.kind != "file":
            return None
        try:
            return self.read_bytes(path), found.version
        except FileNotFoundError:
            return None

    def _holds(self, path: str, data: bytes) -> bool:
        """Whether the object ``path`` holds exactly ``data`` (a retried write's first try)."""
        try:
            return self.read_bytes(path, limit=len(data)) == data
        except (FileNotFoundError, UnsafeFileError):
            return False

    # --- writing --------------------------------------------------------------------

    @contextlib.contextmanager
    def open_write(self, path: str, *, durable: bool) -> Iterator[BinaryIO]:
        """A multipart upload that completes when the block exits, and aborts on error.

        It holds one part (`WRITE_PART_BYTES`) in memory at a time; memory:// buffers the
        whole object and stores it at the end. s3fs retries each part; a part that still
        fails aborts the upload with `StoreUnavailableError`.
        """
        key = self._fence(path)
        if self.dialect == "memory":
            buffer = io.BytesIO()
            yield buffer
            self._fence(path)
            with _memory_mutex:
                self.fs.pipe_file(key, buffer.getvalue())
            return
        f = self._request(path, lambda: self.fs.open(key, "wb", block_size=WRITE_PART_BYTES))

        def abort() -> None:
            # Closing would complete the upload: abort it, and leave nothing.
            with contextlib.suppress(Exception):
                f.discard()
            f.closed = True

        try:
            yield cast(BinaryIO, _PartWriter(_Translated(f, lambda e: self.unavailable(path, e))))
            self._fence(path)  # completing the upload is what makes the object appear
            # Once: fsspec marks a file closed even when its closing flush failed, so a
            # second close would report an upload that never completed.
            _Translated(f, lambda e: self.unavailable(path, e)).close()
        except BaseException:
            abort()
            raise

    def write_bytes(self, path: str, data: bytes) -> None:
        """Create the object ``path``; `FileExistsError` if it exists.

        The check is atomic where the store has exclusive creates (S3's
        ``If-None-Match: *``), a check then a put elsewhere. A create tried again after
        a lost answer finds its own first try: an object holding exactly ``data`` then
        counts as created by this call.
        """
        key = self._path(path)
        if self.dialect == "s3":
            tries = [0]

            def create() -> None:
                tries[0] += 1
                self.fs.pipe_file(key, data, mode="create")

            try:
                self._request(path, create, changes=True)
            except FileExistsError:
                if tries[0] > 1 and self._holds(path, data):
                    return
                raise
            return
        self._fence(path)
        with _memory_mutex if self.dialect == "memory" else contextlib.nullcontext():
            if self.fs.exists(key):
                raise FileExistsError(errno.EEXIST, "the object exists", path)
            self.fs.pipe_file(key, data)

    def replace_file(self, path: str, data: bytes, *, durable: bool) -> None:
        """Put ``data`` at ``path``: readers see the old object or the new one."""
        key = self._path(path)
        with _memory_mutex if self.dialect == "memory" else contextlib.nullcontext():
            self._request(path, lambda: self.fs.pipe_file(key, data), changes=True)

    def replace_if(self, path: str, data: bytes, version: str) -> bool:
        """Put ``data`` at ``path`` only if its version is still ``version``.

        A replace tried again after a lost answer that then finds the object changed
        counts as done if the object holds exactly ``data`` (its own first try).

        Returns:
            Whether it was replaced (``False``: it changed or vanished meanwhile).

        Raises:
            NotImplementedError: On a store without conditional replaces (see
                ``capabilities.conditional_replace``).
        """
        key = self._path(path)
        if self.dialect == "s3":
            tries = [0]

            def replace() -> None:
                tries[0] += 1
                self.fs.pipe_file(key, data, IfMatch=version)

            try:
                self._request(path, replace, changes=True)
            except (FileExistsError, FileNotFoundError):
                return tries[0] > 1 and self._holds(path, data)
            except OSError as exc:
                if _precondition_failed(exc):
                    return tries[0] > 1 and self._holds(path, data)
                raise
            return True
        self._fence(path)
        if self.dialect == "memory":
            with _memory_mutex:
                found = self.entry(path)
                if found is None or found.version != version:
                    return False
                self.fs.pipe_file(key, data)
                return True
        raise NotImplementedError(f"{type(self.fs).__name__} offers no conditional replace")

    def make_dir(self, path: str) -> None:
        """Nothing: a prefix exists once an object is under it."""

    def make_dirs(self, path: str) -> None:
        """Nothing: a prefix exists once an object is under it."""

    def rename(self, src: str, dst: str) -> None:
        """Refused: an object store's "rename" is a copy, then a delete.

        Raises:
            OSError: Always (``ENOTSUP``).
        """
        raise OSError(errno.ENOTSUP, "an object store cannot rename atomically", src)

    def exchange(self, a: str, b: str) -> bool:
        """``False``: an object store cannot swap two names."""
        return False

    def remove_file(self, path: str) -> None:
        """Delete the object ``path``; nothing if it is absent."""
        key = self._path(path)
        with contextlib.suppress(FileNotFoundError):
            self._request(path, lambda: self.fs.rm_file(key), changes=True)

    def remove_if(self, path: str, version: str) -> bool:
        """Delete the object ``path`` only if its version is still ``version``.

        On S3 the condition is the store's own (``DeleteObject`` with ``If-Match``), so a
        late request of a writer that lost its lease cannot delete what replaced it.

        Returns:
            Whether it was deleted (``False``: it changed or vanished meanwhile).

        Raises:
            NotImplementedError: On a store without conditional writes.
        """
        key = self._path(path)
        if self.dialect == "s3":
            bucket, name, _ = self.fs.split_path(key)
            self.fs.invalidate_cache(key)
            try:
                self._request(
                    path,
                    lambda: self.fs.call_s3(
                        "delete_object", Bucket=bucket, Key=name, IfMatch=version
                    ),
                    changes=True,
                )
            except FileNotFoundError:
                return False
            except OSError as exc:
                if _precondition_failed(exc):
                    return False
                raise
            finally:
                self.fs.invalidate_cache(key)
            return True
        self._fence(path)
        if self.dialect == "memory":
            with _memory_mutex:
                found = self.entry(path)
                if found is None or found.version != version:
                    return False
                self.fs.rm_file(key)
                return True
        raise NotImplementedError(f"{type(self.fs).__name__} offers no conditional delete")

    def remove_tree(self, path: str) -> None:
        """Delete every object under the prefix ``path`` (and an object at ``path``)."""
        key = self._path(path)
        self.fs.invalidate_cache(key)
        with contextlib.suppress(FileNotFoundError):
            self._request(path, lambda: self.fs.rm(key, recursive=True), changes=True)
        self.fs.invalidate_cache(key)

    def sync_tree(self, path: str) -> None:
        """Nothing: a write is durable when it returns."""

    def sync_dir(self, path: str) -> None:
        """Nothing: a write is durable when it returns."""

    # --- the writer lease -----------------------------------------------------------

    def lock(self, path: str) -> Lease:
        """Take the writer lease held in the object ``path``.

        A store has no lock that a dead process releases: the lease is an object
        created with a conditional write and renewed in the background every third of
        `lease_seconds`. A second writer is refused while it is renewed; a crashed
        writer's lease is taken over once it has gone unrenewed for `lease_seconds`.

        The lease fences the directory above its own (``run/`` for the lease
        ``run/.ckpt/lock``): while it is held, every request of this storage that changes
        an object under that directory checks it first (`Lease.guard`), so a writer
        whose lease lapsed gets `LeaseLostError` instead of committing or deleting.

        Raises:
            CheckpointDirLockedError: If a live writer holds the lease.
            CheckpointError: If the store has no conditional writes, so that no lease
                can keep a second writer out.
        """
        lease = Lease.acquire(self, path, self.lease_seconds)
        own = self._path(path)
        with self._leases_mutex:
            self._leases = [held for held in self._leases if not held[2].released]
            self._leases.append((posixpath.dirname(posixpath.dirname(own)), own, lease))
        return lease

    def lock_held(self, path: str) -> bool:
        """Whether a writer's lease in ``path`` is live (renewed within its duration)."""
        return lease_live(self, path)
