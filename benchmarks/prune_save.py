"""How long a save that prunes blocks, against the same save with nothing to prune.

Two managers on one disk, ``fsync`` on, each saving ``--size-gib`` GiB (64 float32
tensors by default) with ``manager.save``:

* **pruning**: ``keep_top_k: 1`` without a metric, so every save deletes the one
  before it (the removal goes to the directory's reaper, off the save's thread);
* **plain**: keeps everything; its previous checkpoint is deleted by hand, untimed,
  before its next save, so both directories hold the same data.

Rounds alternate which goes first (after an untimed warm-up save each). Between saves
the pruning manager's reaper is waited for and ``sync`` is called, untimed, so each
timed save starts from the same state (else the journal commit of the last removal
lands in whichever fsync comes next); ``--overlap`` leaves the removal running into the
next save instead, as in a real loop. It prints the median blocking time of each,
their ratio (target: pruning <= 1.05x plain), and the median time the reaper took to
remove one checkpoint. Run:

    python benchmarks/prune_save.py [--size-gib 1] [--rounds 9] [--dir DIR] [--overlap]
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

import torch

import ckpt


def _state(size_gib: float, tensors: int) -> dict[str, torch.Tensor]:
    numel = int(size_gib * 2**30) // 4 // tensors
    return {f"layer{i:03d}.weight": torch.rand(numel) for i in range(tensors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--overlap", action="store_true")
    parser.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args()
    state = _state(args.size_gib, args.tensors)
    root = Path(tempfile.mkdtemp(prefix="ckpt-prune-", dir=args.dir))
    try:
        pruning = ckpt.CheckpointManager(
            {"checkpoint_dir": str(root / "pruning"), "keep_top_k": 1, "fsync": True}
        )
        plain = ckpt.CheckpointManager({"checkpoint_dir": str(root / "plain"), "fsync": True})
        times: dict[str, list[float]] = {"pruning": [], "plain": []}
        reaped: list[float] = []
        for step in range(args.rounds + 1):
            order = ["pruning", "plain"] if step % 2 == 0 else ["plain", "pruning"]
            for name in order:
                manager = pruning if name == "pruning" else plain
                if name == "plain" and step:
                    shutil.rmtree(root / "plain" / f"step_{step - 1}")
                if not args.overlap:
                    os.sync()  # both start with nothing of the last removal left to write
                    time.sleep(args.settle)
                start = time.perf_counter()
                manager.save(step, {}, state)
                took = time.perf_counter() - start
                if name == "pruning" and not args.overlap:
                    start = time.perf_counter()
                    pruning.wait_until_finished()
                    if step:
                        reaped.append(time.perf_counter() - start)
                if step:  # step 0 is the warm-up
                    times[name].append(took)
        pruning.close()
        plain.close()
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, torch {torch.__version__}")
        print(
            f"save {nbytes / 2**20:,.0f} MiB, fsync on, {args.rounds} alternating rounds, "
            f"medians{' (removal overlapping the next save)' if args.overlap else ''}"
        )
        med = {name: statistics.median(values) for name, values in times.items()}
        for name in ("plain", "pruning"):
            print(f"{name:8} save blocks {med[name]:.3f} s")
        print(f"pruning / plain: {med['pruning'] / med['plain']:.3f}x")
        if reaped:
            print(f"reaper, after the save returned: {statistics.median(reaped):.3f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
