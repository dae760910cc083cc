"""A checkpoint directory as every protocol left it: what is committed, deleting, recovery.

Readers and recovery know both protocols whichever one a manager writes with, so a
directory stays readable and recoverable when a run switches. If a step has both a
``step_N`` directory and a manifest (a switch interrupted by a crash), the manifest
is the checkpoint and ``step_N`` is the displaced copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ckpt import _layout
from ckpt._errors import RecoveryWarning, warn
from ckpt.commit.base import CommitProtocol, Committed, Place, RecoveryAction, RecoveryKind
from ckpt.commit.manifest import (
    Manifest,
    delete_manifest_checkpoint,
    read_manifest,
    remove_manifest,
)
from ckpt.commit.rename import discard, find_leftovers, trash_dir
from ckpt.storage import user_path
from ckpt.storage.base import Entry, Storage, describe_kind, join, name_of, walk_files

logger = logging.getLogger("ckpt")


@dataclass(frozen=True)
class BrokenManifest:
    """A manifest that cannot be trusted: its step, its name, and why (for messages)."""

    step: int
    name: str
    detail: str
    attempt_missing: bool = False  # its files are gone: recovery may remove the manifest


ManifestCache = dict[str, tuple[str, Manifest | BrokenManifest]]
"""Manifests already read, by name: (the entry's version then, what it held)."""


def committed(
    storage: Storage,
    directory: str,
    entries: Mapping[str, Entry],
    cache: ManifestCache | None = None,
) -> tuple[dict[int, Committed], list[BrokenManifest]]:
    """The committed checkpoints of a listing of ``directory``, by step.

    A ``step_N`` entry of any kind is reported (the caller checks that it is a
    checkpoint) where the storage has directories; on an object store only manifests
    make checkpoints, and a ``step_N/`` prefix is someone else's. A manifest counts only
    when it can be read and names an attempt the listing shows, on every store: on an
    object store an attempt whose objects were all removed (a lifecycle rule, an
    operator's ``rm``) is absent from the listing, at no extra request.
    With a ``cache`` (kept by the caller from scan to scan), a manifest is read again
    only when its entry's version changed, and the cache is pruned to this listing.
    """
    found: dict[int, Committed] = {}
    broken: list[BrokenManifest] = []
    manifests: list[tuple[str, Entry]] = []
    prefix = directory.rstrip("/") + "/"  # a cold start joins every name: keep it cheap
    renamed = storage.capabilities.directories  # where a rename protocol can have run
    for name, entry in entries.items():
        if not name.startswith("step_"):
            continue
        if name.endswith(".manifest.json"):
            manifests.append((name, entry))
            continue
        step = _layout.parse(_layout.STEP, name)
        if step is not None and renamed:
            found[step] = Committed(step, "rename", prefix + name, entry.version, entry.mtime)
    for name, entry in manifests:
        match = _layout.MANIFEST.fullmatch(name)
        if match is None:
            continue
        step = int(match.group(1))
        manifest_or_broken = _cached(storage, directory, step, name, entry, cache=cache)
        if isinstance(manifest_or_broken, BrokenManifest):
            broken.append(manifest_or_broken)
            continue
        manifest = manifest_or_broken
        attempt = entries.get(manifest.attempt)
        if attempt is None or attempt.kind != "dir":
            # A link there would have readers read, and deletes act, somewhere else.
            what = "missing" if attempt is None else f"a {describe_kind(attempt.kind)}"
            broken.append(
                BrokenManifest(
                    step,
                    name,
                    f"{name} names {manifest.attempt}, which is {what}",
                    attempt_missing=attempt is None,
                )
            )
            continue
        found[step] = Committed(
            step,
            "manifest",
            join(directory, manifest.attempt),
            entry.version,
            manifest.committed_at,
            manifest=join(directory, name),
            training_info=manifest.training_info,
        )
    if cache is not None:
        for name in cache.keys() - entries.keys():
            del cache[name]
    return found, broken


def _cached(
    storage: Storage,
    directory: str,
    step: int,
    name: str,
    entry: Entry,
    *,
    cache: ManifestCache | None,
) -> Manifest | BrokenManifest:
    """The manifest ``name``, read again only if its entry changed since it was cached."""
    cached = cache.get(name) if cache is not None else None
    if cached is not None and cached[0] == entry.version:
        return cached[1]
    found = _read(storage, directory, step, name, entry)
    if cache is not None:
        cache[name] = (entry.version, found)
    return found


def _read(
    storage: Storage, directory: str, step: int, name: str, entry: Entry
) -> Manifest | BrokenManifest:
    if entry.kind != "file":
        return BrokenManifest(step, name, f"{name} is not a file")
    try:
        return read_manifest(storage, directory, step)
    except (OSError, ValueError) as exc:
        return BrokenManifest(step, name, f"{name} cannot be read ({exc})")


def commit(
    protocol: CommitProtocol,
    place: Place,
    attempt: str,
    step: int,
    *,
    existing: Committed | None,
    training_info: bytes | None = None,
    digests: Mapping[str, str] | None = None,
) -> Committed:
    """Commit ``attempt`` with ``protocol``; then remove an ``existing`` of the other kind."""
    done = protocol.commit(
        place, attempt, step, existing=existing, training_info=training_info, digests=digests
    )
    if existing is not None and existing.kind != done.kind:
        delete(place, existing)
    return done


def delete(place: Place, checkpoint: Committed) -> None:
    """Delete a committed checkpoint so that no crash leaves half of it visible."""
    if checkpoint.kind == "manifest":
        delete_manifest_checkpoint(place, checkpoint)
    else:
        discard(place, checkpoint.path)


def abandon(place: Place, attempt: str) -> None:
    """Throw an uncommitted attempt away (renamed out first, where renames are atomic)."""
    capabilities = place.storage.capabilities
    if capabilities.atomic_rename and capabilities.directories:
        discard(place, attempt)
    else:
        place.storage.remove_tree(attempt)


def made_by_ckpt(storage: Storage, attempt: str) -> bool:
    """Whether ``attempt`` is one ckpt made, so that ckpt may delete it.

    ckpt writes ``training_info.json`` into an attempt before anything else is written
    there, so an attempt that holds files but not that one is somebody else's (a
    user's ``tmp_step_N``, a copy of another run's): never ckpt's to delete. An empty
    directory (a crash between making it and writing that file) holds nothing to lose.
    """
    info = storage.entry(join(attempt, _layout.INFO_FILE))
    if info is not None:
        return info.kind == "file"
    return storage.capabilities.directories and not storage.list_dir(attempt)


#: Why ckpt leaves an attempt that `made_by_ckpt` denies alone (after its name).
NOT_OURS = (
    f"holds files but no {_layout.INFO_FILE}, so ckpt did not make it and will not "
    f"delete it; move it out of the checkpoint directory"
)


def unnamed_attempts(entries: Mapping[str, Entry], named: Collection[str]) -> list[tuple[str, int]]:
    """The attempt prefixes (``step_N.<token>``) of a listing that no manifest names."""
    found = []
    for name in sorted(entries):
        match = _layout.ATTEMPT.fullmatch(name)
        if match is not None and name not in named:
            found.append((name, int(match.group(1))))
    return found


def recover(
    place: Place,
    *,
    keep: Collection[str] = (),
    grace: float = 0.0,
    cache: ManifestCache | None = None,
    listed: dict[str, Entry] | None = None,
) -> list[RecoveryAction]:
    """Finish or undo whatever a crash interrupted in ``directory``; log and return it.

    Entries named in ``keep`` (attempts that live saves are writing) are left alone,
    and so is an unnamed attempt with a file written less than ``grace`` seconds ago
    (where no lock keeps other writers out, it may be a live save of theirs).
    ``cache`` is the manifests already read (see `committed`). ``listed`` receives
    the listing recovery worked from: still the directory's if it did nothing.
    """
    storage, directory = place.storage, place.directory
    recovery = _Recovery(place, keep=keep, grace=grace, cache=cache)
    if storage.capabilities.atomic_rename:
        recovery.renames()  # where nothing renames, nothing is left half-renamed
    recovery.manifests()
    recovery.partials_and_trash()
    if listed is not None:
        listed.update(recovery.entries)
    # Even when nothing was left to undo: a crash between a commit's rename (or
    # manifest) and its directory fsync leaves a checkpoint this writer now reports
    # that a power cut could still take away. One fsync makes what it adopts durable.
    place.sync()
    for action in recovery.actions:
        warn(RecoveryWarning, f"recovery in {user_path(storage, directory)}: {action.detail}")
    return recovery.actions


class _Recovery:
    """One recovery of a directory: each protocol's leftovers, then ckpt's own."""

    def __init__(
        self,
        place: Place,
        *,
        keep: Collection[str],
        grace: float,
        cache: ManifestCache | None,
    ) -> None:
        self.place = place
        self.storage = storage = place.storage
        self.directory = directory = place.directory
        self.keep = keep
        self.grace = grace
        self.cache = cache
        self.actions: list[RecoveryAction] = []
        self.entries = {entry.name: entry for entry in storage.list_dir(directory)}

    def act(self, kind: RecoveryKind, path: str, detail: str) -> None:
        self.actions.append(RecoveryAction(kind, user_path(self.storage, path), detail))

    def discard(self, path: str) -> None:
        discard(self.place, path)

    def renames(self) -> None:
        """Temporaries go, interrupted overwrites are rolled back, displaced copies go."""
        for leftover in find_leftovers(self.entries):
            name = leftover.name
            if name in self.keep:
                continue
            path = join(self.directory, name)
            final_name = _layout.step_name(leftover.step)
            if leftover.kind == "foreign":
                logger.warning("leaving %s alone: %s", name, leftover.detail)
            elif leftover.kind != "interrupted_overwrite" and not made_by_ckpt(self.storage, path):
                logger.warning("leaving %s alone: it %s", name, NOT_OURS)
            elif leftover.kind == "temporary":
                self.discard(path)
                self.act("removed_temporary", path, f"removed {name}, left by an unfinished save")
            elif leftover.kind == "interrupted_overwrite":
                final = join(self.directory, final_name)
                self.storage.rename(path, final)
                self.act(
                    "rolled_back_overwrite",
                    final,
                    f"renamed {name} back to {final_name}: an overwrite was interrupted "
                    f"before the new copy was in place",
                )
            else:
                self.discard(path)
                self.act(
                    "removed_displaced",
                    path,
                    f"removed {name}: the overwrite of {final_name} had completed",
                )

    def manifests(self) -> None:
        """Attempts no manifest names go, and so does a ``step_N`` a manifest replaced."""
        if not any("." in name and name.startswith("step_") for name in self.entries):
            return  # no manifest and no attempt: a directory of the rename protocol
        found, broken = committed(self.storage, self.directory, self.entries, self.cache)
        for manifest in broken:
            if manifest.attempt_missing and manifest.name not in self.keep:
                self._remove_manifest(manifest)
        self._unnamed_attempts({name_of(c.path) for c in found.values() if c.kind == "manifest"})
        if self.storage.capabilities.atomic_rename:
            # Where nothing is renamed, a step_N/ beside a manifest is not ours.
            self._displaced(found)

    def _unnamed_attempts(self, named: Collection[str]) -> None:
        """Remove the attempts ckpt made that no manifest names (and no live save writes)."""
        for name, _step in unnamed_attempts(self.entries, named):
            path = join(self.directory, name)
            if name in self.keep or (self.grace and self._recent(path)):
                continue
            if not made_by_ckpt(self.storage, path):
                logger.warning("leaving %s alone: it %s", name, NOT_OURS)
                continue
            abandon(self.place, path)
            self.act(
                "removed_temporary",
                path,
                f"removed {name}: no manifest names it (a save that never committed, or "
                f"the previous copy of a step that was overwritten or deleted)",
            )

    def _displaced(self, found: Mapping[int, Committed]) -> None:
        """Remove each ``step_N`` checkpoint that a manifest of the same step replaced."""
        for step, checkpoint in sorted(found.items()):
            shadowed = self.entries.get(_layout.step_name(step))
            if checkpoint.kind != "manifest" or shadowed is None or shadowed.kind != "dir":
                continue
            path = join(self.directory, shadowed.name)
            info = self.storage.entry(join(path, _layout.INFO_FILE))
            if info is None or info.kind != "file":
                continue  # not a checkpoint: someone's files, never ours to delete
            self.discard(path)
            self.act(
                "removed_displaced",
                path,
                f"removed {shadowed.name}: {_layout.manifest_name(step)} replaced it",
            )

    def _remove_manifest(self, manifest: BrokenManifest) -> None:
        """Remove a manifest whose attempt is gone: it names nothing left to load."""
        path = join(self.directory, manifest.name)
        if not remove_manifest(self.storage, path, self.entries[manifest.name].version):
            return  # rewritten meanwhile: the next scan judges the new one
        del self.entries[manifest.name]
        self.act(
            "removed_broken_manifest",
            path,
            f"removed {manifest.name}: {manifest.detail}, so the checkpoint it committed "
            f"is gone (its files were deleted outside ckpt)",
        )

    def _recent(self, attempt: str) -> bool:
        """Whether a file of ``attempt`` was written less than ``grace`` seconds ago."""
        newest = max((entry.mtime for _, entry in walk_files(self.storage, attempt)), default=0.0)
        return time.time() - newest < self.grace

    def partials_and_trash(self) -> None:
        """What interrupted atomic writes leave (nothing reads it), and the trash."""
        storage = self.storage
        for name, entry in self.entries.items():
            if entry.kind == "file" and _partial_manifest(name):
                storage.remove_file(join(self.directory, name))
        meta = join(self.directory, _layout.META_DIR)
        for entry in storage.list_dir(meta):
            if (
                entry.kind == "file"
                and entry.name.startswith(".")
                and entry.name.endswith(".partial")
            ):
                storage.remove_tree(join(meta, entry.name))
        trash = trash_dir(self.directory)
        for entry in storage.list_dir(trash):
            if entry.name in self.keep:  # this process's reaper is removing it
                continue
            storage.remove_tree(join(trash, entry.name))
            self.act(
                "finished_delete",
                join(trash, entry.name),
                f"finished deleting {entry.name.rsplit('.', 1)[0]}, interrupted by a crash",
            )


def _partial_manifest(name: str) -> bool:
    """Whether ``name`` is what an interrupted write of a manifest leaves: ``.NAME.partial``."""
    suffix = ".partial"
    return (
        name.startswith(".")
        and name.endswith(suffix)
        and _layout.MANIFEST.fullmatch(name[1 : -len(suffix)]) is not None
    )
