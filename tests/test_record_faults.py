"""Records under the faults users meet: copied, crafted, unreadable, added to (issue 36).

A checkpoint's record (``.ckpt-files.json`` or its manifest) holds every file's size
and digest. A check compares sizes from it without reading data, reports files added
after the commit, calls an unreadable record a problem and still checks a state file's
own trailer, and the damage a deep check found stays found when the directory is
copied or touched, and goes only when the step is saved again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ckpt

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.torch]


def _run(tmp_path: Path, steps: tuple[int, ...] = (1, 2)) -> Path:
    root = tmp_path / "run"
    with ckpt.CheckpointManager({"checkpoint_dir": str(root), "fsync": False}) as manager:
        for step in steps:
            manager.save(step, {"step": step}, {"w": torch.full((5000,), float(step))})
    return root


def _codes(report: ckpt.VerifyReport) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in report.problems:
        found.setdefault(p.code, []).append(Path(str(p.path)).name)
    return found


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _latest(root: Path) -> str | None:
    with ckpt.CheckpointManager({"checkpoint_dir": str(root)}, read_only=True) as reader:
        found = reader.get_latest_checkpoint_path()
    return None if found is None else Path(found).name


# --- #21: the shallow check compares sizes from the record ----------------------------------


def test_a_file_cut_after_its_commit_fails_the_shallow_check(tmp_path: Path) -> None:
    root = _run(tmp_path)
    state = root / "step_2" / "state.ckpt"
    with state.open("r+b") as f:
        f.truncate(state.stat().st_size - 100)
    report = ckpt.verify(root)
    assert not report.ok
    assert _codes(report) == {"size_mismatch": ["state.ckpt"]}
    message = report.problems[0].message
    assert "step_2/state.ckpt is" in message
    assert "as recorded at its commit" in message


# --- #16: files the record does not list --------------------------------------------------


def test_a_file_added_after_the_commit_is_reported_and_never_replicated(tmp_path: Path) -> None:
    root = _run(tmp_path)
    (root / "step_2" / "extra.bin").write_bytes(b"added later")
    for deep in (False, True):
        report = ckpt.verify(root, deep=deep)
        assert _codes(report) == {"unrecorded_file": ["extra.bin"]}, deep
        assert "not in the record made at step 2's commit" in report.problems[0].message
    # Replication copies what the record lists, and nothing else.
    config = {
        "checkpoint_dir": str(root),
        "fsync": False,
        "replicate": {"to": str(tmp_path / "replica"), "keep_local": 2},
    }
    with ckpt.CheckpointManager(config) as manager:
        assert manager.wait_for_replication(60)
    assert not (tmp_path / "replica" / "step_2" / "extra.bin").exists()
    assert ckpt.verify(tmp_path / "replica", deep=True).ok


# --- #12: an unreadable record is a problem; the state file's trailer still checks ---------


def _make_big(path: Path) -> None:
    path.unlink()
    path.write_bytes(b"{" + b" " * (65 << 20) + b"}")


def _make_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _make_link(path: Path) -> None:
    target = path.with_name("elsewhere.json")
    path.rename(target)
    path.symlink_to(target.name)


@pytest.mark.parametrize("spoil", [_make_big, _make_dir, _make_fifo, _make_link])
def test_an_unreadable_record_is_reported_and_a_flipped_state_file_still_found(
    tmp_path: Path, spoil: Callable[[Path], None]
) -> None:
    root = _run(tmp_path)
    spoil(root / "step_2" / ".ckpt-files.json")
    _flip(root / "step_2" / "state.ckpt")
    report = ckpt.verify(root, deep=True)
    codes = _codes(report)
    assert codes["unreadable_record"] == [".ckpt-files.json"]
    assert codes["checksum_mismatch"] == ["state.ckpt"]
    assert not report.ok
    assert _latest(root) == "step_1"  # remembered: latest skips it


def test_an_unreadable_record_alone_is_still_an_error_of_the_shallow_check(
    tmp_path: Path,
) -> None:
    root = _run(tmp_path)
    _make_dir(root / "step_2" / ".ckpt-files.json")
    report = ckpt.verify(root)
    assert _codes(report) == {"unreadable_record": [".ckpt-files.json"]}
    assert not report.ok


# --- #11: remembered damage survives a copy or a touch, not a new save --------------------


@pytest.mark.parametrize("change", ["touch", "cp -a", "rsync-like"])
def test_remembered_damage_survives_a_copy_or_a_touch(tmp_path: Path, change: str) -> None:
    root = _run(tmp_path)
    _flip(root / "step_2" / "state.ckpt")
    assert not ckpt.verify(root, deep=True).ok
    assert _latest(root) == "step_1"
    if change == "touch":
        (root / "step_2" / "x").write_bytes(b"")
        (root / "step_2" / "x").unlink()
        where = root
    elif change == "cp -a":
        where = tmp_path / "copy"
        subprocess.run(["cp", "-a", str(root), str(where)], check=True)
    else:
        where = tmp_path / "copy"
        shutil.copytree(root, where, symlinks=True)
    assert _latest(where) == "step_1"
    # Saving the step again is a new checkpoint: no longer damaged.
    with ckpt.CheckpointManager({"checkpoint_dir": str(where), "fsync": False}) as manager:
        manager.save(2, {"step": 2}, {"w": torch.zeros(3)})
        assert Path(manager.get_latest_checkpoint_path() or "").name == "step_2"


# --- #14: advisory records that do not parse are ignored, whatever their numbers ----------


@pytest.mark.parametrize(
    ("name", "body"),
    [
        (
            "damaged.json",
            {"format": 1, "damaged": {"2": {"version": "v", "files": ["a"], "found_at": 10**400}}},
        ),
        ("damaged.json", {"format": 1, "damaged": {"2": {"version": "v", "files": 5}}}),
        (
            "preemption.json",
            {
                "format": 1,
                "signal": "SIGTERM",
                "received_at": 10**400,
                "grace_s": 30,
                "step": 2,
                "emergency": False,
            },
        ),
        ("replication.json", {"format": 1, "to": "x", "replicated": [10**400]}),
    ],
)
def test_a_huge_number_in_an_advisory_record_is_ignored_with_a_warning(
    tmp_path: Path, name: str, body: Any, caplog: pytest.LogCaptureFixture
) -> None:
    root = _run(tmp_path)
    (root / ".ckpt" / name).write_text(json.dumps(body))  # a 401-digit number, say
    with ckpt.CheckpointManager({"checkpoint_dir": str(root), "fsync": False}) as manager:
        assert manager.get_latest_checkpoint_path() is not None
        manager.last_preemption()
        manager.save(3, {"step": 3}, {"w": torch.zeros(3)})
    assert ckpt.verify(root).ok
    with ckpt.CheckpointManager({"checkpoint_dir": str(root)}, read_only=True) as reader:
        assert [r.step for r in reader.list_checkpoints()] == [1, 2, 3]
    assert any("ignoring" in r.getMessage() and name in r.getMessage() for r in caplog.records)
