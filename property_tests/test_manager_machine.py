"""A state machine comparing `ckpt.CheckpointManager` with a plain model, on every backend.

The model is a dict of committed steps (training info and the loop's own files), a set of
pins, the open attempts and the stray entries a user dropped in the directory. It decides
retention by itself, by sorting (see `_rank`), never by calling `policies`.

Each run picks a backend (`ckpt.storage.LocalStorage` on a temporary directory, or
`ckpt.storage.MemoryStorage`) and a commit protocol (``rename`` or ``manifest``), and
checks the same model on all four: the backends must agree with the model, and so with
each other, under either protocol. `StoreMachine` runs the same rules on the object
stores (`ckpt.storage.FsspecStorage` on ``memory://``, and on moto's S3 server on
127.0.0.1 through s3fs), where only the manifest protocol runs and a ``step_N`` entry
is never in a commit's way (no rename publishes there). The machine reads the
directory back through the backend's own storage, never through the manager.

Crashes: a rule's ``crash_at=n`` makes the n-th storage operation of its manager call die
the way a killed process dies: that operation is not done, and neither is any
operation after it (`_Killed` is a `BaseException`, and a dead `_CrashingStorage` refuses
every later operation, so the manager's cleanup handlers cannot touch the disk either).
On ``memory`` with ``fsync``, the kill may also be a power cut (``cut``): everything the
storage had not made durable is lost as well (`MemoryStorage.power_cut`), and the
``power_cut`` rule cuts the power between calls. The rule then abandons the manager,
builds a new one on the same directory, and settles the model by looking at the
storage, but only within the outcomes the interrupted call allows (`_settle`): a
finalized checkpoint survives every power cut, and a half one is never visible. On
the object stores an operation is one or two requests, so a crash before the n-th
operation is a crash before a request (``tests/test_kill_s3.py`` kills a real process
before each single request).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
import pytest
import xxhash
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

import ckpt
from ckpt import CheckpointManager
from ckpt._directory.registry import writers
from ckpt.commit.reaper import Reaper
from ckpt.storage import (
    Capabilities,
    Entry,
    FsspecStorage,
    LocalStorage,
    MemoryStorage,
    join,
    name_of,
    parent_of,
    walk_files,
)

# --- a storage that can be killed -------------------------------------------------------


class _Killed(BaseException):
    """The process was killed: nothing in the manager may catch this and carry on."""


class _CrashingStorage:
    """A storage that dies at a chosen operation, and does nothing once dead.

    Every operation that changes the storage (or syncs it) counts. Reads do not count
    and still work once dead (they change nothing). On local disk the syncs are counted
    but not performed: without a power cut they change nothing observable, and skipping
    them lets the machine run the manager's ``fsync: true`` code paths at no cost. In
    memory they are performed, since a power cut then shows what they made durable.

    With ``torn``, the killed operation is caught half-way where it is not atomic: a
    ``remove_tree`` has removed half of the files, a ``write_bytes`` has written half of
    the data, and on local disk a ``replace_file`` has left ``LocalStorage``'s
    ``.NAME.partial`` file (renames and directory creations are atomic and stay undone).
    """

    def __init__(self, inner: Storage, *, can_exchange: bool, torn: bool) -> None:
        self.inner = inner
        self.local = isinstance(inner, LocalStorage)
        self.can_exchange = can_exchange
        self.torn = torn
        self.count = 0
        self.crash_at: int | None = None
        self.dead = False
        self.ops: list[str] = []

    def __repr__(self) -> str:
        return f"_CrashingStorage({self.inner!r}, can_exchange={self.can_exchange})"

    def arm(self, n: int) -> None:
        self.crash_at = self.count + n

    def disarm(self) -> None:
        self.crash_at = None

    def _tick(self, what: str, half_done: Callable[[], None] | None = None) -> None:
        if self.dead:
            raise _Killed(f"already dead, not doing {what}")
        self.count += 1
        self.ops.append(what)
        if self.crash_at is not None and self.count >= self.crash_at:
            self.dead = True
            if self.torn and half_done is not None:
                half_done()
            raise _Killed(f"killed before {what}")

    @property
    def capabilities(self) -> Capabilities:
        return replace(self.inner.capabilities, atomic_exchange=self.can_exchange)

    def canonical(self, path: str) -> str:
        return self.inner.canonical(path)

    # reads
    def list_dir(self, path: str) -> list[Entry]:
        return self.inner.list_dir(path)

    def entry(self, path: str) -> Entry | None:
        return self.inner.entry(path)

    def read_bytes(self, path: str, **kwargs: Any) -> bytes:
        return self.inner.read_bytes(path, **kwargs)

    def read_versioned(self, path: str) -> tuple[bytes, str] | None:
        assert isinstance(self.inner, FsspecStorage)
        return self.inner.read_versioned(path)

    def open_read(self, path: str, **kwargs: Any) -> BinaryIO:
        return self.inner.open_read(path, **kwargs)

    def lock_held(self, path: str) -> bool:
        return self.inner.lock_held(path)

    # changes
    def _durable(self, durable: bool) -> bool:
        return durable and not self.local

    def _partial(self, path: str, data: bytes) -> Callable[[], None] | None:
        if not self.local:
            return None  # MemoryStorage's replacements are atomic: nothing half-done
        partial = join(parent_of(path), f".{name_of(path)}.partial")
        return lambda: self.inner.write_bytes(partial, data[:1])

    @contextlib.contextmanager
    def open_write(self, path: str, *, durable: bool) -> Iterator[BinaryIO]:
        buffer = io.BytesIO()
        yield buffer
        data = buffer.getvalue()
        self._tick(f"open_write {name_of(path)}", self._partial(path, data))
        with self.inner.open_write(path, durable=self._durable(durable)) as f:
            f.write(data)

    def write_bytes(self, path: str, data: bytes) -> None:
        store = isinstance(self.inner, FsspecStorage)  # a PUT is whole or not at all
        self._tick(
            f"write_bytes {name_of(parent_of(path))}/{name_of(path)}",
            None if store else lambda: self.inner.write_bytes(path, data[: len(data) // 2]),
        )
        self.inner.write_bytes(path, data)

    def replace_if(self, path: str, data: bytes, version: str) -> bool:
        assert isinstance(self.inner, FsspecStorage)
        self._tick(f"replace_if {name_of(path)}")
        return self.inner.replace_if(path, data, version)

    def replace_file(self, path: str, data: bytes, *, durable: bool) -> None:
        self._tick(f"replace_file {name_of(path)}", self._partial(path, data))
        self.inner.replace_file(path, data, durable=self._durable(durable))

    def make_dir(self, path: str) -> None:
        self._tick(f"make_dir {name_of(path)}")
        self.inner.make_dir(path)

    def make_dirs(self, path: str) -> None:
        self._tick(f"make_dirs {name_of(path)}")
        self.inner.make_dirs(path)

    def rename(self, src: str, dst: str) -> None:
        self._tick(f"rename {name_of(src)} -> {name_of(dst)}")
        self.inner.rename(src, dst)

    def exchange(self, a: str, b: str) -> bool:
        self._tick(f"exchange {name_of(a)} <-> {name_of(b)}")
        return self.can_exchange and self.inner.exchange(a, b)

    def remove_file(self, path: str) -> None:
        self._tick(f"remove_file {name_of(path)}")
        self.inner.remove_file(path)

    def remove_tree(self, path: str) -> None:
        def remove_half() -> None:
            found = self.inner.entry(path)
            if found is not None and found.kind == "dir":
                files = sorted(p for p, _ in walk_files(self.inner, path))
                for victim in files[: (len(files) + 1) // 2]:
                    self.inner.remove_file(victim)

        self._tick(f"remove_tree {name_of(path)}", remove_half)
        self.inner.remove_tree(path)

    def sync_tree(self, path: str) -> None:
        self._tick(f"sync_tree {name_of(path)}")
        if not self.local:
            self.inner.sync_tree(path)

    def sync_dir(self, path: str) -> None:
        self._tick(f"sync_dir {name_of(path)}")
        if not self.local:
            self.inner.sync_dir(path)

    def lock(self, path: str) -> ckpt.Lock:
        self._tick(f"lock {name_of(path)}")
        return self.inner.lock(path)


# --- the model ------------------------------------------------------------------------------

METRIC = "val_loss"
ABSENT = "<absent>"  # as a metric: the key is not in training_info at all
STEP_RANGE = 8  # checkpoints use steps 0..7
RESERVED = 100  # stray entries that would collide with a step use 100..103

metrics = st.one_of(
    st.sampled_from([0.5, 0.5, 1.0, -2.0, 0.0, -0.0, 3, 10**30, 1e300, -1e300]),  # ties
    st.sampled_from([ABSENT, None, math.nan, math.inf, -math.inf, "n/a", True]),  # unusable
    st.floats(-4, 4, allow_nan=False),
)
file_names = st.sampled_from(["model.bin", "optim/state.bin", "rng", "deep/er/x.bin"])
contents = st.binary(max_size=48)


@dataclass(frozen=True)
class Saved:
    """What a checkpoint holds: its training info as read back, and the loop's own files."""

    info: Mapping[str, Any]
    files: Mapping[str, bytes] = field(default_factory=dict)


def _stored_info(step: int, save: int, metric: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the loop passes, what training_info.json reads back as)."""
    given: dict[str, Any] = {"step": step, "save": save}
    if metric != ABSENT:
        given[METRIC] = metric
    stored = dict(given)
    if isinstance(metric, float) and not math.isfinite(metric):
        stored[METRIC] = None  # the documented choice: NaN and infinities are stored as null
    return given, stored


def _usable(info: Mapping[str, Any]) -> int | float | None:
    """The metric if it is a finite number (not a bool), else ``None``."""
    value = info.get(METRIC)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _rank(committed: Mapping[int, Saved], higher_is_better: bool) -> list[int]:
    """Steps best first: usable metrics before unusable ones, then by value, then the higher
    step first (ties, and among the unusable ones). The rule of policies/_ranking.py."""
    values = {s: _usable(saved.info) for s, saved in committed.items()}
    usable = sorted((s for s, v in values.items() if v is not None), reverse=True)
    unusable = sorted((s for s, v in values.items() if v is None), reverse=True)
    # A stable sort by value over steps in descending order: a tie keeps the higher step
    # first (``reverse=True`` keeps the order of equal elements too).
    usable.sort(key=lambda s: values[s], reverse=higher_is_better)
    return usable + unusable


@dataclass(frozen=True)
class PolicySpec:
    """The retention the machine configures: ``kind`` is hybrid, top_k, latest_n or any_of.

    ``hybrid`` is the seed's flat ``keep_top_k: k``; any_of is top_k k plus latest_n n.
    """

    kind: str
    k: int
    n: int
    higher_is_better: bool

    def config(self, directory: str, *, fsync: bool, protocol: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "checkpoint_dir": directory,
            "metric_name": METRIC,
            "higher_is_better": self.higher_is_better,
            "fsync": fsync,
            "commit_protocol": protocol,
        }
        if self.kind == "hybrid":
            config["keep_top_k"] = self.k
        elif self.kind == "top_k":
            config["retention"] = {"kind": "top_k", "k": self.k}
        elif self.kind == "latest_n":
            config["retention"] = {"kind": "latest_n", "n": self.n}
        else:
            config["retention"] = {
                "kind": "any_of",
                "policies": [{"kind": "top_k", "k": self.k}, {"kind": "latest_n", "n": self.n}],
            }
        return config

    def keeps(self, committed: Mapping[int, Saved], *, with_latest: bool = True) -> set[int]:
        """What the policy alone keeps (``with_latest=False``: a hybrid loses its exemption)."""
        best = _rank(committed, self.higher_is_better)
        newest = sorted(committed, reverse=True)
        if self.kind == "hybrid":
            return set(best[: self.k]) | (set(newest[:1]) if with_latest else set())
        if self.kind == "top_k":
            return set(best[: self.k])
        if self.kind == "latest_n":
            return set(newest[: self.n])
        return set(best[: self.k]) | set(newest[: self.n])


policy_specs = st.builds(
    PolicySpec,
    kind=st.sampled_from(["hybrid", "top_k", "latest_n", "any_of"]),
    k=st.integers(1, 3),
    n=st.integers(1, 3),
    higher_is_better=st.booleans(),
) | st.builds(PolicySpec, st.just("hybrid"), st.just(0), st.just(1), st.booleans())


# --- helpers on the storage ------------------------------------------------------------------

Storage = LocalStorage | MemoryStorage | FsspecStorage


def _read_tree(storage: Storage, root: str) -> dict[str, bytes]:
    prefix = root.rstrip("/") + "/"
    return {
        path.removeprefix(prefix): storage.read_bytes(path)
        for path, _ in sorted(walk_files(storage, root))
    }


def _describe(storage: Storage, path: str) -> object:
    """Everything about a stray entry that must never change (links are not followed)."""
    entry = storage.entry(path)
    assert entry is not None, path
    if entry.kind == "symlink":
        return ("link", os.readlink(path), entry.version)
    if entry.kind == "dir":
        inner = sorted((p, e.version) for p, e in walk_files(storage, path))
        names = sorted(e.name for e in storage.list_dir(path))
        return ("dir", entry.version, names, inner, _read_tree(storage, path))
    return ("file", entry.version, storage.read_bytes(path))


def _read_checkpoint(storage: Storage, path: str) -> Saved:
    """What a checkpoint holds (info ``{"<unreadable>": ...}`` if it has none)."""
    files = _read_tree(storage, path)
    files.pop(".ckpt-files.json", None)  # the commit's record: checked on its own
    try:
        info = json.loads(files.pop("training_info.json"))
    except (KeyError, ValueError) as exc:
        info = {"<unreadable>": repr(exc)}  # never equal to what a save wrote
    return Saved(info, files)


_STEP = re.compile(r"step_(0|[1-9][0-9]*)")
_ATTEMPT = re.compile(r"step_(0|[1-9][0-9]*)\.[0-9a-f]{12}")


# Stray entries a user may leave in the directory, and what the manager promises for each:
# none is ever reported, deleted, or followed; recovery removes only `tmp_step_<N>`
# directories. A file, a link or a directory without a readable training_info.json named
# `step_N` blocks finalizing step N with a CheckpointError (it is never replaced), under
# either protocol. Links exist on local disk only.
STRAY_KINDS = [
    "notes.txt",  # a file
    "step_007",  # leading zeros: not a step, even with a training_info.json
    "tmp_foo",  # not a temporary of ours
    "step_final",  # NeMo RL's final export
    "step_10-hf",  # a converted copy
    "tmp_step_07",  # leading zero: recovery leaves it alone
    "old_step_x",
    "step_3.manifest",  # not a manifest name: left alone
    "file step_N",  # a file where checkpoint N would go
    "link step_N",  # a link out of the directory where checkpoint N would go
    "dir step_N",  # a directory without a readable training_info.json
    "dir tmp_step_R",  # an abandoned temporary: recovery removes it
    "file tmp_step_R",  # not a directory: recovery leaves it alone
    "link old_step_R",  # not a directory: recovery leaves it alone
]


# Where a call dies: None (most often) lets it finish; n kills it before its n-th storage
# operation (if it makes that many). Shrinking goes towards 0, which is no crash.
crash_points = st.integers(0, 20).map(lambda n: n if 1 <= n <= 8 else None)


@dataclass
class Attempt:
    """An open attempt of the model: where init_tmp_checkpoint put it, what it holds."""

    path: str
    saved: Saved


class ManagerMachine(RuleBasedStateMachine):
    """`CheckpointManager` against a plain model, on one backend and one protocol."""

    tmps = Bundle("tmps")  # steps whose attempt the machine started (maybe gone since)
    steps = Bundle("steps")  # steps that were committed at some point (maybe pruned since)

    def __init__(self) -> None:
        super().__init__()
        self.root = os.path.realpath(tempfile.mkdtemp(prefix="ckpt-machine-"))
        self.manager: CheckpointManager | None = None
        self.storage: _CrashingStorage | None = None
        # the model
        self.committed: dict[int, Saved] = {}
        self.paths: dict[int, str] = {}  # where each committed step is
        self.pins: set[int] = set()
        self.open: dict[int, Attempt] = {}
        self.last_attempt: dict[int, str] = {}  # the latest attempt path of each step
        # name -> (description, whether recovery removes it: an abandoned tmp_step_N dir)
        self.strays: dict[str, tuple[object, bool]] = {}
        self.saves = 0

    # --- set-up, restarts and crashes --------------------------------------------------------

    @initialize(
        spec=policy_specs,
        backend=st.sampled_from(["local", "memory"]),
        protocol=st.sampled_from(["rename", "manifest"]),
        can_exchange=st.booleans(),
        fsync=st.booleans(),
        torn=st.booleans(),
    )
    def start(
        self,
        spec: PolicySpec,
        backend: str,
        protocol: str,
        can_exchange: bool,
        fsync: bool,
        torn: bool,
    ) -> None:
        """Open the first manager. ``fsync`` picks the manager's durable code paths;
        ``can_exchange=False`` makes rename overwrites take the two-renames path through
        ``old_step_N``; ``torn`` makes a killed operation half-done where it is not atomic
        (see `_CrashingStorage`)."""
        self.spec = spec
        self.backend = backend
        self.protocol = protocol
        self.can_exchange = can_exchange
        self.fsync = fsync
        self.torn = torn
        self.inner: Storage
        if backend == "local":
            self.inner = LocalStorage()
            base = self.root
        elif backend == "memory":
            self.inner = MemoryStorage(exchange=can_exchange)
            base = "/machine"
        elif backend == "memory-url":
            self.inner = FsspecStorage(fsspec.filesystem("memory"), lease_seconds=60)
            base = f"memory://{name_of(self.root)}"
        else:
            self.inner = FsspecStorage(fsspec.filesystem("s3", **_s3_options()), lease_seconds=60)
            base = f"s3://{_s3_bucket()}"
        self.directories = self.inner.capabilities.directories
        self.directory = join(base, "ckpts")
        self.outside = join(base, "outside")
        self.inner.make_dirs(self.outside)
        self.inner.write_bytes(
            join(self.outside, "training_info.json"), json.dumps({METRIC: -1e9}).encode()
        )
        self.inner.write_bytes(join(self.outside, "weights"), b"not ours to delete")
        self._make_durable(self.outside)
        self.outside_before = _read_tree(self.inner, self.outside)
        event(f"{backend} / {protocol}")
        self._open_manager()
        assert self.manager is not None
        assert self.manager.recovery == ()

    @property
    def cuts(self) -> bool:
        """Whether power cuts are modelled: in memory, when the manager syncs."""
        return self.backend == "memory" and self.fsync

    def _make_durable(self, path: str) -> None:
        """What a user's own fsyncs do for what they put beside the checkpoints."""
        if isinstance(self.inner, MemoryStorage):
            self.inner.sync_tree(path)
            ancestor = path
            while parent_of(ancestor) != ancestor:
                ancestor = parent_of(ancestor)
                self.inner.sync_dir(ancestor)

    def _config(self) -> dict[str, Any]:
        config = self.spec.config(self.directory, fsync=self.fsync, protocol=self.protocol)
        # On a store, every attempt recovery finds is a crash's: no other writer here.
        return {**config, "attempt_grace_seconds": 0}

    def _open_manager(self, crash_at: int | None = None) -> CheckpointManager:
        self.storage = _CrashingStorage(self.inner, can_exchange=self.can_exchange, torn=self.torn)
        if crash_at is not None:
            self.storage.arm(crash_at)
        self.manager = CheckpointManager(self._config(), storage=self.storage)
        self.storage.disarm()
        # The reaper removes deleted checkpoints' files when a rule says (`reap`), so a
        # kill can land in a removal at a chosen point, as it can between any two calls.
        self._reaper().threaded = False
        return self.manager

    def _reaper(self) -> Reaper:
        assert self.storage is not None
        return writers[self.storage.canonical(self.directory)].reaper

    def _reaping(self) -> set[str]:
        """The names (in the directory or its trash) the reaper has yet to remove."""
        return {name_of(path) for path in self._reaper().pending()} if self.manager else set()

    def _restart(self) -> None:
        """Abandon the manager and build a new one; its recovery removes every attempt."""
        if self.manager is not None:
            # It releases the in-process lock. Its storage is dead, so the catalog a
            # closing writer saves is not written, as a killed process would not.
            with contextlib.suppress(_Killed):
                self.manager.close()
            self.manager = None
        self._open_manager()
        self.open.clear()
        for name in [n for n, (_, goes) in self.strays.items() if goes]:
            del self.strays[name]  # an abandoned temporary: recovery removes it

    def _call(self, label: str, crash_at: int | None, cut: bool, action: Callable[[], Any]) -> bool:
        """Run one manager call, killed before its ``crash_at``-th storage operation if it
        makes that many (and the power cut then, with ``cut``); ``True`` if it was killed
        (then the manager is a new one)."""
        storage = self.storage
        assert storage is not None
        if crash_at is not None:
            storage.arm(crash_at)
        try:
            action()
        except _Killed:
            what = "power cut" if cut and self.cuts else "killed"
            event(f"{what} in {label} before {storage.ops[-1].split()[0]}")
            if cut and self.cuts:
                assert isinstance(self.inner, MemoryStorage)
                self.inner.power_cut()
            self._restart()
            return True
        finally:
            storage.disarm()
        return False

    def _on_disk(self) -> dict[int, tuple[str, Saved]]:
        """The checkpoints the storage holds, read without the manager: (path, content)."""
        names = {e.name for e in self.inner.list_dir(self.directory)}
        found: dict[int, tuple[str, Saved]] = {}
        for s in range(STEP_RANGE):
            name = f"step_{s}"
            entry = self.inner.entry(join(self.directory, name))
            renamed = self.directories and name not in self.strays  # a rename's step_N
            if entry is not None and entry.kind == "dir" and renamed:
                found[s] = (
                    join(self.directory, name),
                    _read_checkpoint(self.inner, join(self.directory, name)),
                )
            manifest = f"step_{s}.manifest.json"
            if manifest in names:
                data = json.loads(self.inner.read_bytes(join(self.directory, manifest)))
                path = join(self.directory, data["attempt"])
                found[s] = (path, _read_checkpoint(self.inner, path))  # a manifest wins
        return found

    def _settle(
        self,
        outcomes: list[tuple[dict[int, Saved], dict[int, Saved]]],
        pin_outcomes: list[set[int]],
    ) -> int:
        """After a crash and a restart, adopt what is on disk if the crash allows it.

        Each outcome is (steps that must be there with exactly this content, steps that
        may be there with exactly this content or be gone); nothing else may be there.
        Returns the index of the outcome found.
        """
        located = self._on_disk()
        on_disk = {s: saved for s, (_, saved) in located.items()}

        def allows(outcome: tuple[dict[int, Saved], dict[int, Saved]]) -> bool:
            required, optional = outcome
            return all(on_disk.get(s) == saved for s, saved in required.items()) and all(
                saved == (required[s] if s in required else optional.get(s))
                for s, saved in on_disk.items()
            )

        found = next((i for i, outcome in enumerate(outcomes) if allows(outcome)), None)
        assert found is not None, f"after a crash the disk holds {on_disk}, not one of {outcomes}"
        if any(s in on_disk for s in outcomes[found][1]):
            event("after a crash: a checkpoint due to go is still there")
        self.committed = on_disk
        self.paths = {s: path for s, (path, _) in located.items()}
        assert self.manager is not None
        pinned = {r.step for r in self.manager.list_checkpoints() if r.pinned}
        allowed = [p & on_disk.keys() for p in pin_outcomes]
        assert pinned in allowed, f"pins {pinned} after a crash, allowed: {allowed}"
        self.pins = pinned
        return found

    def _unchanged(self) -> None:
        """After a crash of a call that commits and deletes nothing: nothing changed."""
        self._settle([(dict(self.committed), {})], [set(self.pins)])

    @rule(crash_at=crash_points, cut=st.booleans())
    def restart(self, crash_at: int | None, cut: bool) -> None:
        """Close the manager and open a new one (``crash_at``: die during its recovery,
        then open another)."""
        assert self.manager is not None
        expected = {attempt.path for attempt in self.open.values()} | {
            join(self.directory, n) for n, (_, goes) in self.strays.items() if goes
        }
        self.manager.close()
        self.manager = None
        try:
            self._open_manager(crash_at)
        except _Killed:
            assert self.storage is not None
            event(f"killed in recovery before {self.storage.ops[-1].split()[0]}")
            if cut and self.cuts:
                assert isinstance(self.inner, MemoryStorage)
                self.inner.power_cut()
            self._restart()
            self._unchanged()
            return
        actions = {(a.kind, str(a.path)) for a in self.manager.recovery}
        assert actions == {("removed_temporary", path) for path in expected}
        self.open.clear()
        for name in [n for n, (_, goes) in self.strays.items() if goes]:
            del self.strays[name]

    @precondition(lambda self: self.manager is not None and bool(self._reaper().pending()))
    @rule(crash_at=crash_points, cut=st.booleans())
    def reap(self, crash_at: int | None, cut: bool) -> None:
        """The reaper removes the next deleted checkpoint's files; a kill there loses
        nothing (what it had not removed, recovery removes)."""
        if self._call("reap", crash_at, cut, self._reaper().step):
            self._unchanged()

    @precondition(lambda self: self.manager is not None)
    @rule(crash_at=crash_points, cut=st.booleans())
    def wait_until_finished(self, crash_at: int | None, cut: bool) -> None:
        """``wait_until_finished`` flushes the reaper: nothing is left to remove after it."""
        manager = self.manager
        assert manager is not None
        if self._call("wait_until_finished", crash_at, cut, manager.wait_until_finished):
            self._unchanged()
            return
        assert self._reaper().pending() == ()

    @precondition(lambda self: self.cuts)
    @rule()
    def power_cut(self) -> None:
        """The machine loses power between two calls: every finalized checkpoint and pin
        survives exactly; what was being written is gone (recovery removes it)."""
        assert isinstance(self.inner, MemoryStorage)
        event("power cut between calls")
        self.inner.power_cut()
        self._restart()
        self._unchanged()

    # --- saving ---------------------------------------------------------------------------

    def _attempt_path(self, step: int) -> str:
        """Where a finalize of ``step`` is pointed: the open attempt, else the last one."""
        if step in self.open:
            return self.open[step].path
        if self.protocol == "rename":
            return join(self.directory, f"tmp_step_{step}")
        return self.last_attempt.get(step, join(self.directory, f"step_{step}.000000000000"))

    def _start(
        self, step: int, metric: object, crash_at: int | None = None, cut: bool = False
    ) -> bool:
        """``init_tmp_checkpoint``; ``True`` if the attempt is open."""
        manager = self.manager
        assert manager is not None
        self.saves += 1
        given, stored = _stored_info(step, self.saves, metric)
        paths: list[Path] = []
        if self._call(
            "init_tmp",
            crash_at,
            cut,
            lambda: paths.append(manager.init_tmp_checkpoint(step, given)),
        ):
            self._unchanged()
            return False
        (path,) = paths
        if self.protocol == "rename":
            assert str(path) == join(self.directory, f"tmp_step_{step}")
        else:
            assert str(path.parent) == self.directory
            assert _ATTEMPT.fullmatch(path.name)
            assert path.name.startswith(f"step_{step}.")
            assert str(path) not in {a.path for a in self.open.values()} | set(self.paths.values())
        self.open[step] = Attempt(str(path), Saved(stored))
        self.last_attempt[step] = str(path)
        return True

    def _write(self, step: int, name: str, data: bytes) -> None:
        if step not in self.open:
            path = self._attempt_path(step)
            assert (
                self.inner.entry(path) is None
                or path in self.paths.values()
                or name_of(path) in self._reaping()
            )
            return
        attempt = self.open[step]
        target = join(attempt.path, name)
        self.inner.make_dirs(parent_of(target))
        self.inner.replace_file(target, data, durable=False)
        saved = attempt.saved
        self.open[step] = Attempt(attempt.path, Saved(saved.info, {**saved.files, name: data}))

    def _finalize(self, step: int, crash_at: int | None, cut: bool = False) -> bool:
        """``finalize_checkpoint`` of the attempt of ``step``; ``True`` if committed now."""
        manager = self.manager
        assert manager is not None
        path = self._attempt_path(step)
        if step not in self.open:
            with pytest.raises(ckpt.InvalidCheckpointPathError):
                manager.finalize_checkpoint(path)
            return False
        if f"step_{step}" in self.strays and self.directories:
            # A file or link is in the way: refused, no change. A store has no step_N to
            # publish to, so nothing is in the way there.
            with pytest.raises(ckpt.CheckpointError, match=f"step_{step}"):
                manager.finalize_checkpoint(path)
            event("finalize refused: a stray is in the way")
            return False
        new = self.open[step].saved
        after = {**self.committed, step: new}
        keep = self.spec.keeps(after) | self.pins
        if self._call("finalize", crash_at, cut, lambda: manager.finalize_checkpoint(path)):
            # Not published: nothing changed (pruning comes after publishing). Published:
            # step holds the new copy (or was pruned at once), and whatever retention was
            # deleting may be there still, intact.
            found = self._settle(
                [
                    (dict(self.committed), {}),
                    (
                        {s: after[s] for s in keep},
                        {s: after[s] for s in after if s not in keep},
                    ),
                ],
                [set(self.pins)],
            )
            event(f"crashed finalize: {'published' if found else 'not published'}")
            return self.committed.get(step) == new
        del self.open[step]
        final = join(self.directory, f"step_{step}") if self.protocol == "rename" else path
        self.committed = {s: after[s] for s in keep}
        self.paths = {s: final if s == step else self.paths[s] for s in keep}
        return step in self.committed

    def _save(self, step: int, metric: object, data: bytes, crash_at: int | None, cut: bool) -> Any:
        if not self._start(step, metric):
            return multiple()
        self._write(step, "model.bin", data)
        return step if self._finalize(step, crash_at, cut) else multiple()

    @rule(
        target=tmps,
        step=st.integers(0, STEP_RANGE - 1),
        metric=metrics,
        crash_at=crash_points,
        cut=st.booleans(),
    )
    def init_tmp(self, step: int, metric: object, crash_at: int | None, cut: bool) -> int:
        """Start a checkpoint (replacing an open attempt of the same step)."""
        self._start(step, metric, crash_at, cut)
        return step

    @rule(step=tmps, name=file_names, data=contents)
    def write_file(self, step: int, name: str, data: bytes) -> None:
        """The loop writes (or rewrites) one of its files into an open attempt."""
        self._write(step, name, data)

    @rule(target=steps, step=tmps, crash_at=crash_points, cut=st.booleans())
    def finalize(self, step: int, crash_at: int | None, cut: bool) -> Any:
        """Finalize an attempt (one that is gone since must be refused)."""
        return step if self._finalize(step, crash_at, cut) else multiple()

    @rule(step=tmps, crash_at=crash_points, cut=st.booleans())
    def abort(self, step: int, crash_at: int | None, cut: bool) -> None:
        """Abort an attempt (one that is gone since is a no-op)."""
        manager = self.manager
        assert manager is not None
        path = self._attempt_path(step)
        if self._call("abort", crash_at, cut, lambda: manager.abort_checkpoint(path)):
            self._unchanged()
            return
        self.open.pop(step, None)
        assert (
            self.inner.entry(path) is None
            or path in self.paths.values()
            or name_of(path) in self._reaping()  # committed, deleted, not removed yet
        )

    @rule(
        target=steps,
        step=st.integers(0, STEP_RANGE - 1),
        metric=metrics,
        data=contents,
        crash_at=crash_points,
        cut=st.booleans(),
    )
    def save(self, step: int, metric: object, data: bytes, crash_at: int | None, cut: bool) -> Any:
        """Start, write model.bin and finalize in one go (``crash_at``: in the finalize)."""
        return self._save(step, metric, data, crash_at, cut)

    @rule(
        target=steps,
        step=steps,
        metric=metrics,
        data=contents,
        crash_at=crash_points,
        cut=st.booleans(),
    )
    def overwrite(
        self, step: int, metric: object, data: bytes, crash_at: int | None, cut: bool
    ) -> Any:
        """Save again at a step that is (or was) committed (``crash_at``: in the finalize)."""
        return self._save(step, metric, data, crash_at, cut)

    # --- retention and pins ------------------------------------------------------------------

    @precondition(lambda self: bool(self.committed))
    @rule(exclude_latest=st.booleans(), crash_at=crash_points, cut=st.booleans())
    def prune(self, exclude_latest: bool, crash_at: int | None, cut: bool) -> None:
        """``remove_old_checkpoints``; a crash may leave some of what it was deleting."""
        manager = self.manager
        assert manager is not None
        keep = self.spec.keeps(self.committed, with_latest=exclude_latest) | self.pins
        if exclude_latest and self.committed:
            keep.add(max(self.committed))
        if self._call(
            "prune", crash_at, cut, lambda: manager.remove_old_checkpoints(exclude_latest)
        ):
            self._settle(
                [
                    (
                        {s: self.committed[s] for s in keep},
                        {s: v for s, v in self.committed.items() if s not in keep},
                    )
                ],
                [set(self.pins)],
            )
            return
        self.committed = {s: self.committed[s] for s in keep}
        self.paths = {s: self.paths[s] for s in keep}

    @rule(step=steps, pinned=st.booleans(), crash_at=crash_points, cut=st.booleans())
    def pin(self, step: int, pinned: bool, crash_at: int | None, cut: bool) -> None:
        """``pin(step)`` or ``unpin(step)`` on a step that was committed (maybe pruned since)."""
        manager = self.manager
        assert manager is not None
        call = manager.pin if pinned else manager.unpin
        if step not in self.committed and not (not pinned and step in self.pins):
            with pytest.raises(ckpt.CheckpointNotFoundError):
                call(step)
            return
        after = self.pins | {step} if pinned else self.pins - {step}
        if self._call("pin", crash_at, cut, lambda: call(step)):
            self._settle([(dict(self.committed), {})], [set(self.pins), after])
            return
        self.pins = after

    # --- strays ------------------------------------------------------------------------------

    @rule(kind=st.sampled_from(STRAY_KINDS), n=st.integers(0, STEP_RANGE - 1), data=contents)
    def add_stray(self, kind: str, n: int, data: bytes) -> None:
        if kind.startswith("link") and self.backend != "local":
            return  # no links in memory or on a store
        reserved = RESERVED + n % 4
        name = {
            "file step_N": f"step_{n}",
            "link step_N": f"step_{n}",
            "dir step_N": f"step_{n}",
            "dir tmp_step_R": f"tmp_step_{reserved}",
            "file tmp_step_R": f"tmp_step_{reserved}",
            "link old_step_R": f"old_step_{reserved}",
        }.get(kind, kind)
        path = join(self.directory, name)
        taken = self.inner.entry(path) is not None
        if taken or (name.startswith("step_") and f"{name}.manifest.json" in self._names()):
            return  # taken (by a checkpoint or another stray): nothing to add
        if kind.startswith("link"):
            os.symlink(self.outside, path, target_is_directory=True)
        elif kind.startswith("file") or kind in ("notes.txt", "step_3.manifest"):
            self.inner.write_bytes(path, data)
        else:
            self.inner.make_dir(path)
            self.inner.write_bytes(join(path, "payload"), data)
            info = b"{not json" if kind == "dir step_N" else json.dumps({METRIC: -1e9}).encode()
            self.inner.write_bytes(join(path, "training_info.json"), info)
        self._make_durable(path)
        # Recovery removes an abandoned tmp_step_N, where a rename protocol can have run.
        goes = kind == "dir tmp_step_R" and self.inner.capabilities.atomic_rename
        self.strays[name] = (_describe(self.inner, path), goes)

    # --- reading ---------------------------------------------------------------------------

    def _names(self) -> set[str]:
        return {e.name for e in self.inner.list_dir(self.directory)}

    @rule()
    def read_only_view(self) -> None:
        """A read-only manager beside the writer sees the same checkpoints and changes nothing."""
        before = sorted(self._names())
        with CheckpointManager(self._config(), read_only=True, storage=self.inner) as reader:
            assert [r.step for r in reader.list_checkpoints()] == sorted(self.committed)
            assert [r.step for r in reader.list_checkpoints() if r.pinned] == sorted(self.pins)
            assert reader.get_latest_checkpoint_path() == self._path_of_latest()
            assert reader.get_best_checkpoint_path() == self._path_of_best()
        assert sorted(self._names()) == before

    def _path_of_latest(self) -> str | None:
        return self.paths[max(self.committed)] if self.committed else None

    def _path_of_best(self) -> str | None:
        if not self.committed:
            return None
        return self.paths[_rank(self.committed, self.spec.higher_is_better)[0]]

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        """Every check, in one invariant so a failing example prints one line per step."""
        assert self.pins <= self.committed.keys()  # a pinned step is never pruned
        assert self.paths.keys() == self.committed.keys()
        if self.manager is None:
            return
        self._directory_holds_exactly_the_model()
        self._checkpoints_are_byte_identical()
        self._strays_are_untouched()
        self._no_leftovers()
        self._the_manager_agrees()

    def _directory_holds_exactly_the_model(self) -> None:
        expected = (
            {".ckpt"}
            | {name_of(path) for path in self.paths.values()}
            | {name_of(attempt.path) for attempt in self.open.values()}
            | self.strays.keys()
        )
        if self.protocol == "manifest":
            expected |= {f"step_{s}.manifest.json" for s in self.committed}
            # deleted: no manifest names them, and the reaper has yet to remove them
            expected |= self._reaping() & self._names()
        assert self._names() == expected

    def _checkpoints_are_byte_identical(self) -> None:
        for step, saved in self.committed.items():
            assert _read_checkpoint(self.inner, self.paths[step]) == saved, step
            self._record_lists_every_file(step)
        for step, attempt in self.open.items():
            assert _read_checkpoint(self.inner, attempt.path) == attempt.saved, step

    def _record_lists_every_file(self, step: int) -> None:
        """The commit recorded every file's size and digest (and ETag on S3), as they are."""
        tree = _read_tree(self.inner, self.paths[step])
        if self.protocol == "manifest":
            manifest = join(self.directory, f"step_{step}.manifest.json")
            data = json.loads(self.inner.read_bytes(manifest))
            assert data["attempt"] == name_of(self.paths[step])
        else:
            data = json.loads(tree.pop(".ckpt-files.json"))
        listed = {f["path"]: (f["size"], f["xxh3_128"]) for f in data["files"]}
        assert listed == {
            rel: (len(content), xxhash.xxh3_128_hexdigest(content)) for rel, content in tree.items()
        }
        if self.inner.capabilities.content_versions:  # S3: the ETags the listing gives too
            prefix = self.paths[step] + "/"
            etags = {
                path.removeprefix(prefix): entry.version
                for path, entry in walk_files(self.inner, self.paths[step])
            }
            assert {f["path"]: f["etag"] for f in data["files"]} == etags

    def _strays_are_untouched(self) -> None:
        for name, (description, _) in self.strays.items():
            assert _describe(self.inner, join(self.directory, name)) == description, name
        assert _read_tree(self.inner, self.outside) == self.outside_before

    def _no_leftovers(self) -> None:
        meta = join(self.directory, ".ckpt")
        # A kill inside LocalStorage.replace_file leaves its `.NAME.partial` until the
        # next restart's recovery removes it.
        assert {e.name for e in self.inner.list_dir(meta)} <= {
            "lock",
            "catalog.json",
            "pins.json",
            "ranking.json",
            "trash",
            ".pins.json.partial",
            ".ranking.json.partial",
        }
        # In the trash: only what the reaper has yet to remove (a kill leaves the rest for
        # the next recovery, which is a new manager's, so it is empty again here).
        assert {e.name for e in self.inner.list_dir(join(meta, "trash"))} <= self._reaping()
        leftovers = {
            n for n in self._names() if n.startswith(("old_", "tmp_step")) or _ATTEMPT.fullmatch(n)
        }
        ours = {name_of(a.path) for a in self.open.values()} | {
            name_of(p) for p in self.paths.values()
        }
        assert leftovers <= ours | self.strays.keys() | self._reaping()
        assert not self._reaping() & ours  # the reaper never holds a checkpoint or a save

    def _the_manager_agrees(self) -> None:
        assert self.manager is not None
        records = self.manager.list_checkpoints()
        assert [r.step for r in records] == sorted(self.committed)
        assert all(str(r.path) == self.paths[r.step] for r in records)  # never a tmp or a stray
        if self.protocol == "rename":
            assert all(_STEP.fullmatch(r.path.name) for r in records)
        assert {r.step for r in records if r.pinned} == self.pins
        for record in records:
            assert dict(record.info) == dict(self.committed[record.step].info)
        assert self.manager.get_latest_checkpoint_path() == self._path_of_latest()
        assert self.manager.get_best_checkpoint_path() == self._path_of_best()
        plan = self.manager.plan_retention()
        keep = self.spec.keeps(self.committed) | self.pins
        assert [d.step for d in plan] == sorted(self.committed)
        assert {d.step for d in plan if d.keep} == keep

    def teardown(self) -> None:
        try:
            if self.manager is not None:
                self.manager.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            if getattr(self, "backend", None) == "memory-url":
                with contextlib.suppress(FileNotFoundError):
                    fsspec.filesystem("memory").rm(f"/{name_of(self.root)}", recursive=True)


class StoreMachine(ManagerMachine):
    """The same rules on the object stores: memory:// and a real S3 server (moto's)."""

    @initialize(
        spec=policy_specs,
        backend=st.sampled_from(["memory-url", "s3"]),
        fsync=st.booleans(),
        torn=st.booleans(),
    )
    def start(  # type: ignore[override]
        self, spec: PolicySpec, backend: str, fsync: bool, torn: bool
    ) -> None:
        """Open the first manager on a store: only the manifest protocol runs there."""
        super().start(spec, backend, "manifest", False, fsync, torn)


_S3: dict[str, Any] = {}


def _s3_options() -> dict[str, Any]:
    """The storage options of moto's S3 server on 127.0.0.1, started on first use."""
    if not _S3:
        import atexit
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        atexit.register(server.stop)
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        _S3["options"] = {
            "key": "machine",
            "secret": "machine",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
        _S3["client"] = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="machine",
            aws_secret_access_key="machine",
            region_name="us-east-1",
        )
        _S3["buckets"] = 0
    return dict(_S3["options"])


def _s3_bucket() -> str:
    """A fresh bucket of the server, for one run."""
    _s3_options()
    _S3["buckets"] += 1
    name = f"machine-{_S3['buckets']}"
    _S3["client"].create_bucket(Bucket=name)
    return name


# Runs and steps come from the loaded profile (property_tests/conftest.py): ``ci`` keeps the
# whole directory well within its budget on 2 cores, ``thorough`` runs far more and longer.
ManagerMachine.TestCase.settings = settings(settings.default)
# The machine checks the disk against a model; which queries warn is tested elsewhere.
TestManagerMachine = pytest.mark.filterwarnings("ignore::ckpt.MissingMetricWarning")(
    ManagerMachine.TestCase
)
# A store answers in milliseconds, not microseconds: a tenth of the profile's runs, and
# half its steps.
StoreMachine.TestCase.settings = settings(
    settings.default,
    max_examples=max(5, settings.default.max_examples // 10),
    stateful_step_count=max(10, settings.default.stateful_step_count // 2),
)
TestStoreMachine = pytest.mark.filterwarnings(
    "ignore::ckpt.MissingMetricWarning", "ignore::DeprecationWarning"
)(StoreMachine.TestCase)
