"""The rename protocol: a temporary directory, synced, then renamed into place.

Every state a crash can leave is one that `recover` turns back into a clean directory
where every finalized step is present, complete, under its own name:

* ``tmp_step_N`` is never a checkpoint. A crash leaves it either unfinished, or
  holding the previous ``step_N`` after an atomic exchange. Either way it goes.
* ``old_step_N`` only exists between the two renames of an overwrite on systems
  without an atomic exchange (and in directories NeMo RL's manager wrote). Without
  ``step_N`` the overwrite is rolled back by renaming it back; with ``step_N`` the
  overwrite had completed and it goes.
* A delete first renames ``step_N`` into ``.ckpt/trash/`` in one step, then removes
  the files, so a crash never leaves a half-deleted ``step_N``; recovery empties the
  trash.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ckpt import _layout
from ckpt.commit.base import CommitKind, Committed, Place
from ckpt.commit.manifest import encode_files_record, list_attempt
from ckpt.storage.base import Entry, join, name_of

logger = logging.getLogger("ckpt")


def trash_dir(directory: str) -> str:
    """Where deletes move a checkpoint before removing its files: ``.ckpt/trash``."""
    return join(directory, _layout.META_DIR, _layout.TRASH_DIR)


def discard(place: Place, path: str) -> None:
    """Delete ``path`` in two phases: one rename out of its name, then the removal.

    The removal is the place's reaper's, in the background, where it has one. If it
    fails, the entry stays in the trash for the next recovery, and the error is logged
    rather than raised: its name is already gone.
    """
    storage = place.storage
    trashed = join(trash_dir(place.directory), f"{name_of(path)}.{uuid.uuid4().hex[:12]}")
    storage.rename(path, trashed)
    place.sync()
    try:
        place.reap(trashed)
    except OSError as exc:
        logger.error("could not remove %s (left for the next recovery): %s", trashed, exc)


def publish(place: Place, tmp: str, step: int, *, replacing: bool) -> None:
    """Move the finished temporary ``tmp`` to ``step_N``, replacing any previous one.

    The caller has synced ``tmp`` already and says whether a ``step_N`` directory
    exists. An existing one is replaced by an atomic exchange where the OS has one,
    else by two renames that `recover` rolls back if interrupted; either way the
    displaced copy is then discarded.
    """
    storage, directory = place.storage, place.directory
    final = join(directory, _layout.step_name(step))
    displaced: str | None = None
    if not replacing:
        storage.rename(tmp, final)
    elif storage.exchange(tmp, final):
        displaced = tmp  # now holds the previous step_N
    else:
        old = join(directory, _layout.old_name(step))
        if storage.entry(old) is not None:
            discard(place, old)
        storage.rename(final, old)
        storage.rename(tmp, final)
        displaced = old
    place.sync()
    if displaced is not None:
        discard(place, displaced)


@dataclass(frozen=True)
class RenameProtocol:
    """Commit by renaming ``tmp_step_N`` to ``step_N``: the layout NeMo RL's manager uses.

    The attempt is ``tmp_step_N``. Committing records its files' sizes and digests in
    ``.ckpt-files.json`` inside it, fsyncs every file and directory in it,
    renames it to ``step_N`` (an existing ``step_N`` is swapped out atomically with
    ``renameat2(RENAME_EXCHANGE)``, or moved aside to ``old_step_N`` first where the
    file system lacks it), and fsyncs the parent. It needs a storage with atomic
    renames and directories: local disk.
    """

    @property
    def name(self) -> CommitKind:
        """``"rename"``."""
        return "rename"

    def prepare(self, place: Place, step: int) -> str:
        """Make an empty ``tmp_step_N``; a leftover one must be discarded first."""
        tmp = join(place.directory, _layout.tmp_name(step))
        place.storage.make_dir(tmp)
        return tmp

    def attempt_step(self, name: str) -> int | None:
        """N, for ``tmp_step_N``."""
        return _layout.parse(_layout.TMP, name)

    def commit(
        self,
        place: Place,
        attempt: str,
        step: int,
        *,
        existing: Committed | None,
        training_info: bytes | None = None,
        digests: Mapping[str, str] | None = None,
    ) -> Committed:
        """Record, sync and rename ``tmp_step_N`` to ``step_N``; drop the one it replaced.

        The record of every file's size and digest (`_layout.FILES_RECORD`) is written
        into ``tmp_step_N`` first, so it is published with the files it describes.
        ``training_info`` is not needed: the file is published with the directory.

        An ``existing`` checkpoint of the other protocol is the caller's to delete.
        """
        storage = place.storage
        record = encode_files_record(list_attempt(storage, attempt, digests))
        # Not atomic, and need not be: nothing reads tmp_step_N, and the rename below
        # publishes the record whole (synced with the files, where durable).
        path = join(attempt, _layout.FILES_RECORD)
        storage.remove_file(path)  # a failed commit's, before a retry
        storage.write_bytes(path, record)
        if place.durable:
            storage.sync_tree(attempt)
        replacing = existing is not None and existing.kind == "rename"
        publish(place, attempt, step, replacing=replacing)
        final = join(place.directory, _layout.step_name(step))
        entry = storage.entry(final)
        return Committed(
            step,
            "rename",
            final,
            entry.version if entry is not None else "",
            entry.mtime if entry is not None else 0.0,
        )


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
