"""Hostile directories: links, special files and crafted entries never cost a user's data.

Each test builds what an attacker (or an unlucky `ln -s`) could leave in or beside a
checkpoint directory and checks that nothing outside it is touched, nothing hangs, and
the failure is a clear error or a warning about that one entry.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
import xxhash
from pydantic import ValidationError

import ckpt
import ckpt.storage.local
import ckpt.torch
from ckpt import CheckpointManager, UnsafeFileError, verify
from ckpt.cli import main as cli

pytestmark = pytest.mark.usefixtures("no_hang")


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Turn a hang (a FIFO opened for reading, say) into a failure instead of a stuck run."""

    def fail(signum: int, frame: FrameType | None) -> None:
        raise AssertionError("hung: still running after 20 s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside the run, holding a file nobody may touch."""
    outside = tmp_path / "victim"
    outside.mkdir()
    (outside / "important").write_bytes(b"precious")
    return outside


def _untouched(victim: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["important"]
    assert (victim / "important").read_bytes() == b"precious"


def _two_checkpoints(make_manager: Callable[..., CheckpointManager], save: Any) -> Path:
    with make_manager() as manager:
        save(manager, 1, {"loss": 1.0})
        save(manager, 2, {"loss": 0.5})
        return manager.checkpoint_dir


# --- links in ckpt's own metadata ------------------------------------------------------


@pytest.mark.parametrize("link", [".ckpt", ".ckpt/trash"])
def test_a_linked_metadata_directory_is_refused_and_its_target_untouched(
    make_manager: Callable[..., CheckpointManager],
    save: Any,
    ckpt_dir: Path,
    victim: Path,
    link: str,
    tmp_path: Path,
) -> None:
    _two_checkpoints(make_manager, save)
    target = ckpt_dir / link
    # What was there goes aside; the link takes its place (the reproduction of the issue).
    target.rename(tmp_path / "aside")
    target.symlink_to(victim)
    with pytest.raises(UnsafeFileError, match=r"symbolic link.*never follows a link"):
        make_manager()
    _untouched(victim)
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("step_")) == [
        "step_1",
        "step_2",
    ]


def test_a_linked_trash_is_never_emptied_even_with_leftovers_in_it(
    ckpt_dir: Path, victim: Path, write_step: Any
) -> None:
    write_step(ckpt_dir, "tmp_step_3", {"loss": 1})  # recovery would discard it into trash
    (ckpt_dir / ".ckpt").mkdir()
    (ckpt_dir / ".ckpt" / "trash").symlink_to(victim)
    with pytest.raises(UnsafeFileError):
        CheckpointManager({"checkpoint_dir": str(ckpt_dir)})
    _untouched(victim)
    assert (ckpt_dir / "tmp_step_3" / "training_info.json").exists()


def test_a_linked_lock_file_is_refused_without_truncating_its_target(
    ckpt_dir: Path, victim: Path
) -> None:
    (ckpt_dir / ".ckpt").mkdir(parents=True)
    (ckpt_dir / ".ckpt" / "lock").symlink_to(victim / "important")
    with pytest.raises(UnsafeFileError, match="lock"):
        CheckpointManager({"checkpoint_dir": str(ckpt_dir)})
    _untouched(victim)


def test_a_linked_partial_pins_file_is_replaced_not_written_through(
    make_manager: Callable[..., CheckpointManager], save: Any, ckpt_dir: Path, victim: Path
) -> None:
    _two_checkpoints(make_manager, save)
    (ckpt_dir / ".ckpt" / ".pins.json.partial").symlink_to(victim / "important")
    with make_manager() as manager:
        manager.pin(1)
        assert [r.step for r in manager.list_checkpoints() if r.pinned] == [1]
    _untouched(victim)
    assert not (ckpt_dir / ".ckpt" / ".pins.json.partial").exists()
    assert json.loads((ckpt_dir / ".ckpt" / "pins.json").read_text()) == {"pinned": [1]}


def test_readers_of_a_directory_with_a_linked_metadata_dir_ignore_it_and_report_it(
    make_manager: Callable[..., CheckpointManager],
    save: Any,
    ckpt_dir: Path,
    victim: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _two_checkpoints(make_manager, save)
    (ckpt_dir / ".ckpt").rename(tmp_path / "aside")
    (victim / "pins.json").write_text('{"pinned": [2]}')
    (ckpt_dir / ".ckpt").symlink_to(victim)
    with caplog.at_level(logging.WARNING, "ckpt"):
        reader = make_manager(read_only=True)
        assert [(r.step, r.pinned) for r in reader.list_checkpoints()] == [(1, False), (2, False)]
    assert "not ckpt's own directory" in caplog.text
    report = verify(ckpt_dir)
    assert [(p.code, p.path.name) for p in report.errors] == [("unsafe_metadata", ".ckpt")]
    assert report.steps == (1, 2)
    assert sorted(p.name for p in victim.iterdir()) == ["important", "pins.json"]


# --- special files and huge files where ckpt reads ----------------------------------------


def _special(path: Path, kind: str, tmp_path: Path) -> None:
    if path.exists():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        big = tmp_path / "big.json"
        with open(big, "wb") as f:
            f.truncate(ckpt.storage.MAX_READ_BYTES + 1)  # sparse: nothing is written
        path.symlink_to(big) if kind == "link-to-big" else big.rename(path)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "big", "link-to-big"])
def test_a_special_or_huge_training_info_makes_only_its_step_unreadable(
    make_manager: Callable[..., CheckpointManager],
    save: Any,
    ckpt_dir: Path,
    kind: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _two_checkpoints(make_manager, save)
    _special(ckpt_dir / "step_2" / "training_info.json", kind, tmp_path)
    with make_manager() as writer:  # the writer opens, and the other step is intact
        assert [r.step for r in writer.list_checkpoints()] == [1]
        assert writer.get_latest_checkpoint_path() == str(ckpt_dir / "step_1")
    report = verify(ckpt_dir)
    assert [(p.code, p.path.name) for p in report.errors] == [("unreadable_info", "step_2")]
    assert cli(["ls", str(ckpt_dir)]) == 0
    assert cli(["latest", str(ckpt_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(ckpt_dir / "step_1")
    assert cli(["check", str(ckpt_dir)]) == 1


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "big"])
def test_a_special_or_huge_pins_file_is_refused_by_writers_and_ignored_by_readers(
    make_manager: Callable[..., CheckpointManager],
    save: Any,
    ckpt_dir: Path,
    kind: str,
    tmp_path: Path,
) -> None:
    _two_checkpoints(make_manager, save)
    _special(ckpt_dir / ".ckpt" / "pins.json", kind, tmp_path)
    if kind == "big":  # a regular file: a writer reads it, warns, and carries on
        with make_manager() as writer:
            assert [r.pinned for r in writer.list_checkpoints()] == [False, False]
        codes = [p.code for p in verify(ckpt_dir).problems]
        assert codes == ["unreadable_pins"]
    else:
        with pytest.raises(UnsafeFileError, match=r"pins\.json"):
            make_manager()
        assert [p.code for p in verify(ckpt_dir).errors] == ["unsafe_metadata"]
    reader = make_manager(read_only=True)
    assert [r.step for r in reader.list_checkpoints()] == [1, 2]


def test_a_fifo_lock_file_does_not_hang_check_or_the_writer(
    make_manager: Callable[..., CheckpointManager], save: Any, ckpt_dir: Path
) -> None:
    _two_checkpoints(make_manager, save)
    (ckpt_dir / ".ckpt" / "lock").unlink()
    os.mkfifo(ckpt_dir / ".ckpt" / "lock")
    assert [p.code for p in verify(ckpt_dir).errors] == ["unsafe_metadata"]
    with pytest.raises(UnsafeFileError):
        make_manager()


# --- crafted contents -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pins", "why"),
    [
        (b'{"pinned": [1e999]}', "inf"),
        (b'{"pinned": "123"}', "expected"),
        (b'{"pinned": [1.9]}', "1.9"),
        (b'{"pinned": [true]}', "True"),
        (b'{"pinned": [-1]}', "-1"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"\xff\xfe", "pins"),
    ],
)
def test_a_crafted_pins_file_pins_nothing_and_stops_nothing(
    make_manager: Callable[..., CheckpointManager],
    save: Any,
    ckpt_dir: Path,
    pins: bytes,
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _two_checkpoints(make_manager, save)
    (ckpt_dir / ".ckpt" / "pins.json").write_bytes(pins)
    with caplog.at_level(logging.WARNING, "ckpt"), make_manager() as writer:
        assert [(r.step, r.pinned) for r in writer.list_checkpoints()] == [(1, False), (2, False)]
        writer.pin(2)  # the run goes on: the next pin rewrites the file
    assert "ignoring unreadable pins file" in caplog.text
    assert why in caplog.text or why == "pins"
    assert json.loads((ckpt_dir / ".ckpt" / "pins.json").read_text()) == {"pinned": [2]}


def test_a_deeply_nested_training_info_is_a_warning_about_that_step(
    make_manager: Callable[..., CheckpointManager],
    save: Any,
    ckpt_dir: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _two_checkpoints(make_manager, save)
    (ckpt_dir / "step_2" / "training_info.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with caplog.at_level(logging.WARNING, "ckpt"), make_manager() as writer:
        assert [r.step for r in writer.list_checkpoints()] == [1]
    assert "step_2" in caplog.text
    assert "nested too deeply" in caplog.text
    (problem,) = verify(ckpt_dir).errors
    assert (problem.code, problem.path.name) == ("unreadable_info", "step_2")
    assert cli(["ls", str(ckpt_dir)]) == 0
    assert "1 checkpoint," in capsys.readouterr().out


# --- races with a live writer ---------------------------------------------------------


def test_verify_takes_a_step_pruned_while_it_reads_for_a_race_not_damage(
    make_manager: Callable[..., CheckpointManager],
    save: Any,
    ckpt_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _two_checkpoints(make_manager, save)
    real = ckpt.LocalStorage.read_bytes

    def pruned_first(self: ckpt.LocalStorage, path: str, **kwargs: Any) -> bytes:
        path = Path(path)
        if path.parent.name == "step_2" and path.parent.exists():
            path.parent.rename(tmp_path / "pruned")  # what a writer's delete does first
        return real(self, str(path), **kwargs)

    monkeypatch.setattr(ckpt.LocalStorage, "read_bytes", pruned_first)
    report = verify(ckpt_dir)
    assert report.problems == ()
    assert report.steps == (1,)


def test_verify_reads_a_step_replaced_while_it_reads(
    make_manager: Callable[..., CheckpointManager],
    save: Any,
    ckpt_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _two_checkpoints(make_manager, save)
    real = ckpt.LocalStorage.read_bytes
    replaced = []

    def overwritten_first(self: ckpt.LocalStorage, path: str, **kwargs: Any) -> bytes:
        path = Path(path)
        if path.parent.name == "step_2" and not replaced:
            replaced.append(path)
            new = tmp_path / "new"
            new.mkdir()
            (new / "training_info.json").write_text('{"loss": 0.25}')
            path.parent.rename(tmp_path / "old")
            new.rename(path.parent)  # what an overwrite's exchange looks like to a reader
            raise FileNotFoundError(path)  # the old copy's file was gone when read
        return real(self, str(path), **kwargs)

    monkeypatch.setattr(ckpt.LocalStorage, "read_bytes", overwritten_first)
    report = verify(ckpt_dir)
    assert report.problems == ()
    assert report.steps == (1, 2)


def test_check_beside_a_writer_that_saves_and_prunes_reports_no_error(
    make_manager: Callable[..., CheckpointManager], save: Any, ckpt_dir: Path
) -> None:
    writer = make_manager(
        metric_name="loss", higher_is_better=False, retention={"kind": "top_k", "k": 3}
    )
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        step = 0
        try:
            while not stop.is_set():
                save(writer, step, {"loss": float(step % 7)})
                step += 1
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        errors = [p for _ in range(150) for p in verify(ckpt_dir).errors]
    finally:
        stop.set()
        thread.join(10)
    assert not failures
    assert errors == []


def test_two_threads_saving_the_same_steps_on_one_manager_commit_every_save(
    make_manager: Callable[..., CheckpointManager],
) -> None:

    manager = make_manager()
    failures: list[BaseException] = []
    returned: list[tuple[int, int]] = []

    def run(thread: int) -> None:
        try:
            for step in range(30):
                state = {"w": torch.full((64,), float(thread))}
                manager.save(step, {"thread": thread}, state)
                returned.append((thread, step))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert len(returned) == 60
    records = manager.list_checkpoints()
    assert [r.step for r in records] == list(range(30))
    for record in records:  # each step holds one whole save, the info and state of one thread
        state = ckpt.torch.load_state(record.path)
        assert state["w"].eq(float(record.info["thread"])).all()
    assert not [p for p in manager.checkpoint_dir.iterdir() if p.name.startswith("tmp_")]


def test_init_tmp_refuses_a_step_another_live_thread_is_writing(
    make_manager: Callable[..., CheckpointManager], save: Any
) -> None:
    manager = make_manager()
    got: list[Path] = []
    release = threading.Event()

    def hold() -> None:
        got.append(manager.init_tmp_checkpoint(5, {"by": "thread"}))
        release.wait(10)
        (got[0] / "model.bin").write_bytes(b"thread's")
        manager.finalize_checkpoint(got[0])

    thread = threading.Thread(target=hold)
    thread.start()
    while not got:
        threading.Event().wait(0.01)
    with pytest.raises(ckpt.SaveInProgressError, match="step 5 is being saved by another thread"):
        manager.init_tmp_checkpoint(5, {"by": "main"})
    release.set()
    thread.join(10)
    assert (manager.checkpoint_dir / "step_5" / "model.bin").read_bytes() == b"thread's"
    save(manager, 5, {"by": "main"})  # once that save is done, the step is free again
    assert manager.load_training_info(manager.get_latest_checkpoint_path()) == {"by": "main"}


def test_a_thread_may_start_its_own_step_afresh(
    make_manager: Callable[..., CheckpointManager],
) -> None:
    manager = make_manager()
    first = manager.init_tmp_checkpoint(5, {"attempt": 1})
    (first / "half").write_bytes(b"x")
    second = manager.init_tmp_checkpoint(5, {"attempt": 2})  # same thread: a retry
    assert second == first
    assert not (second / "half").exists()
    manager.finalize_checkpoint(second)
    assert manager.load_training_info(str(manager.checkpoint_dir / "step_5")) == {"attempt": 2}


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_init_tmp_refuses_a_temporary_name_that_is_not_a_directory(
    make_manager: Callable[..., CheckpointManager], ckpt_dir: Path, victim: Path, kind: str
) -> None:
    manager = make_manager()
    tmp = ckpt_dir / "tmp_step_3"
    if kind == "file":
        tmp.write_bytes(b"someone's")
    else:
        tmp.symlink_to(victim)
    with pytest.raises(ckpt.CheckpointError, match="tmp_step_3 exists and is a"):
        manager.init_tmp_checkpoint(3, {})
    assert tmp.is_symlink() if kind == "symlink" else tmp.read_bytes() == b"someone's"
    _untouched(victim)


# --- dangerous roots ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_checkpoint_dir_is_refused_before_anything_is_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_step: Any, value: str
) -> None:
    write_step(tmp_path, "step_1", {"unrelated": True})
    write_step(tmp_path, "step_2", {"unrelated": True})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=r"`checkpoint_dir` must name the run's own"):
        CheckpointManager({"checkpoint_dir": value, "keep_top_k": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1", "step_2"]


@pytest.mark.parametrize("which", ["root", "home", "home-with-slash"])
def test_the_root_and_the_home_directory_are_refused(which: str) -> None:
    home = str(Path.home())
    value = {"root": "/", "home": home, "home-with-slash": home + "/./"}[which]
    with pytest.raises(ValidationError, match=r"root|home directory") as caught:
        ckpt.load_config({"checkpoint_dir": value})
    assert "runs/run1" in str(caught.value)


# --- unbounded work from a small input --------------------------------------------------------


def _bomb(levels: int) -> str:
    lines = ["checkpoint_dir: x", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 7)}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_in_a_short_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(9))  # 7**9: forty million values from a few hundred bytes
    with pytest.raises(ckpt.ConfigFileError, match="alias bomb"):
        ckpt.load_config(path)
    assert cli(["config", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "expands to more than 100,000 values" in err
    assert len(err) < 300


def test_values_quoted_in_messages_are_cut_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "small-bomb.yaml"
    path.write_text(_bomb(5))  # under the limit: loaded, and quoted by the message
    assert cli(["config", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("unknown key") == 5
    assert len(err) < 2000


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("checkpoint_dir: x\na: &a [*a]\n", "refers to itself"),
        ("checkpoint_dir: x\nz: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested"),
        ("checkpoint_dir: x\nz: " + "[" * 40 + "]" * 40 + "\n", "nested more than 32"),
    ],
    ids=["self-alias", "20000-deep", "40-deep"],
)
def test_yaml_that_refers_to_itself_or_nests_deeply_is_refused(
    tmp_path: Path, text: str, match: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ckpt.ConfigFileError, match=match):
        ckpt.load_config(path)


def test_a_config_file_that_is_not_utf8_is_a_config_file_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"checkpoint_dir: \xff\xfe\n")
    with pytest.raises(ckpt.ConfigFileError, match=r"not UTF-8 text \(byte 16 is 0xff\)"):
        ckpt.load_config(path)


def test_a_huge_config_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    with open(path, "wb") as f:
        f.truncate((16 << 20) + 1)
    with pytest.raises(ckpt.ConfigFileError, match="larger than 16 MiB"):
        ckpt.load_config(path)


def _nested_any_of(depth: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": "keep_all"}
    for _ in range(depth):
        spec = {"kind": "any_of", "policies": [spec]}
    return spec


def test_a_deeply_nested_config_mapping_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="nested more than 32 levels deep") as caught:
        ckpt.load_config({"checkpoint_dir": "x", "retention": _nested_any_of(300)})
    assert len(str(caught.value)) < 1000
    assert ckpt.load_config({"checkpoint_dir": "x", "retention": _nested_any_of(10)})


def test_unknown_keys_read_as_sentences() -> None:
    with pytest.raises(ValidationError) as caught:
        ckpt.load_config({"checkpoint_dir": "x", "zzz": 1, "keep_topk": 2})
    (error,) = caught.value.errors()
    assert error["msg"] == (
        "unknown key `zzz` (got 1); unknown key `keep_topk` (got 2), did you mean `keep_top_k`?"
    )
    assert ", ;" not in error["msg"]
    with pytest.raises(ValidationError) as caught:
        ckpt.load_config({"checkpoint_dir": "x", "retention": {"kind": "bogus"}})
    assert caught.value.errors()[0]["msg"].endswith("got 'bogus'")


def test_max_pending_saves_is_bounded_and_slots_are_made_only_when_used(
    make_manager: Callable[..., CheckpointManager],
) -> None:
    with pytest.raises(ValidationError, match=r"an integer >= 1 and <= 1024, got 1000000000000"):
        ckpt.load_config({"checkpoint_dir": "x", "max_pending_saves": 10**12})
    manager = make_manager(max_pending_saves=1024)
    manager.save_async(1, {}, {"w": torch.zeros(4)})
    manager.wait_until_finished()
    assert manager._saver._async is not None
    assert len(manager._saver._async._free) == 1  # one buffer set, made by the one save


# --- errors that are ours -----------------------------------------------------------------


def _deep_dict(depth: int) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for _ in range(depth):
        info = {"a": info}
    return info


@pytest.mark.parametrize(
    ("info", "match"),
    [
        (_deep_dict(500), "nests more than 64 levels"),
        ({"big": 10**5000}, "too large to store as a number"),
        ({"loss": torch.empty((), device="meta")}, "cannot be read on meta"),
    ],
    ids=["500-deep", "10**5000", "meta-tensor"],
)
def test_unstorable_training_info_is_a_serialization_error_and_writes_nothing(
    make_manager: Callable[..., CheckpointManager], ckpt_dir: Path, info: Any, match: str
) -> None:
    manager = make_manager()
    with pytest.raises(ckpt.SerializationError, match=match):
        manager.init_tmp_checkpoint(1, info)
    with pytest.raises(ckpt.SerializationError, match=match):
        manager.init_tmp_checkpoint(1, {"ok": 1}, run_config=info)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [".ckpt"]


def _state_file(tmp_path: Path, **entry: Any) -> Path:
    """A state file whose one tensor is described by ``entry``'s fields instead."""
    directory = tmp_path / "state"
    directory.mkdir()
    ckpt.torch.save_state(directory, {"x": torch.zeros(2)}, fsync=False)
    path = directory / ckpt.torch.STATE_FILE
    raw = path.read_bytes()
    length = int.from_bytes(raw[8:16], "little")
    header = json.loads(raw[16 : 16 + length])
    header["tensors"][0].update(entry)
    body = json.dumps(header).encode()
    head = raw[:8] + len(body).to_bytes(8, "little") + body
    data = head + bytes(-len(head) % 4096) + bytes(header["data_size"])
    path.write_bytes(data + xxhash.xxh3_128_digest(data))  # its trailer: the digest holds
    return directory


@pytest.mark.parametrize("device", ["hpu", "privateuseone", "xla"])
def test_load_state_onto_a_device_torch_cannot_use_is_device_unavailable(
    tmp_path: Path, device: str
) -> None:
    directory = _state_file(tmp_path, device=device)
    with pytest.raises(ckpt.DeviceUnavailableError, match=f"cannot load tensors onto {device}"):
        ckpt.torch.load_state(directory)
    assert ckpt.torch.load_state(directory, map_location="cpu")["x"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "shape", [[0, 2**70], [2**62 - 1, 2**62 - 1, 0], [2**40, 2**40, 0]], ids=str
)
def test_load_state_refuses_a_shape_no_tensor_can_have(tmp_path: Path, shape: list[int]) -> None:
    directory = _state_file(tmp_path, shape=shape)
    with pytest.raises(ckpt.SerializationError, match="beyond what a tensor can hold"):
        ckpt.torch.load_state(directory)


@pytest.mark.parametrize("device", ["meta", "META", "meta:0"])
def test_load_state_refuses_a_file_claiming_meta_tensors(tmp_path: Path, device: str) -> None:
    directory = _state_file(tmp_path, device=device)
    with pytest.raises(ckpt.SerializationError, match="claims the device 'meta'"):
        ckpt.torch.load_state(directory)
    with pytest.raises(ckpt.SerializationError, match="claims the device 'meta'"):
        ckpt.torch.load_state(directory, map_location="cpu")


class _Payload:
    """What a crafted pickle holds: loading it with `pickle.load` creates ``sentinel``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.sentinel,))


def _dcp_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # DCP says it saves from one process: it does
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(directory), no_dist=True)
    return directory


def test_load_state_into_refuses_crafted_dcp_metadata_and_runs_nothing(tmp_path: Path) -> None:
    directory = _dcp_checkpoint(tmp_path / "dcp", {"w": torch.arange(4.0), "step": 7})
    into: dict[str, Any] = {"w": torch.zeros(4), "step": 0}
    ckpt.torch.load_state(directory, into=into)  # the real one loads, non-tensor values too
    assert into["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert into["step"] == 7
    sentinel = tmp_path / "ran"
    (directory / ".metadata").write_bytes(pickle.dumps(_Payload(sentinel)))
    with pytest.raises(ckpt.SerializationError, match=r"dcp/\.metadata is not DCP metadata"):
        ckpt.torch.load_state(directory, into={"w": torch.zeros(4), "step": 0})
    assert not sentinel.exists()


def test_load_state_into_refuses_a_crafted_dcp_value_and_runs_nothing(tmp_path: Path) -> None:
    sentinel = tmp_path / "ran"
    directory = _dcp_checkpoint(tmp_path / "dcp", {"w": torch.ones(2), "obj": _Payload(sentinel)})
    assert not sentinel.exists()
    with pytest.raises(ckpt.SerializationError, match=r"the value 'obj' of the DCP checkpoint"):
        ckpt.torch.load_state(directory, into={"w": torch.zeros(2), "obj": None})
    assert not sentinel.exists()


@pytest.mark.parametrize("crafted", ["common.pt", ".metadata"])
def test_resume_paths_refuse_a_crafted_megatron_file_and_run_nothing(
    tmp_path: Path, crafted: str
) -> None:
    sentinel = tmp_path / "ran"
    iteration = tmp_path / "step_3" / "policy" / "weights" / "iter_0000000"
    _dcp_checkpoint(iteration, {"decoder.w": torch.zeros(2), "optimizer.exp_avg": torch.zeros(2)})
    torch.save({"iteration": 3}, iteration / "common.pt")
    (iteration / "metadata.json").write_text(
        json.dumps({"sharded_backend": "torch_dist", "common_backend": "torch"})
    )
    real = CheckpointManager.get_resume_paths(tmp_path / "step_3", model_component="policy")
    assert real[1] == tmp_path / "step_3" / "policy" / "optimizer"
    if crafted == "common.pt":
        torch.save(_Payload(sentinel), iteration / "common.pt")
    else:
        (iteration / ".metadata").write_bytes(pickle.dumps(_Payload(sentinel)))
    with pytest.raises(ckpt.SerializationError, match=re.escape(crafted)):
        CheckpointManager.get_resume_paths(tmp_path / "step_3", model_component="policy")
    assert not sentinel.exists()


@pytest.mark.parametrize("kind", ["directory", "FIFO, socket or device"])
def test_load_state_of_a_special_state_file_is_refused_without_blocking(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / ckpt.torch.STATE_FILE
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    with pytest.raises(ckpt.SerializationError, match=f"is a {kind}, not a state file"):
        ckpt.torch.load_state(tmp_path)


def test_a_failed_pins_write_leaves_no_partial_file(
    make_manager: Callable[..., CheckpointManager],
    save: Any,
    ckpt_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = make_manager(fsync=True)
    save(manager, 1)
    manager.pin(1)

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.storage.local.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        manager.unpin(1)
    monkeypatch.undo()
    assert [r.pinned for r in manager.list_checkpoints()] == [True]  # as on disk
    assert sorted(p.name for p in (ckpt_dir / ".ckpt").iterdir()) == [
        "lock",
        "pins.json",
        "ranking.json",
        "trash",
    ]
    assert json.loads((ckpt_dir / ".ckpt" / "pins.json").read_text()) == {"pinned": [1]}
