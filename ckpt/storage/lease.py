"""The writer lease: one writer per checkpoint directory on a store without locks.

A lease is a small JSON object (``.ckpt/lock``) naming its holder. It is created with
an exclusive create and renewed with a conditional replace (S3's ``If-None-Match`` and
``If-Match``), so of two writers exactly one holds it:

* **acquire**: create it; if it exists and is released, or went unrenewed for the
  lease's duration, take it over with a conditional replace of the version seen. A
  lease renewed meanwhile belongs to a live writer: refused.
* **renew**: a background thread replaces it, conditionally on the version it last
  wrote, every third of the duration. A failed condition means it was taken over (unless
  the object holds this writer's own body: a renewal whose answer was lost and that
  s3fs sent again), and the lease is lost for good. A failed request (the store
  unreachable) is retried at the next tick; while it fails for longer than the
  duration, the lease has lapsed and nothing is changed, but it is not lost: the next
  renewal that reaches the store re-takes it with the same conditional replace. That
  succeeds only if the object is still the version this writer wrote, which a taker
  cannot leave it at (taking over replaces it, and a taker still watching refuses once
  it changes), so an outage of any length ends with this writer going on where nobody
  took over, and with `LeaseLostError` where somebody did.
* **fence**: the storage that took the lease calls `Lease.guard` before every request
  that changes the directory (see ``FsspecStorage.lock``): a writer whose lease is not
  current then makes no such request, and gets `LeaseLostError` from the call that tried.
* **release**: replace it, conditionally, with a released one.

Whether a lease went unrenewed is judged only by watching it on the taker's own clock
for a whole duration, never by comparing the clocks of two machines: a taker whose clock
runs hours ahead of the holder's waits exactly as long as one whose clock agrees.

A renewal counts from the moment its request was sent (not when the answer came back),
so a holder never believes its lease lasts longer than a taker watching the store sees
it: a taker replaces it no earlier than a whole duration after the version it watched
was written, and that is after the holder's renewal was sent. `guard` asks for a third
of the duration still left, renewing on the spot when less is. What remains is a
request that passed `guard` and then took longer than that third of the duration
(10 s with the default 30 s lease) to reach the store: a process paused, or a request
retried, for that long between the check and the store. Publishing a manifest is
conditional on the store itself (an exclusive create, or ``If-Match`` on the version
this writer indexed), and so is deleting one on S3, so such a late request cannot
replace or delete a manifest the new writer wrote; it can still delete a checkpoint
the new writer has not rewritten, which is why that window is kept small.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any, Protocol

from ckpt._errors import (
    CheckpointDirLockedError,
    CheckpointError,
    LeaseLostError,
    LeaseWaitWarning,
    warn,
)
from ckpt.storage.base import Capabilities, Entry

_FORMAT = 1
logger = logging.getLogger("ckpt")


class LeaseStore(Protocol):
    """What a lease needs of a storage: exclusive creates and conditional replaces."""

    @property
    def capabilities(self) -> Capabilities:
        """What the store guarantees (see `Capabilities`)."""
        ...

    def entry(self, path: str) -> Entry | None:
        """The object at ``path``; ``None`` if absent."""
        ...

    def read_versioned(self, path: str) -> tuple[bytes, str] | None:
        """The object's bytes and a version no newer than them; ``None`` if absent."""
        ...

    def write_bytes(self, path: str, data: bytes) -> None:
        """Create ``path`` atomically; `FileExistsError` if it exists."""
        ...

    def replace_if(self, path: str, data: bytes, version: str) -> bool:
        """Replace ``path`` only if it is still ``version``; whether it was."""
        ...


def _body(owner: str, seconds: float, *, released: bool = False) -> bytes:
    data = {
        "format": _FORMAT,
        "owner": owner,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "renewed_at": time.time(),
        "seconds": seconds,
        "released": released,
    }
    return (json.dumps(data) + "\n").encode()


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) and raw.get("format") == _FORMAT else None


def _holder(raw: dict[str, Any] | None) -> str:
    if raw is None:
        return "an unreadable lease"
    return f"pid {raw.get('pid')} on {raw.get('host')}"


def _renewed(raw: dict[str, Any] | None) -> str:
    """When the holder says it last renewed, by its own clock (shown, never compared)."""
    renewed = None if raw is None else raw.get("renewed_at")
    if not isinstance(renewed, (int, float)) or isinstance(renewed, bool):
        return "at an unknown time"
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(renewed))
    except (OverflowError, OSError, ValueError):
        return "at an unknown time"
    return f"at {stamp} UTC by its clock"


def _stale_by_clock(raw: dict[str, Any]) -> bool:
    """Whether the holder's own renewal time is two durations old by this clock.

    Only a reader's report uses it (`lease_live`): it decides nothing that changes the
    directory. A takeover never trusts another machine's clock.
    """
    renewed, seconds = raw.get("renewed_at"), raw.get("seconds")
    if not isinstance(renewed, (int, float)) or not isinstance(seconds, (int, float)):
        return False
    return time.time() > renewed + 2 * seconds


def lease_live(store: LeaseStore, path: str) -> bool:
    """Whether ``path`` holds a lease that is not released and not two durations old.

    A guess for reports (`ckpt.verify`), which changes nothing: a skewed clock may make it
    wrong, and nothing that deletes or takes a lease over relies on it.
    """
    found = store.read_versioned(path)
    if found is None:
        return False
    raw = _decode(found[0])
    return raw is not None and not raw.get("released") and not _stale_by_clock(raw)


def _refuse(path: str, raw: dict[str, Any] | None, seconds: float) -> CheckpointDirLockedError:
    return CheckpointDirLockedError(
        f"another writer ({_holder(raw)}) holds the lease {path} and is renewing it; only "
        f"one writer per checkpoint directory is allowed: stop the other run, or open "
        f"this one with read_only=True to inspect it (a crashed writer's lease is taken "
        f"over {seconds:g} s after its last renewal)"
    )


class Lease:
    """A held writer lease, renewed by a background thread until released."""

    def __init__(self, store: LeaseStore, path: str, seconds: float, owner: str, version: str):
        self._store = store
        self._path = path
        self._seconds = seconds
        self._owner = owner
        self._version = version
        self._renewed = time.monotonic()
        self._lost: str | None = None  # taken over or released: for good
        self._failing: str | None = None  # why the last renewal did not reach the store
        self._mutex = threading.Lock()
        # One renewal at a time: two with the same version would have one fail, and
        # that failure would read as a takeover.
        self._renewing = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"ckpt-lease {path}", daemon=True
        )
        self._thread.start()

    @classmethod
    def acquire(cls, store: LeaseStore, path: str, seconds: float) -> Lease:
        """Take the lease in ``path``, waiting at most ``seconds`` to see whether it is live.

        Raises:
            CheckpointDirLockedError: If a live writer holds it.
            CheckpointError: If the store has no conditional writes.
        """
        caps = store.capabilities
        if not (caps.exclusive_create and caps.conditional_replace):
            raise CheckpointError(
                f"cannot take the writer lease {path}: this store offers no conditional "
                f"writes (an exclusive create and a replace-if-unchanged), so nothing could "
                f"keep a second writer from committing over this one. ckpt writes to S3 "
                f"(s3fs) and memory://; on this store, open the manager with "
                f"read_only=True, or write to a local or S3 path"
            )
        owner = secrets.token_hex(8)
        body = _body(owner, seconds)
        try:
            store.write_bytes(path, body)
        except FileExistsError:
            return cls._take_over(store, path, seconds, owner)
        found = store.entry(path)
        if found is None:
            raise CheckpointDirLockedError(f"the lease {path} vanished as it was created")
        return cls(store, path, seconds, owner, found.version)

    @classmethod
    def _take_over(cls, store: LeaseStore, path: str, seconds: float, owner: str) -> Lease:
        found = store.read_versioned(path)
        deadline = time.monotonic() + seconds
        raw = None if found is None else _decode(found[0])
        if found is not None and not (raw is not None and raw.get("released")):
            # A restart after a crash waits here a whole lease: a user must see why.
            warn(
                LeaseWaitWarning,
                f"waiting up to {seconds:g} s for the lease {path} held by {_holder(raw)} "
                f"(last renewed {_renewed(raw)}): a live writer renews it within "
                f"{seconds / 3:g} s; one that crashed is taken over once it has stayed "
                f"unrenewed for {seconds:g} s",
            )
        while found is not None:
            data, version = found
            raw = _decode(data)
            if raw is not None and raw.get("released"):
                break
            # Watch it: a live writer replaces it within a third of its duration.
            if time.monotonic() >= deadline:
                break  # unrenewed for a whole duration: its writer is gone
            time.sleep(min(0.5, seconds / 10))
            now = store.read_versioned(path)
            if now is not None and now[1] != version:
                raise _refuse(path, _decode(now[0]), seconds)
            found = now
        body = _body(owner, seconds)
        if found is None:
            try:
                store.write_bytes(path, body)
            except FileExistsError:
                raise _refuse(path, None, seconds) from None
        elif not store.replace_if(path, body, found[1]):
            raise _refuse(path, None, seconds)  # another writer took it over first
        entry = store.entry(path)
        if entry is None:
            raise CheckpointDirLockedError(f"the lease {path} vanished as it was taken")
        return cls(store, path, seconds, owner, entry.version)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self._seconds / 3):
            self._renew()

    def _renew(self, wait: float | None = None) -> None:
        """One renewal; a caller other than the thread waits ``wait`` s at most for its turn.

        A renewal in flight against a stalled store can take as long as s3fs's own
        timeouts and retries: a save asking whether the lease holds does not wait for it.
        """
        if not self._renewing.acquire(timeout=-1 if wait is None else wait):
            return
        try:
            self._renew_once()
        finally:
            self._renewing.release()

    def _renew_once(self) -> None:
        # The request is made outside the mutex: `check` never waits on it.
        with self._mutex:
            if self._lost is not None or self._stop.is_set():
                return
            version = self._version
        sent = time.monotonic()  # the taker watches from no earlier than this
        try:
            body = _body(self._owner, self._seconds)
            if self._store.replace_if(self._path, body, version):
                entry = self._store.entry(self._path)
                found = None if entry is None else entry.version
            else:
                found = self._still_mine()
        except Exception as exc:  # the store unreachable: the thread must live on
            with self._mutex:
                self._failing = f"{type(exc).__name__}: {str(exc)[:200]}"
                lapsed = time.monotonic() - self._renewed > self._seconds
            if lapsed:
                logger.warning("the lease %s could not be renewed: %s", self._path, exc)
            return
        with self._mutex:
            if found is None:
                self._lost = "another writer took it over"
                return
            if self._failing is not None or sent - self._renewed > self._seconds:
                logger.warning("renewed the lease %s: the store answers again", self._path)
            self._failing = None
            self._version = found
            self._renewed = max(self._renewed, sent)

    def _still_mine(self) -> str | None:
        """The lease's version if the object still holds this writer's live body.

        A renewal the store applied, whose answer was lost and which was then sent
        again, fails its condition against its own first copy: that is not a takeover.
        """
        found = self._store.read_versioned(self._path)
        raw = None if found is None else _decode(found[0])
        if found is None or raw is None or raw.get("owner") != self._owner or raw.get("released"):
            return None
        return found[1]

    def _left(self) -> float:
        with self._mutex:
            return self._seconds - (time.monotonic() - self._renewed)

    def guard(self, path: str) -> None:
        """Raise `LeaseLostError` unless the lease is current enough for a change to ``path``.

        The storage calls it right before each request that changes the directory. It
        asks for a third of the duration still left, so the request reaches the store
        before a taker could; with less left it renews the lease first (one request).

        Raises:
            LeaseLostError: If the lease was taken over, or went unrenewed for its
                duration and cannot be re-taken now.
        """
        self.check()
        if self._left() < self._seconds / 3:
            self._renew(wait=self._seconds / 3)
            self.check()
            if self._left() < self._seconds / 3:
                raise self._error(
                    f"it could not be renewed in time to change {path} safely", final=False
                )

    def check(self) -> None:
        """Raise `LeaseLostError` unless this writer still holds the lease.

        A lease that lapsed because the store did not answer is re-taken here first
        (one conditional request), unless another writer took it over meanwhile.

        Raises:
            LeaseLostError: If it was taken over, or went unrenewed for its duration
                and the store still does not answer.
        """
        if self._left() < 0:
            # Re-take it if the store answers and nobody took it over.
            self._renew(wait=self._seconds / 3)
        with self._mutex:
            lost = self._lost
            if lost is not None:
                raise self._error(lost, final=True)
            if time.monotonic() - self._renewed > self._seconds:
                why = f" ({self._failing})" if self._failing else ""
                raise self._error(
                    f"it could not be renewed for {self._seconds:g} s{why}", final=False
                )

    def _error(self, lost: str, *, final: bool) -> LeaseLostError:
        if final:
            return LeaseLostError(
                f"this writer's lease {self._path} is lost: {lost}. Another writer may "
                f"own the checkpoint directory now, so nothing more is committed or "
                f"deleted; restart the run to take the lease again"
            )
        return LeaseLostError(
            f"this writer's lease {self._path} has lapsed: {lost}. Nothing is committed "
            f"or deleted until it is renewed; it is re-taken at the next call that "
            f"reaches the store, unless another writer took it over meanwhile",
            lapsed=True,
        )

    @property
    def released(self) -> bool:
        """Whether `release` was called."""
        return self._stop.is_set()

    def release(self) -> None:
        """Stop renewing and mark the lease released; calling it twice is harmless."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=self._seconds)
        with self._mutex:
            if self._lost is None:
                with contextlib.suppress(Exception):  # unreachable: it expires on its own
                    self._store.replace_if(
                        self._path, _body(self._owner, self._seconds, released=True), self._version
                    )
            self._lost = "it was released"
