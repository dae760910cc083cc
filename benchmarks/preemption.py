"""What preemption handling costs a loop, and how soon after the signal the save is in.

Side by side in one run, alternating, after an untimed warm-up:

* **should_save per step**, a manager with ``preemption_signals: [SIGTERM]`` against
  one without (a process alone: the distributed round is in ``distributed.py``'s
  territory). Medians of ``--calls`` calls, in microseconds.
* **signal to committed**: the process sends itself SIGTERM in the middle of a step;
  at the boundary the loop calls ``should_save`` and ``save_async`` of a state of
  ``--size-mib``, which returns once the checkpoint is committed (the flush). Timed from
  the signal to that return, against ``save_async`` then ``wait_until_finished`` of the
  same state by a manager without signals (how long the same checkpoint takes in any
  case: a first snapshot's buffers, the write, the commit). fsync on.

Medians of ``--runs``. ``--dir`` is where the checkpoints go (default: a new directory
under ``tempfile.gettempdir()``). Run:

    python benchmarks/preemption.py [--size-mib 256] [--runs 7] [--calls 20000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import ckpt


def _manager(directory: Path, signals: list[str]) -> ckpt.CheckpointManager:
    return ckpt.CheckpointManager(
        {
            "checkpoint_dir": str(directory),
            "save_period": 1000,
            "retention": {"kind": "latest_n", "n": 1},
            "preemption_signals": signals,
            "preemption_grace_s": 120,
        }
    )


def should_save_us(directory: Path, signals: list[str], calls: int) -> float:
    with _manager(directory, signals) as manager:
        start = time.perf_counter()
        for step in range(1, calls + 1):
            manager.should_save(step)
        return (time.perf_counter() - start) / calls * 1e6


def signal_to_commit_s(directory: Path, state: dict[str, Any]) -> float:
    shutil.rmtree(directory, ignore_errors=True)
    with _manager(directory, ["SIGTERM"]) as manager:
        signalled = time.perf_counter()
        os.kill(os.getpid(), signal.SIGTERM)
        assert manager.should_save(7)
        manager.save_async(7, {"step": 7}, state)
        took = time.perf_counter() - signalled
        assert manager.preempted
        record = manager.last_preemption()
        assert record is not None
        assert record.step == 7
        return took


def async_save_s(directory: Path, state: dict[str, Any]) -> float:
    shutil.rmtree(directory, ignore_errors=True)
    with _manager(directory, []) as manager:
        start = time.perf_counter()
        manager.save_async(7, {"step": 7}, state)
        manager.wait_until_finished()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="ckpt-preemption-"))
    state = {"w": torch.randn(args.size_mib * (1 << 18))}
    signal.signal(signal.SIGTERM, lambda *_: None)  # never the default action here
    try:
        should_save_us(root / "warm", ["SIGTERM"], 1000)
        async_save_s(root / "warm", state)
        timings: dict[str, list[float]] = {k: [] for k in ("off", "on", "plain", "signal")}
        for run in range(args.runs):
            order = ("off", "on") if run % 2 == 0 else ("on", "off")
            for key in order:
                signals = ["SIGTERM"] if key == "on" else []
                timings[key].append(should_save_us(root / f"s{key}", signals, args.calls))
            for key in ("plain", "signal") if run % 2 == 0 else ("signal", "plain"):
                measure = async_save_s if key == "plain" else signal_to_commit_s
                timings[key].append(measure(root / f"c{key}", state))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    median = {key: statistics.median(values) for key, values in timings.items()}
    result = {
        "should_save_us": {"without": median["off"], "with": median["on"]},
        "size_mib": args.size_mib,
        "save_async_and_wait_s": median["plain"],
        "signal_to_committed_s": median["signal"],
        "ratio": median["signal"] / median["plain"],
    }
    print(json.dumps(result, indent=1))
    print(
        f"should_save: {median['off']:.2f} us without preemption_signals, "
        f"{median['on']:.2f} us with; {args.size_mib} MiB: save_async + wait "
        f"{median['plain']:.3f} s, "
        f"signal to committed {median['signal']:.3f} s ({result['ratio']:.2f}x)"
    )


if __name__ == "__main__":
    main()
