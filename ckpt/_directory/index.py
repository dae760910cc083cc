"""The index of one checkpoint directory: its committed checkpoints and their pins."""

from __future__ import annotations

import logging
from dataclasses import replace

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
from ckpt.commit.catalog import load_catalog, save_catalog
from ckpt.commit.manifest import Manifest, record_digest
from ckpt.storage import user_path
from ckpt.storage.base import Entry, EntryKind, Storage, join, name_of

logger = logging.getLogger("ckpt")

CATALOG_EVERY = 64
"""Commits between two saves of the catalog: a crash costs a cold start this many reads."""


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
        # On an object store the manifests read are saved in a catalog for cold starts.
        self._catalog = not storage.capabilities.directories
        self.writable = False  # a reader changes nothing, not even the catalog
        self._catalogued: dict[str, str] | None = None  # what it holds: name -> version
        self._commits = 0  # since the catalog was saved

    @property
    def meta(self) -> str:
        return join(self.location, _layout.META_DIR)

    def scan(self, entries: dict[str, Entry] | None = None) -> None:
        """Rebuild the index from the storage, re-reading only entries that changed.

        ``entries`` is a listing of the directory just taken, if the caller has one.
        """
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
        for step, checkpoint in found.items():
            key = (step, checkpoint.kind, checkpoint.version)
            cached = self._seen.get(key)
            if cached is not None:
                seen[key] = cached
                continue
            if checkpoint.kind == "rename":
                name = _layout.step_name(step)
                kind = entries[name].kind
            else:
                name, kind = name_of(checkpoint.path), "dir"  # a manifest vouches for it
            seen[key] = (checkpoint, self._load(checkpoint, kind, name))
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
        self.save_catalog()

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
        if self._catalog and checkpoint.manifest is not None:
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
        """Fill an empty manifest cache from the catalog (on an object store)."""
        if not self._catalog or self._catalogued is not None:
            return
        saved = load_catalog(self.storage, self.location)
        self._catalogued = {name: version for name, (version, _) in saved.items()}
        for name, found in saved.items():
            self.manifests.setdefault(name, found)

    def save_catalog(self, *, force: bool = False) -> None:
        """Save the manifests read for the next cold start, if enough are new (or ``force``).

        It is only a cache: a failure to write it is logged, never raised.
        """
        if not (self._catalog and self.writable):
            return
        manifests = {
            name: (version, found)
            for name, (version, found) in self.manifests.items()
            if isinstance(found, Manifest)
        }
        saved = self._catalogued or {}
        stale = sum(1 for name, (version, _) in manifests.items() if saved.get(name) != version)
        stale += len(saved.keys() - manifests.keys())
        if not stale or (stale < 16 and not force):
            return
        try:
            save_catalog(self.storage, self.location, manifests)
        except OSError as exc:
            logger.warning("could not save the catalog of %s: %s", self.location, exc)
            return
        self._catalogued = {name: version for name, (version, _) in manifests.items()}
        self._commits = 0

    def remove(self, step: int) -> None:
        """Forget a checkpoint this process just deleted."""
        del self.records[step]
        del self.committed[step]
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
