"""The manager's API: saving, listing, retention, pins, read-only use, locking."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import yaml

import ckpt
import policies
from ckpt import CheckpointManager, LocalStorage

Make = Callable[..., CheckpointManager]
Save = Callable[..., Path]
Hold = Callable[[], AbstractContextManager[None]]


def steps(manager: CheckpointManager) -> list[int]:
    return [record.step for record in manager.list_checkpoints()]


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- saving ------------------------------------------------------------------------------


def test_init_and_finalize(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager()
    tmp = manager.init_tmp_checkpoint(3, {"loss": 0.5}, {"lr": 0.1, "layers": [1, 2]})
    assert isinstance(tmp, Path)
    assert tmp.is_absolute()
    assert tmp == ckpt_dir / "tmp_step_3"
    assert tmp.is_dir()
    assert yaml.safe_load((tmp / "config.yaml").read_text()) == {"lr": 0.1, "layers": [1, 2]}
    assert manager.list_checkpoints() == []  # not a checkpoint until finalized
    assert manager.get_latest_checkpoint_path() is None
    (tmp / "model.bin").write_bytes(b"weights")
    assert manager.finalize_checkpoint(tmp) is None
    final = ckpt_dir / "step_3"
    assert not tmp.exists()
    assert (final / "model.bin").read_bytes() == b"weights"
    assert manager.load_training_info(final) == {"loss": 0.5}
    assert names(ckpt_dir) == [".ckpt", "step_3"]
    assert manager.get_latest_checkpoint_path() == str(final)


def test_without_run_config_there_is_no_config_file(make_manager: Make, save: Save) -> None:
    final = save(make_manager(), 1, {"loss": 1.0})
    assert names(final) == [".ckpt-files.json", "training_info.json"]


def test_init_accepts_a_relative_checkpoint_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with CheckpointManager({"checkpoint_dir": "relative", "fsync": False}) as manager:
        tmp = manager.init_tmp_checkpoint(1, {})
        assert tmp == tmp_path / "relative" / "tmp_step_1"
        manager.finalize_checkpoint("relative/tmp_step_1")  # a str relative path works too
        assert steps(manager) == [1]


def test_list_checkpoints_records(make_manager: Make, save: Save, ckpt_dir: Path) -> None:
    manager = make_manager()
    for step in (5, 2, 9):
        save(manager, step, {"loss": float(step), "nested": {"a": [step]}})
    records = manager.list_checkpoints()
    assert [r.step for r in records] == [2, 5, 9]
    for record in records:
        assert isinstance(record, ckpt.CheckpointRecord)
        assert isinstance(record, policies.CheckpointView)
        assert record.path == ckpt_dir / f"step_{record.step}"
        assert dict(record.info) == {"loss": float(record.step), "nested": {"a": [record.step]}}
        assert record.pinned is False
        assert isinstance(record.committed_at, float)
        assert record.committed_at == pytest.approx(os.stat(record.path).st_mtime)
        assert abs(record.committed_at - time.time()) < 600
    with pytest.raises(TypeError):
        records[0].info["loss"] = 0.0  # type: ignore[index]


def test_a_stale_tmp_dir_of_the_same_step_is_replaced(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    manager = make_manager()
    first = manager.init_tmp_checkpoint(1, {"try": 1})
    (first / "partial.bin").write_bytes(b"half")
    second = manager.init_tmp_checkpoint(1, {"try": 2})
    assert second == first
    assert names(second) == ["training_info.json"]
    manager.finalize_checkpoint(second)
    assert manager.load_training_info(ckpt_dir / "step_1") == {"try": 2}


class _DiskFull(LocalStorage):
    def write_bytes(self, path: str, data: bytes) -> None:
        path = Path(path)
        if path.name == "config.yaml":
            raise OSError(28, "No space left on device", str(path))
        super().write_bytes(path, data)


def test_a_failed_write_leaves_no_tmp_dir(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager(storage=_DiskFull())
    with pytest.raises(OSError, match="No space left"):
        manager.init_tmp_checkpoint(1, {"v": 1}, {"lr": 0.1})
    assert names(ckpt_dir) == [".ckpt"]
    assert list((ckpt_dir / ".ckpt" / "trash").iterdir()) == []
    manager.init_tmp_checkpoint(1, {"v": 1})  # the step can be saved again


def test_checkpoint_context_manager_finalizes_on_success(
    make_manager: Make, ckpt_dir: Path
) -> None:
    manager = make_manager()
    with manager.checkpoint(4, {"loss": 0.25}, run_config={"seed": 1}) as path:
        assert path == ckpt_dir / "tmp_step_4"
        (path / "model.bin").write_bytes(b"m")
    assert not path.exists()
    assert steps(manager) == [4]
    assert (ckpt_dir / "step_4" / "model.bin").read_bytes() == b"m"
    assert yaml.safe_load((ckpt_dir / "step_4" / "config.yaml").read_text()) == {"seed": 1}


class _Boom(Exception):
    pass


def test_checkpoint_context_manager_removes_tmp_on_exception(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    manager = make_manager()
    save(manager, 1, {"v": 1})
    entered = []

    def failing_save() -> None:
        with manager.checkpoint(2, {"v": 2}) as path:
            entered.append(path)
            (path / "model.bin").write_bytes(b"partial")
            raise _Boom

    with pytest.raises(_Boom):
        failing_save()
    assert entered == [ckpt_dir / "tmp_step_2"]
    assert names(ckpt_dir) == [".ckpt", "step_1"]
    manager.wait_until_finished()
    assert list((ckpt_dir / ".ckpt" / "trash").iterdir()) == []
    assert steps(manager) == [1]


def test_abort_checkpoint(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager()
    tmp = manager.init_tmp_checkpoint(1, {})
    (tmp / "sub").mkdir()
    (tmp / "sub" / "f").write_bytes(b"x")
    manager.abort_checkpoint(tmp)
    assert names(ckpt_dir) == [".ckpt"]
    manager.abort_checkpoint(tmp)  # already gone: fine
    with pytest.raises(ckpt.InvalidCheckpointPathError):
        manager.finalize_checkpoint(tmp)
    with pytest.raises(ckpt.InvalidCheckpointPathError):
        manager.abort_checkpoint(ckpt_dir / "step_1")


def test_finalizing_twice_is_an_error(make_manager: Make, save: Save, ckpt_dir: Path) -> None:
    manager = make_manager()
    tmp = manager.init_tmp_checkpoint(1, {})
    manager.finalize_checkpoint(tmp)
    with pytest.raises(ckpt.InvalidCheckpointPathError, match="tmp_step_1"):
        manager.finalize_checkpoint(tmp)
    assert steps(manager) == [1]


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda d, other: other / "tmp_step_1", id="other-dir"),
        pytest.param(lambda d, other: d / "step_1", id="not-tmp"),
        pytest.param(lambda d, other: d / "tmp_step_01", id="leading-zero"),
        pytest.param(lambda d, other: d / "sub" / "tmp_step_1", id="nested"),
        pytest.param(lambda d, other: d / "tmp_step_1" / ".." / "tmp_step_x", id="dotdot"),
    ],
)
def test_finalize_a_path_not_of_this_manager(
    make_manager: Make, ckpt_dir: Path, tmp_path: Path, where: Callable[[Path, Path], Path]
) -> None:
    manager = make_manager()
    other = tmp_path / "other"
    (other / "tmp_step_1").mkdir(parents=True)
    (other / "tmp_step_1" / "training_info.json").write_text("{}")
    manager.init_tmp_checkpoint(1, {})
    path = where(ckpt_dir, other)
    with pytest.raises(ckpt.InvalidCheckpointPathError) as excinfo:
        manager.finalize_checkpoint(path)
    assert isinstance(excinfo.value, ValueError)
    assert steps(manager) == []
    assert (other / "tmp_step_1").is_dir()
    assert (ckpt_dir / "tmp_step_1").is_dir()


def test_finalize_without_training_info_is_refused(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager()
    tmp = manager.init_tmp_checkpoint(1, {})
    (tmp / "training_info.json").unlink()
    with pytest.raises(ckpt.InvalidCheckpointPathError, match=r"training_info\.json"):
        manager.finalize_checkpoint(tmp)
    assert not (ckpt_dir / "step_1").exists()


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_finalize_refuses_to_replace_something_that_is_not_a_checkpoint(
    make_manager: Make, ckpt_dir: Path, tmp_path: Path, kind: str
) -> None:
    manager = make_manager()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_bytes(b"k")
    if kind == "file":
        (ckpt_dir / "step_1").write_bytes(b"mine")
    else:
        (ckpt_dir / "step_1").symlink_to(target, target_is_directory=True)
    tmp = manager.init_tmp_checkpoint(1, {})
    with pytest.raises(ckpt.CheckpointError, match="step_1"):
        manager.finalize_checkpoint(tmp)
    assert (ckpt_dir / "step_1").is_symlink() == (kind == "symlink")
    assert (target / "keep").read_bytes() == b"k"
    if kind == "file":
        assert (ckpt_dir / "step_1").read_bytes() == b"mine"
    assert steps(manager) == []


@pytest.mark.parametrize("step", [-1, True, False, "3", 1.0, None])
def test_invalid_steps(make_manager: Make, ckpt_dir: Path, step: Any) -> None:
    manager = make_manager()
    with pytest.raises(ckpt.InvalidStepError) as excinfo:
        manager.init_tmp_checkpoint(step, {})
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(ckpt.InvalidStepError):
        manager.pin(step)
    with pytest.raises(ckpt.InvalidStepError):
        manager.should_save(step)
    assert names(ckpt_dir) == [".ckpt"]


def test_step_zero_and_large_steps(make_manager: Make, save: Save) -> None:
    manager = make_manager()
    save(manager, 0, {})
    save(manager, 10**12, {})
    save(manager, 99, {})
    assert steps(manager) == [0, 99, 10**12]
    assert manager.get_latest_checkpoint_path() == str(
        manager.checkpoint_dir / "step_1000000000000"
    )


# --- overwrite ---------------------------------------------------------------------------


class _NoExchange(LocalStorage):
    def __init__(self) -> None:
        self.exchanges = 0

    def exchange(self, a: str, b: str) -> bool:
        a, b = Path(a), Path(b)
        self.exchanges += 1
        return False


class _SeesExchange(LocalStorage):
    def __init__(self) -> None:
        self.results: list[bool] = []

    def exchange(self, a: str, b: str) -> bool:
        a, b = Path(a), Path(b)
        done = super().exchange(a, b)
        self.results.append(done)
        return done


@pytest.mark.parametrize("path", ["exchange", "fallback"])
def test_overwrite_replaces_content_and_leaves_nothing_behind(
    make_manager: Make, save: Save, ckpt_dir: Path, tree: Callable[[Path], Any], path: str
) -> None:
    storage: LocalStorage = _SeesExchange() if path == "exchange" else _NoExchange()
    manager = make_manager(storage=storage, metric_name="score", fsync=True)
    save(manager, 1, {"score": 0.1})
    save(manager, 2, {"score": 0.2}, files={"model.bin": b"old", "old_only.bin": b"x"})
    save(manager, 2, {"score": 0.9}, files={"model.bin": b"new", "dir/new.bin": b"y"})
    if isinstance(storage, _SeesExchange):
        if storage.results != [True]:
            pytest.skip("no atomic exchange on this file system")
    else:
        assert storage.exchanges == 1
    files = tree(ckpt_dir / "step_2")
    assert sorted(files) == [".ckpt-files.json", "dir/new.bin", "model.bin", "training_info.json"]
    assert files["model.bin"] == b"new"
    assert manager.load_training_info(ckpt_dir / "step_2") == {"score": 0.9}
    assert names(ckpt_dir) == [".ckpt", "step_1", "step_2"]
    manager.wait_until_finished()  # the displaced copy is removed in the background
    assert list((ckpt_dir / ".ckpt" / "trash").iterdir()) == []
    assert [dict(r.info) for r in manager.list_checkpoints()] == [{"score": 0.1}, {"score": 0.9}]
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_2")
    manager.close()
    restarted = make_manager(metric_name="score")
    assert restarted.recovery == ()
    assert restarted.load_training_info(ckpt_dir / "step_2") == {"score": 0.9}


def test_overwrite_keeps_the_pin(make_manager: Make, save: Save, ckpt_dir: Path) -> None:
    manager = make_manager(retention=policies.LatestN(1))
    save(manager, 1, {"v": 1})
    manager.pin(1)
    save(manager, 2, {"v": 2})
    save(manager, 1, {"v": 11})
    records = manager.list_checkpoints()
    assert [(r.step, r.pinned, dict(r.info)) for r in records] == [
        (1, True, {"v": 11}),
        (2, False, {"v": 2}),
    ]


# --- retention ---------------------------------------------------------------------------


def _seed_dir(make_manager: Make, save: Save, scores: Mapping[int, float]) -> None:
    """Write checkpoints with a keep-all manager, then close it."""
    writer = make_manager()
    for step, score in scores.items():
        save(writer, step, {"score": score})
    writer.close()


def test_plan_retention_decides_without_touching_disk(
    make_manager: Make, save: Save, ckpt_dir: Path, snapshot: Callable[[Path], Any]
) -> None:
    _seed_dir(make_manager, save, {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.2})
    manager = make_manager(metric_name="score", keep_top_k=2)
    before = snapshot(ckpt_dir)
    plan = manager.plan_retention()
    assert snapshot(ckpt_dir) == before
    assert all(isinstance(d, policies.Decision) for d in plan)
    assert [(d.step, d.keep) for d in plan] == [(1, True), (2, False), (3, True), (4, True)]
    assert all(isinstance(d.reason, str) and d.reason for d in plan)
    assert "latest" in plan[3].reason
    assert steps(manager) == [1, 2, 3, 4]
    manager.remove_old_checkpoints()
    assert steps(manager) == [d.step for d in plan if d.keep]
    assert names(ckpt_dir) == [".ckpt", "step_1", "step_3", "step_4"]


def test_remove_old_checkpoints_exclude_latest(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    _seed_dir(make_manager, save, {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.2})
    manager = make_manager(metric_name="score", keep_top_k=2)
    manager.remove_old_checkpoints()  # top 2 plus the latest
    assert steps(manager) == [1, 3, 4]
    manager.remove_old_checkpoints(exclude_latest=False)  # exactly the top 2, as the seed
    assert steps(manager) == [1, 3]
    assert names(ckpt_dir) == [".ckpt", "step_1", "step_3"]


def test_exclude_latest_protects_the_latest_from_any_policy(make_manager: Make, save: Save) -> None:
    _seed_dir(make_manager, save, {1: 0.9, 2: 0.8, 3: 0.1})
    manager = make_manager(metric_name="score", retention={"kind": "top_k", "k": 1})
    manager.remove_old_checkpoints()
    assert steps(manager) == [1, 3]
    manager.remove_old_checkpoints(exclude_latest=False)
    assert steps(manager) == [1]


def test_keep_top_k_zero_keeps_only_the_latest(make_manager: Make, save: Save) -> None:
    manager = make_manager(metric_name="score", keep_top_k=0)
    for step in (1, 2, 3):
        save(manager, step, {"score": 1.0 / step})
    assert steps(manager) == [3]


def test_without_keep_top_k_nothing_is_pruned(make_manager: Make, save: Save) -> None:
    manager = make_manager(metric_name="score")
    for step in range(1, 6):
        save(manager, step, {"score": float(step)})
    manager.remove_old_checkpoints(exclude_latest=False)
    assert steps(manager) == [1, 2, 3, 4, 5]


def test_retention_override_object(make_manager: Make, save: Save, ckpt_dir: Path) -> None:
    manager = make_manager(metric_name="score", keep_top_k=1, retention=policies.LatestN(2))
    assert manager.retention == policies.LatestN(2)
    for step, score in [(1, 9.0), (2, 1.0), (3, 2.0), (4, 0.5)]:
        save(manager, step, {"score": score})
    assert steps(manager) == [3, 4]
    assert names(ckpt_dir) == [".ckpt", "step_3", "step_4"]
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_3")


def test_ranking_override_drives_best_and_top_k(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    manager = make_manager(
        metric_name="reward", keep_top_k=1, ranking=policies.ByMetric("loss", False)
    )
    for step, reward, loss in [(1, 0.9, 0.5), (2, 0.1, 0.2), (3, 0.8, 0.7)]:
        save(manager, step, {"reward": reward, "loss": loss})
    assert steps(manager) == [2, 3]
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_2")


def test_retention_block_in_config(make_manager: Make, save: Save) -> None:
    manager = make_manager(
        metric_name="score",
        retention={
            "kind": "any_of",
            "policies": [{"kind": "every_n_steps", "n": 3}, {"kind": "latest_n", "n": 1}],
        },
    )
    for step in range(1, 8):
        save(manager, step, {"score": float(step)})
    assert steps(manager) == [3, 6, 7]


class _EvenSteps:
    """A user's own retention policy: keep even steps."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def keep(self, checkpoints: Sequence[policies.CheckpointView], /) -> dict[int, str]:
        self.seen.append(sorted(v.step for v in checkpoints))
        return {v.step: "even" for v in checkpoints if v.step % 2 == 0}


class _ByLength:
    """A user's own ranking: the longest run name is best."""

    def rank(self, checkpoints: Sequence[policies.CheckpointView], /) -> list[Any]:
        return sorted(checkpoints, key=lambda v: (-len(v.info["name"]), -v.step))


def test_custom_retention_and_ranking_objects(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    retention = _EvenSteps()
    manager = make_manager(retention=retention, ranking=_ByLength())
    for step, name in [(1, "a"), (2, "abcd"), (3, "ab"), (4, "abc"), (5, "abcde")]:
        save(manager, step, {"name": name})
    assert steps(manager) == [2, 4]  # the policy decides: even the latest step goes
    assert retention.seen[-1] == [2, 4, 5]
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_2")
    assert [(d.step, d.keep, d.reason) for d in manager.plan_retention()] == [
        (2, True, "even"),
        (4, True, "even"),
    ]


def test_a_policy_returning_garbage_is_a_type_error(make_manager: Make, save: Save) -> None:
    class Broken:
        def keep(self, checkpoints: Any, /) -> Any:
            return [1, 2]

    manager = make_manager(retention=Broken())
    with pytest.raises(TypeError, match="mapping"):
        save(manager, 1, {})


def test_save_period_limits_top_k_candidates_as_nemo_rl_does(
    make_manager: Make, save: Save
) -> None:
    manager = make_manager(metric_name="score", keep_top_k=1, save_period=2)
    for step, score in [(1, 9.0), (2, 1.0), (3, 8.0), (4, 2.0), (5, 0.0)]:
        save(manager, step, {"score": score})
    # 4 is the best even step and 5 the latest; 1, the best of all, is not a multiple of 2
    assert steps(manager) == [4, 5]
    assert manager.get_best_checkpoint_path() == str(manager.checkpoint_dir / "step_4")


def test_protect_best_keeps_the_best_of_all_steps_too(make_manager: Make, save: Save) -> None:
    manager = make_manager(metric_name="score", keep_top_k=1, save_period=2, protect_best=True)
    for step, score in [(1, 9.0), (2, 1.0), (3, 8.0), (4, 2.0), (5, 0.0)]:
        save(manager, step, {"score": score})
    assert steps(manager) == [1, 4, 5]
    assert manager.get_best_checkpoint_path() == str(manager.checkpoint_dir / "step_1")


def test_with_protect_best_the_best_survives_saving_a_worse_checkpoint(
    make_manager: Make, save: Save
) -> None:
    """ "best" is the one retention protects first, save_period or not, with protect_best."""
    manager = make_manager(metric_name="score", keep_top_k=1, save_period=2, protect_best=True)
    for step, score in [(1, 1.0), (2, 2.0), (3, 9.0)]:
        save(manager, step, {"score": score})
    best = manager.get_best_checkpoint_path()
    assert best is not None
    save(manager, 4, {"score": 0.5})  # worse than every other checkpoint
    assert Path(best).is_dir()
    assert manager.get_best_checkpoint_path() == best


# --- pins --------------------------------------------------------------------------------


def test_pins_survive_restart_and_are_never_pruned(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    manager = make_manager(metric_name="score", keep_top_k=1)
    save(manager, 1, {"score": 0.1})
    manager.pin(1)
    manager.pin(1)  # pinning twice is harmless
    for step in (2, 3, 4):
        save(manager, step, {"score": step / 10})
    assert steps(manager) == [1, 4]
    assert [r.pinned for r in manager.list_checkpoints()] == [True, False]
    manager.remove_old_checkpoints(exclude_latest=False)
    assert steps(manager) == [1, 4]
    assert manager.plan_retention()[0] == policies.Decision(1, True, "pinned")
    manager.close()

    restarted = make_manager(metric_name="score", keep_top_k=1)
    assert [(r.step, r.pinned) for r in restarted.list_checkpoints()] == [(1, True), (4, False)]
    restarted.remove_old_checkpoints(exclude_latest=False)
    assert steps(restarted) == [1, 4]
    reader = make_manager(read_only=True)
    assert [r.pinned for r in reader.list_checkpoints()] == [True, False]

    restarted.unpin(1)
    assert [r.pinned for r in restarted.list_checkpoints()] == [False, False]
    restarted.remove_old_checkpoints()
    assert steps(restarted) == [4]
    assert names(ckpt_dir) == [".ckpt", "step_4"]
    restarted.close()
    again = make_manager(metric_name="score", keep_top_k=1)
    assert [r.pinned for r in again.list_checkpoints()] == [False]


def test_pin_a_missing_step(make_manager: Make, save: Save) -> None:
    manager = make_manager()
    save(manager, 1, {})
    with pytest.raises(ckpt.CheckpointNotFoundError, match="7") as excinfo:
        manager.pin(7)
    assert isinstance(excinfo.value, LookupError)
    with pytest.raises(ckpt.CheckpointNotFoundError):
        manager.unpin(7)
    assert [r.pinned for r in manager.list_checkpoints()] == [False]


def test_pins_of_vanished_steps_are_dropped_on_restart(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    import shutil

    manager = make_manager()
    save(manager, 1, {})
    save(manager, 2, {})
    manager.pin(1)
    manager.close()
    shutil.rmtree(ckpt_dir / "step_1")  # someone removed it by hand
    restarted = make_manager()
    assert steps(restarted) == [2]
    save(restarted, 1, {})  # a new step 1 is not pinned by the old pin
    assert [r.pinned for r in restarted.list_checkpoints()] == [False, False]


# --- queries -----------------------------------------------------------------------------


def test_empty_directory_queries(make_manager: Make) -> None:
    manager = make_manager(metric_name="score", keep_top_k=2)
    assert manager.list_checkpoints() == []
    assert manager.get_best_checkpoint_path() is None
    assert manager.get_latest_checkpoint_path() is None
    assert manager.plan_retention() == []
    manager.remove_old_checkpoints()
    manager.remove_old_checkpoints(exclude_latest=False)
    assert manager.load_training_info(manager.get_latest_checkpoint_path()) is None


def test_load_training_info_returns_a_fresh_dict(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    manager = make_manager()
    save(manager, 1, {"loss": 0.5, "counts": [1, 2]})
    assert manager.load_training_info(None) is None
    first = manager.load_training_info(ckpt_dir / "step_1")
    assert first == {"loss": 0.5, "counts": [1, 2]}
    assert isinstance(first, dict)
    first["loss"] = 99.0
    first["counts"].append(3)
    assert manager.load_training_info(str(ckpt_dir / "step_1")) == {"loss": 0.5, "counts": [1, 2]}
    assert dict(manager.list_checkpoints()[0].info) == {"loss": 0.5, "counts": [1, 2]}
    with pytest.raises(FileNotFoundError):
        manager.load_training_info(ckpt_dir / "step_2")


def test_latest_and_best_follow_changes(make_manager: Make, save: Save, ckpt_dir: Path) -> None:
    manager = make_manager(metric_name="loss", higher_is_better=False)
    save(manager, 1, {"loss": 0.5})
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_1")
    save(manager, 2, {"loss": 0.3})
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_2")
    assert manager.get_latest_checkpoint_path() == str(ckpt_dir / "step_2")
    save(manager, 2, {"loss": 0.9})  # overwritten with a worse value
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_1")
    save(manager, 3, {"loss": 0.1})
    assert manager.get_latest_checkpoint_path() == str(ckpt_dir / "step_3")
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_3")


def test_without_metric_best_is_latest(make_manager: Make, save: Save, ckpt_dir: Path) -> None:
    manager = make_manager()
    for step in (3, 1, 2):
        save(manager, step, {"loss": 0.0})
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_3")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param({}, {0: True, 1: True, 7: True}, id="no-period"),
        pytest.param({"save_period": 10}, {0: True, 10: True, 15: False, 20: True}, id="period"),
        pytest.param(
            {"save_period": 10, "ft_save_period": 4},
            {4: True, 8: True, 10: True, 7: False, 13: False},
            id="both-periods",
        ),
        pytest.param({"ft_save_period": 3}, {3: True, 4: False, 6: True}, id="ft-only"),
        pytest.param({"enabled": False}, {0: False, 10: False}, id="disabled"),
    ],
)
def test_should_save(make_manager: Make, config: dict[str, Any], expected: dict[int, bool]) -> None:
    manager = make_manager(**config)
    assert {step: manager.should_save(step) for step in expected} == expected
    enabled = config.get("enabled", True)
    assert manager.should_save(15, last=True) is enabled
    assert manager.should_save(13, last=True) is enabled


def test_seed_attributes_and_config_object(ckpt_dir: Path, save: Save) -> None:
    config = ckpt.CheckpointConfig(
        checkpoint_dir=ckpt_dir, metric_name="score", higher_is_better=False, keep_top_k=2
    )
    with CheckpointManager(config) as manager:
        assert manager.metric_name == "score"
        assert manager.higher_is_better is False
        assert manager.keep_top_k == 2
        assert manager.checkpoint_dir == ckpt_dir
        assert manager.config is config
        assert "writer" in repr(manager)
        save(manager, 1, {"score": 1.0})
    with pytest.raises(ckpt.CheckpointError, match="closed"):
        manager.list_checkpoints()
    with pytest.raises(ckpt.CheckpointError, match="closed"):
        manager.init_tmp_checkpoint(2, {})
    manager.close()  # twice is harmless


# --- read-only ---------------------------------------------------------------------------


def _all_writes(manager: CheckpointManager, ckpt_dir: Path) -> list[Callable[[], object]]:
    return [
        lambda: manager.init_tmp_checkpoint(5, {}),
        lambda: manager.finalize_checkpoint(ckpt_dir / "tmp_step_2"),
        lambda: manager.abort_checkpoint(ckpt_dir / "tmp_step_2"),
        manager.remove_old_checkpoints,
        lambda: manager.remove_old_checkpoints(exclude_latest=False),
        lambda: manager.pin(1),
        lambda: manager.unpin(1),
    ]


def test_read_only_on_a_missing_directory_creates_nothing(
    make_manager: Make, ckpt_dir: Path, tmp_path: Path
) -> None:
    before = names(tmp_path)
    reader = make_manager(read_only=True, metric_name="score", keep_top_k=1)
    assert reader.read_only
    assert reader.list_checkpoints() == []
    assert reader.get_latest_checkpoint_path() is None
    assert reader.get_best_checkpoint_path() is None
    assert reader.plan_retention() == []
    reader.refresh()
    assert reader.recovery == ()
    for write in _all_writes(reader, ckpt_dir):
        with pytest.raises(ckpt.ReadOnlyError) as excinfo:
            write()
        assert isinstance(excinfo.value, PermissionError)
    assert not ckpt_dir.exists()
    assert names(tmp_path) == before


def test_read_only_never_modifies_a_directory(
    make_manager: Make,
    write_step: Callable[..., Path],
    ckpt_dir: Path,
    snapshot: Callable[[Path], Any],
) -> None:
    # a directory the seed wrote, with leftovers a writer would recover
    write_step(ckpt_dir, "step_1", {"score": 0.9}, files={"model.bin": b"1"})
    write_step(ckpt_dir, "step_2", {"score": 0.1})
    write_step(ckpt_dir, "step_3", {"score": 0.5})
    write_step(ckpt_dir, "tmp_step_4", {"score": 0.0})
    write_step(ckpt_dir, "old_step_5", {"score": 0.0})
    before = snapshot(ckpt_dir)
    reader = make_manager(read_only=True, metric_name="score", keep_top_k=1)
    assert steps(reader) == [1, 2, 3]
    assert reader.get_best_checkpoint_path() == str(ckpt_dir / "step_1")
    assert reader.get_latest_checkpoint_path() == str(ckpt_dir / "step_3")
    assert [d.keep for d in reader.plan_retention()] == [True, False, True]
    assert reader.load_training_info(ckpt_dir / "step_2") == {"score": 0.1}
    reader.refresh()
    for write in _all_writes(reader, ckpt_dir):
        with pytest.raises(ckpt.ReadOnlyError, match="read_only"):
            write()
    assert snapshot(ckpt_dir) == before
    assert not (ckpt_dir / ".ckpt").exists()


def test_read_only_sees_what_a_writer_does_afterwards(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    reader = make_manager(read_only=True, metric_name="score")
    assert steps(reader) == []
    writer = make_manager(metric_name="score", keep_top_k=1)
    save(writer, 1, {"score": 0.5})
    assert steps(reader) == [1]
    assert reader.get_latest_checkpoint_path() == str(ckpt_dir / "step_1")
    save(writer, 2, {"score": 0.9})
    assert steps(reader) == [2]
    assert reader.get_best_checkpoint_path() == str(ckpt_dir / "step_2")
    save(writer, 2, {"score": 0.7})  # overwrite
    assert [dict(r.info) for r in reader.list_checkpoints()] == [{"score": 0.7}]
    writer.pin(2)
    assert [r.pinned for r in reader.list_checkpoints()] == [True]
    tmp = writer.init_tmp_checkpoint(3, {"score": 1.0})
    assert steps(reader) == [2]  # a save in flight is not visible
    writer.finalize_checkpoint(tmp)
    assert steps(reader) == [2, 3]
    assert reader.get_latest_checkpoint_path() == str(ckpt_dir / "step_3")


class _CountingStorage(LocalStorage):
    def __init__(self) -> None:
        self.info_reads = 0

    def read_bytes(self, path: str, **kwargs: Any) -> bytes:
        path = Path(path)
        if path.name == "training_info.json":
            self.info_reads += 1
        return super().read_bytes(path, **kwargs)


def test_read_only_rereads_only_what_changed(make_manager: Make, save: Save) -> None:
    writer = make_manager()
    for step in range(1, 6):
        save(writer, step, {"v": step})
    storage = _CountingStorage()
    reader = make_manager(read_only=True, storage=storage)
    assert steps(reader) == [1, 2, 3, 4, 5]
    assert storage.info_reads == 5
    assert steps(reader) == [1, 2, 3, 4, 5]
    assert storage.info_reads == 5
    save(writer, 6, {"v": 6})
    assert steps(reader) == [1, 2, 3, 4, 5, 6]
    assert storage.info_reads == 6


def test_enabled_false_is_read_only(
    make_manager: Make, save: Save, ckpt_dir: Path, tmp_path: Path
) -> None:
    manager = make_manager(enabled=False)
    assert manager.read_only
    assert not ckpt_dir.exists()
    assert manager.should_save(1, last=True) is False
    for write in _all_writes(manager, ckpt_dir):
        with pytest.raises(ckpt.ReadOnlyError, match="enabled"):
            write()
    assert not ckpt_dir.exists()
    writer = make_manager()
    save(writer, 1, {})
    assert steps(manager) == [1]


# --- several managers, several processes --------------------------------------------------


def test_two_managers_in_one_process_share_the_directory(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    first = make_manager(metric_name="score")
    second = make_manager(metric_name="score", keep_top_k=1)
    save(first, 1, {"score": 0.1})
    assert steps(second) == [1]
    save(second, 2, {"score": 0.9})
    assert steps(first) == [2]  # second's retention pruned step 1, and first knows
    first.pin(2)
    assert [r.pinned for r in second.list_checkpoints()] == [True]
    first.close()
    save(second, 3, {"score": 0.5})  # closing one does not disturb the other
    assert steps(second) == [2, 3]
    via_symlink = ckpt_dir.parent / "alias"
    via_symlink.symlink_to(ckpt_dir, target_is_directory=True)
    third = make_manager(checkpoint_dir=str(via_symlink))
    assert steps(third) == [2, 3]


_PROBE = textwrap.dedent(
    """
    import sys

    import ckpt

    try:
        manager = ckpt.CheckpointManager({"checkpoint_dir": sys.argv[1], "fsync": False})
    except ckpt.CheckpointDirLockedError as exc:
        print("locked", isinstance(exc, BlockingIOError), exc)
        sys.exit(3)
    steps = [r.step for r in manager.list_checkpoints()]
    manager.close()
    print("acquired", steps)
    """
)

_READER = textwrap.dedent(
    """
    import sys

    import ckpt

    reader = ckpt.CheckpointManager({"checkpoint_dir": sys.argv[1]}, read_only=True)
    print("steps", [r.step for r in reader.list_checkpoints()])
    """
)


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.subprocess
def test_a_writer_in_another_process_is_refused(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    first = make_manager()
    second = make_manager()
    save(first, 1, {})
    probe = _python(_PROBE, str(ckpt_dir))
    assert probe.returncode == 3, probe.stderr
    assert probe.stdout.startswith("locked True")
    assert f"pid {os.getpid()}" in probe.stdout  # the message names the holder
    reader = _python(_READER, str(ckpt_dir))
    assert reader.returncode == 0, reader.stderr
    assert reader.stdout.strip() == "steps [1]"
    save(first, 2, {})  # the parent carries on
    assert steps(first) == [1, 2]
    first.close()
    probe = _python(_PROBE, str(ckpt_dir))
    assert probe.returncode == 3, probe.stderr  # second still holds it
    second.close()
    probe = _python(_PROBE, str(ckpt_dir))
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "acquired [1, 2]"


@pytest.mark.subprocess
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_is_not_the_writer(make_manager: Make, save: Save, ckpt_dir: Path) -> None:
    """A forked worker (a data loader, say) does not inherit the lock: it must not write."""
    manager = make_manager()
    save(manager, 1, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            CheckpointManager({"checkpoint_dir": str(ckpt_dir), "fsync": False})
        except ckpt.CheckpointDirLockedError:
            code = 3
        except BaseException:
            code = 2
        else:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    save(manager, 2, {})
    assert steps(manager) == [1, 2]


@pytest.mark.subprocess
def test_a_killed_writer_does_not_block_the_next(
    make_manager: Make, save: Save, ckpt_dir: Path, writer_elsewhere: Hold
) -> None:
    first = make_manager()
    save(first, 1, {})
    first.close()
    with writer_elsewhere(), pytest.raises(ckpt.CheckpointDirLockedError):
        ckpt.CheckpointManager({"checkpoint_dir": str(ckpt_dir)})
    manager = make_manager()
    assert [(a.kind, a.path) for a in manager.recovery] == [
        ("removed_temporary", ckpt_dir / "tmp_step_7")
    ]
    assert steps(manager) == [1]
    save(manager, 2, {})
    assert names(ckpt_dir) == [".ckpt", "step_1", "step_2"]


# --- torch -------------------------------------------------------------------------------


@pytest.mark.torch
def test_torch_state_and_tensor_metrics(make_manager: Make, ckpt_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    manager = make_manager(metric_name="val_loss", higher_is_better=False, keep_top_k=1)
    losses = {1: torch.tensor(0.75), 2: torch.tensor([0.25]), 3: torch.tensor(0.5)}
    for step, loss in losses.items():
        with manager.checkpoint(step, {"val_loss": loss, "step": torch.tensor(step)}) as path:
            torch.save(model.state_dict(), path / "model.pt")
    assert steps(manager) == [2, 3]
    best = manager.get_best_checkpoint_path()
    assert best == str(ckpt_dir / "step_2")
    info = manager.load_training_info(best)
    assert info == {"val_loss": 0.25, "step": 2}
    state = torch.load(Path(best) / "model.pt", weights_only=True)
    assert torch.equal(state["weight"], model.state_dict()["weight"])
    assert isinstance(losses[2], torch.Tensor)  # the caller's values are untouched


def test_a_second_manager_asking_for_fsync_gets_it(
    make_manager: Make, ckpt_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sharing a directory with a manager that has fsync off must not drop durability.

    The manager asking for ``fsync: true`` either syncs its commits or refuses the
    conflicting setting; it must not silently publish without syncing.
    """
    make_manager(fsync=False)
    try:
        durable = make_manager(fsync=True)
    except (ckpt.CheckpointError, ValueError):
        return  # refusing the conflict is fine too
    fsynced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with durable.checkpoint(1, {"v": 1}) as path:
        (path / "model.bin").write_bytes(b"m")
    assert len(fsynced) >= 3  # at least the files, the directory and its parent


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("retention", {"kind": "top_k"}),
        ("retention", policies.KeepAll),
        ("ranking", "val_loss"),
        ("ranking", policies.ByRecency),
    ],
)
def test_strategy_objects_are_checked_at_construction(
    ckpt_dir: Path, argument: str, value: Any
) -> None:
    with pytest.raises(TypeError, match=f"`{argument}` must be an object with a"):
        CheckpointManager({"checkpoint_dir": str(ckpt_dir)}, **{argument: value})
    assert not ckpt_dir.exists()  # refused before the directory was touched


def test_numpy_integer_steps_are_plain_steps(make_manager: Make, ckpt_dir: Path) -> None:
    import numpy as np

    manager = make_manager()
    tmp = manager.init_tmp_checkpoint(np.int64(7), {"step": np.int64(7)})
    assert tmp == ckpt_dir / "tmp_step_7"
    manager.finalize_checkpoint(tmp)
    assert steps(manager) == [7]
    assert isinstance(manager.list_checkpoints()[0].step, int)


def test_a_second_writer_with_another_storage_is_refused(make_manager: Make) -> None:
    first = make_manager(storage=LocalStorage())
    with pytest.raises(ckpt.CheckpointError, match="already open for writing"):
        make_manager(storage=LocalStorage())
    assert make_manager(storage=first._dir.storage).list_checkpoints() == []
    assert make_manager().list_checkpoints() == []  # no storage given: the shared one


def test_read_only_warns_of_a_stray_entry_once(
    make_manager: Make, save: Save, ckpt_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save(make_manager(), 1, {})
    (ckpt_dir / "step_7").write_text("not a checkpoint")
    reader = make_manager(read_only=True)
    with caplog.at_level("WARNING", logger="ckpt"):
        for _ in range(3):
            assert reader.get_latest_checkpoint_path() == str(ckpt_dir / "step_1")
    assert [r.getMessage() for r in caplog.records if "step_7" in r.getMessage()] == [
        "ignoring step_7: it is a file, not a checkpoint directory"
    ]


@pytest.mark.parametrize("overwrite", [False, True])
def test_committed_at_matches_what_a_rescan_reads(
    make_manager: Make, save: Save, overwrite: bool
) -> None:
    writer = make_manager()
    save(writer, 1, {}, files={"a": b"1"})
    if overwrite:
        save(writer, 1, {}, files={"a": b"2"})
    reader = make_manager(read_only=True)
    assert writer.list_checkpoints()[0].committed_at == reader.list_checkpoints()[0].committed_at


# --- per-save bookkeeping stays exact ------------------------------------------------------


def _expected_best(manager: CheckpointManager) -> str | None:
    records = manager.list_checkpoints()
    ranked = manager.ranking.rank(records)
    return str(ranked[0].path) if ranked else None


def test_best_and_latest_follow_every_kind_of_change(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    loss = make_manager(metric_name="loss", higher_is_better=False, keep_top_k=2)
    recent = make_manager(retention=policies.LatestN(10))  # shares the directory's state

    def check() -> None:
        for manager in (loss, recent):
            assert manager.get_best_checkpoint_path() == _expected_best(manager)
            latest = manager.list_checkpoints()[-1].path if manager.list_checkpoints() else None
            assert manager.get_latest_checkpoint_path() == (latest and str(latest))

    check()
    for step, value in [(1, 0.5), (2, 0.2), (3, 0.9), (4, 0.1)]:
        save(loss, step, {"loss": value})
        check()
    save(loss, 4, {"loss": 0.95})  # overwrite: the best becomes the worst
    check()
    assert loss.get_best_checkpoint_path() == str(ckpt_dir / "step_2")
    save(recent, 5, {"loss": 0.05})  # another manager's save
    check()
    loss.pin(4)
    save(loss, 6, {"loss": 0.3})
    check()
    assert steps(loss) == [2, 4, 5, 6]  # 4 is pinned, though the worst
    loss.unpin(4)
    loss.remove_old_checkpoints(exclude_latest=False)
    check()
    assert steps(loss) == [2, 5]  # top-2 by loss, the latest lost its exemption
    save(loss, 7, {"loss": 0.6})
    check()
    assert steps(loss) == [2, 5, 7]


class _FailingRemove(LocalStorage):
    fail = True

    def rename(self, src: str, dst: str) -> None:
        src, dst = Path(src), Path(dst)
        if self.fail and src.name.startswith("step_") and ".ckpt" in dst.parts:
            raise PermissionError(f"cannot move {src}")
        super().rename(src, dst)


def test_a_prune_that_failed_is_retried_by_the_next_save(
    make_manager: Make, save: Save, caplog: pytest.LogCaptureFixture
) -> None:
    storage = _FailingRemove()
    manager = make_manager(retention=policies.LatestN(2), storage=storage)
    for step in (1, 2, 3, 4):
        save(manager, step, {})
    assert steps(manager) == [1, 2, 3, 4]  # every prune failed, and said so
    assert "could not prune" in caplog.text
    storage.fail = False
    save(manager, 5, {})
    assert steps(manager) == [4, 5]


@pytest.mark.parametrize("exclude_latest", [True, False])
def test_plan_retention_foretells_remove_old_checkpoints(
    make_manager: Make, save: Save, exclude_latest: bool
) -> None:
    writer = make_manager()  # keep-all while saving
    for step, loss in [(1, 0.2), (2, 0.1), (3, 0.5), (4, 0.9)]:
        save(writer, step, {"loss": loss})
    writer.close()
    manager = make_manager(metric_name="loss", higher_is_better=False, keep_top_k=1)
    assert [d.keep for d in manager.plan_retention()] == [False, True, False, True]
    plan = manager.plan_retention(exclude_latest=exclude_latest)
    manager.remove_old_checkpoints(exclude_latest=exclude_latest)
    assert steps(manager) == [d.step for d in plan if d.keep]
    assert steps(manager) == ([2, 4] if exclude_latest else [2])


@pytest.mark.parametrize("kind", ["file", "link", "directory without training_info.json"])
def test_finalize_never_replaces_what_is_not_a_checkpoint(
    make_manager: Make, ckpt_dir: Path, tmp_path: Path, kind: str
) -> None:
    manager = make_manager()
    stray = ckpt_dir / "step_3"
    if kind == "file":
        stray.write_bytes(b"precious")
    elif kind == "link":
        (tmp_path / "target").mkdir()
        stray.symlink_to(tmp_path / "target")
    else:
        stray.mkdir()
        (stray / "notes.txt").write_bytes(b"precious")
    tmp = manager.init_tmp_checkpoint(3, {"loss": 1.0})
    with pytest.raises(ckpt.CheckpointError, match="step_3 exists"):
        manager.finalize_checkpoint(tmp)
    assert manager.list_checkpoints() == []
    assert tmp.is_dir()  # kept, to finalize once the entry is moved away
    if kind == "directory without training_info.json":
        assert (stray / "notes.txt").read_bytes() == b"precious"
        stray.rename(tmp_path / "moved")
    else:
        assert os.path.lexists(stray)
        stray.unlink()
    manager.finalize_checkpoint(tmp)
    assert steps(manager) == [3]


def test_recovery_removes_a_half_written_pins_file(make_manager: Make, ckpt_dir: Path) -> None:
    make_manager().close()
    partial = ckpt_dir / ".ckpt" / ".pins.json.partial"
    partial.write_bytes(b'{"pinned": [')
    make_manager()
    assert not partial.exists()


class _CountingRetention:
    """A custom policy: keeps the two highest steps, and counts its calls."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def keep(self, checkpoints: Sequence[policies.CheckpointView]) -> dict[int, str]:
        self.sizes.append(len(checkpoints))
        return dict.fromkeys(sorted(c.step for c in checkpoints)[-2:], "mine")


def test_a_save_decides_over_everything_only_when_it_must(
    make_manager: Make, save: Save, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ckpt._directory.retention as manager_module

    full: list[int] = []
    real_decide = manager_module.decide

    def counting_decide(policy: Any, views: Any, **kwargs: Any) -> Any:
        full.append(len(views))
        return real_decide(policy, views, **kwargs)

    monkeypatch.setattr(manager_module, "decide", counting_decide)
    manager = make_manager(metric_name="loss", higher_is_better=False, keep_top_k=2)
    for step in range(1, 8):
        save(manager, step, {"loss": 1 / step})
    assert full == [1]  # the first save after opening; then only the new one is weighed
    manager.pin(7)
    save(manager, 8, {"loss": 0.5})
    save(manager, 9, {"loss": 0.5})
    assert full == [1, 3]  # a pin is a change the shortcut did not see: one full decision
    save(manager, 9, {"loss": 0.01})  # an overwrite changes a metric already weighed
    assert full == [1, 3, 3]
    assert steps(manager) == [7, 9]  # top-2 by loss; 7 is also pinned

    custom = _CountingRetention()
    other = make_manager(retention=custom)
    full.clear()
    save(other, 10, {})
    save(other, 11, {})
    assert full == [3, 4]  # a policy of unknown shape is always asked about everything
    assert custom.sizes == [3, 4]
    assert steps(other) == [7, 10, 11]


def test_best_and_latest_are_nemo_rls_strings_that_join_like_the_paths_it_hands_out(
    tmp_path: Path,
) -> None:
    import json
    import pickle

    from ckpt.storage import PathStr

    with CheckpointManager({"checkpoint_dir": str(tmp_path / "run"), "metric_name": "m"}) as m:
        tmp = m.init_tmp_checkpoint(3, {"m": 1.0})
        (tmp / "model.pt").write_bytes(b"w")
        m.finalize_checkpoint(tmp)
        latest, best = m.get_latest_checkpoint_path(), m.get_best_checkpoint_path()
    for path in (latest, best):
        assert isinstance(path, PathStr)
        assert path == str(tmp_path / "run" / "step_3")  # what NeMo RL's manager returns
        assert type(path / "model.pt") is type(tmp)  # what init_tmp_checkpoint returns
        assert (path / "model.pt").read_bytes() == b"w"
        assert path.path == tmp_path / "run" / "step_3"
        assert json.loads(json.dumps({"resume": path})) == {"resume": str(path)}
        again = pickle.loads(pickle.dumps(path))
        assert (again, again.path) == (path, path.path)


# --- a custom policy's wrong return type is caught before anything is committed (issue 37 #13) --


class _StepsNotViews:
    """A ranking that returns steps instead of the checkpoints."""

    def rank(self, checkpoints: Any) -> Any:
        return sorted((c.step for c in checkpoints), reverse=True)

    def __repr__(self) -> str:
        return "_StepsNotViews()"


def test_a_custom_ranking_returning_the_wrong_type_fails_before_any_save(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "run"
    with pytest.raises(
        TypeError, match=r"_StepsNotViews\(\)\.rank\(\) must return .* got \[3, 2, 1\]"
    ):
        ckpt.CheckpointManager(
            {"checkpoint_dir": str(directory), "metric_name": "loss", "keep_top_k": 1},
            ranking=_StepsNotViews(),
        )
    assert not directory.exists()  # nothing was opened, let alone committed


# --- mistakes are said when made (issue 37 #9, #10) -------------------------------------------


def test_a_metric_typo_is_said_at_the_first_commit_with_the_closest_key(
    make_manager: Make, save: Save, caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager(metric_name="val_loss", higher_is_better=False, keep_top_k=2)
    with caplog.at_level("WARNING", logger="ckpt"):
        save(manager, 1, {"val_los": 0.5, "lr": 0.1})
        save(manager, 2, {"val_los": 0.4, "lr": 0.1})
    said = [
        r.getMessage() for r in caplog.records if "the metric this run ranks by" in r.getMessage()
    ]
    assert len(said) == 1  # once, at the first commit
    assert "step 1's training info has no usable `val_loss`" in said[0]
    assert "did you mean `val_los`?" in said[0]


def test_keep_top_k_without_a_metric_says_it_keeps_the_newest(
    make_manager: Make, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="ckpt"):
        make_manager(keep_top_k=2)
    assert "`keep_top_k: 2` without `metric_name` ranks by recency" in caplog.text
    assert "keeps the 2 newest checkpoints" in caplog.text
