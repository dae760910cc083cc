"""The index of one checkpoint directory: its committed checkpoints and their pins."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator
from dataclasses import replace
from types import MappingProxyType

from ckpt import _layout
from ckpt._config.serialize import encode_pins
from ckpt._directory import meta as _meta
from ckpt._directory.records import (
    CheckpointRecord,
    NotACheckpointError,
    VanishedError,
    load_record,
)
from ckpt.commit import directory as commits
from ckpt.commit.base import Committed, Place
from ckpt.commit.catalog import Infos, load_catalog, save_catalog
from ckpt.commit.manifest import Manifest, record_digest
from ckpt.storage import user_path
from ckpt.storage.base import Entry, EntryKind, Storage, join, name_of

logger = logging.getLogger("ckpt")

CATALOG_EVERY = 64
"""Commits between two saves of the catalog: a crash costs a cold start this many reads."""


def _info_version(found: Entry | None) -> str | None:
    """What identifies a ``training_info.json``'s contents: its version and size."""
    if found is None or found.kind != "file":
        return None
    return f"{found.version}:{found.size}"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: a scan, or a ranking of the whole history.

    Each makes a few objects per checkpoint.
    At 100,000 checkpoints the collector's passes over them cost a cold start a third of
    its time (and the first `best` half of its), and these make no reference cycles for
    it to find.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Index:
    """What a directory holds, as last scanned, kept current by the writer's own changes.

    ``records`` and ``committed`` have the same steps: the first is what users see, the
    second where each checkpoint lives and which protocol committed it. ``version``
    changes whenever either (or the pins) does, so that caches built on the index (the
    retention tracker's) know when to rebuild.
    """

    def __init__(self, storage: Storage, location: str) -> None:
        self.storage = storage
        self.location = location
        self.records: dict[int, CheckpointRecord] = {}
        self.committed: dict[int, Committed] = {}
        self.pins: set[int] = set()
        self.damaged: dict[int, _meta.Damage] = {}  # what deep checks found, as last read
        self.version = 0
        self._root = user_path(storage, location)
        self._ranking: bytes | None = None  # what .ckpt/ranking.json holds; None: not read
        # A rescan re-reads only what changed; an entry that is not a checkpoint is
        # remembered too (None), so it is warned of once.
        self._seen: dict[tuple[int, str, str], tuple[Committed, CheckpointRecord | None]] = {}
        self.manifests: commits.ManifestCache = {}  # shared with recovery
        # The records read are saved in a catalog for cold starts: the manifests, and
        # each step_N directory's training info under the version the listing gave it.
        self.infos: Infos = {}
        self.writable = False  # a reader changes nothing, not even the catalog
        self._catalogued: dict[str, str] | None = None  # what it holds: name -> version
        self._commits = 0  # since the catalog was saved
        self._infos_changed = 0  # infos read, added or dropped since it was saved

    @property
    def meta(self) -> str:
        return join(self.location, _layout.META_DIR)

    def scan(self, entries: dict[str, Entry] | None = None) -> None:
        """Rebuild the index from the storage, re-reading only entries that changed.

        ``entries`` is a listing of the directory just taken, if the caller has one.
        """
        with gc_paused():
            self._scan(entries)

    def _scan(self, entries: dict[str, Entry] | None) -> None:
        pins = self.read_pins()
        self.damaged = _meta.read_damage(self.storage, self.location)
        if entries is None:
            entries = {entry.name: entry for entry in self.storage.list_dir(self.location)}
        self.load_catalog()
        found, broken = commits.committed(self.storage, self.location, entries, self.manifests)
        seen: dict[tuple[int, str, str], tuple[Committed, CheckpointRecord | None]] = {}
        for manifest in broken:
            key = (manifest.step, "broken", entries[manifest.name].version)
            if key not in self._seen:
                logger.warning("ignoring %s", manifest.detail)
            seen[key] = (Committed(manifest.step, "manifest", "", "", 0.0), None)
        infos: Infos = {}
        versions: dict[str, str] = {}  # step_N -> its info file's version, as read now
        for step, checkpoint in found.items():
            key = (step, checkpoint.kind, checkpoint.version)
            cached = self._seen.get(key)
            if cached is None:
                cached = (checkpoint, self._read(checkpoint, entries, versions))
            seen[key] = cached
            record = cached[1]
            if checkpoint.kind == "rename" and record is not None:
                name = _layout.step_name(step)
                known = versions.get(name) or self.infos.get(name, (None,))[0]
                if known is not None:
                    infos[name] = (known, checkpoint.mtime, record.info)
        records: dict[int, CheckpointRecord] = {}
        committed: dict[int, Committed] = {}
        for checkpoint, record in seen.values():
            if record is not None:
                pinned = checkpoint.step in pins
                damaged = self._damaged(checkpoint)
                records[checkpoint.step] = (
                    replace(record, pinned=pinned, damaged=damaged) if pinned or damaged else record
                )
                committed[checkpoint.step] = checkpoint
        if records != self.records or pins != self.pins:
            self.version += 1
        self._seen, self.records, self.committed, self.pins = seen, records, committed, pins
        self._infos_changed += len(self.infos.keys() - infos.keys())  # gone since
        self.infos = infos
        self.save_catalog()

    def _read(
        self, checkpoint: Committed, entries: dict[str, Entry], versions: dict[str, str]
    ) -> CheckpointRecord | None:
        """The record of a checkpoint this index has not seen.

        A ``step_N`` directory's comes from the catalog where its ``training_info.json``
        has the very version (inode, size, modification time) the catalog saw, else is
        read: an info file rewritten in place since is read again, never trusted.
        ``versions`` receives the info file's version of each record it returns.
        """
        if checkpoint.kind != "rename":
            return self._load(checkpoint, "dir", name_of(checkpoint.path))  # a manifest vouches
        name = _layout.step_name(checkpoint.step)
        kind = entries[name].kind
        found = (
            self.storage.entry(join(checkpoint.path, _layout.INFO_FILE)) if kind == "dir" else None
        )
        version = _info_version(found)
        known = self.infos.get(name)
        if known is not None and version is not None and known[0] == version:
            versions[name] = version
            return CheckpointRecord(
                step=checkpoint.step,
                path=self._root / name,
                info=MappingProxyType(known[2]),
                committed_at=checkpoint.mtime,
            )
        self._infos_changed += 1
        record = self._load(checkpoint, kind, name)
        if record is not None and version is not None:  # the version before the read
            versions[name] = version
        return record

    def _damaged(self, checkpoint: Committed) -> bool:
        """Whether a deep check found this checkpoint damaged (see `meta.Damage.record`).

        Only steps with remembered damage (rare) cost a read of their record.
        """
        damage = self.damaged.get(checkpoint.step)
        if damage is None:
            return False
        if damage.version == checkpoint.version:
            return True
        if damage.record is None:
            return False
        try:
            return record_digest(self.storage, checkpoint) == damage.record
        except (OSError, ValueError):
            return True  # its record unreadable now: no better than when it was damaged

    def is_damaged(self, step: int) -> bool:
        """Whether a deep check found this very checkpoint of ``step`` damaged."""
        record = self.records.get(step)
        return record is not None and record.damaged

    def _load(self, checkpoint: Committed, kind: EntryKind, name: str) -> CheckpointRecord | None:
        try:
            return load_record(self.storage, checkpoint, kind, self._root / name)
        except VanishedError:
            return None  # pruned or replaced while listed; the next scan sees what is there
        except NotACheckpointError as exc:
            logger.warning("ignoring %s: %s", name, exc.detail)
            return None

    def add(self, record: CheckpointRecord, checkpoint: Committed) -> None:
        """Index a checkpoint this process just committed."""
        self.records[record.step] = record
        self.committed[record.step] = checkpoint
        self.version += 1
        if checkpoint.kind == "rename":
            self._infos_changed += 1
            name = _layout.step_name(record.step)
            version = _info_version(self.storage.entry(join(checkpoint.path, _layout.INFO_FILE)))
            if version is not None:
                self.infos[name] = (version, checkpoint.mtime, record.info)
            self._commits += 1
            if self._commits >= CATALOG_EVERY:
                self.save_catalog(force=True)
        if checkpoint.manifest is not None:
            manifest = Manifest(
                record.step,
                name_of(checkpoint.path),
                checkpoint.mtime,
                (),
                checkpoint.training_info,
            )
            self.manifests[name_of(checkpoint.manifest)] = (checkpoint.version, manifest)
            self._commits += 1
            if self._commits >= CATALOG_EVERY:
                self.save_catalog(force=True)

    def load_catalog(self) -> None:
        """Fill the empty caches of manifests and infos from the catalog."""
        if self._catalogued is not None:
            return
        saved, infos = load_catalog(self.storage, self.location)
        self._catalogued = {name: version for name, (version, _) in saved.items()}
        for name, found in saved.items():
            self.manifests.setdefault(name, found)
        if self.infos:
            for name, info in infos.items():
                self.infos.setdefault(name, info)
        else:
            self.infos = infos

    def save_catalog(self, *, force: bool = False) -> None:
        """Save the manifests read for the next cold start, if enough are new (or ``force``).

        It is only a cache: a failure to write it is logged, never raised.
        """
        if not self.writable:
            return
        manifests = {
            name: (version, found)
            for name, (version, found) in self.manifests.items()
            if isinstance(found, Manifest)
        }
        now = {name: version for name, (version, _) in manifests.items()}
        saved = self._catalogued or {}
        stale = sum(1 for name, version in now.items() if saved.get(name) != version)
        stale += len(saved.keys() - now.keys()) + self._infos_changed
        if not stale or (stale < 16 and not force):
            return
        try:
            save_catalog(self.storage, self.location, manifests, self.infos)
        except OSError as exc:
            logger.warning("could not save the catalog of %s: %s", self.location, exc)
            return
        self._catalogued = now
        self._commits = 0
        self._infos_changed = 0

    def remove(self, step: int) -> None:
        """Forget a checkpoint this process just deleted."""
        del self.records[step]
        del self.committed[step]
        if self.infos.pop(_layout.step_name(step), None) is not None:
            self._infos_changed += 1
        self.version += 1

    def read_pins(self) -> set[int]:
        try:
            return _meta.read_pins(self.storage, self.location)
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable pins file: %s", exc)
            return set()

    def write_pins(self, pins: set[int], place: Place) -> None:
        """Make ``pins`` the pins on disk, then in memory: a failed write changes neither.

        ``place`` says how durably: each manager sharing the index writes as its own
        ``fsync`` asks.
        """
        data = encode_pins(pins)
        path = join(self.meta, _layout.PINS_FILE)
        self.storage.replace_file(path, data, durable=place.durable)
        self.pins = pins

    def set_pinned(self, step: int, pinned: bool, place: Place) -> None:
        """Pin or unpin ``step`` on disk and in the index."""
        self.write_pins(self.pins | {step} if pinned else self.pins - {step}, place)
        if step in self.records:
            self.records[step] = replace(self.records[step], pinned=pinned)
        self.version += 1

    def record_ranking(self, data: bytes, place: Place) -> None:
        """Record the ranking commits are made with, for readers given no config."""
        path = join(self.meta, _layout.RANKING_FILE)
        if self._ranking is None:
            try:
                self._ranking = self.storage.read_bytes(path)
            except OSError:  # absent, or unreadable: rewritten below
                self._ranking = b""
        if data != self._ranking:
            self.storage.replace_file(path, data, durable=place.durable)
            self._ranking = data
