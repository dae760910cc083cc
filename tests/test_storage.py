import os
from pathlib import Path

import pytest

import ckpt
from ckpt import LocalStorage, UnsafeFileError
from ckpt.storage import Capabilities, MemoryStorage, join, name_of, parent_of


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


def test_sync_tree_of_a_file_syncs_that_file_alone(
    storage: LocalStorage, tmp_path: Path, fsynced: list[str]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    (tmp_path / "a" / "g").write_text("y")
    storage.sync_tree(str(tmp_path / "a" / "f"))
    assert fsynced == [str(tmp_path / "a" / "f")]


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


# --- streams, versions, capabilities --------------------------------------------------------


def test_open_write_shows_the_whole_file_or_none(storage: LocalStorage, tmp_path: Path) -> None:
    target = str(tmp_path / "state.ckpt")
    storage.replace_file(target, b"old", durable=False)

    def fail_half_way() -> None:
        with storage.open_write(target, durable=True) as f:
            f.write(b"half of the new")
            assert (tmp_path / "state.ckpt").read_bytes() == b"old"  # nothing shows yet
            raise RuntimeError("the writer failed")

    with pytest.raises(RuntimeError):
        fail_half_way()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.ckpt"]  # no partial left
    assert (tmp_path / "state.ckpt").read_bytes() == b"old"
    with storage.open_write(target, durable=True) as f:
        f.write(b"new")
    assert (tmp_path / "state.ckpt").read_bytes() == b"new"


def test_open_read_follows_a_link_only_when_asked(storage: LocalStorage, tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"data")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with storage.open_read(str(tmp_path / "link"), follow_links=True) as f:
        assert f.read() == b"data"
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        storage.open_read(str(tmp_path / "link"))


def test_an_entry_version_changes_when_the_entry_is_replaced(
    storage: LocalStorage, tmp_path: Path
) -> None:
    path = str(tmp_path / "f")
    storage.write_bytes(path, b"1")
    first = storage.entry(path)
    storage.replace_file(path, b"22", durable=False)
    second = storage.entry(path)
    assert first is not None
    assert second is not None
    assert first.version != second.version
    assert (first.size, second.size) == (1, 2)
    assert isinstance(second.version, str)


def test_paths_are_strings_and_a_url_root_joins_like_a_path() -> None:
    assert join("/data/run", "step_3", "info.json") == "/data/run/step_3/info.json"
    assert join("s3://bucket/run", "step_3") == "s3://bucket/run/step_3"
    assert name_of("s3://bucket/run/step_3/") == "step_3"
    assert parent_of("s3://bucket/run/step_3") == "s3://bucket/run"
    assert parent_of("/") == "/"


def test_local_disk_offers_every_capability(storage: LocalStorage) -> None:
    assert storage.capabilities == Capabilities(
        atomic_rename=True,
        atomic_exchange=True,
        directories=True,
        fsync=True,
        exclusive_create=True,
        locking=True,
    )
    assert storage.canonical("/tmp/../tmp/x") == os.path.realpath("/tmp/x")


# --- MemoryStorage: what a power cut keeps -----------------------------------------------------


def test_a_power_cut_keeps_only_what_was_synced() -> None:
    memory = MemoryStorage()
    memory.make_dirs("/run/a")
    memory.sync_dir("/")
    memory.sync_dir("/run")
    memory.write_bytes("/run/a/synced", b"kept")
    memory.write_bytes("/run/a/unsynced", b"lost")
    memory.sync_tree("/run/a/synced")
    memory.sync_dir("/run/a")  # both names are durable; only one file's contents are
    memory.replace_file("/run/a/unsynced", b"newer", durable=False)
    memory.write_bytes("/run/late", b"its name was never synced")
    memory.power_cut()
    assert memory.files("/run") == {"a/synced": b"kept", "a/unsynced": b""}


def test_a_rename_survives_a_power_cut_only_once_its_directories_are_synced() -> None:
    memory = MemoryStorage()
    memory.make_dirs("/run/tmp_step_1")
    memory.write_bytes("/run/tmp_step_1/w", b"1")
    memory.sync_tree("/")  # everything so far is durable
    memory.rename("/run/tmp_step_1", "/run/step_1")
    memory.power_cut()
    assert sorted(e.name for e in memory.list_dir("/run")) == ["tmp_step_1"]
    memory.rename("/run/tmp_step_1", "/run/step_1")
    memory.sync_dir("/run")
    memory.power_cut()
    assert memory.files("/run") == {"step_1/w": b"1"}


def test_a_power_cut_releases_every_lock_and_keeps_versions_of_what_survived() -> None:
    memory = MemoryStorage()
    memory.make_dirs("/run")
    lock = memory.lock("/run/lock")
    with pytest.raises(ckpt.CheckpointDirLockedError):
        memory.lock("/run/lock")
    memory.sync_tree("/")
    before = memory.entry("/run/lock")
    memory.power_cut()
    assert memory.entry("/run/lock") == before
    memory.lock("/run/lock").release()  # free again
    lock.release()  # harmless after the cut


def test_memory_paths_are_absolute_and_each_storage_is_its_own_place() -> None:
    one, two = MemoryStorage(), MemoryStorage()
    with pytest.raises(ValueError, match="absolute"):
        one.make_dir("relative")
    assert one.canonical("/a/../b") == one.canonical("/b")
    assert one.canonical("/b") != two.canonical("/b")
    assert one.capabilities.atomic_exchange
    assert MemoryStorage(exchange=False).exchange("/x", "/y") is False
