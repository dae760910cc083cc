"""A training job that a test preempts with SIGTERM, for ``test_preemption.py``.

``serve`` imports torch and ckpt once, then reads one JSON request per line on stdin
and forks a child for each (importing torch takes longer than a whole trial), printing
``{"child": PID}`` when the child is forked and ``{"exit": PID, "status": N}`` when it
ended. A child is the job: a real process that the test signals from outside.

A ``train`` child installs a SIGTERM handler of its own first (ckpt's chains to it: it
records where the loop was when the signal came), builds a manager with
``preemption_signals: [SIGTERM]``, prints ``{"ready": PID}``, then trains the NeMo RL
way: each step fills the weights with the step number and sleeps ``step_s``; it saves
with ``save_async`` when ``should_save`` says so (``save_period: 2``), printing
``{"saving": STEP}`` first, and stops when ``manager.preempted``. It writes ``result``
(where the signal found the loop, where the loop stopped) and exits 0. A ``resume``
child opens the same directory, loads the latest checkpoint, checks its weights are
its step's, trains two more steps, saves the last, and writes ``result`` with the step
it resumed from.

``rank`` runs as one rank of a two-process gloo job (``ranks.run_ranks``): rank 1 alone
sends itself SIGTERM at step 3, and every rank reports where it stopped and saved.

    python tests/preempt_job.py serve
    python tests/preempt_job.py rank DIR --report FILE
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from upath import UPath

import ckpt
from ckpt.torch import TorchHandler, load_state

WEIGHTS = 1 << 21  # 8 MiB of float32: a save takes a while, so signals land in saves too


def _config(directory: str, grace_s: float, options: Any = None) -> dict[str, Any]:
    return {
        "checkpoint_dir": directory,
        "storage_options": options or None,
        "save_period": 2,
        "retention": {"kind": "latest_n", "n": 2},
        "preemption_signals": ["SIGTERM"],
        "preemption_grace_s": grace_s,
    }


class _Marked(TorchHandler):
    """ckpt's own handler, noting in ``where`` while a background write is under way."""

    def __init__(self, where: dict[str, Any]) -> None:
        super().__init__()
        self._where = where

    def write_part(self, *args: Any, **kwargs: Any) -> Any:
        self._where["writing"] = True
        try:
            return super().write_part(*args, **kwargs)
        finally:
            self._where["writing"] = False


def train(request: dict[str, Any]) -> None:
    where: dict[str, Any] = {"step": None, "phase": "setup", "writing": False}
    seen: dict[str, Any] = {}

    def note(signum: int, frame: object) -> None:
        seen.update(where, at=time.time())

    signal.signal(signal.SIGTERM, note)
    manager = ckpt.CheckpointManager(
        _config(request["dir"], request["grace_s"], request["options"])
    )
    handler = _Marked(where)
    state = {"w": torch.zeros(WEIGHTS)}
    print(json.dumps({"ready": os.getpid()}), flush=True)
    step = 0
    for step in range(1, 100_000):
        where.update(step=step, phase="train")
        state["w"].fill_(float(step))
        time.sleep(request["step_s"])
        where["phase"] = "decide"
        if manager.should_save(step):
            where["phase"] = "save"
            print(json.dumps({"saving": step}), flush=True)
            manager.save_async(step, {"step": step}, state, handler=handler)
        where["phase"] = "decided"
        if manager.preempted:
            break
    manager.close()
    result = {"signal": seen, "stopped": step, "closed_at": time.time()}
    Path(request["result"]).write_text(json.dumps(result))


def resume(request: dict[str, Any]) -> None:
    options = request["options"]
    manager = ckpt.CheckpointManager(_config(request["dir"], request["grace_s"], options))
    latest = manager.get_latest_checkpoint_path()
    assert latest is not None, "nothing to resume from"
    info = manager.load_training_info(latest)
    assert info is not None
    start = int(info["step"])
    state = load_state(UPath(latest, **options) if options else latest)
    assert bool((state["w"] == float(start)).all()), f"step {start} holds other weights"
    for step in (start + 1, start + 2):
        state["w"].fill_(float(step))
    manager.save(start + 2, {"step": start + 2}, state)
    manager.close()
    Path(request["result"]).write_text(json.dumps({"resumed_from": start}))


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                {"train": train, "resume": resume}[request["mode"]](request)
            except BaseException as exc:
                print(json.dumps({"error": repr(exc)}), flush=True)
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        print(json.dumps({"child": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"exit": pid, "status": status}), flush=True)


def rank(directory: str, report: str) -> None:
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    me = dist.get_rank()
    manager = ckpt.CheckpointManager(_config(directory, 20.0))
    state = {"w": torch.zeros(1000)}
    step, saved = 0, []
    for step in range(1, 50):
        state["w"].fill_(float(step + me))
        if me == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        if manager.should_save(step):
            manager.save_async(step, {"step": step}, state)
            saved.append(step)
        if manager.preempted:
            break
    latest = manager.get_latest_checkpoint_path()
    manager.close()
    dist.destroy_process_group()
    result = {"stopped": step, "saved": saved, "latest": None if latest is None else str(latest)}
    Path(report).write_text(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        rank(sys.argv[2], sys.argv[sys.argv.index("--report") + 1])
