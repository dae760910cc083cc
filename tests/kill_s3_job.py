"""A scripted training job on S3 for ``test_kill_s3.py``: it saves, overwrites, prunes, resumes.

It saves the events of `EVENTS` in order into an ``s3://`` checkpoint directory with a
Hybrid top-2 manager, resuming after the newest event it finds committed, so a job
restarted after a crash finishes the run. One save overwrites the step saved just before
it, three checkpoints are pruned on the way, and the job ends with
``remove_old_checkpoints`` (a prune a kill interrupted is not redone by a save). Each
save writes its files the way a loop does, through the ``UPath`` that
``init_tmp_checkpoint`` returns: a small file in one PUT and a payload in a multipart
upload of three parts. Every byte is a function of the event, so a test knows every
version of every step.

It counts every request it makes to S3 (each call of s3fs's ``_call_s3``, and of its
synchronous twin ``call_s3`` that s3fs's files use: the places s3fs sends a request).
``--record FILE`` writes the requests it made, and ``--kill-at I`` sends the whole
process SIGKILL right before the ``I``-th (from 0), after writing that request's name to
``--marker``. After each ``finalize_checkpoint`` returns, the event is appended to
``--log`` (local disk), so the test knows what was committed for sure.

The lease lasts 60 s: no renewal request falls inside a run, so every run makes the
same requests in the same order. A restart after a kill passes ``--lease-seconds 1``:
it takes the dead job's lease over the real way, after watching it unchanged for that
long on its own clock, instead of waiting out 60 s.

    python tests/kill_s3_job.py URL OPTIONS_JSON --log FILE [--record FILE]
        [--kill-at I --marker FILE] [--lease-seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from typing import Any

import s3fs.core
from fsspec.asyn import sync_wrapper

import ckpt

# (step, metric): the event index is the version. Event 3 overwrites step 2.
EVENTS: list[tuple[int, float]] = [(1, 0.5), (2, 0.9), (3, 0.2), (3, 0.95), (4, 0.1), (5, 0.3)]
PAYLOAD_PART = 5 << 20  # S3's smallest part
LEASE_SECONDS = 60


def payload(event: int) -> bytes:
    """The event's payload: three parts' worth, different for each event."""
    seed = f"event {event} ".encode()
    return (seed * (1 + (2 * PAYLOAD_PART + 1000) // len(seed)))[: 2 * PAYLOAD_PART + 1000]


def small(event: int) -> bytes:
    return f"rng state of event {event}\n".encode()


def config(
    url: str, options: dict[str, Any], lease_seconds: float = LEASE_SECONDS
) -> dict[str, Any]:
    return {
        "checkpoint_dir": url,
        "storage_options": options,
        "metric_name": "reward",
        "keep_top_k": 2,
        "lease_seconds": lease_seconds,
        "attempt_grace_seconds": 0,
    }


def expected_final() -> dict[int, int]:
    """Step -> the event whose version a finished run keeps (Hybrid top-2 plus latest)."""
    last: dict[int, int] = {}
    for event, (step, _) in enumerate(EVENTS):
        last[step] = event
    metric = {step: EVENTS[event][1] for step, event in last.items()}
    best = sorted(metric, key=lambda s: (metric[s], s), reverse=True)[:2]
    return {step: last[step] for step in {*best, max(last)}}


def _count_requests(kill_at: int | None, marker: str | None) -> list[str]:
    made: list[str] = []
    real = s3fs.core.S3FileSystem._call_s3

    async def counting(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if kill_at is not None and len(made) == kill_at:
            assert marker is not None
            with open(marker, "w") as f:
                f.write(method)
                f.flush()
                os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        made.append(method)
        return await real(self, method, *args, **kwargs)

    s3fs.core.S3FileSystem._call_s3 = counting
    # Its files (multipart uploads) call the synchronous twin, bound to the original.
    s3fs.core.S3FileSystem.call_s3 = sync_wrapper(counting)
    return made


def run(url: str, options: dict[str, Any], log: str, lease_seconds: float) -> None:
    with ckpt.CheckpointManager(config(url, options, lease_seconds)) as manager:
        latest = manager.get_latest_checkpoint_path()
        info = manager.load_training_info(latest)
        start = info["event"] + 1 if info is not None else 0
        for event in range(start, len(EVENTS)):
            step, reward = EVENTS[event]
            path = manager.init_tmp_checkpoint(step, {"reward": reward, "event": event})
            (path / "rng.txt").write_bytes(small(event))
            with (path / "weights.bin").open("wb", block_size=PAYLOAD_PART) as f:
                data = payload(event)
                for at in range(0, len(data), 1 << 20):
                    f.write(data[at : at + (1 << 20)])
            manager.finalize_checkpoint(path)
            with open(log, "a") as f:
                f.write(f"{event}\n")
                f.flush()
                os.fsync(f.fileno())
        # A kill after a commit and before its prune leaves a checkpoint retention would
        # drop, and a restart resumes after that save: the job finishes the prune itself.
        manager.remove_old_checkpoints()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("options")
    parser.add_argument("--log", required=True)
    parser.add_argument("--record")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--marker")
    parser.add_argument("--lease-seconds", type=float, default=LEASE_SECONDS)
    args = parser.parse_args()
    made = _count_requests(args.kill_at, args.marker)
    run(args.url, json.loads(args.options), args.log, args.lease_seconds)
    if args.record:
        with open(args.record, "w") as f:
            json.dump(made, f)


if __name__ == "__main__":
    main()
