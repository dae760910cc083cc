"""Restart recovery: leftovers of crashed saves and deletes, and crashes at every step."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import CheckpointManager, LocalStorage

Make = Callable[..., CheckpointManager]
Tree = Callable[[Path], dict[str, bytes]]


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def steps(manager: CheckpointManager) -> list[int]:
    return [record.step for record in manager.list_checkpoints()]


def trash(directory: Path) -> Path:
    return directory / ".ckpt" / "trash"


# --- leftovers made by hand --------------------------------------------------------------


def test_a_clean_directory_needs_no_recovery(
    make_manager: Make, write_step: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ckpt")
    manager = make_manager()
    assert manager.recovery == ()
    manager.close()
    write_step(manager.checkpoint_dir, "step_1", {})
    assert make_manager().recovery == ()
    assert [r for r in caplog.records if r.name == "ckpt"] == []


_USER_SCRIPT = """
import sys, warnings
import ckpt
if sys.argv[2] == "quiet":
    warnings.simplefilter("ignore", ckpt.CheckpointWarning)
manager = ckpt.CheckpointManager({"checkpoint_dir": sys.argv[1]})  # line 6
with manager.checkpoint(3, {"loss": float("nan")}):  # line 7
    pass
manager.close()
"""


@pytest.mark.subprocess
def test_what_recovery_changed_reaches_a_user_who_configured_no_logging(
    write_step: Callable[..., Path], ckpt_dir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "train.py"
    script.write_text(_USER_SCRIPT)

    def run(mode: str) -> str:
        write_step(ckpt_dir, "tmp_step_5", {"v": 5}, files={"model.bin": b"unfinished"})
        done = subprocess.run(
            [sys.executable, str(script), str(ckpt_dir), mode],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert done.stdout == ""
        return done.stderr

    said = run("default")
    # Python's own warning display, pointing at the user's line that caused each.
    assert (
        f"{script}:6: RecoveryWarning: recovery in {ckpt_dir}: removed tmp_step_5, left by "
        f"an unfinished save"
    ) in said, said
    assert (
        f"{script}:7: NonFiniteMetricWarning: training_info['loss'] is nan: stored as null"
    ) in said, said
    assert not (ckpt_dir / "tmp_step_5").exists()
    # One category filters them all.
    assert run("quiet") == ""
    assert not (ckpt_dir / "tmp_step_5").exists()


def test_tmp_step_is_removed(
    make_manager: Make, write_step: Callable[..., Path], ckpt_dir: Path, tree: Tree
) -> None:
    write_step(ckpt_dir, "step_4", {"v": 4}, files={"model.bin": b"four"})
    kept = tree(ckpt_dir / "step_4")
    write_step(ckpt_dir, "tmp_step_5", {"v": 5}, files={"model.bin": b"unfinished"})
    write_step(ckpt_dir, "tmp_step_6", None)  # a crash before training_info.json
    manager = make_manager()
    assert [(a.kind, a.path) for a in manager.recovery] == [
        ("removed_temporary", ckpt_dir / "tmp_step_5"),
        ("removed_temporary", ckpt_dir / "tmp_step_6"),
    ]
    assert names(ckpt_dir) == [".ckpt", "step_4"]
    assert tree(ckpt_dir / "step_4") == kept
    assert list(trash(ckpt_dir).iterdir()) == []
    assert steps(manager) == [4]


def test_old_step_without_step_is_renamed_back(
    make_manager: Make, write_step: Callable[..., Path], ckpt_dir: Path, tree: Tree
) -> None:
    old = write_step(ckpt_dir, "old_step_3", {"v": 3}, files={"model.bin": b"three", "a/b": b"c"})
    content = tree(old)
    manager = make_manager()
    assert [(a.kind, a.path) for a in manager.recovery] == [
        ("rolled_back_overwrite", ckpt_dir / "step_3")
    ]
    assert names(ckpt_dir) == [".ckpt", "step_3"]
    assert tree(ckpt_dir / "step_3") == content
    assert steps(manager) == [3]
    assert manager.load_training_info(manager.get_latest_checkpoint_path()) == {"v": 3}


def test_old_step_beside_its_step_is_removed(
    make_manager: Make, write_step: Callable[..., Path], ckpt_dir: Path, tree: Tree
) -> None:
    write_step(ckpt_dir, "old_step_2", {"v": "old"}, files={"model.bin": b"old"})
    write_step(ckpt_dir, "step_2", {"v": "new"}, files={"model.bin": b"new"})
    new = tree(ckpt_dir / "step_2")
    manager = make_manager()
    assert [(a.kind, a.path) for a in manager.recovery] == [
        ("removed_displaced", ckpt_dir / "old_step_2")
    ]
    assert names(ckpt_dir) == [".ckpt", "step_2"]
    assert tree(ckpt_dir / "step_2") == new
    assert list(trash(ckpt_dir).iterdir()) == []


def test_leftover_names_holding_files_ckpt_did_not_write_are_never_deleted(
    make_manager: Make,
    write_step: Callable[..., Path],
    ckpt_dir: Path,
    tree: Tree,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ckpt")
    write_step(ckpt_dir, "step_2", {"v": 2}, files={"m": b"2"})
    # A user's own directories under names ckpt uses, none with ckpt's training_info.json.
    mine = {
        "tmp_step_3": write_step(ckpt_dir, "tmp_step_3", None, files={"notes.txt": b"mine"}),
        "old_step_2": write_step(ckpt_dir, "old_step_2", None, files={"model.bin": b"mine"}),
        "step_4.0123456789ab": write_step(
            ckpt_dir, "step_4.0123456789ab", None, files={"deep/file": b"mine"}
        ),
    }
    before = {name: tree(path) for name, path in mine.items()}
    manager = make_manager()
    assert manager.recovery == ()
    assert {name: tree(path) for name, path in mine.items()} == before
    logged = caplog.text
    for name in mine:
        assert f"leaving {name} alone: it holds files but no training_info.json" in logged
    # A save of that step refuses rather than replacing the user's directory.
    with pytest.raises(ckpt.CheckpointError, match="cannot save step 3: tmp_step_3 holds files"):
        manager.init_tmp_checkpoint(3, {"v": 3})
    assert tree(mine["tmp_step_3"]) == before["tmp_step_3"]
    # Other steps save, and retention never touches the user's directories.
    manager.finalize_checkpoint(manager.init_tmp_checkpoint(5, {"v": 5}))
    assert steps(manager) == [2, 5]
    assert {name: tree(path) for name, path in mine.items()} == before


def test_trash_is_emptied(
    make_manager: Make, write_step: Callable[..., Path], ckpt_dir: Path
) -> None:
    write_step(ckpt_dir, "step_1", {})
    write_step(trash(ckpt_dir), "step_2.0123456789ab", {}, files={"model.bin": b"x"})
    write_step(trash(ckpt_dir), "tmp_step_3.ba9876543210", None, files={"d/e": b"y"})
    (trash(ckpt_dir) / "old_step_4.aaaaaaaaaaaa").write_bytes(b"a file")
    manager = make_manager()
    assert sorted((a.kind, a.path) for a in manager.recovery) == [
        ("finished_delete", trash(ckpt_dir) / "old_step_4.aaaaaaaaaaaa"),
        ("finished_delete", trash(ckpt_dir) / "step_2.0123456789ab"),
        ("finished_delete", trash(ckpt_dir) / "tmp_step_3.ba9876543210"),
    ]
    assert list(trash(ckpt_dir).iterdir()) == []
    assert names(ckpt_dir) == [".ckpt", "step_1"]
    assert steps(manager) == [1]


def test_a_link_in_the_trash_is_removed_not_followed(
    make_manager: Make, write_step: Callable[..., Path], ckpt_dir: Path, tree: Tree
) -> None:
    outside = write_step(ckpt_dir.parent, "outside", {}, files={"data": b"precious"})
    content = tree(outside)
    trash(ckpt_dir).mkdir(parents=True)
    (trash(ckpt_dir) / "step_5.0123456789ab").symlink_to(outside, target_is_directory=True)
    manager = make_manager()
    assert [a.kind for a in manager.recovery] == ["finished_delete"]
    assert list(trash(ckpt_dir).iterdir()) == []
    assert tree(outside) == content


def test_all_leftovers_at_once(
    make_manager: Make,
    write_step: Callable[..., Path],
    ckpt_dir: Path,
    tree: Tree,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ckpt")
    write_step(ckpt_dir, "step_1", {"v": 1}, files={"m": b"1"})
    write_step(ckpt_dir, "step_2", {"v": 2}, files={"m": b"2 new"})
    write_step(ckpt_dir, "old_step_2", {"v": -2}, files={"m": b"2 old"})
    write_step(ckpt_dir, "old_step_3", {"v": 3}, files={"m": b"3"})
    write_step(ckpt_dir, "tmp_step_3", {"v": 33}, files={"m": b"3 half"})
    write_step(ckpt_dir, "tmp_step_10", {"v": 10})
    write_step(trash(ckpt_dir), "step_0.0123456789ab", {"v": 0})
    expected = {name: tree(ckpt_dir / name) for name in ("step_1", "step_2", "old_step_3")}
    manager = make_manager()
    assert sorted((a.kind, a.path.name) for a in manager.recovery) == [
        ("finished_delete", "step_0.0123456789ab"),
        ("removed_displaced", "old_step_2"),
        ("removed_temporary", "tmp_step_10"),
        ("removed_temporary", "tmp_step_3"),
        ("rolled_back_overwrite", "step_3"),
    ]
    assert all(isinstance(a, ckpt.RecoveryAction) for a in manager.recovery)
    assert all(isinstance(a.detail, str) and a.detail for a in manager.recovery)
    assert names(ckpt_dir) == [".ckpt", "step_1", "step_2", "step_3"]
    assert tree(ckpt_dir / "step_1") == expected["step_1"]
    assert tree(ckpt_dir / "step_2") == expected["step_2"]
    assert tree(ckpt_dir / "step_3") == expected["old_step_3"]
    assert list(trash(ckpt_dir).iterdir()) == []
    assert steps(manager) == [1, 2, 3]

    warnings = [r for r in caplog.records if r.name == "ckpt" and r.levelno == logging.WARNING]
    logged = " ".join(r.getMessage() for r in warnings)
    for leftover in ("tmp_step_10", "tmp_step_3", "old_step_3", "old_step_2", "step_0"):
        assert leftover in logged
    assert len(warnings) >= len(manager.recovery)

    manager.close()
    assert make_manager().recovery == ()  # a second restart finds nothing to do


def test_entries_that_are_not_directories_are_left_alone(
    make_manager: Make,
    write_step: Callable[..., Path],
    ckpt_dir: Path,
    snapshot: Callable[[Path], Any],
) -> None:
    outside = write_step(ckpt_dir.parent, "outside", {"v": 1}, files={"data": b"precious"})
    ckpt_dir.mkdir()
    (ckpt_dir / "tmp_step_3").symlink_to(outside, target_is_directory=True)
    (ckpt_dir / "old_step_4").symlink_to(outside, target_is_directory=True)
    (ckpt_dir / "tmp_step_5").write_bytes(b"a file")
    (ckpt_dir / "old_step_6").write_bytes(b"a file")
    write_step(ckpt_dir, "old_step_7", {"v": 7})  # its step_7 is a file: leave both
    (ckpt_dir / "step_7").write_bytes(b"not a checkpoint")
    write_step(ckpt_dir, "tmp_step_08", {})  # not our name
    write_step(ckpt_dir, "old_step_x", {})
    before = snapshot(ckpt_dir)
    outside_before = snapshot(outside)
    manager = make_manager()
    assert manager.recovery == ()
    after = snapshot(ckpt_dir)
    assert {k: v for k, v in after.items() if not k.startswith(".ckpt") and k != "."} == {
        k: v for k, v in before.items() if k != "."
    }
    assert snapshot(outside) == outside_before
    assert steps(manager) == []


def test_read_only_does_no_recovery(
    make_manager: Make,
    write_step: Callable[..., Path],
    ckpt_dir: Path,
    snapshot: Callable[[Path], Any],
) -> None:
    write_step(ckpt_dir, "step_1", {})
    write_step(ckpt_dir, "tmp_step_2", {})
    write_step(ckpt_dir, "old_step_3", {})
    write_step(ckpt_dir, "old_step_1", {})
    write_step(trash(ckpt_dir), "step_4.0123456789ab", {})
    before = snapshot(ckpt_dir)
    reader = make_manager(read_only=True)
    assert reader.recovery == ()
    assert steps(reader) == [1]
    reader.refresh()
    disabled = make_manager(enabled=False)
    assert disabled.recovery == ()
    assert steps(disabled) == [1]
    assert snapshot(ckpt_dir) == before

    writer = make_manager()
    assert len(writer.recovery) == 4
    assert steps(reader) == [1, 3]  # the reader sees the writer's recovery
    assert names(ckpt_dir) == [".ckpt", "step_1", "step_3"]


def test_managers_sharing_a_directory_report_the_same_recovery(
    make_manager: Make, write_step: Callable[..., Path], ckpt_dir: Path
) -> None:
    write_step(ckpt_dir, "tmp_step_1", {})
    first = make_manager()
    second = make_manager()
    assert [a.kind for a in first.recovery] == ["removed_temporary"]
    assert second.recovery == first.recovery


def test_a_second_manager_sees_the_disk_as_it_is_and_repairs_a_crash(
    make_manager: Make, save: Any, ckpt_dir: Path, write_step: Callable[..., Path]
) -> None:
    first = make_manager()
    save(first, 1, {"v": 1}, {"model.bin": b"one"})
    save(first, 2, {"v": 2}, {"model.bin": b"two"})
    # Meanwhile the directory changes under it: what a crash between the two renames of
    # NeMo RL's overwrite of step 2 leaves.
    (ckpt_dir / "step_2").rename(ckpt_dir / "old_step_2")
    write_step(ckpt_dir, "tmp_step_2", {"v": "new, unfinished"})
    second = make_manager()
    assert second.get_latest_checkpoint_path() == str(ckpt_dir / "step_2")
    assert (ckpt_dir / "step_2" / "model.bin").read_bytes() == b"two"  # rolled back
    assert names(ckpt_dir) == [".ckpt", "step_1", "step_2"]
    assert sorted(a.kind for a in second.recovery) == ["removed_temporary", "rolled_back_overwrite"]
    assert first.get_latest_checkpoint_path() == second.get_latest_checkpoint_path()


def test_a_second_manager_never_reports_a_step_that_is_gone(
    make_manager: Make, save: Any, ckpt_dir: Path, tmp_path: Path
) -> None:
    first = make_manager(metric_name="v")
    for step in (1, 2, 3):
        save(first, step, {"v": step})
    (ckpt_dir / "step_3").rename(tmp_path / "moved-away")
    second = make_manager(metric_name="v")
    assert steps(second) == steps(first) == [1, 2]
    assert second.get_best_checkpoint_path() == str(ckpt_dir / "step_2")
    assert first.get_latest_checkpoint_path() == str(ckpt_dir / "step_2")


def test_a_second_manager_leaves_a_live_save_of_its_process_alone(
    make_manager: Make, ckpt_dir: Path
) -> None:
    first = make_manager()
    tmp = first.init_tmp_checkpoint(5, {"v": 5})
    (tmp / "model.bin").write_bytes(b"being written")
    second = make_manager()
    assert second.recovery == ()
    assert (tmp / "model.bin").read_bytes() == b"being written"
    first.finalize_checkpoint(tmp)
    assert steps(second) == [5]


# --- crash injection ---------------------------------------------------------------------


class _Crash(Exception):
    """Stands for the process being killed: the interrupted operation is not done."""


class _CrashingStorage(LocalStorage):
    """Dies at the ``at``-th rename, exchange or remove_tree once armed."""

    def __init__(self, at: int, *, can_exchange: bool, armed: bool = False) -> None:
        self.at = at
        self.can_exchange = can_exchange
        self.armed = armed
        self.count = 0
        self.ops: list[str] = []

    def _tick(self, what: str) -> None:
        if not self.armed:
            return
        self.count += 1
        self.ops.append(what)
        if self.count == self.at:
            raise _Crash(f"killed before {what}")

    def rename(self, src: str, dst: str) -> None:
        src, dst = Path(src), Path(dst)
        self._tick(f"rename {src.name} -> {dst.name}")
        super().rename(src, dst)

    def exchange(self, a: str, b: str) -> bool:
        a, b = Path(a), Path(b)
        self._tick(f"exchange {a.name} <-> {b.name}")
        if not self.can_exchange:
            return False
        return super().exchange(a, b)

    def remove_tree(self, path: str) -> None:
        path = Path(path)
        self._tick(f"remove_tree {path.name}")
        super().remove_tree(path)


def _config(directory: Path) -> dict[str, Any]:
    return {"checkpoint_dir": str(directory), "metric_name": "score", "keep_top_k": 2}


_BEFORE = {1: 0.5, 2: 0.9, 3: 0.1}


def _prepare(directory: Path, tree: Tree) -> dict[int, dict[str, bytes]]:
    """Finalize steps 1-3 (Hybrid top-2 keeps all three), return their files."""
    with CheckpointManager(_config(directory)) as manager:
        for step, score in _BEFORE.items():
            with manager.checkpoint(step, {"score": score}, {"step": step}) as path:
                (path / "model.bin").write_bytes(f"model {step}".encode() * 100)
                (path / "optim").mkdir()
                (path / "optim" / "state.bin").write_bytes(f"optim {step}".encode())
        assert steps(manager) == [1, 2, 3]
    return {step: tree(directory / f"step_{step}") for step in _BEFORE}


def _check_consistent(
    directory: Path, old: dict[int, dict[str, bytes]], new3: dict[str, bytes], tree: Tree
) -> str:
    """Reopen ``directory`` and check that no finalized data was lost; say which step_3."""
    with CheckpointManager(_config(directory)) as manager:
        leftovers = [n for n in names(directory) if not n.startswith("step_")]
        assert leftovers == [".ckpt"]
        assert list(trash(directory).iterdir()) == []
        on_disk = sorted(int(n.removeprefix("step_")) for n in names(directory)[1:])
        assert steps(manager) == on_disk
        assert tree(directory / "step_2") == old[2]
        step3 = tree(directory / "step_3")
        if step3 == old[3]:
            outcome = "old"
            assert on_disk == [1, 2, 3]  # nothing is pruned before the new copy is in
            assert tree(directory / "step_1") == old[1]
        else:
            outcome = "new"
            record = step3.pop(".ckpt-files.json")  # written into it as it was committed
            assert step3 == new3
            assert sorted(f["path"] for f in json.loads(record)["files"]) == sorted(new3)
            if 1 in on_disk:
                assert tree(directory / "step_1") == old[1]
        score = 0.95 if outcome == "new" else _BEFORE[3]
        assert manager.load_training_info(directory / "step_3") == {"score": score}
        assert manager.get_latest_checkpoint_path() == str(directory / "step_3")
        best = 3 if outcome == "new" else 2
        assert manager.get_best_checkpoint_path() == str(directory / f"step_{best}")
        return outcome


def _overwrite_step_3(manager: CheckpointManager) -> tuple[Path, dict[str, bytes]]:
    tmp = manager.init_tmp_checkpoint(3, {"score": 0.95}, {"step": 3, "resumed": True})
    (tmp / "model.bin").write_bytes(b"resumed model" * 100)
    (tmp / "extra.bin").write_bytes(b"only in the new copy")
    return tmp, {
        str(p.relative_to(tmp)): p.read_bytes() for p in sorted(tmp.rglob("*")) if p.is_file()
    }


def _crashed_overwrite(
    directory: Path, tree: Tree, at: int, can_exchange: bool
) -> tuple[bool, dict[int, dict[str, bytes]], dict[str, bytes], _CrashingStorage]:
    """Overwrite step 3 with a crash at storage operation ``at``; True if it crashed."""
    old = _prepare(directory, tree)
    storage = _CrashingStorage(at, can_exchange=can_exchange)
    manager = CheckpointManager(_config(directory), storage=storage)
    try:
        tmp, new3 = _overwrite_step_3(manager)
        storage.armed = True
        manager.finalize_checkpoint(tmp)
    except _Crash:
        return True, old, new3, storage
    finally:
        manager.close()
    return False, old, new3, storage


@pytest.mark.parametrize("can_exchange", [True, False], ids=["exchange", "two-renames"])
@pytest.mark.usefixtures("deletes_inline")
def test_a_crash_at_any_point_of_an_overwrite_loses_nothing(
    tmp_path: Path, tree: Tree, can_exchange: bool
) -> None:
    outcomes: list[str] = []
    for at in range(1, 50):
        directory = tmp_path / f"crash_at_{at}"
        crashed, old, new3, storage = _crashed_overwrite(directory, tree, at, can_exchange)
        outcomes.append(_check_consistent(directory, old, new3, tree))
        if not crashed:
            break
    else:
        pytest.fail("finalize never completed")
    # the last run completed: the new copy is in and retention pruned step 1
    assert names(directory) == [".ckpt", "step_2", "step_3"]
    assert outcomes[-1] == "new"
    # the crash points covered both sides of the publish
    assert "old" in outcomes[:-1]
    assert "new" in outcomes[:-1]
    assert len(outcomes) >= (6 if can_exchange else 7)
    assert any(op.startswith("remove_tree") for op in storage.ops)


@pytest.mark.parametrize("can_exchange", [True, False], ids=["exchange", "two-renames"])
@pytest.mark.usefixtures("deletes_inline")
def test_a_crash_during_recovery_is_recovered_later(
    tmp_path: Path, tree: Tree, can_exchange: bool
) -> None:
    """Crash an overwrite at every point, then crash the recovery at every point too."""
    checked = 0
    for at in range(1, 20):
        for recovery_at in range(1, 20):
            directory = tmp_path / f"crash_{at}_{recovery_at}"
            crashed, old, new3, storage = _crashed_overwrite(directory, tree, at, can_exchange)
            if not crashed:
                break  # nothing crashed: no recovery to interrupt
            recovering = _CrashingStorage(recovery_at, can_exchange=can_exchange, armed=True)
            try:
                CheckpointManager(_config(directory), storage=recovering).close()
            except _Crash:
                crashed_in_recovery = True
            else:
                crashed_in_recovery = False
            _check_consistent(directory, old, new3, tree)
            checked += 1
            if not crashed_in_recovery:
                break
        else:
            pytest.fail("recovery never completed")
        if storage.count < storage.at:  # the overwrite itself did not crash
            break
    assert checked >= 6


def test_a_crash_while_pruning_loses_only_what_was_to_be_pruned(tmp_path: Path, tree: Tree) -> None:
    for at in range(1, 20):
        directory = tmp_path / f"prune_{at}"
        old = _prepare(directory, tree)
        storage = _CrashingStorage(at, can_exchange=True)
        config = {**_config(directory), "keep_top_k": 1}
        manager = CheckpointManager(config, storage=storage)
        storage.armed = True
        try:
            manager.remove_old_checkpoints(exclude_latest=False)  # prunes 1 and 3
        except _Crash:
            finished = False
        else:
            finished = True
        finally:
            manager.close()
        with CheckpointManager(config) as again:
            assert names(directory)[0] == ".ckpt"
            assert list(trash(directory).iterdir()) == []
            remaining = steps(again)
            assert 2 in remaining
            assert set(remaining) <= {1, 2, 3}
            for step in remaining:
                assert tree(directory / f"step_{step}") == old[step]
            assert names(directory)[1:] == [f"step_{s}" for s in remaining]
        if finished:
            assert remaining == [2]
            break
    else:
        pytest.fail("pruning never completed")


# --- a power cut may keep later names and lose earlier ones (issue 36 #22) -------------------


class _Ordering(LocalStorage):
    """Local disk, logging what is created and which directories are synced, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str]] = []

    def write_bytes(self, path: str, data: bytes) -> None:
        self.log.append(("create", path))
        super().write_bytes(path, data)

    def open_write(self, path: str, *, durable: bool) -> Any:
        self.log.append(("create", path))
        return super().open_write(path, durable=durable)

    def sync_dir(self, path: str) -> None:
        self.log.append(("sync", path))
        super().sync_dir(path)


def test_an_attempts_training_info_is_durable_before_any_other_file_is_created(
    tmp_path: Path,
) -> None:
    storage = _Ordering()
    directory = tmp_path / "run"
    with CheckpointManager({"checkpoint_dir": str(directory)}, storage=storage) as manager:
        path = manager.init_tmp_checkpoint(3, {"step": 3}, {"lr": 0.1})
        tmp = str(path)
        # Whatever survives a power cut that keeps any later name in tmp_step_3 keeps
        # this one: tmp_step_3 was synced after it and before anything else was created.
        first = storage.log.index(("create", f"{tmp}/training_info.json"))
        later = [i for i, (op, p) in enumerate(storage.log) if op == "create" and p.startswith(tmp)]
        synced = storage.log.index(("sync", tmp), first)
        assert [i for i in later if i > first] == [i for i in later if i > synced]
        (path / "payload.bin").write_bytes(b"x")
        manager.finalize_checkpoint(path)


def test_ckpt_check_and_recovery_agree_on_a_temporary_ckpt_did_not_make(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    config = {"checkpoint_dir": str(directory), "fsync": False}
    with CheckpointManager(config) as manager, manager.checkpoint(1, {"step": 1}):
        pass
    foreign = directory / "tmp_step_2"
    foreign.mkdir()
    (foreign / "payload.bin").write_bytes(b"someone's")
    report = ckpt.verify(directory)
    (problem,) = report.problems
    assert problem.code == "unrecognized_entry"
    assert "no training_info.json, so ckpt did not make it" in problem.message
    assert "which removes it" not in problem.hint
    with CheckpointManager({"checkpoint_dir": str(directory), "fsync": False}) as manager:
        assert (foreign / "payload.bin").read_bytes() == b"someone's"  # recovery left it
        with pytest.raises(ckpt.CheckpointError, match="tmp_step_2 holds files but no"):
            manager.init_tmp_checkpoint(2, {"step": 2})
