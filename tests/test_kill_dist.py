"""SIGKILL one rank of a real two-rank job before each of its file operations.

The job (``tests/kill_dist_job.py``) saves, overwrites and prunes collectively on gloo
over 127.0.0.1. For each kill point: the killed rank dies of SIGKILL right before the
operation; the surviving rank must raise a collective error naming it within the
timeout (never hang); no checkpoint visible afterwards may be partial (every one holds
every rank's part of one event, exactly); and a restarted job must resume from a step
both ranks agree on and end exactly as an uninterrupted run ends.

The killed rank is the participant (rank 1) and, separately, the coordinator (rank
0). CI samples the points evenly (`SAMPLE` per rank); ``CKPT_KILL_EXHAUSTIVE=1`` kills
before every one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpt
from ckpt.torch import load_state

sys.path.insert(0, str(Path(__file__).parent))
from kill_dist_job import EVENTS, TIMEOUT_S, state
from test_kill import ForkServer

pytestmark = [pytest.mark.kill, pytest.mark.torch, pytest.mark.subprocess]

JOB = Path(__file__).with_name("kill_dist_job.py")
WORLD = 2
SAMPLE = {1: 60, 0: 80}  # kill points per victim in CI (evenly spread over its operations)


class Server(ForkServer):
    """A ``kill_dist_job.py`` fork server: one job (every rank) at a time."""

    def run_ranks(self, ranks: list[list[str]]) -> list[int]:
        """Run one job, every rank in a process of its own; their exit statuses."""
        return [int(code) for code in self.ask(ranks)["exits"]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w")  # noqa: SIM115
    with (
        log,
        subprocess.Popen(
            [sys.executable, str(JOB)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        ) as proc,
    ):
        yield Server(proc)
        assert proc.stdin is not None
        proc.stdin.close()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job(
    server: Server, directory: Path, work: Path, extra: dict[int, list[str]] | None = None
) -> tuple[list[int], list[dict[str, Any]]]:
    """Run both ranks; their exit codes and what each saw (``{}`` for a killed rank)."""
    work.mkdir(parents=True, exist_ok=True)
    port = str(_port())
    results = [work / f"result{r}.json" for r in range(WORLD)]
    for result in results:
        result.unlink(missing_ok=True)
    argv = [
        [str(directory), str(r), str(WORLD), port, str(results[r]), *(extra or {}).get(r, [])]
        for r in range(WORLD)
    ]
    exits = server.run_ranks(argv)
    return exits, [json.loads(r.read_text()) if r.exists() else {} for r in results]


def visible(directory: Path) -> dict[int, int]:
    """Step -> event of every visible checkpoint, each checked to hold every rank's part."""
    found: dict[int, int] = {}
    with ckpt.CheckpointManager({"checkpoint_dir": str(directory)}, read_only=True) as m:
        for record in m.list_checkpoints():
            event = int(record.info["event"])
            assert EVENTS[event][0] == record.step
            names = sorted(os.listdir(record.path))
            parts = [f"state.rank{r:05d}-of-{WORLD:05d}.ckpt" for r in range(WORLD)]
            assert names == sorted([*parts, ".ckpt-files.json", "training_info.json"]), (
                record.step,
                names,
            )
            for rank in range(WORLD):
                got = load_state(record.path, rank=rank)
                want = state(event, rank)
                assert got["event"] == event, record.path
                assert torch.equal(got["w"], want["w"]), record.path
            found[record.step] = event
    return found


def _points(total: int, victim: int) -> list[int]:
    if os.environ.get("CKPT_KILL_EXHAUSTIVE") or total <= SAMPLE[victim]:
        return list(range(total))
    n = SAMPLE[victim]
    return sorted({round(i * (total - 1) / (n - 1)) for i in range(n)})


@pytest.mark.parametrize("victim", [1, 0], ids=["participant", "coordinator"])
def test_sigkill_a_rank_before_each_of_its_file_operations(
    server: Server, tmp_path: Path, victim: int
) -> None:
    # The uninterrupted run: every rank's operations, and how it ends.
    clean = tmp_path / "clean"
    ops_files = {r: tmp_path / f"ops{r}.json" for r in range(WORLD)}
    exits, seen = job(
        server, clean, tmp_path / "w", {r: ["--record", str(ops_files[r])] for r in range(WORLD)}
    )
    assert exits == [0, 0], seen
    assert all(s.get("done") for s in seen), seen
    final = visible(clean)
    assert final == {2: 2, 5: 5, 6: 6}  # top 2 by reward (0.6, 0.7), and the latest
    ops = json.loads(ops_files[victim].read_text())
    assert len(ops) > 20
    report = []
    for index in _points(len(ops), victim):
        directory = tmp_path / f"at{index}"
        marker = tmp_path / f"marker{index}.json"
        kill = ["--kill-at", str(index), "--marker", str(marker)]
        exits, seen = job(server, directory, tmp_path / f"w{index}", {victim: kill})
        killed = json.loads(marker.read_text())["op"]
        where = f"rank {victim} killed before {killed}"
        assert exits[victim] == -9, where
        survivor = seen[1 - victim]
        if survivor.get("done"):
            # Killed in its own close, after the last step the ranks take together: the
            # coordinator saving the catalog (a cache the next start rebuilds).
            assert "catalog.json" in killed[2], (where, survivor)
        else:
            assert survivor.get("error") in ("CollectiveTimeoutError", "CollectiveError"), (
                where,
                survivor,
            )
            assert survivor["ranks"] == [victim], (where, survivor)
            assert survivor["elapsed"] < 2 * TIMEOUT_S + 2, (where, survivor)
        before = visible(directory)  # no partial checkpoint, whatever the point
        exits, seen = job(server, directory, tmp_path / f"r{index}")
        assert exits == [0, 0], (where, seen)
        assert all(s.get("done") for s in seen), (where, seen)
        assert seen[0]["start"] == seen[1]["start"], (where, seen)
        assert not any("wrong_resume" in s for s in seen), (where, seen)
        assert visible(directory) == final, where
        assert sorted(os.listdir(directory)) == [".ckpt", "step_2", "step_5", "step_6"], where
        report.append((index, killed[1], killed[2], sorted(before)))
    kinds = Counter(kind for _, kind, _, _ in report)
    leftovers = Counter(len(steps) for *_, steps in report)
    print(
        f"\nrank {victim}: killed before {len(report)} of its {len(ops)} operations "
        f"({dict(sorted(kinds.items()))}); checkpoints visible after the kill: "
        f"{dict(sorted(leftovers.items()))} (count: points)"
    )
