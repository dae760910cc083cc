"""A writer on S3 that stops itself (SIGSTOP) before one of its changes, for ``test_lease.py``.

It opens a Hybrid top-1 manager on an ``s3://`` directory with a 2 s lease, saves step 1
(reward 0.5) and step 2 (0.9), then makes the attacked call:

* ``commit``: saves step 3 (0.95), which publishes its manifest and prunes step 2;
* ``overwrite``: saves step 2 again (0.99), which replaces step 2's manifest and
  removes the attempt it named.

Every change ckpt makes to the store is a call of one of `CHANGES` on its storage.
``--record`` writes the paths the attacked call changed (the lease's own renewals
aside); ``--pause-at I`` writes ``--marker`` and stops the whole process right before
the ``I``-th of those calls (from 0), so a test can take the lease over and then resume
the process with SIGCONT. ``--result`` receives
what the attacked call raised, as JSON.

    python tests/lease_job.py URL OPTIONS_JSON SCENARIO --result FILE
        [--record FILE] [--pause-at I --marker FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from typing import Any

import ckpt
from ckpt.storage import FsspecStorage

LEASE_SECONDS = 2.0
CHANGES = (
    "open_write",
    "write_bytes",
    "replace_file",
    "replace_if",
    "remove_if",
    "remove_file",
    "remove_tree",
)


def config(url: str, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "checkpoint_dir": url,
        "storage_options": options,
        "metric_name": "reward",
        "keep_top_k": 1,
        "lease_seconds": LEASE_SECONDS,
    }


def save(manager: ckpt.CheckpointManager, step: int, reward: float) -> None:
    path = manager.init_tmp_checkpoint(step, {"reward": reward})
    (path / "weights.bin").write_bytes(f"weights of step {step} at {reward}".encode())
    manager.finalize_checkpoint(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("options")
    parser.add_argument("scenario", choices=["commit", "overwrite"])
    parser.add_argument("--result", required=True)
    parser.add_argument("--record")
    parser.add_argument("--pause-at", type=int)
    parser.add_argument("--marker")
    args = parser.parse_args()

    guarded: list[str] = []
    counting = False

    def pausing(name: str) -> Any:
        real = getattr(FsspecStorage, name)

        def change(self: FsspecStorage, path: str, *rest: Any, **kwargs: Any) -> Any:
            if counting and not path.endswith("/.ckpt/lock"):
                if len(guarded) == args.pause_at:
                    Path(args.marker).write_text(path)
                    os.kill(os.getpid(), signal.SIGSTOP)
                guarded.append(path)
            return real(self, path, *rest, **kwargs)

        return change

    for name in CHANGES:
        if hasattr(FsspecStorage, name):
            setattr(FsspecStorage, name, pausing(name))

    result: dict[str, Any] = {"raised": None}
    manager = ckpt.CheckpointManager(config(args.url, json.loads(args.options)))
    try:
        save(manager, 1, 0.5)
        save(manager, 2, 0.9)
        manager.wait_until_finished()  # step 1's removal, on the reaper's thread, is done
        counting = True
        try:
            if args.scenario == "commit":
                save(manager, 3, 0.95)
            else:
                save(manager, 2, 0.99)
            manager.wait_until_finished()  # the call's own removal counts as its change
        except Exception as exc:
            result = {"raised": type(exc).__name__, "message": str(exc)}
        counting = False
    finally:
        try:
            manager.close()
        except Exception as exc:
            result["close_raised"] = type(exc).__name__
        Path(args.result).write_text(json.dumps(result))
        if args.record:
            Path(args.record).write_text(json.dumps(guarded))


if __name__ == "__main__":
    main()
