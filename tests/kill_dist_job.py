"""A two-rank torch.distributed job for ``test_kill_dist.py``: saves, overwrites, prunes, resumes.

Both ranks save the events of `EVENTS` in order with a top-2 manager (``fsync`` on),
collectively, resuming after the event of the checkpoint every rank agrees is the
latest; each rank's state is a function of the event and the rank (`state`), and a
resumed rank checks that what it loads is exactly its own part of that event.

It is run as a fork server (``--serve``): torch and ckpt are imported once, and each
line read on stdin is a JSON list of one argument list per rank; the server forks one
child per rank (a new process that never opened the directory, like a restarted job)
and answers ``{"exits": [...]}`` once all have ended. A rank's arguments are ``DIR
RANK WORLD PORT RESULT [--record OPS.json] [--kill-at I --marker FILE]``:
``--kill-at I`` sends that rank SIGKILL right before its ``I``-th file operation
under ``DIR`` (counted by `kill_job.FileOps`, the single-process kill test's watcher),
and ``--record`` writes the rank's operations. ``RESULT`` gets what the rank saw: its
start and end, or the error it raised and how long the failing call took; its output
goes to ``RESULT.log``.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from kill_job import FileOps, child

import ckpt
import ckpt.torch._ranks  # imported once, in the fork server, for every rank
from ckpt.torch import load_state

# (step, reward): step 2 is saved twice (an overwrite); top-2 by reward prunes steps
# 1, the first 3 and 4 on the way.
EVENTS = [(1, 0.1), (2, 0.5), (2, 0.6), (3, 0.2), (4, 0.3), (5, 0.7), (6, 0.4)]
TIMEOUT_S = 5.0


def config(directory: str) -> dict[str, Any]:
    return {
        "checkpoint_dir": directory,
        "metric_name": "reward",
        "keep_top_k": 2,
        "collective_timeout_s": TIMEOUT_S,
    }


def state(event: int, rank: int) -> dict[str, Any]:
    """What ``rank`` saves at ``event``: every value is the event's and the rank's."""
    return {"w": torch.full((4096,), float(1000 * rank + event)), "event": event}


def run(directory: str, rank: int, world: int, port: int, result: str, extra: list[str]) -> int:
    ops = None
    if "--record" in extra or "--kill-at" in extra:
        kill_at = int(extra[extra.index("--kill-at") + 1]) if "--kill-at" in extra else None
        marker = extra[extra.index("--marker") + 1] if "--marker" in extra else None
        ops = FileOps(directory, kill_at=kill_at, marker=marker)
        ops.start()
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=30),
    )
    seen: dict[str, Any] = {}
    started = time.monotonic()
    try:
        manager = ckpt.CheckpointManager(config(directory))
        latest = manager.get_latest_checkpoint_path()
        start = 0
        if latest is not None:
            info = manager.load_training_info(latest)
            assert info is not None
            start = int(info["event"]) + 1
            loaded = load_state(latest)
            expected = state(int(info["event"]), rank)
            if loaded["event"] != expected["event"] or not torch.equal(loaded["w"], expected["w"]):
                seen["wrong_resume"] = [latest, loaded["event"]]
        seen["start"] = start
        for event in range(start, len(EVENTS)):
            step, reward = EVENTS[event]
            if ops is not None:
                ops.event = event
            started = time.monotonic()
            manager.save(step, {"event": event, "reward": reward}, state(event, rank))
        if ops is not None:
            ops.event = len(EVENTS)
        started = time.monotonic()
        manager.remove_old_checkpoints()  # a crash after the last commit skipped its prune
        manager.close()
        seen["done"] = True
    except ckpt.CheckpointError as exc:
        seen.update(
            error=type(exc).__name__,
            ranks=list(getattr(exc, "ranks", ())),
            message=str(exc),
            elapsed=time.monotonic() - started,
        )
    if ops is not None:
        ops.stop()
        if "--record" in extra:
            Path(extra[extra.index("--record") + 1]).write_text(json.dumps(ops.ops))
    Path(result).write_text(json.dumps(seen))
    return 0


def _child(argv: list[str]) -> None:
    try:
        directory, rank, world, port, result, *extra = argv
    except BaseException:  # a forked child must never return into the server's loop
        traceback.print_exc()
        os._exit(1)
    child(lambda: run(directory, int(rank), int(world), int(port), result, extra), f"{result}.log")


def serve() -> int:
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        ranks = json.loads(line)
        gc.freeze()
        pids = []
        for argv in ranks:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                _child(argv)
            pids.append(pid)
        exits = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        sys.stdout.write(json.dumps({"exits": exits}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(serve())
