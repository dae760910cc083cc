"""What the trainers' kill tests share: a clean run, a kill, a resume (and the fork server)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from test_kill import ForkServer

import ckpt


def committed_steps(directory: Path | str) -> list[int]:
    """The steps a reader sees in ``directory``, changing nothing."""
    with ckpt.CheckpointManager({"checkpoint_dir": str(directory)}, read_only=True) as reader:
        return [r.step for r in reader.list_checkpoints()]


def record(
    server: ForkServer, run: Path, args: list[str]
) -> tuple[list[list[Any]], dict[str, Any]]:
    """A run without a kill: every file operation it made, and its report."""
    ops, report, log = (run.with_suffix(s) for s in (".ops", ".json", ".log"))
    request = [str(run), *args, "--record", str(ops), "--report", str(report), "--log", str(log)]
    assert server.run(request) == 0, log.read_text()[-3000:]
    return json.loads(ops.read_text()), json.loads(report.read_text())


def points(ops: list[int], sampled: set[int]) -> list[int]:
    """The kill points: ``sampled`` in CI, every one of ``ops`` with ``CKPT_KILL_EXHAUSTIVE=1``."""
    return ops if os.environ.get("CKPT_KILL_EXHAUSTIVE") else sorted(sampled)


@dataclass
class Killed:
    op: list[Any]  # the operation the job died before
    survivors: list[int]  # the committed steps right after the crash
    report: dict[str, Any]  # what the restarted run reported


def kill_and_resume(
    server: ForkServer, run: Path, args: list[str], point: int, resume: list[str]
) -> Killed:
    """Kill a run before its operation ``point``, look, then restart it with ``resume``."""
    marker, report, log = (run.with_suffix(s) for s in (".marker", ".json", ".log"))
    kill = [str(run), *args, "--kill-at", str(point), "--marker", str(marker), "--log", str(log)]
    assert server.run(kill) == -9, (point, log.read_text()[-3000:])
    op = json.loads(marker.read_text())["op"]
    survivors = committed_steps(run)
    restart = [str(run), *args, *resume, "--report", str(report), "--log", f"{log}2"]
    assert server.run(restart) == 0, (op, Path(f"{log}2").read_text()[-3000:])
    return Killed(op, survivors, json.loads(report.read_text()))
