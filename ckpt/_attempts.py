"""Saves in progress: starting an attempt, recognizing one, committing or abandoning it.

An attempt is where one save's files go (``tmp_step_N`` under the rename protocol,
``step_N.<token>`` under the manifest protocol) until it is committed. The writer
registry (`Shared.live`) remembers which thread of this process holds each; these
functions keep that record and the index in step with what the protocol does.
"""

from __future__ import annotations

import logging
import threading
from types import MappingProxyType

from ckpt import _layout
from ckpt._errors import (
    CheckpointError,
    InvalidCheckpointPathError,
    RecoveryWarning,
    SaveInProgressError,
    warn,
)
from ckpt._marks import check_reports
from ckpt._records import CheckpointRecord
from ckpt._serialize import decode_training_info
from ckpt._writers import Attempt, Shared
from ckpt.commit import directory as commits
from ckpt.commit.base import CommitProtocol
from ckpt.storage import (
    CheckpointPath,
    PathInput,
    describe_kind,
    join,
    location_of,
    name_of,
    parent_of,
    user_path,
)

logger = logging.getLogger("ckpt")


def _thread_alive(ident: int) -> bool:
    return any(thread.ident == ident for thread in threading.enumerate())


def start(
    state: Shared,
    protocol: CommitProtocol,
    step: int,
    info_bytes: bytes,
    config_bytes: bytes | None,
    *,
    durable: bool,
    writers: tuple[str, ...] = (),
) -> str:
    """Make a fresh attempt for ``step`` holding the training info (and run config).

    ``writers`` must each report their files (`ckpt.mark_written`) before it commits.

    An earlier attempt of the step that no live thread holds is replaced.

    Raises:
        SaveInProgressError: If another live thread of this process holds one.
        CheckpointError: If ``tmp_step_N`` exists and is not a directory, or holds
            files ckpt did not write (no ``training_info.json``).
    """
    storage = state.storage
    me = threading.get_ident()
    with state.mutex:
        live = state.live.get(step)
        if live is not None and live.thread != me and _thread_alive(live.thread):
            raise SaveInProgressError(
                f"step {step} is being saved by another thread of this process (into "
                f"{live.path}); save() and save_async() wait for each other, but "
                f"init_tmp_checkpoint does not: finalize or abort that save first"
            )
        leftovers = [live.path] if live is not None else []
        if protocol.name == "rename":
            tmp = join(state.location, _layout.tmp_name(step))
            found = storage.entry(tmp)
            if found is not None and found.kind != "dir":
                raise CheckpointError(
                    f"cannot save step {step}: {name_of(tmp)} exists and is a "
                    f"{describe_kind(found.kind)}, not a directory ckpt made; move it away"
                )
            leftovers = [tmp] if found is not None else []
        for leftover in leftovers:
            if storage.entry(leftover) is not None and not _committed(state, leftover, step):
                if not commits.made_by_ckpt(storage, leftover):
                    raise CheckpointError(
                        f"cannot save step {step}: {name_of(leftover)} {commits.NOT_OURS}"
                    )
                warn(
                    RecoveryWarning,
                    f"replacing {user_path(storage, leftover)} left by an earlier attempt "
                    f"at step {step}",
                )
                commits.abandon(storage, state.location, leftover, durable=durable)
        state.live.pop(step, None)
        attempt = protocol.prepare(storage, state.location, step)
        try:
            storage.write_bytes(join(attempt, _layout.INFO_FILE), info_bytes)
            if config_bytes is not None:
                storage.write_bytes(join(attempt, _layout.CONFIG_FILE), config_bytes)
        except BaseException:
            storage.remove_tree(attempt)
            raise
        state.live[step] = Attempt(me, attempt, writers)
    return attempt


def parse(
    state: Shared,
    protocol: CommitProtocol,
    checkpoint_path: PathInput,
    shown: CheckpointPath,
) -> tuple[str, int]:
    """The attempt path and step of what a user handed back to finalize or abort.

    Raises:
        InvalidCheckpointPathError: If it is not named as ``protocol`` names attempts, or
            not in the manager's directory (``shown``, for the message).
    """
    storage = state.storage
    path = location_of(storage, checkpoint_path)
    step = protocol.attempt_step(name_of(path))
    if step is None or storage.canonical(parent_of(path)) != storage.canonical(state.location):
        expected = "tmp_step_<N>" if protocol.name == "rename" else "step_<N>.<token>"
        raise InvalidCheckpointPathError(
            f"{checkpoint_path} is not a temporary checkpoint of this manager; expected "
            f"{shown}/{expected} as returned by init_tmp_checkpoint"
        )
    return path, step


def _committed(state: Shared, attempt: str, step: int) -> bool:
    """Whether ``attempt`` is the committed checkpoint of ``step`` (manifest attempts are)."""
    committed = state.index.committed.get(step)
    return committed is not None and committed.path == attempt


def commit(
    state: Shared,
    protocol: CommitProtocol,
    tmp: str,
    step: int,
    ranking_record: bytes,
    *,
    durable: bool,
) -> tuple[bool, int]:
    """Commit the attempt ``tmp`` as ``step`` and index it (the caller holds the mutex).

    Returns whether the step is new (not an overwrite) and the index's version before.

    Raises:
        InvalidCheckpointPathError: If the attempt is gone, committed already, or lost
            its training info.
        CheckpointError: If an entry that is not a checkpoint holds ``step_N``.
    """
    storage, index = state.storage, state.index
    state.check_writer()  # a writer whose lease lapsed must not commit over its successor
    # On an object store a prefix is no entry of its own (asking costs a listing): the
    # attempt is there if its training info is, which is read next anyway.
    directories = storage.capabilities.directories
    found = storage.entry(tmp) if directories else None
    gone = directories and (found is None or found.kind != "dir")
    if gone or _committed(state, tmp, step):
        raise InvalidCheckpointPathError(
            f"{tmp} does not exist (was it finalized or aborted already?)"
        )
    try:
        info_bytes = storage.read_bytes(join(tmp, _layout.INFO_FILE))
        info = decode_training_info(info_bytes)
    except (OSError, ValueError) as exc:
        if not directories and isinstance(exc, FileNotFoundError):
            raise InvalidCheckpointPathError(
                f"{tmp} does not exist (was it finalized or aborted already?)"
            ) from exc
        raise InvalidCheckpointPathError(
            f"{tmp} has no readable {_layout.INFO_FILE} ({exc}); it was not made by "
            f"init_tmp_checkpoint, or its file was removed"
        ) from exc
    final_name = _layout.step_name(step)
    # A step_N in the way matters to a rename; where there are none, nothing is in the way.
    final_entry = storage.entry(join(state.location, final_name)) if directories else None
    existing = index.committed.get(step)
    if final_entry is not None and final_entry.kind != "dir":
        raise CheckpointError(
            f"cannot publish step {step}: {final_name} exists and is a "
            f"{final_entry.kind}, not a checkpoint; move it away and finalize again"
        )
    if final_entry is not None and (existing is None or existing.kind != "rename"):
        # Not ours to replace: a directory without a readable training_info.json
        # may hold someone's files (NeMo RL's manager's, a crash's, a user's).
        raise CheckpointError(
            f"cannot publish step {step}: {final_name} exists but is not a "
            f"checkpoint (no readable {_layout.INFO_FILE}); move it away and "
            f"finalize again"
        )
    live = state.live.get(step)
    if live is not None and live.path == tmp:
        check_reports(storage, tmp, live.writers)
    index.record_ranking(ranking_record, durable=durable)
    done = commits.commit(
        protocol,
        storage,
        state.location,
        tmp,
        step,
        existing=existing,
        durable=durable,
        training_info=info_bytes,  # the manifest carries it: not read a second time
    )
    state.live.pop(step, None)
    version_before = index.version
    path = user_path(storage, done.path)
    str(path)  # format it now: the query that follows a save returns it as a string
    index.add(
        CheckpointRecord(
            step=step,
            path=path,
            info=MappingProxyType(info),
            # A rename keeps a directory's mtime: this is what a rescan will read.
            committed_at=found.mtime if found is not None and done.kind == "rename" else done.mtime,
            pinned=step in index.pins,
        ),
        done,
    )
    logger.info("committed %s", done.path)
    return existing is None, version_before


def abort(state: Shared, tmp: str, step: int, *, durable: bool) -> None:
    """Throw the attempt away; one already gone, or committed since, is left as it is."""
    with state.mutex:
        state.live.pop(step, None)
        if _committed(state, tmp, step):
            return  # finalized already: no longer a temporary (manifest attempts stay put)
        if state.storage.entry(tmp) is not None:
            commits.abandon(state.storage, state.location, tmp, durable=durable)
            logger.info("aborted %s", tmp)
