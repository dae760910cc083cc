"""Each defect of the seed (DESIGN.md, "What the seed gets wrong" 1-12) is right here.

Every test here fails on the seed's behaviour.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest

import ckpt
import policies
from ckpt import LocalStorage

Make = Callable[..., ckpt.CheckpointManager]
Save = Callable[..., Path]


def steps(manager: ckpt.CheckpointManager) -> list[int]:
    return [record.step for record in manager.list_checkpoints()]


def step_dirs(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.startswith("step_")}


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"non-standard JSON token {token} in training_info.json")

    return json.loads(text, parse_constant=refuse)


# --- 1. NaN metric ----------------------------------------------------------------------


@pytest.mark.parametrize(("higher_is_better", "kept"), [(True, {3}), (False, {1, 3})])
def test_1_nan_metric_is_pruned_not_the_best(
    make_manager: Make, save: Save, ckpt_dir: Path, higher_is_better: bool, kept: set[int]
) -> None:
    manager = make_manager(metric_name="score", higher_is_better=higher_is_better, keep_top_k=1)
    for step, score in [(1, 0.5), (2, math.nan), (3, 0.9)]:
        save(manager, step, {"score": score})
    assert set(steps(manager)) == kept
    assert step_dirs(ckpt_dir) == {f"step_{s}" for s in kept}
    best = 3 if higher_is_better else 1
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / f"step_{best}")


@pytest.mark.parametrize("higher_is_better", [True, False])
@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(math.nan, id="float-nan"),
        pytest.param(np.float32("nan"), id="numpy-nan"),
        pytest.param(math.inf, id="inf"),
        pytest.param(-math.inf, id="minus-inf"),
        pytest.param("0.1", id="string"),
        pytest.param(None, id="none"),
    ],
)
def test_1_unusable_latest_metric_never_displaces_the_best(
    make_manager: Make, save: Save, ckpt_dir: Path, higher_is_better: bool, bad: Any
) -> None:
    manager = make_manager(metric_name="score", higher_is_better=higher_is_better, keep_top_k=1)
    save(manager, 1, {"score": 0.5})
    save(manager, 2, {"score": 0.9 if higher_is_better else 0.1})
    save(manager, 3, {"score": bad})
    # the unusable one is only kept as the exempt latest step, never as the best
    assert steps(manager) == [2, 3]
    with pytest.warns(
        ckpt.MissingMetricWarning, match=r"Ignoring 1 checkpoint\(s\) at step\(s\) 3 "
    ):
        assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_2")
    manager.remove_old_checkpoints(exclude_latest=False)
    assert steps(manager) == [2]
    assert step_dirs(ckpt_dir) == {"step_2"}


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("higher_is_better", [True, False])
def test_1_nan_written_by_the_seed_ranks_last(
    make_manager: Make,
    write_step: Callable[..., Path],
    ckpt_dir: Path,
    token: str,
    higher_is_better: bool,
) -> None:
    good = b'{"score": 0.9}' if higher_is_better else b'{"score": 0.1}'
    write_step(ckpt_dir, "step_1", raw_info=b'{"score": 0.5}')
    write_step(ckpt_dir, "step_2", raw_info=good)
    write_step(ckpt_dir, "step_3", raw_info=b'{"score": ' + token.encode() + b"}")
    manager = make_manager(metric_name="score", higher_is_better=higher_is_better, keep_top_k=1)
    assert steps(manager) == [1, 2, 3]  # seed files with NaN tokens are still readable
    with pytest.warns(ckpt.MissingMetricWarning, match="no usable 'score'"):
        assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_2")
    manager.remove_old_checkpoints(exclude_latest=False)
    assert step_dirs(ckpt_dir) == {"step_2"}


# --- 2. missing metric ------------------------------------------------------------------


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_2_missing_metric_does_not_raise_and_ranks_last(
    make_manager: Make, save: Save, ckpt_dir: Path, higher_is_better: bool
) -> None:
    manager = make_manager(metric_name="score", higher_is_better=higher_is_better, keep_top_k=1)
    save(manager, 1, {"score": 0.5})
    save(manager, 2, {"train_loss": 1.0})  # no validation this step
    assert steps(manager) == [1, 2]  # kept as the latest only
    with pytest.warns(
        ckpt.MissingMetricWarning, match=r"Ignoring 1 checkpoint\(s\) at step\(s\) 2 "
    ):
        assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_1")
    save(manager, 3, {"score": 0.4 if higher_is_better else 0.6})
    assert steps(manager) == [1, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every checkpoint has the metric now: no warning
        assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_1")


def test_2_without_any_metric_the_best_is_the_latest(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    manager = make_manager(metric_name="score", keep_top_k=2)
    for step in (1, 2, 3, 4):
        save(manager, step, {"train_loss": 1.0 / step})
    assert steps(manager) == [3, 4]  # without the metric, ties go to the higher steps
    with pytest.warns(ckpt.MissingMetricWarning) as caught:
        assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_4")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert messages[0].startswith("Ignoring 2 checkpoint(s) at step(s) 3-4 ")
    assert "Returning latest checkpoint, step 4" in messages[1]


# --- 3. caller's dict and JSON types -----------------------------------------------------


def test_3_training_info_is_not_mutated_and_stored_as_plain_json(make_manager: Make) -> None:
    manager = make_manager()
    array = np.array([2.5])
    f32 = np.float32(1.25)
    i64 = np.int64(7)
    history = [np.int32(1), 2]
    nested = {"lr": np.float64(0.1), "history": history}
    info: dict[str, Any] = {
        "array": array,
        "f32": f32,
        "i64": i64,
        "nested": nested,
        "nan": math.nan,
        "np_inf": np.float64("inf"),
        "name": "run",
        "flag": True,
        "nothing": None,
    }
    before = dict(info)
    tmp = manager.init_tmp_checkpoint(1, info)
    assert info.keys() == before.keys()
    for key, value in before.items():
        assert info[key] is value, key
    assert isinstance(info["array"], np.ndarray)
    assert info["array"].tolist() == [2.5]
    assert list(nested) == ["lr", "history"]
    assert nested["history"] is history
    assert type(nested["lr"]) is np.float64
    assert type(history[0]) is np.int32
    assert len(history) == 2

    text = (tmp / "training_info.json").read_text()
    assert "NaN" not in text
    assert "Infinity" not in text
    data = _strict_json(text)
    assert data == {
        "array": 2.5,
        "f32": 1.25,
        "i64": 7,
        "nested": {"lr": 0.1, "history": [1, 2]},
        "nan": None,
        "np_inf": None,
        "name": "run",
        "flag": True,
        "nothing": None,
    }
    assert type(data["i64"]) is int
    assert type(data["f32"]) is float
    assert type(data["nested"]["history"][0]) is int


@pytest.mark.torch
def test_3_torch_tensors_are_not_replaced_and_stored_as_numbers(make_manager: Make) -> None:
    torch = pytest.importorskip("torch")
    manager = make_manager()
    loss = torch.tensor(0.5, requires_grad=True)
    count = torch.tensor([3])
    nan = torch.tensor(float("nan"))
    info = {"loss": loss, "count": count, "nan": nan, "np": np.float64(2.0)}
    before = dict(info)
    tmp = manager.init_tmp_checkpoint(1, info)
    for key, value in before.items():
        assert info[key] is value
    assert isinstance(info["loss"], torch.Tensor)
    assert info["loss"].requires_grad
    assert info["count"].tolist() == [3]
    text = (tmp / "training_info.json").read_text()
    assert "NaN" not in text
    data = _strict_json(text)
    assert data == {"loss": 0.5, "count": 3, "nan": None, "np": 2.0}
    assert type(data["count"]) is int
    assert type(data["loss"]) is float


# --- 4. unstorable values leave nothing --------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(np.zeros(3), id="numpy-array"),
        pytest.param(np.zeros((2, 2)), id="numpy-matrix"),
        pytest.param(np.array([]), id="numpy-empty"),
        pytest.param(datetime.datetime(2024, 1, 1), id="datetime"),
        pytest.param(object(), id="object"),
        pytest.param({1, 2}, id="set"),
        pytest.param(b"bytes", id="bytes"),
        pytest.param({1: "int key"}, id="int-key"),
        pytest.param([1, {"deep": object()}], id="nested"),
    ],
)
def test_4_unstorable_training_info_raises_and_writes_nothing(
    make_manager: Make, ckpt_dir: Path, snapshot: Callable[[Path], Any], bad: Any
) -> None:
    manager = make_manager()
    before = snapshot(ckpt_dir)
    info = {"ok": 1.0, "bad": bad}
    with pytest.raises(ckpt.SerializationError) as excinfo:
        manager.init_tmp_checkpoint(5, info)
    assert isinstance(excinfo.value, ValueError)
    assert "bad" in str(excinfo.value)  # it says where the value is
    assert snapshot(ckpt_dir) == before
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [".ckpt"]
    assert info["bad"] is bad


class _Opaque:
    pass


@pytest.mark.parametrize(
    "run_config",
    [
        pytest.param({"when": datetime.date(2024, 1, 1)}, id="date"),
        pytest.param({"model": {"obj": _Opaque()}}, id="object"),
        pytest.param({_Opaque(): 1}, id="object-key"),
        pytest.param({"tags": {"a", "b"}}, id="set"),
        pytest.param({"array": np.ones(4)}, id="numpy-array"),
    ],
)
def test_4_unstorable_run_config_raises_and_writes_nothing(
    make_manager: Make, ckpt_dir: Path, snapshot: Callable[[Path], Any], run_config: Any
) -> None:
    manager = make_manager()
    before = snapshot(ckpt_dir)
    with pytest.raises(ckpt.SerializationError) as excinfo:
        manager.init_tmp_checkpoint(5, {"loss": 1.0}, run_config)
    assert isinstance(excinfo.value, ValueError)
    assert snapshot(ckpt_dir) == before
    assert not (ckpt_dir / "tmp_step_5").exists()


def _circular_dict() -> dict[str, Any]:
    loop: dict[str, Any] = {"lr": 0.1}
    loop["self"] = loop
    return loop


def _circular_list() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


@pytest.mark.parametrize("make", [_circular_dict, _circular_list], ids=["dict", "list"])
@pytest.mark.parametrize("where", ["training_info", "run_config"])
def test_4_a_circular_value_is_a_serialization_error(
    make_manager: Make,
    ckpt_dir: Path,
    snapshot: Callable[[Path], Any],
    make: Callable[[], Any],
    where: str,
) -> None:
    """json.dump calls this a ValueError ("Circular reference detected"); so do we."""
    manager = make_manager()
    before = snapshot(ckpt_dir)
    info, run_config = (
        ({"bad": make()}, None) if where == "training_info" else ({}, {"bad": make()})
    )
    with pytest.raises(ckpt.SerializationError):
        manager.init_tmp_checkpoint(5, info, run_config)
    assert snapshot(ckpt_dir) == before


@pytest.mark.torch
def test_4_multi_element_tensor_raises_and_writes_nothing(
    make_manager: Make, ckpt_dir: Path, snapshot: Callable[[Path], Any]
) -> None:
    torch = pytest.importorskip("torch")
    manager = make_manager()
    before = snapshot(ckpt_dir)
    with pytest.raises(ckpt.SerializationError, match=r"\(2, 3\)"):
        manager.init_tmp_checkpoint(5, {"logits": torch.zeros(2, 3)})
    assert snapshot(ckpt_dir) == before


# --- 5. foreign names beside the checkpoints ----------------------------------------------


def test_5_foreign_entries_are_ignored_and_never_deleted(
    make_manager: Make,
    save: Save,
    write_step: Callable[..., Path],
    ckpt_dir: Path,
    snapshot: Callable[[Path], Any],
) -> None:
    outside = write_step(
        ckpt_dir.parent, "outside", {"score": 100.0}, files={"weights": b"precious"}
    )
    ckpt_dir.mkdir()
    write_step(ckpt_dir, "step_final", {"score": 99.0}, files={"model": b"final"})
    write_step(ckpt_dir, "step_10-hf", {"score": 98.0}, files={"model": b"hf"})
    write_step(ckpt_dir, "step_007", {"score": 97.0})
    (ckpt_dir / "step_7").write_text("a file, not a directory")
    (ckpt_dir / "step_9").symlink_to(outside, target_is_directory=True)
    foreign = {"step_final", "step_10-hf", "step_007", "step_7", "step_9"}
    outside_before = snapshot(outside)
    foreign_before = {name: snapshot(ckpt_dir / name) for name in foreign}

    manager = make_manager(metric_name="score", keep_top_k=1)
    assert manager.get_latest_checkpoint_path() is None
    assert manager.get_best_checkpoint_path() is None
    assert manager.list_checkpoints() == []
    for step, score in [(1, 0.1), (2, 0.3), (3, 0.2)]:
        save(manager, step, {"score": score})
    manager.remove_old_checkpoints(exclude_latest=False)
    assert steps(manager) == [2]
    assert manager.get_latest_checkpoint_path() == str(ckpt_dir / "step_2")
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_2")
    assert [d.step for d in manager.plan_retention()] == [2]
    for name in foreign:
        assert snapshot(ckpt_dir / name) == foreign_before[name], name
    assert snapshot(outside) == outside_before

    manager.close()
    reader = make_manager(metric_name="score", keep_top_k=1, read_only=True)
    assert steps(reader) == [2]
    assert reader.get_latest_checkpoint_path() == str(ckpt_dir / "step_2")


def test_5_pruning_does_not_follow_a_link_inside_a_checkpoint(
    make_manager: Make, save: Save, ckpt_dir: Path, tmp_path: Path, snapshot: Callable[..., Any]
) -> None:
    outside = tmp_path / "dataset"
    outside.mkdir()
    (outside / "shard").write_bytes(b"data")
    before = snapshot(outside)
    manager = make_manager(retention=policies.LatestN(1))
    tmp = manager.init_tmp_checkpoint(1, {})
    (tmp / "data").symlink_to(outside, target_is_directory=True)
    manager.finalize_checkpoint(tmp)
    save(manager, 2, {})
    assert steps(manager) == [2]
    assert not (ckpt_dir / "step_1").exists()
    assert snapshot(outside) == before


# --- 6. overwrite ------------------------------------------------------------------------


def test_6_finalizing_a_step_twice_keeps_the_new_content(
    make_manager: Make, save: Save, ckpt_dir: Path, tree: Callable[[Path], Any]
) -> None:
    manager = make_manager(metric_name="score", keep_top_k=2)
    save(manager, 1, {"score": 0.1}, files={"model.bin": b"old", "only_old": b"x"})
    save(manager, 1, {"score": 0.7}, files={"model.bin": b"new"})
    files = tree(ckpt_dir / "step_1")
    assert sorted(files) == [".ckpt-files.json", "model.bin", "training_info.json"]
    assert files["model.bin"] == b"new"
    assert manager.load_training_info(ckpt_dir / "step_1") == {"score": 0.7}
    assert [dict(r.info) for r in manager.list_checkpoints()] == [{"score": 0.7}]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [".ckpt", "step_1"]


def test_6_crash_between_the_two_renames_is_rolled_back_on_restart(
    make_manager: Make, write_step: Callable[..., Path], ckpt_dir: Path, tree: Callable[..., Any]
) -> None:
    write_step(ckpt_dir, "step_4", {"score": 0.4}, files={"model.bin": b"four"})
    old = write_step(ckpt_dir, "old_step_5", {"score": 0.5}, files={"model.bin": b"old five"})
    write_step(ckpt_dir, "tmp_step_5", {"score": 0.9}, files={"model.bin": b"new fi"})
    old_content = tree(old)
    manager = make_manager(metric_name="score", keep_top_k=3)
    assert steps(manager) == [4, 5]
    assert tree(ckpt_dir / "step_5") == old_content
    assert manager.get_latest_checkpoint_path() == str(ckpt_dir / "step_5")
    assert manager.load_training_info(manager.get_latest_checkpoint_path()) == {"score": 0.5}
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [".ckpt", "step_4", "step_5"]


# --- 7. half-deleted checkpoints ---------------------------------------------------------


def test_7_half_removed_trash_is_emptied_on_restart(
    make_manager: Make, write_step: Callable[..., Path], ckpt_dir: Path
) -> None:
    write_step(ckpt_dir, "step_1", {"score": 1.0})
    trash = ckpt_dir / ".ckpt" / "trash"
    write_step(trash, "step_2.0123456789ab", None, files={"shard_3.bin": b"x", "sub/y": b"y"})
    manager = make_manager(metric_name="score")
    assert list(trash.iterdir()) == []
    assert steps(manager) == [1]
    assert [a.kind for a in manager.recovery] == ["finished_delete"]


def test_7_a_step_without_training_info_is_never_reported_nor_deleted(
    make_manager: Make, save: Save, write_step: Callable[..., Path], ckpt_dir: Path
) -> None:
    write_step(ckpt_dir, "step_1", {"score": 0.1})
    write_step(ckpt_dir, "step_8", None, files={"model.bin": b"half"})  # seed's half rmtree
    write_step(ckpt_dir, "step_9", raw_info=b'{"score": 0.', files={"model.bin": b"x"})
    write_step(ckpt_dir, "step_10", raw_info=b"[1, 2]")
    manager = make_manager(metric_name="score", keep_top_k=1)
    assert steps(manager) == [1]
    assert manager.get_latest_checkpoint_path() == str(ckpt_dir / "step_1")
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_1")
    save(manager, 2, {"score": 0.5})
    save(manager, 3, {"score": 0.2})
    manager.remove_old_checkpoints(exclude_latest=False)
    assert steps(manager) == [2]
    assert step_dirs(ckpt_dir) == {"step_2", "step_8", "step_9", "step_10"}
    assert (ckpt_dir / "step_8" / "model.bin").read_bytes() == b"half"
    manager.close()
    reader = make_manager(metric_name="score", read_only=True)
    assert steps(reader) == [2]
    assert reader.get_latest_checkpoint_path() == str(ckpt_dir / "step_2")


class _Killed(Exception):
    """Stands for the process dying: the operation it interrupts is not done."""


class _DiesInRemoveTree(LocalStorage):
    """Removes one file of the tree, then 'dies', like a kill in the middle of rmtree."""

    def __init__(self) -> None:
        self.armed = False

    def remove_tree(self, path: str) -> None:
        path = Path(path)
        if self.armed:
            files = sorted(p for p in path.rglob("*") if p.is_file())
            files[0].unlink()
            raise _Killed(path)
        super().remove_tree(path)


@pytest.mark.usefixtures("deletes_inline")
def test_7_a_kill_during_removal_never_leaves_a_half_deleted_step(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    storage = _DiesInRemoveTree()
    manager = make_manager(metric_name="score", keep_top_k=1, storage=storage)
    save(manager, 1, {"score": 0.5}, files={"a.bin": b"a", "b.bin": b"b"})
    save(manager, 2, {"score": 0.1})
    storage.armed = True
    with pytest.raises(_Killed):
        save(manager, 3, {"score": 0.9})  # step 1 is pruned first, and its removal dies
    assert step_dirs(ckpt_dir) == {"step_2", "step_3"}
    manager.close()
    restarted = make_manager(metric_name="score", keep_top_k=1)
    assert [a.kind for a in restarted.recovery] == ["finished_delete"]
    assert steps(restarted) == [2, 3]
    assert list((ckpt_dir / ".ckpt" / "trash").iterdir()) == []


# --- 8. ties -----------------------------------------------------------------------------


@pytest.mark.parametrize(("higher_is_better", "worse"), [(True, 0.1), (False, 0.9)])
def test_8_ties_go_to_the_higher_step_in_best_and_pruning(
    make_manager: Make, save: Save, ckpt_dir: Path, higher_is_better: bool, worse: float
) -> None:
    manager = make_manager(metric_name="score", higher_is_better=higher_is_better, keep_top_k=1)
    save(manager, 1, {"score": 0.5})
    save(manager, 2, {"score": 0.5})
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_2")
    save(manager, 3, {"score": worse})
    assert steps(manager) == [2, 3]
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_2")


def test_8_best_is_what_pruning_keeps_when_all_tie(
    make_manager: Make, write_step: Callable[..., Path], ckpt_dir: Path
) -> None:
    for step in (5, 3, 9, 1, 7):  # creation order differs from step order
        write_step(ckpt_dir, f"step_{step}", {"score": 1.0})
    manager = make_manager(metric_name="score", higher_is_better=False, keep_top_k=2)
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_9")
    manager.remove_old_checkpoints(exclude_latest=False)
    assert steps(manager) == [7, 9]
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_9")


# --- 9. config validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "mentions"),
    [
        pytest.param({"keep_top_k": -1}, ["keep_top_k", "-1"], id="negative-k"),
        pytest.param({"keep_top_k": "3"}, ["keep_top_k", "'3'"], id="string-k"),
        pytest.param({"keep_topk": 3}, ["keep_topk", "keep_top_k"], id="typo"),
        pytest.param({"metric": "score"}, ["metric", "metric_name"], id="typo-metric"),
        pytest.param({"higher_is_beter": False}, ["higher_is_beter"], id="typo-direction"),
        pytest.param({"save_period": 0}, ["save_period", "0"], id="zero-period"),
        pytest.param(
            {"keep_top_k": 2, "retention": {"kind": "latest_n", "n": 2}},
            ["keep_top_k", "retention"],
            id="both",
        ),
        pytest.param(
            {"metric_name": None, "retention": {"kind": "top_k", "k": 2}},
            ["metric_name"],
            id="top-k-without-metric",
        ),
    ],
)
def test_9_bad_config_fails_at_construction(
    ckpt_dir: Path, extra: dict[str, Any], mentions: list[str]
) -> None:
    config = {"checkpoint_dir": str(ckpt_dir), "metric_name": "score", **extra}
    with pytest.raises(pydantic.ValidationError) as excinfo:
        ckpt.CheckpointManager(config)
    message = str(excinfo.value)
    for word in mentions:
        assert word in message
    assert not ckpt_dir.exists()  # validated before anything touches the disk


# --- 10. finalize cost -------------------------------------------------------------------


class _CountingStorage(LocalStorage):
    def __init__(self) -> None:
        self.info_reads: list[Path] = []

    def read_bytes(self, path: str, **kwargs: Any) -> bytes:
        path = Path(path)
        if path.name == "training_info.json":
            self.info_reads.append(path)
        return super().read_bytes(path, **kwargs)


def test_10_finalize_reads_only_its_own_training_info(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    first = make_manager(metric_name="score", keep_top_k=3)
    for step in range(1, 9):
        save(first, step, {"score": step % 4})
    first.close()
    storage = _CountingStorage()
    manager = make_manager(metric_name="score", keep_top_k=3, storage=storage)
    assert steps(manager) == [3, 6, 7, 8]
    assert storage.info_reads == []  # indexed at start from the catalog the first one left
    for step in (9, 10, 11):
        storage.info_reads.clear()
        save(manager, step, {"score": 0.5})
        assert storage.info_reads == [ckpt_dir / f"tmp_step_{step}" / "training_info.json"]
    storage.info_reads.clear()
    manager.get_best_checkpoint_path()
    manager.get_latest_checkpoint_path()
    manager.list_checkpoints()
    manager.plan_retention()
    manager.remove_old_checkpoints()
    assert storage.info_reads == []


# --- 11. durability ----------------------------------------------------------------------


class _RecordingStorage(LocalStorage):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def rename(self, src: str, dst: str) -> None:
        src, dst = Path(src), Path(dst)
        self.calls.append(("rename", src, dst))
        super().rename(src, dst)

    def exchange(self, a: str, b: str) -> bool:
        a, b = Path(a), Path(b)
        done = super().exchange(a, b)
        self.calls.append(("exchange", a, b, done))
        return done

    def remove_tree(self, path: str) -> None:
        path = Path(path)
        self.calls.append(("remove_tree", path))
        super().remove_tree(path)

    def sync_tree(self, path: str) -> None:
        path = Path(path)
        self.calls.append(("sync_tree", path))
        super().sync_tree(path)

    def sync_dir(self, path: str) -> None:
        path = Path(path)
        self.calls.append(("sync_dir", path))
        super().sync_dir(path)

    def replace_file(self, path: str, data: bytes, *, durable: bool) -> None:
        path = Path(path)
        self.calls.append(("replace_file", path, durable))
        super().replace_file(path, data, durable=durable)


def _index(calls: list[tuple[Any, ...]], *prefix: Any) -> int:
    for i, call in enumerate(calls):
        if call[: len(prefix)] == prefix:
            return i
    raise AssertionError(f"no call {prefix} in {calls}")


def test_11_finalize_syncs_the_tree_before_the_rename_and_the_parent_after(
    make_manager: Make, ckpt_dir: Path
) -> None:
    storage = _RecordingStorage()
    manager = make_manager(fsync=True, storage=storage)
    tmp = manager.init_tmp_checkpoint(1, {"score": 1.0})
    (tmp / "model.bin").write_bytes(b"weights")
    storage.calls.clear()
    manager.finalize_checkpoint(tmp)
    final = ckpt_dir / "step_1"
    synced = _index(storage.calls, "sync_tree", tmp)
    renamed = _index(storage.calls, "rename", tmp, final)
    assert synced < renamed
    assert ("sync_dir", ckpt_dir) in storage.calls[renamed + 1 :]


@pytest.mark.usefixtures("deletes_inline")
def test_11_overwrite_syncs_before_publishing_and_before_removing_the_old_copy(
    make_manager: Make, save: Save, ckpt_dir: Path
) -> None:
    storage = _RecordingStorage()
    manager = make_manager(fsync=True, storage=storage)
    save(manager, 1, {"v": 1})
    tmp = manager.init_tmp_checkpoint(1, {"v": 2})
    storage.calls.clear()
    manager.finalize_checkpoint(tmp)
    synced = _index(storage.calls, "sync_tree", tmp)
    kinds = [call[0] for call in storage.calls]
    published = next(
        i
        for i, call in enumerate(storage.calls)
        if (call[0] == "exchange" and call[3]) or call[:3] == ("rename", tmp, ckpt_dir / "step_1")
    )
    assert synced < published
    removed = kinds.index("remove_tree")
    assert ("sync_dir", ckpt_dir) in storage.calls[published + 1 : removed]
    assert manager.load_training_info(ckpt_dir / "step_1") == {"v": 2}


def test_11_every_file_and_directory_is_fsynced(
    make_manager: Make, ckpt_dir: Path, fsynced: list[str]
) -> None:
    manager = make_manager(fsync=True)
    tmp = manager.init_tmp_checkpoint(1, {"score": 1.0}, {"lr": 0.1})
    (tmp / "model.bin").write_bytes(b"weights")
    (tmp / "optim").mkdir()
    (tmp / "optim" / "state.bin").write_bytes(b"state")
    manager.finalize_checkpoint(tmp)
    wanted = {
        tmp / "training_info.json",
        tmp / "config.yaml",
        tmp / "model.bin",
        tmp / "optim" / "state.bin",
        tmp / "optim",
        tmp,
        ckpt_dir,
    }
    resolved = {Path(os.path.realpath(p)) for p in wanted}
    assert resolved <= {Path(p) for p in fsynced}
    assert fsynced[-1] == os.path.realpath(ckpt_dir)  # the rename into place is made durable


def test_11_fsync_false_syncs_nothing(
    make_manager: Make,
    save: Save,
    write_step: Callable[..., Path],
    ckpt_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_step(ckpt_dir, "tmp_step_9", {"v": 9})  # some recovery to do, too
    fsynced: list[int] = []
    monkeypatch.setattr(os, "fsync", fsynced.append)
    storage = _RecordingStorage()
    manager = make_manager(fsync=False, storage=storage, keep_top_k=1, metric_name="v")
    for step in (1, 2, 3, 3):
        save(manager, step, {"v": step})
    manager.pin(3)
    manager.unpin(3)
    assert steps(manager) == [3]
    kinds = {call[0] for call in storage.calls}
    assert "sync_tree" not in kinds
    assert "sync_dir" not in kinds
    replaced = [(call[1].name, call[2]) for call in storage.calls if call[0] == "replace_file"]
    assert replaced == [("ranking.json", False), ("pins.json", False), ("pins.json", False)]
    assert fsynced == []


# --- 12. logging, not printing -----------------------------------------------------------


def test_12_no_output_only_log_records(
    make_manager: Make,
    save: Save,
    ckpt_dir: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ckpt")
    (ckpt_dir / "tmp_step_1").mkdir(parents=True)  # left by a crash: recovery logs it
    manager = make_manager(metric_name="score", keep_top_k=1)
    for step, score in [(1, 0.1), (2, math.nan), (3, 0.3), (4, 0.2), (4, 0.25)]:
        save(manager, step, {"score": score}, files={"model.bin": b"m"})
    manager.pin(4)
    manager.remove_old_checkpoints(exclude_latest=False)
    manager.plan_retention()
    manager.get_best_checkpoint_path()
    manager.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""
    ours = [r for r in caplog.records if r.name == "ckpt"]
    pruned = [r for r in ours if "pruned" in r.getMessage()]
    assert {r.levelno for r in pruned} == {logging.INFO}
    assert any(str(ckpt_dir / "step_1") in r.getMessage() for r in pruned)
    assert any(str(ckpt_dir / "step_2") in r.getMessage() for r in pruned)
    assert any(r.levelno == logging.WARNING and "tmp_step_1" in r.getMessage() for r in ours)
