"""What replicating a local tier to S3 costs the loop, and how fast the uploads go.

Against moto's S3 server on 127.0.0.1, in a process of its own (as in
``object_store.py``), side by side, alternating, medians of ``--runs``:

* **loop blocking**: the time ``save`` takes, with ``replicate: {to: s3://...}`` against
  the same manager without it (a local-only save), each saving ``--size-mib`` of state
  to the local disk; the uploads run in the background. Target: within 1.1x.
* **upload throughput**: from the local commit to the replica's commit of the same
  checkpoint (``wait_for_replication``), in MiB/s of the state file, against s3fs
  ``put_file`` of a file of the same bytes to the same server. Target: at least 0.8x.

Run:

    python benchmarks/replication.py [--size-mib 256] [--runs 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import s3fs
import torch

import ckpt

sys.path.insert(0, str(Path(__file__).parent))
from object_store import _bucket, _server


def _config(local: Path, to: str | None, options: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "checkpoint_dir": str(local),
        "retention": {"kind": "latest_n", "n": 1},
    }
    if to is not None:
        config["replicate"] = {"to": to, "keep_local": 1, "storage_options": options}
    return config


def run(local: Path, to: str | None, options: dict[str, Any], state: Any) -> tuple[float, float]:
    """One save: (seconds the loop was blocked, seconds until the replica committed)."""
    shutil.rmtree(local, ignore_errors=True)
    with ckpt.CheckpointManager(_config(local, to, options)) as manager:
        began = time.perf_counter()
        manager.save(1, {"step": 1}, state)
        blocked = time.perf_counter() - began
        committed = time.perf_counter()
        assert manager.wait_for_replication(600)
        uploaded = time.perf_counter() - committed
    return blocked, uploaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    server, options = _server()
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="ckpt-replication-"))
    try:
        _bucket(options, "replica")
        fs = s3fs.S3FileSystem(**options)
        state = {"w": torch.randn(args.size_mib << 18)}
        nbytes = state["w"].numel() * 4
        plain_file = root / "plain.bin"
        plain_file.write_bytes(state["w"].numpy().tobytes())
        run(root / "warm", "s3://replica/warm", options, state)
        timings: dict[str, list[float]] = {"off": [], "on": [], "upload": [], "put_file": []}
        for i in range(args.runs):
            for key in ("off", "on") if i % 2 == 0 else ("on", "off"):
                to = f"s3://replica/run{i}" if key == "on" else None
                blocked, uploaded = run(root / key, to, options, state)
                timings[key].append(blocked)
                if key == "on":
                    timings["upload"].append(uploaded)
            began = time.perf_counter()
            fs.put_file(str(plain_file), f"replica/plain/{i}.bin")
            timings["put_file"].append(time.perf_counter() - began)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        assert server.stdin is not None
        server.stdin.close()
        server.wait(30)
    median = {key: statistics.median(values) for key, values in timings.items()}
    mib = nbytes / 2**20
    print(
        f"{mib:.0f} MiB, medians of {args.runs}: save blocks {median['on'] * 1e3:.0f} ms "
        f"replicated vs {median['off'] * 1e3:.0f} ms local-only "
        f"({median['on'] / median['off']:.2f}x); upload {mib / median['upload']:.0f} MiB/s "
        f"vs s3fs put_file {mib / median['put_file']:.0f} MiB/s "
        f"({median['put_file'] / median['upload']:.2f}x)"
    )


if __name__ == "__main__":
    main()
