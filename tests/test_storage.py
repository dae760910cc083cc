import os
from pathlib import Path

import pytest

from ckpt import LocalStorage


@pytest.fixture
def storage() -> LocalStorage:
    return LocalStorage()


def test_list_dir_describes_entries_without_following_links(
    storage: LocalStorage, tmp_path: Path
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    (tmp_path / "l").symlink_to(tmp_path / "d")
    kinds = {e.name: e.kind for e in storage.list_dir(tmp_path)}
    assert kinds == {"d": "dir", "f": "file", "l": "symlink"}
    assert storage.list_dir(tmp_path / "missing") == []


def test_rename_never_replaces(storage: LocalStorage, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # an empty directory: plain rename(2) would replace it
    with pytest.raises(FileExistsError):
        storage.rename(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").is_dir()


def test_exchange_swaps_directories(storage: LocalStorage, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "which").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "which").write_text("b")
    if not storage.exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no RENAME_EXCHANGE on this system")
    assert (tmp_path / "a" / "which").read_text() == "b"
    assert (tmp_path / "b" / "which").read_text() == "a"


def test_remove_tree_removes_a_link_not_its_target(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    inside = tmp_path / "dir"
    inside.mkdir()
    (inside / "link").symlink_to(outside)
    storage.remove_tree(inside)
    assert not inside.exists()
    assert (outside / "keep").read_text() == "x"
    (tmp_path / "top").symlink_to(outside)
    storage.remove_tree(tmp_path / "top")
    assert not os.path.lexists(tmp_path / "top")
    assert (outside / "keep").exists()


def test_sync_tree_syncs_files_and_dirs_but_not_links(
    storage: LocalStorage, tmp_path: Path, fsynced: list[str]
) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    (tmp_path / "a" / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "a" / "dirlink").symlink_to(tmp_path / "a" / "b")
    storage.sync_tree(tmp_path / "a")  # a dangling link must not break the sync
    expected = [tmp_path / "a" / "b" / "f", tmp_path / "a" / "b", tmp_path / "a"]
    assert sorted(fsynced) == sorted(map(str, expected))


def test_replace_file_is_whole(storage: LocalStorage, tmp_path: Path) -> None:
    target = tmp_path / "pins.json"
    storage.replace_file(target, b"one", durable=True)
    storage.replace_file(target, b"two", durable=True)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pins.json"]


def test_write_bytes_refuses_to_overwrite(storage: LocalStorage, tmp_path: Path) -> None:
    storage.write_bytes(tmp_path / "f", b"1")
    with pytest.raises(FileExistsError):
        storage.write_bytes(tmp_path / "f", b"2")
    assert (tmp_path / "f").read_bytes() == b"1"
