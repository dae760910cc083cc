"""A short simulated training run that shows what the manager does: ``python -m ckpt.demo``.

It saves a checkpoint every step of a noisy reward curve (one step's metric is NaN,
some steps have no validation metric), keeps the 3 best plus the latest, pins one,
overwrites a step as a resumed run would, and prints what is on disk.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
from pathlib import Path

from ckpt import CheckpointManager


def run(directory: Path, steps: int = 12, seed: int = 0) -> CheckpointManager:
    """Simulate ``steps`` training steps checkpointing into ``directory``."""
    rng = random.Random(seed)
    config = {
        "enabled": True,
        "checkpoint_dir": str(directory),
        "metric_name": "val_reward",
        "higher_is_better": True,
        "keep_top_k": 3,
    }
    manager = CheckpointManager(config)
    for step in range(1, steps + 1):
        info: dict[str, float | int] = {"step": step, "train_loss": 2.0 / step}
        if step == 5:
            info["val_reward"] = math.nan  # a diverged evaluation: ranks last, never "best"
        elif step % 4 != 3:  # validation does not run on every step
            info["val_reward"] = round(step / steps + rng.gauss(0, 0.15), 3)
        with manager.checkpoint(step, info, run_config={"lr": 1e-4}) as path:
            (path / "model.bin").write_bytes(rng.randbytes(1024))
        if step == 2:
            manager.pin(2)  # e.g. the checkpoint an evaluation job is reading
    # A resumed run saves its last step again: the old copy is replaced atomically.
    with manager.checkpoint(steps, {"step": steps, "val_reward": 0.99}) as path:
        (path / "model.bin").write_bytes(b"resumed")
    return manager


def main(argv: list[str] | None = None) -> None:
    """Run the demo and print the resulting checkpoints."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.directory or Path(scratch) / "checkpoints")
        with run(directory) as manager:
            print(f"checkpoints in {directory}:")
            print(f"  {'step':>4}  {'val_reward':>10}  {'pinned':>6}  why kept")
            decisions = {d.step: d for d in manager.plan_retention()}
            for record in manager.list_checkpoints():
                reward = record.info.get("val_reward")
                shown = "-" if reward is None else f"{reward:.3f}"
                reason = decisions[record.step].reason.split(": #")[0]
                print(f"  {record.step:>4}  {shown:>10}  {record.pinned!s:>6}  {reason}")
            print(f"best:   {manager.get_best_checkpoint_path()}")
            print(f"latest: {manager.get_latest_checkpoint_path()}")


if __name__ == "__main__":
    main()
