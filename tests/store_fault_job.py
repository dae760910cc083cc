"""A training job for the store-fault tests: it runs the operations the test sends.

``python store_fault_job.py CONFIG_JSON`` builds a manager from the config, prints
``{"ready": true}``, then reads one JSON command a line from stdin and answers each with
one JSON line: ``{"ok": true, ...}`` or ``{"ok": false, "type", "module", "message"}``
for the exception the operation raised (the test checks that it is ckpt's own). The test
starts a fault on its proxy between the store and this process right before sending an
operation, so the fault meets the operation as it runs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import torch

import ckpt
from ckpt.torch import save_state


def _state(step: int) -> dict[str, Any]:
    # A few hundred KiB, written by ckpt itself (the loop's own writes are its own affair).
    return {"w": torch.full((64 << 10,), float(step)), "step": torch.tensor(step)}


def run(manager: ckpt.CheckpointManager, command: dict[str, Any], held: dict[str, Any]) -> Any:
    op = command["op"]
    step = command.get("step", 0)
    if op == "save":
        manager.save(step, {"step": step, "loss": 1.0 / (step + 1)}, _state(step))
        return None
    if op == "begin":  # written, not committed: "commit" commits it
        path = manager.init_tmp_checkpoint(step, {"step": step, "loss": 1.0 / (step + 1)})
        save_state(path, _state(step))
        held["tmp"] = path
        return None
    if op == "commit":
        manager.finalize_checkpoint(held.pop("tmp"))
        return None
    if op == "prune":
        manager.remove_old_checkpoints(exclude_latest=True)
        return None
    if op == "idle":
        time.sleep(command["seconds"])
        return None
    if op == "replicated":
        return manager.wait_for_replication(timeout=command["seconds"])
    if op == "latest":
        found = manager.get_latest_checkpoint_path()
        return None if found is None else str(found)
    if op == "steps":
        return [r.step for r in manager.list_checkpoints()]
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)  # the test reads what ckpt warned of
    config = json.loads(sys.argv[1])
    manager = ckpt.CheckpointManager(config)
    print(json.dumps({"ready": True}), flush=True)
    held: dict[str, Any] = {}
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "exit":
            break
        try:
            result = {"ok": True, "value": run(manager, command, held)}
        except Exception as exc:
            result = {
                "ok": False,
                "type": type(exc).__name__,
                "module": type(exc).__module__,
                "ckpt": isinstance(exc, ckpt.CheckpointError),
                "message": str(exc),
            }
        print(json.dumps(result), flush=True)
    manager.close()
    print(json.dumps({"closed": True}), flush=True)


if __name__ == "__main__":
    main()
