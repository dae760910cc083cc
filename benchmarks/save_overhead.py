"""Manager overhead per save as history grows: ckpt against a rescan-everything baseline.

Measures the median wall time of ``init_tmp_checkpoint`` + ``finalize_checkpoint``
(keep-all retention, a tiny payload, fsync off so the disk does not dominate) with N
finalized checkpoints already on disk, next to a baseline that re-reads every
``training_info.json`` on each save, as NeMo RL's manager does. Run:

    python benchmarks/save_overhead.py [--sizes 100 1000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ckpt import CheckpointManager


def _populate(directory: Path, count: int) -> None:
    directory.mkdir(parents=True)
    for step in range(count):
        path = directory / f"step_{step}"
        path.mkdir()
        (path / "training_info.json").write_text(json.dumps({"step": step, "loss": 1 / (step + 1)}))


def _baseline_save(directory: Path, step: int) -> None:
    tmp = directory / f"tmp_step_{step}"
    tmp.mkdir()
    (tmp / "training_info.json").write_text(json.dumps({"step": step, "loss": 0.5}))
    os.rename(tmp, directory / f"step_{step}")
    for entry in directory.iterdir():  # the rescan every save pays
        if entry.name.startswith("step_"):
            json.loads((entry / "training_info.json").read_text())


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def measure(count: int, repeats: int) -> tuple[float, float]:
    """Median milliseconds per save for (ckpt, baseline) with ``count`` on disk."""
    scratch = Path(tempfile.mkdtemp())
    try:
        ours, base = scratch / "ours", scratch / "base"
        _populate(ours, count)
        _populate(base, count)
        ours_samples, base_samples = [], []
        with CheckpointManager({"checkpoint_dir": str(ours), "fsync": False}) as manager:
            for i in range(repeats):  # interleaved so both see the same machine noise
                step = count + i
                start = time.perf_counter()
                path = manager.init_tmp_checkpoint(step, {"step": step, "loss": 0.5})
                manager.finalize_checkpoint(path)
                ours_samples.append(time.perf_counter() - start)
                start = time.perf_counter()
                _baseline_save(base, step)
                base_samples.append(time.perf_counter() - start)
        return _median_ms(ours_samples), _median_ms(base_samples)
    finally:
        shutil.rmtree(scratch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    machine = f"{platform.platform()}, {os.cpu_count()} cpus"
    print(f"machine: {machine}, python {platform.python_version()}")
    print(f"{'on disk':>8}  {'ckpt ms/save':>12}  {'rescan ms/save':>14}  {'ratio':>6}")
    for count in args.sizes:
        ours, base = measure(count, args.repeats)
        print(f"{count:>8}  {ours:>12.3f}  {base:>14.3f}  {base / ours:>5.1f}x")


if __name__ == "__main__":
    main()
