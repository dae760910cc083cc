"""A local tier replicated to S3 (moto's server through s3fs) or to another directory.

Saves commit locally; the replicator uploads each committed checkpoint and commits it
in the replica with the manifest protocol, carrying the local record's digests; the
local tier keeps ``keep_local`` and never drops what has no committed replica; a
restart resumes the uploads, and finds the newest checkpoint in either tier.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import ckpt
from ckpt.cli import main as cli_main
from ckpt.commit.manifest import read_files_record, read_manifest, self_digest
from ckpt.storage import open_storage, walk_files
from ckpt.torch import load_state
from tests.conftest import read_tree

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # botocore's utcnow
]


def _state(step: int) -> dict[str, Any]:
    return {"w": torch.full((1000,), float(step)), "b": torch.arange(step + 3)}


@pytest.fixture
def replicated(tmp_path: Path, s3_server: Any) -> dict[str, Any]:
    """A config with a local tier under tmp_path replicated to a fresh bucket."""
    to = f"s3://{s3_server.new_bucket()}/runs/run1"
    config = {
        "checkpoint_dir": str(tmp_path / "local"),
        "fsync": False,
        "lease_seconds": 5,
        "retention": {"kind": "latest_n", "n": 3},
        "replicate": {"to": to, "keep_local": 2, "storage_options": s3_server.options()},
    }
    storage, location = open_storage(to, s3_server.options())
    return {"config": config, "to": to, "storage": storage, "location": location}


def _replica_steps(replicated: dict[str, Any]) -> list[int]:
    with ckpt.CheckpointManager(
        {
            "checkpoint_dir": replicated["to"],
            "storage_options": replicated["config"]["replicate"]["storage_options"],
        },
        read_only=True,
    ) as reader:
        return [r.step for r in reader.list_checkpoints()]


# --- the config -------------------------------------------------------------------------------


def test_the_replicate_block_is_checked(tmp_path: Path) -> None:
    config = ckpt.CheckpointConfig(
        checkpoint_dir=tmp_path / "a",
        replicate={"to": "s3://bucket/runs/r", "storage_options": {"secret": "hunter2"}},
    )
    assert config.replicate is not None
    assert config.replicate.keep_local == 2
    assert "hunter2" not in repr(config)
    for bad, message in (
        ({"to": str(tmp_path / "a")}, "`replicate.to` must be a place apart"),
        ({"to": str(tmp_path / "a" / "inner")}, "one inside the other"),
        ({"to": "s3://bucket/r", "keep_local": 0}, "`keep_local` must be an integer >= 1"),
        ({"keep_local": 1}, "`to` is required"),
        ({"to": "s3://bucket"}, "`replicate.to` must name the run's own prefix"),
        ({"to": ""}, "`replicate.to` must name the run's own directory"),
    ):
        with pytest.raises(ValidationError, match=message):
            ckpt.CheckpointConfig(checkpoint_dir=tmp_path / "a", replicate=bad)


# --- saving and uploading --------------------------------------------------------------------


def test_checkpoints_are_uploaded_with_their_digests_and_pruned_per_tier(
    replicated: dict[str, Any],
) -> None:
    local = Path(replicated["config"]["checkpoint_dir"])
    with ckpt.CheckpointManager(replicated["config"]) as manager:
        for step in (1, 2, 3):
            manager.save(step, {"step": step}, _state(step))
        for step in (4, 5):
            manager.save_async(step, {"step": step}, _state(step))
        assert manager.wait_for_replication(timeout=60)
        assert manager.replication_status() == dict.fromkeys((3, 4, 5), "replicated")
        # Local: keep_local (2) newest; replica: the config's retention (latest 3).
        assert [r.step for r in manager.list_checkpoints()] == [4, 5]
        assert manager.get_latest_checkpoint_path() == str(local / "step_5")
    assert _replica_steps(replicated) == [3, 4, 5]
    storage, location = replicated["storage"], replicated["location"]
    local_storage, local_location = open_storage(str(local))
    for step in (4, 5):
        manifest = read_manifest(storage, location, step)
        carried = {f.path: f.xxh3_128 for f in manifest.files}
        record = read_files_record(local_storage, f"{local_location}/step_{step}")
        assert record is not None
        assert carried == {f.path: f.xxh3_128 for f in record}  # the same digests
        assert set(carried) == {"training_info.json", "state.ckpt"}
    # The replica is an ordinary checkpoint directory: deep-checked clean, loadable.
    assert ckpt.verify(
        replicated["to"],
        storage_options=replicated["config"]["replicate"]["storage_options"],
        deep=True,
    ).ok
    record = json.loads((local / ".ckpt" / "replication.json").read_text())
    assert record["to"] == replicated["to"]
    assert sorted(record["replicated"]) == ["4", "5"]


def test_a_local_checkpoint_stays_until_its_replica_is_committed(tmp_path: Path) -> None:
    slow, away = tmp_path / "slow", tmp_path / "slow-away"
    config = {
        "checkpoint_dir": str(tmp_path / "fast"),
        "fsync": False,
        "replicate": {"to": str(slow), "keep_local": 1},
    }
    with ckpt.CheckpointManager(config) as manager:
        manager.save(1, {"step": 1}, _state(1))
        assert manager.wait_for_replication(60)
        slow.rename(away)  # the replica's disk is gone: a file where its directory was
        slow.write_text("not a directory")
        manager.save(2, {"step": 2}, _state(2))
        manager.save(3, {"step": 3}, _state(3))
        with pytest.raises(ckpt.ReplicationError, match="failed 3 times"):
            manager.wait_for_replication(60)
        assert manager.replication_status() == {1: "replicated", 2: "local", 3: "local"}
        # keep_local is 1, but neither is replicated: both stay (step 1 went, replicated).
        assert [r.step for r in manager.list_checkpoints()] == [2, 3]
        slow.unlink()
        away.rename(slow)
        manager.save(4, {"step": 4}, _state(4))  # a new commit: the failed are tried again
        assert manager.wait_for_replication(60)
        assert [r.step for r in manager.list_checkpoints()] == [4]
    assert sorted(p.name for p in slow.glob("step_*")) == [f"step_{n}" for n in (1, 2, 3, 4)]
    assert ckpt.verify(slow, deep=True).ok


_DIE_WITH_UPLOADS_QUEUED = textwrap.dedent(
    """
    import json, os, sys, torch
    import ckpt
    manager = ckpt.CheckpointManager(json.loads(sys.argv[1]))
    for step in (1, 2, 3):
        manager.save(step, {"step": step}, {"w": torch.full((100_000,), float(step))})
    os._exit(0)  # the process dies with its uploads queued: no close, no atexit
    """
)


def _die_with_uploads_queued(config: dict[str, Any]) -> set[int]:
    """Run a job that saves steps 1-3 and dies at once; the steps its record replicated."""
    done = subprocess.run(
        [sys.executable, "-c", _DIE_WITH_UPLOADS_QUEUED, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    record = Path(config["checkpoint_dir"], ".ckpt", "replication.json")
    replicated = json.loads(record.read_text())["replicated"] if record.exists() else {}
    return {int(step) for step in replicated}


@pytest.mark.subprocess
def test_a_process_killed_after_a_local_commit_uploads_on_restart(
    replicated: dict[str, Any],
) -> None:
    local = Path(replicated["config"]["checkpoint_dir"])
    assert 3 not in _die_with_uploads_queued(replicated["config"])  # it never got there
    # Every local checkpoint not replicated is still there, whatever keep_local says.
    assert (local / "step_3").is_dir()
    with ckpt.CheckpointManager(replicated["config"]) as manager:
        assert manager.replication_status()[3] in ("local", "uploading")
        assert manager.wait_for_replication(60)
        assert [r.step for r in manager.list_checkpoints()] == [2, 3]
    assert _replica_steps(replicated) == [1, 2, 3]


@pytest.mark.subprocess
def test_a_local_checkpoint_damaged_before_its_upload_is_not_uploaded(
    replicated: dict[str, Any],
) -> None:
    local = Path(replicated["config"]["checkpoint_dir"])
    assert 3 not in _die_with_uploads_queued(replicated["config"])
    state = local / "step_3" / "state.ckpt"
    data = bytearray(state.read_bytes())
    data[100] ^= 1  # bit rot in the local tier before the upload
    state.write_bytes(bytes(data))
    with ckpt.CheckpointManager(replicated["config"]) as manager:
        with pytest.raises(ckpt.ReplicationError, match="step 3") as raised:
            manager.wait_for_replication(60)
        assert "does not match the digest of its record" in str(raised.value)
        assert manager.replication_status()[3] == "local"
        assert 3 in [r.step for r in manager.list_checkpoints()]  # held, not pruned
    assert 3 not in _replica_steps(replicated)
    leftovers = [p for p, _ in walk_files(replicated["storage"], replicated["location"])]
    assert not [p for p in leftovers if "/step_3." in p]  # no attempt, no manifest


# --- restarting from the replica -------------------------------------------------------------


def test_a_deleted_local_tier_resumes_from_the_replica(replicated: dict[str, Any]) -> None:
    local = Path(replicated["config"]["checkpoint_dir"])
    with ckpt.CheckpointManager(replicated["config"]) as manager:
        for step in (1, 2, 3):
            manager.save(step, {"step": step}, _state(step))
        assert manager.wait_for_replication(60)
    for path in sorted(local.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    local.rmdir()
    with ckpt.CheckpointManager(replicated["config"]) as manager:
        latest = manager.get_latest_checkpoint_path()
        assert latest == str(local / "step_3")  # fetched back into the local tier
        state = load_state(latest)
        assert torch.equal(state["w"], _state(3)["w"])
        assert torch.equal(state["b"], _state(3)["b"])
        assert manager.load_training_info(latest) == {"step": 3}
        assert manager.replication_status() == {1: "replicated", 2: "replicated", 3: "replicated"}
        # A fetched-back checkpoint is not uploaded again, and a new save goes on from it.
        manager.save(4, {"step": 4}, _state(4))
        assert manager.wait_for_replication(60)
    assert ckpt.verify(local, deep=True).ok
    assert _replica_steps(replicated) == [2, 3, 4]


def test_a_damaged_replica_is_not_fetched_back(replicated: dict[str, Any], s3_server: Any) -> None:
    local = Path(replicated["config"]["checkpoint_dir"])
    with ckpt.CheckpointManager(replicated["config"]) as manager:
        manager.save(1, {"step": 1}, _state(1))
        assert manager.wait_for_replication(60)
    storage, location = replicated["storage"], replicated["location"]
    manifest = read_manifest(storage, location, 1)
    state = f"{location}/{manifest.attempt}/state.ckpt"
    data = bytearray(storage.read_bytes(state))
    data[200] ^= 1  # rot in the bucket, written past ckpt
    bucket, key = replicated["to"].removeprefix("s3://").split("/", 1)
    s3_server.client().put_object(
        Bucket=bucket, Key=f"{key}/{manifest.attempt}/state.ckpt", Body=bytes(data)
    )
    for path in sorted(local.glob("step_*/*")):
        path.unlink()
    for path in local.glob("step_*"):
        path.rmdir()
    with ckpt.CheckpointManager(replicated["config"]) as manager:
        with pytest.raises(ckpt.ChecksumMismatchError, match=r"replica step 1: state\.ckpt"):
            manager.get_latest_checkpoint_path()
        assert manager.list_checkpoints() == []  # nothing half-fetched was committed
    assert not list(local.glob("tmp_step_*"))


def test_a_reader_finds_the_newest_in_either_tier(replicated: dict[str, Any]) -> None:
    local = Path(replicated["config"]["checkpoint_dir"])
    with ckpt.CheckpointManager(replicated["config"]) as manager:
        for step in (1, 2):
            manager.save(step, {"step": step}, _state(step))
        assert manager.wait_for_replication(60)
    for path in sorted((local / "step_2").iterdir()):
        path.unlink()
    (local / "step_2").rmdir()
    with ckpt.CheckpointManager(replicated["config"], read_only=True) as reader:
        latest = reader.get_latest_checkpoint_path()
        assert latest is not None
        assert latest.startswith(replicated["to"] + "/step_2.")  # read where it is
        assert not (local / "step_2").exists()  # a reader changes nothing


# --- ckpt ls ------------------------------------------------------------------------------


def test_ckpt_ls_shows_both_tiers(
    replicated: dict[str, Any], capsys: Any, monkeypatch: pytest.MonkeyPatch, s3_server: Any
) -> None:
    local = Path(replicated["config"]["checkpoint_dir"])
    with ckpt.CheckpointManager(replicated["config"]) as manager:
        for step in (1, 2, 3):
            manager.save(step, {"step": step}, _state(step))
        assert manager.wait_for_replication(60)
    for name, value in s3_server.env().items():  # the CLI reads credentials from there
        monkeypatch.setenv(name, value)
    # Without --config the record says what was uploaded; the replica is not asked.
    assert cli_main(["ls", str(local)]) == 0
    out = capsys.readouterr().out
    assert "replica" in out.splitlines()[1]
    assert (
        f"replica: {replicated['to']} (as recorded): 2 checkpoints replicated by this "
        "directory's record (not contacted: pass --config CFG to look)"
    ) in out
    config = local.parent / "run.yaml"
    config.write_text(json.dumps(replicated["config"]))
    assert cli_main(["ls", str(local), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"replica: {replicated['to']}: 3 checkpoints replicated (only there: step 1)" in out
    assert cli_main(["ls", str(local), "--config", str(config), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["replication"]["to"] == replicated["to"]
    assert listed["replication"]["contacted"] is True
    assert listed["replication"]["steps"] == {
        "1": "replicated",
        "2": "replicated",
        "3": "replicated",
    }
    assert "secret" not in (local / ".ckpt" / "ranking.json").read_text()


def test_a_replica_on_another_disk(tmp_path: Path) -> None:
    config = {
        "checkpoint_dir": str(tmp_path / "fast"),
        "replicate": {"to": str(tmp_path / "slow"), "keep_local": 1},
    }
    with ckpt.CheckpointManager(config) as manager:
        for step in (1, 2):
            manager.save_async(step, {"step": step}, _state(step))
        assert manager.wait_for_replication(60)
    assert sorted(p.name for p in (tmp_path / "fast").glob("step_*")) == ["step_2"]
    assert sorted(p.name for p in (tmp_path / "slow").glob("step_*")) == ["step_1", "step_2"]
    assert ckpt.verify(tmp_path / "slow", deep=True).ok


# --- a record names places; the command line never acts on them (issue 36 #1, #2, #17, #18) ---


def _disk_replicated(tmp_path: Path, n: int = 5, keep_local: int = 1) -> dict[str, Any]:
    return {
        "checkpoint_dir": str(tmp_path / "local"),
        "fsync": False,
        "retention": {"kind": "latest_n", "n": n},
        "replicate": {"to": str(tmp_path / "replica"), "keep_local": keep_local},
    }


def _steps(directory: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in directory.glob("step_*"))


def test_ckpt_prune_of_a_local_tier_never_touches_its_replica(tmp_path: Path, capsys: Any) -> None:
    config = _disk_replicated(tmp_path)
    replica, away = tmp_path / "replica", tmp_path / "replica-away"
    with ckpt.CheckpointManager(config) as manager:
        for step in range(1, 6):
            manager.save(step, {"step": step}, _state(step))
        assert manager.wait_for_replication(60)
        # Step 6 is committed locally and its upload fails: the run stops there.
        replica.rename(away)
        replica.write_text("not a directory")
        manager.save(6, {"step": 6}, _state(6))
        with pytest.raises(ckpt.ReplicationError):
            manager.wait_for_replication(60)
    replica.unlink()
    away.rename(replica)
    plain = {"checkpoint_dir": config["checkpoint_dir"], "fsync": False}
    before = read_tree(tmp_path / "replica")
    assert cli_main(["prune", str(tmp_path / "local")]) == 0
    capsys.readouterr()
    assert read_tree(tmp_path / "replica") == before  # nothing read there was changed
    assert _steps(tmp_path / "replica") == [1, 2, 3, 4, 5]
    # Step 6 exists nowhere else: held. Step 5 is replicated: keep_local (1) lets it go.
    assert _steps(tmp_path / "local") == [6]
    with ckpt.CheckpointManager(plain, read_only=True) as reader:
        assert reader.replication_status() == {6: "local"}
        assert reader.recorded_replica() == str(tmp_path / "replica")
    with ckpt.CheckpointManager(config) as manager:  # the run again: step 6 goes up
        assert manager.wait_for_replication(60)
    assert _steps(tmp_path / "replica") == [2, 3, 4, 5, 6]


def test_a_crafted_record_naming_another_run_is_never_acted_on(tmp_path: Path, capsys: Any) -> None:
    other = tmp_path / "other"
    with ckpt.CheckpointManager({"checkpoint_dir": str(other), "fsync": False}) as manager:
        for step in (1, 2, 3):
            manager.save(step, {"step": step}, _state(step))
    target = tmp_path / "mine"
    with ckpt.CheckpointManager(
        {"checkpoint_dir": str(target), "fsync": False, "retention": {"kind": "latest_n", "n": 1}}
    ) as manager:
        for step in (7, 8):
            manager.save(step, {"step": step}, _state(step))
    record = target / ".ckpt" / "ranking.json"
    data = json.loads(record.read_text())
    data["retention"]["config"]["replicate"] = {"to": str(other), "keep_local": 1}
    record.write_text(json.dumps(data))
    before = read_tree(other)
    assert cli_main(["prune", str(target)]) == 0
    assert cli_main(["ls", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"replica: {other} (as recorded)" in out
    assert read_tree(other) == before
    assert _steps(other) == [1, 2, 3]


def test_ckpt_ls_of_a_tier_naming_an_unreachable_replica_answers_at_once(
    tmp_path: Path, capsys: Any
) -> None:
    local = tmp_path / "local"
    with ckpt.CheckpointManager({"checkpoint_dir": str(local), "fsync": False}) as manager:
        manager.save(1, {"step": 1}, _state(1))
    record = local / ".ckpt" / "ranking.json"
    data = json.loads(record.read_text())
    data["retention"]["config"]["replicate"] = {"to": "gs://nowhere-bucket/run", "keep_local": 1}
    record.write_text(json.dumps(data))
    started = time.monotonic()
    assert cli_main(["ls", str(local)]) == 0
    assert time.monotonic() - started < 10  # the store named is never contacted
    out = capsys.readouterr().out
    assert "replica: gs://nowhere-bucket/run (as recorded)" in out
    assert "not contacted" in out


def test_the_replica_is_an_ordinary_directory_for_ls_and_prune(tmp_path: Path, capsys: Any) -> None:
    config = _disk_replicated(tmp_path, n=2)
    with ckpt.CheckpointManager(config) as manager:
        for step in (1, 2, 3):
            manager.save(step, {"step": step}, _state(step))
        assert manager.wait_for_replication(60)
    replica = tmp_path / "replica"
    recorded = json.loads((replica / ".ckpt" / "ranking.json").read_text())
    assert "replicate" not in recorded["retention"]["config"]
    assert cli_main(["ls", str(replica)]) == 0
    out = capsys.readouterr().out
    assert "LatestN(n=2)" in out
    assert "retention unknown" not in out
    assert cli_main(["prune", str(replica), "--dry-run"]) == 0
    assert "an older ckpt" not in capsys.readouterr().out


# --- fetch-back writes only what the record lists, inside the run (issue 36 #3, #13) ---------


def _lose_local(local: Path) -> None:
    shutil.rmtree(local)


def test_an_extra_object_in_a_replica_attempt_is_never_fetched(
    replicated: dict[str, Any], s3_server: Any, tmp_path: Path
) -> None:
    local = Path(replicated["config"]["checkpoint_dir"])
    with ckpt.CheckpointManager(replicated["config"]) as manager:
        manager.save(1, {"step": 1}, _state(1))
        assert manager.wait_for_replication(60)
    manifest = read_manifest(replicated["storage"], replicated["location"], 1)
    bucket, key = replicated["to"].removeprefix("s3://").split("/", 1)
    for extra in ("../../../OUTSIDE.txt", "../OUTSIDE.txt", "extra.bin"):
        s3_server.client().put_object(
            Bucket=bucket, Key=f"{key}/{manifest.attempt}/{extra}", Body=b"planted"
        )
    _lose_local(local)
    with ckpt.CheckpointManager(replicated["config"]) as manager:
        latest = manager.get_latest_checkpoint_path()
        assert latest == str(local / "step_1")
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert not [p for p in written if "OUTSIDE" in p or p.endswith("extra.bin")]
    assert ckpt.verify(local, deep=True).ok


def test_a_record_naming_a_path_outside_its_checkpoint_is_refused(tmp_path: Path) -> None:
    config = _disk_replicated(tmp_path, keep_local=1)
    with ckpt.CheckpointManager(config) as manager:
        manager.save(1, {"step": 1}, _state(1))
        assert manager.wait_for_replication(60)
    record = tmp_path / "replica" / "step_1" / ".ckpt-files.json"
    raw = json.loads(record.read_text())
    raw["files"].append({"path": "../../OUTSIDE.txt", "size": 7, "xxh3_128": "0" * 32})
    raw.pop("digest")
    raw["digest"] = self_digest(raw)  # a well-formed record, crafted
    record.write_text(json.dumps(raw))
    _lose_local(tmp_path / "local")
    with ckpt.CheckpointManager(config) as manager:
        with pytest.raises(ckpt.ChecksumMismatchError, match=r"naming '\.\./\.\./OUTSIDE\.txt'"):
            manager.get_latest_checkpoint_path()
        assert manager.list_checkpoints() == []
    assert not list(tmp_path.rglob("OUTSIDE.txt"))
    assert not list((tmp_path / "local").glob("tmp_step_*"))


def test_a_step_without_a_record_is_never_copied_as_verified(tmp_path: Path) -> None:
    config = _disk_replicated(tmp_path, keep_local=1)
    with ckpt.CheckpointManager(config) as manager:
        manager.save(1, {"step": 1}, _state(1))
        assert manager.wait_for_replication(60)
    (tmp_path / "replica" / "step_1" / ".ckpt-files.json").unlink()
    _lose_local(tmp_path / "local")
    with ckpt.CheckpointManager(config) as manager:
        with pytest.raises(ckpt.ChecksumMismatchError, match="has no record of its files"):
            manager.get_latest_checkpoint_path()
        assert manager.list_checkpoints() == []
    # The upload side: a local step without a record is not uploaded either.
    plain = tmp_path / "plain"
    with ckpt.CheckpointManager({"checkpoint_dir": str(plain), "fsync": False}) as manager:
        manager.save(5, {"step": 5}, _state(5))
    (plain / "step_5" / ".ckpt-files.json").unlink()
    config = {**config, "checkpoint_dir": str(plain)}
    with ckpt.CheckpointManager(config) as manager:
        with pytest.raises(ckpt.ReplicationError, match="has no record of its files"):
            manager.wait_for_replication(60)
        assert [r.step for r in manager.list_checkpoints()] == [5]  # held, not lost
    assert not (tmp_path / "replica" / "step_5").exists()


# --- a replica that is the local tier under another name (issue 36 #5) -----------------------


def test_a_replica_that_is_the_local_tier_through_a_link_is_refused(tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (tmp_path / "alias").symlink_to(local, target_is_directory=True)
    with pytest.raises(ValidationError, match=r"`replicate\.to` must be a place apart"):
        ckpt.CheckpointConfig(checkpoint_dir=local, replicate={"to": str(tmp_path / "alias")})
    with pytest.raises(ValidationError, match=r"`replicate\.to` must be a place apart"):
        ckpt.CheckpointConfig(checkpoint_dir="s3://b/run", replicate={"to": "s3a://b/run/"})
    # A link made after the config was checked: refused when the manager opens it.
    later = tmp_path / "later"
    config = ckpt.CheckpointConfig(
        checkpoint_dir=local, fsync=False, replicate={"to": str(later), "keep_local": 1}
    )
    later.symlink_to(local, target_is_directory=True)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"`replicate.to` \(.*later\) resolves to"):
        ckpt.CheckpointManager(config)
    assert time.monotonic() - started < 10
    with ckpt.CheckpointManager({"checkpoint_dir": str(local), "fsync": False}) as manager:
        assert manager.list_checkpoints() == []  # nothing left locked or half-made


# --- what replication_status says is what the configured replica holds (issue 36 #6) ---------


def test_a_new_replica_gets_every_checkpoint_and_an_emptied_one_is_refilled(
    tmp_path: Path,
) -> None:
    config = _disk_replicated(tmp_path, n=5, keep_local=5)
    with ckpt.CheckpointManager(config) as manager:
        for step in (1, 2):
            manager.save(step, {"step": step}, _state(step))
        assert manager.wait_for_replication(60)
    moved = {**config, "replicate": {**config["replicate"], "to": str(tmp_path / "new")}}
    with ckpt.CheckpointManager(moved) as manager:
        assert manager.wait_for_replication(60)
        assert manager.replication_status() == {1: "replicated", 2: "replicated"}
    assert _steps(tmp_path / "new") == [1, 2]
    shutil.rmtree(tmp_path / "new")  # the bucket emptied behind the run's back
    with ckpt.CheckpointManager(moved) as manager:
        assert manager.wait_for_replication(60)  # both uploaded again, not taken as done
        assert manager.replication_status() == {1: "replicated", 2: "replicated"}
    assert _steps(tmp_path / "new") == [1, 2]
    assert ckpt.verify(tmp_path / "new", deep=True).ok


def test_steps_the_replicas_retention_pruned_are_a_state_of_their_own(tmp_path: Path) -> None:
    config = _disk_replicated(tmp_path, n=1, keep_local=3)
    with ckpt.CheckpointManager(config) as manager:
        for step in (1, 2, 3):
            manager.save(step, {"step": step}, _state(step))
        assert manager.wait_for_replication(60)
        assert manager.replication_status() == {1: "pruned", 2: "pruned", 3: "replicated"}
    with ckpt.CheckpointManager(config) as manager:  # and so after a restart: not uploaded
        assert manager.wait_for_replication(60)
        assert manager.replication_status() == {1: "pruned", 2: "pruned", 3: "replicated"}
    assert _steps(tmp_path / "replica") == [3]


# --- a link or an empty directory in a checkpoint is never dropped silently (issue 36 #7) ----


def test_a_link_or_an_empty_directory_in_a_checkpoint_is_named_at_its_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _disk_replicated(tmp_path, keep_local=2)
    (tmp_path / "dataset").mkdir()
    with ckpt.CheckpointManager(config) as manager:
        tmp = manager.init_tmp_checkpoint(1, {"step": 1})
        (tmp / "model.bin").write_bytes(b"weights")
        (tmp / "data").symlink_to(tmp_path / "dataset", target_is_directory=True)
        (tmp / "logs").mkdir()
        with caplog.at_level("WARNING", logger="ckpt"):
            manager.finalize_checkpoint(tmp)
        assert "data (a symbolic link), logs (an empty directory) are no part" in caplog.text
        assert manager.wait_for_replication(60)
    replica = tmp_path / "replica" / "step_1"
    assert (replica / "model.bin").read_bytes() == b"weights"
    assert not (replica / "data").exists()
    assert not (replica / "logs").exists()
    assert sorted(read_files_record_names(tmp_path / "local" / "step_1")) == [
        "model.bin",
        "training_info.json",
    ]


def read_files_record_names(checkpoint: Path) -> list[str]:
    files = read_files_record(ckpt.LocalStorage(), str(checkpoint))
    assert files is not None
    return [f.path for f in files]


# --- best looks at both tiers (issue 36 #19) ---------------------------------------------------


def test_the_best_checkpoint_may_be_in_the_replica_alone_and_is_fetched_back(
    tmp_path: Path,
) -> None:
    config = {
        "checkpoint_dir": str(tmp_path / "local"),
        "fsync": False,
        "metric_name": "val_loss",
        "higher_is_better": False,
        "keep_top_k": 3,
        "replicate": {"to": str(tmp_path / "replica"), "keep_local": 2},
    }
    losses = {1: 0.9, 2: 0.8, 3: 0.3, 4: 0.7, 5: 0.95, 6: 0.9, 7: 0.85}
    with ckpt.CheckpointManager(config) as manager:
        for step, loss in losses.items():
            manager.save(step, {"step": step, "val_loss": loss}, _state(step))
        assert manager.wait_for_replication(60)
        assert _steps(tmp_path / "local") == [6, 7]
        with ckpt.CheckpointManager(config, read_only=True) as reader:
            found = reader.get_best_checkpoint_path()
            assert found is not None
            assert Path(found) == tmp_path / "replica" / "step_3"  # read where it is
        best = manager.get_best_checkpoint_path()
        assert best == str(tmp_path / "local" / "step_3")  # fetched back, verified
        assert manager.load_training_info(best) == {"step": 3, "val_loss": 0.3}
    assert ckpt.verify(tmp_path / "local", deep=True).ok
