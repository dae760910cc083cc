"""Fixtures shared by the manager tests.

Managers of one directory share state in a process until they are closed, so every
manager a test builds through `make_manager` is closed when the test ends; a test that
simulates a restart closes the old manager itself and builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt.commit import reaper

Snapshot = dict[str, tuple[str, int, str]]


def snapshot_tree(root: Path) -> Snapshot:
    """Describe everything under ``root`` (and ``root``), never following links.

    Each entry maps its relative path to (kind, mtime in ns, sha256 of the contents for a
    file, the target for a link, "" for a directory). An absent ``root`` gives ``{}``.
    """
    out: Snapshot = {}
    if not os.path.lexists(root):
        return out

    def describe(full: str) -> tuple[str, int, str]:
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            return ("link", st.st_mtime_ns, os.readlink(full))
        if stat.S_ISDIR(st.st_mode):
            return ("dir", st.st_mtime_ns, "")
        with open(full, "rb") as f:
            return ("file", st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest())

    out["."] = describe(str(root))
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = describe(full)
    return out


def read_tree(root: Path) -> dict[str, bytes]:
    """Return the contents of every regular file under ``root``, by relative path."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


@pytest.fixture
def deletes_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove deleted checkpoints' files on the caller's thread, not the reaper's.

    For tests that crash a process at each of its storage operations, counted in
    order: on the reaper's thread a crash would stop that thread, not the process.
    """
    monkeypatch.setattr(reaper, "BACKGROUND", False)


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    """The checkpoint directory of a test (not created)."""
    return tmp_path / "ckpts"


@pytest.fixture
def make_manager(ckpt_dir: Path) -> Iterator[Callable[..., ckpt.CheckpointManager]]:
    """Build managers from config keys (``fsync`` off unless given); all closed at the end.

    ``retention`` given as a mapping is the config's ``retention:`` block; given as an
    object it is the manager's ``retention=`` override.
    """
    made: list[ckpt.CheckpointManager] = []

    def make(
        *,
        retention: Any = None,
        ranking: Any = None,
        read_only: bool = False,
        storage: Any = None,
        **config: Any,
    ) -> ckpt.CheckpointManager:
        config.setdefault("checkpoint_dir", str(ckpt_dir))
        config.setdefault("fsync", False)
        if isinstance(retention, Mapping):
            config["retention"], retention = retention, None
        manager = ckpt.CheckpointManager(
            config, retention=retention, ranking=ranking, read_only=read_only, storage=storage
        )
        made.append(manager)
        return manager

    yield make
    for manager in reversed(made):
        manager.close()


@pytest.fixture
def save() -> Callable[..., Path]:
    """Save a checkpoint the way a training loop does: init, write files, finalize."""

    def do_save(
        manager: ckpt.CheckpointManager,
        step: int,
        info: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> Path:
        tmp = manager.init_tmp_checkpoint(step, dict(info or {}), run_config)
        for name, data in (files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        manager.finalize_checkpoint(tmp)
        return manager.checkpoint_dir / f"step_{step}"

    return do_save


@pytest.fixture
def write_step() -> Callable[..., Path]:
    """Make a checkpoint directory by hand, as the seed (or a crash) would leave it.

    ``info`` is written as JSON (NaN spelled as the seed's ``json.dump`` spells it);
    ``raw_info`` writes those bytes instead; ``info=None`` with no ``raw_info`` writes no
    ``training_info.json`` at all.
    """

    def make(
        parent: Path,
        name: str,
        info: Mapping[str, Any] | None = None,
        *,
        raw_info: bytes | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> Path:
        path = parent / name
        path.mkdir(parents=True)
        if raw_info is not None:
            (path / "training_info.json").write_bytes(raw_info)
        elif info is not None:
            (path / "training_info.json").write_text(json.dumps(dict(info)))
        for rel, data in (files or {}).items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(data)
        return path

    return make


@pytest.fixture
def snapshot() -> Callable[[Path], Snapshot]:
    """`snapshot_tree` as a fixture."""
    return snapshot_tree


@pytest.fixture
def tree() -> Callable[[Path], dict[str, bytes]]:
    """`read_tree` as a fixture."""
    return read_tree


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The real paths ``os.fsync`` is called on from now on, in order (fsync still runs)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name fsynced descriptors")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced


_HOLDER = textwrap.dedent(
    """
    import sys
    import time

    import ckpt

    manager = ckpt.CheckpointManager({"checkpoint_dir": sys.argv[1], "fsync": False})
    path = manager.init_tmp_checkpoint(7, {"v": 7})
    (path / "model.bin").write_bytes(b"half written")
    print("ready", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def writer_elsewhere(ckpt_dir: Path) -> Callable[[], AbstractContextManager[None]]:
    """A block during which another process is the writer of ``ckpt_dir``.

    It holds the lock with a half-written ``tmp_step_7`` and is killed with SIGKILL when
    the block ends, leaving that temporary behind for recovery.
    """

    @contextmanager
    def hold() -> Iterator[None]:
        with subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(ckpt_dir)], stdout=subprocess.PIPE, text=True
        ) as holder:
            try:
                assert holder.stdout is not None
                assert holder.stdout.readline() == "ready\n"
                yield
            finally:
                holder.send_signal(signal.SIGKILL)
                holder.wait(timeout=30)
        assert holder.returncode == -signal.SIGKILL

    return hold
