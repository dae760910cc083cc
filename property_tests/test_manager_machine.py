"""A state machine comparing `ckpt.CheckpointManager` on a real directory with a plain model.

The model is a dict of committed steps (training info and the loop's own files), a set of
pins, the open temporaries and the stray entries a user dropped in the directory. It
decides retention by itself, by sorting (see `_rank`), never by calling `policies`.

Crashes: a rule's ``crash_at=n`` makes the n-th storage operation of its manager call die
the way a killed process dies: that operation is not done, and neither is any
operation after it (`_Killed` is a `BaseException`, and a dead `_CrashingStorage` refuses
every later operation, so the manager's cleanup handlers cannot touch the disk either).
The rule then abandons the manager (``close()`` only releases the in-process lock),
builds a new one on the same directory, and settles the model by looking at the disk, but
only within the outcomes the interrupted call allows (`_settle`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
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
from ckpt import CheckpointManager, LocalStorage

# --- a storage that can be killed -------------------------------------------------------


class _Killed(BaseException):
    """The process was killed: nothing in the manager may catch this and carry on."""


class _CrashingStorage:
    """`LocalStorage` that dies at a chosen operation, and does nothing once dead.

    Every operation that changes the disk (or syncs it) counts. Reads do not count and
    still work once dead (they change nothing). The fsyncs are counted but not performed:
    without a simulated power loss they change nothing observable, and skipping them lets
    the machine run the manager's ``fsync: true`` code paths at no cost.

    With ``torn``, the killed operation is caught half-way where it is not atomic: a
    ``remove_tree`` has removed half of the files, a ``write_bytes`` has written half of
    the data, and a ``replace_file`` has left ``LocalStorage``'s ``.NAME.partial`` file
    (renames and directory creations are atomic and stay undone).
    """

    def __init__(self, *, can_exchange: bool, torn: bool = False) -> None:
        self.inner = LocalStorage()
        self.can_exchange = can_exchange
        self.torn = torn
        self.count = 0
        self.crash_at: int | None = None
        self.dead = False
        self.ops: list[str] = []

    def __repr__(self) -> str:
        return f"_CrashingStorage(can_exchange={self.can_exchange})"

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

    # reads
    def list_dir(self, path: Path) -> list[ckpt.Entry]:
        return self.inner.list_dir(path)

    def entry(self, path: Path) -> ckpt.Entry | None:
        return self.inner.entry(path)

    def read_bytes(self, path: Path) -> bytes:
        return self.inner.read_bytes(path)

    # changes
    def write_bytes(self, path: Path, data: bytes) -> None:
        self._tick(
            f"write_bytes {path.parent.name}/{path.name}",
            lambda: self.inner.write_bytes(path, data[: len(data) // 2]),
        )
        self.inner.write_bytes(path, data)

    def replace_file(self, path: Path, data: bytes, *, durable: bool) -> None:
        partial = path.with_name(f".{path.name}.partial")
        self._tick(f"replace_file {path.name}", lambda: partial.write_bytes(data[:1]))
        self.inner.replace_file(path, data, durable=False)

    def make_dir(self, path: Path) -> None:
        self._tick(f"make_dir {path.name}")
        self.inner.make_dir(path)

    def make_dirs(self, path: Path) -> None:
        self._tick(f"make_dirs {path.name}")
        self.inner.make_dirs(path)

    def rename(self, src: Path, dst: Path) -> None:
        self._tick(f"rename {src.name} -> {dst.name}")
        self.inner.rename(src, dst)

    def exchange(self, a: Path, b: Path) -> bool:
        self._tick(f"exchange {a.name} <-> {b.name}")
        return self.can_exchange and self.inner.exchange(a, b)

    def remove_tree(self, path: Path) -> None:
        def remove_half() -> None:
            if path.is_dir() and not path.is_symlink():
                files = sorted(p for p in path.rglob("*") if not p.is_dir() or p.is_symlink())
                for victim in files[: (len(files) + 1) // 2]:
                    victim.unlink()

        self._tick(f"remove_tree {path.name}", remove_half)
        self.inner.remove_tree(path)

    def sync_tree(self, path: Path) -> None:
        self._tick(f"sync_tree {path.name}")

    def sync_dir(self, path: Path) -> None:
        self._tick(f"sync_dir {path.name}")

    def lock(self, path: Path) -> ckpt.Lock:
        self._tick(f"lock {path.name}")
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

    def config(self, directory: Path, *, fsync: bool) -> dict[str, Any]:
        config: dict[str, Any] = {
            "checkpoint_dir": str(directory),
            "metric_name": METRIC,
            "higher_is_better": self.higher_is_better,
            "fsync": fsync,
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


# --- helpers on the real directory ------------------------------------------------------------


def _read_tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _describe(path: Path) -> object:
    """Everything about a stray entry that must never change (links are not followed)."""
    st_ = path.lstat()
    if path.is_symlink():
        return ("link", os.readlink(path))
    if path.is_dir():
        inner = sorted(
            (str(p.relative_to(path)), p.lstat().st_mtime_ns, p.is_dir()) for p in path.rglob("*")
        )
        return ("dir", st_.st_mtime_ns, inner, _read_tree(path))
    return ("file", st_.st_mtime_ns, path.read_bytes())


def _read_checkpoint(path: Path) -> Saved:
    """What a checkpoint directory holds (info ``{"<unreadable>": ...}`` if it has none)."""
    files = _read_tree(path)
    try:
        info = json.loads(files.pop("training_info.json"))
    except (KeyError, ValueError) as exc:
        info = {"<unreadable>": repr(exc)}  # never equal to what a save wrote
    return Saved(info, files)


_STEP = re.compile(r"step_(0|[1-9][0-9]*)")


# Stray entries a user may leave in the directory, and what the manager promises for each:
# none is ever reported, deleted, or followed; recovery removes only `tmp_step_<N>`
# directories. A file, a link or a directory without a readable training_info.json named
# `step_N` blocks finalizing step N with a CheckpointError (it is never replaced).
STRAY_KINDS = [
    "notes.txt",  # a file
    "step_007",  # leading zeros: not a step, even with a training_info.json
    "tmp_foo",  # not a temporary of ours
    "step_final",  # NeMo RL's final export
    "step_10-hf",  # a converted copy
    "tmp_step_07",  # leading zero: recovery leaves it alone
    "old_step_x",
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


class ManagerMachine(RuleBasedStateMachine):
    """`CheckpointManager` against a plain model, on a real temporary directory."""

    tmps = Bundle("tmps")  # steps whose temporary the machine started (maybe gone since)
    steps = Bundle("steps")  # steps that were committed at some point (maybe pruned since)

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(os.path.realpath(tempfile.mkdtemp(prefix="ckpt-machine-")))
        self.directory = self.root / "ckpts"
        self.outside = self.root / "outside"
        self.outside.mkdir()
        (self.outside / "training_info.json").write_text(json.dumps({METRIC: -1e9}))
        (self.outside / "weights").write_bytes(b"not ours to delete")
        self.outside_before = _read_tree(self.outside)
        self.manager: CheckpointManager | None = None
        self.storage: _CrashingStorage | None = None
        # the model
        self.committed: dict[int, Saved] = {}
        self.pins: set[int] = set()
        self.open: dict[int, Saved] = {}  # open temporaries: what tmp_step_N holds
        # name -> (description, whether recovery removes it: an abandoned tmp_step_N dir)
        self.strays: dict[str, tuple[object, bool]] = {}
        self.saves = 0

    # --- set-up, restarts and crashes --------------------------------------------------------

    @initialize(
        spec=policy_specs, can_exchange=st.booleans(), fsync=st.booleans(), torn=st.booleans()
    )
    def start(self, spec: PolicySpec, can_exchange: bool, fsync: bool, torn: bool) -> None:
        """Open the first manager. ``fsync`` picks the manager's durable code paths (the
        storage counts its fsyncs but does not make them); ``can_exchange=False`` makes
        overwrites take the two-renames path through ``old_step_N``; ``torn`` makes a
        killed operation half-done where it is not atomic (see `_CrashingStorage`)."""
        self.spec = spec
        self.can_exchange = can_exchange
        self.fsync = fsync
        self.torn = torn
        self._open_manager()
        assert self.manager is not None
        assert self.manager.recovery == ()

    def _open_manager(self, crash_at: int | None = None) -> CheckpointManager:
        self.storage = _CrashingStorage(can_exchange=self.can_exchange, torn=self.torn)
        if crash_at is not None:
            self.storage.arm(crash_at)
        self.manager = CheckpointManager(
            self.spec.config(self.directory, fsync=self.fsync), storage=self.storage
        )
        self.storage.disarm()
        return self.manager

    def _restart(self) -> None:
        """Abandon the manager and build a new one; its recovery removes every temporary."""
        if self.manager is not None:
            self.manager.close()  # releases the in-process lock; writes nothing
            self.manager = None
        self._open_manager()
        self.open.clear()
        for name in [n for n, (_, goes) in self.strays.items() if goes]:
            del self.strays[name]  # an abandoned temporary: recovery removes it

    def _call(self, label: str, crash_at: int | None, action: Callable[[], Any]) -> bool:
        """Run one manager call, killed before its ``crash_at``-th storage operation if it
        makes that many; ``True`` if it was killed (then the manager is a new one)."""
        storage = self.storage
        assert storage is not None
        if crash_at is not None:
            storage.arm(crash_at)
        try:
            action()
        except _Killed:
            event(f"killed in {label} before {storage.ops[-1].split()[0]}")
            self._restart()
            return True
        finally:
            storage.disarm()
        return False

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
        on_disk = {
            s: _read_checkpoint(self.directory / f"step_{s}")
            for s in range(STEP_RANGE)
            if (self.directory / f"step_{s}").is_dir()
            and not (self.directory / f"step_{s}").is_symlink()
            and f"step_{s}" not in self.strays
        }

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
        assert self.manager is not None
        pinned = {r.step for r in self.manager.list_checkpoints() if r.pinned}
        allowed = [p & on_disk.keys() for p in pin_outcomes]
        assert pinned in allowed, f"pins {pinned} after a crash, allowed: {allowed}"
        self.pins = pinned
        return found

    def _unchanged(self) -> None:
        """After a crash of a call that commits and deletes nothing: nothing changed."""
        self._settle([(dict(self.committed), {})], [set(self.pins)])

    @rule(crash_at=crash_points)
    def restart(self, crash_at: int | None) -> None:
        """Close the manager and open a new one (``crash_at``: die during its recovery,
        then open another)."""
        assert self.manager is not None
        expected = {self.directory / f"tmp_step_{s}" for s in self.open} | {
            self.directory / n for n, (_, goes) in self.strays.items() if goes
        }
        self.manager.close()
        self.manager = None
        try:
            self._open_manager(crash_at)
        except _Killed:
            assert self.storage is not None
            event(f"killed in recovery before {self.storage.ops[-1].split()[0]}")
            self._restart()
            self._unchanged()
            return
        actions = {(a.kind, a.path) for a in self.manager.recovery}
        assert actions == {("removed_temporary", path) for path in expected}
        self.open.clear()
        for name in [n for n, (_, goes) in self.strays.items() if goes]:
            del self.strays[name]

    # --- saving ---------------------------------------------------------------------------

    def _start(self, step: int, metric: object, crash_at: int | None = None) -> bool:
        """``init_tmp_checkpoint``; ``True`` if the temporary is open."""
        manager = self.manager
        assert manager is not None
        self.saves += 1
        given, stored = _stored_info(step, self.saves, metric)
        paths: list[Path] = []
        if self._call(
            "init_tmp", crash_at, lambda: paths.append(manager.init_tmp_checkpoint(step, given))
        ):
            self._unchanged()
            return False
        assert paths == [self.directory / f"tmp_step_{step}"]
        self.open[step] = Saved(stored)
        return True

    def _write(self, step: int, name: str, data: bytes) -> None:
        tmp = self.directory / f"tmp_step_{step}"
        if step not in self.open:
            assert not tmp.exists()
            return
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
        saved = self.open[step]
        self.open[step] = Saved(saved.info, {**saved.files, name: data})

    def _finalize(self, step: int, crash_at: int | None) -> bool:
        """``finalize_checkpoint`` of the temporary of ``step``; ``True`` if committed now."""
        manager = self.manager
        assert manager is not None
        path = self.directory / f"tmp_step_{step}"
        if step not in self.open:
            with pytest.raises(ckpt.InvalidCheckpointPathError):
                manager.finalize_checkpoint(path)
            return False
        if f"step_{step}" in self.strays:  # a file or link is in the way: refused, no change
            with pytest.raises(ckpt.CheckpointError, match=f"step_{step}"):
                manager.finalize_checkpoint(path)
            event("finalize refused: a stray is in the way")
            return False
        new = self.open[step]
        after = {**self.committed, step: new}
        keep = self.spec.keeps(after) | self.pins
        if self._call("finalize", crash_at, lambda: manager.finalize_checkpoint(path)):
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
        self.committed = {s: after[s] for s in keep}
        return step in self.committed

    def _save(self, step: int, metric: object, data: bytes, crash_at: int | None) -> Any:
        if not self._start(step, metric):
            return multiple()
        self._write(step, "model.bin", data)
        return step if self._finalize(step, crash_at) else multiple()

    @rule(target=tmps, step=st.integers(0, STEP_RANGE - 1), metric=metrics, crash_at=crash_points)
    def init_tmp(self, step: int, metric: object, crash_at: int | None) -> int:
        """Start a checkpoint (replacing an open temporary of the same step)."""
        self._start(step, metric, crash_at)
        return step

    @rule(step=tmps, name=file_names, data=contents)
    def write_file(self, step: int, name: str, data: bytes) -> None:
        """The loop writes (or rewrites) one of its files into an open temporary."""
        self._write(step, name, data)

    @rule(target=steps, step=tmps, crash_at=crash_points)
    def finalize(self, step: int, crash_at: int | None) -> Any:
        """Finalize a temporary (one that is gone since must be refused)."""
        return step if self._finalize(step, crash_at) else multiple()

    @rule(step=tmps, crash_at=crash_points)
    def abort(self, step: int, crash_at: int | None) -> None:
        """Abort a temporary (one that is gone since is a no-op)."""
        manager = self.manager
        assert manager is not None
        path = self.directory / f"tmp_step_{step}"
        if self._call("abort", crash_at, lambda: manager.abort_checkpoint(path)):
            self._unchanged()
            return
        self.open.pop(step, None)
        assert not path.exists()

    @rule(
        target=steps,
        step=st.integers(0, STEP_RANGE - 1),
        metric=metrics,
        data=contents,
        crash_at=crash_points,
    )
    def save(self, step: int, metric: object, data: bytes, crash_at: int | None) -> Any:
        """Start, write model.bin and finalize in one go (``crash_at``: in the finalize)."""
        return self._save(step, metric, data, crash_at)

    @rule(target=steps, step=steps, metric=metrics, data=contents, crash_at=crash_points)
    def overwrite(self, step: int, metric: object, data: bytes, crash_at: int | None) -> Any:
        """Save again at a step that is (or was) committed (``crash_at``: in the finalize)."""
        return self._save(step, metric, data, crash_at)

    # --- retention and pins ------------------------------------------------------------------

    @precondition(lambda self: bool(self.committed))
    @rule(exclude_latest=st.booleans(), crash_at=crash_points)
    def prune(self, exclude_latest: bool, crash_at: int | None) -> None:
        """``remove_old_checkpoints``; a crash may leave some of what it was deleting."""
        manager = self.manager
        assert manager is not None
        keep = self.spec.keeps(self.committed, with_latest=exclude_latest) | self.pins
        if exclude_latest and self.committed:
            keep.add(max(self.committed))
        if self._call("prune", crash_at, lambda: manager.remove_old_checkpoints(exclude_latest)):
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

    @rule(step=steps, pinned=st.booleans(), crash_at=crash_points)
    def pin(self, step: int, pinned: bool, crash_at: int | None) -> None:
        """``pin(step)`` or ``unpin(step)`` on a step that was committed (maybe pruned since)."""
        manager = self.manager
        assert manager is not None
        call = manager.pin if pinned else manager.unpin
        if step not in self.committed and not (not pinned and step in self.pins):
            with pytest.raises(ckpt.CheckpointNotFoundError):
                call(step)
            return
        after = self.pins | {step} if pinned else self.pins - {step}
        if self._call("pin", crash_at, lambda: call(step)):
            self._settle([(dict(self.committed), {})], [set(self.pins), after])
            return
        self.pins = after

    # --- strays ------------------------------------------------------------------------------

    @rule(kind=st.sampled_from(STRAY_KINDS), n=st.integers(0, STEP_RANGE - 1), data=contents)
    def add_stray(self, kind: str, n: int, data: bytes) -> None:
        reserved = RESERVED + n % 4
        name = {
            "file step_N": f"step_{n}",
            "link step_N": f"step_{n}",
            "dir step_N": f"step_{n}",
            "dir tmp_step_R": f"tmp_step_{reserved}",
            "file tmp_step_R": f"tmp_step_{reserved}",
            "link old_step_R": f"old_step_{reserved}",
        }.get(kind, kind)
        path = self.directory / name
        if os.path.lexists(path):
            return  # taken (by a checkpoint or another stray): nothing to add
        if kind.startswith("link"):
            path.symlink_to(self.outside, target_is_directory=True)
        elif kind.startswith("file") or kind == "notes.txt":
            path.write_bytes(data)
        else:
            path.mkdir()
            (path / "payload").write_bytes(data)
            info = b"{not json" if kind == "dir step_N" else json.dumps({METRIC: -1e9}).encode()
            (path / "training_info.json").write_bytes(info)
        self.strays[name] = (_describe(path), kind == "dir tmp_step_R")

    # --- reading ---------------------------------------------------------------------------

    @rule()
    def read_only_view(self) -> None:
        """A read-only manager beside the writer sees the same checkpoints and changes nothing."""
        before = sorted(os.listdir(self.directory))
        with CheckpointManager(
            self.spec.config(self.directory, fsync=self.fsync), read_only=True
        ) as reader:
            assert [r.step for r in reader.list_checkpoints()] == sorted(self.committed)
            assert [r.step for r in reader.list_checkpoints() if r.pinned] == sorted(self.pins)
            assert reader.get_latest_checkpoint_path() == self._path_of_latest()
            assert reader.get_best_checkpoint_path() == self._path_of_best()
        assert sorted(os.listdir(self.directory)) == before

    def _path_of_latest(self) -> str | None:
        return str(self.directory / f"step_{max(self.committed)}") if self.committed else None

    def _path_of_best(self) -> str | None:
        if not self.committed:
            return None
        best = _rank(self.committed, self.spec.higher_is_better)[0]
        return str(self.directory / f"step_{best}")

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        """Every check, in one invariant so a failing example prints one line per step."""
        assert self.pins <= self.committed.keys()  # a pinned step is never pruned
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
            | {f"step_{s}" for s in self.committed}
            | {f"tmp_step_{s}" for s in self.open}
            | self.strays.keys()
        )
        assert set(os.listdir(self.directory)) == expected

    def _checkpoints_are_byte_identical(self) -> None:
        for step, saved in self.committed.items():
            assert _read_checkpoint(self.directory / f"step_{step}") == saved, step
        for step, saved in self.open.items():
            assert _read_checkpoint(self.directory / f"tmp_step_{step}") == saved, step

    def _strays_are_untouched(self) -> None:
        for name, (description, _) in self.strays.items():
            assert _describe(self.directory / name) == description, name
        assert _read_tree(self.outside) == self.outside_before

    def _no_leftovers(self) -> None:
        meta = self.directory / ".ckpt"
        # A kill inside LocalStorage.replace_file leaves its `.NAME.partial` until the
        # next restart's recovery removes it.
        assert set(os.listdir(meta)) <= {
            "lock",
            "pins.json",
            "ranking.json",
            "trash",
            ".pins.json.partial",
            ".ranking.json.partial",
        }
        assert os.listdir(meta / "trash") == []
        leftovers = {n for n in os.listdir(self.directory) if n.startswith(("old_", "tmp_step"))}
        assert leftovers <= {f"tmp_step_{s}" for s in self.open} | self.strays.keys()

    def _the_manager_agrees(self) -> None:
        records = self.manager.list_checkpoints()
        assert [r.step for r in records] == sorted(self.committed)
        assert all(_STEP.fullmatch(r.path.name) for r in records)  # never a tmp or a stray
        assert all(r.path == self.directory / f"step_{r.step}" for r in records)
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


# Runs and steps come from the loaded profile (property_tests/conftest.py): ``ci`` keeps the
# whole directory well within its budget on 2 cores, ``thorough`` runs far more and longer.
ManagerMachine.TestCase.settings = settings(settings.default)
# The machine checks the disk against a model; which queries warn is tested elsewhere.
TestManagerMachine = pytest.mark.filterwarnings("ignore::ckpt.MissingMetricWarning")(
    ManagerMachine.TestCase
)
