"""The manifest protocol on local disk: layout, overwrites, deletes, recovery, checks."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash

import ckpt
from ckpt import CheckpointManager, verify
from ckpt.storage import LocalStorage, MemoryStorage

Make = Callable[..., CheckpointManager]
ATTEMPT = re.compile(r"step_(\d+)\.[0-9a-f]{12}")


def _manifest(directory: Path, step: int) -> dict[str, Any]:
    return json.loads((directory / f"step_{step}.manifest.json").read_text())


def _save(manager: CheckpointManager, step: int, info: dict[str, Any], **files: bytes) -> Path:
    path = manager.init_tmp_checkpoint(step, info)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    manager.finalize_checkpoint(path)
    return path


def test_a_save_writes_in_place_and_commits_with_a_manifest_listing_every_file(
    make_manager: Make, ckpt_dir: Path
) -> None:
    manager = make_manager(commit_protocol="manifest", fsync=True)
    path = manager.init_tmp_checkpoint(3, {"loss": 0.5})
    assert path.parent == ckpt_dir
    assert ATTEMPT.fullmatch(path.name)
    assert path.name.startswith("step_3.")
    assert manager.list_checkpoints() == []  # an attempt no manifest names
    (path / "model.bin").write_bytes(b"weights" * 10)
    (path / "optim").mkdir()
    (path / "optim" / "state.bin").write_bytes(b"moments")
    manager.finalize_checkpoint(path)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        ".ckpt",
        path.name,
        "step_3.manifest.json",
    ]
    manifest = _manifest(ckpt_dir, 3)
    assert manifest["attempt"] == path.name
    assert manifest["step"] == 3
    assert manifest["format"] == 1
    listed = {f["path"]: (f["size"], f["xxh3_128"]) for f in manifest["files"]}
    for rel in ("model.bin", "optim/state.bin", "training_info.json"):
        data = (path / rel).read_bytes()
        assert listed[rel] == (len(data), xxhash.xxh3_128_hexdigest(data))
    assert len(listed) == 3
    (record,) = manager.list_checkpoints()
    assert record.path == path  # files are never moved after they are written
    assert manager.get_latest_checkpoint_path() == str(path)
    assert manager.load_training_info(path) == {"loss": 0.5}


def test_an_overwrite_replaces_the_manifest_and_removes_the_old_attempt(
    make_manager: Make, ckpt_dir: Path
) -> None:
    manager = make_manager(commit_protocol="manifest", metric_name="loss")
    old = _save(manager, 2, {"loss": 0.9}, **{"model.bin": b"old", "old_only": b"x"})
    new = _save(manager, 2, {"loss": 0.1}, **{"model.bin": b"new"})
    assert old != new
    assert not old.exists()
    assert _manifest(ckpt_dir, 2)["attempt"] == new.name
    assert (new / "model.bin").read_bytes() == b"new"
    assert not (new / "old_only").exists()
    assert [r.info["loss"] for r in manager.list_checkpoints()] == [0.1]


@pytest.mark.usefixtures("deletes_inline")
def test_retention_removes_the_manifest_before_the_files(
    make_manager: Make, ckpt_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    storage = LocalStorage()
    real_file, real_tree = LocalStorage.remove_file, LocalStorage.remove_tree

    def remove_file(self: LocalStorage, path: str) -> None:
        order.append(f"file {Path(path).name}")
        real_file(self, path)

    def remove_tree(self: LocalStorage, path: str) -> None:
        order.append(f"tree {Path(path).name}")
        real_tree(self, path)

    monkeypatch.setattr(LocalStorage, "remove_file", remove_file)
    monkeypatch.setattr(LocalStorage, "remove_tree", remove_tree)
    manager = make_manager(commit_protocol="manifest", keep_top_k=0, storage=storage)
    first = _save(manager, 1, {})
    order.clear()
    _save(manager, 2, {})  # keep_top_k: 0 keeps only the latest
    assert order == ["file step_1.manifest.json", f"tree {first.name}"]
    assert [r.step for r in manager.list_checkpoints()] == [2]


def test_abort_and_a_second_finalize_never_touch_a_committed_attempt(
    make_manager: Make,
) -> None:
    manager = make_manager(commit_protocol="manifest")
    path = _save(manager, 1, {}, **{"w": b"1"})
    manager.abort_checkpoint(path)  # it is a checkpoint now, not a temporary
    with pytest.raises(ckpt.InvalidCheckpointPathError, match="finalized or aborted"):
        manager.finalize_checkpoint(path)
    assert (path / "w").read_bytes() == b"1"
    assert [r.step for r in manager.list_checkpoints()] == [1]


def test_recovery_removes_unnamed_attempts_and_partial_manifests(
    make_manager: Make, ckpt_dir: Path
) -> None:
    manager = make_manager(commit_protocol="manifest")
    kept = _save(manager, 1, {}, **{"w": b"1"})
    crashed = manager.init_tmp_checkpoint(2, {})  # a save that never committed
    (crashed / "w").write_bytes(b"half")
    manager.close()
    partial = ckpt_dir / ".step_2.manifest.json.partial"
    partial.write_bytes(b'{"form')
    again = make_manager(commit_protocol="manifest")
    assert sorted((a.kind, a.path.name) for a in again.recovery) == [
        ("removed_temporary", crashed.name)
    ]
    assert not crashed.exists()
    assert not partial.exists()
    assert (kept / "w").read_bytes() == b"1"
    assert [r.step for r in again.list_checkpoints()] == [1]


def test_a_writer_of_either_protocol_reads_and_prunes_both_layouts(
    make_manager: Make, ckpt_dir: Path
) -> None:
    renamed = make_manager(commit_protocol="rename", metric_name="loss", higher_is_better=False)
    _save(renamed, 1, {"loss": 0.3})
    _save(renamed, 2, {"loss": 0.2})
    renamed.close()
    manifested = make_manager(
        commit_protocol="manifest", metric_name="loss", higher_is_better=False, keep_top_k=2
    )
    attempt = _save(manifested, 3, {"loss": 0.1})
    # top-2 by loss (plus the latest): step 1 goes, whichever protocol wrote it
    assert [r.step for r in manifested.list_checkpoints()] == [2, 3]
    assert {p.name for p in ckpt_dir.iterdir()} == {
        ".ckpt",
        attempt.name,
        "step_2",
        "step_3.manifest.json",
    }
    assert manifested.get_best_checkpoint_path() == str(attempt)
    # Overwriting a rename checkpoint with a manifest one replaces it.
    over = _save(manifested, 2, {"loss": 0.05})
    assert not (ckpt_dir / "step_2").exists()
    assert manifested.get_best_checkpoint_path() == str(over)
    assert verify(ckpt_dir).problems == ()


def test_a_rename_checkpoint_a_manifest_replaced_is_removed_by_recovery(
    make_manager: Make, ckpt_dir: Path, write_step: Callable[..., Path]
) -> None:
    """What a crash leaves between a manifest's commit and the removal of the step_N it
    replaced: the manifest is the checkpoint, step_N the displaced copy."""
    manager = make_manager(commit_protocol="manifest")
    new = _save(manager, 4, {"v": "new"})
    manager.close()
    write_step(ckpt_dir, "step_4", {"v": "old"})
    (ckpt_dir / "step_5").mkdir()  # not a checkpoint: no training_info.json
    again = make_manager()
    assert [(a.kind, a.path.name) for a in again.recovery] == [("removed_displaced", "step_4")]
    assert [dict(r.info) for r in again.list_checkpoints()] == [{"v": "new"}]
    assert again.get_latest_checkpoint_path() == str(new)
    assert (ckpt_dir / "step_5").is_dir()  # someone's files: never ours to delete


def test_check_reports_damaged_manifests_and_unnamed_attempts(
    make_manager: Make, ckpt_dir: Path
) -> None:
    manager = make_manager(commit_protocol="manifest")
    one = _save(manager, 1, {}, **{"w": b"1234"})
    two = _save(manager, 2, {}, **{"w": b"5678"})
    three = _save(manager, 3, {})
    stray = manager.init_tmp_checkpoint(4, {})
    manager.close()
    (one / "w").write_bytes(b"12")  # truncated after the commit
    (ckpt_dir / "step_2.manifest.json").write_text("{not json")
    shutil.rmtree(three)
    report = verify(ckpt_dir)
    found = {(p.code, p.path.name) for p in report.problems}
    assert found == {
        ("broken_manifest", "step_1.manifest.json"),
        ("broken_manifest", "step_2.manifest.json"),
        ("broken_manifest", "step_3.manifest.json"),
        ("leftover_temporary", two.name),  # no readable manifest names it any more
        ("leftover_temporary", stray.name),
    }
    assert report.steps == (1,)  # its info is readable; its files are what is damaged
    assert not report.ok
    by_name = {p.path.name: p.message for p in report.problems}
    assert "another size: w" in by_name["step_1.manifest.json"]
    assert "missing" in by_name["step_3.manifest.json"]


def test_auto_picks_rename_on_local_disk_and_manifest_is_chosen_where_asked() -> None:
    local = LocalStorage().capabilities
    assert ckpt.commit.choose("auto", local).name == "rename"
    assert ckpt.commit.choose("manifest", local).name == "manifest"
    store = ckpt.storage.Capabilities(exclusive_create=True)  # what an object store has
    assert ckpt.commit.choose("auto", store).name == "manifest"
    with pytest.raises(ValueError, match="`commit_protocol: rename` needs"):
        ckpt.commit.choose("rename", store)


@pytest.mark.parametrize("protocol", ["rename", "manifest"])
def test_save_and_load_state_through_a_memory_storage(protocol: str) -> None:
    torch = pytest.importorskip("torch")
    from ckpt.torch import load_state

    storage = MemoryStorage()
    config = {"checkpoint_dir": "/runs/a", "commit_protocol": protocol, "keep_top_k": 1}
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7}
    with CheckpointManager(config, storage=storage) as manager:
        manager.save(1, {"loss": 0.5}, state)
        latest = manager.get_latest_checkpoint_path()
    assert latest is not None
    loaded = load_state(latest, storage=storage)
    assert torch.equal(loaded["w"], state["w"])
    assert loaded["step"] == 7
    storage.power_cut()  # saved with fsync: all of it survives
    assert torch.equal(load_state(latest, storage=storage)["w"], state["w"])


def test_the_cli_lists_checks_prunes_and_pins_a_manifest_directory(
    make_manager: Make, ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ckpt.cli import main

    manager = make_manager(commit_protocol="manifest", metric_name="loss")
    paths = {step: _save(manager, step, {"loss": 1 / step}, w=b"x" * step) for step in (1, 2, 3)}
    manager.close()
    capsys.readouterr()
    assert main(["ls", str(ckpt_dir), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [c["path"] for c in listing["checkpoints"]] == [str(paths[s]) for s in (1, 2, 3)]
    assert listing["latest"] == str(paths[3])
    assert main(["check", str(ckpt_dir)]) == 0
    assert "ok: no problems" in capsys.readouterr().out
    assert main(["pin", str(ckpt_dir), "1"]) == 0
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"checkpoint_dir: {ckpt_dir}\nmetric_name: loss\nretention: {{kind: latest_n, n: 1}}\n"
        f"commit_protocol: manifest\n"
    )
    assert main(["prune", str(ckpt_dir), "--config", str(config)]) == 0
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.endswith(".json")) == [
        "step_1.manifest.json",  # pinned
        "step_3.manifest.json",  # the latest
    ]
    assert not paths[2].exists()


class _CountingReads(LocalStorage):
    def __init__(self) -> None:
        self.reads: list[str] = []

    def read_bytes(self, path: str, **kwargs: Any) -> bytes:
        self.reads.append(Path(path).name)
        return super().read_bytes(path, **kwargs)


def test_a_reader_reads_each_manifest_once_until_it_changes(make_manager: Make) -> None:
    writer = make_manager(commit_protocol="manifest")
    for step in (1, 2, 3):
        _save(writer, step, {"v": step})
    storage = _CountingReads()
    reader = make_manager(read_only=True, storage=storage)
    for _ in range(3):
        assert [r.step for r in reader.list_checkpoints()] == [1, 2, 3]
    manifests = [name for name in storage.reads if name.endswith(".manifest.json")]
    assert sorted(manifests) == [f"step_{s}.manifest.json" for s in (1, 2, 3)]
    _save(writer, 2, {"v": "again"})  # an overwrite: a new manifest for step 2
    storage.reads.clear()
    assert [dict(r.info) for r in reader.list_checkpoints()][1] == {"v": "again"}
    assert [n for n in storage.reads if n.endswith(".manifest.json")] == ["step_2.manifest.json"]


def test_a_manifest_naming_a_link_is_not_a_checkpoint_and_the_link_target_survives(
    make_manager: Make, ckpt_dir: Path, tmp_path: Path
) -> None:
    manager = make_manager(commit_protocol="manifest")
    path = _save(manager, 1, {"v": 1})
    manager.close()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "training_info.json").write_text("{}")
    (victim / "important").write_bytes(b"not ckpt's")
    shutil.rmtree(path)
    path.symlink_to(victim, target_is_directory=True)  # the attempt is now a link
    again = make_manager(commit_protocol="manifest", keep_top_k=0)
    assert again.list_checkpoints() == []
    _save(again, 2, {})  # a prune would delete whatever step 1 is: it is not a checkpoint
    assert (victim / "important").read_bytes() == b"not ckpt's"
    problems = {(p.code, p.path.name) for p in verify(ckpt_dir).problems}
    assert ("broken_manifest", "step_1.manifest.json") in problems


def writer_dir(manager: ckpt.CheckpointManager) -> Path:
    return Path(manager.checkpoint_dir)


def test_a_writer_reads_each_manifest_once_to_recover_and_index(make_manager: Make) -> None:
    writer = make_manager(commit_protocol="manifest")
    for step in (1, 2):
        _save(writer, step, {"v": step})
    writer.close()
    # The catalog the writer left answers for both: a cold start reads neither.
    storage = _CountingReads()
    again = make_manager(commit_protocol="manifest", storage=storage)
    assert [r.step for r in again.list_checkpoints()] == [1, 2]
    assert [name for name in storage.reads if name.endswith(".manifest.json")] == []
    again.close()
    # Without it, each is read once, for recovery and the index together.
    (writer_dir(again) / ".ckpt" / "catalog.json").unlink()
    storage = _CountingReads()
    again = make_manager(commit_protocol="manifest", storage=storage)
    assert [r.step for r in again.list_checkpoints()] == [1, 2]
    manifests = [name for name in storage.reads if name.endswith(".manifest.json")]
    assert sorted(manifests) == ["step_1.manifest.json", "step_2.manifest.json"]
