"""Several processes, one checkpoint: real torch.distributed jobs on gloo over 127.0.0.1.

Each test starts every rank as its own Python process (``tests/dist_job.py``) and reads
back what each rank saw, then checks the directory itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpt
from ckpt.storage import MemoryStorage
from ckpt.torch import load_state

pytestmark = [pytest.mark.torch, pytest.mark.subprocess]

JOB = Path(__file__).with_name("dist_job.py")
TIMEOUT_S = 4.0  # dist_job's collective_timeout_s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_job(
    scenario: str,
    directory: Path | str,
    out: Path,
    world: int,
    env: dict[str, str] | None = None,
    expected: tuple[str, ...] = ("CollectiveError", "CollectiveTimeoutError"),
) -> list[dict[str, Any]]:
    """Run every rank of ``scenario``; each rank's JSON result (``{}`` if it died)."""
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(JOB),
                scenario,
                str(directory),
                str(out),
                str(r),
                str(world),
                str(port),
            ],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        logs.append(output)
    results = []
    for rank in range(world):
        report = out / f"rank{rank}.json"
        results.append(json.loads(report.read_text()) if report.exists() else {})
    for rank, result in enumerate(results):
        if "traceback" in result and result["error"] not in expected:
            pytest.fail(f"rank {rank} failed:\n{result['traceback']}\n{logs[rank]}")
    return results


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_saves_its_part_and_they_agree(tmp_path: Path, world: int) -> None:
    directory = tmp_path / "ckpts"
    results = run_job("lifecycle", directory, tmp_path / "out", world)
    seen = [r["ok"] for r in results]
    # Every rank got the same answers: the saved paths, the latest, the best.
    shared = [{k: v for k, v in s.items() if k != "best_value"} for s in seen]
    assert all(s == shared[0] for s in shared[1:])
    first = seen[0]
    assert first["saved"] == [str(directory / f"step_{n}") for n in (1, 2, 3, 3, 4)]
    # keep_top_k 2 by reward (2: 0.9, 5: 0.95) plus the latest (6)
    assert first["steps"] == [2, 5, 6]
    assert first["latest"] == str(directory / "step_6")
    assert first["best"] == str(directory / "step_5")
    assert listing(directory) == [".ckpt", "step_2", "step_5", "step_6"]
    for step in (2, 5):
        names = sorted(os.listdir(directory / f"step_{step}"))
        files = [f"state.rank{r:05d}-of-{world:05d}.ckpt" for r in range(world)]
        assert names == sorted([*files, ".ckpt-files.json", "training_info.json"])
        for rank in range(world):
            got = load_state(directory / f"step_{step}", rank=rank)
            assert float(got["w"][0]) == 100 * rank + step
    assert sorted(os.listdir(directory / "step_6")) == sorted(
        [*(f"part-{r}.txt" for r in range(world)), ".ckpt-files.json", "training_info.json"]
    )
    # Each rank loaded its own part of the best checkpoint.
    assert [s["best_value"] for s in seen] == [100.0 * r + 5 for r in range(world)]
    # The overwritten step 3 was pruned like any other: no leftovers anywhere.
    assert os.listdir(directory / ".ckpt" / "trash") == []

    # A restarted job resumes from the step every rank agrees on, each from its own part.
    again = [r["ok"] for r in run_job("resume", directory, tmp_path / "out2", world)]
    assert {s["latest"] for s in again} == {str(directory / "step_6")}
    assert [s["best_value"] for s in again] == [100.0 * r + 5 for r in range(world)]


@pytest.mark.parametrize("where", ["manifest", "s3"])
def test_a_job_saves_under_the_manifest_protocol_and_on_s3(
    tmp_path: Path, where: str, s3_server: Any
) -> None:
    directory = str(tmp_path / "ckpts")
    store: dict[str, Any] = {"commit_protocol": "manifest"}
    if where == "s3":
        directory = f"s3://{s3_server.new_bucket()}/runs/run1"
        store = {"storage_options": s3_server.options(), "lease_seconds": 5}
    env = {"CKPT_TEST_STORE": json.dumps(store)}
    seen = [r["ok"] for r in run_job("anywhere", directory, tmp_path / "out", 2, env)]
    assert [s["steps"] for s in seen] == [[2, 3, 4]] * 2  # top 2 by reward, and the latest
    assert seen[0]["best"] == seen[1]["best"]
    assert seen[0]["latest"] == seen[1]["latest"]
    assert "/step_2." in seen[0]["best"]  # the overwrite's attempt, named by its manifest
    assert [s["best_value"] for s in seen] == [2.0, 102.0]
    assert [s["latest_value"] for s in seen] == [4.0, 104.0]
    with ckpt.CheckpointManager({"checkpoint_dir": directory, **store}, read_only=True) as m:
        assert [r.step for r in m.list_checkpoints()] == [2, 3, 4]
        report = ckpt.verify(directory, storage=m._dir.storage)
        assert report.ok, report


def test_a_single_process_reads_what_a_job_saved(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    run_job("lifecycle", directory, tmp_path / "out", 2)
    with ckpt.CheckpointManager({"checkpoint_dir": str(directory)}, read_only=True) as m:
        best = directory / "step_5"
        assert m.get_latest_checkpoint_path() == str(directory / "step_6")
    with pytest.raises(ValueError, match=r"pass `rank=`"):
        load_state(best)
    assert float(load_state(best, rank=1)["w"][0]) == 105.0
    report = ckpt.verify(str(directory))
    assert report.ok, report


def test_dtensor_state_goes_through_dcp_and_reshards_on_another_world_size(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "ckpts"
    saved = run_job("dcp_save", directory, tmp_path / "out", 2)
    assert saved[0]["ok"]["steps"] == [1, 2, 3]
    names = sorted(os.listdir(directory / "step_1"))
    assert names == [
        ".ckpt-files.json",
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "training_info.json",
    ]
    loaded = [r["ok"] for r in run_job("dcp_load", directory, tmp_path / "out2", 4)]
    for seen in loaded:
        assert seen["step_1"] == {"equal": True, "local_rows": 3}
        assert seen["step_2"] == {"equal": True, "local_rows": 3}
        assert "saved by 2 ranks and this job has 4" in seen["plain_error"]
        assert seen["latest"] == str(directory / "step_3")
    # Outside the job: DCP state needs a template to load into; a plain part needs a rank.
    with pytest.raises(TypeError, match="pass `into=`"):
        load_state(directory / "step_1")
    # A plain part fills `into` in place, like a single process's state file.
    into = {"w": torch.zeros_like(load_state(directory / "step_3", rank=1)["w"])}
    before = into["w"]
    assert load_state(directory / "step_3", rank=1, into=into) is into
    assert into["w"] is before
    assert float(before[0]) == 1.0
    with pytest.raises(ckpt.StateNotFoundError, match="no saved state for rank 5 of 2"):
        load_state(directory / "step_3", rank=5)
    assert float(load_state(directory / "step_3", rank=1)["w"][0]) == 1.0


def test_a_rank_that_cannot_save_fails_the_save_on_every_rank(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    results = run_job("bad_state", directory, tmp_path / "out", 3)
    assert {r["error"] for r in results} == {"CollectiveError"}
    assert {tuple(r["ranks"]) for r in results} == {(1,)}
    assert len({r["message"] for r in results}) == 1
    assert "rank 1 SerializationError" in results[0]["message"]
    assert listing(directory) == [".ckpt", "step_1"]  # nothing of step 2, no temporary


def test_an_aborting_rank_stops_the_commit_on_every_rank(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    expected = ("CollectiveError", "RuntimeError")
    results = run_job("aborted", directory, tmp_path / "out", 2, expected=expected)
    assert (results[1]["error"], results[1]["message"]) == (
        "RuntimeError",
        "rank 1's writer failed",
    )
    assert results[0]["error"] == "CollectiveError"
    assert "rank(s) 1 aborted tmp_step_1" in results[0]["message"]
    assert listing(directory) == [".ckpt"]


def test_background_commits_are_collective_and_fail_on_every_rank(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    seen = [r["ok"] for r in run_job("background", directory, tmp_path / "out", 2)]
    for rank, s in enumerate(seen):
        assert s["after_finalize"] == [1]
        cause, message = s["finalize_error"]
        assert cause == "CollectiveError"
        assert "rank 1 OSError: rank 1's async writer failed" in message
        ranks, message = s["async_error"]
        assert ranks == [1]
        assert "No space left on device" in message
        assert s["steps"] == [1], rank
    assert sorted(os.listdir(directory / "step_1")) == [
        ".ckpt-files.json",
        "part-0.bin",
        "part-1.bin",
        "training_info.json",
    ]
    assert listing(directory) == [".ckpt", "step_1"]  # both failed attempts removed


def test_ranks_get_the_coordinators_warnings_and_fail_together_when_they_disagree(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "ckpts"
    seen = [r["ok"] for r in run_job("disagree", directory, tmp_path / "out", 2)]
    for s in seen:
        ranks, message = s["directories"]
        assert ranks == [0]
        assert "every rank of a job must open the same directory" in message
        assert s["best"] == str(directory / "step_1")
        assert len(s["warnings"]) == 1
        category, text = s["warnings"][0]
        assert category == "MissingMetricWarning"
        assert "step(s) 2" in text
        ranks, message = s["mismatch"]
        assert ranks == [1]
        assert "rank 1 called unpin(1) (rank 0: pin(1))" in message
        assert s["pins"] == []  # nothing changed: no rank pinned or unpinned
        assert s["big"] == [[50_000, 50_000], 70_000]
    assert seen[0]["warnings"] == seen[1]["warnings"]
    # The refused construction left nothing behind.
    assert not (tmp_path / "ckpts-0").exists()
    assert not (tmp_path / "ckpts-1").exists()


def test_a_process_group_makes_one_manager_per_group(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    seen = [r["ok"] for r in run_job("subgroups", directory, tmp_path / "out", 4)]
    for rank, s in enumerate(seen):
        half = directory / f"half{rank // 2}"
        assert s["path"] == str(half / "step_1")
        # ranks and sizes are the group's: two parts per checkpoint, named 0 and 1
        assert s["files"] == [
            ".ckpt-files.json",
            "state.rank00000-of-00002.ckpt",
            "state.rank00001-of-00002.ckpt",
            "training_info.json",
        ]
        assert s["own"] == 100.0 * rank + 1
    # Rank 3's bad state fails its own half, named by its global rank; half 0 saves.
    assert "error" not in seen[0]
    assert "error" not in seen[1]
    assert [s["steps"] for s in seen] == [[1, 2], [1, 2], [1], [1]]
    for s in seen[2:]:
        ranks, message = s["error"]
        assert ranks == [3]
        assert "rank 3 SerializationError" in message


@pytest.mark.parametrize(
    ("victim", "hang"),
    [(1, False), (0, False), (1, True)],
    ids=["rank-dies", "coordinator-dies", "rank-hangs"],
)
def test_a_dead_or_hung_rank_is_named_within_the_timeout(
    tmp_path: Path, victim: int, hang: bool
) -> None:
    directory = tmp_path / "ckpts"
    out = tmp_path / "out"
    env = {"VICTIM": str(victim), **({"HANG": "1"} if hang else {})}
    results = run_job("dies", directory, out, 3, env)
    survivors = [r for r in range(3) if r != victim]
    for rank in survivors:
        assert results[rank]["error"] == "CollectiveTimeoutError", results[rank]
        assert results[rank]["ranks"] == [victim]
        # within the timeout (twice it where the coordinator is the one that is gone)
        assert float((out / f"elapsed{rank}").read_text()) < 2 * TIMEOUT_S + 1
    assert listing(directory) in ([".ckpt", "step_1"], [".ckpt", "step_1", "tmp_step_2"])
    # No partial checkpoint is visible, and a restart cleans up and carries on.
    again = run_job("resume", directory, tmp_path / "out2", 3)
    assert {r["ok"]["latest"] for r in again} == {str(directory / "step_1")}
    assert [r["ok"]["best_value"] for r in again] == [100.0 * r + 1 for r in range(3)]
    assert listing(directory) == [".ckpt", "step_1"]


def test_a_rank_that_never_builds_its_manager_fails_the_others_in_time(tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = run_job("lonely", tmp_path / "ckpts", out, 2)
    assert results[0]["error"] == "CollectiveTimeoutError", results[0]
    assert "every rank must" in results[0]["message"]
    assert float((out / "elapsed0").read_text()) < TIMEOUT_S + 2
    assert results[1] == {"ok": {}}


def test_process_group_outside_a_distributed_job_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not initialized"):
        ckpt.CheckpointManager({"checkpoint_dir": str(tmp_path)}, process_group=object())
    assert list(tmp_path.iterdir()) == []
    with ckpt.CheckpointManager({"checkpoint_dir": str(tmp_path)}, process_group=False) as m:
        assert m.save(1, {}, {"w": torch.ones(1)}) == tmp_path / "step_1"


WORKER = """
import os, sys
import ckpt
path, writer, die = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
with open(os.path.join(path, f"{writer}.bin"), "wb") as f:
    f.write(writer.encode() * 1000)
if die:
    os._exit(9)  # before it reports
ckpt.mark_written(path, writer, [f"{writer}.bin"])
"""


def _workers(path: Path, dying: set[str]) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(path), w, "1" if w in dying else "0"])
        for w in ("policy-0", "policy-1")
    ]
    assert [p.wait(timeout=60) for p in procs] == [
        9 if w in dying else 0 for w in ("policy-0", "policy-1")
    ]


def test_single_controller_publishes_only_once_every_worker_reported(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    with ckpt.CheckpointManager({"checkpoint_dir": str(directory)}) as m:
        path = m.init_tmp_checkpoint(1, {"reward": 1.0}, writers=["policy-0", "policy-1"])
        _workers(path, dying={"policy-1"})
        with pytest.raises(ckpt.IncompleteCheckpointError, match="policy-1") as caught:
            m.finalize_checkpoint(path)
        assert caught.value.missing == ("policy-1",)
        assert m.list_checkpoints() == []
        assert listing(directory) == [".ckpt", "tmp_step_1"]
        # The background finalization refuses the same way, and publishes nothing.
        m.begin_finalization(path)
        with pytest.raises(ckpt.FinalizationError) as failed:
            m.finalize_pending()
        assert isinstance(failed.value.__cause__, ckpt.IncompleteCheckpointError)
        assert m.list_checkpoints() == []

        # A fresh try where both workers report is published, reports and all.
        path = m.init_tmp_checkpoint(1, {"reward": 1.0}, writers=["policy-0", "policy-1"])
        _workers(path, dying=set())
        (path / "policy-0.bin").write_bytes(b"changed")  # a file changed after its report
        with pytest.raises(ckpt.IncompleteCheckpointError, match=r"policy-0 wrote policy-0\.bin"):
            m.finalize_checkpoint(path)
        (path / "policy-0.bin").write_bytes(b"policy-0" * 1000)
        m.begin_finalization(path)
        m.finalize_pending()
        assert [r.step for r in m.list_checkpoints()] == [1]
        reports = sorted(os.listdir(directory / "step_1" / ".ckpt-writers"))
        assert reports == ["policy-0.json", "policy-1.json"]


def test_mark_written_refuses_what_it_cannot_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`writer_id`"):
        ckpt.mark_written(tmp_path, "../evil")
    with pytest.raises(ValueError, match="not inside the checkpoint"):
        ckpt.mark_written(tmp_path, "w", [tmp_path.parent / "elsewhere"])
    with pytest.raises(ValueError, match="not inside the checkpoint"):
        ckpt.mark_written(tmp_path, "w", ["../elsewhere"])
    with pytest.raises(FileNotFoundError):
        ckpt.mark_written(tmp_path, "w", ["missing.bin"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("example", ["multi_process.py", "single_controller.py"])
def test_the_examples_of_the_multi_process_page_run(tmp_path: Path, example: str) -> None:
    script = Path(__file__).parent.parent / "docs" / "examples" / example
    done = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", str(script), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    if example == "multi_process.py":
        assert lines == ["['.ckpt', 'step_5', 'step_6']", "['.ckpt', 'step_1', 'step_2']"]
        # the resumed runs continued from the agreed step: 1..3, then 4..6
        info = json.loads((tmp_path / "run" / "step_6" / "training_info.json").read_text())
        assert info["step"] == 6
    else:
        assert lines == ["[1, 2]"]
        shards = sorted(os.listdir(tmp_path / "run" / "step_2" / "policy"))
        assert shards == ["shard-0.bin", "shard-1.bin"]


def test_mark_written_makes_this_workers_files_durable_and_no_one_elses() -> None:
    storage = MemoryStorage()
    root = "/run/tmp_step_1"
    storage.make_dirs(root)
    storage.sync_tree("/")  # the temporary checkpoint itself survives a power cut
    storage.make_dirs(f"{root}/policy")
    storage.write_bytes(f"{root}/policy/shard-0.bin", b"mine")
    storage.write_bytes(f"{root}/other.bin", b"another worker's")
    ckpt.mark_written(root, "w0", ["policy/shard-0.bin"], storage=storage)
    storage.power_cut()
    assert storage.read_bytes(f"{root}/policy/shard-0.bin") == b"mine"  # name and bytes
    other = storage.entry(f"{root}/other.bin")  # not this worker's to sync: its bytes
    assert other is None or other.size == 0  # are lost (its name may be, or not)
    report = json.loads(storage.read_bytes(f"{root}/.ckpt-writers/w0.json"))
    assert report == {"writer": "w0", "files": {"policy/shard-0.bin": 4}}
