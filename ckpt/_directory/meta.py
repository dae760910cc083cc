"""ckpt's own bookkeeping under a checkpoint directory: ``.ckpt`` and what is in it."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ckpt import _layout
from ckpt._config.serialize import decode_pins, decode_ranking
from ckpt._directory.records import PreemptionRecord
from ckpt._errors import SerializationError, UnsafeFileError
from ckpt.storage.base import EntryKind, Storage, describe_kind, join

logger = logging.getLogger("ckpt")

# ckpt's own entries under the checkpoint directory, and the kind each must be.
_META_KINDS: tuple[tuple[tuple[str, ...], EntryKind], ...] = (
    ((_layout.META_DIR,), "dir"),
    ((_layout.META_DIR, _layout.TRASH_DIR), "dir"),
    ((_layout.META_DIR, _layout.LOCK_FILE), "file"),
    ((_layout.META_DIR, _layout.PINS_FILE), "file"),
    ((_layout.META_DIR, _layout.RANKING_FILE), "file"),
    ((_layout.META_DIR, _layout.CATALOG_FILE), "file"),
    ((_layout.META_DIR, _layout.DAMAGE_FILE), "file"),
    ((_layout.META_DIR, _layout.PREEMPTION_FILE), "file"),
    ((_layout.META_DIR, _layout.REPLICATION_FILE), "file"),
)


@dataclass(frozen=True)
class UnsafeEntry:
    """One of ckpt's own entries (``.ckpt``, its trash, lock, pins or ranking), wrong kind."""

    path: str
    found: EntryKind
    expected: EntryKind

    @property
    def detail(self) -> str:
        return (
            f"{self.path} is a {describe_kind(self.found)}, where ckpt keeps a "
            f"{describe_kind(self.expected)} of its own"
        )


def unsafe_metadata(storage: Storage, directory: str) -> list[UnsafeEntry]:
    """The entries of ckpt's own under ``directory`` that are not what ckpt made, outermost first.

    A link there would send the lock, the pins and above all the trash (which is
    emptied) somewhere else; nothing below a wrong ``.ckpt`` is looked at.
    """
    found: list[UnsafeEntry] = []
    for parts, expected in _META_KINDS:
        if found and found[0].path == join(directory, parts[0]):
            break  # a bad .ckpt: what is inside is not ours to look into
        path = join(directory, *parts)
        entry = storage.entry(path)
        if entry is not None and entry.kind != expected:
            found.append(UnsafeEntry(path, entry.kind, expected))
    return found


def check_metadata(storage: Storage, directory: str) -> None:
    """Refuse to write in ``directory`` if ckpt's own entries are not what ckpt made.

    Raises:
        UnsafeFileError: Naming each wrong entry; nothing was changed.
    """
    problems = unsafe_metadata(storage, directory)
    if problems:
        raise UnsafeFileError(
            "; ".join(p.detail for p in problems)
            + ". ckpt never follows a link out of the checkpoint directory, so it will not "
            "write here: move the entry away (a writer recreates what it needs)"
        )


def _meta_file(storage: Storage, directory: str, name: str) -> bytes | None:
    """A file of ``.ckpt``; ``None`` if absent. `UnsafeFileError` if ``.ckpt`` is a link."""
    meta = storage.entry(join(directory, _layout.META_DIR))
    if meta is None:
        return None
    if meta.kind != "dir":
        raise UnsafeFileError(
            f"{join(directory, _layout.META_DIR)} is a {describe_kind(meta.kind)}, not ckpt's "
            f"own directory; its {name} is not read"
        )
    try:
        return storage.read_bytes(join(directory, _layout.META_DIR, name))
    except FileNotFoundError:
        return None


def read_ranking(storage: Storage, directory: str) -> dict[str, Any] | None:
    """The ranking the run's writer recorded: ``{"metric_name", "higher_is_better"}``.

    A run ranked by a custom object records ``{"custom": repr}`` instead; ``None`` if
    nothing is recorded (a directory NeMo RL's manager or an older ckpt wrote).

    Raises:
        UnsafeFileError: If ``.ckpt`` or the file is a link or a special file.
        SerializationError: If the file does not hold a ranking record (a
            ``ValueError``).
        OSError: If it cannot be read.
    """
    data = _meta_file(storage, directory, _layout.RANKING_FILE)
    if data is None:
        return None
    try:
        return decode_ranking(data)
    except ValueError as exc:
        raise SerializationError(
            f"{join(directory, _layout.META_DIR, _layout.RANKING_FILE)} is not a ranking "
            f"record ckpt wrote ({exc}); a writer replaces it at its next commit"
        ) from None


def read_pins(storage: Storage, directory: str) -> set[int]:
    """The pinned steps of ``directory``; none if it has no pins file.

    Raises:
        UnsafeFileError: If ``.ckpt`` or its pins file is a link or a special file.
        SerializationError: If the pins file does not hold a list of steps (a
            ``ValueError``).
        OSError: If it cannot be read.
    """
    data = _meta_file(storage, directory, _layout.PINS_FILE)
    if data is None:
        return set()
    try:
        return decode_pins(data)
    except ValueError as exc:
        raise SerializationError(
            f"{join(directory, _layout.META_DIR, _layout.PINS_FILE)} is not a pins record "
            f"ckpt wrote ({exc})"
        ) from None


_DAMAGE_FORMAT = 1


@dataclass(frozen=True)
class Damage:
    """A checkpoint a deep check found damaged, as ``.ckpt/damaged.json`` remembers it.

    Attributes:
        step: The step.
        version: The checkpoint's version then (its directory's or manifest's).
        files: The files whose bytes did not match the record (paths under it).
        found_at: When the check found it (seconds since the epoch).
        record: The digest its record ends with: the checkpoint as committed. A copy of
            the directory, or a file created and removed in it, changes ``version`` and
            not this; a checkpoint saved again at the step has a new record, and is not
            damaged. ``None`` in records of older ckpt (``version`` alone decides).
    """

    step: int
    version: str
    files: tuple[str, ...]
    found_at: float
    record: str | None = None


def damage_path(directory: str) -> str:
    """Where the remembered damage of ``directory`` is."""
    return join(directory, _layout.META_DIR, _layout.DAMAGE_FILE)


def read_damage(storage: Storage, directory: str) -> dict[int, Damage]:
    """The checkpoints deep checks found damaged, by step; none if nothing is remembered.

    One read, no more, on every scan (a file that is absent costs a failed open), and
    an unreadable file is logged and taken as empty: the record is advice for best
    and latest, and losing it loses no checkpoint.
    """
    try:
        raw: Any = json.loads(storage.read_bytes(damage_path(directory)))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        logger.warning("ignoring %s: %s", damage_path(directory), exc)
        return {}
    found: dict[int, Damage] = {}
    items = raw.get("damaged") if isinstance(raw, dict) else None
    if (
        not isinstance(raw, dict)
        or raw.get("format") != _DAMAGE_FORMAT
        or not isinstance(items, dict)
    ):
        logger.warning("ignoring %s: not a ckpt damage record", damage_path(directory))
        return {}
    for key, item in items.items():
        try:
            step = int(key)
            files = tuple(str(name) for name in item["files"])
            record = item.get("record")
            found_at = float(item["found_at"])
            if not math.isfinite(found_at) or not isinstance(record, (str, type(None))):
                raise ValueError("not a damage entry")
            found[step] = Damage(step, str(item["version"]), files, found_at, record)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
            logger.warning("ignoring an entry of %s: %.100r", damage_path(directory), item)
            continue
    return found


def write_damage(storage: Storage, directory: str, damage: Mapping[int, Damage]) -> None:
    """Replace the remembered damage of ``directory`` (atomically, durably)."""
    data = {
        "format": _DAMAGE_FORMAT,
        "damaged": {
            str(step): {
                "version": d.version,
                "files": list(d.files),
                "found_at": d.found_at,
                **({"record": d.record} if d.record is not None else {}),
            }
            for step, d in sorted(damage.items())
        },
    }
    storage.make_dirs(join(directory, _layout.META_DIR))
    storage.replace_file(damage_path(directory), json.dumps(data, indent=1).encode(), durable=True)


_PREEMPTION_FORMAT = 1
# What reading an advisory record that ckpt did not write can raise: it is logged and
# the record ignored (a huge number is an OverflowError, a wrong type a TypeError...).
_UNPARSED = (
    OSError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    OverflowError,
    RecursionError,
)


def preemption_path(directory: str) -> str:
    """Where the record of the last preemption of ``directory`` is."""
    return join(directory, _layout.META_DIR, _layout.PREEMPTION_FILE)


def read_preemption(storage: Storage, directory: str) -> PreemptionRecord | None:
    """The last preemption recorded in ``directory``, or ``None``.

    An unreadable record is logged and taken as none: it is a report, and losing it
    loses no checkpoint.
    """
    try:
        raw: Any = json.loads(storage.read_bytes(preemption_path(directory)))
        if not isinstance(raw, dict) or raw.get("format") != _PREEMPTION_FORMAT:
            raise ValueError("not a ckpt preemption record")
        step = raw["step"]
        after = raw.get("saved_after_s")
        times = [float(raw["received_at"]), float(raw["grace_s"])]
        times += [] if after is None else [float(after)]
        if not all(map(math.isfinite, times)):
            raise ValueError("a time in it is not a finite number")
        return PreemptionRecord(
            str(raw["signal"]),
            times[0],
            times[1],
            None if step is None else int(step),
            bool(raw["emergency"]),
            tuple(int(s) for s in raw.get("skipped", ())),
            None if after is None else times[2],
        )
    except FileNotFoundError:
        return None
    except _UNPARSED as exc:
        logger.warning("ignoring %s: %s", preemption_path(directory), exc)
        return None


def write_preemption(storage: Storage, directory: str, record: PreemptionRecord) -> None:
    """Replace the record of the last preemption of ``directory`` (atomically, durably)."""
    data = {"format": _PREEMPTION_FORMAT, **asdict(record)}
    data["skipped"] = list(record.skipped)
    storage.make_dirs(join(directory, _layout.META_DIR))
    path = preemption_path(directory)
    storage.replace_file(path, json.dumps(data, indent=1).encode(), durable=True)


_REPLICATION_FORMAT = 1


def replication_path(directory: str) -> str:
    """Where the local tier of ``directory`` records what is replicated."""
    return join(directory, _layout.META_DIR, _layout.REPLICATION_FILE)


@dataclass(frozen=True)
class ReplicationRecord:
    """What a local tier records of its replica (``.ckpt/replication.json``).

    Attributes:
        to: Where the replica was when this was written (as the config named it).
        replicated: Local checkpoints whose replica was committed there (step: the
            local version then).
        pruned: Steps the replica's own retention deleted after they were replicated.
    """

    to: str | None = None
    replicated: Mapping[int, str] = field(default_factory=dict)
    pruned: frozenset[int] = frozenset()


def read_replication(storage: Storage, directory: str) -> ReplicationRecord:
    """Where the replica is, the local checkpoints replicated there, and what it pruned.

    A checkpoint of a step whose version differs from the one recorded was saved again
    since, and is not replicated. An unreadable record is logged and taken as empty:
    then every local checkpoint is uploaded again, which loses nothing.
    """
    try:
        raw: Any = json.loads(storage.read_bytes(replication_path(directory)))
        if not isinstance(raw, dict) or raw.get("format") != _REPLICATION_FORMAT:
            raise ValueError("not a ckpt replication record")
        to = raw.get("to")
        done = {int(step): str(version) for step, version in raw["replicated"].items()}
        pruned = frozenset(int(step) for step in raw.get("pruned", ()))
        return ReplicationRecord(None if to is None else str(to), done, pruned)
    except FileNotFoundError:
        return ReplicationRecord()
    except _UNPARSED as exc:
        logger.warning("ignoring %s: %s", replication_path(directory), exc)
        return ReplicationRecord()


def write_replication(storage: Storage, directory: str, record: ReplicationRecord) -> None:
    """Replace the record of what is replicated (atomically, durably)."""
    data = {
        "format": _REPLICATION_FORMAT,
        "to": record.to,
        "replicated": {str(step): record.replicated[step] for step in sorted(record.replicated)},
        "pruned": sorted(record.pruned),
    }
    storage.make_dirs(join(directory, _layout.META_DIR))
    path = replication_path(directory)
    storage.replace_file(path, json.dumps(data, indent=1).encode(), durable=True)
