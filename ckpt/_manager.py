"""The checkpoint manager: a facade over an index, a retention applier and a commit protocol.

`CheckpointManager` validates what users pass and keeps NeMo RL's method names; the
work is done by the parts below it: `ckpt._index.Index` (what the directory holds),
`ckpt._retention.RetentionApplier` (what to keep), a `ckpt.commit` protocol (how a
save becomes a checkpoint), and `ckpt._writers` (this process's writers and their
saves in progress). Every byte goes through a `ckpt.storage.Storage`.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel

from ckpt import _attempts as attempts
from ckpt import _layout, _meta, commit
from ckpt._async import AsyncWriter, import_torch
from ckpt._config import CheckpointConfig, PretrainedCheckpoint, as_config
from ckpt._errors import (
    CheckpointError,
    CheckpointNotFoundError,
    InvalidStepError,
    LeaseLostError,
    MissingMetricWarning,
    ReadOnlyError,
)
from ckpt._finalize import Finalizer
from ckpt._group import Group, initialized_group
from ckpt._marks import check_writer_id
from ckpt._records import CheckpointRecord, Overview, describe_steps
from ckpt._resolve import policies_from_config
from ckpt._resume import resume_paths
from ckpt._retention import RetentionApplier
from ckpt._serialize import (
    RETENTION_FIELDS,
    decode_training_info,
    encode_ranking,
    encode_run_config,
    encode_training_info,
)
from ckpt._spmd import Spmd, prepare
from ckpt._text import short_repr
from ckpt._writers import Shared, writers, writers_mutex
from ckpt.commit.base import RecoveryAction
from ckpt.storage import (
    CheckpointPath,
    PathInput,
    PathStr,
    Storage,
    join,
    location_of,
    open_storage,
    user_path,
)
from policies import ByMetric, ByRecency, Decision, Ranking, RetentionPolicy

logger = logging.getLogger("ckpt")


def _ranking_record(
    ranking: Ranking, retention: RetentionPolicy, config: CheckpointConfig, own: bool
) -> bytes:
    """What ``.ckpt/ranking.json`` says; ``own``: the retention object is the caller's."""
    kept: dict[str, Any] = (
        {"custom": short_repr(retention, 200)}
        if own
        else {"config": config.model_dump(mode="json", include=set(RETENTION_FIELDS))}
    )
    if type(ranking) is ByMetric:
        return encode_ranking(ranking.name, ranking.higher_is_better, None, kept)
    if type(ranking) is ByRecency:
        return encode_ranking(None, True, None, kept)
    # A ranking of the run's own: the retention the config describes ranks by it too.
    return encode_ranking(None, True, short_repr(ranking, 200))


def _name(record: CheckpointRecord) -> str:
    """A checkpoint's entry in its directory: ``step_N``, or its attempt ``step_N.<id>``."""
    return str(record.path).rstrip("/").rsplit("/", 1)[-1]


def _check_step(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise InvalidStepError(f"step must be a non-negative integer, got {step!r}")
    return int(step)


def _check_strategy(name: str, value: object, protocol: type, method: str) -> None:
    if value is not None and (isinstance(value, type) or not isinstance(value, protocol)):
        raise TypeError(
            f"`{name}` must be an object with a {method} method (see the policies "
            f"package), got {value!r}"
        )


class CheckpointManager:
    """Creates, commits, ranks, prunes and finds the checkpoints of one directory.

    A training loop asks for a temporary directory with `init_tmp_checkpoint`, writes
    its own files there, and publishes it with `finalize_checkpoint` (or uses the
    `checkpoint` context manager for both). Publishing is atomic and durable, and
    pruning follows the configured retention policy. The methods of NeMo RL's manager
    keep their names, arguments and return types.

    Unless ``read_only`` (or ``enabled: false``), a manager is its directory's writer
    from construction: it takes an OS lock that a crashed process releases, then runs
    restart recovery, then indexes the checkpoints once. Managers of one directory in
    one process share that state; a writer in another process gets
    `CheckpointDirLockedError`. In a torch.distributed job every rank builds the
    manager, and saves are collective: each rank writes its own part, rank 0 commits.

    Args:
        config: A `CheckpointConfig`, or a mapping with NeMo RL's keys.
        retention: A retention policy overriding the config's.
        ranking: A ranking overriding the config's (for "best" and for the config's
            top-k retention).
        read_only: Take no lock and never change anything on disk; every query re-lists
            the directory, so a reader beside a live run stays current.
        storage: Where file operations go (default: `LocalStorage`, the local file
            system). The config's ``commit_protocol`` is chosen from its capabilities.
        process_group: In an initialized torch.distributed job: ``None`` (the
            default) makes the manager collective over the default group when it has
            more than one rank; a ``ProcessGroup`` makes it collective over that
            group; ``False`` makes a manager of this process alone. A collective
            manager is built on every rank of the group; rank 0 of the group holds the
            lock, recovers, commits and prunes (see the Multi-process jobs page).

    Raises:
        pydantic.ValidationError: If ``config`` is a mapping that does not validate.
        CheckpointDirLockedError: If another process is this directory's writer.
        ValueError: If the config's ``commit_protocol`` is one the storage cannot run,
            or ``process_group`` is given outside an initialized torch.distributed job.
        CollectiveError: In a distributed job, if opening failed on any rank (on rank
            0, chained to its error: a lock held elsewhere, say), or the ranks named
            different directories.
        CollectiveTimeoutError: If a rank of the group did not build its manager
            within ``collective_timeout_s``.
    """

    def __init__(
        self,
        config: CheckpointConfig | Mapping[str, Any] | BaseModel,
        *,
        retention: RetentionPolicy | None = None,
        ranking: Ranking | None = None,
        read_only: bool = False,
        storage: Storage | None = None,
        process_group: Any = None,
    ) -> None:
        _check_strategy("retention", retention, RetentionPolicy, "keep(checkpoints)")
        _check_strategy("ranking", ranking, Ranking, "rank(checkpoints)")
        self.config = as_config(config)
        self.ranking: Ranking
        self.retention: RetentionPolicy
        self.ranking, config_retention = policies_from_config(self.config, ranking=ranking)
        self.retention = retention if retention is not None else config_retention
        given = storage
        storage, location = open_storage(
            self.config.checkpoint_dir,
            self.config.storage_options,
            lease_seconds=self.config.lease_seconds,
            storage=storage,
        )
        self.checkpoint_dir: CheckpointPath = user_path(storage, location)
        self.read_only = read_only or not self.config.enabled
        # Each manager honours its own `fsync`, even when it shares a directory's state.
        self._durable = self.config.fsync
        self._closed = False
        self._retention = RetentionApplier(self.retention, self.ranking)
        self._ranking_record = _ranking_record(
            self.ranking, self.retention, self.config, retention is not None
        )
        self._async: AsyncWriter | None = None
        self._finalizer: Finalizer | None = None
        self._protocol = commit.choose(self.config.commit_protocol, storage.capabilities)
        group = initialized_group(process_group)
        self._spmd: Spmd | None = None
        if group is not None:
            self._spmd = Spmd(self, Group(group, self.config.collective_timeout_s))
        grace = self.config.attempt_grace_seconds
        # Read-only managers and the ranks other than a distributed job's coordinator
        # never change the directory: they re-list it for every query.
        self._reader = self.read_only or (self._spmd is not None and not self._spmd.coordinator)
        self._dir = Shared(storage, location, durable=self.config.fsync, grace=grace)
        key = self._key = storage.canonical(location)
        if self._spmd is not None:
            self._spmd.join(key, lambda: self._open_writer(storage, given))
        elif not self.read_only:
            self._open_writer(storage, given)

    def _open_writer(self, storage: Storage, given: Storage | None) -> None:
        if self._reader:
            return
        key, location, grace = self._key, self._dir.location, self.config.attempt_grace_seconds
        with writers_mutex:
            shared = writers.get(key)
            if shared is not None and storage is not shared.storage and given is not None:
                raise CheckpointError(
                    f"{self.checkpoint_dir} is already open for writing in this process with "
                    f"{shared.storage!r}; close that manager first, or pass the same storage"
                )
            if shared is None:
                shared = Shared(storage, location, durable=self.config.fsync, grace=grace)
                shared.open_writer()
                writers[key] = shared
            else:
                shared.recovery += shared.recover()  # see the disk as it is now
            shared.users += 1
        self._dir = shared

    # Seed attributes, kept for code that reads them.
    @property
    def metric_name(self) -> str | None:
        """The config's ``metric_name``."""
        return self.config.metric_name

    @property
    def higher_is_better(self) -> bool:
        """The config's ``higher_is_better``."""
        return self.config.higher_is_better

    @property
    def keep_top_k(self) -> int | None:
        """The config's ``keep_top_k``."""
        return self.config.keep_top_k

    @property
    def save_period(self) -> int | None:
        """The config's ``save_period``."""
        return self.config.save_period

    @property
    def ft_keep_latest_k(self) -> int | None:
        """The config's ``ft_keep_latest_k``."""
        return self.config.ft_keep_latest_k

    @property
    def save_optimizer(self) -> bool:
        """The config's ``save_optimizer`` (default true): NeMo RL's loop reads it."""
        return self.config.save_optimizer

    @property
    def save_data_plane(self) -> bool:
        """The config's ``save_data_plane`` (default false): NeMo RL's loop reads it."""
        return self.config.save_data_plane

    @property
    def load_replay_buffer(self) -> bool | None:
        """The config's ``load_replay_buffer``: ``None`` (unset) and true both restore."""
        return self.config.load_replay_buffer

    @property
    def pretrained_checkpoint(self) -> PretrainedCheckpoint | str | None:
        """The config's ``pretrained_checkpoint``, as NeMo RL types it."""
        return self.config.pretrained_checkpoint

    @property
    def recovery(self) -> tuple[RecoveryAction, ...]:
        """What restart recovery did to this directory since this process opened it.

        Recovery runs when the first writer of a directory opens it, and again when
        another manager of the same process joins it; this is every action of both.
        """
        return self._dir.recovery

    def __repr__(self) -> str:
        mode = "read_only" if self.read_only else "writer"
        return (
            f"CheckpointManager({str(self.checkpoint_dir)!r}, {mode}, "
            f"retention={self.retention!r}, ranking={self.ranking!r})"
        )

    @staticmethod
    def get_resume_paths(
        last_checkpoint_path: str | os.PathLike[str] | None,
        *,
        model_component: str = "policy",
    ) -> tuple[Path | None, Path | None]:
        """Where the weights and the optimizer state of a NeMo RL checkpoint are.

        It looks under ``<checkpoint>/<model_component>/``: a DTensor checkpoint has an
        ``optimizer/`` directory beside ``weights/``; a Megatron checkpoint
        (``weights/iter_0000000`` with ``common.pt`` or ``metadata.json``) holds the
        optimizer state inside the weights, which megatron-core is asked about.

        Args:
            last_checkpoint_path: A checkpoint directory, typically
                `get_latest_checkpoint_path`'s answer; ``None`` on a fresh run.
            model_component: The model's subtree: ``"policy"`` or ``"value"``.

        Returns:
            ``(weights, optimizer)``; ``(None, None)`` without a checkpoint. For a
            Megatron checkpoint ``optimizer`` only says there is state to load (it is
            loaded from ``weights``). ``optimizer`` is ``None``, with a `UserWarning`,
            when the checkpoint has no optimizer state.

        Raises:
            ImportError: For a Megatron checkpoint when megatron-core is not installed
                (the ``megatron`` extra).
        """
        return resume_paths(last_checkpoint_path, model_component)

    # --- life cycle ---------------------------------------------------------------

    def close(self) -> None:
        """Finish pending background saves and finalizations, then release this manager.

        It waits for what `shutdown` waits for and for every `save_async`. The
        directory lock goes with the last writer of it. Calling it twice is harmless. A
        closed manager refuses further use.

        Raises:
            FinalizationError: A background finalization failed (not raised yet).
            Exception: The first error of a background save not raised yet; the manager
                is closed all the same.
        """
        if self._closed:
            return
        try:
            try:
                self.shutdown()
            finally:
                if self._async is not None:
                    self._async.stop()
        finally:
            self._closed = True
            if not self._reader:
                self._release()

    def _release(self) -> None:
        with writers_mutex:
            self._dir.users -= 1
            if self._dir.users == 0:
                lock, self._dir.lock = self._dir.lock, None
                try:
                    if lock is not None:
                        with contextlib.suppress(LeaseLostError):  # not ours to write then
                            lock.check()
                            self._dir.index.save_catalog(force=True)
                finally:
                    if lock is not None:
                        lock.release()
                    if writers.get(self._key) is self._dir:
                        del writers[self._key]

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()  # a failed last checkpoint must not pass unnoticed
            return
        try:
            self.close()
        except Exception as error:
            # Best effort while the block's own exception propagates: never mask it.
            warnings.warn(
                f"checkpoint finalization failed while an exception left the `with` block "
                f"({error!r}); the block's exception is raised, not this",
                UserWarning,
                stacklevel=2,
            )

    # --- NeMo RL's asynchronous finalization -------------------------------------------

    def begin_finalization(
        self,
        checkpoint_path: PathInput,
        wait_fn: Callable[[], object] | None = None,
    ) -> None:
        """Commit a temporary checkpoint in the background, once its writers are done.

        It returns at once. A background thread calls ``wait_fn`` (which returns when
        the workers' asynchronous writes are complete: for Megatron,
        ``policy.finalize_async_save``), then commits exactly as `finalize_checkpoint`
        does (fsync, atomic publish), then queues retention on a pruning thread, off
        the loop's path. A previous finalization is waited for first. Retention never
        deletes the checkpoint that a finalization in flight will replace; a pruning
        failure is a `UserWarning` and never undoes the commit.

        Args:
            checkpoint_path: The path `init_tmp_checkpoint` returned.
            wait_fn: Blocks until every write into ``checkpoint_path`` is done; ``None``
                when they are done already.

        Raises:
            FinalizationError: The previous finalization failed; this one is not begun.
            InvalidCheckpointPathError: If the path is not a temporary checkpoint of this
                manager.
            ReadOnlyError: If the manager is read-only or checkpointing is disabled.
        """
        state = self._writable()
        tmp, step = self._tmp_step(checkpoint_path)
        finalizer = self._finalizer
        if finalizer is None:
            finalizer = self._finalizer = Finalizer(f"ckpt {self.checkpoint_dir.name}")
        finalizer.wait()
        with state.mutex:
            state.saving[step] += 1
            state.finalizing[step] = finalizer

        spmd = self._spmd
        channel = spmd.group.channel("finalize") if spmd is not None else None

        def commit_here(_: object = None) -> dict[str, Any]:
            with state.mutex:
                self._commit(state, tmp, step)
                self._retention.forget_frontier()  # retention decides over all, below
            return {}

        def commit() -> None:
            try:
                if spmd is None or channel is None:
                    if wait_fn is not None:
                        wait_fn()
                    commit_here()
                    return
                spmd.finalize(channel, tmp, step, wait_fn, commit_here)
            except BaseException:
                with state.mutex:
                    state.live.pop(step, None)  # not ours to keep: a joining manager may clean it
                raise
            finally:
                with state.mutex:
                    state.saving[step] -= 1
                    state.finalizing.pop(step, None)

        def prune() -> None:
            if self._reader:
                return  # the coordinator prunes
            with state.mutex:
                failed = self._retention.prune_all(
                    state.index, state.protected(), durable=self._durable
                )
            if failed:
                raise CheckpointError(f"a delete in {self.checkpoint_dir} failed (logged above)")

        finalizer.begin(str(tmp), commit, prune)

    def finalize_pending(self) -> None:
        """Block until the finalization in flight is committed (not until it is pruned).

        A no-op when nothing is pending; calling it twice is harmless.

        Raises:
            FinalizationError: The background finalization failed (a `RuntimeError`
                chained to the cause); raised once.
        """
        if self._finalizer is not None:
            self._finalizer.wait()

    def shutdown(self) -> None:
        """Block until the finalization in flight is committed and its pruning is done.

        Call it when training ends; the manager stays usable, and calling it twice is
        harmless. `close` (and leaving a ``with`` block) does it too.

        Raises:
            FinalizationError: The background finalization failed; raised once.
        """
        if self._finalizer is not None:
            self._finalizer.shutdown()

    @property
    def has_pending_finalization(self) -> bool:
        """Whether a `begin_finalization` is still waiting or committing."""
        return self._finalizer is not None and self._finalizer.pending

    def _usable(self) -> Shared:
        if self._closed:
            raise CheckpointError(f"this manager of {self.checkpoint_dir} is closed")
        if self._reader:
            with self._dir.mutex:
                self._dir.index.scan()
        return self._dir

    def _writable(self) -> Shared:
        if self._closed:
            raise CheckpointError(f"this manager of {self.checkpoint_dir} is closed")
        if self.read_only:
            why = "read_only=True" if self.config.enabled else "`enabled: false` in its config"
            raise ReadOnlyError(
                f"cannot change {self.checkpoint_dir}: the manager was opened with {why}"
            )
        self._dir.check_writer()
        return self._dir

    # --- writing ------------------------------------------------------------------

    def init_tmp_checkpoint(
        self,
        step: int,
        training_info: Mapping[str, Any],
        run_config: Mapping[str, Any] | BaseModel | None = None,
        *,
        writers: Collection[str] | None = None,
    ) -> CheckpointPath:
        """Create ``tmp_step_N`` holding the training info (and run config).

        The loop writes its own files into the returned directory, then calls
        `finalize_checkpoint`. Nothing in it is visible as a checkpoint until then.
        ``training_info`` is not modified; tensors and numpy scalars in it are stored as
        numbers. A leftover ``tmp_step_N`` from an earlier attempt is replaced. Under
        ``commit_protocol: manifest`` the directory is ``step_N.<token>`` instead (see
        the Architecture page of the docs).

        Args:
            step: The training step, a non-negative integer.
            training_info: Metrics and counters, stored as ``training_info.json``.
            run_config: The run's configuration, a dict or a pydantic model (dumped with
                ``mode="json"``), stored as ``config.yaml``.
            writers: The workers (other processes, maybe other hosts) that write into
                the directory: each must call `ckpt.mark_written` with its name before
                `finalize_checkpoint` or `begin_finalization` publishes it.

        Returns:
            The absolute path of the temporary directory.

        Raises:
            InvalidStepError: If ``step`` is not a non-negative integer.
            SerializationError: If a value cannot be stored; nothing is written then.
            ReadOnlyError: If the manager is read-only or checkpointing is disabled.
            ValueError: If a name in ``writers`` cannot name a report file.
        """
        state = self._writable()
        step = _check_step(step)
        if isinstance(writers, str):
            raise TypeError(f"`writers` must be a collection of names, got the string {writers!r}")
        names = tuple(sorted({check_writer_id(w) for w in writers or ()}))
        if self._spmd is not None:
            if self._spmd.coordinator and (committing := state.finalizing.get(step)):
                committing.join()
            return self._spmd.init_tmp(step, prepare(training_info, run_config), names)
        info_bytes = encode_training_info(training_info)
        config_bytes = encode_run_config(run_config) if run_config is not None else None
        committing = state.finalizing.get(step)
        if committing is not None:
            # Its tmp_step_N is being committed: starting the step afresh would delete it.
            committing.join()
        return self._init_tmp(state, step, info_bytes, config_bytes, names)

    def _init_tmp(
        self,
        state: Shared,
        step: int,
        info_bytes: bytes,
        config_bytes: bytes | None,
        writers: tuple[str, ...] = (),
    ) -> CheckpointPath:
        attempt = attempts.start(
            state,
            self._protocol,
            step,
            info_bytes,
            config_bytes,
            durable=self._durable,
            writers=writers,
        )
        return user_path(state.storage, attempt)

    def _tmp_step(self, checkpoint_path: PathInput) -> tuple[str, int]:
        return attempts.parse(self._dir, self._protocol, checkpoint_path, self.checkpoint_dir)

    def finalize_checkpoint(self, checkpoint_path: PathInput) -> None:
        """Publish a temporary checkpoint as ``step_N``, then apply retention.

        Every file under it and the directory itself are fsynced, then it is renamed
        into place and the parent directory is fsynced. An existing ``step_N`` is
        replaced atomically. Retention then prunes by the configured policy, never
        touching pinned checkpoints.

        Args:
            checkpoint_path: The path `init_tmp_checkpoint` returned.

        Raises:
            InvalidCheckpointPathError: If the path is not a temporary checkpoint of this
                manager, no longer exists, or lost its ``training_info.json``.
            IncompleteCheckpointError: If a writer named in ``init_tmp_checkpoint`` has
                not reported (`ckpt.mark_written`), or a file it reported changed;
                nothing is published and the directory stays.
            CollectiveError: In a distributed job, if any rank failed or aborted.
            ReadOnlyError: If the manager is read-only or checkpointing is disabled.
        """
        self._writable()
        tmp, step = self._tmp_step(checkpoint_path)
        if self._spmd is not None:
            self._spmd.end(tmp, step, commit=True)
            return
        self._finalize_here(tmp, step)

    def _finalize_here(self, tmp: str, step: int) -> str:
        """Commit ``tmp`` as ``step``, then apply retention; the checkpoint's location."""
        state = self._dir
        with state.mutex:
            frontier_current = self._commit(state, tmp, step)
            committed = state.index.committed[step].path
            self._retention.after_commit(
                state.index,
                step,
                state.protected(but=step),
                frontier_current=frontier_current,
                durable=self._durable,
            )
            return committed

    def _commit(self, state: Shared, tmp: str, step: int) -> bool:
        """Commit the attempt ``tmp`` as step ``step`` and index it (the caller holds the mutex).

        Returns whether the retention applier can decide this commit incrementally.
        """
        new, version_before = attempts.commit(
            state, self._protocol, tmp, step, self._ranking_record, durable=self._durable
        )
        return self._retention.committed(state.index, step, new=new, version_before=version_before)

    def abort_checkpoint(self, checkpoint_path: PathInput) -> None:
        """Throw away a temporary checkpoint; a path already gone is fine.

        Raises:
            InvalidCheckpointPathError: If the path is not a temporary checkpoint of this
                manager.
            ReadOnlyError: If the manager is read-only or checkpointing is disabled.
        """
        state = self._writable()
        tmp, step = self._tmp_step(checkpoint_path)
        if self._spmd is not None:
            self._spmd.end(tmp, step, commit=False)
            return
        with state.mutex:
            attempts.abort(state, tmp, step, durable=self._durable)

    @contextmanager
    def checkpoint(
        self,
        step: int,
        training_info: Mapping[str, Any],
        run_config: Mapping[str, Any] | BaseModel | None = None,
    ) -> Iterator[CheckpointPath]:
        """Yield a temporary directory; finalize it on success, abort it on an exception.

        Example:
            ```python
            with manager.checkpoint(step, {"val_loss": loss}) as path:
                torch.save(model.state_dict(), path / "model.pt")
            ```

        Raises:
            Exception: The errors of `init_tmp_checkpoint` and `finalize_checkpoint`; an
                exception from the body is re-raised after the temporary directory is
                removed.
        """
        path = self.init_tmp_checkpoint(step, training_info, run_config)
        try:
            yield path
        except BaseException:
            try:
                self.abort_checkpoint(path)
            except Exception:
                logger.exception("could not remove %s after a failed save", path)
            raise
        self.finalize_checkpoint(path)

    # --- saving model state ---------------------------------------------------------

    def save(
        self,
        step: int,
        training_info: Mapping[str, Any],
        state: Any,
        *,
        run_config: Mapping[str, Any] | BaseModel | None = None,
    ) -> CheckpointPath:
        """Save ``state`` as the checkpoint of ``step`` and wait until it is committed.

        The state (a possibly nested dict of tensors, see `ckpt.torch.save_state`) is
        written into a temporary directory, fsynced, published as ``step_N`` and
        retention is applied, as `finalize_checkpoint` does. Background saves
        submitted earlier finish first, so steps are committed in submission order.

        Args:
            step: The training step, a non-negative integer.
            training_info: Metrics and counters, stored as ``training_info.json``.
            state: The model (and optimizer) state; read it back with
                `ckpt.torch.load_state`.
            run_config: The run's configuration, a dict or a pydantic model (dumped with
                ``mode="json"``), stored as ``config.yaml``.

        In a distributed job it is collective: every rank passes its own state and
        writes its own part (a state file per rank; DCP's files for state holding
        DTensors), rank 0 checks every part, commits and prunes, and every rank gets
        the same path, or the same `CollectiveError`.

        Returns:
            The path of the committed checkpoint, ``checkpoint_dir/step_N`` (under the
            manifest protocol, its attempt ``step_N.<token>``).

        Raises:
            ImportError: If torch is not installed.
            InvalidStepError: If ``step`` is not a non-negative integer.
            SerializationError: If the info or the state holds something that cannot be
                stored; nothing is written then.
            ReadOnlyError: If the manager is read-only or checkpointing is disabled.
            CollectiveError: In a distributed job, if any rank failed; nothing is
                committed (a bad state on one rank is this, on every rank).
            CollectiveTimeoutError: In a distributed job, if a rank died or did not
                answer within ``collective_timeout_s``; nothing is committed.
            Exception: An error of an earlier `save_async`, raised here if not raised yet.
        """
        self._writable()
        step = _check_step(step)
        save_state, _ = _state_io()
        self.wait_until_finished()
        if self._spmd is not None:
            prepared = prepare(training_info, run_config, state)
            return self._spmd.save(self._spmd.calls, step, prepared, state)
        with self._dir.save_lock, self.checkpoint(step, training_info, run_config) as path:
            save_state(path, state, fsync=self._durable, storage=self._dir.storage)
        if self._protocol.name == "manifest":
            return path  # the attempt is the checkpoint
        return self.checkpoint_dir / _layout.step_name(step)

    def save_async(
        self,
        step: int,
        training_info: Mapping[str, Any],
        state: Any,
        *,
        run_config: Mapping[str, Any] | BaseModel | None = None,
    ) -> None:
        """Snapshot ``state`` to host memory and save it on a background thread.

        It returns once every tensor is copied into host buffers that are reused from
        save to save, so the caller may change its tensors right away. Writing, fsync,
        publishing and retention then happen in the background, one save at a time in
        submission order. Once ``max_pending_saves`` snapshots (default 1) wait to be
        written, the next call blocks until one is done. Retention never deletes a
        checkpoint that a pending save will replace. Call `wait_until_finished` (or
        `close`, or leave a ``with`` block) before reading what was saved; saves still
        pending when the interpreter exits are finished first.

        Args:
            step: The training step, a non-negative integer.
            training_info: Metrics and counters; encoded now, so later changes to the
                dict do not leak into the checkpoint.
            state: The model (and optimizer) state, as for `save`.
            run_config: The run's configuration, a dict or a pydantic model (dumped with
                ``mode="json"``), stored as ``config.yaml``.

        Raises:
            ImportError: If torch is not installed.
            InvalidStepError: If ``step`` is not a non-negative integer.
            SerializationError: If the info or the state holds something that cannot be
                stored; nothing is queued then.
            ReadOnlyError: If the manager is read-only or checkpointing is disabled.
            Exception: The error of an earlier background save, raised once, here or
                from the next call that waits; this save is then not submitted.
            CollectiveError: In a distributed job, if a rank's state cannot be saved
                (raised on every rank, before anything is queued); a background save
                that fails on any rank raises it later, on every rank.
        """
        directory = self._writable()
        step = _check_step(step)
        save_state, check_state = _state_io()
        spmd = self._spmd
        if spmd is not None:
            prepared = prepare(training_info, run_config, state)
            # Refuse a bad state on every rank now, not in the background; the snapshot
            # is other tensors, planned when written.
            spmd.round(spmd.calls, f"save_async(step={step})", {}, prepared.error, lambda _: {})
            prepared = prepared.unplanned()
            info_bytes, config_bytes = prepared.info, prepared.config
        else:
            info_bytes = encode_training_info(training_info)
            config_bytes = encode_run_config(run_config) if run_config is not None else None
            check_state(state)  # refuse a bad state here, not in the background
        if self._async is None:
            self._async = AsyncWriter(
                f"ckpt-save {self.checkpoint_dir.name}", self.config.max_pending_saves
            )
        writer = self._async

        channel = spmd.group.channel("async") if spmd is not None else None

        def write(snapshot: Any) -> None:
            if spmd is not None and channel is not None:
                try:
                    spmd.save(channel, step, prepared, snapshot)
                finally:
                    with directory.mutex:
                        directory.saving[step] -= 1
                return
            try:
                with directory.save_lock:
                    tmp = self._init_tmp(directory, step, info_bytes, config_bytes)
                    try:
                        save_state(tmp, snapshot, fsync=self._durable, storage=directory.storage)
                    except BaseException:
                        self.abort_checkpoint(tmp)
                        raise
                    self.finalize_checkpoint(tmp)
            finally:
                with directory.mutex:
                    directory.saving[step] -= 1

        with directory.mutex:
            directory.saving[step] += 1
        try:
            writer.submit(step, state, write)
        except BaseException:
            with directory.mutex:
                directory.saving[step] -= 1
            raise

    def wait_until_finished(self) -> None:
        """Block until every `save_async` of this manager is committed (or failed).

        Raises:
            Exception: The first error of a background save not raised yet.
        """
        if self._async is not None:
            self._async.wait()

    # --- retention ----------------------------------------------------------------

    def remove_old_checkpoints(
        self,
        exclude_latest: bool = True,
        *,
        on_delete: Callable[[CheckpointRecord], object] | None = None,
    ) -> None:
        """Delete the checkpoints the retention policy does not keep.

        `finalize_checkpoint` already does this after every commit; call it after
        changing pins or to prune a directory written with another policy.

        Args:
            exclude_latest: Keep the latest checkpoint whatever the policy says. With
                ``False``, a `Hybrid` policy (NeMo RL's ``keep_top_k``) also loses its
                latest-step exemption, so exactly the top k remain, as in NeMo RL.
            on_delete: Called with each checkpoint once it is deleted (a progress bar,
                say); an exception from it stops the prune.

        Raises:
            ReadOnlyError: If the manager is read-only or checkpointing is disabled.
        """
        state = self._writable()

        def prune() -> None:
            with state.mutex:
                policy, protected = self._retention.manual_policy(
                    state.index, state.protected(), exclude_latest
                )
                self._retention.prune(
                    state.index, policy, protected, durable=self._durable, on_delete=on_delete
                )

        if self._spmd is not None:
            self._spmd.change(f"remove_old_checkpoints({exclude_latest})", prune)
        else:
            prune()

    def plan_retention(self, exclude_latest: bool | None = None) -> list[Decision]:
        """Say, for every checkpoint, whether retention keeps it and why; change nothing.

        Args:
            exclude_latest: ``None`` (the default) plans what the next
                `finalize_checkpoint` applies; ``True`` or ``False`` plans what
                `remove_old_checkpoints` with that argument would do now.

        Returns:
            One `policies.Decision` per checkpoint (pins included), sorted by step.
        """
        state = self._usable()
        with state.mutex:
            policy, protected = self.retention, state.protected()
            if exclude_latest is not None:
                policy, protected = self._retention.manual_policy(
                    state.index, protected, exclude_latest
                )
            return self._retention.plan(state.index, policy, protected)

    def overview(self) -> Overview:
        """Every checkpoint, what retention decides for each, the best and the latest.

        It is what `list_checkpoints`, `plan_retention`, `get_best_checkpoint_path` and
        `get_latest_checkpoint_path` answer, taken from one look at the directory, so
        the answers agree even while a live run changes it (``ckpt ls`` shows this).
        It warns of missing metrics as `get_best_checkpoint_path` does.
        """
        state = self._usable()
        with state.mutex:
            index = state.index
            records = tuple(index.records[step] for step in sorted(index.records))
            decisions = self._retention.plan(index, self.retention, state.protected())
            best = self._retention.best(index)
            if best is not None:
                self._warn_missing(self._retention.missing_metric(index))
            latest = self._retention.latest(index)
            return Overview(
                records=records,
                decisions=tuple(decisions),
                best=None if best is None else index.records[best],
                latest=None if latest is None else index.records[latest],
            )

    def recorded_ranking(self) -> dict[str, Any] | None:
        """The ranking the directory's writer recorded, for tools given no config.

        Returns:
            ``{"metric_name": ..., "higher_is_better": ...}`` (``metric_name`` is
            ``None`` for a run ranked by recency), ``{"custom": repr}`` for a run ranked
            by an object of its own, or ``None`` where nothing is recorded (a directory
            NeMo RL's manager or an older ckpt wrote).

        Raises:
            UnsafeFileError: If ``.ckpt`` or the record is a link or a special file.
            ValueError: If the file does not hold a ranking record.
            OSError: If it cannot be read.
        """
        recorded = self._record()
        if recorded is None:
            return None
        return {key: value for key, value in recorded.items() if key != "retention"}

    def recorded_retention(self) -> dict[str, Any] | None:
        """The retention the directory's writer recorded, for tools given no config.

        Returns:
            ``{"config": {...}}``: the config fields that, with `recorded_ranking`,
            give the writer's retention (``retention``, ``keep_top_k``,
            ``ft_keep_latest_k``, ``save_period``, ``protect_best``);
            ``{"custom": repr}`` for a policy object of the run's own; ``None`` where
            nothing is recorded (a run ranked by an object of its own, or a directory
            NeMo RL's manager or an older ckpt wrote).

        Raises:
            UnsafeFileError: If ``.ckpt`` or the record is a link or a special file.
            ValueError: If the file does not hold a ranking record.
            OSError: If it cannot be read.
        """
        recorded = self._record()
        retention = None if recorded is None else recorded.get("retention")
        return None if retention is None else dict(retention)

    def _record(self) -> dict[str, Any] | None:
        """``.ckpt/ranking.json`` as the writer recorded it (both queries read it)."""
        state = self._usable()
        return _meta.read_ranking(state.storage, state.location)

    def pin(self, step: int) -> None:
        """Protect the checkpoint at ``step`` from pruning; the pin survives restarts.

        Raises:
            CheckpointNotFoundError: If there is no finalized checkpoint at ``step``.
            ReadOnlyError: If the manager is read-only or checkpointing is disabled.
        """
        self._set_pinned(step, True)

    def unpin(self, step: int) -> None:
        """Remove the pin of ``step``; retention may prune it from the next prune on.

        Raises:
            CheckpointNotFoundError: If ``step`` is neither pinned nor a checkpoint.
            ReadOnlyError: If the manager is read-only or checkpointing is disabled.
        """
        self._set_pinned(step, False)

    def _set_pinned(self, step: int, pinned: bool) -> None:
        self._writable()
        step = _check_step(step)
        if self._spmd is not None:
            call = f"{'pin' if pinned else 'unpin'}({step})"
            self._spmd.change(call, lambda: self._pin_here(step, pinned))
        else:
            self._pin_here(step, pinned)

    def _pin_here(self, step: int, pinned: bool) -> None:
        state = self._dir
        index = state.index
        with state.mutex:
            if step not in index.records and not (not pinned and step in index.pins):
                raise CheckpointNotFoundError(
                    f"no finalized checkpoint at step {step} in {self.checkpoint_dir}; "
                    f"steps present: {describe_steps(index.records) or 'none'}"
                )
            if (step in index.pins) == pinned:
                return
            index.set_pinned(step, pinned, durable=self._durable)
            logger.info("%s step %d", "pinned" if pinned else "unpinned", step)

    # --- queries ------------------------------------------------------------------

    def list_checkpoints(self) -> list[CheckpointRecord]:
        """Return every finalized checkpoint, sorted by step."""
        state = self._usable()
        with state.mutex:
            records = state.index.records
            return [records[step] for step in sorted(records)]

    def get_latest_checkpoint_path(self) -> PathStr | None:
        """Return the path of the checkpoint with the highest step, or ``None``.

        It is a `ckpt.storage.PathStr`: the ``str`` NeMo RL's manager returns, which
        also joins with ``/`` into the type `init_tmp_checkpoint` returns (a
        `pathlib.Path` on local disk, a ``UPath`` on a store), so
        ``latest / "model.pt"`` works on both; ``latest.path`` is that path itself.

        In a distributed job every rank calls it, and every rank gets the answer of the
        coordinator, so that no two ranks resume from different steps.
        """
        if self._spmd is not None:
            answer = self._spmd.agree("get_latest_checkpoint_path()", self._latest_here)
        else:
            answer = self._latest_here()
        return self._named(answer["name"])

    def _latest_here(self) -> dict[str, Any]:
        state = self._usable()
        with state.mutex:
            latest = self._retention.latest(state.index)
            return {"name": None if latest is None else _name(state.index.records[latest])}

    def _named(self, name: str | None) -> PathStr | None:
        """The path of the checkpoint ``name`` (the coordinator's answer) in this directory."""
        return None if name is None else PathStr(self.checkpoint_dir / name)

    def get_best_checkpoint_path(self) -> PathStr | None:
        """Return the path of the best checkpoint by the ranking, or ``None``.

        It is the checkpoint top-k retention protects first; the path is of the type
        `get_latest_checkpoint_path` returns. With a metric ranking,
        checkpoints whose metric is missing, NaN or not a number rank last, and ties go
        to the higher step; if none has the metric, that is the latest checkpoint.

        Warns (as NeMo RL's manager does) with a `MissingMetricWarning`, a
        `UserWarning`, naming how many checkpoints and which steps lack the metric, and
        again when none has it and the latest is returned.

        In a distributed job every rank calls it, and every rank gets the answer (and
        the warnings) of the coordinator.
        """
        if self._spmd is not None:
            answer = self._spmd.agree("get_best_checkpoint_path()", self._best_here)
        else:
            answer = self._best_here()
        for text in answer["warnings"]:
            warnings.warn(text, MissingMetricWarning, stacklevel=2)
        return self._named(answer["name"])

    def _best_here(self) -> dict[str, Any]:
        state = self._usable()
        with state.mutex:
            best = self._retention.best(state.index)
            if best is None:
                return {"name": None, "warnings": []}
            texts = self._missing_warnings(self._retention.missing_metric(state.index))
            return {"name": _name(state.index.records[best]), "warnings": texts}

    def _warn_missing(self, missing: set[int]) -> None:
        for text in self._missing_warnings(missing):
            warnings.warn(text, MissingMetricWarning, stacklevel=3)

    def _missing_warnings(self, missing: set[int]) -> list[str]:
        if not missing:
            return []
        name = self.ranking.name  # type: ignore[attr-defined]
        hint = (
            "log it at every step you save (in NeMo RL, enable val_at_end or align "
            "val_period with max_steps, so the last checkpoints are evaluated)"
        )
        texts = [
            f"Ignoring {len(missing)} checkpoint(s) at step(s) {describe_steps(missing)} "
            f"when choosing the best: they have no usable {name!r} (missing, NaN or not a "
            f"number) and rank below every other; {hint}"
        ]
        if len(missing) == len(self._dir.index.records):
            texts.append(
                f"No checkpoints contain metric {name!r} with a usable value. Returning "
                f"latest checkpoint, step {max(missing)}; {hint}"
            )
        return texts

    def load_training_info(self, checkpoint_path: PathInput | None = None) -> dict[str, Any] | None:
        """Read the ``training_info.json`` of a checkpoint.

        Args:
            checkpoint_path: A checkpoint directory; ``None`` returns ``None`` (so the
                result of `get_latest_checkpoint_path` can be passed straight in).

        Returns:
            A fresh dict the caller may modify, or ``None``.

        Raises:
            FileNotFoundError: If the directory has no ``training_info.json``.
        """
        if checkpoint_path is None:
            return None
        storage = self._dir.storage
        path = join(location_of(storage, checkpoint_path), _layout.INFO_FILE)
        return decode_training_info(storage.read_bytes(path))

    def should_save(self, step: int, *, last: bool = False) -> bool:
        """Whether a loop should save at ``step``, by ``save_period`` and ``ft_save_period``.

        ``step`` is the step the checkpoint would be saved as. Without either period
        every step qualifies; with checkpointing disabled none does.

        Args:
            step: The step number the checkpoint would carry.
            last: Whether this is the run's final step, which is always saved.
        """
        step = _check_step(step)
        config = self.config
        if not config.enabled:
            return False
        periods = [p for p in (config.save_period, config.ft_save_period) if p is not None]
        return last or not periods or any(step % period == 0 for period in periods)

    def refresh(self) -> None:
        """Re-read the directory (read-only managers do this before every query)."""
        state = self._usable()
        if not self.read_only:
            with state.mutex:
                state.index.scan()


def _state_io() -> tuple[Callable[..., CheckpointPath], Callable[[Any], object]]:
    """``ckpt.torch``'s writer and its check of a state (imported on first use)."""
    import_torch()  # for its message naming the extra
    from ckpt.torch import save_state  # noqa: PLC0415 - torch is an optional extra
    from ckpt.torch._plan import plan_state  # noqa: PLC0415

    return save_state, plan_state
