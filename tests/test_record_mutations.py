"""Every record ckpt reads, crafted: it is refused or ignored, and nothing outside the run moves.

Each record a run holds (a checkpoint's ``.ckpt-files.json`` and manifest, and
``ranking.json``, ``pins.json``, ``damaged.json``, ``preemption.json``,
``replication.json``, ``catalog.json`` under ``.ckpt/``, and the HF callback's
``saving.json`` and a Trainer checkpoint's ``trainer_state.json``; the catalog on a
store) is replaced in turn by
an oversized file, JSON of the wrong types, JSON with 401-digit numbers, names with
``..``, a symbolic link out of the run, a directory and a FIFO. Records that end with
their own digest are re-signed, so the crafted content is what is read. Then a writer
opens the run and saves, a reader asks everything, a deep check and the command line
run: each either works or raises a ckpt error (never a raw ``OverflowError``,
``AttributeError``...), nothing waits on the FIFO, and nothing outside the run changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt._directory import meta
from ckpt.cli import main as cli_main
from ckpt.commit.manifest import self_digest
from tests.conftest import snapshot_tree

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.torch]

HUGE = 10**400
SIGNED = (".ckpt-files.json", "step_2.manifest.json")


def _state(step: int) -> dict[str, Any]:
    return {"w": torch.full((256,), float(step))}


def _run(root: Path, protocol: str) -> None:
    config = {
        "checkpoint_dir": str(root),
        "fsync": False,
        "metric_name": "loss",
        "higher_is_better": False,
        "keep_top_k": 3,
        "commit_protocol": protocol,
    }
    with ckpt.CheckpointManager(config) as manager:
        for step in (1, 2):
            manager.save(step, {"step": step, "loss": 1.0 / step}, _state(step))
        manager.pin(1)
    storage, location = ckpt.LocalStorage(), str(root)
    meta.write_damage(storage, location, {1: meta.Damage(1, "v", ("state.ckpt",), 1.0, "d")})
    meta.write_preemption(
        storage, location, ckpt.PreemptionRecord("SIGTERM", 1.0, 30.0, 2, False, (), 0.5)
    )
    meta.write_replication(
        storage, location, meta.ReplicationRecord("/elsewhere/replica", {2: "v"}, frozenset())
    )


def _walk(value: Any, number: Callable[[Any], Any], text: Callable[[str], Any]) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v, number, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, number, text) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return number(value)
    if isinstance(value, str):
        return text(value)
    return value


def _wrong_types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ([] if k == "format" else {"x": [None]}) for k in value}
    return {"format": [1]}


def _crafted(path: Path, how: str, outside: Path) -> None:
    """Replace the record at ``path`` by one crafted ``how``."""
    original = path.read_bytes()
    parsed = json.loads(original)
    if path.is_symlink() or path.exists():
        path.unlink()
    if how == "link":
        target = outside / f"{path.name}.target"
        target.write_bytes(original)
        path.symlink_to(target)
        return
    if how == "directory":
        path.mkdir()
        (path / "inside").write_bytes(original)
        return
    if how == "fifo":
        os.mkfifo(path)
        return
    if how == "oversized":
        path.write_bytes(b"{" + b" " * (65 << 20) + b"}")
        return
    if how == "huge":
        crafted = _walk(parsed, lambda _: HUGE, lambda s: s)
    elif how == "dotdot":
        crafted = _walk(parsed, lambda n: n, lambda s: "../../outside/" + s.rsplit("/", 1)[-1])
    else:
        crafted = _wrong_types(parsed)
    if path.name in SIGNED and isinstance(crafted, dict):
        crafted.pop("digest", None)
        crafted["digest"] = self_digest(crafted)  # well-formed, as an attacker would
    path.write_text(json.dumps(crafted))


def _allowed(call: Callable[[], Any], what: str, failures: list[str]) -> None:
    """Run ``call`` with a bound; any error but a ckpt error is a failure."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except ckpt.CheckpointError:
            pass
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        failures.append(f"{what}: still running after 60 s (waiting on a FIFO?)")
    elif errors:
        failures.append(f"{what}: {type(errors[0]).__name__}: {str(errors[0])[:200]}")


def _exercise(root: Path, protocol: str, failures: list[str]) -> None:
    config = {"checkpoint_dir": str(root), "fsync": False, "commit_protocol": protocol}

    def writer() -> None:
        with ckpt.CheckpointManager(config) as manager:
            manager.list_checkpoints()
            manager.get_latest_checkpoint_path()
            manager.get_best_checkpoint_path()
            manager.replication_status()
            manager.save(9, {"step": 9, "loss": 0.01}, _state(9))

    def reader() -> None:
        with ckpt.CheckpointManager(config, read_only=True) as manager:
            manager.list_checkpoints()
            manager.get_latest_checkpoint_path()
            manager.get_best_checkpoint_path()
            manager.last_preemption()
            manager.replication_status()
            manager.recorded_ranking()
            manager.overview()

    def cli() -> None:
        for argv in (
            ["ls", str(root)],
            ["ls", str(root), "--json"],
            ["check", str(root)],
            ["prune", str(root), "--dry-run"],
        ):
            # A usage error exits through argparse: a clear message, no traceback.
            with contextlib.suppress(SystemExit):
                cli_main(argv)

    _allowed(lambda: ckpt.verify(root, deep=True), "verify", failures)
    _allowed(reader, "a reader", failures)
    _allowed(cli, "the command line", failures)
    _allowed(writer, "a writer", failures)


RECORDS = {
    "rename": [
        "step_2/.ckpt-files.json",
        ".ckpt/ranking.json",
        ".ckpt/pins.json",
        ".ckpt/damaged.json",
        ".ckpt/preemption.json",
        ".ckpt/replication.json",
    ],
    "manifest": ["step_2.manifest.json"],
}
CASES = [(protocol, record) for protocol, records in RECORDS.items() for record in records]
HOW = ["oversized", "wrong-types", "huge", "dotdot", "link", "directory", "fifo"]


@pytest.mark.parametrize(("protocol", "record"), CASES)
def test_a_crafted_record_is_refused_or_ignored(
    tmp_path: Path, protocol: str, record: str, capsys: pytest.CaptureFixture[str]
) -> None:
    failures: list[str] = []
    for how in HOW:
        base = tmp_path / how
        root, outside = base / "run", base / "outside"
        outside.mkdir(parents=True)
        (outside / "keep.bin").write_bytes(b"not ckpt's")
        _run(root, protocol)
        path = root / record
        assert path.is_file(), f"the run has no {record}"
        _crafted(path, how, outside)
        before = snapshot_tree(outside)
        found: list[str] = []
        _exercise(root, protocol, found)
        failures += [f"{record} {how}: {line}" for line in found]
        if snapshot_tree(outside) != before:
            failures.append(f"{record} {how}: something outside the run changed")
        if how == "fifo" and found:
            with open(path, "wb"):  # release whatever waits on it
                pass
    capsys.readouterr()
    assert failures == []


def test_a_crafted_hf_bookkeeping_file_is_refused_or_ignored(tmp_path: Path) -> None:
    from ckpt.hf import CheckpointCallback

    failures: list[str] = []
    for how in HOW:
        for name in (".ckpt/hf/saving.json", "checkpoint-4/trainer_state.json"):
            base = tmp_path / how / name.split("/")[0].strip(".")
            root, outside = base / "run", base / "outside"
            outside.mkdir(parents=True)
            (root / ".ckpt" / "hf").mkdir(parents=True)
            (root / ".ckpt" / "hf" / "saving.json").write_text('{"checkpoint": "checkpoint-4"}')
            (root / "checkpoint-4").mkdir()
            (root / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
            (root / "checkpoint-4" / "model.safetensors").write_bytes(b"weights")
            _crafted(root / name, how, outside)
            before = snapshot_tree(outside)
            callback = CheckpointCallback({"checkpoint_dir": str(root), "fsync": False})
            found: list[str] = []
            _allowed(partial(callback._tidy, str(root)), "the callback's tidy", found)
            failures += [f"{name} {how}: {line}" for line in found]
            if snapshot_tree(outside) != before:
                failures.append(f"{name} {how}: something outside the run changed")
            shutil.rmtree(base, ignore_errors=True)
    assert failures == []


def test_a_crafted_catalog_on_a_store_is_ignored() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    failures: list[str] = []
    for n, how in enumerate(["oversized", "wrong-types", "huge", "dotdot", "directory"]):
        url = f"memory://mutated-catalog-{n}"
        config = {"checkpoint_dir": url, "lease_seconds": 5}
        with ckpt.CheckpointManager(config) as manager:
            for step in (1, 2, 3):
                manager.save(step, {"step": step}, _state(step))
        key = f"/mutated-catalog-{n}/.ckpt/catalog.json"
        parsed = json.loads(fs.cat_file(key))
        if how == "oversized":
            crafted = b"{" + b" " * (65 << 20) + b"}"
        elif how == "directory":
            fs.rm_file(key)
            fs.pipe_file(key + "/inside", b"{}")
            crafted = None
        elif how == "huge":
            crafted = json.dumps(_walk(parsed, lambda _: HUGE, str)).encode()
        elif how == "dotdot":
            crafted = json.dumps(_walk(parsed, lambda x: x, lambda s: "../../" + s)).encode()
        else:
            crafted = json.dumps(_wrong_types(parsed)).encode()
        if crafted is not None:
            fs.pipe_file(key, crafted)

        def reopen(config: dict[str, Any] = config) -> None:
            with ckpt.CheckpointManager(config) as manager:
                assert [r.step for r in manager.list_checkpoints()] == [1, 2, 3]
                manager.save(4, {"step": 4}, _state(4))

        _allowed(reopen, f"catalog {how}", failures)
        fs.rm(f"/mutated-catalog-{n}", recursive=True)
    assert failures == []
