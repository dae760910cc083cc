"""Write bandwidth of ``ckpt.torch.save_state`` (fsync included) against ``dd``, same disk.

In one run, into one directory, it alternates (dd first on even runs, save first on odd
ones, after untimed warm-up rounds):

* ``dd if=/dev/zero of=FILE bs=16M count=N conv=fsync``, N = the state's size in 16 MiB
  blocks (64 for 1 GiB), timed by dd itself (the seconds it prints; LC_ALL=C);
* ``ckpt.torch.save_state(subdir, state, fsync=True)``, timed around the call: checking
  the state, writing the temporary file, fsync, rename and the directory's fsync;
* with ``--torch-save``, ``torch.save(state, f)`` to an open file then fsync, the
  simplest alternative, for comparison.

The state is ``--size-gib`` GiB of random float32 data (random, so that a storage layer
that is clever with zeros cannot flatter it; dd writes zeros as its command says) in 16
tensors, plus an optimizer-like dict of 64 small tensors and scalars. Each written file
is deleted before the next run. It prints the median bandwidth of each (MB = 10^6
bytes, dd's unit), their ratio (target: save_state >= 0.85 x dd), and:

* **peak extra memory during the save**, as a fraction of the state's size, measured in
  a fresh subprocess that builds the state, resets its peak resident set size
  (``echo 5 > /proc/self/clear_refs``, Linux), reads ``VmRSS`` from
  ``/proc/self/status``, saves, and reads the peak ``VmHWM``: extra = VmHWM after the
  save - VmRSS before it. Page cache is not resident set size, so this counts copies the
  save makes, not the kernel's buffering. Where the peak cannot be reset, it says so and
  uses the peak since the process started (which then includes building the state);
* **load_state throughput**, cold (the file's pages dropped from the page cache with
  ``posix_fadvise(DONTNEED)`` after its fsync, so it is read from the disk) and warm (read
  again at once, from the page cache);
* the machine: CPU count, kernel, memory, and the file system of the directory.

The directory defaults to a new one under ``tempfile.gettempdir()`` (``/tmp`` unless
``TMPDIR`` says otherwise); ``--dir`` puts it under another directory, on the disk to be
measured. It needs about twice the state's size in free memory and once on disk. Run:

    python benchmarks/state_bandwidth.py [--size-gib 1] [--dir DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ckpt.torch import STATE_FILE, load_state, save_state

MiB = 2**20
GiB = 2**30
DD_BLOCK = 16 * MiB

Results = dict[str, list[float]]  # bytes per second, by what was timed


def make_state(size_bytes: int) -> dict[str, Any]:
    """About ``size_bytes`` of random float32 in 16 tensors, plus small optimizer state."""
    gen = torch.Generator().manual_seed(0)
    small = {
        i: {"step": torch.tensor(10.0), "exp_avg": torch.rand(1024, generator=gen)}
        for i in range(32)
    }
    small_bytes = sum(t.nbytes for entry in small.values() for t in entry.values())
    per_tensor = max(1, (size_bytes - small_bytes) // 4 // 16)
    return {
        "model": {f"layer{i}.weight": torch.rand(per_tensor, generator=gen) for i in range(16)},
        "optimizer": {"state": small, "param_groups": [{"lr": 1e-4, "params": list(range(32))}]},
    }


def state_bytes(state: Any) -> int:
    if isinstance(state, torch.Tensor):
        return state.nbytes
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def run_dd(path: Path, count: int) -> float:
    """Bytes per second that dd reports for writing ``count`` 16 MiB blocks, fsync included."""
    done = subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=16M", f"count={count}", "conv=fsync"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    match = re.search(r"copied, ([0-9.e+-]+) s", done.stderr)
    if match is None:
        raise RuntimeError(f"cannot read dd's time from: {done.stderr!r}")
    path.unlink()
    return count * DD_BLOCK / float(match.group(1))


def drop_from_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_save(root: Path, state: Any, loads: Results | None) -> float:
    """Bytes per second of save_state with fsync; times load_state too if ``loads``."""
    target = root / "save"
    target.mkdir()
    start = time.perf_counter()
    path = save_state(target, state, fsync=True)
    elapsed = time.perf_counter() - start
    size = path.stat().st_size
    if loads is not None:
        drop_from_cache(path)
        for kind in ("cold", "warm"):
            start = time.perf_counter()
            loaded = load_state(target)
            loads[kind].append(size / (time.perf_counter() - start))
            del loaded
    shutil.rmtree(target)
    return size / elapsed


def run_torch_save(root: Path, state: Any) -> float:
    path = root / "torch_save.pt"
    start = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    size = path.stat().st_size
    path.unlink()
    return size / elapsed


# --- memory, in a fresh process -------------------------------------------------------


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def child_memory(method: str, size_bytes: int, directory: Path) -> None:
    """Print, as JSON, the peak extra memory of one save of a fresh state."""
    state = make_state(size_bytes)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        how = "VmHWM reset through /proc/self/clear_refs"
    except OSError:
        how = "VmHWM since the process started (could not reset it)"
    before = _status()
    if method == "save_state":
        save_state(directory, state, fsync=True)
    else:
        with open(directory / "torch_save.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    after = _status()
    extra = after["VmHWM"] - before["VmRSS"]
    print(json.dumps({"extra": extra, "state": state_bytes(state), "how": how}))


def measure_memory(method: str, size_bytes: int, root: Path) -> dict[str, Any]:
    target = root / f"memory_{method}"
    target.mkdir()
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child-memory", method, str(size_bytes), str(target)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        shutil.rmtree(target)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- the machine ----------------------------------------------------------------------


def file_system(path: Path) -> str:
    """The file system holding ``path``: type, source and mount point, from mountinfo."""
    real = os.path.realpath(path)
    best: tuple[str, str, str, str] | None = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mount_point = left.split()[4].replace("\\040", " ")
            fstype, source = right.split()[:2]
            inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
            if inside and (best is None or len(mount_point) >= len(best[0])):
                options = left.split()[5]
                best = (mount_point, fstype, source, options)
    if best is None:
        return "unknown"
    mount_point, fstype, source, options = best
    return f"{fstype} ({source} mounted at {mount_point}, {options})"


def machine() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    memory = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB RAM"
    return (
        f"{os.cpu_count()} CPUs ({usable} usable), {platform.system()} {platform.release()} "
        f"{platform.machine()}, {memory}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def mbps(values: list[float]) -> str:
    return " ".join(f"{v / 1e6:.0f}" for v in values)


def timed_runs(args: argparse.Namespace, scratch: Path, state: Any, count: int) -> Results:
    """Warm-up rounds, then the timed runs, alternating the order of the writers."""
    results: Results = {"dd": [], "save": [], "torch": [], "cold": [], "warm": []}
    for i in range(args.warmup + args.runs):
        timed = i >= args.warmup
        order = ["dd", "save", "torch"] if i % 2 == 0 else ["torch", "save", "dd"]
        for what in order:
            if what == "dd":
                value = run_dd(scratch / "dd.bin", count)
            elif what == "save":
                value = run_save(scratch, state, results if timed else None)
            elif args.torch_save:
                value = run_torch_save(scratch, state)
            else:
                continue
            if timed:
                results[what].append(value)
    return results


def report(results: Results) -> None:
    dd, saves, torch_saves = results["dd"], results["save"], results["torch"]
    dd_bw, save_bw = statistics.median(dd), statistics.median(saves)
    print(f"dd conv=fsync:            {dd_bw / 1e6:7.0f} MB/s  (runs: {mbps(dd)})")
    print(f"save_state + fsync:       {save_bw / 1e6:7.0f} MB/s  (runs: {mbps(saves)})")
    print(f"ratio save_state / dd:    {save_bw / dd_bw:7.2f}  (target >= 0.85)")
    if torch_saves:
        torch_bw = statistics.median(torch_saves)
        print(
            f"torch.save + fsync:       {torch_bw / 1e6:7.0f} MB/s  (runs: "
            f"{mbps(torch_saves)}); ratio to dd {torch_bw / dd_bw:.2f}"
        )
    for kind in ("cold", "warm"):
        values = results[kind]
        print(
            f"load_state, {kind} cache:  {statistics.median(values) / 1e6:7.0f} MB/s  "
            f"(runs: {mbps(values)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=1.0, help="state size (default 1)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where to make the scratch directory (default: the temp dir, /tmp)",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument(
        "--torch-save",
        action="store_true",
        help="also time torch.save to an open file + fsync, for comparison",
    )
    parser.add_argument(
        "--child-memory", nargs=3, metavar=("METHOD", "BYTES", "DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child_memory:
        method, size, directory = args.child_memory
        child_memory(method, int(size), Path(directory))
        return

    size_bytes = int(args.size_gib * GiB)
    count = max(1, math.ceil(size_bytes / DD_BLOCK))
    scratch = Path(tempfile.mkdtemp(prefix="ckpt-bandwidth-", dir=args.dir))
    try:
        print(f"machine:   {machine()}")
        print(f"directory: {scratch} on {file_system(scratch)}")
        state = make_state(size_bytes)
        print(
            f"state:     {state_bytes(state) / GiB:.3f} GiB (16 float32 tensors + 64 small "
            f"ones); dd: bs=16M count={count}; {args.warmup} warm-up round(s), then "
            f"{args.runs} timed runs of each, alternating",
            flush=True,
        )
        results = timed_runs(args, scratch, state, count)
        del state
        report(results)
        for method in ["save_state"] + (["torch_save"] if args.torch_save else []):
            memory = measure_memory(method, size_bytes, scratch)
            print(
                f"peak extra memory, {method}: {memory['extra'] / MiB:.1f} MiB = "
                f"{memory['extra'] / memory['state']:.2%} of the state ({memory['how']}; "
                f"fresh process)"
            )
        print(f"(state file: {STATE_FILE}; MB = 10^6 bytes)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
