"""Single-controller jobs: workers report what they wrote, the driver's manager checks it.

In NeMo RL (and any Ray job) the manager lives in the driver, and workers in other
processes, maybe on other hosts of a shared file system, write into the checkpoint's
temporary directory. An fsync in the driver does not make another host's writes
durable, so each worker calls `mark_written` itself: it fsyncs its files and records
them (name and size) in ``.ckpt-writers/<writer_id>.json`` inside the checkpoint. A
driver that named its writers (``init_tmp_checkpoint(..., writers=[...])``) refuses to
publish until every one has reported and every file it reported is there at its size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from typing import Any

from ckpt._errors import IncompleteCheckpointError
from ckpt.storage import (
    CheckpointPath,
    PathInput,
    Storage,
    join,
    location_of,
    open_storage,
    parent_of,
    user_path,
    walk_files,
)

MARKS_DIR = ".ckpt-writers"
_WRITER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_writer_id(writer_id: object) -> str:
    """``writer_id`` if it can name a report file; `ValueError` otherwise."""
    if not isinstance(writer_id, str) or not _WRITER_ID.fullmatch(writer_id):
        raise ValueError(
            f"`writer_id` must be 1-128 letters, digits, '.', '_' or '-' (not starting "
            f"with a punctuation mark), got {writer_id!r}"
        )
    return writer_id


def mark_written(
    checkpoint_path: PathInput,
    writer_id: str,
    files: Iterable[PathInput] | None = None,
    *,
    storage: Storage | None = None,
    storage_options: dict[str, Any] | None = None,
) -> CheckpointPath:
    """Make this worker's files in a temporary checkpoint durable, and report them.

    Call it in the worker process, after its last write into the directory that the
    driver's `CheckpointManager.init_tmp_checkpoint` returned, and before the driver
    finalizes. It fsyncs the files (and the directories holding them), then writes
    ``.ckpt-writers/<writer_id>.json`` listing each file and its size, durably. A
    driver that expects this writer refuses to publish without that report, or if a
    file it lists is missing or changed size.

    Args:
        checkpoint_path: The temporary checkpoint the driver handed out.
        writer_id: This worker's name, as the driver expects it (``"policy-3"``).
        files: What this worker wrote: files or directories, absolute or relative to
            ``checkpoint_path``. ``None``: everything under ``checkpoint_path``.
        storage: Where the checkpoint is (default: the storage its path or URL names).
        storage_options: For a URL, passed to its fsspec file system.

    Returns:
        The path of the report.

    Raises:
        ValueError: If ``writer_id`` cannot name a file, or a file is outside the
            checkpoint.
        FileNotFoundError: If the checkpoint or a listed file does not exist.
    """
    writer_id = check_writer_id(writer_id)
    storage, root = open_storage(checkpoint_path, storage_options, storage=storage)
    if storage.entry(root) is None and storage.capabilities.directories:
        raise FileNotFoundError(f"no temporary checkpoint at {root}")
    prefix = root.rstrip("/") + "/"
    targets = [root] if files is None else [_inside(storage, root, item) for item in files]
    reported: dict[str, int] = {}
    parents: set[str] = set()  # every directory between a target and the root
    for target in targets:
        found = storage.entry(target)
        if found is None:
            raise FileNotFoundError(f"{target} does not exist (listed in `files`)")
        if found.kind == "dir":
            for path, entry in walk_files(storage, target):
                name = path.removeprefix(prefix)
                if not name.startswith(MARKS_DIR + "/"):
                    reported[name] = entry.size
        else:
            reported[target.removeprefix(prefix)] = found.size
        parent = target
        while parent != root:
            parent = parent_of(parent)
            parents.add(parent)
    if storage.capabilities.fsync:
        # This worker's files only (another worker's are its own to sync), then the
        # directories naming them, deepest first.
        for target in targets:
            storage.sync_tree(target)
        for path in sorted(parents - {root}, key=len, reverse=True):
            storage.sync_dir(path)
    marks = join(root, MARKS_DIR)
    storage.make_dirs(marks)
    report = join(marks, f"{writer_id}.json")
    data = json.dumps({"writer": writer_id, "files": reported}, indent=1).encode()
    storage.replace_file(report, data, durable=True)
    if storage.capabilities.fsync:
        storage.sync_dir(root)
    return user_path(storage, report)


def _inside(storage: Storage, root: str, item: PathInput) -> str:
    text = str(item)
    absolute = text.startswith(("/", "file:")) or "://" in text
    path = location_of(storage, item) if absolute else join(root, text)
    prefix = root.rstrip("/") + "/"
    if ".." in path.split("/") or not path.startswith(prefix):
        raise ValueError(f"{item} is not inside the checkpoint {root}")
    return path


def check_reports(storage: Storage, attempt: str, expected: Collection[str]) -> None:
    """Raise unless every expected writer reported and its files are there at their size.

    Raises:
        IncompleteCheckpointError: Naming the writers missing and the files that are
            missing or changed.
    """
    if not expected:
        return
    prefix = attempt.rstrip("/") + "/"
    found = {path.removeprefix(prefix): entry.size for path, entry in walk_files(storage, attempt)}
    missing = [w for w in sorted(expected) if f"{MARKS_DIR}/{w}.json" not in found]
    problems = []
    for writer in sorted(set(expected) - set(missing)):
        try:
            raw = json.loads(storage.read_bytes(join(attempt, MARKS_DIR, f"{writer}.json")))
            listed = raw["files"]
            if not isinstance(listed, dict):
                raise TypeError("its files are not a mapping")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{writer}'s report is unreadable ({exc})")
            continue
        for name, size in sorted(listed.items()):
            have = found.get(name)
            if have is None:
                problems.append(f"{writer} wrote {name}, which is gone")
            elif have != size:
                problems.append(f"{writer} wrote {name} of {size} bytes, and it has {have}")
    if missing or problems:
        said = []
        if missing:
            said.append(f"no report from writer(s) {', '.join(missing)} (mark_written)")
        said.extend(problems)
        raise IncompleteCheckpointError(
            f"not publishing {attempt}: {'; '.join(said)}; it stays uncommitted",
            missing=tuple(missing),
        )
