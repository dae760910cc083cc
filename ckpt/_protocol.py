"""The on-disk protocol: publishing, two-phase deleting, and restart recovery.

Every state a crash can leave is one that `recover` turns back into a clean directory
where every finalized step is present, complete, under its own name:

* ``tmp_step_N`` is never a checkpoint. A crash leaves it either unfinished, or
  holding the previous ``step_N`` after an atomic exchange. Either way it goes.
* ``old_step_N`` only exists between the two renames of an overwrite on systems
  without an atomic exchange (and in directories the seed wrote). Without
  ``step_N`` the overwrite is rolled back by renaming it back; with ``step_N`` the
  overwrite had completed and it goes.
* A delete first renames ``step_N`` into ``.ckpt/trash/`` in one step, then removes
  the files, so a crash never leaves a half-deleted ``step_N``; recovery empties the
  trash.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ckpt import _layout
from ckpt._errors import UnsafeFileError
from ckpt._serialize import decode_pins, decode_ranking
from ckpt._storage import Entry, EntryKind, Storage, describe_kind

logger = logging.getLogger("ckpt")

RecoveryKind = Literal[
    "removed_temporary", "rolled_back_overwrite", "removed_displaced", "finished_delete"
]


@dataclass(frozen=True)
class RecoveryAction:
    """One thing restart recovery did to a checkpoint directory.

    Attributes:
        kind: What was done: ``"removed_temporary"``, ``"rolled_back_overwrite"``,
            ``"removed_displaced"`` or ``"finished_delete"``.
        path: The entry acted on.
        detail: A sentence for logs and reports.
    """

    kind: RecoveryKind
    path: Path
    detail: str


def trash_dir(directory: Path) -> Path:
    return directory / _layout.META_DIR / _layout.TRASH_DIR


# ckpt's own entries under the checkpoint directory, and the kind each must be.
_META_KINDS: tuple[tuple[tuple[str, ...], EntryKind], ...] = (
    ((_layout.META_DIR,), "dir"),
    ((_layout.META_DIR, _layout.TRASH_DIR), "dir"),
    ((_layout.META_DIR, _layout.LOCK_FILE), "file"),
    ((_layout.META_DIR, _layout.PINS_FILE), "file"),
    ((_layout.META_DIR, _layout.RANKING_FILE), "file"),
)


@dataclass(frozen=True)
class UnsafeEntry:
    """One of ckpt's own entries (``.ckpt``, its trash, lock, pins or ranking), wrong kind."""

    path: Path
    found: EntryKind
    expected: EntryKind

    @property
    def detail(self) -> str:
        return (
            f"{self.path} is a {describe_kind(self.found)}, where ckpt keeps a "
            f"{describe_kind(self.expected)} of its own"
        )


def unsafe_metadata(storage: Storage, directory: Path) -> list[UnsafeEntry]:
    """The entries of ckpt's own under ``directory`` that are not what ckpt made, outermost first.

    A link there would send the lock, the pins and above all the trash (which is
    emptied) somewhere else; nothing below a wrong ``.ckpt`` is looked at.
    """
    found: list[UnsafeEntry] = []
    for parts, expected in _META_KINDS:
        if found and found[0].path == directory / parts[0]:
            break  # a bad .ckpt: what is inside is not ours to look into
        path = directory.joinpath(*parts)
        entry = storage.entry(path)
        if entry is not None and entry.kind != expected:
            found.append(UnsafeEntry(path, entry.kind, expected))
    return found


def check_metadata(storage: Storage, directory: Path) -> None:
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


def _meta_file(storage: Storage, directory: Path, name: str) -> bytes | None:
    """A file of ``.ckpt``; ``None`` if absent. `UnsafeFileError` if ``.ckpt`` is a link."""
    meta = storage.entry(directory / _layout.META_DIR)
    if meta is None:
        return None
    if meta.kind != "dir":
        raise UnsafeFileError(
            f"{directory / _layout.META_DIR} is a {describe_kind(meta.kind)}, not ckpt's "
            f"own directory; its {name} is not read"
        )
    try:
        return storage.read_bytes(directory / _layout.META_DIR / name)
    except FileNotFoundError:
        return None


def read_ranking(storage: Storage, directory: Path) -> dict[str, Any] | None:
    """The ranking the run's writer recorded: ``{"metric_name", "higher_is_better"}``.

    A run ranked by a custom object records ``{"custom": repr}`` instead; ``None`` if
    nothing is recorded (a directory NeMo RL's manager or an older ckpt wrote).

    Raises:
        UnsafeFileError: If ``.ckpt`` or the file is a link or a special file.
        ValueError: If the file does not hold a ranking record.
        OSError: If it cannot be read.
    """
    data = _meta_file(storage, directory, _layout.RANKING_FILE)
    return None if data is None else decode_ranking(data)


def read_pins(storage: Storage, directory: Path) -> set[int]:
    """The pinned steps of ``directory``; none if it has no pins file.

    Raises:
        UnsafeFileError: If ``.ckpt`` or its pins file is a link or a special file.
        ValueError: If the pins file does not hold a list of steps.
        OSError: If it cannot be read.
    """
    data = _meta_file(storage, directory, _layout.PINS_FILE)
    return set() if data is None else decode_pins(data)


def discard(storage: Storage, directory: Path, path: Path, *, durable: bool) -> None:
    """Delete ``path`` in two phases: one rename out of its name, then the removal.

    If the removal fails, the entry stays in the trash for the next recovery, and
    the error is logged rather than raised: its name is already gone.
    """
    trashed = trash_dir(directory) / f"{path.name}.{uuid.uuid4().hex[:12]}"
    storage.rename(path, trashed)
    if durable:
        storage.sync_dir(directory)
    try:
        storage.remove_tree(trashed)
    except OSError as exc:
        logger.error("could not remove %s (left for the next recovery): %s", trashed, exc)


def publish(
    storage: Storage, directory: Path, tmp: Path, step: int, *, replacing: bool, durable: bool
) -> None:
    """Move the finished temporary ``tmp`` to ``step_N``, replacing any previous one.

    The caller has synced ``tmp`` already and says whether a ``step_N`` directory
    exists. An existing one is replaced by an atomic exchange where the OS has one,
    else by two renames that `recover` rolls back if interrupted; either way the
    displaced copy is then discarded.
    """
    final = directory / _layout.step_name(step)
    displaced: Path | None = None
    if not replacing:
        storage.rename(tmp, final)
    elif storage.exchange(tmp, final):
        displaced = tmp  # now holds the previous step_N
    else:
        old = directory / _layout.old_name(step)
        if storage.entry(old) is not None:
            discard(storage, directory, old, durable=durable)
        storage.rename(final, old)
        storage.rename(tmp, final)
        displaced = old
    if durable:
        storage.sync_dir(directory)
    if displaced is not None:
        discard(storage, directory, displaced, durable=durable)


LeftoverKind = Literal["temporary", "interrupted_overwrite", "displaced", "foreign"]


@dataclass(frozen=True)
class Leftover:
    """An entry named like a crash's leftover, and which kind `recover` takes it for.

    ``"foreign"`` ones are left alone (they are not directories, or the ``step_N`` an
    ``old_step_N`` belongs to is not one); ``detail`` says why.
    """

    kind: LeftoverKind
    name: str
    step: int
    detail: str = ""


def find_leftovers(entries: Mapping[str, Entry]) -> list[Leftover]:
    """Classify the temporaries and displaced copies of a directory listing, by name."""
    found = []
    for name, entry in sorted(entries.items()):
        tmp_step = _layout.parse(_layout.TMP, name)
        old_step = _layout.parse(_layout.OLD, name)
        if tmp_step is None and old_step is None:
            continue
        step = tmp_step if tmp_step is not None else old_step
        assert step is not None
        if entry.kind != "dir":
            found.append(Leftover("foreign", name, step, f"it is a {entry.kind}, not a directory"))
        elif tmp_step is not None:
            found.append(Leftover("temporary", name, step))
        else:
            final = entries.get(_layout.step_name(step))
            if final is None:
                found.append(Leftover("interrupted_overwrite", name, step))
            elif final.kind == "dir":
                found.append(Leftover("displaced", name, step))
            else:
                detail = f"{final.name} is a {final.kind}"
                found.append(Leftover("foreign", name, step, detail))
    return found


def recover(
    storage: Storage, directory: Path, *, durable: bool, keep: Collection[str] = ()
) -> list[RecoveryAction]:
    """Finish or undo whatever a crash interrupted in ``directory``; log and return it.

    Entries named in ``keep`` (temporaries that live saves are writing) are left alone.
    """
    actions: list[RecoveryAction] = []
    entries = {entry.name: entry for entry in storage.list_dir(directory)}
    for leftover in find_leftovers(entries):
        name = leftover.name
        if name in keep:
            continue
        path = directory / name
        final_name = _layout.step_name(leftover.step)
        if leftover.kind == "foreign":
            logger.warning("leaving %s alone: %s", name, leftover.detail)
        elif leftover.kind == "temporary":
            discard(storage, directory, path, durable=durable)
            actions.append(
                RecoveryAction(
                    "removed_temporary", path, f"removed {name}, left by an unfinished save"
                )
            )
        elif leftover.kind == "interrupted_overwrite":
            storage.rename(path, directory / final_name)
            actions.append(
                RecoveryAction(
                    "rolled_back_overwrite",
                    directory / final_name,
                    f"renamed {name} back to {final_name}: an overwrite was interrupted "
                    f"before the new copy was in place",
                )
            )
        else:
            discard(storage, directory, path, durable=durable)
            actions.append(
                RecoveryAction(
                    "removed_displaced",
                    path,
                    f"removed {name}: the overwrite of {final_name} had completed",
                )
            )
    meta = directory / _layout.META_DIR
    for entry in storage.list_dir(meta):
        # What an interrupted replace_file (of pins.json) leaves; nothing reads it.
        if entry.kind == "file" and entry.name.startswith(".") and entry.name.endswith(".partial"):
            storage.remove_tree(meta / entry.name)
    for entry in storage.list_dir(trash_dir(directory)):
        storage.remove_tree(trash_dir(directory) / entry.name)
        actions.append(
            RecoveryAction(
                "finished_delete",
                trash_dir(directory) / entry.name,
                f"finished deleting {entry.name.rsplit('.', 1)[0]}, interrupted by a crash",
            )
        )
    if durable and actions:
        storage.sync_dir(directory)
    for action in actions:
        logger.warning("recovery in %s: %s", directory, action.detail)
    return actions
