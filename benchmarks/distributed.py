"""A collective save of 4 ranks against one process saving the same bytes; coordination cost.

It starts ``--ranks`` processes (default 4) on gloo over 127.0.0.1, which stay up for
the whole run, and alternates, in one directory on one disk:

* **collective**: every rank calls ``manager.save(step, info, {"w": shard})`` with its own
  ``--shard-mib`` MiB shard of random float32 (default 256: 1 GiB in all), ``fsync``
  on, keeping every checkpoint (no retention: neither side deletes anything inside its
  timing; the checkpoints are removed at the end). Timed on rank 0 from a barrier to
  its return: every rank's part written and fsynced, reported, checked and committed.
  Throughput = all ranks' bytes / that time.
* **one process**: rank 0 alone calls ``ckpt.torch.save_state(dir, state, fsync=True)``
  with the same bytes in one state (the others wait at a barrier); the file is deleted
  after, untimed.
* **save_async**: after each pair, every rank calls ``save_async`` with its shard; the
  time until it returns is what the loop is blocked for (the snapshot into reused host
  buffers and the round that checks every rank's state), then it waits, untimed.

Target: collective throughput >= 0.9 x the one process's (medians).

Then the coordination a collective commit adds, measured apart from the writing:

* **rounds**: the two message rounds a save makes (every rank reports to rank 0, rank 0
  answers all), with nothing else in them, timed on rank 0 (median of 200);
* **tiny saves**: a collective ``save`` of a one-element state against the same save by
  a manager of rank 0 alone (``process_group=False``) on the same disk, medians of 50
  each, alternating; the difference is what coordination costs a save.

Target: under 20 ms at 4 ranks. Run:

    python benchmarks/distributed.py [--ranks 4] [--shard-mib 256] [--runs 5] [--dir DIR]

It needs the bytes of ``2 * runs + 2`` collective saves on disk (12 GiB by default).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import queue
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ckpt
from ckpt.torch import save_state

MiB = 2**20


def _rank(rank: int, args: argparse.Namespace, port: int, out: Any) -> None:
    """One rank: the alternating saves, the rounds, the tiny saves; rank 0 sends the times."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=args.ranks,
        timeout=datetime.timedelta(seconds=600),
    )
    root = Path(args.dir)
    config = {"checkpoint_dir": str(root / "collective"), "collective_timeout_s": 600}
    manager = ckpt.CheckpointManager(config)
    times = _bandwidth(manager, rank, args, root)
    times["rounds"] = _rounds(manager, rank)
    times.update(_tiny(manager, rank, root))
    manager.close()
    if rank == 0:
        out.put(times)
    dist.barrier()
    dist.destroy_process_group()


def _bandwidth(
    manager: ckpt.CheckpointManager, rank: int, args: argparse.Namespace, root: Path
) -> dict[str, list[float]]:
    shard = {"w": torch.rand(args.shard_mib * MiB // 4)}
    whole = {"w": torch.rand(args.ranks * args.shard_mib * MiB // 4)} if rank == 0 else None
    times: dict[str, list[float]] = {"collective": [], "single": [], "async": []}
    for run in range(args.runs + 1):  # the first round warms up, untimed
        order = ("collective", "single") if run % 2 else ("single", "collective")
        for what in (*order, "async"):
            dist.barrier()
            started = time.perf_counter()
            if what == "collective":
                manager.save(1000 + run, {"run": run}, shard)
            elif what == "async":
                manager.save_async(2000 + run, {"run": run}, shard)
                elapsed = time.perf_counter() - started  # what the loop is blocked for
                manager.wait_until_finished()
            elif rank == 0:
                (root / "single").mkdir(exist_ok=True)
                save_state(root / "single", whole, fsync=True)
            if what != "async":
                elapsed = time.perf_counter() - started
            dist.barrier()
            if rank == 0 and what == "single":
                shutil.rmtree(root / "single")
            if run:
                times[what].append(elapsed)
    return times


def _rounds(manager: ckpt.CheckpointManager, rank: int) -> list[float]:
    # The rounds alone, through the manager's own channel. compare.py runs this script
    # against trees from before the redesign too, whose manager held an `_spmd` instead.
    coordinator = getattr(manager, "_coord", None)
    if coordinator is not None:
        rounds = coordinator.round
    else:
        spmd = manager._spmd  # type: ignore[attr-defined]

        def rounds(*args: Any) -> Any:
            return spmd.round(spmd.calls, *args)

    times = []
    for i in range(201):
        started = time.perf_counter()
        rounds("bench", {}, None, lambda _: {})
        rounds("bench", {"parts": [["x", 1, True]]}, None, lambda _: {"path": "x"})
        if i:
            times.append(time.perf_counter() - started)
    return times


def _tiny(manager: ckpt.CheckpointManager, rank: int, root: Path) -> dict[str, list[float]]:
    alone = None
    if rank == 0:
        config = {"checkpoint_dir": str(root / "alone")}  # no retention, as the collective one
        alone = ckpt.CheckpointManager(config, process_group=False)
    tiny = {"w": torch.ones(1)}
    times: dict[str, list[float]] = {"tiny": [], "tiny1": []}
    for i in range(51):
        dist.barrier()
        started = time.perf_counter()
        manager.save(i, {"step": i}, tiny)
        if i:
            times["tiny"].append(time.perf_counter() - started)
        if alone is not None:
            started = time.perf_counter()
            alone.save(i, {"step": i}, tiny)
            if i:
                times["tiny1"].append(time.perf_counter() - started)
    if alone is not None:
        alone.close()
    return times


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _filesystem(path: Path) -> str:
    best, kind = "", "?"
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, point, fstype, *_ = line.split()
            if str(path.resolve()).startswith(point) and len(point) > len(best):
                best, kind = point, fstype
    return kind


def _results(out: Any, procs: list[Any], timeout_s: float = 1800) -> dict[str, Any]:
    """Rank 0's timings; an error, not a hang, when a rank dies before reporting."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return out.get(timeout=2)  # type: ignore[no-any-return]
        except queue.Empty:
            dead = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    p.kill()
                raise SystemExit(f"rank(s) exited before reporting (rank, code): {dead}") from None
    for p in procs:
        p.kill()
    raise SystemExit(f"no timings from rank 0 within {timeout_s:.0f} s")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ckpt-dist-", dir=args.dir))
    args.dir = str(base)
    try:
        context = mp.get_context("spawn")
        out = context.Queue()
        port = _port()
        procs = [
            context.Process(target=_rank, args=(r, args, port, out)) for r in range(args.ranks)
        ]
        for proc in procs:
            proc.start()
        times = _results(out, procs)
        for proc in procs:
            proc.join()
        total = args.ranks * args.shard_mib * MiB
        coll = statistics.median(times["collective"])
        single = statistics.median(times["single"])
        print(
            f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"python {platform.python_version()}; directory {base} ({_filesystem(base)})"
        )
        print(f"{args.ranks} ranks x {args.shard_mib} MiB, fsync on, {args.runs} runs each")
        print(
            f"collective save: {total / coll / 1e6:,.0f} MB/s (median {coll:.3f} s; "
            f"runs {', '.join(f'{t:.3f}' for t in times['collective'])})"
        )
        print(
            f"one process save_state: {total / single / 1e6:,.0f} MB/s (median {single:.3f} s; "
            f"runs {', '.join(f'{t:.3f}' for t in times['single'])})"
        )
        print(f"ratio collective / one process: {single / coll:.2f} (target >= 0.9)")
        blocked = statistics.median(times["async"])
        print(
            f"save_async, blocked per rank (rank 0): {blocked * 1e3:.1f} ms, "
            f"{blocked / coll:.1%} of the collective save (the first one, which allocates "
            f"the buffers, is the untimed warm-up)"
        )
        rounds = statistics.median(times["rounds"]) * 1e3
        tiny = statistics.median(times["tiny"]) * 1e3
        tiny1 = statistics.median(times["tiny1"]) * 1e3
        print(
            f"the two rounds of a save, alone: {rounds:.2f} ms (median of {len(times['rounds'])})"
        )
        print(
            f"tiny save: collective {tiny:.2f} ms, one process {tiny1:.2f} ms: coordination "
            f"adds {tiny - tiny1:.2f} ms (target < 20 ms)"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
