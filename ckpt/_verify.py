"""Checking a checkpoint directory against the on-disk contract, without changing it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal

from ckpt import _layout
from ckpt._config.resolve import policies_from_config
from ckpt._config.schema import CheckpointConfig, config_section, load_config
from ckpt._directory import meta as _meta
from ckpt._directory import registry as _writers
from ckpt._directory.records import (
    CheckpointRecord,
    NotACheckpointError,
    VanishedError,
    load_record,
)
from ckpt.commit import directory as commits
from ckpt.commit.base import Committed
from ckpt.commit.manifest import (
    Manifest,
    ManifestFile,
    read_files_record,
    read_manifest,
    record_digest,
)
from ckpt.commit.rename import Leftover, find_leftovers, trash_dir
from ckpt.storage import (
    CheckpointPath,
    Entry,
    EntryKind,
    PathInput,
    Storage,
    join,
    name_of,
    open_storage,
    user_path,
    walk_files,
)
from ckpt.storage._digest import hash_file, hasher
from policies import ByMetric, decide, metric_value

logger = logging.getLogger("ckpt")

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing `verify` found wrong in a checkpoint directory.

    Attributes:
        severity: ``"error"`` when a checkpoint is damaged or only reachable by
            recovery; ``"warning"`` for leftovers that recovery cleans up and for
            departures from the configured retention.
        code: A stable identifier, for example ``"leftover_temporary"``.
        path: The entry concerned.
        message: What is wrong.
        hint: What to do about it.
    """

    severity: Severity
    code: str
    path: CheckpointPath
    message: str
    hint: str

    def to_dict(self) -> dict[str, str]:
        """The problem as JSON-ready data."""
        return {
            "severity": self.severity,
            "code": self.code,
            "path": str(self.path),
            "message": self.message,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` found in a checkpoint directory.

    Attributes:
        directory: The directory checked.
        steps: The steps of the complete checkpoints found, ascending.
        problems: Every problem found, errors first.
        writer_active: Whether a writer held the directory's lock during the check; its
            temporaries are then saves in progress, not leftovers.
        deleting: While a writer is active: the files of checkpoints it deleted that its
            reaper is still removing (in ``.ckpt/trash``). Nothing reads them; a writer
            removes them off its saves' path.
    """

    directory: CheckpointPath
    steps: tuple[int, ...]
    problems: tuple[Problem, ...]
    writer_active: bool
    deleting: tuple[CheckpointPath, ...] = ()

    @property
    def ok(self) -> bool:
        """``True`` when no problem is an error (warnings allowed)."""
        return not self.errors

    @property
    def errors(self) -> tuple[Problem, ...]:
        """The problems of severity ``"error"``."""
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        """The problems of severity ``"warning"``."""
        return tuple(p for p in self.problems if p.severity == "warning")

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "directory": str(self.directory),
            "ok": self.ok,
            "writer_active": self.writer_active,
            "deleting": [str(path) for path in self.deleting],
            "steps": list(self.steps),
            "problems": [problem.to_dict() for problem in self.problems],
        }


PROBLEM_CODES: Mapping[str, Severity] = MappingProxyType(
    {
        "missing_directory": "error",
        "not_a_directory": "error",
        "unreadable_info": "error",
        "unsafe_metadata": "error",
        "broken_manifest": "error",
        "interrupted_overwrite": "error",
        "checksum_mismatch": "error",
        "size_mismatch": "error",
        "unreadable_record": "error",
        "no_checksums": "warning",
        "unrecorded_file": "warning",
        "leftover_temporary": "warning",
        "leftover_displaced": "warning",
        "interrupted_delete": "warning",
        "unrecognized_entry": "warning",
        "unreadable_pins": "warning",
        "stale_pin": "warning",
        "should_be_pruned": "warning",
        "missing_metric": "warning",
        "preempted_unsaved": "warning",
    }
)
"""Every code `verify` reports, with its severity (``ckpt check --ignore CODE``)."""


def _problem(code: str, path: CheckpointPath, message: str, hint: str) -> Problem:
    return Problem(PROBLEM_CODES[code], code, path, message, hint)


_OPEN_WRITER = "open a writer on it (any CheckpointManager that is not read-only) to recover"


def _writer_active(storage: Storage, directory: str) -> bool:
    with _writers.writers_mutex:
        if storage.canonical(directory) in _writers.writers:
            # Probing would be wrong here: closing any descriptor of the lock file drops
            # this process's own POSIX lock on it.
            return True
        return storage.lock_held(join(directory, _layout.META_DIR, _layout.LOCK_FILE))


def _config(
    directory: str, config: CheckpointConfig | Mapping[str, Any] | str | os.PathLike[str]
) -> CheckpointConfig:
    if isinstance(config, CheckpointConfig):
        return config
    if isinstance(config, Mapping):
        # The directory checked is the argument; a config need not name it.
        return load_config({"checkpoint_dir": directory, **config_section(config)[0]})
    return load_config(config)


def verify(
    checkpoint_dir: PathInput,
    config: CheckpointConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    storage: Storage | None = None,
    storage_options: Mapping[str, Any] | None = None,
    deep: bool = False,
) -> VerifyReport:
    """Check a checkpoint directory and list every problem found.

    It reports leftover temporaries, interrupted overwrites and deletes, ``step_N``
    entries that are not a directory with a readable ``training_info.json``, entries
    named like checkpoints that the manager ignores, and pins of missing steps. Given
    a config, it also reports checkpoints its retention would prune and checkpoints
    missing the metric its ranking needs. While a writer holds the directory, its
    temporaries are saves in progress and are not reported.

    With ``deep``, it also reads every file of every checkpoint and compares its
    XXH3-128 digest with the one recorded when the checkpoint was committed (in its
    manifest, or in ``step_N/.ckpt-files.json``): each file that differs, is cut
    short or is missing is a ``checksum_mismatch`` naming it. That is the one change
    a check makes: the damaged checkpoints are remembered in ``.ckpt/damaged.json``,
    and from then on no manager returns one as the best or latest (a checkpoint saved
    again at that step is a new one; a later deep check that finds it whole again
    forgets it). Without ``deep`` nothing is changed and no file's bytes are read.

    Run it in CI after a training job, or on a directory before resuming from it.

    Args:
        checkpoint_dir: The directory to check.
        config: The run's checkpointing config (a `CheckpointConfig`, a mapping or a
            YAML file); its ``checkpoint_dir`` is ignored in favour of the argument.
        storage: Where the directory is (default: the storage its path or URL names).
        storage_options: For a URL, options for its fsspec file system (default: the
            config's ``storage_options``).
        deep: Read every checkpoint's files and check their digests (see above).

    Returns:
        The report; ``report.ok`` is ``False`` when any problem is an error.

    Raises:
        pydantic.ValidationError: If ``config`` does not validate.
        ConfigFileError: If ``config`` names a file that is not valid YAML.
    """
    settings = _config(str(checkpoint_dir), config) if config is not None else None
    if storage_options is None and settings is not None:
        storage_options = settings.storage_options
    storage, location = open_storage(checkpoint_dir, storage_options, storage=storage)
    directory = user_path(storage, location)
    root = storage.entry(location)
    if root is None or root.kind != "dir":
        what = "does not exist" if root is None else f"is a {root.kind}, not a directory"
        problem = _problem(
            "missing_directory",
            directory,
            f"{directory} {what}",
            "check the path (and the config's checkpoint_dir)",
        )
        return VerifyReport(directory, (), (problem,), writer_active=False)
    problems = [
        _problem(
            "unsafe_metadata",
            user_path(storage, unsafe.path),
            f"{unsafe.detail}; a writer refuses to open this directory (it never follows "
            f"a link out of it), and readers ignore the pins",
            "move the entry away; a writer recreates what it needs",
        )
        for unsafe in _meta.unsafe_metadata(storage, location)
    ]
    meta_ok = not problems
    live = meta_ok and _writer_active(storage, location)
    entries = {entry.name: entry for entry in storage.list_dir(location)}
    found, broken = commits.committed(storage, location, entries)
    records: dict[int, CheckpointRecord] = {}
    damaged: dict[int, _meta.Damage] = {}
    for step, checkpoint in sorted(found.items()):
        kind = entries[_layout.step_name(step)].kind if checkpoint.kind == "rename" else "dir"
        record = _check_step(storage, checkpoint, kind, problems)
        if record is not None:
            records[step] = record
            bad = _check_files(storage, location, checkpoint, problems, deep=deep)
            if bad:
                damaged[step] = _damage(storage, checkpoint, bad)
    if deep and meta_ok:
        _remember_damage(storage, location, damaged)
    problems += _name_problems(directory, entries, broken)
    deleting: tuple[CheckpointPath, ...] = ()
    if live:
        # While a writer works, its temporaries are saves and overwrites in progress.
        problems += [
            _leftover_problem(directory, leftover)
            for leftover in find_leftovers(entries)
            if leftover.kind == "foreign"
        ]
        deleting = _deleting(storage, location, meta_ok=meta_ok)
    else:
        problems += _leftover_problems(storage, location, entries, found, meta_ok=meta_ok)
    pins = _check_pins(storage, location, records, problems) if meta_ok else set()
    problems += _preemption_problems(storage, location, records) if meta_ok else []
    for step in pins & records.keys():
        records[step] = replace(records[step], pinned=True)
    if settings is not None:
        _check_retention(settings, records, problems)
    problems.sort(key=lambda p: (p.severity != "error", str(p.path), p.code))
    return VerifyReport(
        directory, tuple(sorted(records)), tuple(problems), writer_active=live, deleting=deleting
    )


def _name_problems(
    directory: CheckpointPath, entries: Mapping[str, Entry], broken: list[commits.BrokenManifest]
) -> list[Problem]:
    problems = [
        _problem(
            "broken_manifest",
            directory / manifest.name,
            f"{manifest.detail}; step {manifest.step} is not a checkpoint",
            "restore the attempt it names, or move the manifest away",
        )
        for manifest in broken
    ]
    problems += [
        _problem(
            "unrecognized_entry",
            directory / name,
            f"{name} looks like a checkpoint name but is not one (steps are written "
            f"without leading zeros or signs); the manager ignores it",
            "rename or move it if it is a checkpoint you need",
        )
        for name in sorted(entries)
        if name.startswith(("step_", "tmp_step_", "old_step_")) and not _known(name)
    ]
    return problems


def _deleting(storage: Storage, location: str, *, meta_ok: bool) -> tuple[CheckpointPath, ...]:
    """What a live writer's reaper has yet to remove: its trash.

    (On an object store a deleted checkpoint's attempt cannot be told from a save in
    progress, which no manifest names yet either: only the trash is reported.)
    """
    if not meta_ok:
        return ()
    trash = trash_dir(location)
    return tuple(user_path(storage, join(trash, e.name)) for e in storage.list_dir(trash))


def _leftover_problems(
    storage: Storage,
    location: str,
    entries: Mapping[str, Entry],
    found: Mapping[int, Committed],
    *,
    meta_ok: bool,
) -> list[Problem]:
    """What crashes left, when no writer is at work: every protocol's, and the trash."""
    directory = user_path(storage, location)
    problems = [
        # What recovery would do, said alike: a temporary ckpt did not make stays.
        _leftover_problem(
            directory,
            leftover
            if leftover.kind != "temporary"
            or commits.made_by_ckpt(storage, join(location, leftover.name))
            else replace(leftover, kind="foreign", detail=f"it {commits.NOT_OURS}"),
        )
        for leftover in find_leftovers(entries)
    ]
    named = {name_of(c.path) for c in found.values()}
    problems += [
        _problem(
            "leftover_temporary",
            directory / name,
            f"{name} is named by no manifest: a save of step {step} that never "
            f"committed, or the previous copy of an overwrite or delete",
            _OPEN_WRITER + ", which removes it",
        )
        for name, step in commits.unnamed_attempts(entries, named)
    ]
    if meta_ok:
        trash = trash_dir(location)
        problems += [
            _problem(
                "interrupted_delete",
                user_path(storage, join(trash, entry.name)),
                f"a delete of {entry.name.rsplit('.', 1)[0]} was interrupted",
                _OPEN_WRITER,
            )
            for entry in storage.list_dir(trash)
        ]
    return problems


def _check_files(
    storage: Storage, location: str, checkpoint: Committed, problems: list[Problem], *, deep: bool
) -> tuple[str, ...]:
    """A checkpoint's files against its record; with ``deep``, the ones found damaged.

    One read of the record and one listing of the files serve every check: sizes and
    files missing or added since the commit (no file is read), and with ``deep`` every
    byte.
    """
    manifest = _manifest_of(storage, location, checkpoint)
    listed = _files_of(storage, checkpoint)
    if manifest is not None:
        problems += _check_manifest(storage, location, checkpoint, manifest, listed)
    recorded = _recorded_files(storage, checkpoint, manifest, problems, deep=deep)
    if recorded is not None and recorded[0]:
        if checkpoint.kind == "rename":  # a manifest's sizes are checked above
            problems += _check_sizes(storage, checkpoint, recorded[0], listed)
        problems += _unrecorded(storage, checkpoint, recorded[0], listed)
    return _check_contents(storage, checkpoint, recorded, listed, problems) if deep else ()


def _manifest_of(storage: Storage, location: str, checkpoint: Committed) -> Manifest | None:
    """The manifest of a manifest checkpoint, read once for every check of it.

    ``None`` for a ``step_N`` directory, or if the manifest was replaced or removed
    since the listing (a live writer's doing).
    """
    if checkpoint.kind != "manifest":
        return None
    try:
        return read_manifest(storage, location, checkpoint.step)
    except (OSError, ValueError):
        return None


def _files_of(storage: Storage, checkpoint: Committed) -> dict[str, Entry]:
    """The checkpoint's files by path under it, from one listing."""
    prefix = checkpoint.path.rstrip("/") + "/"
    return {
        path.removeprefix(prefix): entry for path, entry in walk_files(storage, checkpoint.path)
    }


def _check_manifest(
    storage: Storage,
    location: str,
    checkpoint: Committed,
    manifest: Manifest,
    found: Mapping[str, Entry],
) -> list[Problem]:
    """The attempt's files against the sizes its manifest lists (a listing: no reads)."""
    listed = {f.path: f for f in manifest.files}
    missing = sorted(listed.keys() - found.keys())
    both = listed.keys() & found.keys()
    resized = sorted(p for p in both if listed[p].size != found[p].size)
    # Where a version names the content (an ETag), a file rewritten in place shows too.
    rewritten = sorted(
        p
        for p in both
        if listed[p].etag is not None
        and listed[p].size == found[p].size
        and listed[p].etag != found[p].version
    )
    if not missing and not resized and not rewritten:
        return []
    parts = [f"missing {', '.join(missing[:5])}"] if missing else []
    parts += [f"another size: {', '.join(resized[:5])}"] if resized else []
    parts += [f"another ETag: {', '.join(rewritten[:5])}"] if rewritten else []
    name = _layout.manifest_name(checkpoint.step)
    return [
        _problem(
            "broken_manifest",
            user_path(storage, join(location, name)),
            f"{name} lists files its attempt does not hold as listed ({'; '.join(parts)}); "
            f"step {checkpoint.step} is damaged",
            "restore the files from a copy, or delete the step",
        )
    ]


def _remember_damage(storage: Storage, location: str, damaged: dict[int, _meta.Damage]) -> None:
    """Make ``.ckpt/damaged.json`` this check's verdict (written only if it changes)."""
    before = _meta.read_damage(storage, location)
    same = {s: (d.version, d.files, d.record) for s, d in before.items()} == {
        s: (d.version, d.files, d.record) for s, d in damaged.items()
    }
    if same:
        return
    try:
        _meta.write_damage(storage, location, damaged)
    except OSError as exc:
        logger.warning("could not remember the damage found in %s: %s", location, exc)


def _recorded_files(
    storage: Storage,
    checkpoint: Committed,
    manifest: Manifest | None,
    problems: list[Problem],
    *,
    deep: bool,
) -> tuple[tuple[ManifestFile, ...], str] | None:
    """What the checkpoint's record lists, and the record's name; ``None``: nothing to check.

    A record that is damaged or cannot be read (too large, a link, a directory, a FIFO)
    is itself a problem, and lists nothing: ``((), name)``.
    """
    if checkpoint.kind == "manifest":
        # Gone since the listing (a live writer's doing) if None; a damaged one is reported.
        return None if manifest is None else (manifest.files, _layout.manifest_name(manifest.step))
    path = user_path(storage, checkpoint.path)
    try:
        files = read_files_record(storage, checkpoint.path)
    except OSError as exc:
        if storage.entry(checkpoint.path) is None:
            return None  # pruned by a live writer since the listing
        problems.append(
            _problem(
                "unreadable_record",
                path / _layout.FILES_RECORD,
                f"{path.name}/{_layout.FILES_RECORD}, the record of its files' sizes and "
                f"digests, cannot be read ({exc}): step {checkpoint.step}'s files cannot "
                f"be checked against it (a state file is still checked against its own "
                f"trailer by --deep)",
                "restore the step from a copy, or delete it",
            )
        )
        return (), _layout.FILES_RECORD
    except ValueError as exc:
        problems.append(
            _problem(
                "checksum_mismatch",
                path / _layout.FILES_RECORD,
                f"{path.name}/{_layout.FILES_RECORD}, the record of its files' digests, is "
                f"damaged ({exc}): step {checkpoint.step} cannot be checked",
                "restore the step from a copy, or delete it",
            )
        )
        return (), _layout.FILES_RECORD
    if files is None:
        if not deep:
            return None
        problems.append(
            _problem(
                "no_checksums",
                path,
                f"{path.name} has no record of its files' digests (committed by an older "
                f"ckpt, or by NeMo RL's manager): its bytes cannot be checked",
                "save the step again to have it recorded, or ignore this code",
            )
        )
        return None
    return files, _layout.FILES_RECORD


def _differs(
    storage: Storage, path: str, entry: Entry | None, recorded: ManifestFile
) -> str | None:
    """How the file at ``path`` (listed as ``entry``) differs from its record; ``None``: not."""
    if entry is None:
        return "is missing"  # the listing shows files only: a directory there is missing too
    if entry.size != recorded.size:
        return f"is {entry.size} bytes, and {recorded.size} were recorded (cut short?)"
    try:
        if recorded.xxh3_128 is not None:
            same = hash_file(storage, path)[1] == recorded.xxh3_128
        elif recorded.sha256 is not None:  # a manifest of an older ckpt
            same = hash_file(storage, path, hashlib.sha256)[1] == recorded.sha256
        else:  # an older manifest on an object store: the ETag the store computed
            same = entry.version == recorded.etag
    except OSError as exc:
        return f"cannot be read ({exc})"
    return None if same else "does not hash to the digest recorded at its commit"


def _check_contents(
    storage: Storage,
    checkpoint: Committed,
    recorded: tuple[tuple[ManifestFile, ...], str] | None,
    listed: Mapping[str, Entry],
    problems: list[Problem],
) -> tuple[str, ...]:
    """Hash every file the checkpoint's record lists; the files that do not match.

    ``listed`` is one listing of the checkpoint's files (no request per file). A record
    that lists nothing (damaged or unreadable, reported already) counts as damage, and
    every state file is still checked against the digest it ends with.
    """
    found: list[Problem] = []
    if recorded is None:
        return ()
    files, record = recorded
    root = user_path(storage, checkpoint.path)
    bad = []
    if not files and any(p.code in _RECORD_CODES and p.path == root / record for p in problems):
        bad.append(record)
        for name in sorted(listed):
            if _trailer_ok(storage, join(checkpoint.path, name)) is False:
                bad.append(name)
                found.append(
                    _problem(
                        "checksum_mismatch",
                        root / name,
                        f"{root.name}/{name} does not hash to the digest it ends with: "
                        f"step {checkpoint.step} is damaged",
                        "restore the file from a copy, or delete the step",
                    )
                )
    for item in files:
        why = _differs(storage, join(checkpoint.path, item.path), listed.get(item.path), item)
        if why is None:
            continue
        bad.append(item.path)
        found.append(
            _problem(
                "checksum_mismatch",
                root / item.path,
                f"{root.name}/{item.path} {why}: step {checkpoint.step} is damaged",
                "restore the file from a copy, or delete the step; best and latest skip "
                "it from now on",
            )
        )
    if bad and _changed(storage, checkpoint):
        return ()  # a live writer replaced or pruned it while it was read: not damage
    problems += found
    return tuple(bad)


_RECORD_CODES = ("unreadable_record", "checksum_mismatch")


def _trailer_ok(storage: Storage, path: str) -> bool | None:
    """Whether a ckpt state file matches the digest it ends with; ``None``: not one of those."""
    try:
        with storage.open_read(path) as f:
            head = f.read(16)
            if len(head) < 16 or head[:8] != _layout.STATE_MAGIC:
                return None
            length = int.from_bytes(head[8:], "little")
            if length > 1 << 30:
                return False
            header = f.read(length)
            try:
                fmt = json.loads(header).get("format")
            except (ValueError, AttributeError, RecursionError):
                return False
            if not isinstance(fmt, int) or fmt < 2:
                return None  # format 1: no trailer
            digest = hasher()
            digest.update(head)
            digest.update(header)
            tail = b""
            while chunk := f.read(4 << 20):
                data = tail + chunk
                digest.update(data[: -_layout.STATE_TRAILER])
                tail = data[-_layout.STATE_TRAILER :]
            return len(tail) == _layout.STATE_TRAILER and digest.digest() == tail
    except OSError:
        return False


def _check_sizes(
    storage: Storage,
    checkpoint: Committed,
    files: tuple[ManifestFile, ...],
    listed: Mapping[str, Entry],
) -> list[Problem]:
    """The files of a ``step_N`` directory against the sizes its record lists (no reads)."""
    root = user_path(storage, checkpoint.path)
    out = []
    for item in files:
        entry = listed.get(item.path)
        if entry is not None and entry.size == item.size:
            continue
        why = "is missing" if entry is None else f"is {entry.size} bytes, not {item.size}"
        out.append(
            _problem(
                "size_mismatch",
                root / item.path,
                f"{root.name}/{item.path} {why} as recorded at its commit: step "
                f"{checkpoint.step} is damaged (cut short, or changed since)",
                "restore the file from a copy, or delete the step; `ckpt check --deep` "
                "compares every byte",
            )
        )
    return out


def _unrecorded(
    storage: Storage,
    checkpoint: Committed,
    files: tuple[ManifestFile, ...],
    listed: Mapping[str, Entry],
) -> list[Problem]:
    """Files in a checkpoint that its record does not list: added after its commit."""
    known = {f.path for f in files} | {_layout.FILES_RECORD}
    root = user_path(storage, checkpoint.path)
    return [
        _problem(
            "unrecorded_file",
            root / name,
            f"{root.name}/{name} is not in the record made at step {checkpoint.step}'s "
            f"commit (added since): nothing vouches for its bytes, and replication does "
            f"not copy it",
            "move it out of the checkpoint, or save the step again to record it",
        )
        for name in sorted(listed.keys() - known)
    ]


def _damage(storage: Storage, checkpoint: Committed, bad: tuple[str, ...]) -> _meta.Damage:
    """What a deep check remembers of a damaged checkpoint, keyed on its record.

    The record's own digest names this checkpoint as committed: a copy (``cp -a``), or
    a file created and removed beside it, changes the directory's identity but not its
    record, so the damage stays; a save of the step again writes a new record.
    """
    try:
        record = record_digest(storage, checkpoint)
    except (OSError, ValueError):
        record = None
    return _meta.Damage(checkpoint.step, checkpoint.version, bad, time.time(), record)


def _changed(storage: Storage, checkpoint: Committed) -> bool:
    """Whether the checkpoint is no longer the version that was listed."""
    entry = storage.entry(checkpoint.manifest or checkpoint.path)
    return entry is None or entry.version != checkpoint.version


def _known(name: str) -> bool:
    """Whether ``name`` is one of the names a protocol gives (or a crash leaves)."""
    patterns = (_layout.STEP, _layout.TMP, _layout.OLD, _layout.ATTEMPT, _layout.MANIFEST)
    return any(pattern.fullmatch(name) for pattern in patterns)


def _check_step(
    storage: Storage, checkpoint: Committed, kind: EntryKind, problems: list[Problem]
) -> CheckpointRecord | None:
    step, path = checkpoint.step, user_path(storage, checkpoint.path)
    try:
        return load_record(storage, checkpoint, kind)
    except VanishedError:
        return None  # a live writer pruned it while we read: not damage
    except NotACheckpointError as exc:
        if exc.code == "not_a_directory":
            hint = "move it out of the checkpoint directory"
            also = f"cannot publish step {step}"
        else:
            hint = "restore the file from a copy, or move the directory away"
            also = f"refuses to publish step {step} over it"
        message = f"{path.name}: {exc.detail}; the manager ignores it and {also}"
        problems.append(_problem(exc.code, path, message, hint))
        return None


def _leftover_problem(directory: CheckpointPath, leftover: Leftover) -> Problem:
    name, path = leftover.name, directory / leftover.name
    final = _layout.step_name(leftover.step)
    if leftover.kind == "temporary":
        return _problem(
            "leftover_temporary",
            path,
            f"{name} was left by a save that never finished; it is not a checkpoint",
            _OPEN_WRITER + ", which removes it",
        )
    if leftover.kind == "displaced":
        return _problem(
            "leftover_displaced",
            path,
            f"{name} is the previous copy of {final}, left by an overwrite that had completed",
            _OPEN_WRITER + ", which removes it",
        )
    if leftover.kind == "interrupted_overwrite":
        return _problem(
            "interrupted_overwrite",
            path,
            f"an overwrite of {final} was interrupted: the only copy of step "
            f"{leftover.step} is {name}, and loaders looking for {final} miss it",
            _OPEN_WRITER + ", which renames it back",
        )
    return _problem(
        "unrecognized_entry",
        path,
        f"{name} is named like a leftover of a crash but {leftover.detail}; recovery "
        f"leaves it alone, the manager ignores it, and a save of step {leftover.step} "
        f"refuses to start while it is there",
        "move it out of the checkpoint directory if it is not yours",
    )


def _check_pins(
    storage: Storage,
    directory: str,
    records: Mapping[int, CheckpointRecord],
    problems: list[Problem],
) -> set[int]:
    path = user_path(storage, join(directory, _layout.META_DIR, _layout.PINS_FILE))
    try:
        pins = _meta.read_pins(storage, directory)
    except (OSError, ValueError) as exc:
        problems.append(
            _problem(
                "unreadable_pins",
                path,
                f"the pins file cannot be read ({exc}); no checkpoint counts as pinned",
                "pin the steps you need again (the next pin rewrites the file)",
            )
        )
        return set()
    for step in sorted(pins - records.keys()):
        problems.append(
            _problem(
                "stale_pin",
                path,
                f"step {step} is pinned but has no checkpoint",
                "unpin it; a writer drops such pins when it opens the directory",
            )
        )
    return pins


def _preemption_problems(
    storage: Storage, directory: str, records: Mapping[int, CheckpointRecord]
) -> list[Problem]:
    """A warning when the run's last preemption got no checkpoint, nor any since."""
    record = _meta.read_preemption(storage, directory)
    if record is None or record.step is not None:
        return []
    if any((r.committed_at or 0.0) > record.received_at for r in records.values()):
        return []  # the run was restarted and saved since
    path = user_path(storage, _meta.preemption_path(directory))
    return [
        _problem(
            "preempted_unsaved",
            path,
            record.describe(),
            "the run lost the steps since its newest checkpoint: `save_async` more often, "
            "or raise `preemption_grace_s` to the grace the scheduler gives",
        )
    ]


def _check_retention(
    config: CheckpointConfig, records: Mapping[int, CheckpointRecord], problems: list[Problem]
) -> None:
    ranking, retention = policies_from_config(config)
    if isinstance(ranking, ByMetric):
        for step in sorted(records):
            if metric_value(records[step].info, ranking.name) is None:
                problems.append(
                    _problem(
                        "missing_metric",
                        records[step].path,
                        f"step {step} has no usable `{ranking.name}` (missing, NaN, "
                        f"infinite or not a number), so it ranks below every other",
                        f"log `{ranking.name}` in training_info when saving",
                    )
                )
    for decision in decide(retention, list(records.values())):
        if not decision.keep:
            problems.append(
                _problem(
                    "should_be_pruned",
                    records[decision.step].path,
                    f"step {decision.step} is {decision.reason}",
                    "prune with `ckpt prune DIR --config CFG` or "
                    "CheckpointManager.remove_old_checkpoints()",
                )
            )
