"""SIGKILL a job whose local tier is replicated to S3, right before one of its requests.

The job (``kill_replica_job.py``) saves four steps into a local directory replicated to
moto's S3 server (``keep_local: 1``, ``latest_n: 2``): every request to S3 is the
replicator's (its uploads and commits) or the replica's writer's (lease, recovery,
prunes). A fault-free run records them; then, for each kill point, a fresh local
directory and bucket get a job killed right before that request, and a restarted job
must finish the run:

* right after the kill, each tier lists only whole checkpoints, byte for byte the
  step's, and the newest step whose ``finalize_checkpoint`` returned is in one of the
  two tiers: a local checkpoint leaves only once its replica is committed;
* the restart (taking the dead job's replica lease over, watched unchanged for 1 s)
  uploads what the dead job had not, and ends with the replica holding exactly steps 3
  and 4, the local tier step 4, every step replicated, and ``ckpt.verify`` finding
  nothing wrong in either tier, deep.

Every request that changes the bucket is a kill point; of the rest (listings, heads,
gets), every tenth.
``CKPT_KILL_EXHAUSTIVE=1`` kills at every request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import ckpt

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.kill,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # botocore's utcnow
]

JOB = Path(__file__).with_name("kill_replica_job.py")
sys.path.insert(0, str(JOB.parent))
import kill_replica_job as job  # noqa: E402
from test_kill_s3 import CHANGES  # noqa: E402


def _run(s3_server: Any, local: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(JOB),
            str(local),
            url,
            json.dumps(s3_server.options()),
            "--log",
            str(local.parent / "log"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _tier(directory: str, options: dict[str, Any] | None) -> dict[int, bytes]:
    """Step -> weights of each checkpoint a reader of one tier sees, checked byte for byte."""
    found: dict[int, bytes] = {}
    config = {"checkpoint_dir": directory, "storage_options": options}
    with ckpt.CheckpointManager(config, read_only=True) as reader:
        for record in reader.list_checkpoints():
            step = record.step
            assert record.info == {"step": step}
            assert (record.path / "rng.txt").read_bytes() == job.small(step)
            weights = (record.path / "weights.bin").read_bytes()
            assert weights == job.payload(step), step
            found[step] = weights
    return found


def _check_finished(s3_server: Any, local: Path, url: str) -> None:
    options = s3_server.options()
    assert sorted(_tier(url, options)) == [3, 4]
    assert sorted(_tier(str(local), None)) == [4]
    record = json.loads((local / ".ckpt" / "replication.json").read_text())
    assert sorted(record["replicated"]) == ["4"]
    assert ckpt.verify(url, storage_options=options, deep=True).problems == ()
    assert ckpt.verify(local, deep=True).problems == ()


def test_killed_before_each_replica_request_the_restarted_job_finishes(
    s3_server: Any, tmp_path: Path
) -> None:
    clean = tmp_path / "clean"
    clean.mkdir()
    url = f"s3://{s3_server.new_bucket()}/run"
    done = _run(s3_server, clean / "local", url, "--record", str(clean / "requests.json"))
    assert done.returncode == 0, done.stderr
    made: list[str] = json.loads((clean / "requests.json").read_text())
    # Each step's three files and its manifest, one PUT each (under a part's size).
    assert Counter(made)["put_object"] >= 4 * len(job.STEPS)
    _check_finished(s3_server, clean / "local", url)

    def one(point: int) -> str:
        workdir = tmp_path / f"kill-{point}"
        workdir.mkdir()
        local, url = workdir / "local", f"s3://{s3_server.new_bucket()}/run"
        killed = _run(
            s3_server, local, url, "--kill-at", str(point), "--marker", str(workdir / "at")
        )
        assert killed.returncode == -9, (point, killed.stderr)
        remote = _tier(url, s3_server.options())
        here = _tier(str(local), None) if local.exists() else {}
        log = workdir / "log"
        committed = [int(line) for line in log.read_text().split()] if log.exists() else []
        if committed:
            assert committed[-1] in here.keys() | remote.keys(), (point, here, remote)
        restarted = _run(s3_server, local, url, "--lease-seconds", "1")
        assert restarted.returncode == 0, (point, restarted.stderr)
        _check_finished(s3_server, local, url)
        return (workdir / "at").read_text()

    if os.environ.get("CKPT_KILL_EXHAUSTIVE"):
        points = list(range(len(made)))
    else:
        points = [i for i, method in enumerate(made) if method in CHANGES or i % 10 == 0]
    began = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        killed_before = Counter(pool.map(one, points))
    print(
        f"\nreplica kill test: {len(points)} of {len(made)} requests killed before, all "
        f"recovered ({dict(killed_before)}) in {time.monotonic() - began:.0f} s"
    )
