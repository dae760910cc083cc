"""Starting the ranks of a torch.distributed job as torchrun would: a process each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_ranks(script: Path, out: Path, *argv: str, world: int = 2) -> list[dict[str, Any]]:
    """Run ``script *argv --report FILE`` on every rank, over gloo on 127.0.0.1.

    Returns each rank's report; a rank that fails (or outlives `TIMEOUT_S`) fails the
    test with the end of its log.
    """
    port = str(free_port())
    ranks = []
    for rank in range(world):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "NODE_RANK": "0",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
        }
        report, log_path = out / f"rank{rank}.json", out / f"rank{rank}.log"
        report.unlink(missing_ok=True)
        with open(log_path, "w") as log:
            command = [sys.executable, str(script), *argv, "--report", str(report)]
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        ranks.append((proc, report, log_path))
    results = []
    for proc, report, log_path in ranks:
        try:
            code = proc.wait(timeout=TIMEOUT_S)
        finally:
            proc.kill()
        assert code == 0, log_path.read_text()[-3000:]
        results.append(json.loads(report.read_text()))
    return results
