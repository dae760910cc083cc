"""NeMo RL's current manager API, as its training loops call it.

Config objects and attributes, run configs given as pydantic models, NeMo RL's
retention rule, the warnings of `get_best_checkpoint_path`, `get_resume_paths`, and
asynchronous finalization (`begin_finalization`, `finalize_pending`, `shutdown`).
"""

from __future__ import annotations

import enum
import json
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

import ckpt
from ckpt import CheckpointManager

Make = Callable[..., CheckpointManager]


class _Optim(enum.Enum):
    ADAM = "adam"


class RunConfig(BaseModel):
    """A run config as NeMo RL's loops pass it: a pydantic model, with an enum in it."""

    lr: float
    optimizer: _Optim
    path: Path


class CheckpointingConfig(BaseModel):
    """The shape of NeMo RL's pydantic checkpointing config (extra keys allowed)."""

    model_config = ConfigDict(extra="allow")

    enabled: bool
    checkpoint_dir: str | Path
    metric_name: str | None
    higher_is_better: bool
    save_period: int
    keep_top_k: int | None = None
    ft_keep_latest_k: int | None = None
    save_optimizer: bool = True
    save_data_plane: bool = False
    load_replay_buffer: bool | None = None
    pretrained_checkpoint: dict[str, str] | None = None


def _steps(manager: CheckpointManager) -> list[int]:
    return [r.step for r in manager.list_checkpoints()]


# --- configs, attributes and run configs ---------------------------------------------------


def test_a_pydantic_config_object_is_accepted_with_its_extra_keys(ckpt_dir: Path) -> None:
    config = CheckpointingConfig(
        enabled=True,
        checkpoint_dir=ckpt_dir,
        metric_name="val:loss",
        higher_is_better=False,
        save_period=10,
        keep_top_k=2,
        save_data_plane=True,
        load_replay_buffer=False,
        pretrained_checkpoint={"path": "/ckpts/base", "format": "megatron_bridge"},
        model_repo_id="org/model",  # an extra key NeMo RL carries for the loop
    )
    with CheckpointManager(config) as manager:
        assert manager.checkpoint_dir == ckpt_dir
        assert (manager.metric_name, manager.higher_is_better) == ("val:loss", False)
        assert (manager.keep_top_k, manager.save_period, manager.ft_keep_latest_k) == (2, 10, None)
        assert manager.save_optimizer is True
        assert manager.save_data_plane is True
        assert manager.load_replay_buffer is False
        pretrained = manager.pretrained_checkpoint
        assert isinstance(pretrained, ckpt.PretrainedCheckpoint)
        assert (pretrained.path, pretrained.format) == ("/ckpts/base", "megatron_bridge")
        assert manager.config.model_repo_id == "org/model"


def test_load_replay_buffer_is_tri_state_and_save_optimizer_defaults_to_true(
    ckpt_dir: Path,
) -> None:
    unset = ckpt.load_config({"checkpoint_dir": str(ckpt_dir)})
    assert unset.load_replay_buffer is None
    assert unset.save_optimizer is True
    assert unset.save_data_plane is False
    assert unset.protect_best is False
    assert ckpt.load_config({"checkpoint_dir": "x", "load_replay_buffer": True}).load_replay_buffer
    with pytest.raises(ValueError, match="format"):
        ckpt.load_config({"checkpoint_dir": "x", "pretrained_checkpoint": {"path": "p"}})


def test_any_mapping_is_a_config(ckpt_dir: Path) -> None:
    keys = MappingProxyType({"checkpoint_dir": str(ckpt_dir), "keep_top_k": 2, "fsync": False})
    with CheckpointManager(keys) as manager:
        assert manager.keep_top_k == 2


def test_a_config_of_another_type_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="a mapping of config keys or a pydantic model"):
        CheckpointManager(["checkpoint_dir", "x"])  # type: ignore[arg-type]


def test_a_pydantic_run_config_is_dumped_in_json_mode(make_manager: Make) -> None:
    manager = make_manager()
    run_config = RunConfig(lr=0.1, optimizer=_Optim.ADAM, path=Path("/data"))
    tmp = manager.init_tmp_checkpoint(1, {"loss": 0.5}, run_config)
    assert yaml.safe_load((tmp / "config.yaml").read_text()) == {
        "lr": 0.1,
        "optimizer": "adam",
        "path": "/data",
    }


# --- NeMo RL's retention rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "kept"),
    [
        ({"keep_top_k": 2}, [1, 3, 6]),  # the 2 lowest losses of all steps, and the latest
        ({"keep_top_k": 1, "save_period": 2}, [6]),
        ({"ft_keep_latest_k": 2, "save_period": 100}, [5, 6]),
        ({"ft_keep_latest_k": 1, "save_period": 2}, [2, 4, 6]),  # every multiple, and latest
        ({"keep_top_k": 1, "ft_keep_latest_k": 2, "save_period": 2}, [5, 6]),
        ({}, [1, 2, 3, 4, 5, 6]),
    ],
)
def test_retention_is_nemo_rls_union(
    make_manager: Make, keys: dict[str, Any], kept: list[int]
) -> None:
    manager = make_manager(metric_name="loss", higher_is_better=False, **keys)
    for step, loss in [(1, 0.1), (2, 0.9), (3, 0.2), (4, 0.8), (5, 0.3), (6, 0.7)]:
        tmp = manager.init_tmp_checkpoint(step, {"loss": loss})
        manager.finalize_checkpoint(tmp)
    assert _steps(manager) == kept


def test_with_a_save_period_the_best_of_all_steps_can_go_unless_protected(
    make_manager: Make, tmp_path: Path
) -> None:
    history = [(1, 0.99), (2, 0.5), (3, 0.95), (4, 0.9), (5, 0.2), (6, 0.3)]  # reward
    # Multiples of 2 compete: 4 is their best. Step 1 is the best of all steps.
    for protect, kept in [(False, [4, 6]), (True, [1, 4, 6])]:
        manager = make_manager(
            checkpoint_dir=str(tmp_path / str(protect)),
            metric_name="reward",
            keep_top_k=1,
            save_period=2,
            protect_best=protect,
        )
        for step, reward in history:
            manager.finalize_checkpoint(manager.init_tmp_checkpoint(step, {"reward": reward}))
        assert _steps(manager) == kept, protect


def test_the_run_config_file_holds_what_nemo_rl_writes(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager()
    manager.finalize_checkpoint(manager.init_tmp_checkpoint(3, {"loss": 0.5}, {"model": "m"}))
    assert json.loads((ckpt_dir / "step_3" / "training_info.json").read_text()) == {"loss": 0.5}
    assert yaml.safe_load((ckpt_dir / "step_3" / "config.yaml").read_text()) == {"model": "m"}


# --- warnings of get_best_checkpoint_path ---------------------------------------------------


def test_best_warns_once_naming_the_checkpoints_without_the_metric(make_manager: Make) -> None:
    manager = make_manager(metric_name="loss", higher_is_better=False)
    for step, info in [(1, {"loss": 0.5}), (2, {"acc": 0.8}), (3, {"loss": 0.3}), (4, {})]:
        manager.finalize_checkpoint(manager.init_tmp_checkpoint(step, info))
    with pytest.warns(ckpt.MissingMetricWarning) as caught:
        best = manager.get_best_checkpoint_path()
    assert best == str(manager.checkpoint_dir / "step_3")
    (warning,) = caught
    assert str(warning.message).startswith("Ignoring 2 checkpoint(s) at step(s) 2, 4 ")
    assert "val_at_end" in str(warning.message)  # what a NeMo RL user can do about it
    assert issubclass(warning.category, UserWarning)


def test_best_warns_twice_when_no_checkpoint_has_the_metric(make_manager: Make) -> None:
    manager = make_manager(metric_name="loss")
    for step in (1, 2, 3):
        manager.finalize_checkpoint(manager.init_tmp_checkpoint(step, {"acc": step}))
    reader = make_manager(metric_name="loss", read_only=True)
    for queried in (manager, reader):
        with pytest.warns(ckpt.MissingMetricWarning) as caught:
            assert queried.get_best_checkpoint_path() == str(manager.checkpoint_dir / "step_3")
        first, second = (str(w.message) for w in caught)
        assert first.startswith("Ignoring 3 checkpoint(s) at step(s) 1-3 ")
        assert second.startswith("No checkpoints contain metric 'loss'")
        assert "Returning latest checkpoint, step 3" in second


def test_the_count_of_checkpoints_without_the_metric_follows_saves_and_prunes(
    make_manager: Make,
) -> None:
    manager = make_manager(metric_name="loss", higher_is_better=False, keep_top_k=1)
    manager.finalize_checkpoint(manager.init_tmp_checkpoint(1, {"loss": 0.5}))
    manager.finalize_checkpoint(manager.init_tmp_checkpoint(2, {}))  # kept: the latest
    with pytest.warns(
        ckpt.MissingMetricWarning, match=r"Ignoring 1 checkpoint\(s\) at step\(s\) 2 "
    ):
        manager.get_best_checkpoint_path()
    manager.finalize_checkpoint(manager.init_tmp_checkpoint(3, {"loss": 0.7}))  # prunes 2
    assert _steps(manager) == [1, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert manager.get_best_checkpoint_path() == str(manager.checkpoint_dir / "step_1")


# --- get_resume_paths --------------------------------------------------------------------------


def _megatron_iteration(
    step_dir: Path, component: str, common: dict[str, Any], **sharded: Any
) -> Path:
    """A Megatron checkpoint as megatron-core reads it: common state, and torch_dist shards."""
    import torch
    import torch.distributed.checkpoint as dcp

    iteration = step_dir / component / "weights" / "iter_0000000"
    iteration.mkdir(parents=True)
    torch.save(common, iteration / "common.pt")
    if sharded:
        with warnings.catch_warnings():  # DCP says it saves from one process: it does
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(sharded, checkpoint_id=str(iteration), no_dist=True)
    backends = {"sharded_backend": "torch_dist", "sharded_backend_version": 1}
    backends |= {"common_backend": "torch", "common_backend_version": 1}
    (iteration / "metadata.json").write_text(json.dumps(backends))
    return iteration


def test_resume_paths_of_no_checkpoint_are_none() -> None:
    assert CheckpointManager.get_resume_paths(None) == (None, None)
    assert CheckpointManager.get_resume_paths("") == (None, None)


@pytest.mark.parametrize("component", ["policy", "value"])
def test_resume_paths_of_a_dtensor_checkpoint(tmp_path: Path, component: str) -> None:
    (tmp_path / component / "weights").mkdir(parents=True)
    (tmp_path / component / "optimizer").mkdir()
    weights, optimizer = CheckpointManager.get_resume_paths(tmp_path, model_component=component)
    assert (weights, optimizer) == (
        tmp_path / component / "weights",
        tmp_path / component / "optimizer",
    )
    if component == "policy":  # the default, as for NeMo RL's one-argument callers
        assert CheckpointManager.get_resume_paths(str(tmp_path)) == (weights, optimizer)


def test_resume_paths_without_optimizer_state_warn(tmp_path: Path) -> None:
    (tmp_path / "policy" / "weights").mkdir(parents=True)  # saved with save_optimizer: false
    with pytest.warns(UserWarning, match="Optimizer state not found under"):
        assert CheckpointManager.get_resume_paths(tmp_path) == (
            tmp_path / "policy" / "weights",
            None,
        )


def test_resume_paths_of_megatron_checkpoints_ask_megatron_core(tmp_path: Path) -> None:
    import torch

    with_common = tmp_path / "common"
    _megatron_iteration(with_common, "policy", {"optimizer": {"step": 3}, "iteration": 1})
    weights, optimizer = CheckpointManager.get_resume_paths(with_common)
    assert (weights, optimizer) == (
        with_common / "policy" / "weights",
        with_common / "policy" / "optimizer",
    )

    sharded = tmp_path / "sharded"  # a MoE's ChainedOptimizer prefixes its keys
    state = {"decoder.w": torch.zeros(2), "chained_1.optimizer.state.exp_avg": torch.zeros(2)}
    _megatron_iteration(sharded, "value", {"iteration": 1}, **state)
    _, optimizer = CheckpointManager.get_resume_paths(sharded, model_component="value")
    assert optimizer == sharded / "value" / "optimizer"

    weights_only = tmp_path / "weights-only"
    _megatron_iteration(weights_only, "policy", {"iteration": 1}, **{"decoder.w": torch.zeros(2)})
    with pytest.warns(UserWarning, match="Optimizer state not found"):
        assert CheckpointManager.get_resume_paths(weights_only)[1] is None


def test_resume_paths_of_a_megatron_checkpoint_without_megatron_core_name_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iteration = tmp_path / "policy" / "weights" / "iter_0000000"
    iteration.mkdir(parents=True)
    (iteration / "common.pt").write_bytes(b"")
    for name in [n for n in sys.modules if n.split(".")[0] == "megatron"] + ["megatron"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(
        ImportError, match=r"needs megatron-core: pip install -e '\.\[megatron\]' in ckpt's clone"
    ):
        CheckpointManager.get_resume_paths(tmp_path)


# --- asynchronous finalization -------------------------------------------------------------


def test_finalization_waits_for_the_writers_then_commits_in_the_background(
    make_manager: Make, ckpt_dir: Path
) -> None:
    manager = make_manager()
    tmp = manager.init_tmp_checkpoint(1, {"loss": 0.1})
    release = threading.Event()
    order: list[str] = []

    def writers_done() -> None:  # stands for Megatron's finalize_async_save
        assert release.wait(10)
        (tmp / "model.bin").write_bytes(b"written late")
        order.append("waited")

    manager.begin_finalization(tmp, wait_fn=writers_done)  # returns at once
    assert manager.has_pending_finalization
    assert not (ckpt_dir / "step_1").exists()
    release.set()
    manager.finalize_pending()
    assert order == ["waited"]
    assert not manager.has_pending_finalization
    assert (ckpt_dir / "step_1" / "model.bin").read_bytes() == b"written late"
    assert _steps(manager) == [1]
    manager.finalize_pending()  # nothing pending: a no-op


def test_a_second_finalization_waits_for_the_first_and_commits_in_order(make_manager: Make) -> None:
    manager = make_manager()
    first = manager.init_tmp_checkpoint(1, {})
    gate = threading.Event()
    manager.begin_finalization(first, wait_fn=lambda: gate.wait(10))
    second = manager.init_tmp_checkpoint(2, {})  # the loop goes on meanwhile
    threading.Timer(0.2, gate.set).start()
    manager.begin_finalization(second)  # blocks until the first is committed
    assert _steps(manager) in ([1], [1, 2])
    manager.shutdown()
    assert _steps(manager) == [1, 2]


def test_a_failed_finalization_is_raised_once_and_commits_nothing(
    make_manager: Make, ckpt_dir: Path
) -> None:
    manager = make_manager()
    tmp = manager.init_tmp_checkpoint(1, {})

    def failed_writes() -> None:
        raise ValueError("a worker's async write failed")

    manager.begin_finalization(tmp, wait_fn=failed_writes)
    with pytest.raises(
        ckpt.FinalizationError, match=r"^Background checkpoint finalization failed"
    ) as caught:
        manager.finalize_pending()
    assert isinstance(caught.value, RuntimeError)
    assert isinstance(caught.value.__cause__, ValueError)
    assert not manager.has_pending_finalization
    manager.finalize_pending()  # raised once: now clean
    assert _steps(manager) == []
    manager.begin_finalization(manager.init_tmp_checkpoint(1, {"retry": True}))
    manager.shutdown()
    assert _steps(manager) == [1]
    assert not (ckpt_dir / "tmp_step_1").exists()


def test_shutdown_waits_for_pruning_and_leaves_the_manager_usable(make_manager: Make) -> None:
    manager = make_manager(keep_top_k=1)  # by recency: the latest is the one kept
    for step in (1, 2, 3):
        manager.begin_finalization(manager.init_tmp_checkpoint(step, {}))
    manager.shutdown()
    manager.shutdown()
    assert _steps(manager) == [3]
    manager.begin_finalization(manager.init_tmp_checkpoint(4, {}))
    manager.shutdown()
    assert _steps(manager) == [4]


class _NoDeletes(ckpt.LocalStorage):
    """Publishing works; moving a checkpoint into the trash, the first step of a delete, fails."""

    def rename(self, src: str, dst: str) -> None:
        src, dst = Path(src), Path(dst)
        if dst.parent.name == "trash":
            raise PermissionError(13, "Permission denied", str(src))
        super().rename(src, dst)


def test_a_failed_prune_warns_and_never_undoes_the_commit(make_manager: Make) -> None:
    manager = make_manager(keep_top_k=0, storage=_NoDeletes())  # only the latest is kept
    manager.finalize_checkpoint(manager.init_tmp_checkpoint(1, {}))

    def finalize_step_2() -> None:
        manager.begin_finalization(manager.init_tmp_checkpoint(2, {}))
        manager.shutdown()

    with pytest.warns(UserWarning, match="could not prune old checkpoints in the background"):
        finalize_step_2()
    assert _steps(manager) == [1, 2]  # committed; step 1 stays until a prune can delete it


def test_retention_spares_a_step_a_finalization_will_replace(
    make_manager: Make, ckpt_dir: Path
) -> None:
    manager = make_manager(retention={"kind": "latest_n", "n": 1})
    manager.finalize_checkpoint(manager.init_tmp_checkpoint(5, {"v": "old"}))
    gate = threading.Event()
    manager.begin_finalization(manager.init_tmp_checkpoint(5, {"v": "new"}), wait_fn=gate.wait)
    manager.finalize_checkpoint(manager.init_tmp_checkpoint(6, {}))  # latest-1 would drop 5
    assert manager.load_training_info(ckpt_dir / "step_5") == {"v": "old"}  # spared
    gate.set()
    manager.shutdown()
    assert _steps(manager) == [6]  # then pruned, once nothing replaces it any more


def test_leaving_a_with_block_flushes_and_raises_a_failed_finalization(
    make_manager: Make, ckpt_dir: Path
) -> None:
    config = {"checkpoint_dir": str(ckpt_dir), "fsync": False}
    with CheckpointManager(config) as manager:
        manager.begin_finalization(manager.init_tmp_checkpoint(1, {}), wait_fn=lambda: None)
    assert (ckpt_dir / "step_1").is_dir()

    def failed_writes() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(ckpt.FinalizationError), CheckpointManager(config) as manager:
        manager.begin_finalization(manager.init_tmp_checkpoint(2, {}), wait_fn=failed_writes)


def test_leaving_a_with_block_on_an_exception_never_masks_it(ckpt_dir: Path) -> None:
    config = {"checkpoint_dir": str(ckpt_dir), "fsync": False}

    def failed_writes() -> None:
        raise OSError(28, "No space left on device")

    def loop_that_fails() -> None:
        with CheckpointManager(config) as manager:
            manager.begin_finalization(manager.init_tmp_checkpoint(1, {}), wait_fn=failed_writes)
            raise KeyError("the loop's own error")

    with (
        pytest.warns(UserWarning, match="checkpoint finalization failed while an exception"),
        pytest.raises(KeyError, match="the loop's own error"),
    ):
        loop_that_fails()
    with CheckpointManager(config) as manager:  # the lock went with the closed manager
        assert manager.list_checkpoints() == []


@pytest.mark.parametrize("who", ["the same manager", "another manager of the process"])
def test_starting_a_step_again_waits_for_its_finalization_in_flight(
    make_manager: Make, ckpt_dir: Path, who: str
) -> None:
    manager = make_manager()
    gate = threading.Event()
    first = manager.init_tmp_checkpoint(5, {"v": 1})
    (first / "model.bin").write_bytes(b"first")
    manager.begin_finalization(first, wait_fn=gate.wait)
    other = manager if who == "the same manager" else make_manager()
    threading.Timer(0.2, gate.set).start()
    second = other.init_tmp_checkpoint(5, {"v": 2})  # waits for the first commit
    assert (ckpt_dir / "step_5" / "model.bin").read_bytes() == b"first"
    other.begin_finalization(second)
    other.shutdown()
    manager.shutdown()
    assert manager.load_training_info(ckpt_dir / "step_5") == {"v": 2}


def test_a_temporary_directory_a_crashed_save_left_is_started_afresh_and_logged(
    make_manager: Make, ckpt_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager()
    stale = ckpt_dir / "tmp_step_7"
    stale.mkdir()  # what a save that died before its finalize leaves, this run
    (stale / "training_info.json").write_text('{"v": 0}')  # ckpt's, written first
    (stale / "half.bin").write_bytes(b"half")
    with caplog.at_level("WARNING", "ckpt"):
        tmp = manager.init_tmp_checkpoint(7, {"v": 1})
    assert tmp == stale
    assert sorted(p.name for p in tmp.iterdir()) == ["training_info.json"]
    assert f"replacing {stale} left by an earlier attempt at step 7" in caplog.text


@pytest.mark.subprocess
def test_a_finalization_begun_is_committed_before_the_interpreter_exits(ckpt_dir: Path) -> None:
    script = f"""
import time
import ckpt
manager = ckpt.CheckpointManager({{"checkpoint_dir": {str(ckpt_dir)!r}, "fsync": False}})
tmp = manager.init_tmp_checkpoint(1, {{"v": 1}})
manager.begin_finalization(tmp, wait_fn=lambda: time.sleep(0.5))
# no finalize_pending, no shutdown: the script simply ends
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (ckpt_dir / "step_1" / "training_info.json").is_file()
    assert not (ckpt_dir / "tmp_step_1").exists()


def test_a_failed_finalization_no_longer_spares_its_step(make_manager: Make) -> None:
    manager = make_manager(retention={"kind": "latest_n", "n": 1})
    manager.finalize_checkpoint(manager.init_tmp_checkpoint(5, {"v": "old"}))

    def failed_writes() -> None:
        raise OSError(5, "Input/output error")

    manager.begin_finalization(manager.init_tmp_checkpoint(5, {"v": "new"}), wait_fn=failed_writes)
    with pytest.raises(ckpt.FinalizationError):
        manager.finalize_pending()
    manager.finalize_checkpoint(manager.init_tmp_checkpoint(6, {}))
    assert _steps(manager) == [6]  # nothing replaces step 5 any more: pruned as usual
