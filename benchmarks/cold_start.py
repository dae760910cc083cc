"""Cold start at 10,000 and 100,000 checkpoints: a new manager, best and latest.

For each size N it makes a directory of N checkpoints (``step_N`` with a
``training_info.json``), opens a writer once (which leaves the catalog a cold start
reads), then times, alternating sizes, ``--rounds`` cold starts: a new
``CheckpointManager`` (lock, recovery, one listing, the index), then
``get_best_checkpoint_path`` and ``get_latest_checkpoint_path``, then ``close``. It
also times best and latest right after a save, and repeated. Page cache warm, as after
a job restart on the same node. Run:

    python benchmarks/cold_start.py [--sizes 10000 100000] [--rounds 5] [--dir DIR]
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

from save_overhead import _populate  # this directory is on sys.path when run as a script

from ckpt import CheckpointManager


def _config(directory: Path) -> dict[str, object]:
    return {
        "checkpoint_dir": str(directory),
        "metric_name": "loss",
        "higher_is_better": False,
        "fsync": False,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ckpt-cold-", dir=args.dir))
    try:
        for size in args.sizes:
            _populate(root / str(size), size)
            CheckpointManager(_config(root / str(size))).close()  # the first open indexes
        cold: dict[int, list[float]] = {size: [] for size in args.sizes}
        for _ in range(args.rounds):
            for size in args.sizes:
                start = time.perf_counter()
                with CheckpointManager(_config(root / str(size))) as manager:
                    manager.get_best_checkpoint_path()
                    manager.get_latest_checkpoint_path()
                cold[size].append(time.perf_counter() - start)
        queries: dict[int, dict[str, float]] = {}
        for size in args.sizes:
            with CheckpointManager(_config(root / str(size))) as manager:
                after: dict[str, list[float]] = {"best": [], "latest": []}
                for step in range(size, size + 20):
                    path = manager.init_tmp_checkpoint(step, {"loss": 0.5})
                    manager.finalize_checkpoint(path)
                    for name, query in (
                        ("latest", manager.get_latest_checkpoint_path),
                        ("best", manager.get_best_checkpoint_path),
                    ):
                        start = time.perf_counter()
                        query()
                        after[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                for _ in range(1000):
                    manager.get_latest_checkpoint_path()
                repeated = (time.perf_counter() - start) / 1000
                queries[size] = {
                    "best": statistics.median(after["best"]),
                    "latest": statistics.median(after["latest"]),
                    "repeated": repeated,
                }
        print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}")
        print(f"cold start (open, best, latest, close), {args.rounds} rounds, medians")
        for size in args.sizes:
            q = queries[size]
            print(
                f"N={size:>7,}  cold {statistics.median(cold[size]):7.3f} s   after a save: "
                f"best {q['best'] * 1e6:7.1f} us  latest {q['latest'] * 1e6:7.1f} us   "
                f"latest repeated {q['repeated'] * 1e6:6.1f} us"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
