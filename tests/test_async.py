"""`CheckpointManager.save` and `save_async`: snapshot, order, bounds, errors, retention."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ckpt
import policies
from ckpt import CheckpointManager, LocalStorage

torch = pytest.importorskip("torch")
from ckpt.torch import load_state  # noqa: E402 - after the skip

pytestmark = pytest.mark.torch

Make = Callable[..., CheckpointManager]


def steps(manager: CheckpointManager) -> list[int]:
    return [record.step for record in manager.list_checkpoints()]


def model(seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(64, 32, generator=gen), "b": torch.zeros(32)},
        "optim": {"step": seed, "lr": 0.1, "moments": [torch.ones(3) * seed]},
    }


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_save_commits_state_info_and_config(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager(metric_name="loss", higher_is_better=False, keep_top_k=1)
    path = manager.save(3, {"loss": 0.5}, model(3), run_config={"lr": 0.1})
    assert path == ckpt_dir / "step_3"
    assert_same(load_state(path), model(3))
    assert manager.load_training_info(path) == {"loss": 0.5}
    assert (path / "config.yaml").exists()
    manager.save(4, {"loss": 0.9}, model(4))
    manager.save(5, {"loss": 0.7}, model(5))
    assert steps(manager) == [3, 5]  # best and latest; retention ran
    assert not list(ckpt_dir.glob("tmp_*"))


def test_save_async_snapshots_before_returning(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager()
    state = model(1)
    manager.save_async(1, {"loss": 1.0}, state)
    state["model"]["w"].add_(100.0)  # the loop goes on training at once
    state["optim"]["moments"][0].zero_()
    manager.wait_until_finished()
    assert_same(load_state(ckpt_dir / "step_1"), model(1))


def test_async_saves_commit_in_order_with_retention(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager(metric_name="loss", higher_is_better=False, keep_top_k=2)
    losses = {1: 0.5, 2: 0.3, 3: 0.9, 4: 0.4, 5: 0.8}
    for step, loss in losses.items():
        manager.save_async(step, {"loss": loss}, model(step))
    manager.wait_until_finished()
    assert steps(manager) == [2, 4, 5]  # top-2 by loss, plus the latest
    for step in (2, 4, 5):
        assert_same(load_state(ckpt_dir / f"step_{step}"), model(step))
    assert manager.get_best_checkpoint_path() == str(ckpt_dir / "step_2")


def test_snapshot_buffers_are_reused_and_ties_kept() -> None:
    snapshot = ckpt.torch.TorchHandler().snapshot
    buffers: dict[tuple[Any, ...], Any] = {}
    shared = torch.arange(4.0)
    first = snapshot({"a": shared, "b": shared, "c": [torch.ones(2)]}, buffers)
    assert first["a"] is first["b"]  # one tensor reached twice is copied once
    again = snapshot({"a": shared * 2, "b": shared, "c": [torch.zeros(2)]}, buffers)
    assert again["a"].data_ptr() == first["a"].data_ptr()  # no new allocation
    assert again["c"][0].data_ptr() == first["c"][0].data_ptr()
    assert torch.equal(again["c"][0], torch.zeros(2))
    grown = snapshot({"a": torch.arange(8.0)}, buffers)
    assert grown["a"].shape == (8,)  # a new shape gets a new buffer


class _Gate:
    """Stands in for `TorchHandler.write_part`: holds background writes until released.

    It waits outside the directory's mutex, where the real write of a large state
    happens, so the loop's own calls go on meanwhile.
    """

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name.startswith("ckpt-save"):
            self.entered.set()
            assert self.release.wait(30)
        return self.real(ckpt.torch.TorchHandler(), *args, **kwargs)  # a class attribute: unbound


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> _Gate:
    held = _Gate(ckpt.torch.TorchHandler.write_part)
    monkeypatch.setattr(ckpt.torch.TorchHandler, "write_part", held)
    return held


class _Full(LocalStorage):
    """A disk that fills up when asked to create ``tmp_step_<fail_step>``."""

    fail_step: int | None = None

    def make_dir(self, path: str) -> None:
        path = Path(path)
        if path.name == f"tmp_step_{self.fail_step}":
            raise OSError(28, "No space left on device", str(path))
        super().make_dir(path)


def test_a_second_snapshot_waits_for_the_first_write(make_manager: Make, gate: _Gate) -> None:
    manager = make_manager()  # max_pending_saves defaults to 1
    manager.save_async(1, {}, model(1))
    assert gate.entered.wait(30)
    second = threading.Thread(target=manager.save_async, args=(2, {}, model(2)))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # blocked: the only buffer set is being written
    gate.release.set()
    second.join(30)
    assert not second.is_alive()
    manager.wait_until_finished()
    assert steps(manager) == [1, 2]


def test_retention_spares_a_checkpoint_a_pending_save_replaces(
    make_manager: Make, ckpt_dir: Path, gate: _Gate
) -> None:
    manager = make_manager(retention=policies.LatestN(1))
    manager.save(5, {"v": "old"}, model(5))
    manager.save_async(5, {"v": "new"}, model(50))  # an overwrite, held at the gate
    assert gate.entered.wait(30)
    path = manager.init_tmp_checkpoint(6, {})
    manager.finalize_checkpoint(path)  # LatestN(1) would delete step 5
    manager.remove_old_checkpoints(exclude_latest=False)
    assert steps(manager) == [5, 6]
    assert_same(load_state(ckpt_dir / "step_5"), model(5))
    gate.release.set()
    manager.wait_until_finished()
    # Committed, the new step 5 is no longer protected, and LatestN(1) keeps step 6.
    assert steps(manager) == [6]


def test_background_errors_are_raised_once_and_never_lost(
    make_manager: Make, ckpt_dir: Path
) -> None:
    disk = _Full()
    disk.fail_step = 2
    manager = make_manager(storage=disk)
    manager.save_async(1, {}, model(1))
    manager.save_async(2, {}, model(2))  # fails in the background
    with pytest.raises(OSError, match="No space left"):
        manager.wait_until_finished()
    manager.wait_until_finished()  # raised once
    assert steps(manager) == [1]
    assert not list(ckpt_dir.glob("tmp_*"))

    disk.fail_step = None
    manager.save_async(2, {}, model(2))
    manager.wait_until_finished()  # no error: the first went with its raise
    disk.fail_step = 3
    manager.save_async(3, {}, model(3))
    # The next call raises it, and that call's save is not submitted.
    with pytest.raises(OSError, match="No space left"):
        manager.save_async(4, {}, model(4))
    disk.fail_step = None
    manager.save_async(5, {}, model(5))
    disk.fail_step = 6
    manager.save_async(6, {}, model(6))
    with pytest.raises(OSError, match="No space left"):
        manager.close()  # close raises it too, and still closes
    assert steps(CheckpointManager({"checkpoint_dir": str(ckpt_dir)}, read_only=True)) == [
        1,
        2,
        5,
    ]
    with pytest.raises(ckpt.CheckpointError, match="closed"):
        manager.save_async(7, {}, model(7))


def test_bad_state_is_refused_before_anything_is_queued(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager()
    with pytest.raises(ckpt.SerializationError, match="object at model/w"):
        manager.save_async(1, {}, {"model": {"w": object()}})
    with pytest.raises(ckpt.SerializationError):
        manager.save(1, {}, {"model": {"w": object()}})
    with pytest.raises(ckpt.InvalidStepError):
        manager.save_async(-1, {}, model(1))
    manager.wait_until_finished()
    assert steps(manager) == []
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [".ckpt"]


def test_a_manager_used_as_a_context_finishes_its_saves(ckpt_dir: Path) -> None:
    with CheckpointManager({"checkpoint_dir": str(ckpt_dir), "fsync": False}) as manager:
        for step in range(3):
            manager.save_async(step, {}, model(step))
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [".ckpt", "step_0", "step_1", "step_2"]


_EXITS_WITHOUT_CLOSING = textwrap.dedent(
    """
    import sys
    import torch
    import ckpt

    manager = ckpt.CheckpointManager({"checkpoint_dir": sys.argv[1], "fsync": False})
    manager.save_async(1, {}, {"w": torch.ones(1000)})
    manager.save_async(2, {}, {"w": torch.ones(1000)})
    """
)


@pytest.mark.subprocess
def test_pending_saves_finish_when_the_interpreter_exits(ckpt_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _EXITS_WITHOUT_CLOSING, str(ckpt_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [".ckpt", "step_1", "step_2"]
    assert torch.equal(load_state(ckpt_dir / "step_2")["w"], torch.ones(1000))


@pytest.mark.subprocess
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_wait_for_the_parents_saves(
    make_manager: Make, gate: _Gate
) -> None:
    from ckpt._saving import background as _async

    manager = make_manager()
    manager.save_async(1, {}, model(1))
    assert gate.entered.wait(30)  # a save in flight while the loop forks a worker
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            _async._live.finish_all()  # what the child's interpreter runs at exit
        finally:
            os._exit(0)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if done == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    gate.release.set()
    manager.wait_until_finished()
    assert done != (0, 0), "the child hung at exit waiting for its parent's save"
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert steps(manager) == [1]


def test_views_that_differ_only_by_a_lazy_conjugate_are_not_tied(
    make_manager: Make, ckpt_dir: Path
) -> None:
    z = torch.tensor([1 + 2j, 3 - 4j])
    manager = make_manager()
    manager.save_async(1, {}, {"z": z, "conj": z.conj(), "again": z})
    manager.wait_until_finished()
    loaded = load_state(ckpt_dir / "step_1")
    assert torch.equal(loaded["z"], z)
    assert torch.equal(loaded["conj"], z.conj())
    assert loaded["again"] is loaded["z"]  # a true tie stays one tensor
