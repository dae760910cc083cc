"""The demo's engine, in process; `tests/test_cli.py` runs the whole demo end to end."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

import ckpt
from ckpt.cli import _demo


def test_the_simulated_curve_repeats_and_has_its_gaps() -> None:
    assert _demo.step_info(12) == _demo.step_info(12)  # a restarted run sees the same values
    assert math.isnan(_demo.step_info(_demo.NAN_STEP)["val_reward"])
    assert "val_reward" not in _demo.step_info(13)  # not evaluated
    assert all("train_reward" in _demo.step_info(step) for step in range(1, _demo.STEPS + 1))


def test_training_keeps_the_best_three_the_latest_and_the_pin(tmp_path: Path) -> None:
    config = {**_demo.demo_config(tmp_path / "run"), "fsync": False}
    with ckpt.CheckpointManager(config) as manager:
        _demo.train(manager, 1, _demo.STEPS)
        records = manager.list_checkpoints()
        best = manager.get_best_checkpoint_path()
    assert [r.step for r in records] == [10, 34, 36, 40]
    assert [r.step for r in records if r.pinned] == [_demo.PINNED_STEP]
    assert best == str(tmp_path / "run" / "step_34")
    assert sorted(p.name for p in (tmp_path / "run" / "step_40").iterdir()) == [
        ".ckpt-files.json",
        "config.yaml",
        "model.bin",
        "optimizer.bin",
        "training_info.json",
    ]


def test_the_plot_is_skipped_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    assert not _demo.plot(tmp_path / "plot.png", kept={40}, pinned=set(), best=40)
    assert not (tmp_path / "plot.png").exists()


def test_the_demo_refuses_a_directory_that_holds_a_run(tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "step_1").mkdir(parents=True)
    with pytest.raises(_demo.DemoError, match="not empty"):
        _demo.run_demo(tmp_path)


def test_steps_without_a_value_are_drawn_apart_from_the_values() -> None:
    figure = _demo.draw(kept={10, 34, 36, 40}, pinned={10}, best=34)
    values, strip = figure.axes
    scored = {s for s in range(1, _demo.STEPS + 1) if "val_reward" in _demo.step_info(s)}
    scored.discard(_demo.NAN_STEP)
    on_values = {round(x) for c in values.collections for x, _ in c.get_offsets()}
    on_strip = {round(x) for c in strip.collections for x, _ in c.get_offsets()}
    assert on_values == scored  # every marker on the value axis stands for a real value
    assert on_strip == set(range(1, _demo.STEPS + 1)) - scored
    assert [t.get_text() for t in strip.get_yticklabels()] == ["no usable\nval_reward"]
