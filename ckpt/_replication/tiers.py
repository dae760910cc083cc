"""The tiers a manager's checkpoints live in: its directory alone, or it and a replica.

The manager asks its tiers for the latest checkpoint, for the state of replication, to
wait for it and to close; `OneTier` (no ``replicate:`` in the config) answers from the
directory alone, `TwoTiers` from both.
"""

from __future__ import annotations

import logging
from typing import Any

from ckpt import _layout, commit
from ckpt._config.schema import ReplicateSpec
from ckpt._directory import meta
from ckpt._directory.directory import Directory
from ckpt._directory.retention import RetentionApplier
from ckpt._errors import StoreUnavailableError
from ckpt._replication.replicator import Replicator, Status
from ckpt.storage import join, open_storage, redact_url, user_path

logger = logging.getLogger("ckpt")
# How long opening a replicated run waits for its replica before going on without it.
_OPEN_WAIT_S = 10.0


def _step(name: str | None) -> int | None:
    """The step of a checkpoint's entry name (``step_N`` or ``step_N.<token>``)."""
    if name is None:
        return None
    return _layout.parse(_layout.STEP, name.split(".", 1)[0])


_UNREPLICATED = "it was never uploaded to the replica this directory records"


def recorded_replica(directory: Directory) -> str | None:
    """Where the directory's own records say its replica is; ``None``: not a local tier.

    ``.ckpt/replication.json`` names it once an upload was recorded; before that, the
    ranking record of a replicated run's local tier does. Information only: nothing is
    ever read from, written to or deleted at a place a record names.
    """
    to = meta.read_replication(directory.storage, directory.location).to
    if to is not None:
        return to
    try:
        # Straight from the file: `Directory.record` re-lists a reader's whole directory.
        record = meta.read_ranking(directory.storage, directory.location)
    except (OSError, ValueError):
        return None
    retention = (record or {}).get("retention") or {}
    replicate = retention.get("config", {}).get("replicate") if "config" in retention else None
    found = replicate.get("to") if isinstance(replicate, dict) else None
    return found if isinstance(found, str) else None


class OneTier:
    """A manager's directory alone: every question is the directory's.

    A directory that was a replicated run's local tier, opened without ``replicate:``
    (``ckpt prune`` without ``--config``, a script), keeps the checkpoints it never
    uploaded: they exist nowhere else, so a writer holds them from retention (``hold``),
    and `status` tells, from the directory's own record, which were replicated.

    Args:
        directory: The manager's directory.
        hold: Whether to hold a local tier's unreplicated checkpoints (a manager
            without ``replicate:``); a writer only.
    """

    def __init__(self, directory: Directory, *, hold: bool = False) -> None:
        self.directory = directory
        self.recorded = recorded_replica(directory)
        self.replica_shown = None if self.recorded is None else redact_url(self.recorded)
        if hold and self.recorded is not None and not directory.reader:
            replicated = meta.read_replication(directory.storage, directory.location).replicated
            shared = directory.shared
            with shared.mutex:
                for step, committed in shared.index.committed.items():
                    if replicated.get(step) != committed.version:
                        shared.held.setdefault(step, _UNREPLICATED)

    def latest(self) -> dict[str, Any]:
        """``{"name": ...}`` of the latest checkpoint (`Directory.latest`)."""
        return self.directory.latest()

    def best(self) -> dict[str, Any]:
        """``{"name", "missing", "of"}`` of the best checkpoint (`Directory.best`)."""
        return self.directory.best()

    def wait(self, timeout: float | None) -> bool:
        """Nothing is replicated: nothing to wait for."""
        return True

    def status(self) -> dict[int, Status]:
        """A local tier's steps as its record has them (the replica is not asked); else ``{}``."""
        if self.recorded is None:
            return {}
        recorded = meta.read_replication(self.directory.storage, self.directory.location)
        replicated = recorded.replicated
        return {
            r.step: "replicated" if r.step in replicated else "local"
            for r in self.directory.records()
        }

    def close(self) -> None:
        """Nothing of its own to close."""


class TwoTiers:
    """A local directory and its replica, with the replicator between them (on the writer).

    Args:
        local: The manager's directory.
        spec: The config's ``replicate:`` block.
        retention: The retention applier the config describes: it governs the replica.
        ranking_record: What the replica's ``.ckpt/ranking.json`` says.
        durable: The config's ``fsync``.
        lease_seconds: The config's ``lease_seconds``, for a replica on a store.
        grace: The config's ``attempt_grace_seconds``.
        name: For the replicator thread's name.

    Raises:
        CheckpointDirLockedError: If another process writes the replica.
        OSError: If the replica cannot be opened.
    """

    def __init__(
        self,
        local: Directory,
        spec: ReplicateSpec,
        retention: RetentionApplier,
        ranking_record: bytes,
        *,
        durable: bool,
        lease_seconds: float,
        grace: float,
        name: str,
    ) -> None:
        self.local = local
        storage, location = open_storage(spec.to, spec.storage_options, lease_seconds=lease_seconds)
        self.shown = self.replica_shown = redact_url(str(user_path(storage, location)))
        here, there = local.key.rstrip("/"), storage.canonical(location).rstrip("/")
        if here == there or here.startswith(there + "/") or there.startswith(here + "/"):
            # The config's check compares spellings; a link made since, or two store
            # names for one bucket, show only here, as the storages resolve them.
            raise ValueError(
                f"`replicate.to` ({self.shown}) resolves to {there}, which is "
                f"`checkpoint_dir` ({here}) or one inside the other: a replica must be a "
                f"place apart"
            )
        self.replica = Directory(
            storage,
            location,
            commit.choose("auto", storage.capabilities),
            durable=durable,
            retention=retention,
            ranking_record=ranking_record,
            reader=local.reader,
            grace=grace,
        )
        self.replicator: Replicator | None = None
        if local.reader:
            return  # a reader only looks at both
        replicator = Replicator(local, self.replica, self.shown, name)
        # A replica that answers opens here (a crashed writer's lease taken over first);
        # one that does not answer holds up the run only as long as the store's retries.
        replicator.wait_open(2 * lease_seconds + _OPEN_WAIT_S)
        if replicator.open_error is not None:
            replicator.close()
            raise replicator.open_error
        self.replicator = replicator

    def latest(self) -> dict[str, Any]:
        """The newest checkpoint of either tier, fetched back if only the replica has it.

        ``{"name": step_N}`` in the local tier; for a reader, whose tiers are never
        changed, ``{"name": None, "path": ...}`` where the replica alone has it.
        """
        local = self.local.latest()
        replicator = self.replicator
        if replicator is not None and not replicator.opened:
            if local["name"] is None:
                raise StoreUnavailableError(
                    f"the replica {self.shown} has not answered yet, and {self.local.shown} "
                    f"holds no checkpoint: whether a checkpoint to resume from exists is "
                    f"unknown, so none is returned (starting afresh could overwrite the "
                    f"replica's newest); try again once the store is reachable",
                    url=self.shown,
                )
            logger.warning(
                "the replica %s has not answered yet: the latest checkpoint is the local "
                "tier's, and the replica may hold a newer one",
                self.shown,
            )
            return local
        replica = self.replica.latest()
        here, there = _step(local["name"]), _step(replica["name"])
        if there is None or (here is not None and here >= there):
            return local
        if self.replicator is None:
            path = user_path(self.replica.storage, join(self.replica.location, replica["name"]))
            return {"name": None, "path": str(path)}
        logger.warning(
            "step %d is in the replica %s and not in %s: fetching it back",
            there,
            self.shown,
            self.local.shown,
        )
        where = self.replicator.fetch(there)
        return {"name": where.rstrip("/").rsplit("/", 1)[-1]}

    def best(self) -> dict[str, Any]:
        """The best checkpoint of either tier, by the one ranking; fetched back if need be.

        The replica keeps by the config's own retention (top-k, say) while the local tier
        keeps only its newest: the best is often in the replica alone. Ties go to the
        local tier (no copy). ``missing`` and ``of`` are the local tier's.
        """
        local = self.local.best()
        replicator = self.replicator
        if replicator is not None and not replicator.opened:
            return local  # the replica has not answered: the local tier's, as latest does
        there = self.replica.best()
        if there["name"] is None:
            return local
        step = _step(there["name"])
        here = {r.step: r for r in self.local.records()}
        theirs = {r.step: r for r in self.replica.records()}
        mine = _step(local["name"])
        if step is None or step not in theirs:
            return local
        if step in here:  # the local tier holds it too: no copy
            return {**local, "name": str(here[step].path).rstrip("/").rsplit("/", 1)[-1]}
        if mine in here and self.local.retention.first([here[mine], theirs[step]]) is here[mine]:
            return local
        if replicator is None:  # a reader: read it where it is
            path = user_path(self.replica.storage, join(self.replica.location, there["name"]))
            return {**local, "name": None, "path": str(path)}
        logger.warning(
            "the best checkpoint, step %d, is in the replica %s and not in %s: fetching it back",
            step,
            self.shown,
            self.local.shown,
        )
        where = replicator.fetch(step, keep=True)
        return {**local, "name": where.rstrip("/").rsplit("/", 1)[-1]}

    def wait(self, timeout: float | None) -> bool:
        """`Replicator.wait` (a reader has nothing to wait for)."""
        return True if self.replicator is None else self.replicator.wait(timeout)

    def status(self) -> dict[int, Status]:
        """`Replicator.status`; for a reader, what the local tier's record says."""
        if self.replicator is not None:
            return self.replicator.status()
        return _recorded_status(self.local, self.replica)

    def close(self) -> None:
        """Finish the queued uploads, then release the replica."""
        try:
            if self.replicator is not None:
                self.replicator.close()
        finally:
            if self.replicator is None or self.replicator.opened:
                self.replica.release()


def _recorded_status(local: Directory, replica: Directory) -> dict[int, Status]:
    replicated = meta.read_replication(local.storage, local.location).replicated
    here = {r.step: r for r in local.records()}
    there = {r.step for r in replica.records()}
    out: dict[int, Status] = {}
    for step in sorted(here.keys() | there):
        out[step] = "replicated" if step in there or step in replicated else "local"
    return out
