"""How long the training loop is blocked per save: save_async against a synchronous save.

In one run, on the same directory, it times:

* ``manager.save(step, info, state)``: temporary directory, ``ckpt.torch.save_state``,
  fsync, publish, retention; the loop waits for all of it;
* ``manager.save_async(step, info, state)``: the time until it returns (the snapshot into
  reused host buffers), with a simulated training step between saves that is longer
  than a synchronous save, so the background write is done by the next call. The first
  async save, which allocates the buffers, is reported on its own.

It prints medians, the ratio blocked-async / sync (target: at most 10%), and the machine.
Retention keeps the latest 2, so the disk does not fill. Run:

    python benchmarks/async_save.py [--size-gib 1] [--runs 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ckpt import CheckpointManager


def make_state(size_gib: float) -> dict[str, object]:
    """A state of about ``size_gib`` GiB: 16 float32 tensors plus some scalars."""
    per_tensor = int(size_gib * 2**30 / 4 / 16)
    return {
        "model": {f"layer{i}.weight": torch.rand(per_tensor) for i in range(16)},
        "optimizer": {"step": 0, "lr": 1e-4},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ckpt-async-", dir=args.dir))
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, torch {torch.__version__}; "
        f"directory {scratch}; state {args.size_gib:g} GiB; fsync on"
    )
    state = make_state(args.size_gib)
    config = {"checkpoint_dir": str(scratch / "run"), "retention": {"kind": "latest_n", "n": 2}}
    try:
        sync, blocked = [], []
        with CheckpointManager(config) as manager:
            step = 0
            for _ in range(args.runs):
                step += 1
                start = time.perf_counter()
                manager.save(step, {"step": step}, state)
                sync.append(time.perf_counter() - start)
            training_step = 1.5 * max(sync)
            start = time.perf_counter()
            step += 1
            manager.save_async(step, {"step": step}, state)
            first = time.perf_counter() - start
            for _ in range(args.runs):
                time.sleep(training_step)
                step += 1
                start = time.perf_counter()
                manager.save_async(step, {"step": step}, state)
                blocked.append(time.perf_counter() - start)
            manager.wait_until_finished()
        sync_s, blocked_s = statistics.median(sync), statistics.median(blocked)

        def runs(samples: list[float]) -> str:
            return " ".join(f"{x * 1e3:.0f}" for x in samples)

        print(f"synchronous save:              {sync_s * 1e3:7.1f} ms  (runs: {runs(sync)})")
        print(f"save_async, first (allocates): {first * 1e3:7.1f} ms")
        print(f"save_async, blocked:           {blocked_s * 1e3:7.1f} ms  (runs: {runs(blocked)})")
        print(f"blocked / synchronous:         {blocked_s / sync_s:7.1%}  (medians)")
        print(f"blocked / fastest synchronous: {blocked_s / min(sync):7.1%}")
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
