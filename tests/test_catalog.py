"""The catalog on a local disk: a cold start reads one file, and never trusts it over the disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt.storage import LocalStorage


class _Counting(LocalStorage):
    def __init__(self) -> None:
        super().__init__()
        self.info_reads: list[str] = []

    def read_bytes(self, path: str, **kwargs: Any) -> bytes:
        if Path(path).name == "training_info.json":
            self.info_reads.append(Path(path).parent.name)
        return super().read_bytes(path, **kwargs)


def _config(directory: Path) -> dict[str, Any]:
    return {"checkpoint_dir": str(directory), "metric_name": "loss", "higher_is_better": False}


def _run(directory: Path, losses: dict[int, float]) -> None:
    with ckpt.CheckpointManager(_config(directory)) as manager:
        for step, loss in losses.items():
            path = manager.init_tmp_checkpoint(step, {"loss": loss})
            manager.finalize_checkpoint(path)


def _reopen(directory: Path) -> tuple[_Counting, ckpt.CheckpointManager]:
    storage = _Counting()
    return storage, ckpt.CheckpointManager(_config(directory), storage=storage)


def test_a_cold_start_reads_the_catalog_not_each_training_info(tmp_path: Path) -> None:
    _run(tmp_path, {1: 0.5, 2: 0.2, 3: 0.9})
    assert (tmp_path / ".ckpt" / "catalog.json").is_file()
    storage, manager = _reopen(tmp_path)
    with manager:
        assert [dict(r.info) for r in manager.list_checkpoints()] == [
            {"loss": 0.5},
            {"loss": 0.2},
            {"loss": 0.9},
        ]
        assert manager.get_best_checkpoint_path() == str(tmp_path / "step_2")
    assert storage.info_reads == []


def test_an_info_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    _run(tmp_path, {1: 0.5, 2: 0.2})
    info = tmp_path / "step_1" / "training_info.json"
    inode = info.stat().st_ino
    info.write_text('{"loss": 0.05}')  # the same file, rewritten: a new time and size
    assert info.stat().st_ino == inode
    storage, manager = _reopen(tmp_path)
    with manager:
        assert manager.get_best_checkpoint_path() == str(tmp_path / "step_1")
        assert dict(manager.list_checkpoints()[0].info) == {"loss": 0.05}
    assert storage.info_reads == ["step_1"]


def test_a_replaced_checkpoint_is_read_again(tmp_path: Path) -> None:
    _run(tmp_path, {1: 0.5, 2: 0.2})
    _run(tmp_path, {2: 0.8})  # an overwrite: a new step_2, a new info file
    storage, manager = _reopen(tmp_path)
    with manager:
        assert manager.get_best_checkpoint_path() == str(tmp_path / "step_1")
    assert storage.info_reads == []  # the overwrite's writer recorded it in the catalog


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"{not json", id="garbage"),
        pytest.param(b'{"format": 1, "manifests": {}, "checkpoints": [1, 2]}', id="wrong-type"),
        pytest.param(
            json.dumps(
                {
                    "format": 1,
                    "manifests": {},
                    "checkpoints": {
                        "step_7": ["1:2:3", 0.0, {"loss": -1.0}],  # no such step
                        "../etc": ["1:2:3", 0.0, {"loss": -1.0}],
                        "step_1": ["wrong", 0.0, {"loss": -9.0}],  # not its version
                        "step_2": [1, "x", []],
                    },
                }
            ).encode(),
            id="crafted",
        ),
        pytest.param(b'{"format": 99, "checkpoints": {}}', id="future-format"),
    ],
)
def test_a_damaged_or_crafted_catalog_costs_reads_never_a_wrong_answer(
    tmp_path: Path, content: bytes
) -> None:
    _run(tmp_path, {1: 0.5, 2: 0.2})
    (tmp_path / ".ckpt" / "catalog.json").write_bytes(content)
    storage, manager = _reopen(tmp_path)
    with manager:
        records = manager.list_checkpoints()
        assert [(r.step, dict(r.info)) for r in records] == [(1, {"loss": 0.5}), (2, {"loss": 0.2})]
        assert manager.get_best_checkpoint_path() == str(tmp_path / "step_2")
    assert sorted(storage.info_reads) == ["step_1", "step_2"]
    # The writer rewrote it: the next cold start reads nothing again.
    storage, manager = _reopen(tmp_path)
    with manager:
        assert len(manager.list_checkpoints()) == 2
    assert storage.info_reads == []


def test_a_catalog_that_is_a_link_is_refused_by_a_writer_and_ignored_by_a_reader(
    tmp_path: Path,
) -> None:
    _run(tmp_path, {1: 0.5})
    catalog = tmp_path / ".ckpt" / "catalog.json"
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere.json"
    elsewhere.write_bytes(catalog.read_bytes())
    catalog.unlink()
    catalog.symlink_to(elsewhere)
    before = elsewhere.read_bytes()
    with pytest.raises(ckpt.UnsafeFileError, match=r"catalog\.json is a symbolic link"):
        _reopen(tmp_path)
    storage = _Counting()
    with ckpt.CheckpointManager(_config(tmp_path), storage=storage, read_only=True) as reader:
        assert [r.step for r in reader.list_checkpoints()] == [1]
    assert storage.info_reads == ["step_1"]  # not through the link
    assert elsewhere.read_bytes() == before
