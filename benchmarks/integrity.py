"""What end-to-end digests cost: saving, loading, committing a loop's files, a deep check.

Side by side in one run, alternating (A B, then B A), after an untimed warm-up:

* **save_state**, hashing as it writes (what ckpt does) against the same write with
  the hasher replaced by one that does nothing (what it did before it hashed), fsync
  on. Target: hashing >= 0.95 x without.
* **load_state**, warm (from the page cache), of the same state as a format-2 file
  (its digest checked as it is read) and as a format-1 file (no trailer, no check).
* **a commit of a file the loop wrote** (``manager.checkpoint(...)`` with one file of
  the state's size written by the loop): the one read that hashes it, against a commit
  of ``manager.save`` of the same state, whose file is never read back.
* **verify(deep=True)** over that checkpoint: the read of every byte, in MB/s.

Bandwidths are MB/s (10^6 bytes), medians of ``--runs``. ``--dir`` is where the files go
(default: a new directory under ``tempfile.gettempdir()``); ``/dev/shm`` takes the
disk's swings out and leaves the CPU's cost, which is what hashing adds. Run:

    python benchmarks/integrity.py [--size-gib 1] [--runs 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import xxhash

import ckpt
from ckpt.storage import _digest
from ckpt.torch import load_state, save_state

sys.path.insert(0, str(Path(__file__).parent))
from state_bandwidth import make_state

MB = 1e6


class _NoHash:
    """A hasher that hashes nothing: the write path as it was before digests."""

    def update(self, _: Any) -> None:
        pass

    def digest(self) -> bytes:
        return bytes(16)

    def hexdigest(self) -> str:
        return "0" * 32


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _save(root: Path, state: Any, *, hashing: bool) -> float:
    target = root / "save"
    target.mkdir()
    real = _digest.hasher
    if not hashing:
        _digest.hasher = _NoHash  # type: ignore[assignment]
    try:
        elapsed = _timed(lambda: save_state(target, state, fsync=True))
    finally:
        _digest.hasher = real
    size = (target / "state.ckpt").stat().st_size
    shutil.rmtree(target)
    return size / elapsed


def _as_format_1(path: Path) -> None:
    """Rewrite a state file as ckpt wrote it before it hashed: format 1, no trailer."""
    data = path.read_bytes()
    length = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16 : 16 + length])
    header["format"] = 1
    body = json.dumps(header, separators=(",", ":")).encode()
    head = data[:8] + len(body).to_bytes(8, "little") + body
    start = -(-(16 + length) // 4096) * 4096
    assert len(head) <= start
    path.write_bytes(head + bytes(start - len(head)) + data[start:-16])


def _loads(root: Path, state: Any, runs: int) -> dict[str, list[float]]:
    checked, plain = root / "checked", root / "plain"
    for where in (checked, plain):
        where.mkdir()
        save_state(where, state, fsync=False)
    _as_format_1(plain / "state.ckpt")
    size = (checked / "state.ckpt").stat().st_size
    found: dict[str, list[float]] = {"checked": [], "unchecked": []}
    for run in range(runs + 1):
        order = [("checked", checked), ("unchecked", plain)]
        for name, where in order if run % 2 else order[::-1]:
            seconds = _timed(lambda where=where: load_state(where))
            if run:  # the first round warms the page cache
                found[name].append(size / seconds)
    shutil.rmtree(checked)
    shutil.rmtree(plain)
    return found


def _commits(root: Path, state: Any, payload: bytes, runs: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"loop_file": [], "save_state": [], "deep_check": []}
    for run in range(runs):
        directory = root / f"run{run}"
        with ckpt.CheckpointManager({"checkpoint_dir": str(directory)}) as manager:
            path = manager.init_tmp_checkpoint(1, {})
            (path / "weights.bin").write_bytes(payload)
            found["loop_file"].append(_timed(partial(manager.finalize_checkpoint, path)))
            path = manager.init_tmp_checkpoint(2, {})
            save_state(path, state)
            found["save_state"].append(_timed(partial(manager.finalize_checkpoint, path)))
        seconds = _timed(partial(ckpt.verify, directory, deep=True))
        found["deep_check"].append(2 * len(payload) / seconds)
        shutil.rmtree(directory)
    return found


def _hash_speed(payload: bytes) -> float:
    seconds = min(_timed(lambda: xxhash.xxh3_128(payload).digest()) for _ in range(3))
    return len(payload) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ckpt-integrity-", dir=args.dir))
    try:
        state = make_state(int(args.size_gib * 2**30))
        payload = torch.rand(int(args.size_gib * 2**30) // 4).numpy().tobytes()
        _save(root, state, hashing=True)  # warm-up
        saves: dict[str, list[float]] = {"hashing": [], "no hashing": []}
        for run in range(args.runs):
            for hashing in (True, False) if run % 2 else (False, True):
                saves["hashing" if hashing else "no hashing"].append(
                    _save(root, state, hashing=hashing)
                )
        loads = _loads(root, state, args.runs)
        commits = _commits(root, state, payload, args.runs)
        hashed = _hash_speed(payload)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def mbps(values: list[float]) -> float:
        return statistics.median(values) / MB

    print(f"{args.size_gib:g} GiB state in {args.dir or tempfile.gettempdir()}, {args.runs} runs")
    print(f"XXH3-128 on this core: {hashed / MB:,.0f} MB/s")
    with_, without = mbps(saves["hashing"]), mbps(saves["no hashing"])
    print(
        f"save_state, fsync on:     hashing {with_:,.0f} MB/s, without {without:,.0f} MB/s: "
        f"{with_ / without:.3f}x (target >= 0.95x)"
    )
    checked, unchecked = mbps(loads["checked"]), mbps(loads["unchecked"])
    print(
        f"load_state, warm:         checked {checked:,.0f} MB/s, format 1 unchecked "
        f"{unchecked:,.0f} MB/s: {checked / unchecked:.3f}x"
    )
    loop, own = statistics.median(commits["loop_file"]), statistics.median(commits["save_state"])
    print(
        f"commit of a loop's file:  {loop * 1e3:,.1f} ms ({len(payload) / loop / MB:,.0f} MB/s "
        f"read to hash it); of save_state's file: {own * 1e3:,.1f} ms (not read)"
    )
    print(f"verify(deep=True):        {mbps(commits['deep_check']):,.0f} MB/s over every byte")


if __name__ == "__main__":
    main()
