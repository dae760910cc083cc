"""Preemption: a signal sets ``preempted`` at the next step boundary, and the save made
there (or, when none comes in time, the newest snapshot) is committed within the grace.

The signals are real: ``os.kill`` to this process for the in-process tests (the handler
runs on the main thread, as in a job), and SIGTERM from outside to a real job at random
moments in ``test_a_job_signalled_at_random_moments_stops_saved``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import torch
from pydantic import ValidationError

import ckpt
from ckpt.cli import main as cli_main
from ckpt.torch import TorchHandler, load_state
from tests.ranks import run_ranks

pytestmark = pytest.mark.torch

JOB = Path(__file__).with_name("preempt_job.py")
Manager = Callable[..., ckpt.CheckpointManager]


@pytest.fixture
def term_handler() -> Iterator[list[int]]:
    """A SIGTERM handler of the test's own, installed before ckpt's; restored after."""
    received: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGTERM, before)


def _preemptible(make_manager: Manager, grace_s: float = 30.0, **config: Any) -> Any:
    config.setdefault("save_period", 5)
    return make_manager(preemption_signals=["SIGTERM"], preemption_grace_s=grace_s, **config)


def _record(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / ".ckpt" / "preemption.json").read_text())
    return data


# --- the config ---------------------------------------------------------------------------


def test_signal_names_are_normalised_and_checked(tmp_path: Path) -> None:
    config = ckpt.CheckpointConfig(
        checkpoint_dir=tmp_path, preemption_signals=["term", "SIGUSR1", "SIGTERM"]
    )
    assert config.preemption_signals == ["SIGTERM", "SIGUSR1"]
    assert ckpt.CheckpointConfig(checkpoint_dir=tmp_path).preemption_signals == []
    for bad, why in (("SIGKILL", "cannot be caught"), ("SIGNOPE", "not a signal"), (15, "not a")):
        with pytest.raises(ValidationError) as error:
            ckpt.CheckpointConfig(checkpoint_dir=tmp_path, preemption_signals=[bad])
        message = str(error.value)
        assert "`preemption_signals`" in message
        assert why in message
        assert repr(bad) in message
    with pytest.raises(ValidationError, match="`preemption_grace_s` must be a number > 0"):
        ckpt.CheckpointConfig(checkpoint_dir=tmp_path, preemption_grace_s=0)


# --- at a step boundary -------------------------------------------------------------------


def test_a_signal_saves_at_the_next_boundary_and_chains(
    make_manager: Manager, ckpt_dir: Path, term_handler: list[int]
) -> None:
    manager = _preemptible(make_manager)
    state = {"w": torch.zeros(8)}
    assert not manager.preempted
    assert not manager.should_save(3)  # off the period
    os.kill(os.getpid(), signal.SIGTERM)
    assert term_handler == [signal.SIGTERM]  # the handler that was there still runs
    # The signal is seen at the boundary, not before: between two calls nothing changes.
    assert not manager.preempted
    assert manager.should_save(3)  # off the period, but preempted
    assert manager.preempted
    assert manager.should_save(3)  # asked again before saving: still yes
    state["w"].fill_(3.0)
    manager.save_async(3, {"step": 3}, state)
    # The save made for the preemption is committed when save_async returns.
    assert manager.get_latest_checkpoint_path() == str(ckpt_dir / "step_3")
    assert bool((load_state(ckpt_dir / "step_3")["w"] == 3.0).all())
    record = _record(ckpt_dir)
    assert record["signal"] == "SIGTERM"
    assert record["step"] == 3
    assert record["emergency"] is False
    assert record["skipped"] == []
    assert 0 <= record["saved_after_s"] < 30
    # Once that save is made, the period rules again.
    assert not manager.should_save(4)
    assert manager.should_save(5)
    assert manager.preempted


def test_handlers_are_installed_once_and_put_back(
    make_manager: Manager, tmp_path: Path, term_handler: list[int]
) -> None:
    ours = signal.getsignal(signal.SIGTERM)
    first = _preemptible(make_manager, checkpoint_dir=str(tmp_path / "a"))
    installed = signal.getsignal(signal.SIGTERM)
    assert installed is not ours
    second = _preemptible(make_manager, checkpoint_dir=str(tmp_path / "b"))
    assert signal.getsignal(signal.SIGTERM) is installed  # not wrapped twice
    os.kill(os.getpid(), signal.SIGTERM)
    assert term_handler == [signal.SIGTERM]  # once, not once per manager
    assert first.should_save(1)
    assert second.should_save(1)
    first.close()
    assert signal.getsignal(signal.SIGTERM) is installed  # the second still listens
    second.close()
    assert signal.getsignal(signal.SIGTERM) is ours


def test_only_the_main_thread_installs(make_manager: Manager, ckpt_dir: Path) -> None:
    errors: list[BaseException] = []

    def build() -> None:
        try:
            _preemptible(make_manager)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    thread.join(60)
    assert len(errors) == 1
    assert isinstance(errors[0], ValueError)
    assert "`preemption_signals`" in str(errors[0])
    assert "main thread" in str(errors[0])
    assert not ckpt_dir.exists()  # refused before anything was opened or created
    # Without signals, any thread may build a manager; and no lock was left behind.
    make_manager().close()


def test_without_signals_nothing_is_installed(make_manager: Manager) -> None:
    before = signal.getsignal(signal.SIGTERM)
    manager = make_manager(save_period=5)
    assert signal.getsignal(signal.SIGTERM) is before
    assert not manager.preempted
    assert not manager.should_save(3)


def test_a_read_only_manager_installs_nothing(make_manager: Manager) -> None:
    before = signal.getsignal(signal.SIGTERM)
    make_manager().save(1, {}, {"w": torch.zeros(1)})
    reader = _preemptible(make_manager, read_only=True)
    assert signal.getsignal(signal.SIGTERM) is before
    assert not reader.should_save(3)
    assert not reader.preempted


# --- the emergency save ---------------------------------------------------------------------


class HeldHandler(TorchHandler):
    """ckpt's own handler, whose first write waits for ``gate`` (a disk or a store stalled)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.writes = 0

    def write_part(self, *args: Any, **kwargs: Any) -> Any:
        self.writes += 1
        if self.writes == 1:
            assert self.gate.wait(30), "the test never opened the gate"
        return super().write_part(*args, **kwargs)


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not so after {timeout} s"
        time.sleep(0.02)


def test_a_step_longer_than_the_grace_gets_the_newest_snapshot_committed(
    make_manager: Manager, ckpt_dir: Path, term_handler: list[int], caplog: Any
) -> None:
    manager = _preemptible(make_manager, grace_s=3.0, max_pending_saves=3)
    handler = HeldHandler()
    state = {"w": torch.zeros(8)}
    for step in (1, 2, 3):
        state["w"].fill_(float(step))
        manager.save_async(step, {"step": step}, state, handler=handler)
    signalled = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    # The loop is stuck in a step that outlasts the grace: no boundary comes. Halfway
    # through the grace the watchdog drops the queued step 2, so that step 3 is the next
    # written, right after step 1, whose write was under way.
    with caplog.at_level(logging.WARNING, "ckpt"):
        _wait_for(lambda: "committing the newest save_async snapshot" in caplog.text, 10)
        assert time.monotonic() - signalled >= 1.5  # not before halfway
        assert "step 3, now (dropping the older queued step(s) [2])" in caplog.text
        handler.gate.set()
        _wait_for((ckpt_dir / ".ckpt/preemption.json").exists, 10)
    record = _record(ckpt_dir)
    assert record["emergency"] is True
    assert record["step"] == 3
    assert record["skipped"] == [2]
    assert record["saved_after_s"] < 3.0
    assert sorted(r.step for r in manager.list_checkpoints()) == [1, 3]
    assert bool((load_state(ckpt_dir / "step_3")["w"] == 3.0).all())
    manager.wait_until_finished()  # the dropped save is no error
    assert handler.writes == 2
    assert not manager.preempted  # no boundary saw it yet
    assert manager.last_preemption() == ckpt.PreemptionRecord(
        "SIGTERM", record["received_at"], 3.0, 3, True, (2,), record["saved_after_s"]
    )


def test_an_emergency_with_nothing_pending_says_so(
    make_manager: Manager, ckpt_dir: Path, term_handler: list[int]
) -> None:
    manager = _preemptible(make_manager, grace_s=0.4)
    manager.save(1, {"step": 1}, {"w": torch.zeros(8)})
    os.kill(os.getpid(), signal.SIGTERM)
    _wait_for((ckpt_dir / ".ckpt/preemption.json").exists, 5)
    record = _record(ckpt_dir)
    assert record["emergency"] is True
    assert record["step"] is None
    assert [r.step for r in manager.list_checkpoints()] == [1]
    # `ckpt check` warns of it, until the run saves again.
    problems = ckpt.verify(ckpt_dir).warnings
    assert [p.code for p in problems] == ["preempted_unsaved"]
    assert "nothing was committed for it" in problems[0].message
    time.sleep(0.01)  # a commit time after the signal's, on any file system clock
    manager.save(2, {"step": 2}, {"w": torch.zeros(8)})
    assert ckpt.verify(ckpt_dir).problems == ()


def test_a_boundary_save_in_time_leaves_the_watchdog_idle(
    make_manager: Manager, ckpt_dir: Path, term_handler: list[int]
) -> None:
    manager = _preemptible(make_manager, grace_s=0.6)
    os.kill(os.getpid(), signal.SIGTERM)
    assert manager.should_save(1)
    manager.save(1, {"step": 1}, {"w": torch.zeros(8)})
    time.sleep(0.6)  # past the halfway point and the end of the grace
    record = _record(ckpt_dir)
    assert record["emergency"] is False
    assert record["step"] == 1


def test_a_boundary_save_that_commits_after_the_grace_is_recorded_as_late(
    make_manager: Manager, ckpt_dir: Path, term_handler: list[int]
) -> None:
    manager = _preemptible(make_manager, grace_s=1.0)
    handler = HeldHandler()
    os.kill(os.getpid(), signal.SIGTERM)
    assert manager.should_save(1)
    opener = threading.Timer(1.6, handler.gate.set)  # the disk answers after the grace
    opener.start()
    manager.save_async(1, {"step": 1}, {"w": torch.zeros(8)}, handler=handler)
    opener.join()
    record = manager.last_preemption()
    assert record is not None
    assert (record.step, record.emergency) == (1, False)
    assert record.saved_after_s is not None
    assert record.saved_after_s > 1.0
    assert "step 1 was committed" in record.describe()
    assert "late by" in record.describe()
    assert "nothing was committed" not in record.describe()


# --- ckpt ls ---------------------------------------------------------------------------------


def test_ckpt_ls_reports_the_preemption(
    make_manager: Manager, ckpt_dir: Path, term_handler: list[int], capsys: Any
) -> None:
    manager = _preemptible(make_manager)
    os.kill(os.getpid(), signal.SIGTERM)
    assert manager.should_save(7)
    manager.save(7, {"step": 7}, {"w": torch.zeros(8)})
    manager.close()
    assert cli_main(["ls", str(ckpt_dir)]) == 0
    out = capsys.readouterr().out
    assert "preempted by SIGTERM" in out
    assert "step 7 was committed" in out
    assert cli_main(["ls", str(ckpt_dir), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["preemption"]["signal"] == "SIGTERM"
    assert listed["preemption"]["step"] == 7


# --- across ranks ------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_ranks_stop_together_when_one_is_signalled(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    reports = run_ranks(JOB, tmp_path, "rank", str(directory))
    # Rank 1 alone got SIGTERM during step 3: both saw it at step 3's boundary.
    for report in reports:
        assert report["stopped"] == 3
        assert report["saved"] == [2, 3]
        assert report["latest"] == str(directory / "step_3")
    assert _record(directory)["step"] == 3


# --- a real job, signalled from outside ------------------------------------------------------


class Zygote:
    """``preempt_job.py serve``: forks a job per request, from torch already imported."""

    def __init__(self, log: IO[str]) -> None:
        self.scratch = Path(log.name).parent
        self.proc = subprocess.Popen(
            [sys.executable, str(JOB), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read_lines, daemon=True)
        self._reader.start()

    def _read_lines(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def send(self, request: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float, key: str) -> dict[str, Any]:
        """The next message with ``key``; others on the way are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {key!r} from the job in {timeout} s") from None
            assert line, "the job server ended"
            message: dict[str, Any] = json.loads(line)
            assert "error" not in message, message["error"]
            if key in message:
                return message

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        finally:
            self.proc.kill()
            self._reader.join(30)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


GRACE_S = 10.0


@pytest.mark.subprocess
def test_a_job_signalled_at_random_moments_stops_saved(tmp_path: Path) -> None:
    rng = random.Random(2412)
    with open(tmp_path / "server.log", "w") as log:
        zygote = Zygote(log)
        try:
            phases = [
                _trial(zygote, rng, str(tmp_path / f"run{n}"), {}, in_save=n % 2 == 1)
                for n in range(20)
            ]
        finally:
            zygote.close()
    # The moments fell in training alone, and in saves: in save_async's snapshot, or
    # in training while the background thread wrote the step before.
    assert "train" in phases, phases
    assert any("save" in phase or "writing" in phase for phase in phases), phases


@pytest.mark.subprocess
def test_a_job_saving_to_s3_signalled_mid_upload_stops_saved(
    tmp_path: Path, s3_server: Any
) -> None:
    rng = random.Random(711)
    options = s3_server.options()
    with open(tmp_path / "server.log", "w") as log:
        zygote = Zygote(log)
        try:
            phases = [
                _trial(zygote, rng, f"s3://{s3_server.new_bucket()}/runs/r", options, True)
                for _ in range(4)
            ]
        finally:
            zygote.close()
    assert any("writing" in phase for phase in phases), phases  # mid-upload


def _trial(
    zygote: Zygote, rng: random.Random, directory: str, options: dict[str, Any], in_save: bool
) -> str:
    """One job, signalled once; returns where the signal found it."""
    result = Path(zygote.scratch, f"result-{rng.random()}.json")
    request = {"dir": directory, "options": options, "result": str(result), "grace_s": GRACE_S}
    zygote.send({**request, "mode": "train", "step_s": rng.choice((0.01, 0.03, 0.08))})
    child = zygote.read(60, "child")["child"]
    assert zygote.read(60, "ready") == {"ready": child}
    if in_save:  # a moment in a save: just after the loop begins one
        zygote.read(30, "saving")
        time.sleep(rng.uniform(0.0, 0.03))
    else:  # any moment
        time.sleep(rng.uniform(0.05, 1.2))
    os.kill(child, signal.SIGTERM)
    signalled = time.time()
    try:
        ended = zygote.read(GRACE_S + 5, "exit")
    except AssertionError:
        os.kill(child, signal.SIGKILL)  # still running past the grace: killed, as a
        raise  # scheduler would
    assert ended == {"exit": child, "status": 0}
    report = json.loads(result.read_text())
    seen = report["signal"]
    assert seen, "the job's own SIGTERM handler did not run"
    assert report["closed_at"] - signalled < GRACE_S
    step, phase = seen["step"], seen["phase"]
    # Where the signal found the loop decides the step saved for it: during a step's
    # training, that step; once its boundary was looked at (or a save of it begun), the
    # next step's boundary is the first to see the signal.
    expected = (
        {1}
        if step is None
        else {
            "train": {step},
            "decide": {step, step + 1},
            "save": {step + 1},
            "decided": {step + 1},
        }[phase]
    )
    assert report["stopped"] in expected, (seen, report)
    config = {"checkpoint_dir": directory, "storage_options": options or None}
    with ckpt.CheckpointManager(config, read_only=True) as manager:
        latest = manager.get_latest_checkpoint_path()
        assert latest is not None
        info = manager.load_training_info(latest)
        record = manager.last_preemption()
    assert info == {"step": report["stopped"]}, (seen, report)
    assert record is not None
    assert record.step == report["stopped"]
    assert not record.emergency
    # A restart resumes from it.
    zygote.send({**request, "mode": "resume"})
    child = zygote.read(60, "child")["child"]
    assert zygote.read(60, "exit") == {"exit": child, "status": 0}
    assert json.loads(result.read_text()) == {"resumed_from": report["stopped"]}
    return str(phase) + (" while writing" if seen["writing"] else "")
