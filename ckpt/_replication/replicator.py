"""A local tier replicated to a second directory by a background thread.

Saves commit to the local directory as they always do; each local commit puts its step
on the replicator's queue and holds it there (local retention keeps it) until its
replica is committed. The replicator copies the checkpoint's files into an attempt of
the replica directory, hashing each byte as it goes through and comparing with the
digests of the local record, then commits the attempt there with those digests
(under the replica's own protocol: the manifest protocol on an object store), applies
the replica's retention, records the step as replicated in ``.ckpt/replication.json``
of the local tier, releases the hold and prunes the local tier.

The queue is the difference between the two: what is committed locally and not
recorded as replicated in that version. So a crash after a local commit loses nothing:
the next writer of the directory finds the step unreplicated and uploads it.
"""

from __future__ import annotations

import logging
import threading
import time

from ckpt import _layout
from ckpt._directory import meta
from ckpt._directory.directory import Directory
from ckpt._errors import (
    CheckpointError,
    ChecksumMismatchError,
    LeaseLostError,
    ReplicationError,
    StoreUnavailableError,
)
from ckpt.commit.base import Committed
from ckpt.commit.manifest import ManifestFile, recorded_files
from ckpt.storage import user_path
from ckpt.storage._digest import copy_file, digest_of
from ckpt.storage.base import join

logger = logging.getLogger("ckpt")

# How often an upload is tried before the step waits for the next commit or restart.
ATTEMPTS = 3
_BACKOFF_S = (0.5, 2.0)
# While the replica's store does not answer, uploads wait and try again, this often at most.
_STALL_PAUSE_S = (1.0, 30.0)
_HELD = "its replica is not committed yet"
_FETCHED = "it was fetched back from the replica"

Status = str  # "local" | "uploading" | "replicated" | "pruned"


def _unverifiable(what: str, step: int, why: str, path: str) -> ChecksumMismatchError:
    return ChecksumMismatchError(
        f"{what} step {step} {why}: it is not copied, since nothing could vouch for the "
        f"bytes that would arrive (`ckpt check --deep` looks at it; saving the step again "
        f"records it)",
        path=path,
    )


def _checked_record(source: Directory, committed: Committed, what: str) -> dict[str, ManifestFile]:
    """The files ``committed``'s record lists, each checked to be copyable as verified."""
    step = committed.step
    shown = str(user_path(source.storage, committed.path))
    try:
        record = recorded_files(source.storage, committed)
    except (OSError, ValueError) as exc:
        raise _unverifiable(what, step, f"has a record that cannot be read ({exc})", shown) from exc
    if record is None:
        raise _unverifiable(what, step, "has no record of its files' digests", shown)
    for name, listed in record.items():
        if not _layout.plain_relative(name) or name == _layout.FILES_RECORD:
            raise _unverifiable(what, step, f"has a record naming {name!r}", shown)
        if listed.xxh3_128 is None:
            raise _unverifiable(what, step, f"has no XXH3 digest recorded for {name}", shown)
    if _layout.INFO_FILE not in record:
        raise _unverifiable(what, step, f"has a record without {_layout.INFO_FILE}", shown)
    return record


def copy_checkpoint(
    source: Directory, committed: Committed, target: Directory, *, what: str
) -> str:
    """Copy one committed checkpoint of ``source`` into ``target`` and commit it there.

    Exactly the files ``source``'s record lists are copied, each hashed as it streams
    and compared with its recorded size and digest; the commit in ``target`` carries
    those digests, so nothing is read twice. A name the record holds is data, checked to
    be a plain relative path inside the checkpoint before anything is written. A
    checkpoint without a record (committed by an older ckpt or NeMo RL) is refused:
    copying it would record digests of whatever bytes arrived. Returns the committed
    location in ``target``.

    Raises:
        ChecksumMismatchError: If the record is missing, unreadable or names a file
            outside the checkpoint, or a file does not match it; nothing commits.
        OSError: If a read or a write fails; nothing commits.
    """
    step = committed.step
    record = _checked_record(source, committed, what)
    read = source.storage.read_bytes
    small = {}
    for name in (_layout.INFO_FILE, _layout.CONFIG_FILE):
        if name not in record:
            continue
        data = read(join(committed.path, name))
        if record[name].xxh3_128 != digest_of(data):
            raise ChecksumMismatchError(
                f"{what} step {step}: {name} does not match the digest of its record; it "
                f"is damaged where it is, and was not copied",
                path=str(user_path(source.storage, join(committed.path, name))),
            )
        small[name] = data
    attempt = target.start(step, small[_layout.INFO_FILE], small.get(_layout.CONFIG_FILE))
    digests: dict[str, str] = {}
    try:
        for name in sorted(record):
            if name in small:
                continue  # written by start, from the bytes checked above
            size, digest = copy_file(
                source.storage,
                join(committed.path, name),
                target.storage,
                join(attempt, name),
                durable=target.place.durable,
            )
            listed = record[name]
            if listed.xxh3_128 != digest or listed.size != size:
                raise ChecksumMismatchError(
                    f"{what} step {step}: {name} does not match the digest of its record "
                    f"(read {size} bytes, {listed.size} recorded); it is damaged where it "
                    f"is, and was not copied",
                    path=str(user_path(source.storage, join(committed.path, name))),
                )
            digests[name] = digest
        return target.finalize(attempt, step, digests)
    except BaseException:
        target.abort(attempt, step)
        raise


class Replicator:
    """The local tier's queue of steps to upload, and the thread that uploads them.

    The replica is opened (its lock or lease taken, recovered, indexed) by the thread,
    so that a replica that does not answer never keeps a run from starting or saving:
    the thread keeps trying, and uploads start once it answers. `ready` is set once the
    replica is open, or its opening failed for good (`open_error`: another writer holds
    it, say).

    Args:
        local: The local tier (the manager's directory, a writer).
        replica: The replica directory, not opened yet.
        to: The replica's location as the config names it, for the record.
        name: For the thread's name.
    """

    def __init__(self, local: Directory, replica: Directory, to: str, name: str) -> None:
        self.local, self.replica, self._to = local, replica, to
        self._cv = threading.Condition()
        self._queue: list[int] = []  # oldest first
        self._uploading: int | None = None
        self._failed: dict[int, str] = {}  # steps whose every attempt failed, and why
        self._fetching: int | None = None
        self._closed = False
        self._stalled: str | None = None  # why the replica does not answer, while it does not
        self.ready = threading.Event()
        self.opened = False
        self.open_error: BaseException | None = None
        shared = local.shared
        with shared.mutex:
            if shared.on_commit is not None:
                raise CheckpointError(
                    f"{local.shown} is already replicated by another manager of this "
                    f"process; close it first"
                )
            recorded = meta.read_replication(local.storage, local.location)
            if recorded.to is not None and recorded.to != to:
                logger.warning(
                    "the replica was %s and is %s now: every local checkpoint is uploaded "
                    "to the new one",
                    recorded.to,
                    to,
                )
                recorded = meta.ReplicationRecord()
            self._replicated = dict(recorded.replicated)
            self._pruned = set(recorded.pruned)
            for step, committed in sorted(shared.index.committed.items()):
                if self._replicated.get(step) != committed.version:
                    self._replicated.pop(step, None)
                    self._hold(step)
            shared.on_commit = self.committed
        if self._queue:
            logger.info("resuming the upload of step(s) %s to %s", self._queue, to)
        self._thread = threading.Thread(
            target=self._run, name=f"ckpt-replicate {name}", daemon=True
        )
        self._thread.start()

    # --- the queue ----------------------------------------------------------------------

    def _hold(self, step: int) -> None:
        """Queue ``step`` and keep it from local retention (the caller holds the mutex)."""
        self.local.shared.held[step] = _HELD
        with self._cv:
            self._failed.clear()  # a new commit: every step that failed is tried again
            if step not in self._queue:
                self._queue.append(step)
                self._queue.sort()
            self._cv.notify_all()

    def committed(self, step: int) -> None:
        """The local commit hook: a new version of ``step`` is to be uploaded."""
        if step == self._fetching:
            return  # fetched back from the replica: replicated already (see `fetch`)
        self._hold(step)
        stalled = self._stalled or (None if self.opened else "it has not answered yet")
        if stalled is not None:
            with self._cv:
                uploading = set() if self._uploading is None else {self._uploading}
                waiting = sorted(set(self._queue) | uploading)
            logger.warning(
                "the replica %s does not answer (%s): step(s) %s wait in the local tier, "
                "which keeps them until they are uploaded",
                self._to,
                stalled,
                waiting,
            )

    def status(self) -> dict[int, Status]:
        """Each step of either tier: ``local``, ``uploading``, ``replicated`` or ``pruned``.

        ``replicated``: the configured replica holds it now. ``pruned``: it was
        replicated and the replica's own retention deleted it since (the local tier may
        still hold it). A step the replica lost otherwise is ``local`` again, and queued.
        """
        with self.local.shared.mutex:
            local = set(self.local.shared.index.committed)
            pruned = set(self._pruned)
            recorded = set(self._replicated)
        if self.opened:
            with self.replica.shared.mutex:
                remote = set(self.replica.shared.index.committed)
        else:  # not reached yet: what the local record says it holds
            remote = recorded
        with self._cv:
            queued, uploading = set(self._queue) | set(self._failed), self._uploading
        out: dict[int, Status] = {}
        for step in sorted(local | remote):
            if step == uploading:
                out[step] = "uploading"
            elif step in remote:
                out[step] = "replicated"
            elif step in queued or step not in pruned:
                out[step] = "local"
            else:
                out[step] = "pruned"
        return out

    def wait(self, timeout: float | None) -> bool:
        """Block until every queued step is replicated; whether it was, within ``timeout``.

        Raises:
            ReplicationError: If a step's upload failed every time it was tried.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while (self._queue or self._uploading is not None) and self.open_error is None:
                idle = self._uploading is None
                if idle and self._failed and not (set(self._queue) - set(self._failed)):
                    break  # what is left failed every time: it waits for a new commit
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(60.0 if left is None else min(left, 60.0))
            failed = dict(self._failed)
        if self.open_error is not None:
            raise ReplicationError(
                f"the replica {self._to} could not be opened ({self.open_error}); nothing "
                f"is uploaded, and every checkpoint stays in the local tier"
            ) from self.open_error
        if failed:
            step = min(failed)
            raise ReplicationError(
                f"the upload of step {step} to {self._to} failed {ATTEMPTS} times "
                f"({failed[step]}); it stays in the local tier, and is tried again at the "
                f"next save or when the directory is next opened"
            )
        return True

    # --- the thread -----------------------------------------------------------------------

    def _next(self) -> int | None:
        with self._cv:
            while not self._closed and not (set(self._queue) - set(self._failed)):
                self._cv.wait(3600.0)  # idle between saves, for as long as it takes
            ready = [s for s in self._queue if s not in self._failed]
            if not ready:
                return None  # closed, and nothing left to try
            step = ready[0]
            self._queue.remove(step)
            self._uploading = step
            return step

    def wait_open(self, timeout: float) -> None:
        """Wait until the replica is open, failed to open, or does not answer."""
        with self._cv:
            self._cv.wait_for(
                lambda: self.ready.is_set() or self._stalled is not None or self._closed,
                timeout,
            )

    def _open(self) -> bool:
        """Open the replica, waiting out a store that does not answer; whether it opened."""
        pause = _STALL_PAUSE_S[0]
        while True:
            try:
                self.replica.open_writer(None)
            except (StoreUnavailableError, LeaseLostError) as exc:
                if self._stalled is None:
                    logger.warning(
                        "the replica %s does not answer; the run goes on in the local tier "
                        "and uploads start once it does: %s",
                        self._to,
                        exc,
                    )
                with self._cv:
                    self._stalled = type(exc).__name__
                    self._cv.notify_all()  # the run's opening goes on without the replica
                    if self._cv.wait_for(lambda: self._closed, pause):
                        return False
                pause = min(pause * 2, _STALL_PAUSE_S[1])
                continue
            except BaseException as exc:
                self.open_error = exc
                self.ready.set()
                with self._cv:
                    self._cv.notify_all()
                return False
            break
        self.opened = True
        self._stalled = None
        local = self.local
        with self.replica.shared.mutex:
            there = set(self.replica.shared.index.committed)
        with local.shared.mutex:
            for step in sorted(self._replicated):
                # Recorded as replicated, yet gone from the replica without its own
                # retention deleting it (an emptied bucket): uploaded again.
                if step not in there and step not in self._pruned:
                    self._replicated.pop(step)
                    self._hold(step)
        with self._cv:
            self.ready.set()
            self._cv.notify_all()
        return True

    def _run(self) -> None:
        if not self._open():
            return
        while (step := self._next()) is not None:
            error: Exception | None = None
            attempt = 0
            pause = _STALL_PAUSE_S[0]
            while attempt < ATTEMPTS:
                try:
                    self._upload(step)
                    error = None
                    self._stalled = None
                    break
                except (StoreUnavailableError, LeaseLostError) as exc:
                    # The store is away (or the replica's lease lapsed while it was): not
                    # the step's fault, and no attempt spent. Wait and try again.
                    if isinstance(exc, LeaseLostError) and not exc.lapsed:
                        error = exc
                        break  # taken over by another writer: that is for good
                    if self._stalled is None:
                        logger.warning(
                            "the replica %s does not answer; uploads wait: %s", self._to, exc
                        )
                    self._stalled = type(exc).__name__
                    with self._cv:
                        if self._cv.wait_for(lambda: self._closed, pause):
                            error = exc
                            break  # closing: the step stays queued for the next open
                    pause = min(pause * 2, _STALL_PAUSE_S[1])
                except Exception as exc:
                    attempt += 1
                    error = exc
                    logger.warning("upload of step %d to %s failed: %s", step, self._to, exc)
                    if attempt < ATTEMPTS:
                        with self._cv:
                            self._cv.wait_for(lambda: self._closed, _BACKOFF_S[attempt - 1])
            with self._cv:
                self._uploading = None
                if error is not None:
                    self._failed[step] = repr(error)
                    self._queue.append(step)
                    self._queue.sort()
                    logger.error("step %d stays local: %s", step, error)
                self._cv.notify_all()

    def _upload(self, step: int) -> None:
        local = self.local
        # Let a save that is still finishing (its commit called us) return first: an
        # upload starting beside it takes the GIL and the CPU from the loop's last steps.
        with local.shared.save_lock:
            pass
        with local.shared.mutex:
            committed = local.shared.index.committed.get(step)
        if committed is None:  # deleted meanwhile (a user's prune): nothing to upload
            with local.shared.mutex:
                local.shared.held.pop(step, None)
            return
        with self.replica.shared.mutex:
            before = set(self.replica.shared.index.committed)
        try:
            copy_checkpoint(local, committed, self.replica, what="local")
        except (ChecksumMismatchError, FileNotFoundError):
            with local.shared.mutex:
                now = local.shared.index.committed.get(step)
            if now is None or now.version != committed.version:
                # Saved again (or deleted) while it was copied: not damage. The new
                # version's commit queued it again; nothing of this copy committed.
                logger.info("step %d changed while it was uploaded: uploading it again", step)
                return
            raise
        with self.replica.shared.mutex:
            gone = before - set(self.replica.shared.index.committed)  # the replica's retention
        with local.shared.mutex:
            current = local.shared.index.committed.get(step)
            if current is not None and current.version == committed.version:
                self._replicated[step] = committed.version
                local.shared.held.pop(step, None)
            self._pruned = (self._pruned | gone) - {step}
            self._write_record()
        logger.info("replicated step %d to %s", step, self._to)
        local.prune_all()  # the hold is gone: the local tier keeps keep_local again
        with local.shared.mutex:
            if self._replicated.keys() - local.shared.index.committed.keys():
                self._write_record()  # what that prune deleted is no longer the record's

    def _write_record(self) -> None:
        """The caller holds the local mutex."""
        index = self.local.shared.index
        self._replicated = {s: v for s, v in self._replicated.items() if s in index.committed}
        self._pruned &= set(self._replicated)  # only what the local tier still holds matters
        record = meta.ReplicationRecord(self._to, self._replicated, frozenset(self._pruned))
        meta.write_replication(self.local.storage, self.local.location, record)

    # --- the way back -----------------------------------------------------------------------

    def fetch(self, step: int, *, keep: bool = False) -> str:
        """Copy the replica's checkpoint of ``step`` into the local tier, verified by hash.

        Returns its local location. ``keep``: hold it from local retention for as long as
        this manager is open (a best checkpoint fetched back is older than the
        ``keep_local`` newest, and would be pruned by its own commit).

        Raises:
            ChecksumMismatchError: If a file does not match the replica's record.
            OSError: If a read or write fails; nothing is committed locally.
        """
        with self.replica.shared.mutex:
            committed = self.replica.shared.index.committed[step]
        self._fetching = step
        local = self.local
        with local.shared.mutex:
            local.shared.held.setdefault(step, _FETCHED)
        try:
            where = copy_checkpoint(self.replica, committed, self.local, what="replica")
        finally:
            self._fetching = None
            if not keep:
                with local.shared.mutex:
                    if local.shared.held.get(step) == _FETCHED:
                        del local.shared.held[step]
        with local.shared.mutex:
            fetched = local.shared.index.committed[step]
            self._replicated[step] = fetched.version
            self._write_record()
        logger.info("fetched step %d back from %s", step, self._to)
        return where

    def close(self) -> None:
        """Finish the uploads queued (each tried as usual), then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()
        with self.local.shared.mutex:
            if self.local.shared.on_commit == self.committed:
                self.local.shared.on_commit = None
