"""The checkpoint manager: a facade over an index, a retention applier and a commit protocol.

`CheckpointManager` validates what users pass and keeps NeMo RL's method names; the
work is done by the parts below it: `ckpt._directory.index.Index` (what the directory holds),
`ckpt._directory.retention.RetentionApplier` (what to keep), a `ckpt.commit` protocol (how a
save becomes a checkpoint), and `ckpt._directory.registry` (this process's writers and their
saves in progress). Every byte goes through a `ckpt.storage.Storage`.
"""

from __future__ import annotations

import logging
import numbers
import os
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel

from ckpt import _layout, commit
from ckpt._collective.coordinator import Local, coordinator_for
from ckpt._collective.reports import check_writer_id
from ckpt._config.resolve import local_tier, policies_from_config
from ckpt._config.schema import CheckpointConfig, PretrainedCheckpoint, as_config
from ckpt._config.serialize import RETENTION_FIELDS, decode_training_info, encode_ranking
from ckpt._directory.directory import Directory
from ckpt._directory.meta import read_preemption, write_preemption
from ckpt._directory.records import CheckpointRecord, Overview, PreemptionRecord, describe_steps
from ckpt._directory.retention import RetentionApplier
from ckpt._errors import CheckpointError, InvalidStepError, MissingMetricWarning, ReadOnlyError
from ckpt._preemption import Notice, Preemption, check_main_thread
from ckpt._replication.replicator import Status
from ckpt._replication.tiers import OneTier, TwoTiers
from ckpt._resume import resume_paths
from ckpt._saving.saver import Saver, default_handler, prepare
from ckpt._text import short_repr
from ckpt.commit.base import RecoveryAction
from ckpt.handler import StateHandler
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
from policies import (
    ByMetric,
    ByRecency,
    CheckpointView,
    Decision,
    Ranking,
    RetentionPolicy,
    ranked,
)

logger = logging.getLogger("ckpt")
# How long, in graces, a loop whose preemption save overran waits for it to commit.
_LATE_SAVE_WAIT_GRACES = 10


def _ranking_record(
    ranking: Ranking,
    retention: RetentionPolicy,
    config: CheckpointConfig,
    own: bool,
    *,
    tier: bool = False,
) -> bytes:
    """What ``.ckpt/ranking.json`` says; ``own``: the retention object is the caller's.

    ``tier``: the record of a replicated run's local tier, which names its replica too
    (information for ``ckpt ls``; nothing acts on it). The replica's own record holds its
    retention only: it is an ordinary directory.
    """
    kept: dict[str, Any] = (
        {"custom": short_repr(retention, 200)}
        if own
        else {"config": config.model_dump(mode="json", include=set(RETENTION_FIELDS))}
    )
    if tier and config.replicate is not None and not own:  # where, never credentials
        kept["config"]["replicate"] = config.replicate.model_dump(
            mode="json", exclude={"storage_options"}
        )
    if type(ranking) is ByMetric:
        return encode_ranking(ranking.name, ranking.higher_is_better, None, kept)
    if type(ranking) is ByRecency:
        return encode_ranking(None, True, None, kept)
    # A ranking of the run's own: the retention the config describes ranks by it too.
    # Both are recorded as what they are, so that `ckpt ls` can name them.
    return encode_ranking(None, True, short_repr(ranking, 200), kept)


_warned: set[tuple[str, str]] = set()


def _warn_once(key: tuple[str, str], message: str) -> None:
    """Log ``message`` at WARNING the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        logger.warning("%s", message)


def _probe(ranking: Ranking, metric: str | None) -> None:
    """Try a ranking of the caller's own on three made-up checkpoints.

    What it returns is checked here, before anything is committed, rather than after the
    first save's commit (where a wrong type would fail a save that succeeded). A ranking
    is pure, so asking it costs nothing; an exception of its own (it expects keys these
    checkpoints lack, say) proves nothing, and is left to show with real checkpoints.

    Raises:
        TypeError: Naming the ranking and what it returned.
    """
    views = [
        CheckpointView(step, {"step": step, **({metric: 1.0 / step} if metric else {})})
        for step in (1, 2, 3)
    ]
    try:
        ranked(ranking, views)
    except TypeError as exc:
        if ".rank() must return" in str(exc):
            raise TypeError(f"{exc} (checked when the manager was built)") from None
        logger.debug("could not try %r on made-up checkpoints", ranking, exc_info=True)
    except Exception:
        logger.debug("could not try %r on made-up checkpoints", ranking, exc_info=True)


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
        if ranking is not None:
            _probe(ranking, self.config.metric_name)
        elif self.config.keep_top_k is not None and self.config.metric_name is None:
            _warn_once(
                ("keep_top_k", str(self.config.checkpoint_dir)),
                f"`keep_top_k: {self.config.keep_top_k}` without `metric_name` ranks by "
                f"recency: it keeps the {self.config.keep_top_k} newest checkpoints (and "
                f"the latest). Set `metric_name` (and `higher_is_better`) to keep the best "
                f"by a metric, or write `retention: {{kind: latest_n, n: "
                f"{self.config.keep_top_k}}}` to say that newest is what you mean",
            )
        given = storage
        storage, location = open_storage(
            self.config.checkpoint_dir,
            self.config.storage_options,
            lease_seconds=self.config.lease_seconds,
            storage=storage,
        )
        self.checkpoint_dir: CheckpointPath = user_path(storage, location)
        self.read_only = read_only or not self.config.enabled
        signals = () if self.read_only else tuple(self.config.preemption_signals)
        if signals:
            check_main_thread()  # before anything is opened, so a refusal leaves nothing
        self._closed = False
        self._last_named: PathStr | None = None
        coordinator = self._coord = coordinator_for(process_group, self.config.collective_timeout_s)
        replicate = self.config.replicate
        if replicate is not None and not isinstance(coordinator, Local):
            raise ValueError(
                "`replicate` is for a process alone for now, got a manager collective over "
                f"{process_group or 'the default group'}: replicate the directory from one "
                "process (process_group=False on rank 0), or leave `replicate` unset"
            )
        ranking_record = _ranking_record(
            self.ranking, self.retention, self.config, retention is not None
        )
        local_retention, local_record = self.retention, ranking_record
        local_config = local_tier(self.config)
        if local_config is not None:  # replicated: the local tier keeps keep_local
            local_retention = policies_from_config(local_config, ranking=self.ranking)[1]
            local_record = _ranking_record(
                self.ranking, local_retention, local_config, False, tier=True
            )
        # Read-only managers and the ranks other than a distributed job's coordinator
        # never change the directory: they re-list it for every query.
        self._dir = Directory(
            storage,
            location,
            commit.choose(self.config.commit_protocol, storage.capabilities),
            # Each manager honours its own `fsync`, even when it shares a directory's state.
            durable=self.config.fsync,
            retention=RetentionApplier(local_retention, self.ranking),
            ranking_record=local_record,
            reader=self.read_only or not coordinator.coordinator,
            grace=self.config.attempt_grace_seconds,
        )
        name = self.checkpoint_dir.name
        self._saver = Saver(self._dir, coordinator, name, self.config.max_pending_saves)
        key = self._dir.key

        def open_directory(messages: list[Any]) -> dict[str, Any]:
            for src, message in enumerate(messages):
                if message["dir"] != key:
                    rank, me = coordinator.rank_of(src), coordinator.me
                    raise CheckpointError(
                        f"rank {rank} opened {message['dir']} and rank {me} {key}: every "
                        f"rank of a job must open the same directory"
                    )
            self._dir.open_writer(given)
            return {}

        coordinator.round("CheckpointManager()", {"dir": key}, None, open_directory)
        self._tiers: OneTier | TwoTiers = OneTier(self._dir, hold=replicate is None)
        if replicate is not None:
            try:
                self._tiers = TwoTiers(
                    self._dir,
                    replicate,
                    RetentionApplier(self.retention, self.ranking),
                    ranking_record,
                    durable=self.config.fsync,
                    lease_seconds=self.config.lease_seconds,
                    grace=self.config.attempt_grace_seconds,
                    name=name,
                )
            except BaseException:
                self._dir.release()
                raise
        self._preemption = (
            Preemption(signals, self.config.preemption_grace_s, self._emergency, name)
            if signals
            else None
        )

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
        return self._dir.shared.recovery

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
                self._saver.close()
            finally:
                self._tiers.close()  # after the saves: their commits are queued for upload
        finally:
            self._closed = True
            if self._preemption is not None:
                self._preemption.close()
            self._dir.release()

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
        self._writable()
        tmp, step = self._dir.parse(checkpoint_path)
        self._saver.begin_finalization(tmp, step, wait_fn)
        self._after_save(step)

    def finalize_pending(self) -> None:
        """Block until the finalization in flight is committed (not until it is pruned).

        A no-op when nothing is pending; calling it twice is harmless.

        Raises:
            FinalizationError: The background finalization failed (a `RuntimeError`
                chained to the cause); raised once.
        """
        self._saver.finalize_pending()

    def shutdown(self) -> None:
        """Block until the finalization in flight is committed and its pruning is done.

        Call it when training ends; the manager stays usable, and calling it twice is
        harmless. `close` (and leaving a ``with`` block) does it too.

        Raises:
            FinalizationError: The background finalization failed; raised once.
        """
        self._saver.shutdown()

    @property
    def has_pending_finalization(self) -> bool:
        """Whether a `begin_finalization` is still waiting or committing."""
        return self._saver.finalizing

    def _usable(self) -> Directory:
        if self._closed:
            raise CheckpointError(f"this manager of {self.checkpoint_dir} is closed")
        return self._dir

    def _writable(self) -> Directory:
        self._usable()
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
        self._writable()
        step = _check_step(step)
        if isinstance(writers, str):
            raise TypeError(f"`writers` must be a collection of names, got the string {writers!r}")
        names = tuple(sorted({check_writer_id(w) for w in writers or ()}))
        return self._path(self._saver.start(step, prepare(training_info, run_config), names))

    def _path(self, location: str) -> CheckpointPath:
        storage = self._dir.storage
        return user_path(storage, location_of(storage, location))

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
        tmp, step = self._dir.parse(checkpoint_path)
        self._saver.end(tmp, step, commit=True)
        self._after_save(step)

    def abort_checkpoint(self, checkpoint_path: PathInput) -> None:
        """Throw away a temporary checkpoint; a path already gone is fine.

        Raises:
            InvalidCheckpointPathError: If the path is not a temporary checkpoint of this
                manager.
            ReadOnlyError: If the manager is read-only or checkpointing is disabled.
        """
        self._writable()
        tmp, step = self._dir.parse(checkpoint_path)
        self._saver.end(tmp, step, commit=False)

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
        handler: StateHandler | None = None,
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
            handler: How the state is checked and written (a `ckpt.handler.StateHandler`);
                default ``ckpt.torch.TorchHandler``, ckpt's own format (DCP's for
                DTensors). Read it back with the same handler's ``load``.

        In a distributed job it is collective: every rank passes its own state and
        writes its own part (a state file per rank; DCP's files for state holding
        DTensors), rank 0 checks every part, commits and prunes, and every rank gets
        the same path, or the same `CollectiveError`.

        Returns:
            The path of the committed checkpoint, ``checkpoint_dir/step_N`` (under the
            manifest protocol, its attempt ``step_N.<token>``).

        Raises:
            ImportError: If torch is not installed and no ``handler`` is given.
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
        handler = handler if handler is not None else default_handler()
        self.wait_until_finished()
        prepared = prepare(training_info, run_config, state, handler)
        path = self._path(self._saver.save(self._coord, step, prepared, state, handler))
        self._after_save(step)
        return path

    def save_async(
        self,
        step: int,
        training_info: Mapping[str, Any],
        state: Any,
        *,
        run_config: Mapping[str, Any] | BaseModel | None = None,
        handler: StateHandler | None = None,
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
            handler: As for `save`; its ``snapshot`` makes the host copy.

        Raises:
            ImportError: If torch is not installed and no ``handler`` is given.
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
        self._writable()
        step = _check_step(step)
        handler = handler if handler is not None else default_handler()
        prepared = prepare(training_info, run_config, state, handler)
        self._saver.save_async(step, prepared, state, handler)
        self._after_save(step)

    def wait_until_finished(self) -> None:
        """Block until every `save_async` of this manager is committed (or failed).

        The files of the checkpoints retention deleted meanwhile are removed too (a
        delete removes them in the background, off the save's path).

        Raises:
            Exception: The first error of a background save not raised yet.
        """
        try:
            self._saver.wait()
        finally:
            self._dir.flush_deletes()

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
        directory = self._writable()
        call = f"remove_old_checkpoints({exclude_latest})"
        self._coord.change(call, lambda: directory.prune(exclude_latest, on_delete))

    def plan_retention(self, exclude_latest: bool | None = None) -> list[Decision]:
        """Say, for every checkpoint, whether retention keeps it and why; change nothing.

        Args:
            exclude_latest: ``None`` (the default) plans what the next
                `finalize_checkpoint` applies; ``True`` or ``False`` plans what
                `remove_old_checkpoints` with that argument would do now.

        Returns:
            One `policies.Decision` per checkpoint (pins included), sorted by step.
        """
        return self._usable().plan(exclude_latest)

    def overview(self) -> Overview:
        """Every checkpoint, what retention decides for each, the best and the latest.

        It is what `list_checkpoints`, `plan_retention`, `get_best_checkpoint_path` and
        `get_latest_checkpoint_path` answer, taken from one look at the directory, so
        the answers agree even while a live run changes it (``ckpt ls`` shows this).
        It warns of missing metrics as `get_best_checkpoint_path` does.
        """
        overview, missing = self._usable().overview()
        if overview.best is not None:
            for text in self._missing_warnings(missing, len(overview.records)):
                warnings.warn(text, MissingMetricWarning, stacklevel=2)
        return overview

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
        return self._usable().record()

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
        directory = self._writable()
        step = _check_step(step)
        call = f"{'pin' if pinned else 'unpin'}({step})"
        self._coord.change(call, lambda: directory.pin(step, pinned))

    # --- queries ------------------------------------------------------------------

    def list_checkpoints(self) -> list[CheckpointRecord]:
        """Return every finalized checkpoint, sorted by step."""
        return self._usable().records()

    def get_latest_checkpoint_path(self) -> PathStr | None:
        """Return the path of the checkpoint with the highest step, or ``None``.

        A checkpoint a deep check found damaged (``ckpt check --deep``) is skipped: the
        highest step not found damaged is returned.

        It is a `ckpt.storage.PathStr`: the ``str`` NeMo RL's manager returns, which
        also joins with ``/`` into the type `init_tmp_checkpoint` returns (a
        `pathlib.Path` on local disk, a ``UPath`` on a store), so
        ``latest / "model.pt"`` works on both; ``latest.path`` is that path itself.

        In a distributed job every rank calls it, and every rank gets the answer of the
        coordinator, so that no two ranks resume from different steps.
        """
        self._usable()
        answer = self._coord.agree("get_latest_checkpoint_path()", self._tiers.latest)
        if answer.get("path") is not None:
            return PathStr(answer["path"])  # a reader's answer: in the replica alone
        return self._named(answer["name"])

    def _named(self, name: str | None) -> PathStr | None:
        """The path of the checkpoint ``name`` (the coordinator's answer) in this directory."""
        if name is None:
            return None
        # A loop asks for the same latest or best on every step: joining a path costs
        # more than the whole indexed lookup, so the last answer's path is reused.
        last = self._last_named
        if last is None or last.path.name != name:
            last = self._last_named = PathStr(self.checkpoint_dir / name)
        return last

    def get_best_checkpoint_path(self) -> PathStr | None:
        """Return the path of the best checkpoint by the ranking, or ``None``.

        It is the checkpoint top-k retention protects first; the path is of the type
        `get_latest_checkpoint_path` returns; a checkpoint a deep check found damaged is
        skipped, as there. With a metric ranking,
        checkpoints whose metric is missing, NaN or not a number rank last, and ties go
        to the higher step; if none has the metric, that is the latest checkpoint.

        Warns (as NeMo RL's manager does) with a `MissingMetricWarning`, a
        `UserWarning`, naming how many checkpoints and which steps lack the metric, and
        again when none has it and the latest is returned.

        With ``replicate:``, both tiers are considered with the one ranking: a best
        checkpoint only the replica holds (its retention keeps the top k while the local
        tier keeps its newest) is fetched back, verified, as `get_latest_checkpoint_path`
        does; a read-only manager returns its path in the replica.

        In a distributed job every rank calls it, and every rank gets the answer (and
        the warnings) of the coordinator.
        """
        self._usable()
        answer = self._coord.agree("get_best_checkpoint_path()", self._tiers.best)
        for text in self._missing_warnings(set(answer["missing"]), answer["of"]):
            warnings.warn(text, MissingMetricWarning, stacklevel=2)
        if answer.get("path") is not None:
            return PathStr(answer["path"])  # a reader's answer: in the replica alone
        return self._named(answer["name"])

    def _missing_warnings(self, missing: set[int], of: int) -> list[str]:
        """The warnings for ``missing`` steps lacking the metric, out of ``of`` checkpoints."""
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
        if len(missing) == of:
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
        if self._preemption_boundary(step):
            return True
        periods = [p for p in (config.save_period, config.ft_save_period) if p is not None]
        return last or not periods or any(step % period == 0 for period in periods)

    def refresh(self) -> None:
        """Re-read the directory (read-only managers do this before every query)."""
        self._usable().refresh()

    # --- replication ----------------------------------------------------------------

    def wait_for_replication(self, timeout: float | None = None) -> bool:
        """Block until every committed checkpoint has its replica committed (``replicate:``).

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as uploads go on.

        Returns:
            Whether every checkpoint was replicated (``False``: ``timeout`` passed
            first). ``True`` at once without ``replicate`` in the config.

        Raises:
            ReplicationError: If a checkpoint's upload failed every time it was tried
                (it stays local, held from retention, and is tried again later).
        """
        self._usable()
        return self._tiers.wait(timeout)

    def recorded_replica(self) -> str | None:
        """Where this directory's records say its replica is; ``None`` if it has none.

        With ``replicate:`` the config's replica; without it, the replica a replicated
        run recorded in its local tier, which this manager never contacts (see
        `replication_status`).
        """
        self._usable()
        return self._tiers.replica_shown

    def replication_status(self) -> dict[int, Status]:
        """Where each step's checkpoint is, in which tier, and whether it is uploaded.

        ``"local"``: committed in ``checkpoint_dir``, its replica not yet; ``"uploading"``:
        being copied now; ``"replicated"``: committed in ``replicate.to`` as it is
        configured now (and perhaps still local too); ``"pruned"``: replicated, then
        deleted by the replica's own retention. A step the replica lost some other way
        (the bucket emptied, ``replicate.to`` changed) is ``"local"`` again and is
        uploaded again. Steps of both tiers are listed. Without ``replicate``, a
        directory that was a replicated run's local tier answers from its own record
        (its steps, ``"local"`` or ``"replicated"``; the replica is not asked, and a
        writer keeps the ``"local"`` ones from retention); any other directory ``{}``.
        """
        self._usable()
        return self._tiers.status()

    # --- preemption ---------------------------------------------------------------

    @property
    def preempted(self) -> bool:
        """Whether a preemption signal was seen at a step boundary: time to save and stop.

        It turns true in the `should_save` call that follows one of the config's
        ``preemption_signals`` (that call returns true), on every rank of a job at the
        same step, and stays true. A loop saves there as it always does, then leaves::

            if manager.should_save(step):
                manager.save_async(step, info, state)
            if manager.preempted:
                break

        The save made there commits before it returns (within ``preemption_grace_s``).
        Always false when ``preemption_signals`` is empty.
        """
        return self._preemption is not None and self._preemption.observed

    def last_preemption(self) -> PreemptionRecord | None:
        """The run's last preemption and what was committed for it, or ``None``.

        It is read from ``.ckpt/preemption.json``, which the writer replaces once the
        save made for a preemption signal is committed (or once the emergency save is).
        """
        directory = self._usable()
        return read_preemption(directory.storage, directory.location)

    def _preemption_boundary(self, step: int) -> bool:
        """Whether ``should_save(step)`` must say yes for a preemption (and see one first)."""
        watch = self._preemption
        if watch is None:
            return False
        if not watch.observed:
            notice = watch.notice
            local = {} if notice is None else {"signal": notice.signal, "at": notice.received_at}

            def first(messages: list[Any]) -> dict[str, Any]:
                seen = [(float(m["at"]), str(m["signal"])) for m in messages if m.get("signal")]
                return {"at": min(seen)[0], "signal": min(seen)[1]} if seen else {}

            # Every rank must see the signal at the same boundary, or they would save and
            # stop at different steps: the ranks agree, in one round, whether any got it.
            agreed = self._coord.round(f"should_save(step={step})", local, None, first)
            if not agreed:
                return False
            watch.observe(str(agreed["signal"]), float(agreed["at"]))
            logger.warning(
                "%s received: saving at step %d, then the loop should stop (%.1f s of "
                "preemption_grace_s left)",
                agreed["signal"],
                step,
                watch.left(),
            )
        return not watch.saving

    def _after_save(self, step: int) -> None:
        """After a save the loop made: if it is the preemption's, see it committed in time."""
        watch = self._preemption
        if watch is None or not watch.observed or watch.saving:
            return
        watch.start_saving()
        notice = watch.notice
        assert notice is not None  # observed
        if self._saver.flush(notice.left()):
            self._record_preemption(notice, step, emergency=False)
            return
        grace = self.config.preemption_grace_s
        logger.error(
            "preemption_grace_s (%g s) ran out before the save of step %d was committed: "
            "it goes on until the process is killed",
            grace,
            step,
        )
        # If the scheduler is late too, the save commits late: record it as what it was.
        if self._saver.flush(_LATE_SAVE_WAIT_GRACES * grace):
            self._record_preemption(notice, step, emergency=False)

    def _emergency(self, notice: Notice) -> None:
        """No save started by the middle of the grace: commit the newest snapshot now."""
        saver = self._saver
        newest = saver.newest_async
        skipped = saver.keep_newest()
        if newest is None and self._dir.shared.save_lock.locked():
            # The loop's own save is under way (a save() begun before the signal): it is
            # the preemption's, and `_after_save` records it when it commits.
            logger.warning("%s: a save is under way; no emergency save is needed", notice.signal)
            return
        if newest is None:
            logger.error(
                "%s: no save was started within half of preemption_grace_s and no "
                "save_async snapshot is waiting; the newest checkpoint is the one before",
                notice.signal,
            )
            self._record_preemption(notice, None, emergency=True)
            return
        logger.warning(
            "%s: no save was started within half of preemption_grace_s; committing the "
            "newest save_async snapshot, step %d, now%s",
            notice.signal,
            newest,
            f" (dropping the older queued step(s) {list(skipped)})" if skipped else "",
        )
        done = saver.flush(notice.left(), raise_errors=False)
        committed = newest if done and saver.committed_async == newest else None
        self._record_preemption(notice, committed, emergency=True, skipped=skipped)

    def _record_preemption(
        self,
        notice: Notice,
        step: int | None,
        *,
        emergency: bool,
        skipped: tuple[int, ...] = (),
    ) -> None:
        if not self._coord.coordinator:
            return  # the writer records, for the job
        record = PreemptionRecord(
            notice.signal,
            notice.received_at,
            self.config.preemption_grace_s,
            step,
            emergency,
            skipped,
            None if step is None else round(time.time() - notice.received_at, 3),
        )
        try:
            write_preemption(self._dir.storage, self._dir.location, record)
        except Exception as exc:  # a report: losing it loses no checkpoint
            logger.warning("could not record the preemption in %s: %s", self.checkpoint_dir, exc)
        logger.warning("%s", record.describe())
