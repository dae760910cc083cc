"""A job with a local tier replicated to S3, for ``test_kill_replica.py``.

It saves the steps of `STEPS` into a local ``checkpoint_dir`` (each a small file and a
5 MiB payload, every byte a function of the step) with
``replicate: {to: URL, keep_local: 1}`` and ``latest_n: 2``, resuming after the newest
step of either tier, then waits for replication. After each ``finalize_checkpoint`` the
step is appended to ``--log`` (local disk), so the test knows what was committed
locally for sure.

Like ``kill_s3_job.py`` it counts every request it makes to S3 (the replicator's
uploads, the replica's lease and recovery); ``--kill-at I`` sends the process SIGKILL
right before the ``I``-th, after writing its name to ``--marker``; ``--record FILE``
writes the requests made. A restart passes ``--lease-seconds 1``, to take the dead
job's lease of the replica over the real way.

    python tests/kill_replica_job.py LOCAL URL OPTIONS_JSON --log FILE [--record FILE]
        [--kill-at I --marker FILE] [--lease-seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from kill_s3_job import _count_requests

import ckpt

STEPS = (1, 2, 3, 4)
PART = 5 << 20  # S3's smallest part


def payload(step: int) -> bytes:
    seed = f"weights of step {step} ".encode()
    return (seed * (1 + (PART + 999) // len(seed)))[: PART + 999]


def small(step: int) -> bytes:
    return f"rng state of step {step}\n".encode()


def config(local: str, url: str, options: dict[str, Any], lease_seconds: float) -> dict[str, Any]:
    return {
        "checkpoint_dir": local,
        "retention": {"kind": "latest_n", "n": 2},
        "lease_seconds": lease_seconds,
        "attempt_grace_seconds": 0,
        "replicate": {"to": url, "keep_local": 1, "storage_options": options},
    }


def run(local: str, url: str, options: dict[str, Any], log: str, lease_seconds: float) -> None:
    with ckpt.CheckpointManager(config(local, url, options, lease_seconds)) as manager:
        latest = manager.get_latest_checkpoint_path()
        info = manager.load_training_info(latest)
        start = info["step"] + 1 if info is not None else STEPS[0]
        for step in range(start, STEPS[-1] + 1):
            path = manager.init_tmp_checkpoint(step, {"step": step})
            (path / "rng.txt").write_bytes(small(step))
            (path / "weights.bin").write_bytes(payload(step))
            manager.finalize_checkpoint(path)
            with open(log, "a") as f:
                f.write(f"{step}\n")
                f.flush()
                os.fsync(f.fileno())
        assert manager.wait_for_replication(120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("local")
    parser.add_argument("url")
    parser.add_argument("options")
    parser.add_argument("--log", required=True)
    parser.add_argument("--record")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--marker")
    parser.add_argument("--lease-seconds", type=float, default=60)
    args = parser.parse_args()
    made = _count_requests(args.kill_at, args.marker)
    run(args.local, args.url, json.loads(args.options), args.log, args.lease_seconds)
    if args.record:
        with open(args.record, "w") as f:
            json.dump(made, f)


if __name__ == "__main__":
    main()
