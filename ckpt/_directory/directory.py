"""A checkpoint directory bound once: what one manager changes and asks of it.

A `Directory` binds a storage and a location to a commit protocol, the writer's
settings (``durable``: fsync or not, fixed here as DCP's ``FileSystemWriter`` fixes
``sync_files``), the registry entry this process's managers share (`Shared`: lock,
index, saves in progress), and the retention applier. Everything a save does to the
directory is a method here: start an attempt, recognize one a user hands back, check
the files writers reported, commit it, apply retention, abandon it, pin, prune; and
every question a query asks of it (latest, best, an overview).

An attempt is where one save's files go (``tmp_step_N`` under the rename protocol,
``step_N.<token>`` under the manifest protocol) until it is committed. The registry
remembers which thread of this process holds each, in step with the index.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ckpt import _layout
from ckpt._collective.group import Failure, failures_error
from ckpt._collective.reports import check_reports
from ckpt._config.serialize import decode_training_info
from ckpt._directory import meta
from ckpt._directory.records import CheckpointRecord, Overview, describe_steps
from ckpt._directory.registry import Attempt, Shared, writers, writers_mutex
from ckpt._directory.retention import RetentionApplier
from ckpt._errors import (
    CheckpointError,
    CheckpointNotFoundError,
    InvalidCheckpointPathError,
    LeaseLostError,
    RecoveryWarning,
    SaveInProgressError,
    warn,
)
from ckpt.commit import directory as commits
from ckpt.commit.base import CommitProtocol, Place
from ckpt.commit.reaper import WAIT_S
from ckpt.handler import WrittenFile
from ckpt.storage import (
    PathInput,
    Storage,
    describe_kind,
    join,
    location_of,
    name_of,
    parent_of,
    user_path,
    walk_files,
)
from ckpt.storage._digest import digest_of
from policies import ByMetric, Decision, metric_value

logger = logging.getLogger("ckpt")


def _thread_alive(ident: int) -> bool:
    return any(thread.ident == ident for thread in threading.enumerate())


class Directory:
    """One manager's view of one checkpoint directory, with its settings bound.

    Args:
        storage: Where the directory is.
        location: The directory, as a storage path.
        protocol: The commit protocol new saves use.
        durable: Whether every change is synced to the disk (the config's ``fsync``).
        retention: What the directory keeps, and its answers for best and latest.
        ranking_record: What ``.ckpt/ranking.json`` says for this writer.
        reader: A reader never changes the directory and re-lists it for every query
            (a read-only manager, a rank other than a distributed job's coordinator).
        grace: How young an attempt must be to count as another writer's, where no
            lock keeps other writers out.
    """

    def __init__(
        self,
        storage: Storage,
        location: str,
        protocol: CommitProtocol,
        *,
        durable: bool,
        retention: RetentionApplier,
        ranking_record: bytes,
        reader: bool,
        grace: float,
    ) -> None:
        self.protocol = protocol
        # Every change this directory makes goes through one bound place: how durably
        # is decided here, once.
        self.place = Place(storage, location, durable)
        self.retention = retention
        self.ranking_record = ranking_record
        self.reader = reader
        self.grace = grace
        self.key = storage.canonical(location)
        self.shown = user_path(storage, location)
        self._metric_checked = False  # the first commit's info against the ranking's metric
        # A reader's own state; a writer shares the registry's from `open_writer` on.
        self.shared = Shared(self.place, grace=grace)

    @property
    def storage(self) -> Storage:
        """Where the directory is."""
        return self.shared.storage

    @property
    def location(self) -> str:
        """The directory, as a storage path."""
        return self.shared.location

    # --- the writer's life cycle ------------------------------------------------------

    def open_writer(self, given: Storage | None) -> None:
        """Become the directory's writer in this process (lock, recovery, index) or join it.

        ``given`` is the storage the user passed, if any: two managers of one directory
        in one process must share one.

        Raises:
            CheckpointError: If the directory is open in this process with another
                storage the user passed.
            CheckpointDirLockedError: If another process is its writer.
        """
        if self.reader:
            return
        storage = self.storage
        with writers_mutex:
            shared = writers.get(self.key)
            if shared is not None and storage is not shared.storage and given is not None:
                raise CheckpointError(
                    f"{self.shown} is already open for writing in this process with "
                    f"{shared.storage!r}; close that manager first, or pass the same storage"
                )
            if shared is None:
                shared = Shared(self.place, grace=self.grace)
                shared.open_writer()
                writers[self.key] = shared
            else:
                shared.recovery += shared.recover()  # see the disk as it is now
            shared.users += 1
        self.shared = shared
        self.place = Place(shared.storage, shared.location, self.place.durable, shared.reaper)

    def release(self) -> None:
        """Leave the directory; the last writer of it saves the catalog and unlocks."""
        if self.reader:
            return
        shared = self.shared
        if shared.reaper.threaded:  # outside the registry's mutex: other opens need not wait
            self.flush_deletes()
        with writers_mutex:
            shared.users -= 1
            if shared.users:
                return
            lock, shared.lock = shared.lock, None
            try:
                # The trash is emptied while the lock is still this process's: a writer
                # that opens the directory next would otherwise race the reaper for it.
                self.flush_deletes()
                if lock is not None:
                    with contextlib.suppress(LeaseLostError):  # not ours to write then
                        lock.check()
                        shared.index.save_catalog(force=True)
            finally:
                if lock is not None:
                    lock.release()
                if writers.get(self.key) is shared:
                    del writers[self.key]

    def check_writer(self) -> None:
        """Raise `LeaseLostError` if this process is no longer the directory's writer."""
        self.shared.check_writer()

    def flush_deletes(self) -> None:
        """Wait until the files of every checkpoint deleted so far are removed."""
        reaper = self.shared.reaper
        if not reaper.flush():
            logger.error(
                "%s: the files of %d deleted checkpoints were not removed in %g s; the next "
                "writer's recovery removes them",
                self.shown,
                len(reaper.pending()),
                WAIT_S,
            )

    def current(self) -> Shared:
        """The shared state, re-listed first where this manager is a reader."""
        shared = self.shared
        if self.reader:
            with shared.mutex:
                shared.index.scan()
        return shared

    # --- one save's attempt -----------------------------------------------------------

    def start(
        self,
        step: int,
        info_bytes: bytes,
        config_bytes: bytes | None,
        writers: tuple[str, ...] = (),
    ) -> str:
        """Make a fresh attempt for ``step`` holding the training info (and run config).

        ``writers`` must each report their files (`ckpt.mark_written`) before it
        commits. A background finalization committing the step is waited for first
        (starting afresh would delete its attempt); an earlier attempt of the step that
        no live thread holds is replaced.

        Raises:
            SaveInProgressError: If another live thread of this process holds one.
            CheckpointError: If ``tmp_step_N`` exists and is not a directory, or holds
                files ckpt did not write (no ``training_info.json``).
        """
        shared, storage = self.shared, self.storage
        committing = shared.finalizing.get(step)
        if committing is not None:
            committing.join()
        me = threading.get_ident()
        with shared.mutex:
            live = shared.live.get(step)
            if live is not None and live.thread != me and _thread_alive(live.thread):
                raise SaveInProgressError(
                    f"step {step} is being saved by another thread of this process (into "
                    f"{live.path}); save() and save_async() wait for each other, but "
                    f"init_tmp_checkpoint does not: finalize or abort that save first"
                )
            for leftover in self._leftovers(step, live):
                if not commits.made_by_ckpt(storage, leftover):
                    raise CheckpointError(
                        f"cannot save step {step}: {name_of(leftover)} {commits.NOT_OURS}"
                    )
                warn(
                    RecoveryWarning,
                    f"replacing {user_path(storage, leftover)} left by an earlier attempt "
                    f"at step {step}",
                )
                commits.abandon(self.place, leftover)
            shared.live.pop(step, None)
            attempt = self.protocol.prepare(self.place, step)
            try:
                storage.write_bytes(join(attempt, _layout.INFO_FILE), info_bytes)
                if self.place.durable and storage.capabilities.directories:
                    # Its name reaches the disk before any other file's in the attempt:
                    # after a power cut the attempt is recognisably ckpt's, whatever else
                    # of it survived (a disk may keep later entries and lose earlier ones).
                    storage.sync_dir(attempt)
                if config_bytes is not None:
                    storage.write_bytes(join(attempt, _layout.CONFIG_FILE), config_bytes)
            except BaseException:
                storage.remove_tree(attempt)
                raise
            shared.live[step] = Attempt(me, attempt, writers)
        return attempt

    def _leftovers(self, step: int, live: Attempt | None) -> list[str]:
        """The earlier attempts of ``step`` a new one replaces (the caller holds the mutex)."""
        storage = self.storage
        found = [live.path] if live is not None else []
        if self.protocol.name == "rename":
            tmp = join(self.location, _layout.tmp_name(step))
            entry = storage.entry(tmp)
            if entry is not None and entry.kind != "dir":
                raise CheckpointError(
                    f"cannot save step {step}: {name_of(tmp)} exists and is a "
                    f"{describe_kind(entry.kind)}, not a directory ckpt made; move it away"
                )
            found = [tmp] if entry is not None else []
        return [
            path
            for path in found
            if storage.entry(path) is not None and not self._committed(path, step)
        ]

    def parse(self, checkpoint_path: PathInput) -> tuple[str, int]:
        """The attempt path and step of what a user handed back to finalize or abort.

        Raises:
            InvalidCheckpointPathError: If it is not named as the protocol names
                attempts, or not in this directory.
        """
        storage = self.storage
        path = location_of(storage, checkpoint_path)
        step = self.protocol.attempt_step(name_of(path))
        if step is None or storage.canonical(parent_of(path)) != self.key:
            expected = "tmp_step_<N>" if self.protocol.name == "rename" else "step_<N>.<token>"
            raise InvalidCheckpointPathError(
                f"{checkpoint_path} is not a temporary checkpoint of this manager; expected "
                f"{self.shown}/{expected} as returned by init_tmp_checkpoint"
            )
        return path, step

    def _reaping(self, attempt: str) -> bool:
        """Whether ``attempt`` is a deleted checkpoint's files, waiting for the reaper."""
        return name_of(attempt) in {name_of(path) for path in self.shared.reaper.pending()}

    def _committed(self, attempt: str, step: int) -> bool:
        """Whether ``attempt`` is the committed checkpoint of ``step`` (manifest attempts are)."""
        committed = self.shared.index.committed.get(step)
        return committed is not None and committed.path == attempt

    def check_parts(self, attempt: str, parts: list[tuple[int, list[WrittenFile]]]) -> None:
        """Check the files each process reported (rank, files) against one listing.

        A process alone wrote its files itself, just now: it is not listed again.

        Raises:
            IncompleteCheckpointError: Naming every rank whose file is missing or of
                another size (a `CollectiveError` where the ranks are a job's).
        """
        if len(parts) < 2:
            return
        prefix = attempt.rstrip("/") + "/"
        found = {
            path.removeprefix(prefix): entry.size
            for path, entry in walk_files(self.storage, attempt)
        }
        failures: list[Failure] = []
        for rank, files in parts:
            for file in files:
                have = found.get(file.name)
                if have is None:
                    failures.append(Failure(rank, f"wrote {file.name}, which is not in {attempt}"))
                elif (have != file.size) if file.exact else (have < file.size):
                    failures.append(
                        Failure(
                            rank,
                            f"wrote {file.name} of {file.size} bytes, and {attempt} has {have}",
                        )
                    )
        if failures:
            raise failures_error("the check of the ranks' files", failures)

    def commit(self, tmp: str, step: int, digests: Mapping[str, str] | None = None) -> bool:
        """Commit the attempt ``tmp`` as step ``step`` and index it (the caller holds the mutex).

        ``digests`` are the files' digests that other processes computed as they wrote
        them (by path under the attempt). Returns whether the retention applier can
        decide this commit incrementally.

        Raises:
            InvalidCheckpointPathError: If the attempt is gone, committed already, or lost
                its training info.
            IncompleteCheckpointError: If a writer named at its start has not reported.
            CheckpointError: If an entry that is not a checkpoint holds ``step_N``.
            LeaseLostError: If this process is no longer the directory's writer.
        """
        shared, storage = self.shared, self.storage
        index = shared.index
        shared.check_writer()  # a writer whose lease lapsed must not commit over its successor
        # On an object store a prefix is no entry of its own (asking costs a listing): the
        # attempt is there if its training info is, which is read next anyway.
        directories = storage.capabilities.directories
        found = storage.entry(tmp) if directories else None
        gone = directories and (found is None or found.kind != "dir")
        # A deleted checkpoint's files wait for the reaper: never to be committed again.
        if gone or self._reaping(tmp) or self._committed(tmp, step):
            raise InvalidCheckpointPathError(
                f"{tmp} does not exist (was it finalized or aborted already?)"
            )
        info_bytes, info = self._training_info(tmp)
        existing = index.committed.get(step)
        self._check_final(step, existing is not None and existing.kind == "rename")
        live = shared.live.get(step)
        if live is not None and live.path == tmp:
            check_reports(storage, tmp, live.writers)
        index.record_ranking(self.ranking_record, self.place)
        done = commits.commit(
            self.protocol,
            self.place,
            tmp,
            step,
            existing=existing,
            training_info=info_bytes,  # the manifest carries it: not read a second time
            # ...nor read again to hash it: these are its bytes as they are now.
            digests={**(digests or {}), _layout.INFO_FILE: digest_of(info_bytes)},
        )
        shared.live.pop(step, None)
        version_before = index.version
        path = user_path(storage, done.path)
        str(path)  # format it now: the query that follows a save returns it as a string
        index.add(
            CheckpointRecord(
                step=step,
                path=path,
                info=MappingProxyType(info),
                # A rename keeps a directory's mtime: this is what a rescan will read.
                committed_at=done.mtime,  # a rename keeps it: what a rescan reads
                pinned=step in index.pins,
            ),
            done,
        )
        logger.info("committed %s", done.path)
        if not self._metric_checked:
            self._metric_checked = True
            self._check_metric(step, info)
        if shared.on_commit is not None:
            shared.on_commit(step)
        return self.retention.committed(
            index, step, new=existing is None, version_before=version_before
        )

    def _check_metric(self, step: int, info: Mapping[str, Any]) -> None:
        """Warn, once, if the first commit lacks the metric the run ranks by (a typo?)."""
        ranking = self.retention.ranking
        if type(ranking) is not ByMetric or metric_value(info, ranking.name) is not None:
            return
        logged = [key for key in info if key != "step" and metric_value(info, key) is not None]
        close = difflib.get_close_matches(ranking.name, logged, n=1, cutoff=0.6)
        hint = (
            f"did you mean `{close[0]}`? (set `metric_name: {close[0]}`, or log `{ranking.name}`)"
            if close
            else f"it logs {', '.join(f'`{key}`' for key in logged[:5]) or 'no metric'}"
        )
        logger.warning(
            "step %d's training info has no usable `%s`, the metric this run ranks by: it "
            "ranks last, and top-k keeps the others first; %s",
            step,
            ranking.name,
            hint,
        )

    def _training_info(self, tmp: str) -> tuple[bytes, dict[str, Any]]:
        directories = self.storage.capabilities.directories
        try:
            info_bytes = self.storage.read_bytes(join(tmp, _layout.INFO_FILE))
            return info_bytes, decode_training_info(info_bytes)
        except (OSError, ValueError) as exc:
            if not directories and isinstance(exc, FileNotFoundError):
                raise InvalidCheckpointPathError(
                    f"{tmp} does not exist (was it finalized or aborted already?)"
                ) from exc
            raise InvalidCheckpointPathError(
                f"{tmp} has no readable {_layout.INFO_FILE} ({exc}); it was not made by "
                f"init_tmp_checkpoint, or its file was removed"
            ) from exc

    def _check_final(self, step: int, ours: bool) -> None:
        """Refuse to publish over a ``step_N`` that is not a checkpoint this index holds."""
        if not self.storage.capabilities.directories:
            return  # a step_N in the way matters to a rename; here nothing is in the way
        final_name = _layout.step_name(step)
        final_entry = self.storage.entry(join(self.location, final_name))
        if final_entry is not None and final_entry.kind != "dir":
            raise CheckpointError(
                f"cannot publish step {step}: {final_name} exists and is a "
                f"{final_entry.kind}, not a checkpoint; move it away and finalize again"
            )
        if final_entry is not None and not ours:
            # Not ours to replace: a directory without a readable training_info.json
            # may hold someone's files (NeMo RL's manager's, a crash's, a user's).
            raise CheckpointError(
                f"cannot publish step {step}: {final_name} exists but is not a "
                f"checkpoint (no readable {_layout.INFO_FILE}); move it away and "
                f"finalize again"
            )

    def finalize(self, tmp: str, step: int, digests: Mapping[str, str] | None = None) -> str:
        """Commit ``tmp`` as ``step``, then apply retention; the checkpoint's location."""
        shared = self.shared
        with shared.mutex:
            frontier_current = self.commit(tmp, step, digests)
            committed = shared.index.committed[step].path
            self.retention.after_commit(
                shared.index,
                step,
                shared.protected(but=step),
                frontier_current=frontier_current,
                place=self.place,
            )
            return committed

    def abort(self, tmp: str, step: int) -> None:
        """Throw the attempt away; one already gone, or committed since, is left as it is."""
        shared = self.shared
        with shared.mutex:
            shared.live.pop(step, None)
            if self._committed(tmp, step):
                return  # finalized already: no longer a temporary (manifest attempts stay put)
            if self._reaping(tmp):
                return  # committed and deleted since: the reaper is removing it
            if self.storage.entry(tmp) is not None:
                commits.abandon(self.place, tmp)
                logger.info("aborted %s", tmp)

    def forget(self, step: int) -> None:
        """Stop counting a failed save's attempt as this process's (recovery may take it)."""
        with self.shared.mutex:
            self.shared.live.pop(step, None)

    # --- changes ------------------------------------------------------------------------

    def prune_all(self) -> None:
        """Decide over every checkpoint and delete what retention does not keep.

        Raises:
            CheckpointError: If a delete failed (each is logged).
        """
        shared = self.shared
        with shared.mutex:
            failed = self.retention.prune_all(shared.index, shared.protected(), place=self.place)
        if failed:
            raise CheckpointError(f"a delete in {self.shown} failed (logged above)")

    def prune(
        self, exclude_latest: bool, on_delete: Callable[[CheckpointRecord], object] | None
    ) -> None:
        """`CheckpointManager.remove_old_checkpoints`."""
        shared = self.shared
        with shared.mutex:
            policy, protected = self.retention.manual_policy(
                shared.index, shared.protected(), exclude_latest
            )
            self.retention.prune(
                shared.index, policy, protected, place=self.place, on_delete=on_delete
            )

    def pin(self, step: int, pinned: bool) -> None:
        """Pin (or unpin) ``step``.

        Raises:
            CheckpointNotFoundError: If there is no checkpoint (or pin) at ``step``.
        """
        shared = self.shared
        index = shared.index
        with shared.mutex:
            if step not in index.records and not (not pinned and step in index.pins):
                raise CheckpointNotFoundError(
                    f"no finalized checkpoint at step {step} in {self.shown}; "
                    f"steps present: {describe_steps(index.records) or 'none'}"
                )
            if (step in index.pins) == pinned:
                return
            index.set_pinned(step, pinned, self.place)
            logger.info("%s step %d", "pinned" if pinned else "unpinned", step)

    # --- questions ----------------------------------------------------------------------

    def records(self) -> list[CheckpointRecord]:
        """Every committed checkpoint, by step."""
        shared = self.current()
        with shared.mutex:
            records = shared.index.records
            return [records[step] for step in sorted(records)]

    def latest(self) -> dict[str, Any]:
        """``{"name": step_N or step_N.<id> or None}``: the highest step."""
        shared = self.current()
        with shared.mutex:
            latest = self.retention.latest(shared.index)
            return {"name": None if latest is None else _name(shared.index.records[latest])}

    def best(self) -> dict[str, Any]:
        """``{"name", "missing", "of"}``: the best, the steps the metric lacks, out of how many."""
        shared = self.current()
        with shared.mutex:
            index = shared.index
            best = self.retention.best(index)
            if best is None:
                return {"name": None, "missing": [], "of": 0}
            missing = self.retention.missing_metric(index)
            return {
                "name": _name(index.records[best]),
                "missing": sorted(missing),
                "of": len(index.records),
            }

    def plan(self, exclude_latest: bool | None) -> list[Decision]:
        """`CheckpointManager.plan_retention`."""
        shared = self.current()
        with shared.mutex:
            policy, protected = self.retention.retention, shared.protected()
            if exclude_latest is not None:
                policy, protected = self.retention.manual_policy(
                    shared.index, protected, exclude_latest
                )
            return self.retention.plan(shared.index, policy, protected)

    def overview(self) -> tuple[Overview, set[int]]:
        """`CheckpointManager.overview`, and the steps the ranking's metric lacks."""
        shared = self.current()
        with shared.mutex:
            index = shared.index
            records = tuple(index.records[step] for step in sorted(index.records))
            decisions = self.retention.plan(index, self.retention.retention, shared.protected())
            best = self.retention.best(index)
            missing = self.retention.missing_metric(index) if best is not None else set()
            latest = self.retention.latest(index)
            return (
                Overview(
                    records=records,
                    decisions=tuple(decisions),
                    best=None if best is None else index.records[best],
                    latest=None if latest is None else index.records[latest],
                ),
                missing,
            )

    def record(self) -> dict[str, Any] | None:
        """``.ckpt/ranking.json`` as the writer recorded it."""
        shared = self.current()
        return meta.read_ranking(shared.storage, shared.location)

    def refresh(self) -> None:
        """Re-list the directory."""
        shared = self.shared
        with shared.mutex:
            shared.index.scan()

    def protected(self) -> Mapping[int, str]:
        """The steps retention must not delete now (saves in progress replace them)."""
        return self.shared.protected()


def _name(record: CheckpointRecord) -> str:
    """A checkpoint's entry in its directory: ``step_N``, or its attempt ``step_N.<id>``."""
    return str(record.path).rstrip("/").rsplit("/", 1)[-1]
