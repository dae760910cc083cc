"""End-to-end digests: every file of every kind of checkpoint is hashed at its commit, a
deep check finds any flipped byte or cut file, and best/latest skip what it found.

The detection tests damage each file of a checkpoint in turn (one byte flipped in its
middle, then its last byte cut), run ``verify(deep=True)``, and restore it: every
damage must be reported, naming the file, and the restored directory must check clean.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest

import ckpt
from ckpt.storage import _digest
from ckpt.storage._digest import hash_file

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).parent))

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

Files = dict[str, tuple[Callable[[], bytes], Callable[[bytes], None]]]


def _local_files(root: Path) -> Files:
    """Every file of the checkpoints under ``root`` (not ``.ckpt/``), by relative path."""
    found: Files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(".ckpt/"):
            found[rel] = (path.read_bytes, path.write_bytes)
    return found


def _s3_files(url: str, options: dict[str, Any]) -> Files:
    fs = fsspec.filesystem("s3", **options)
    prefix = url.removeprefix("s3://").rstrip("/") + "/"
    found: Files = {}
    for key in sorted(fs.find(prefix)):
        rel = key.removeprefix(prefix)
        if rel.startswith(".ckpt/"):
            continue

        def read(key: str = key) -> bytes:
            return bytes(fs.cat_file(key))

        def write(data: bytes, key: str = key) -> None:
            fs.pipe_file(key, data)

        found[rel] = (read, write)
    return found


def _reported(report: ckpt.VerifyReport, rel: str) -> bool:
    """Whether an error of ``report`` names the file ``rel`` (or names it in its step)."""
    holder, _, name = rel.rpartition("/")
    return any(
        str(p.path).endswith(rel) or (holder and str(p.path).endswith(holder) and name in p.message)
        for p in report.errors
    )


def assert_every_damage_is_reported(
    directory: str | Path, files: Files, **options: Any
) -> dict[str, int]:
    """Flip a byte of, then cut, each file in turn; each must be reported. Counts of each."""
    assert ckpt.verify(directory, deep=True, **options).ok
    counts = {"flipped": 0, "cut": 0}
    for rel, (read, write) in files.items():
        data = read()
        assert data, f"{rel} is empty: nothing to damage"
        middle = len(data) // 2
        damaged = {
            "flipped": data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :],
            "cut": data[:-1],
        }
        for how, bad in damaged.items():
            write(bad)
            try:
                report = ckpt.verify(directory, deep=True, **options)
            finally:
                write(data)
            assert _reported(report, rel), (how, rel, report.problems)
            counts[how] += 1
    clean = ckpt.verify(directory, deep=True, **options)
    assert clean.ok, clean.problems
    return counts


def _save_run(config: dict[str, Any]) -> None:
    with ckpt.CheckpointManager(
        {"keep_top_k": 2, "metric_name": "loss", "higher_is_better": False, **config}
    ) as manager:
        for step, loss in [(1, 0.5), (2, 0.3), (3, 0.4)]:
            manager.save(step, {"loss": loss}, {"w": torch.arange(100.0) * step, "step": step})
        with manager.checkpoint(4, {"loss": 0.9}) as path:  # files the loop writes itself
            (path / "extra.bin").write_bytes(b"written by the loop " * 50)


@pytest.mark.parametrize("protocol", ["rename", "manifest"])
def test_every_damaged_file_of_a_local_checkpoint_is_reported(
    tmp_path: Path, protocol: str
) -> None:
    _save_run({"checkpoint_dir": str(tmp_path), "commit_protocol": protocol})
    files = _local_files(tmp_path)
    if protocol == "rename":
        assert "step_2/.ckpt-files.json" in files  # the record is damaged in turn too
    else:
        assert "step_2.manifest.json" in files
    counts = assert_every_damage_is_reported(tmp_path, files)
    assert counts == {"flipped": len(files), "cut": len(files)}
    assert len(files) >= 9


def test_every_damaged_file_of_a_checkpoint_on_s3_is_reported(s3_server: Any) -> None:
    url = f"s3://{s3_server.new_bucket()}/runs/run1"
    options = s3_server.options()
    _save_run({"checkpoint_dir": url, "storage_options": options, "lease_seconds": 5})
    files = _s3_files(url, options)
    assert any(rel.endswith(".manifest.json") for rel in files)
    counts = assert_every_damage_is_reported(url, files, storage_options=options)
    assert counts["flipped"] == counts["cut"] == len(files) >= 9


def test_every_damaged_part_of_a_two_rank_checkpoint_is_reported(tmp_path: Path) -> None:
    from test_distributed import run_job

    directory = tmp_path / "ckpts"
    run_job("lifecycle", directory, tmp_path / "out", 2)
    files = _local_files(directory)
    assert "step_5/state.rank00001-of-00002.ckpt" in files  # rank 1's, hashed by rank 1
    assert "step_6/part-1.txt" in files  # one a rank wrote itself, read at the commit
    assert_every_damage_is_reported(directory, files)


def test_every_damaged_file_of_a_lightning_checkpoint_is_reported(tmp_path: Path) -> None:
    import lightning_job

    lightning_job.fit(tmp_path, 3)
    files = _local_files(tmp_path)
    assert any(rel.endswith(".ckpt") and "/.ckpt" not in rel for rel in files)
    assert len(files) >= 6  # two kept checkpoints: Lightning's file, info, record
    assert_every_damage_is_reported(tmp_path, files)
    # Found damaged, the latest is neither `last` nor `best` for a new callback.
    from ckpt.lightning import ModelCheckpoint

    before = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    last = Path(before.last_model_path)
    _flip(last)
    assert not ckpt.verify(tmp_path, deep=True).ok
    after = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    assert after.last_model_path not in ("", str(last))
    assert after.best_model_path not in ("", str(last))


def test_every_damaged_file_of_a_hf_checkpoint_is_reported(tmp_path: Path) -> None:
    import hf_job

    hf_job.train(tmp_path, hf_job.EVERY * 3)
    files = _local_files(tmp_path)
    assert any(rel.endswith("model.safetensors") for rel in files)
    assert len(files) >= 16  # two kept checkpoints of the trainer's six files each, and ckpt's
    assert_every_damage_is_reported(tmp_path, files)
    # Found damaged, the latest is no longer what a resume starts from.
    from ckpt.hf import best_checkpoint, latest_checkpoint

    latest = latest_checkpoint(tmp_path)
    assert latest is not None
    _flip(Path(latest) / "model.safetensors")
    assert not ckpt.verify(tmp_path, deep=True).ok
    assert latest_checkpoint(tmp_path) not in (None, latest)
    assert best_checkpoint(tmp_path) != latest


# --- what is recorded, and what is read to record it ---------------------------------


@pytest.fixture
def read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files read to hash them, in order."""
    names: list[str] = []
    real = _digest.hash_file

    def counting(storage: Any, path: str) -> tuple[int, str]:
        names.append(path.rsplit("/", 1)[-1])
        return real(storage, path)

    monkeypatch.setattr(_digest, "hash_file", counting)
    return names


def test_files_ckpt_wrote_are_not_read_back_and_the_loops_are_read_once(
    tmp_path: Path, read: list[str]
) -> None:
    with ckpt.CheckpointManager({"checkpoint_dir": str(tmp_path)}) as manager:
        manager.save(1, {"loss": 1.0}, {"w": torch.ones(1000)})
        with manager.checkpoint(2, {"loss": 1.0}) as path:
            ckpt.torch.save_state(path, {"w": torch.zeros(10)})  # the NeMo RL way
            (path / "loop.bin").write_bytes(b"x" * 1000)
    assert read == ["loop.bin"]  # the training info's bytes the commit read anyway
    record = json.loads((tmp_path / "step_2" / ".ckpt-files.json").read_text())
    listed = {f["path"]: f for f in record["files"]}
    assert sorted(listed) == ["loop.bin", "state.ckpt", "training_info.json"]
    for name, entry in listed.items():
        size, digest = hash_file(ckpt.LocalStorage(), str(tmp_path / "step_2" / name))
        assert (entry["size"], entry["xxh3_128"]) == (size, digest)


def test_a_file_rewritten_after_ckpt_wrote_it_is_read_again(tmp_path: Path) -> None:
    manager = ckpt.CheckpointManager({"checkpoint_dir": str(tmp_path)})
    with manager, manager.checkpoint(1, {}) as path:
        ckpt.torch.save_state(path, {"w": torch.zeros(10)})
        ckpt.torch.save_state(path, {"w": torch.ones(10)})  # same size, new bytes
        state = path / "state.ckpt"
        state.write_bytes(state.read_bytes() + b"!")  # changed by hand: another version
    assert ckpt.verify(tmp_path, deep=True).ok


# --- what a deep check remembers ---------------------------------------------------------


def _flip(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))


def test_best_and_latest_skip_what_a_deep_check_found_damaged(tmp_path: Path) -> None:
    _save_run({"checkpoint_dir": str(tmp_path)})  # keeps 2 (0.3) and 3 (0.4), and 4
    assert not ckpt.verify(tmp_path).problems  # no read, no record: nothing is known
    _flip(tmp_path / "step_2" / "state.ckpt")
    _flip(tmp_path / "step_4" / "extra.bin")
    config = {"checkpoint_dir": str(tmp_path), "metric_name": "loss", "higher_is_better": False}
    with ckpt.CheckpointManager(config, read_only=True) as reader:
        assert str(reader.get_best_checkpoint_path()).endswith("step_2")  # not checked yet
    report = ckpt.verify(tmp_path, deep=True)
    assert sorted((p.code, p.path.name) for p in report.errors) == [
        ("checksum_mismatch", "extra.bin"),
        ("checksum_mismatch", "state.ckpt"),
    ]
    remembered = json.loads((tmp_path / ".ckpt" / "damaged.json").read_text())
    assert sorted(remembered["damaged"]) == ["2", "4"]
    with ckpt.CheckpointManager(config, read_only=True) as reader:
        assert str(reader.get_best_checkpoint_path()).endswith("step_3")
        assert str(reader.get_latest_checkpoint_path()).endswith("step_3")
        assert [r.step for r in reader.list_checkpoints()] == [2, 3, 4]  # still listed
    with pytest.raises(ckpt.ChecksumMismatchError):
        ckpt.torch.load_state(tmp_path / "step_2")
    # Saved again, step 4 is a new checkpoint: latest again, though the old copy was not.
    with ckpt.CheckpointManager(config) as manager:
        manager.save(4, {"loss": 0.9}, {"w": torch.ones(3)})
        assert str(manager.get_latest_checkpoint_path()).endswith("step_4")
        assert str(manager.get_best_checkpoint_path()).endswith("step_3")
    # Restored from a copy and checked again, step 2 is forgotten as damaged.
    _flip(tmp_path / "step_2" / "state.ckpt")
    assert ckpt.verify(tmp_path, deep=True).ok
    assert json.loads((tmp_path / ".ckpt" / "damaged.json").read_text())["damaged"] == {}
    with ckpt.CheckpointManager(config, read_only=True) as reader:
        assert str(reader.get_best_checkpoint_path()).endswith("step_2")


def test_a_checkpoint_without_a_record_is_a_warning_of_its_own(tmp_path: Path) -> None:
    _save_run({"checkpoint_dir": str(tmp_path)})
    (tmp_path / "step_3" / ".ckpt-files.json").unlink()  # as an older ckpt committed it
    report = ckpt.verify(tmp_path, deep=True)
    assert report.ok
    assert [(p.code, p.path.name) for p in report.problems] == [("no_checksums", "step_3")]


def test_the_cli_check_deep_names_the_damaged_file_and_ls_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ckpt.cli import main

    _save_run({"checkpoint_dir": str(tmp_path)})
    _flip(tmp_path / "step_4" / "extra.bin")
    assert main(["check", str(tmp_path)]) == 0  # a shallow check reads no bytes
    capsys.readouterr()
    assert main(["check", str(tmp_path), "--deep", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(p["code"], p["path"]) for p in report["problems"]] == [
        ("checksum_mismatch", str(tmp_path / "step_4" / "extra.bin"))
    ]
    assert main(["ls", str(tmp_path), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {c["step"]: c["damaged"] for c in listing["checkpoints"]} == {
        2: False,
        3: False,
        4: True,
    }
    assert listing["latest"] == str(tmp_path / "step_3")
    assert main(["ls", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "damaged: step 4, found by `ckpt check --deep`: best and latest skip it" in text
    assert main(["latest", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "step_3")


def test_a_digest_another_process_reported_is_taken_without_a_read(
    tmp_path: Path, read: list[str]
) -> None:
    from ckpt.commit.manifest import list_attempt

    storage = ckpt.LocalStorage()
    (tmp_path / "rank1.bin").write_bytes(b"written by another rank")  # no memo here
    (tmp_path / "loop.bin").write_bytes(b"written by the loop")
    reported = _digest.digest_of(b"written by another rank")
    listed = {
        f.path: f.xxh3_128 for f in list_attempt(storage, str(tmp_path), {"rank1.bin": reported})
    }
    assert read == ["loop.bin"]
    assert listed == {"rank1.bin": reported, "loop.bin": _digest.digest_of(b"written by the loop")}


def test_the_digest_a_save_reports_reaches_the_commit_without_the_memo(
    tmp_path: Path, read: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a rank of a collective save does: its file's digest goes to the committing
    # process in the save's round (`WrittenFile.digest`), which remembers nothing of it.
    monkeypatch.setattr(_digest, "remember", lambda *args: None)
    with ckpt.CheckpointManager({"checkpoint_dir": str(tmp_path)}) as manager:
        manager.save(1, {"loss": 1.0}, {"w": torch.ones(1000)})
    assert read == []
    assert ckpt.verify(tmp_path, deep=True).ok
