"""Checkpoints on S3: per-save overhead and cold start as history grows, and state bandwidth.

It starts moto's S3 server on 127.0.0.1 (as the tests do, but in a process of its own)
and reaches it through s3fs, so every figure is of real HTTP requests to a real (local,
Python) S3 server. For
N = 10 and 1,000 committed checkpoints already under the prefix (both populated
first, then measured side by side: saves interleaved, cold starts in rounds) it
measures:

* the median wall time of one save: ``init_tmp_checkpoint``, one small file written
  through the returned ``UPath``, ``finalize_checkpoint`` (keep-all retention, so the
  history really grows), and the ratio of the two;
* a cold start: a new writer on the prefix (lease, recovery, one listing, the catalog),
  then best and latest; the first one, which finds no catalog (the prefix was filled
  by ckpt's commit protocol directly) and reads every manifest, is shown apart;

and for ``--state-mib`` (default 1,024) of tensors:

* ``ckpt.torch.save_state`` to the server against a plain s3fs ``put_file`` of a file
  holding the same bytes, interleaved, median throughput of each and their ratio;
* the peak of the process's resident memory above what it held before the save
  (sampled every 5 ms), against the state's size.

Run:

    python benchmarks/object_store.py [--sizes 10 1000] [--repeats 30] [--state-mib 1024]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import boto3
import s3fs
import torch

from ckpt import CheckpointManager
from ckpt.commit import ManifestProtocol, Place
from ckpt.storage import join, open_storage
from ckpt.torch import save_state

_SERVE = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("endpoint http://%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()  # until the benchmark ends
"""


def _server() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    # A process of its own: the objects it holds must not count as the client's memory.
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    line = ""
    while not line.startswith("endpoint "):
        line = server.stdout.readline()
        if not line:
            raise RuntimeError("the S3 server did not start")
    endpoint = line.split()[1]
    options = {
        "key": "bench",
        "secret": "bench",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    return server, options


def _bucket(options: dict[str, Any], name: str) -> None:
    boto3.client(
        "s3",
        endpoint_url=options["client_kwargs"]["endpoint_url"],
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    ).create_bucket(Bucket=name)


def _populate(url: str, options: dict[str, Any], count: int) -> None:
    """``count`` committed checkpoints, written by ckpt's own manifest protocol."""
    storage, location = open_storage(url, options)
    place = Place(storage, location, durable=True)
    protocol = ManifestProtocol()

    def one(step: int) -> None:
        attempt = protocol.prepare(place, step)
        storage.write_bytes(join(attempt, "training_info.json"), b'{"loss": %f}' % (1 / (step + 1)))
        storage.write_bytes(join(attempt, "weights.bin"), b"w" * 64)
        protocol.commit(place, attempt, step, existing=None)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def _config(url: str, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "checkpoint_dir": url,
        "storage_options": options,
        "metric_name": "loss",
        "higher_is_better": False,
    }


def _history(options: dict[str, Any], sizes: list[int], repeats: int) -> None:
    urls = {}
    for size in sizes:
        bucket = f"history-{size}"
        _bucket(options, bucket)
        urls[size] = f"s3://{bucket}/run"
        began = time.perf_counter()
        _populate(urls[size], options, size)
        print(f"N={size}: populated in {time.perf_counter() - began:.1f} s")
    first = {size: _cold_start(url, options) for size, url in urls.items()}  # saves catalogs
    cold: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(3):  # side by side: each round starts every size once
        for size, url in urls.items():
            cold[size].append(_cold_start(url, options))
    managers = {size: CheckpointManager(_config(url, options)) for size, url in urls.items()}
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for i in range(repeats):  # interleaved, so that every size sees the same noise
        for size, manager in managers.items():
            began = time.perf_counter()
            path = manager.init_tmp_checkpoint(size + i, {"loss": 1.0})
            with (path / "weights.bin").open("wb") as f:
                f.write(b"w" * 64)
            manager.finalize_checkpoint(path)
            times[size].append(time.perf_counter() - began)
    for manager in managers.values():
        manager.close()
    base = statistics.median(times[sizes[0]])
    for size in sizes:
        median = statistics.median(times[size])
        print(
            f"N={size}: save median {median * 1e3:.1f} ms ({median / base:.2f}x N={sizes[0]}; "
            f"min {min(times[size]) * 1e3:.1f}, max {max(times[size]) * 1e3:.1f}); "
            f"cold start (open, best, latest) {statistics.median(cold[size]):.2f} s "
            f"(median of 3; {first[size]:.2f} s the first time, without a catalog)"
        )


def _cold_start(url: str, options: dict[str, Any]) -> float:
    began = time.perf_counter()
    with CheckpointManager(_config(url, options)) as manager:
        best = manager.get_best_checkpoint_path()
        latest = manager.get_latest_checkpoint_path()
        took = time.perf_counter() - began
    assert best is not None
    assert latest is not None
    return took


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Peak:
    def __init__(self) -> None:
        self.base = _rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _bandwidth(options: dict[str, Any], mib: int, rounds: int) -> None:
    _bucket(options, "bandwidth")
    fs = s3fs.S3FileSystem(**options)
    storage, location = open_storage("s3://bandwidth/run", options)
    state = {f"layer{i}": torch.randn(mib << 16) for i in range(4)}  # 4 tensors of mib/4 MiB
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        for tensor in state.values():
            f.write(tensor.numpy().tobytes())
        f.flush()
        ours, plain, peaks = [], [], []
        for i in range(rounds):
            began = time.perf_counter()
            fs.put_file(f.name, f"bandwidth/plain/{i}.bin")
            plain.append(nbytes / (time.perf_counter() - began))
            directory = join(location, f"ours-{i}")
            with _Peak() as peak:
                began = time.perf_counter()
                save_state(directory_marker(storage, directory), state, storage=storage)
                ours.append(nbytes / (time.perf_counter() - began))
            peaks.append(peak.peak - peak.base)
    mbps = statistics.median(ours) / 2**20
    base = statistics.median(plain) / 2**20
    print(
        f"state {nbytes / 2**20:.0f} MiB: save_state {mbps:.0f} MiB/s, s3fs put_file "
        f"{base:.0f} MiB/s (median of {rounds}, interleaved): ratio {mbps / base:.2f}; "
        f"peak extra memory {max(peaks) / 2**20:.0f} MiB "
        f"({100 * max(peaks) / nbytes:.1f}% of the state)"
    )


def directory_marker(storage: Any, directory: str) -> str:
    """A prefix exists once an object is under it: give save_state one to write into."""
    storage.write_bytes(join(directory, "training_info.json"), b"{}")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--state-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-history", action="store_true")
    parser.add_argument("--skip-bandwidth", action="store_true")
    args = parser.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs")
    server, options = _server()
    try:
        if not args.skip_history:
            _history(options, args.sizes, args.repeats)
        if not args.skip_bandwidth:
            _bandwidth(options, args.state_mib, args.rounds)
    finally:
        server.communicate(timeout=30)


if __name__ == "__main__":
    main()
