"""Deletes off the save's path: the reaper removes what a delete took out of sight."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import ckpt
from ckpt.commit import reaper
from ckpt.storage import LocalStorage

Make = Callable[..., ckpt.CheckpointManager]
Save = Callable[..., Path]


class _SlowRemovals(LocalStorage):
    """Local disk whose removals wait for the test (a slow NFS delete), on any thread."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.removers: list[str] = []
        self.removed: list[str] = []

    def remove_tree(self, path: str) -> None:
        self.removers.append(threading.current_thread().name)
        if not self.go.wait(30):
            raise TimeoutError("the test never let the removal go")
        super().remove_tree(path)
        self.removed.append(path)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _trash(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in (ckpt_dir / ".ckpt" / "trash").iterdir())


def test_a_pruning_save_returns_before_the_removal_and_close_finishes_it(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    storage = _SlowRemovals()
    manager = make_manager(
        storage=storage, keep_top_k=1, metric_name="loss", higher_is_better=False
    )
    save(manager, 1, {"loss": 0.5}, files={"model.bin": b"one"})
    save(manager, 2, {"loss": 0.1}, files={"model.bin": b"two"})  # prunes step 1
    # The save returned with step 1 out of sight, its files still in the trash.
    assert names(ckpt_dir) == [".ckpt", "step_2"]
    assert [name.split(".")[0] for name in _trash(ckpt_dir)] == ["step_1"]
    assert [r.step for r in manager.list_checkpoints()] == [2]
    report = ckpt.verify(ckpt_dir)
    assert report.writer_active
    assert [p.name.split(".")[0] for p in report.deleting] == ["step_1"]
    assert report.ok
    assert "step_1" in report.to_dict()["deleting"][0]
    storage.go.set()
    manager.close()
    assert _trash(ckpt_dir) == []
    assert storage.removers  # on the reaper's thread, never the saving loop's
    assert all(name.startswith("ckpt-reaper") for name in storage.removers)


def test_wait_until_finished_waits_for_the_removals(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    storage = _SlowRemovals()
    manager = make_manager(storage=storage, keep_top_k=1)
    save(manager, 1)
    save(manager, 2)
    done = threading.Event()

    def wait() -> None:
        manager.wait_until_finished()
        done.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert not done.wait(0.3)  # the removal is held: so is the wait
    storage.go.set()
    waiter.join(10)
    assert done.is_set()
    assert _trash(ckpt_dir) == []


def test_a_full_backlog_makes_the_next_delete_wait_then_leaves_it_to_recovery(
    make_manager: Make,
    save: Save,
    ckpt_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(reaper, "BACKLOG", 1)
    monkeypatch.setattr(reaper, "WAIT_S", 0.3)
    storage = _SlowRemovals()
    manager = make_manager(storage=storage, keep_top_k=1)
    for step in range(1, 5):  # steps 1-3 pruned: one removing, one waiting, one left
        save(manager, step)
    assert "the reaper of" in caplog.text
    assert "left" in caplog.text
    assert len(_trash(ckpt_dir)) == 3
    storage.go.set()
    manager.close()
    assert [name.split(".")[0] for name in _trash(ckpt_dir)] == ["step_3"]  # never queued
    # What the full backlog left behind, the next writer's recovery removes.
    reopened = ckpt.CheckpointManager({"checkpoint_dir": str(ckpt_dir), "keep_top_k": 1})
    assert [a.kind for a in reopened.recovery] == ["finished_delete"]
    reopened.close()
    assert _trash(ckpt_dir) == []


def test_a_failed_removal_is_logged_and_the_entry_is_left_for_recovery(
    make_manager: Make, save: Save, ckpt_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class _Refuses(LocalStorage):
        def remove_tree(self, path: str) -> None:
            raise PermissionError(13, "permission denied", path)

    manager = make_manager(storage=_Refuses(), keep_top_k=1)
    save(manager, 1)
    save(manager, 2)
    manager.wait_until_finished()  # no hang, no exception: it is logged
    assert "could not remove" in caplog.text
    assert [name.split(".")[0] for name in _trash(ckpt_dir)] == ["step_1"]
    manager.close()
    reopened = ckpt.CheckpointManager({"checkpoint_dir": str(ckpt_dir), "keep_top_k": 1})
    assert [a.kind for a in reopened.recovery] == ["finished_delete"]
    reopened.close()
    assert _trash(ckpt_dir) == []


def test_a_deleted_attempt_waiting_for_the_reaper_cannot_be_finalized_or_aborted(
    make_manager: Make, ckpt_dir: Path
) -> None:
    storage = _SlowRemovals()
    manager = make_manager(storage=storage, keep_top_k=1, commit_protocol="manifest")
    first = manager.init_tmp_checkpoint(1, {})
    manager.finalize_checkpoint(first)
    second = manager.init_tmp_checkpoint(2, {})
    manager.finalize_checkpoint(second)  # prunes step 1: its attempt waits for the reaper
    assert first.exists()
    with pytest.raises(ckpt.InvalidCheckpointPathError, match="does not exist"):
        manager.finalize_checkpoint(first)
    manager.abort_checkpoint(first)  # a no-op: the reaper removes it
    assert [r.step for r in manager.list_checkpoints()] == [2]
    storage.go.set()
    manager.wait_until_finished()
    assert not first.exists()
    assert names(ckpt_dir) == [".ckpt", second.name, "step_2.manifest.json"]


def test_the_cli_check_says_what_is_being_deleted(
    make_manager: Make, save: Save, ckpt_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ckpt.cli import main

    storage = _SlowRemovals()
    manager = make_manager(storage=storage, keep_top_k=1)
    save(manager, 1)
    save(manager, 2)
    try:
        assert main(["check", str(ckpt_dir)]) == 0
        out = capsys.readouterr().out
        assert "deleting: 1 deleted checkpoint whose files the writer is removing" in out
    finally:
        storage.go.set()


def test_the_reaper_removes_in_order_one_at_a_time(tmp_path: Path) -> None:
    storage = _SlowRemovals()
    paths = []
    for i in range(3):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "f").write_bytes(b"x")
        paths.append(str(tmp_path / f"d{i}"))
    one = reaper.Reaper(storage, "t")
    for path in paths:
        one.submit(path)
    assert one.pending() == tuple(paths)
    assert not one.flush(timeout=0.2)
    storage.go.set()
    assert one.flush(timeout=10)
    assert storage.removed == paths
    assert one.pending() == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_reaper_thread_survives_what_a_removal_raises(tmp_path: Path) -> None:
    calls: list[str] = []

    class _Once(LocalStorage):
        def remove_tree(self, path: str) -> None:
            calls.append(path)
            if len(calls) == 1:
                raise RuntimeError("not an OSError")
            super().remove_tree(path)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = reaper.Reaper(_Once(), "t")
    one.submit(str(tmp_path / "a"))
    one.submit(str(tmp_path / "b"))
    assert one.flush(timeout=10)
    assert calls == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert not (tmp_path / "b").exists()
    assert (tmp_path / "a").exists()  # left for recovery


EXITS_WITHOUT_CLOSE = """
import sys, time
import ckpt
from ckpt.storage import LocalStorage

class Slow(LocalStorage):
    def remove_tree(self, path):
        time.sleep(1.0)  # a slow delete, still running when the loop ends
        super().remove_tree(path)

manager = ckpt.CheckpointManager(
    {"checkpoint_dir": sys.argv[1], "keep_top_k": 1, "fsync": False}, storage=Slow()
)
for step in (1, 2):
    manager.finalize_checkpoint(manager.init_tmp_checkpoint(step, {}))
print("saved", flush=True)
"""


@pytest.mark.subprocess
def test_a_process_that_exits_without_close_still_finishes_its_removals(
    ckpt_dir: Path,
) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", EXITS_WITHOUT_CLOSE, str(ckpt_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "saved\n"
    assert names(ckpt_dir) == [".ckpt", "step_2"]
    assert _trash(ckpt_dir) == []
