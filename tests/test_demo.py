from pathlib import Path

import pytest

from ckpt import demo


def test_demo_run_keeps_the_best_three_the_latest_and_the_pin(tmp_path: Path) -> None:
    with demo.run(tmp_path / "run") as manager:
        records = manager.list_checkpoints()
        steps = [r.step for r in records]
        assert 2 in steps
        assert records[0].pinned
        unpinned = [r for r in records if not r.pinned]
        assert len(unpinned) <= 4  # top-3 plus the latest
        assert steps[-1] == 12  # the latest is exempt
        assert 5 not in steps  # the NaN step never counts as good
        rewards = [r.info.get("val_reward") for r in unpinned]
        assert all(isinstance(x, float) for x in rewards)
        assert manager.get_best_checkpoint_path() == str(tmp_path / "run" / "step_12")
        assert (tmp_path / "run" / "step_12" / "model.bin").read_bytes() == b"resumed"
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {".ckpt"} | {f"step_{s}" for s in steps}


def test_demo_main_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo.main([str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "step  val_reward  pinned" in out
    assert f"best:   {tmp_path / 'out' / 'step_12'}" in out
