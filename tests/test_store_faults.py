"""Store faults: an outage, a black hole or a cut connection between a real job and S3.

A fault-injecting proxy (`faultproxy.FaultProxy`) sits between the job's s3fs and
moto's server on 127.0.0.1. Each scenario starts a fault for a set time right as the
job starts an operation: refused connections for 2 s, connections cut mid-transfer for
half the lease and a black hole for twice the lease (``lease_seconds: 4``), during a
save that prunes, a commit, a lease renewal, an upload and a fetch-back, for a run on
``s3://`` and for a run replicated to it; and a replica down when the run starts.

What must hold: an outage shorter than the lease costs time and a warning, never an
error; a longer one may fail the operation it meets, always with a ckpt error (never
botocore's or aiohttp's), and the next operation once the store answers succeeds (the
lease is re-taken, uploads catch up), unless another writer took the directory over
meanwhile, which the next change reports as a lost lease. Nothing waits without a
bound, and what the store holds afterwards is only whole, verified checkpoints.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, Mode

import ckpt

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.torch,
    pytest.mark.subprocess,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # botocore's utcnow
]

LEASE = 4.0
# (fault, seconds, shorter than the lease)
OUTAGES: list[tuple[Mode, float, bool]] = [
    ("refuse", 2.0, True),
    ("cut", LEASE / 2, True),
    ("stall", 2 * LEASE, False),
]
JOB = Path(__file__).with_name("store_fault_job.py")
ANSWER_S = 120.0  # no operation of the job may take longer: a hang fails the test


class Job:
    """The job process; every answer is awaited for at most `ANSWER_S`."""

    def __init__(self, config: dict[str, Any]) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.process = subprocess.Popen(
            [sys.executable, str(JOB), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.pumps = [
            threading.Thread(target=self._pump, args=(stream, answers), daemon=True)
            for stream, answers in ((self.process.stdout, True), (self.process.stderr, False))
        ]
        for pump in self.pumps:
            pump.start()
        assert self._answer() == {"ready": True}

    def _pump(self, stream: Any, answers: bool) -> None:
        with stream:
            for line in stream:
                (self.lines.put if answers else self.stderr.append)(line)

    def _answer(self) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=ANSWER_S)
        except queue.Empty:
            self.process.kill()
            self.process.wait()
            assert self.process.stdin is not None
            self.process.stdin.close()
            pytest.fail(f"the job did not answer in {ANSWER_S} s: {''.join(self.stderr)[-3000:]}")
        return dict(json.loads(line))

    def do(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def ok(self, op: str, **args: Any) -> Any:
        answer = self.do(op, **args)
        assert answer["ok"], (op, answer, "".join(self.stderr)[-3000:])
        return answer["value"]

    def close(self) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
        self.process.stdin.flush()
        assert self._answer() == {"closed": True}
        self.process.wait(timeout=ANSWER_S)
        self.process.stdin.close()
        for pump in self.pumps:
            pump.join(ANSWER_S)
        assert self.process.returncode == 0, "".join(self.stderr)[-3000:]
        return "".join(self.stderr)


@pytest.fixture
def proxy(s3_server: Any) -> Iterator[FaultProxy]:
    found = FaultProxy(s3_server.endpoint)
    yield found
    found.close()


def _options(endpoint: str) -> dict[str, Any]:
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        # Each try of a request gives up soon: the outages here are seconds long.
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 2}},
    }


def _check_failure(answer: dict[str, Any], short: bool, what: str) -> None:
    """An operation that met a fault: fine if shorter than the lease; else a ckpt error."""
    if answer["ok"]:
        return
    assert not short, f"{what}: an outage shorter than the lease failed it: {answer}"
    assert answer["ckpt"], f"{what}: not a ckpt error: {answer}"


def _no_thread_died(log: str) -> None:
    # aiohttp logs a reset connection's write task through asyncio ("Task exception was
    # never retrieved"): its own noise. A thread of ckpt's that died is what matters.
    assert "Exception in thread" not in log, log[-3000:]


def _whole(url: str, options: dict[str, Any]) -> list[int]:
    """The steps of ``url``, each deep-checked whole (a reader, straight to the server)."""
    report = ckpt.verify(
        url, ckpt.CheckpointConfig(checkpoint_dir=url, storage_options=options), deep=True
    )
    assert [p for p in report.problems if p.severity == "error"] == [], report.problems
    with ckpt.CheckpointManager(
        {"checkpoint_dir": url, "storage_options": options}, read_only=True
    ) as reader:
        return [r.step for r in reader.list_checkpoints()]


@pytest.mark.parametrize("op", ["save", "commit", "renewal"])
def test_a_run_on_s3_rides_out_outages(op: str, s3_server: Any, proxy: FaultProxy) -> None:
    url = f"s3://{s3_server.new_bucket()}/run"
    job = Job(
        {
            "checkpoint_dir": url,
            "storage_options": _options(proxy.endpoint),
            "lease_seconds": LEASE,
            "retention": {"kind": "latest_n", "n": 2},  # every save from the third prunes
        }
    )
    saved = []
    for step in (1, 2):
        job.ok("save", step=step)
        saved.append(step)
    step = 2
    for mode, seconds, short in OUTAGES:
        step += 1
        what = f"{mode} for {seconds:g} s during a {op}"
        if op == "renewal":
            proxy.fault(mode, seconds)
            job.ok("idle", seconds=seconds + 0.5)
        else:
            if op == "commit":
                job.ok("begin", step=step)
            proxy.fault(mode, seconds)
            answer = job.do(op, step=step)
            _check_failure(answer, short, what)
            saved += [step] if answer["ok"] else []
        proxy.wait_passing()
        step += 1
        job.ok("save", step=step)  # the store answers again: the lease holds or is re-taken
        saved.append(step)
        assert job.ok("steps") == saved[-2:]
    _no_thread_died(job.close())
    assert _whole(url, _options(s3_server.endpoint)) == saved[-2:]
    assert proxy.connections > 0


def test_a_lease_taken_over_during_an_outage_is_lost_for_good(
    s3_server: Any, proxy: FaultProxy
) -> None:
    url = f"s3://{s3_server.new_bucket()}/run"
    job = Job(
        {"checkpoint_dir": url, "storage_options": _options(proxy.endpoint), "lease_seconds": LEASE}
    )
    job.ok("save", step=1)
    proxy.fault("refuse")  # the job's store is away; another writer reaches it directly
    with pytest.warns(ckpt.LeaseWaitWarning):
        other = ckpt.CheckpointManager(
            {
                "checkpoint_dir": url,
                "storage_options": _options(s3_server.endpoint),
                "lease_seconds": LEASE,
            }
        )
    other.save(2, {"step": 2}, {"w": torch.zeros(3)})
    proxy.fault("pass")
    answer = job.do("save", step=3)
    assert not answer["ok"], answer
    assert answer["type"] == "LeaseLostError", answer
    assert "is lost: another writer took it over" in answer["message"]
    other.close()
    job.close()
    assert _whole(url, _options(s3_server.endpoint)) == [1, 2]


def _replicated(tmp_path: Path, to: str, proxy: FaultProxy) -> dict[str, Any]:
    """A run on a local disk replicated to ``to`` through the proxy; keep_local 1."""
    return {
        "checkpoint_dir": str(tmp_path / "local"),
        "fsync": False,
        "lease_seconds": LEASE,
        "replicate": {"to": to, "keep_local": 1, "storage_options": _options(proxy.endpoint)},
    }


@pytest.mark.parametrize(("mode", "seconds", "short"), OUTAGES)
def test_a_replicated_run_saves_locally_through_outages_and_catches_up(
    mode: Mode, seconds: float, short: bool, tmp_path: Path, s3_server: Any, proxy: FaultProxy
) -> None:
    to = f"s3://{s3_server.new_bucket()}/replica"
    config = _replicated(tmp_path, to, proxy)
    config["retention"] = {"kind": "latest_n", "n": 2}  # the upload of step 3 prunes there
    job = Job(config)
    job.ok("save", step=1)
    assert job.ok("replicated", seconds=60) is True
    proxy.fault(mode, seconds)  # uploads meet it; local saves never wait on it
    job.ok("save", step=2)
    job.ok("save", step=3)
    proxy.wait_passing()
    assert job.ok("replicated", seconds=90) is True
    _no_thread_died(job.close())
    assert _whole(to, _options(s3_server.endpoint)) == [2, 3]
    # The local disk is lost; a new job fetches the newest step back through a fault.
    shutil.rmtree(tmp_path / "local")
    job = Job(config)
    proxy.fault(mode, seconds)
    answer = job.do("latest")
    _check_failure(answer, short, f"{mode} for {seconds:g} s during a fetch-back")
    proxy.wait_passing()
    latest = job.ok("latest")
    assert latest is not None
    assert latest.endswith("step_3")
    job.close()
    assert _whole(str(tmp_path / "local"), {}) == [3]


def test_a_replicated_run_starts_and_saves_while_its_replica_is_down(
    tmp_path: Path, s3_server: Any, proxy: FaultProxy
) -> None:
    to = f"s3://{s3_server.new_bucket()}/replica"
    config = _replicated(tmp_path, to, proxy)
    proxy.fault("refuse")
    job = Job(config)  # opening does not wait for the replica longer than the store's retries
    job.ok("save", step=1)
    job.ok("save", step=2)
    assert job.ok("replicated", seconds=1) is False
    assert job.ok("steps") == [1, 2]  # both held locally: neither is uploaded
    proxy.fault("pass")
    assert job.ok("replicated", seconds=90) is True
    log = job.close()
    _no_thread_died(log)
    assert "step(s) [1] wait in the local tier" in log  # said at each save, not silent
    assert "step(s) [1, 2] wait in the local tier" in log
    assert _whole(to, _options(s3_server.endpoint)) == [1, 2]


def test_a_run_on_an_unreachable_store_gets_a_ckpt_error_naming_it(proxy: FaultProxy) -> None:
    proxy.fault("refuse")
    options = {**_options(proxy.endpoint), "secret": "hunter2"}
    started = time.monotonic()
    with pytest.raises(ckpt.StoreUnavailableError) as caught:
        ckpt.CheckpointManager(
            {"checkpoint_dir": "s3://somewhere/run", "storage_options": options, "lease_seconds": 2}
        )
    assert time.monotonic() - started < 60
    assert "s3://somewhere/run" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert isinstance(caught.value, ConnectionError)
