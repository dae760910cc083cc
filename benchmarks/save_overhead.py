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
  and latest (page cache warm, as after a job restart on the same node);
* the median save under each built-in retention policy, and an ``any_of`` of them, with
  a ``k`` or ``n`` larger than the history (so nothing is pruned and every checkpoint
  stays ranked), fsync off: the case where re-ranking the kept set would grow with N.

Run:

    python benchmarks/save_overhead.py [--sizes 100 1000 10000] [--repeats 30] [--dir DIR]
        [--policies-only] [--commit-protocol rename|manifest]

On a disk, creating entries in a directory of 10,000 is itself slower and noisier than
in one of 100; ``--dir /dev/shm`` measures the manager's own work apart from that.
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
from collections.abc import Callable
from pathlib import Path

from ckpt import CheckpointManager

# Config keys every manager of the run gets (--commit-protocol sets one).
EXTRA_KEYS: dict[str, object] = {}


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


def measure(
    sizes: list[int], repeats: int, *, durable: bool, root: Path
) -> dict[int, dict[str, float]]:
    """Median microseconds of each operation, for each number of checkpoints on disk.

    The sizes are measured side by side, save after save in turn, so that they see the
    same machine noise.
    """
    scratch = Path(tempfile.mkdtemp(dir=root))
    samples: dict[int, dict[str, list[float]]] = {n: {} for n in sizes}

    def timed(count: int, name: str, operation: Callable[[], object]) -> None:
        start = time.perf_counter()
        operation()
        samples[count].setdefault(name, []).append(time.perf_counter() - start)

    def config(count: int) -> dict[str, object]:
        return {
            "checkpoint_dir": str(scratch / f"ours{count}"),
            "metric_name": "loss",
            "higher_is_better": False,
            "fsync": durable,
            **EXTRA_KEYS,
        }

    try:
        for count in sizes:
            _populate(scratch / f"ours{count}", count)
            _populate(scratch / f"base{count}", count)
        managers = {count: CheckpointManager(config(count)) for count in sizes}
        try:
            for i in range(repeats):
                # Rotate which size goes first, so none always follows the heavy rescans.
                order = sizes[i % len(sizes) :] + sizes[: i % len(sizes)]
                for count in order:
                    manager = managers[count]
                    step = count + i

                    def save(manager: CheckpointManager = manager, step: int = step) -> None:
                        path = manager.init_tmp_checkpoint(step, {"step": step, "loss": 0.5})
                        manager.finalize_checkpoint(path)

                    timed(count, "save", save)
                    timed(count, "best_after_save", manager.get_best_checkpoint_path)
                    timed(count, "latest_after_save", manager.get_latest_checkpoint_path)
                    base = scratch / f"base{count}"
                    timed(
                        count,
                        "rescan",
                        lambda b=base, s=step: _baseline_save(b, s, durable=durable),
                    )
            for _ in range(200):
                for count, manager in managers.items():
                    timed(count, "best", manager.get_best_checkpoint_path)
                    timed(count, "latest", manager.get_latest_checkpoint_path)
        finally:
            for manager in managers.values():
                manager.close()
        for _ in range(5):
            for count in sizes:

                def cold(count: int = count) -> None:
                    with CheckpointManager(config(count)) as manager:
                        manager.get_best_checkpoint_path()
                        manager.get_latest_checkpoint_path()

                timed(count, "cold_start", cold)
        return {
            count: {name: _median_us(values) for name, values in by_name.items()}
            for count, by_name in samples.items()
        }
    finally:
        shutil.rmtree(scratch)


# Retention blocks whose kept set is the whole history: k and n beyond any size measured.
POLICIES: dict[str, dict[str, object]] = {
    "top_k k=100000": {"retention": {"kind": "top_k", "k": 100_000}},
    "keep_top_k=100000": {"keep_top_k": 100_000},
    "latest_n n=100000": {"retention": {"kind": "latest_n", "n": 100_000}},
    "every_n_steps n=1": {"retention": {"kind": "every_n_steps", "n": 1}},
    "keep_all": {"retention": {"kind": "keep_all"}},
    "any_of(all above)": {
        "retention": {
            "kind": "any_of",
            "policies": [
                {"kind": "top_k", "k": 100_000},
                {"kind": "hybrid", "k": 100_000},
                {"kind": "latest_n", "n": 100_000},
                {"kind": "every_n_steps", "n": 1000},
            ],
        }
    },
}


def measure_policies(sizes: list[int], repeats: int, root: Path) -> dict[str, dict[int, float]]:
    """Median microseconds of a save under each of `POLICIES`, by checkpoints on disk."""
    results: dict[str, dict[int, float]] = {}
    for name, keys in POLICIES.items():
        scratch = Path(tempfile.mkdtemp(dir=root))
        samples: dict[int, list[float]] = {n: [] for n in sizes}
        try:
            managers = {}
            for count in sizes:
                _populate(scratch / str(count), count)
                config = {
                    "checkpoint_dir": str(scratch / str(count)),
                    "metric_name": "loss",
                    "higher_is_better": False,
                    "fsync": False,
                    **keys,
                    **EXTRA_KEYS,
                }
                managers[count] = CheckpointManager(config)
            try:
                for i in range(repeats + 1):
                    order = sizes[i % len(sizes) :] + sizes[: i % len(sizes)]
                    for count in order:
                        manager, step = managers[count], count + i
                        start = time.perf_counter()
                        path = manager.init_tmp_checkpoint(step, {"step": step, "loss": 1 / step})
                        manager.finalize_checkpoint(path)
                        if i:  # the first save after opening decides over everything
                            samples[count].append(time.perf_counter() - start)
            finally:
                for manager in managers.values():
                    manager.close()
        finally:
            shutil.rmtree(scratch)
        results[name] = {count: _median_us(values) for count, values in samples.items()}
    return results


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
    parser.add_argument(
        "--policies-only", action="store_true", help="only the table of saves by retention"
    )
    parser.add_argument(
        "--commit-protocol",
        choices=["rename", "manifest"],
        help="the managers' commit_protocol (default: the config's default)",
    )
    args = parser.parse_args()
    if args.commit_protocol is not None:
        EXTRA_KEYS["commit_protocol"] = args.commit_protocol
    root = args.dir.resolve()
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, python "
        f"{platform.python_version()}; directory {root} ({_filesystem(root)})"
    )
    if not args.policies_only:
        _history(args, root)
    print()
    print("save medians in microseconds by retention, fsync off, nothing pruned:")
    print(f"{'retention':>20} " + " ".join(f"{n:>8}" for n in args.sizes) + "  last/first")
    for name, by_size in measure_policies(args.sizes, args.repeats, root).items():
        cells = " ".join(f"{by_size[n]:>8.0f}" for n in args.sizes)
        print(f"{name:>20} {cells}  {by_size[args.sizes[-1]] / by_size[args.sizes[0]]:>9.2f}x")


def _history(args: argparse.Namespace, root: Path) -> None:
    print("medians in microseconds; ratio = naive rescan / ckpt")
    header = (
        f"{'fsync':>5} {'on disk':>7} {'save':>8} {'rescan':>9} {'ratio':>6} "
        f"{'vs N=first':>10} {'best*':>6} {'latest*':>7} {'best':>5} {'latest':>6} {'cold':>9}"
    )
    print(header)
    for durable in (False, True):
        results = measure(args.sizes, args.repeats, durable=durable, root=root)
        first_save = results[args.sizes[0]]["save"]
        for count, r in results.items():
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
