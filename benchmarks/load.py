"""Load time of ckpt's state file against a raw read, safetensors, torch.load and DCP.

The same state (``--size-gib`` GiB of random float32 in ``--tensors`` tensors, 64 of
16 MiB by default) is written once in each format, fsynced. Each round then loads every
format once, in an order that rotates from round to round, after untimed warm-up loads:

* **raw**: ``readinto`` of the same bytes (one file, the tensors back to back) into
  preallocated tensors, 256 MiB a call, no check: the limit;
* **ckpt**: ``ckpt.torch.load_state(dir, map_location="cpu")``, new tensors, every byte's
  XXH3 digest checked;
* **ckpt into=**: ``load_state(dir, into=state)``, filling preallocated tensors in place,
  digest checked;
* **safetensors**: ``safetensors.torch.load_file`` then ``copy_`` into the preallocated
  tensors (its tensors are views of a memory map: the copy is where it reads);
* **torch.load**: ``torch.load(f, weights_only=True)`` of a ``torch.save`` file;
* **DCP**: ``torch.distributed.checkpoint.load`` into the preallocated tensors, one
  process, no process group.

``warm``: the files' pages stay in the page cache (each was just read). ``cold``: each
file's pages are dropped with ``posix_fadvise(POSIX_FADV_DONTNEED)`` just before its
load, so it comes from the disk. It prints each one's median MiB/s and its time as a
ratio of the raw read's (ckpt's targets: warm <= 1.25x, cold <= 1.11x, i.e. >= 0.8x and
>= 0.9x the raw read's speed, and never slower than safetensors). Run:

    python benchmarks/load.py [--size-gib 1] [--tensors 64] [--rounds 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch.distributed import checkpoint as dcp

from ckpt.torch import load_state, save_state

MiB = 2**20
_CALL = 256 * MiB


def _drop(path: Path) -> None:
    for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _raw_read(path: Path, into: dict[str, torch.Tensor]) -> None:
    with open(path, "rb", buffering=0) as f:
        for tensor in into.values():
            view = tensor.view(-1).view(torch.uint8).numpy().data
            for start in range(0, len(view), _CALL):
                f.readinto(view[start : start + _CALL])


def _rounds(
    loads: dict[str, Callable[[], Any]], files: dict[str, Path], rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Each load's times, cold then warm, the order rotating from round to round."""
    names = list(loads)
    times: dict[str, dict[str, list[float]]] = {"warm": {}, "cold": {}}
    for name in names:  # warm-up: the allocator's pools, the page cache
        loads[name]()
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            for kind in ("cold", "warm"):
                if kind == "cold":
                    _drop(files[name])
                gc.collect()
                start = time.perf_counter()
                result = loads[name]()
                times[kind].setdefault(name, []).append(time.perf_counter() - start)
                del result
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--only", default="", help="comma-separated names to run")
    args = parser.parse_args()

    numel = int(args.size_gib * 2**30) // 4 // args.tensors
    state = {f"layer{i:03d}.weight": torch.rand(numel) for i in range(args.tensors)}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    into = {key: torch.empty_like(t) for key, t in state.items()}
    root = Path(tempfile.mkdtemp(prefix="ckpt-load-", dir=args.dir))
    try:
        files = {
            "raw": root / "raw.bin",
            "ckpt": root / "ckpt",
            "ckpt into=": root / "ckpt",
            "safetensors": root / "model.safetensors",
            "torch.load": root / "state.pt",
            "DCP": root / "dcp",
        }
        with open(files["raw"], "wb") as f:
            for t in state.values():
                f.write(t.numpy().data)
        files["ckpt"].mkdir()
        save_state(files["ckpt"], state)
        safetensors.torch.save_file(state, str(files["safetensors"]))
        torch.save(state, files["torch.load"])
        dcp.save(state, checkpoint_id=str(files["DCP"]), no_dist=True)
        for path in set(files.values()):
            _fsync_tree(path)
        del state
        gc.collect()

        def safetensors_load() -> None:
            loaded = safetensors.torch.load_file(str(files["safetensors"]))
            for key, tensor in into.items():
                tensor.copy_(loaded[key])

        def dcp_load() -> None:
            dcp.load(into, checkpoint_id=str(files["DCP"]), no_dist=True)

        loads: dict[str, Callable[[], Any]] = {
            "raw": lambda: _raw_read(files["raw"], into),
            "ckpt": lambda: load_state(files["ckpt"], map_location="cpu"),
            "ckpt into=": lambda: load_state(files["ckpt"], into=into),
            "safetensors": safetensors_load,
            "torch.load": lambda: torch.load(files["torch.load"], weights_only=True),
            "DCP": dcp_load,
        }
        if args.only:
            wanted = {"raw", *args.only.split(",")}
            loads = {name: fn for name, fn in loads.items() if name in wanted}
        names = list(loads)
        times = _rounds(loads, files, args.rounds)
        print(
            f"machine: {os.cpu_count()} CPUs, {platform.platform()}, torch {torch.__version__}, "
            f"safetensors {safetensors.__version__}"
        )
        print(
            f"load {nbytes / MiB:,.0f} MiB in {args.tensors} tensors, {args.rounds} rounds, "
            f"medians; time as a multiple of the raw read's"
        )
        for kind in ("warm", "cold"):
            raw = statistics.median(times[kind]["raw"])
            for name in names:
                seconds = statistics.median(times[kind][name])
                print(
                    f"{kind:4} {name:12} {nbytes / MiB / seconds:9,.0f} MiB/s "
                    f"{seconds / raw:6.2f}x raw"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
