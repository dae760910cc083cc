"""Checkpoints on object storage: a real S3 server (moto) through s3fs, and memory://."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import fsspec
import pytest
from upath import UPath

import ckpt
from ckpt.commit import ManifestProtocol, Place
from ckpt.storage import FsspecStorage, join, open_storage

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # botocore's utcnow


@pytest.fixture
def s3(s3_server: Any) -> dict[str, Any]:
    """A config for a run in a fresh bucket, the bucket's name, and the run's storage."""
    bucket = s3_server.new_bucket()
    config = {
        "checkpoint_dir": f"s3://{bucket}/runs/run1",
        "storage_options": s3_server.options(),
        "lease_seconds": 3,
    }
    storage, location = open_storage(config["checkpoint_dir"], config["storage_options"])
    return {"bucket": bucket, "config": config, "storage": storage, "location": location}


def _save(manager: ckpt.CheckpointManager, step: int, metric: float) -> UPath:
    path = manager.init_tmp_checkpoint(step, {"reward": metric})
    assert isinstance(path, UPath)
    with (path / "weights.bin").open("wb") as f:
        f.write(f"weights of {step}".encode())
    manager.finalize_checkpoint(path)
    return path


def test_a_run_on_s3_commits_prunes_and_reopens(s3: dict[str, Any], s3_server: Any) -> None:
    config = {**s3["config"], "metric_name": "reward", "keep_top_k": 2}
    with ckpt.CheckpointManager(config) as manager:
        for step, reward in [(1, 0.1), (2, 0.9), (3, 0.5), (4, 0.2)]:
            _save(manager, step, reward)
        assert [r.step for r in manager.list_checkpoints()] == [2, 3, 4]
        best = manager.get_best_checkpoint_path()
        assert str(best).startswith(f"s3://{s3['bucket']}/runs/run1/step_2.")
    keys = s3_server.keys(s3["bucket"])
    manifests = sorted(k for k in keys if k.endswith(".manifest.json"))
    assert manifests == [f"runs/run1/step_{n}.manifest.json" for n in (2, 3, 4)]
    # Pruned steps left no object behind, and each manifest lists its files by ETag.
    assert not [k for k in keys if k.startswith(("runs/run1/step_1.", "runs/run1/step_1/"))]
    manifest = json.loads(keys["runs/run1/step_2.manifest.json"])
    assert {f["path"] for f in manifest["files"]} == {"training_info.json", "weights.bin"}
    assert all("etag" in f and "sha256" not in f for f in manifest["files"])
    assert json.loads(manifest["training_info"]) == {"reward": 0.9}
    # A cold start (a new process would do the same) sees exactly what was committed.
    with ckpt.CheckpointManager(config, read_only=True) as reader:
        assert [r.step for r in reader.list_checkpoints()] == [2, 3, 4]
        latest = reader.get_latest_checkpoint_path()
        assert latest is not None
        assert (
            UPath(latest, **s3_server.options()) / "weights.bin"
        ).read_bytes() == b"weights of 4"
        assert reader.load_training_info(latest) == {"reward": 0.2}


def test_memory_urls_work_as_a_store(tmp_path: Path) -> None:
    url = f"memory://ckpt-tests/{tmp_path.name}"
    with ckpt.CheckpointManager({"checkpoint_dir": url, "keep_top_k": 1}) as manager:
        assert isinstance(manager._dir.storage, FsspecStorage)
        _save(manager, 1, 0.0)
        _save(manager, 2, 0.0)
        assert [r.step for r in manager.list_checkpoints()] == [2]
    memory = fsspec.filesystem("memory")
    names = sorted(
        p.rsplit("/", 1)[-1] for p in memory.ls(f"/ckpt-tests/{tmp_path.name}", detail=False)
    )
    assert names[0] == ".ckpt"
    assert names[1].startswith("step_2.")
    assert names[2] == "step_2.manifest.json"
    assert len(names) == 3


def test_overwriting_a_step_replaces_its_manifest_and_drops_the_old_attempt(
    s3: dict[str, Any], s3_server: Any
) -> None:
    with ckpt.CheckpointManager(s3["config"]) as manager:
        first = _save(manager, 5, 1.0)
        second = _save(manager, 5, 2.0)
        assert first != second
        (record,) = manager.list_checkpoints()
        assert record.info == {"reward": 2.0}
    keys = s3_server.keys(s3["bucket"])
    assert not [k for k in keys if k.startswith(f"runs/run1/{first.name}/")]
    assert f"runs/run1/{second.name}/weights.bin" in keys


def test_torch_state_streams_to_s3_and_back(s3: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    from ckpt.torch import load_state

    state = {"w": torch.arange(3_000_000, dtype=torch.float32), "step": 7}
    with ckpt.CheckpointManager(s3["config"]) as manager:
        path = manager.save(1, {"reward": 1.0}, state)
        assert isinstance(path, UPath)
        manager.save_async(2, {"reward": 2.0}, {"w": state["w"] * 2, "step": 8})
        manager.wait_until_finished()
        latest = manager.get_latest_checkpoint_path()
    back = load_state(path)
    assert back["step"] == 7
    assert torch.equal(back["w"], state["w"])
    assert latest is not None
    assert torch.equal(
        load_state(UPath(latest, **s3["config"]["storage_options"]))["w"], state["w"] * 2
    )


def test_a_failed_streamed_write_leaves_no_object(s3: dict[str, Any]) -> None:
    storage, location = s3["storage"], s3["location"]
    target = join(location, "big.bin")

    def fail_part_way() -> None:
        with storage.open_write(target, durable=True) as f:
            f.write(b"x" * (40 << 20))  # parts of it are uploaded already
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_part_way()
    assert storage.entry(target) is None
    with storage.open_write(target, durable=True) as f:
        f.write(b"y" * (40 << 20))  # one write: uploaded a part at a time all the same
    written = storage.entry(target)
    assert written is not None
    assert written.size == 40 << 20
    assert written.version.endswith('-3"')  # a multipart ETag: 3 parts of at most 16 MiB


def test_a_second_writer_is_refused_while_the_lease_is_renewed(s3: dict[str, Any]) -> None:
    with ckpt.CheckpointManager(s3["config"]) as manager:
        _save(manager, 1, 0.0)
        started = time.monotonic()
        code = _second_writer(s3, "")
        assert code.returncode == 3, code.stderr
        assert "holds the lease" in code.stdout
        assert "renewing it" in code.stdout
        # It learns the writer is live from one renewal: within a lease, not after it.
        assert time.monotonic() - started < s3["config"]["lease_seconds"] + 5
        _save(manager, 2, 0.0)  # the first writer is undisturbed
    # Released on close: a new writer takes it at once.
    assert _second_writer(s3, "").returncode == 0


_WRITER = """
import json, sys
import ckpt
config = json.loads(sys.argv[1])
try:
    manager = ckpt.CheckpointManager(config)
except ckpt.CheckpointDirLockedError as exc:
    print(exc)
    sys.exit(3)
{body}
manager.close()
"""


def _second_writer(s3: dict[str, Any], body: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(_WRITER).format(body=body)
    return subprocess.run(
        [sys.executable, "-c", script, json.dumps(s3["config"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )


_WAITING = (
    r"waiting up to 3 s for the lease \S+/\.ckpt/lock held by pid (\d+) on \S+ "
    r"\(last renewed at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC by its clock\)"
)


def test_a_crashed_writer_blocks_a_restart_for_at_most_its_lease_and_says_so(
    s3: dict[str, Any], s3_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crash = "import os; print(os.getpid(), flush=True); os._exit(9)"  # dies holding the lease
    crashed = _second_writer(s3, crash)
    assert crashed.returncode == 9, crashed.stderr
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ckpt"):
        with pytest.warns(ckpt.LeaseWaitWarning) as warned:
            manager = ckpt.CheckpointManager(s3["config"])
        waited = time.monotonic() - started
        with manager:
            _save(manager, 1, 0.0)
    assert waited <= s3["config"]["lease_seconds"] + 3
    # The wait is said at WARNING, naming the dead holder, and warned, for a user who
    # configured no logging, at the line that opened the manager.
    (said,) = [r for r in caplog.records if r.getMessage().startswith("waiting up to")]
    assert said.levelname == "WARNING"
    holder = re.match(_WAITING, said.getMessage())
    assert holder is not None, said.getMessage()
    assert holder.group(1) == crashed.stdout.strip()
    (warning,) = [w for w in warned if w.category is ckpt.LeaseWaitWarning]
    assert str(warning.message) == said.getMessage()
    assert warning.filename == __file__
    # The CLI shows it too, before it does what it was asked.
    crashed = _second_writer(s3, crash)
    config = tmp_path / "ckpt.yaml"
    config.write_text(f"checkpoint_dir: {s3['config']['checkpoint_dir']}\nlease_seconds: 3\n")
    pruned = subprocess.run(
        [sys.executable, "-m", "ckpt", "prune", s3["config"]["checkpoint_dir"], "--config", config],
        capture_output=True,
        text=True,
        env={**os.environ, **s3_server.env()},
        timeout=120,
        check=False,
    )
    assert pruned.returncode == 0, pruned.stderr
    holder = re.search(_WAITING, pruned.stderr)
    assert holder is not None, pruned.stderr
    assert holder.group(1) == crashed.stdout.strip()


def test_a_writer_whose_lease_was_taken_over_commits_nothing(s3: dict[str, Any]) -> None:
    storage, location = s3["storage"], s3["location"]
    lease = join(location, ".ckpt", "lock")
    with ckpt.CheckpointManager(s3["config"]) as manager:
        path = manager.init_tmp_checkpoint(1, {"reward": 0.0})
        storage.replace_file(lease, b'{"format": 1, "owner": "thief"}\n', durable=True)
        deadline = time.monotonic() + 10
        with pytest.raises(ckpt.LeaseLostError, match="another writer took it over"):  # noqa: PT012
            while time.monotonic() < deadline:
                manager._dir.check_writer()
                time.sleep(0.2)
        with pytest.raises(ckpt.LeaseLostError):
            manager.finalize_checkpoint(path)
        assert manager.list_checkpoints() == []
        manager._dir.shared.lock = None  # not ours to release any more
    assert storage.read_bytes(lease) == b'{"format": 1, "owner": "thief"}\n'


_RACE = """
import json, sys, time
from ckpt.commit import ManifestProtocol, Place
from ckpt.storage import join, open_storage
from ckpt import CommitConflictError
config = json.loads(sys.argv[1])
storage, location = open_storage(config["checkpoint_dir"], config["storage_options"])
place = Place(storage, location, durable=True)
protocol = ManifestProtocol()
attempt = protocol.prepare(place, 7)
storage.write_bytes(join(attempt, "training_info.json"), b'{"who": %(who)d}')
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
try:
    protocol.commit(place, attempt, 7, existing=None)
except CommitConflictError as exc:
    print("lost:", exc)
    sys.exit(4)
print("won")
"""


def test_two_processes_racing_to_commit_a_step_one_wins(s3: dict[str, Any]) -> None:
    start = str(time.time() + 3)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE % {"who": who}, json.dumps(s3["config"]), start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in (1, 2)
    ]
    outcomes = [(*racer.communicate(timeout=120), racer.returncode) for racer in racers]
    codes = sorted(code for _, _, code in outcomes)
    assert codes == [0, 4], outcomes
    loser = next(out for out, _, code in outcomes if code == 4)
    assert "another writer committed it first" in loser
    winner = 1 + [code for _, _, code in outcomes].index(0)
    with ckpt.CheckpointManager(s3["config"], read_only=True) as reader:
        (record,) = reader.list_checkpoints()
        assert record.info == {"who": winner}


def test_recovery_removes_only_old_attempts_of_its_own_layout(
    s3: dict[str, Any], s3_server: Any
) -> None:
    config = {**s3["config"], "attempt_grace_seconds": 2}
    storage, location = s3["storage"], s3["location"]
    with ckpt.CheckpointManager(config) as manager:
        _save(manager, 1, 0.0)
    storage.write_bytes(join(location, "step_2.aaaaaaaaaaaa", "training_info.json"), b"{}")
    storage.write_bytes(join(location, "notes.txt"), b"mine")
    storage.write_bytes(join(location, "step_3.not-an-attempt", "x"), b"mine")
    # An attempt's name, but no training_info.json (ckpt writes it first): not ckpt's.
    storage.write_bytes(join(location, "step_4.bbbbbbbbbbbb", "x"), b"mine")
    with ckpt.CheckpointManager(config) as manager:
        assert manager.recovery == ()  # too young: it may be another process's save
    time.sleep(2.5)
    with ckpt.CheckpointManager(config) as manager:
        (action,) = manager.recovery
        assert action.kind == "removed_temporary"
        assert action.path.name == "step_2.aaaaaaaaaaaa"
        assert [r.step for r in manager.list_checkpoints()] == [1]
    keys = s3_server.keys(s3["bucket"])
    assert keys["runs/run1/notes.txt"] == b"mine"
    assert keys["runs/run1/step_3.not-an-attempt/x"] == b"mine"
    assert keys["runs/run1/step_4.bbbbbbbbbbbb/x"] == b"mine"
    assert not [k for k in keys if "step_2." in k]


def test_verify_trusts_manifests_and_finds_changed_objects(
    s3: dict[str, Any], s3_server: Any
) -> None:
    with ckpt.CheckpointManager(s3["config"]) as manager:
        first = _save(manager, 1, 0.0)
        second = _save(manager, 2, 0.0)
    assert ckpt.verify(s3["config"]["checkpoint_dir"], s3["config"]).ok
    client = s3_server.client()
    client.delete_object(Bucket=s3["bucket"], Key=f"runs/run1/{first.name}/weights.bin")
    # Same size, other bytes: only the ETag tells.
    client.put_object(
        Bucket=s3["bucket"], Key=f"runs/run1/{second.name}/weights.bin", Body=b"weights of 9"
    )
    report = ckpt.verify(s3["config"]["checkpoint_dir"], s3["config"])
    messages = {p.code: [] for p in report.problems}
    for problem in report.problems:
        messages[problem.code].append(problem.message)
    assert not report.ok
    (missing, rewritten) = sorted(messages["broken_manifest"])
    assert "missing weights.bin" in missing
    assert "step 1 is damaged" in missing
    assert "another ETag: weights.bin" in rewritten


def test_the_cli_takes_an_s3_url(s3: dict[str, Any], s3_server: Any, tmp_path: Path) -> None:
    with ckpt.CheckpointManager({**s3["config"], "metric_name": "reward"}) as manager:
        for step, reward in [(1, 0.3), (2, 0.8), (3, 0.1)]:
            _save(manager, step, reward)
    url = s3["config"]["checkpoint_dir"]
    config = tmp_path / "ckpt.yaml"
    config.write_text(f"checkpoint_dir: {url}\nmetric_name: reward\nkeep_top_k: 1\n")
    env = {**os.environ, **s3_server.env()}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ckpt", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    listing = cli("ls", url)
    assert listing.returncode == 0, listing.stderr
    assert "3 checkpoints" in listing.stdout
    assert " stored; " in listing.stdout.splitlines()[0]  # not "on disk": it is a store
    best = cli("best", url)
    assert best.returncode == 0, best.stderr
    assert best.stdout.strip().startswith(f"{url}/step_2."), best
    latest = cli("latest", url)
    assert latest.stdout.strip().startswith(f"{url}/step_3."), latest
    assert cli("check", url).returncode == 0
    pinned = cli("pin", url, "1")
    assert pinned.returncode == 0, pinned.stderr
    (printed,) = re.findall(r"pinned step 1: (\S+)", pinned.stdout)
    assert printed.startswith(f"{url}/step_1.")  # the real attempt, not a step_1 that is not
    prefix = printed.removeprefix(f"s3://{s3['bucket']}/") + "/"
    assert any(key.startswith(prefix) for key in s3_server.keys(s3["bucket"]))
    pruned = cli("prune", url, "--config", str(config))
    assert pruned.returncode == 0, pruned.stderr
    with ckpt.CheckpointManager(s3["config"], read_only=True) as reader:
        assert [(r.step, r.pinned) for r in reader.list_checkpoints()] == [
            (1, True),
            (2, False),
            (3, False),
        ]
    missing = cli("ls", f"s3://{s3['bucket']}/nothing-here")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


def test_a_bucket_root_is_refused() -> None:
    with pytest.raises(ValueError, match=r"root of a bucket.*s3://b/runs/run1"):
        ckpt.load_config({"checkpoint_dir": "s3://b"})


def test_a_store_without_conditional_writes_refuses_a_writer(tmp_path: Path) -> None:
    memory = fsspec.filesystem("memory")
    memory.pipe(f"/plain/{tmp_path.name}/x", b"")
    plain = fsspec.filesystem("dir", path=f"/plain/{tmp_path.name}", fs=memory)
    storage = FsspecStorage(plain)
    assert not storage.capabilities.conditional_replace
    with pytest.raises(ckpt.CheckpointError, match="offers no conditional writes"):
        ckpt.CheckpointManager({"checkpoint_dir": "/run"}, storage=storage)
    with ckpt.CheckpointManager({"checkpoint_dir": "/run"}, storage=storage, read_only=True) as r:
        assert r.list_checkpoints() == []


def test_the_manifest_protocol_conflicts_rather_than_overwrite(s3: dict[str, Any]) -> None:
    storage, location = s3["storage"], s3["location"]
    place = Place(storage, location, durable=True)
    protocol = ManifestProtocol()
    attempts = [protocol.prepare(place, 1) for _ in range(3)]
    for attempt in attempts:
        storage.write_bytes(join(attempt, "training_info.json"), b"{}")
    done = protocol.commit(place, attempts[0], 1, existing=None)
    with pytest.raises(ckpt.CommitConflictError):
        protocol.commit(place, attempts[1], 1, existing=None)
    replaced = protocol.commit(place, attempts[2], 1, existing=done)
    with pytest.raises(ckpt.CommitConflictError):  # `done` is no longer what is there
        protocol.commit(place, attempts[1], 1, existing=done)
    assert replaced.path == attempts[2]


def test_lease_renewal_keeps_a_slow_save_alive(s3: dict[str, Any]) -> None:
    with ckpt.CheckpointManager(s3["config"]) as manager:
        path = manager.init_tmp_checkpoint(1, {"reward": 0.0})
        stop = threading.Event()
        stop.wait(2 * s3["config"]["lease_seconds"])  # longer than the lease itself
        manager.finalize_checkpoint(path)
        assert [r.step for r in manager.list_checkpoints()] == [1]


def test_a_cold_start_reads_the_catalog_not_every_manifest(
    s3: dict[str, Any], s3_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    with ckpt.CheckpointManager(s3["config"]) as manager:
        for step in range(20):
            _save(manager, step, float(step))
    catalog = json.loads(s3_server.keys(s3["bucket"])["runs/run1/.ckpt/catalog.json"])
    assert len(catalog["manifests"]) == 20
    # Another writer overwrites step 3 behind the catalog's back.
    storage, location = s3["storage"], s3["location"]
    place = Place(storage, location, durable=True)
    protocol = ManifestProtocol()
    attempt = protocol.prepare(place, 3)
    storage.write_bytes(join(attempt, "training_info.json"), b'{"reward": 99.0}')
    from ckpt.commit import directory as commits

    entries = {e.name: e for e in storage.list_dir(location)}
    found, _ = commits.committed(storage, location, entries)
    protocol.commit(place, attempt, 3, existing=found[3])

    reads: list[str] = []
    real = FsspecStorage.read_bytes

    def counting(self: FsspecStorage, path: str, **kwargs: Any) -> bytes:
        reads.append(path.rsplit("/", 1)[-1])
        return real(self, path, **kwargs)

    monkeypatch.setattr(FsspecStorage, "read_bytes", counting)
    with ckpt.CheckpointManager(s3["config"]) as manager:
        infos = {r.step: r.info["reward"] for r in manager.list_checkpoints()}
    assert infos == {**{step: float(step) for step in range(20)}, 3: 99.0}
    assert [name for name in reads if name.endswith(".manifest.json")] == ["step_3.manifest.json"]
    # A damaged catalog costs reads, never a wrong answer.
    storage.replace_file(join(location, ".ckpt", "catalog.json"), b"{not json", durable=True)
    reads.clear()
    with ckpt.CheckpointManager(s3["config"]) as manager:
        assert {r.step: r.info["reward"] for r in manager.list_checkpoints()} == infos
    assert len([name for name in reads if name.endswith(".manifest.json")]) == 20
    assert "ignoring the catalog" in caplog.text


def test_an_empty_object_reads_as_empty(s3: dict[str, Any]) -> None:
    storage, location = s3["storage"], s3["location"]
    storage.write_bytes(join(location, "empty"), b"")
    assert storage.read_bytes(join(location, "empty")) == b""
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(join(location, "absent"))


def test_url_configs_are_checked_and_keep_their_secrets(tmp_path: Path) -> None:
    local = ckpt.load_config({"checkpoint_dir": f"file://{tmp_path}/run"})
    assert local.checkpoint_dir == tmp_path / "run"  # local disk, with its guarantees
    with pytest.raises(ValueError, match="root of a bucket"):
        ckpt.load_config({"checkpoint_dir": "memory://"})
    config = ckpt.load_config(
        {"checkpoint_dir": "s3://b/run", "storage_options": {"secret": "hunter2"}}
    )
    assert "hunter2" not in repr(config)
    with pytest.raises(ValueError, match="nosuch"):
        ckpt.CheckpointManager({"checkpoint_dir": "nosuch://bucket/run"})


@pytest.mark.parametrize("url", ["s3://AKIAKEY:SECRETVALUE@bucket/run", "memory://AKIAKEY@b/run"])
def test_credentials_in_a_url_are_refused_and_never_shown(
    url: str, tmp_path: Path, s3_server: Any
) -> None:
    scheme, rest = url.split("://", 1)
    shown = f"{scheme}://***@{rest.split('@', 1)[1]}"
    attempts = [
        lambda: ckpt.CheckpointManager({"checkpoint_dir": url}),
        lambda: ckpt.load_config({"checkpoint_dir": url}),
        lambda: ckpt.verify(url),
        lambda: ckpt.mark_written(f"{url}/step_1.0123456789ab", "w"),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError, match="carries credentials in the URL") as raised:
            attempt()
        assert "AKIAKEY" not in str(raised.value)
        assert "SECRETVALUE" not in str(raised.value)
        assert shown in str(raised.value)
        assert "storage_options" in str(raised.value)
    config = tmp_path / "ckpt.yaml"
    config.write_text(f"checkpoint_dir: {url}\n")
    for args in (["ls", url], ["check", url], ["config", "validate", str(config)]):
        done = subprocess.run(
            [sys.executable, "-m", "ckpt", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **s3_server.env()},
            timeout=120,
            check=False,
        )
        assert done.returncode != 0, args
        assert "AKIAKEY" not in done.stderr + done.stdout, args
        assert shown in done.stderr, (args, done.stderr)


def test_a_step_prefix_on_a_store_is_never_a_checkpoint_nor_removed(
    s3: dict[str, Any], s3_server: Any
) -> None:
    storage, location = s3["storage"], s3["location"]
    # Someone's copy of a NeMo RL directory: step_N/ with a readable training info.
    for step in (3, 4):
        storage.write_bytes(join(location, f"step_{step}", "training_info.json"), b'{"x": 1}')
    with ckpt.CheckpointManager(s3["config"]) as manager:
        assert manager.list_checkpoints() == []  # only manifests make checkpoints here
        _save(manager, 3, 1.0)  # nothing is in the way of a manifest
    with ckpt.CheckpointManager(s3["config"]) as manager:  # recovery beside the manifest
        assert manager.recovery == ()
        assert [r.step for r in manager.list_checkpoints()] == [3]
    keys = s3_server.keys(s3["bucket"])
    assert keys["runs/run1/step_3/training_info.json"] == b'{"x": 1}'
    assert keys["runs/run1/step_4/training_info.json"] == b'{"x": 1}'


@pytest.mark.parametrize("store", ["s3", "memory"])
def test_a_manifest_whose_attempt_is_gone_is_no_checkpoint_on_any_store(
    s3_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, store: str
) -> None:
    """Every object of step 2's attempt removed outside ckpt (a lifecycle rule, an rm)."""
    if store == "s3":
        url = f"s3://{s3_server.new_bucket()}/runs/run1"
        options: dict[str, Any] = dict(s3_server.options())
    else:
        url, options = f"memory://ckpt-tests/{tmp_path.name}", {}
    config = {"checkpoint_dir": url, "storage_options": options, "metric_name": "reward"}
    with ckpt.CheckpointManager({**config, "lease_seconds": 3}) as manager:
        first = _save(manager, 1, 0.1)
        second = _save(manager, 2, 0.9)
    fs = UPath(url, **options).fs
    fs.rm(str(UPath(second, **options).path), recursive=True)
    fs.invalidate_cache()
    manifest = f"{url}/step_2.manifest.json"
    assert UPath(manifest, **options).exists()
    with (
        caplog.at_level(logging.WARNING, logger="ckpt"),
        ckpt.CheckpointManager(config, read_only=True) as reader,
    ):
        assert [r.step for r in reader.list_checkpoints()] == [1]
        assert str(reader.get_latest_checkpoint_path()) == str(first)
        assert str(reader.get_best_checkpoint_path()) == str(first)
    assert "step_2.manifest.json names step_2." in caplog.text
    assert "missing" in caplog.text
    report = ckpt.verify(url, storage_options=options)
    assert [p.code for p in report.errors] == ["broken_manifest"]
    # A writer's recovery removes the manifest that names nothing, and says so.
    with ckpt.CheckpointManager({**config, "lease_seconds": 3}) as writer:
        assert [a.kind for a in writer.recovery] == ["removed_broken_manifest"]
        assert [r.step for r in writer.list_checkpoints()] == [1]
        assert str(writer.get_latest_checkpoint_path()) == str(first)
    assert not UPath(manifest, **options).exists()
    assert ckpt.verify(url, storage_options=options).ok


def test_the_readmes_resume_loop_runs_unchanged_on_s3(s3: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    (loop,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "resume" in b]
    here = '"checkpoint_dir": "results/run1",'
    assert here in loop
    options = s3["config"]["storage_options"]
    on_s3 = loop.replace(
        here,
        f'"checkpoint_dir": {s3["config"]["checkpoint_dir"]!r}, "storage_options": {options!r},',
    )
    model = torch.nn.Linear(4, 1)

    def train_one_step(module: Any) -> float:
        return float(module.weight.detach().sum())

    first: dict[str, Any] = {"model": model, "train_one_step": train_one_step}
    exec(compile(on_s3, "<README loop>", "exec"), first)  # a fresh run, then a restart
    best = first["best"]
    assert isinstance(best, str)  # NeMo RL's type, which also joins with `/`
    assert isinstance(best / "model.pt", UPath)
    assert (best / "model.pt").parent == best.path
    with torch.no_grad():
        model.weight.add_(1.0)  # the restart must restore what was saved, not keep this
    second: dict[str, Any] = {"model": model, "train_one_step": train_one_step}
    exec(compile(on_s3, "<README loop>", "exec"), second)
    with ckpt.CheckpointManager(s3["config"], read_only=True) as reader:
        assert [r.step for r in reader.list_checkpoints()] == [700, 800, 900]
        latest = reader.get_latest_checkpoint_path()
    assert latest is not None
    assert second["start"] == 900 + 1  # resumed after the latest
    with (latest / "model.pt").open("rb") as f:
        assert torch.equal(torch.load(f)["weight"], model.weight)


@pytest.mark.torch
def test_the_path_the_manager_returns_carries_its_store_to_load_state(
    s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from ckpt.torch import load_state

    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)  # only storage_options reach the server
    with ckpt.CheckpointManager(s3["config"]) as manager:
        manager.save(1, {"step": 1}, {"w": torch.full((4,), 7.0)})
        latest = manager.get_latest_checkpoint_path()
        best = manager.get_best_checkpoint_path()
    assert latest is not None
    assert best is not None
    assert torch.equal(load_state(latest)["w"], torch.full((4,), 7.0))  # no `/ ""` needed
    assert torch.equal(load_state(best)["w"], torch.full((4,), 7.0))
