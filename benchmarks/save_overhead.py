"""Manager overhead as history grows: per save, per best/latest query, and per cold start.

With N finalized checkpoints already on disk it measures, for N = 100, 1,000 and 10,000:

* the median wall time of ``init_tmp_checkpoint`` + ``finalize_checkpoint`` (keep-all
  retention, so history really grows; a tiny payload), with fsync off and on, next to
  a naive baseline written here that re-reads every ``training_info.json`` on each
  save, as NeMo RL's manager does (with the same fsyncs when fsync is on); saves of
  the two are interleaved so both see the same machine noise;
* the median cost of ``get_best_checkpoint_path`` and ``get_latest_checkpoint_path``
  right after a save (the first query after a change) and when repeated;
* a cold start: a new manager on the directory (lock, recovery, one scan), then best
  and latest (page cache warm, as after a job restart on the same node).

Run:

    python benchmarks/save_overhead.py [--sizes 100 1000 10000] [--repeats 30] [--dir DIR]
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


def _fsync(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _baseline_save(directory: Path, step: int, *, durable: bool) -> None:
    tmp = directory / f"tmp_step_{step}"
    tmp.mkdir()
    info = tmp / "training_info.json"
    info.write_text(json.dumps({"step": step, "loss": 0.5}))
    if durable:
        _fsync(info)
        _fsync(tmp)
    os.rename(tmp, directory / f"step_{step}")
    if durable:
        _fsync(directory)
    best = None
    for entry in directory.iterdir():  # the rescan every save pays, to rank and prune
        if entry.name.startswith("step_"):
            loss = json.loads((entry / "training_info.json").read_text())["loss"]
            best = loss if best is None else min(best, loss)


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def measure(count: int, repeats: int, *, durable: bool, root: Path) -> dict[str, float]:
    """Median microseconds of each operation with ``count`` checkpoints on disk."""
    scratch = Path(tempfile.mkdtemp(dir=root))
    try:
        ours, base = scratch / "ours", scratch / "base"
        _populate(ours, count)
        _populate(base, count)
        config = {
            "checkpoint_dir": str(ours),
            "metric_name": "loss",
            "higher_is_better": False,
            "fsync": durable,
        }
        save, rescan, first_best, first_latest, best, latest = [], [], [], [], [], []
        with CheckpointManager(config) as manager:
            for i in range(repeats):
                step = count + i
                start = time.perf_counter()
                path = manager.init_tmp_checkpoint(step, {"step": step, "loss": 0.5})
                manager.finalize_checkpoint(path)
                save.append(time.perf_counter() - start)
                start = time.perf_counter()
                manager.get_best_checkpoint_path()
                first_best.append(time.perf_counter() - start)
                start = time.perf_counter()
                manager.get_latest_checkpoint_path()
                first_latest.append(time.perf_counter() - start)
                start = time.perf_counter()
                _baseline_save(base, step, durable=durable)
                rescan.append(time.perf_counter() - start)
            for _ in range(200):
                start = time.perf_counter()
                manager.get_best_checkpoint_path()
                best.append(time.perf_counter() - start)
                start = time.perf_counter()
                manager.get_latest_checkpoint_path()
                latest.append(time.perf_counter() - start)
        cold = []
        for _ in range(5):
            start = time.perf_counter()
            with CheckpointManager(config) as manager:
                manager.get_best_checkpoint_path()
                manager.get_latest_checkpoint_path()
            cold.append(time.perf_counter() - start)
        return {
            "save": _median_us(save),
            "rescan": _median_us(rescan),
            "best_after_save": _median_us(first_best),
            "latest_after_save": _median_us(first_latest),
            "best": _median_us(best),
            "latest": _median_us(latest),
            "cold_start": _median_us(cold),
        }
    finally:
        shutil.rmtree(scratch)


def _filesystem(path: Path) -> str:
    best = ("?", "")
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            _, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) >= len(best[1]):
                best = (fstype, mount)
    return f"{best[0]} on {best[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    root = args.dir.resolve()
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, python "
        f"{platform.python_version()}; directory {root} ({_filesystem(root)})"
    )
    print("medians in microseconds; ratio = naive rescan / ckpt")
    header = (
        f"{'fsync':>5} {'on disk':>7} {'save':>8} {'rescan':>9} {'ratio':>6} "
        f"{'vs N=first':>10} {'best*':>6} {'latest*':>7} {'best':>5} {'latest':>6} {'cold':>9}"
    )
    print(header)
    for durable in (False, True):
        first_save = None
        for count in args.sizes:
            r = measure(count, args.repeats, durable=durable, root=root)
            first_save = first_save or r["save"]
            print(
                f"{'on' if durable else 'off':>5} {count:>7} {r['save']:>8.0f} "
                f"{r['rescan']:>9.0f} {r['rescan'] / r['save']:>5.1f}x "
                f"{r['save'] / first_save:>9.2f}x {r['best_after_save']:>6.1f} "
                f"{r['latest_after_save']:>7.1f} {r['best']:>5.1f} {r['latest']:>6.1f} "
                f"{r['cold_start']:>9.0f}"
            )
    print("best*/latest*: the first query after a save; cold: new manager + best + latest")


if __name__ == "__main__":
    main()
