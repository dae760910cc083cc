"""SIGKILL a real training job on S3 right before one of its requests, restart it, check.

The job (``kill_s3_job.py``) runs in its own process against moto's S3 server on
127.0.0.1, through s3fs: six saves with a Hybrid top-2 manager, one overwrite, three
prunes, each save's payload a three-part multipart upload. A fault-free run records
every request it makes (111). Then, for each kill point, a fresh bucket gets a job
killed right before that request, and a restarted job that must finish the run:

* right after the kill, a reader lists only complete checkpoints, each byte-identical
  to a version the job wrote for that step, and the newest save whose
  ``finalize_checkpoint`` had returned is there, unless the save after it committed too;
* the dead job's lease is taken over the real way (a restart with a 1 s lease watches
  it unchanged for 1 s, as a 60 s one would for 60 s), and it resumes and finishes:
  exactly the steps Hybrid top-2 keeps, each byte-identical to the last version
  written, no other object under the prefix but ckpt's own
  (``attempt_grace_seconds: 0``: recovery removes every leftover attempt at once), and
  ``ckpt.verify`` finds nothing wrong.

Every request that changes the bucket (puts, part uploads' creation and completion,
deletes) is a kill point; of the rest (listings, heads, gets, part uploads), every tenth
is, as in the replica's kill test: a kill before a request that changes nothing leaves
what the kill before the change that follows it leaves. Set
``CKPT_KILL_EXHAUSTIVE=1`` to kill at every request.
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

JOB = Path(__file__).with_name("kill_s3_job.py")
sys.path.insert(0, str(JOB.parent))
import kill_s3_job as job  # noqa: E402

CHANGES = {
    "put_object",
    "create_multipart_upload",
    "complete_multipart_upload",
    "delete_object",
    "delete_objects",
}


def _run(s3_server: Any, url: str, workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(JOB),
            url,
            json.dumps(s3_server.options()),
            "--log",
            str(workdir / "log"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _committed_events(workdir: Path) -> list[int]:
    log = workdir / "log"
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _listing(s3_server: Any, bucket: str) -> dict[int, int]:
    """Step -> event of each checkpoint a reader sees, each checked byte for byte."""
    keys = s3_server.keys(bucket)
    url = f"s3://{bucket}/run"
    found: dict[int, int] = {}
    with ckpt.CheckpointManager(job.config(url, s3_server.options()), read_only=True) as reader:
        for record in reader.list_checkpoints():
            event = record.info["event"]
            assert job.EVENTS[event][0] == record.step
            prefix = f"run/{record.path.name}/"
            files = {k.removeprefix(prefix): v for k, v in keys.items() if k.startswith(prefix)}
            assert files.pop("rng.txt") == job.small(event)
            assert files.pop("weights.bin") == job.payload(event)
            assert json.loads(files.pop("training_info.json"))["event"] == event
            assert files == {}
            found[record.step] = event
    return found


def _check_finished(s3_server: Any, bucket: str) -> None:
    expected = job.expected_final()
    assert _listing(s3_server, bucket) == expected
    keys = set(s3_server.keys(bucket))
    ours = {"run/.ckpt/lock", "run/.ckpt/catalog.json", "run/.ckpt/ranking.json"}
    checkpoints = keys - ours
    assert len(checkpoints) == 4 * len(expected), sorted(checkpoints)  # 3 files + manifest
    assert {k for k in keys if k.endswith(".manifest.json")} == {
        f"run/step_{step}.manifest.json" for step in expected
    }
    url = f"s3://{bucket}/run"
    report = ckpt.verify(url, job.config(url, s3_server.options()))
    assert report.problems == ()


def _kill_points(made: list[str]) -> list[int]:
    if os.environ.get("CKPT_KILL_EXHAUSTIVE"):
        return list(range(len(made)))
    return [i for i, method in enumerate(made) if method in CHANGES or i % 10 == 0]


def test_killed_before_each_request_the_restarted_job_finishes_the_run(
    s3_server: Any, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    clean = tmp_path / "clean"
    clean.mkdir()
    done = _run(s3_server, f"s3://{bucket}/run", clean, "--record", str(clean / "requests.json"))
    assert done.returncode == 0, done.stderr
    made: list[str] = json.loads((clean / "requests.json").read_text())
    assert Counter(made)["complete_multipart_upload"] == len(job.EVENTS)
    _check_finished(s3_server, bucket)

    def one(point: int) -> str:
        bucket = s3_server.new_bucket()
        url = f"s3://{bucket}/run"
        workdir = tmp_path / f"kill-{point}"
        workdir.mkdir()
        killed = _run(
            s3_server, url, workdir, "--kill-at", str(point), "--marker", str(workdir / "at")
        )
        assert killed.returncode == -9, (point, killed.stderr)
        assert (workdir / "at").read_text() == made[point]
        seen = _listing(s3_server, bucket)
        committed = _committed_events(workdir)
        if committed:
            newest = committed[-1]
            # It is there, or the save after it committed too (and its prune may have
            # dropped it).
            after = newest + 1
            next_committed = after < len(job.EVENTS) and seen.get(job.EVENTS[after][0]) == after
            assert next_committed or seen.get(job.EVENTS[newest][0]) == newest, (point, seen)
        # The dead job's lease is taken over for real: watched unchanged for 1 s.
        restarted = _run(s3_server, url, workdir, "--lease-seconds", "1")
        assert restarted.returncode == 0, (point, restarted.stderr)
        _check_finished(s3_server, bucket)
        return made[point]

    points = _kill_points(made)
    began = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        killed_before = Counter(pool.map(one, points))
    print(
        f"\nS3 kill test: {len(points)} of {len(made)} requests killed before, all recovered "
        f"({dict(killed_before)}) in {time.monotonic() - began:.0f} s"
    )
