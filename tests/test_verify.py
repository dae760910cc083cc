"""`ckpt.verify`: every problem a directory can hold is found, and nothing is changed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

import ckpt
from tests.conftest import Snapshot

Make = Callable[..., ckpt.CheckpointManager]
Save = Callable[..., Path]
WriteStep = Callable[..., Path]


def codes(report: ckpt.VerifyReport) -> list[tuple[str, str, str]]:
    return [(p.severity, p.code, p.path.name) for p in report.problems]


def test_a_clean_directory_has_no_problems(make_manager: Make, save: Save, ckpt_dir: Path) -> None:
    manager = make_manager(metric_name="loss", higher_is_better=False, keep_top_k=2)
    for step, loss in [(1, 0.5), (2, 0.4), (3, 0.9)]:
        save(manager, step, {"loss": loss})
    manager.close()
    report = ckpt.verify(
        ckpt_dir, {"metric_name": "loss", "higher_is_better": False, "keep_top_k": 2}
    )
    assert report.ok
    assert report.problems == ()
    assert report.steps == (1, 2, 3)  # top-2 is {1, 2}; 3 is the latest
    assert not report.writer_active
    assert report.directory == ckpt_dir


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    report = ckpt.verify(tmp_path / "nope")
    assert not report.ok
    assert codes(report) == [("error", "missing_directory", "nope")]
    (tmp_path / "file").write_bytes(b"")
    report = ckpt.verify(tmp_path / "file")
    assert codes(report) == [("error", "missing_directory", "file")]
    assert "is a file" in report.problems[0].message


def test_crash_leftovers_are_warnings_and_a_stranded_copy_is_an_error(
    ckpt_dir: Path, write_step: WriteStep, snapshot: Callable[[Path], Snapshot]
) -> None:
    write_step(ckpt_dir, "step_1", {"v": 1})
    write_step(ckpt_dir, "tmp_step_2", {"v": 2})
    write_step(ckpt_dir, "step_3", {"v": 3})
    write_step(ckpt_dir, "old_step_3", {"v": 3})  # overwrite had completed
    write_step(ckpt_dir, "old_step_4", {"v": 4})  # overwrite interrupted: the only copy
    write_step(ckpt_dir, ".ckpt/trash/step_5.0123456789ab", {"v": 5})
    before = snapshot(ckpt_dir)
    report = ckpt.verify(ckpt_dir)
    assert snapshot(ckpt_dir) == before  # verify changes nothing
    assert not report.ok
    assert codes(report) == [
        ("error", "interrupted_overwrite", "old_step_4"),
        ("warning", "interrupted_delete", "step_5.0123456789ab"),
        ("warning", "leftover_displaced", "old_step_3"),
        ("warning", "leftover_temporary", "tmp_step_2"),
    ]
    assert report.steps == (1, 3)
    assert [p.code for p in report.errors] == ["interrupted_overwrite"]
    assert len(report.warnings) == 3
    assert "step_4" in report.problems[0].message
    assert all("writer" in p.hint for p in report.problems)

    # What the hints say works: opening a writer recovers, and then all is clean.
    with ckpt.CheckpointManager({"checkpoint_dir": str(ckpt_dir), "fsync": False}) as manager:
        assert [r.step for r in manager.list_checkpoints()] == [1, 3, 4]
    report = ckpt.verify(ckpt_dir)
    assert report.ok
    assert report.problems == ()
    assert report.steps == (1, 3, 4)


def test_damaged_checkpoints_are_errors(ckpt_dir: Path, write_step: WriteStep) -> None:
    write_step(ckpt_dir, "step_1", {"v": 1})
    write_step(ckpt_dir, "step_2")  # no training_info.json
    write_step(ckpt_dir, "step_3", raw_info=b'{"v": ')  # truncated
    write_step(ckpt_dir, "step_4", raw_info=b"[1, 2]")  # not an object
    (ckpt_dir / "step_5").write_bytes(b"a file")
    write_step(ckpt_dir, "step_007", {"v": 7})
    write_step(ckpt_dir, "notes", {"v": 0})  # the user's own: not ours to judge
    (ckpt_dir / "README.txt").write_text("hello")
    report = ckpt.verify(ckpt_dir)
    assert codes(report) == [
        ("error", "unreadable_info", "step_2"),
        ("error", "unreadable_info", "step_3"),
        ("error", "unreadable_info", "step_4"),
        ("error", "not_a_directory", "step_5"),
        ("warning", "unrecognized_entry", "step_007"),
    ]
    assert report.steps == (1,)
    assert "training_info.json" in report.problems[0].message


def test_pins_are_checked(make_manager: Make, save: Save, ckpt_dir: Path) -> None:
    manager = make_manager()
    save(manager, 1, {})
    save(manager, 2, {})
    manager.pin(1)
    manager.close()
    pins = ckpt_dir / ".ckpt" / "pins.json"
    pins.write_text(json.dumps({"pinned": [1, 9]}))
    report = ckpt.verify(ckpt_dir)
    assert codes(report) == [("warning", "stale_pin", "pins.json")]
    assert "step 9" in report.problems[0].message
    assert report.ok
    pins.write_text("{broken")
    report = ckpt.verify(ckpt_dir)
    assert codes(report) == [("warning", "unreadable_pins", "pins.json")]


def test_config_reports_what_retention_would_prune_and_missing_metrics(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    manager = make_manager()  # keep-all, so nothing was pruned
    for step, info in [(1, {"loss": 0.3}), (2, {"loss": 0.1}), (3, {}), (4, {"loss": 0.9})]:
        save(manager, step, info)
    manager.pin(1)
    manager.close()
    config = {"metric_name": "loss", "higher_is_better": False, "keep_top_k": 1}
    report = ckpt.verify(ckpt_dir, config)
    assert codes(report) == [
        ("warning", "missing_metric", "step_3"),
        ("warning", "should_be_pruned", "step_3"),
    ]  # 1 is pinned, 2 is the best, 4 the latest
    assert "`loss`" in report.problems[0].message
    assert "ckpt prune" in report.problems[1].hint
    assert report.ok

    # The same config as a whole run config, and as a YAML file naming another directory.
    assert ckpt.verify(ckpt_dir, {"checkpointing": config}).problems == report.problems
    cfg = ckpt_dir.parent / "run.yaml"
    cfg.write_text(
        "checkpointing:\n  checkpoint_dir: elsewhere\n  metric_name: loss\n"
        "  higher_is_better: false\n  keep_top_k: 1\n"
    )
    assert ckpt.verify(ckpt_dir, cfg).problems == report.problems
    assert ckpt.verify(ckpt_dir, ckpt.load_config(cfg)).problems == report.problems


def test_a_bad_config_is_refused(ckpt_dir: Path) -> None:
    ckpt_dir.mkdir()
    with pytest.raises(ValueError, match="keep_top_k"):
        ckpt.verify(ckpt_dir, {"keep_top_k": -1})


def test_saves_in_progress_of_this_process_are_not_leftovers(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    manager = make_manager()
    save(manager, 1, {})
    manager.init_tmp_checkpoint(2, {})
    report = ckpt.verify(ckpt_dir)
    assert report.writer_active
    assert report.problems == ()
    # Probing must not have dropped this process's lock.
    probe = subprocess.run(
        [sys.executable, "-c", _TRY_WRITER, str(ckpt_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.stdout.strip() == "locked", probe.stderr


_TRY_WRITER = textwrap.dedent(
    """
    import sys
    import ckpt
    try:
        ckpt.CheckpointManager({"checkpoint_dir": sys.argv[1]}).close()
    except ckpt.CheckpointDirLockedError:
        print("locked")
    else:
        print("acquired")
    """
)


@pytest.mark.subprocess
def test_a_writer_in_another_process_is_seen(
    ckpt_dir: Path, writer_elsewhere: Callable[[], AbstractContextManager[None]]
) -> None:
    with writer_elsewhere():
        live = ckpt.verify(ckpt_dir)
        # Probing did not take the lock away from the holder.
        with pytest.raises(ckpt.CheckpointDirLockedError):
            ckpt.CheckpointManager({"checkpoint_dir": str(ckpt_dir)})
    assert live.writer_active
    assert live.problems == ()
    dead = ckpt.verify(ckpt_dir)
    assert not dead.writer_active
    assert codes(dead) == [("warning", "leftover_temporary", "tmp_step_7")]


def test_the_report_is_json_ready(ckpt_dir: Path, write_step: WriteStep) -> None:
    write_step(ckpt_dir, "step_1", {"v": 1})
    write_step(ckpt_dir, "old_step_2", {"v": 2})
    data = json.loads(json.dumps(ckpt.verify(ckpt_dir).to_dict()))
    assert data == {
        "directory": str(ckpt_dir),
        "ok": False,
        "writer_active": False,
        "deleting": [],
        "steps": [1],
        "problems": [
            {
                "severity": "error",
                "code": "interrupted_overwrite",
                "path": str(ckpt_dir / "old_step_2"),
                "message": data["problems"][0]["message"],
                "hint": data["problems"][0]["hint"],
            }
        ],
    }


def test_what_recovery_leaves_alone_is_reported_as_such(
    make_manager: Make, save: Save, ckpt_dir: Path, tmp_path: Path
) -> None:
    first = make_manager()
    save(first, 1, {})
    first.close()
    (ckpt_dir / "tmp_step_4").write_bytes(b"a file")
    (ckpt_dir / "old_step_5").symlink_to(tmp_path)
    (ckpt_dir / "step_6").write_bytes(b"a file")
    (ckpt_dir / "old_step_6").mkdir()  # its step_6 is not a checkpoint directory
    expected = [
        ("error", "not_a_directory", "step_6"),
        ("warning", "unrecognized_entry", "old_step_5"),
        ("warning", "unrecognized_entry", "old_step_6"),
        ("warning", "unrecognized_entry", "tmp_step_4"),
    ]
    assert codes(ckpt.verify(ckpt_dir)) == expected
    assert make_manager().recovery == ()  # recovery leaves them be, as the report says
    assert codes(ckpt.verify(ckpt_dir)) == expected
