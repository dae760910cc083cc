"""A state machine comparing a replicated manager with a plain model, on every pair of tiers.

The local tier is `ckpt.storage.MemoryStorage` or a temporary directory; the replica is
``memory://`` (fsspec's, through `ckpt.storage.FsspecStorage`: the manifest protocol) or
another temporary directory (the rename protocol). Every run checks the same model on
its pair, so the four pairs agree with the model and with each other.

The model is every version each step was saved with, in order. Retention is
``latest_n: 3`` for the replica and ``keep_local: 1`` for the local tier, decided here
by sorting steps. Rules save (a new step, or a step again), wait for the replica, close
and reopen the manager (the queue must resume from the disk alone), and lose the local
tier entirely (a new node: the newest must come back from the replica). The tiers are
read back through their own storages, never through the manager.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import ckpt
from ckpt.storage import LocalStorage, MemoryStorage, Storage, join, location_of, open_storage

KEEP_REPLICA = 3
KEEP_LOCAL = 1
_runs = itertools.count()


class ReplicationMachine(RuleBasedStateMachine):
    """A manager with ``replicate:`` against a dict of every version of every step."""

    @initialize(
        local_kind=st.sampled_from(["memory", "disk"]),
        replica_kind=st.sampled_from(["memory", "disk"]),
    )
    def open(self, local_kind: str, replica_kind: str) -> None:
        run = next(_runs)
        self.scratch = Path(tempfile.mkdtemp(prefix="ckpt-replication-machine-"))
        if local_kind == "memory":
            self.local_storage: Storage = MemoryStorage()
            self.local = "/run"
        else:
            self.local_storage = LocalStorage()
            self.local = str(self.scratch / "local")
        self.to = (
            f"memory://replica-{run}/run"
            if replica_kind == "memory"
            else str(self.scratch / "replica")
        )
        self.replica_storage, self.replica_location = open_storage(self.to)
        self.versions: dict[int, list[bytes]] = {}
        self.counter = 0
        self.manager: ckpt.CheckpointManager | None = None
        self._reopen()

    def _config(self) -> dict[str, Any]:
        return {
            "checkpoint_dir": self.local,
            "fsync": False,
            "retention": {"kind": "latest_n", "n": KEEP_REPLICA},
            "replicate": {"to": self.to, "keep_local": KEEP_LOCAL},
        }

    def _reopen(self) -> None:
        memory = isinstance(self.local_storage, MemoryStorage)
        self.manager = ckpt.CheckpointManager(
            self._config(), storage=self.local_storage if memory else None
        )

    def teardown(self) -> None:
        if self.manager is not None:
            self.manager.close()
        if self.to.startswith("memory://"):
            fsspec.filesystem("memory").rm(self.to.split("://", 1)[1].split("/")[0], recursive=True)
        shutil.rmtree(self.scratch, ignore_errors=True)

    # --- reading a tier back --------------------------------------------------------------

    def _read(self, storage: Storage, location: str) -> dict[int, bytes]:
        """Step -> payload of each committed checkpoint of a tier, through its storage."""
        memory = isinstance(storage, MemoryStorage)
        config = {"checkpoint_dir": location, "fsync": False}
        found: dict[int, bytes] = {}
        with ckpt.CheckpointManager(
            config, read_only=True, storage=storage if memory else None
        ) as reader:
            for record in reader.list_checkpoints():
                try:
                    path = join(location_of(storage, record.path), "payload.bin")
                    found[record.step] = storage.read_bytes(path)
                except FileNotFoundError:
                    # Pruned (or replaced) by the replicator's thread since the listing.
                    continue
        return found

    def local_tier(self) -> dict[int, bytes]:
        return self._read(self.local_storage, self.local)

    def replica_tier(self) -> dict[int, bytes]:
        return self._read(self.replica_storage, self.to)

    def _current(self) -> dict[int, bytes]:
        return {step: versions[-1] for step, versions in self.versions.items()}

    def _kept(self) -> set[int]:
        return set(sorted(self.versions)[-KEEP_REPLICA:])

    # --- rules ------------------------------------------------------------------------------

    @precondition(lambda self: self.manager is not None)
    @rule(step=st.integers(0, 6))
    def save(self, step: int) -> None:
        assert self.manager is not None
        self.counter += 1
        payload = f"step {step} version {self.counter}".encode()
        path = self.manager.init_tmp_checkpoint(step, {"step": step})
        where = join(location_of(self.local_storage, path), "payload.bin")
        self.local_storage.write_bytes(where, payload)
        self.manager.finalize_checkpoint(path)
        self.versions.setdefault(step, []).append(payload)

    @precondition(lambda self: self.manager is not None)
    @rule()
    def wait(self) -> None:
        assert self.manager is not None
        assert self.manager.wait_for_replication(60)
        current = self._current()
        assert self.replica_tier() == {s: current[s] for s in self._kept()}
        newest = sorted(self.versions)[-KEEP_LOCAL:]
        assert self.local_tier() == {s: current[s] for s in newest}
        assert self.manager.replication_status() == dict.fromkeys(
            sorted(self._kept() | set(newest)), "replicated"
        )

    @precondition(lambda self: self.manager is not None)
    @rule()
    def restart(self) -> None:
        assert self.manager is not None
        self.manager.close()
        self._reopen()

    @precondition(lambda self: self.manager is not None and bool(self.versions))
    @rule()
    def lose_the_local_tier(self) -> None:
        assert self.manager is not None
        assert self.manager.wait_for_replication(60)
        self.manager.close()
        self.local_storage.remove_tree(location_of(self.local_storage, self.local))
        self._reopen()
        assert self.manager is not None
        newest = max(self.versions)
        latest = self.manager.get_latest_checkpoint_path()
        assert latest is not None
        assert latest.endswith(f"step_{newest}")
        assert self.local_tier() == {newest: self._current()[newest]}

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def every_version_seen_was_saved(self) -> None:
        if self.manager is None:
            return
        for tier in (self.local_tier(), self.replica_tier()):
            for step, payload in tier.items():
                assert payload in self.versions.get(step, []), (step, payload)

    @invariant()
    def the_kept_steps_are_in_one_tier_at_least(self) -> None:
        # A local checkpoint leaves only once its replica is committed: every step the
        # replica's retention keeps is, in its newest version, local or replicated.
        if self.manager is None:
            return
        # Local first: a local copy goes only after its replica is committed, so one
        # missed here (pruned meanwhile) is in the replica, read after.
        local = self.local_tier()
        replica = self.replica_tier()
        current = self._current()
        for step in self._kept():
            assert current[step] in (local.get(step), replica.get(step)), step


ReplicationMachine.TestCase.settings = settings(
    settings.default,
    max_examples=max(5, settings.default.max_examples // 10),
    stateful_step_count=max(10, settings.default.stateful_step_count // 3),
)
TestReplicationMachine = pytest.mark.filterwarnings("ignore::DeprecationWarning")(
    ReplicationMachine.TestCase
)
