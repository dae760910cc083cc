"""The S3 writer lease under attack: a paused writer, a taker, and clocks that disagree.

Every test here runs real processes against moto's S3 server on 127.0.0.1, through s3fs.

* A writer (``lease_job.py``) stops itself (SIGSTOP) right before each change its
  attacked call makes (the commit, the overwrite, every delete). This process takes
  the lease over, commits and names its best, and only then resumes the stopped
  writer: its call must raise `LeaseLostError`, and nothing the new writer can see may
  have changed.
* A second writer whose clock is an hour ahead of (or behind) the holder's is refused
  while the holder renews, and takes a dead holder's lease over only after watching it
  unchanged for a whole duration on its own clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt.storage import FsspecStorage

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # botocore's utcnow
]

JOB = Path(__file__).with_name("lease_job.py")
sys.path.insert(0, str(JOB.parent))
import lease_job as job  # noqa: E402

# The paths the attacked call of each scenario changes, in order (its recorded run).
POINTS = {"commit": 4, "overwrite": 3}


def _job(
    s3_server: Any, url: str, scenario: str, workdir: Path, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(JOB),
            url,
            json.dumps(s3_server.options()),
            scenario,
            "--result",
            str(workdir / "result.json"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _visible(s3_server: Any, bucket: str, manager: ckpt.CheckpointManager) -> dict[str, bytes]:
    """Every object of the checkpoints ``manager`` lists: manifests and their attempts."""
    keys = s3_server.keys(bucket)
    mine: dict[str, bytes] = {}
    for record in manager.list_checkpoints():
        name = str(record.path).rsplit("/", 1)[1]
        manifest = f"run/step_{record.step}.manifest.json"
        mine[manifest] = keys[manifest]
        mine.update({k: v for k, v in keys.items() if k.startswith(f"run/{name}/")})
    return mine


def test_a_recorded_run_changes_what_the_test_pauses_at(s3_server: Any, tmp_path: Path) -> None:
    """The pause points are every change of the attacked call (the list below tracks it)."""
    for scenario, count in POINTS.items():
        bucket = s3_server.new_bucket()
        work = tmp_path / scenario
        work.mkdir()
        proc = _job(s3_server, f"s3://{bucket}/run", scenario, work, "--record", str(work / "r"))
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        guarded = json.loads((work / "r").read_text())
        assert len(guarded) == count, guarded
        assert any(p.endswith(".manifest.json") for p in guarded)
        assert json.loads((work / "result.json").read_text())["raised"] is None


def _attack(s3_server: Any, tmp_path: Path, scenario: str, point: int) -> str:
    bucket = s3_server.new_bucket()
    url = f"s3://{bucket}/run"
    work = tmp_path / f"{scenario}-{point}"
    work.mkdir()
    marker = work / "marker"
    proc = _job(s3_server, url, scenario, work, "--pause-at", str(point), "--marker", str(marker))
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and _stopped(proc.pid)):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the writer never paused"
            time.sleep(0.05)
        paused_at = marker.read_text()
        # The stopped writer renews nothing: this manager takes the lease over.
        with ckpt.CheckpointManager(job.config(url, s3_server.options())) as taker:
            job.save(taker, 4, 0.1)
            taker.wait_until_finished()  # what it pruned is removed: the snapshot is still
            best = taker.get_best_checkpoint_path()
            assert best is not None
            before = _visible(s3_server, bucket, taker)
            steps = [r.step for r in taker.list_checkpoints()]
            os.kill(proc.pid, signal.SIGCONT)
            out, _ = proc.communicate(timeout=120)
            result = json.loads((work / "result.json").read_text())
            if ".manifest.json" in paused_at or "training_info" in paused_at:
                assert result["raised"] == "LeaseLostError", (paused_at, result, out)
            else:
                # A removal, on the reaper's thread: fenced there (and logged), or the
                # writer's next request finds the lease lost. What it removes no manifest
                # names; the check below is what matters: nothing the new writer sees changed.
                assert result["raised"] in (None, "LeaseLostError"), (paused_at, result, out)
            # Nothing the new writer committed changed, and its best is still there.
            assert _visible(s3_server, bucket, taker) == before, paused_at
            with ckpt.CheckpointManager(
                job.config(url, s3_server.options()), read_only=True
            ) as reader:
                assert [r.step for r in reader.list_checkpoints()] == steps
                assert reader.get_best_checkpoint_path() == best
                assert not ckpt.verify(url, storage_options=s3_server.options()).errors
        return paused_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_writer_paused_before_any_change_changes_nothing_after_a_takeover(
    s3_server: Any, tmp_path: Path
) -> None:
    cases = [(scenario, point) for scenario, count in POINTS.items() for point in range(count)]
    with ThreadPoolExecutor(2) as pool:
        paused = list(pool.map(lambda case: _attack(s3_server, tmp_path, *case), cases))
    # The pauses fell on the commit or overwrite, and on every delete.
    assert any(p.endswith("step_3.manifest.json") for p in paused)
    assert any(p.endswith("step_2.manifest.json") for p in paused)
    assert sum(".manifest.json" not in p and "training_info" not in p for p in paused) == 2


SKEWED_WRITER = textwrap.dedent(
    """
    import json, sys, time
    skew = float(sys.argv[3])
    real = time.time
    time.time = lambda: real() + skew
    import ckpt
    config = {"checkpoint_dir": sys.argv[1], "storage_options": json.loads(sys.argv[2]),
              "lease_seconds": float(sys.argv[4])}
    start = time.monotonic()
    try:
        with ckpt.CheckpointManager(config):
            print(json.dumps({"took": True, "after": time.monotonic() - start}))
    except ckpt.CheckpointDirLockedError:
        print(json.dumps({"took": False, "after": time.monotonic() - start}))
    """
)


def _skewed(s3_server: Any, url: str, skew: float, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SKEWED_WRITER,
            url,
            json.dumps(s3_server.options()),
            str(skew),
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


HOLDER = textwrap.dedent(
    """
    import json, sys, time
    import ckpt
    config = {"checkpoint_dir": sys.argv[1], "storage_options": json.loads(sys.argv[2]),
              "lease_seconds": float(sys.argv[3])}
    manager = ckpt.CheckpointManager(config)
    print("held", flush=True)
    sys.stdin.readline()  # renewing meanwhile
    manager.close()
    print("closed", flush=True)
    """
)


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
def test_a_writer_with_a_skewed_clock_neither_evicts_a_live_one_nor_waits_past_a_dead_one(
    s3_server: Any, skew: float
) -> None:
    seconds = 3.0
    url = f"s3://{s3_server.new_bucket()}/run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, json.dumps(s3_server.options()), str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        refused = _skewed(s3_server, url, skew, seconds)
        # It watched the live lease being renewed: refused, within one duration.
        assert refused["took"] is False
        assert refused["after"] < seconds + 2
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "closed"  # the holder never lost it
    finally:
        holder.kill()
        holder.communicate()
    # A holder killed without releasing: taken over after a whole duration, not before.
    dead = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, json.dumps(s3_server.options()), str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert dead.stdout is not None
    assert dead.stdout.readline().strip() == "held"
    dead.kill()
    dead.communicate()
    took = _skewed(s3_server, url, skew, seconds)
    assert took["took"] is True
    assert seconds <= took["after"] < seconds + 3


def test_a_change_with_little_lease_left_renews_first_and_one_taken_over_changes_nothing(
    s3_server: Any,
) -> None:
    """`guard` wants a third of the lease left: it renews on the spot, or refuses."""
    from ckpt.storage import open_storage

    url = f"s3://{s3_server.new_bucket()}/run"
    storage, location = open_storage(url, s3_server.options())
    assert isinstance(storage, FsspecStorage)
    storage.lease_seconds = 30.0  # no background renewal falls inside the test
    lock = f"{location}/.ckpt/lock"
    lease = storage.lock(lock)
    try:
        before = storage.entry(lock)
        lease._renewed -= 25.0  # as if the last renewal were 25 s old: 5 s left
        storage.write_bytes(f"{location}/a", b"a")
        after = storage.entry(lock)
        assert before is not None
        assert after is not None
        assert after.version != before.version  # renewed before the write went out
        assert storage.entry(f"{location}/a") is not None
        # Another writer replaces the lease; with little left, the renewal finds out.
        assert storage.replace_if(lock, b'{"format": 1, "owner": "b"}\n', after.version)
        lease._renewed -= 25.0
        with pytest.raises(ckpt.LeaseLostError, match="another writer took it over"):
            storage.write_bytes(f"{location}/b", b"b")
        with pytest.raises(ckpt.LeaseLostError):
            storage.remove_file(f"{location}/a")
        assert storage.entry(f"{location}/b") is None
        assert storage.entry(f"{location}/a") is not None
    finally:
        lease.release()


def test_a_manifest_replaced_since_it_was_indexed_is_not_deleted(s3_server: Any) -> None:
    """The delete carries ``If-Match``: S3 itself refuses a late or stale delete."""
    url = f"s3://{s3_server.new_bucket()}/run"
    config = {**job.config(url, s3_server.options()), "keep_top_k": None}
    with ckpt.CheckpointManager(config) as manager:
        job.save(manager, 1, 0.5)
        (record,) = manager.list_checkpoints()
        indexed = manager._dir.shared.index.committed[1]  # what this writer would delete
    from ckpt.commit import Place
    from ckpt.commit.manifest import delete_manifest_checkpoint
    from ckpt.storage import open_storage

    storage, location = open_storage(url, s3_server.options())
    manifest = f"{location}/step_1.manifest.json"
    storage.replace_file(manifest, storage.read_bytes(manifest) + b" ", durable=False)
    with pytest.raises(ckpt.CommitConflictError, match="changed since this writer indexed"):
        delete_manifest_checkpoint(Place(storage, location, durable=False), indexed)
    assert storage.entry(manifest) is not None
    assert storage.list_dir(str(record.path))  # nor was its attempt touched
