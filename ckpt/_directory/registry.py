"""This process's writers: one shared state per checkpoint directory, and its registry.

Writers of one directory in one process share a single `Shared` (and so a single lock
and index): a training loop that builds a new manager while an old one is still alive
sees one consistent directory.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from ckpt import _layout
from ckpt._directory import meta as _meta
from ckpt._directory.index import Index, gc_paused
from ckpt.commit import directory as commits
from ckpt.commit.base import Place, RecoveryAction
from ckpt.commit.reaper import Reaper
from ckpt.commit.rename import trash_dir
from ckpt.storage.base import Entry, Lock, join, name_of, parent_of

logger = logging.getLogger("ckpt")


class Joinable(Protocol):
    """A background commit of a step (a finalizer): a new save of the step waits for it."""

    def join(self) -> None:
        """Return once the commit is done."""
        ...


@dataclass
class Attempt:
    """A save in progress: the thread that was given ``path`` and has not finalized it."""

    thread: int
    path: str
    writers: tuple[str, ...] = ()  # the workers that must report (mark_written) first


class Shared:
    """The state of one checkpoint directory that this process's managers share."""

    def __init__(self, place: Place, *, grace: float = 600.0) -> None:
        self.storage = storage = place.storage
        self.location = location = place.directory
        # Deletes here remove their files in the background, one at a time.
        self.reaper = Reaper(storage, location)
        # Recovery and the directories it makes are as durable as the first opener asked.
        self.place = replace(place, reaper=self.reaper)
        # Where no lock keeps other writers out, an attempt this young may be theirs.
        self.grace = 0.0 if storage.capabilities.locking else grace
        self.index = Index(storage, location)
        self.mutex = threading.RLock()
        self.users = 0
        self.lock: Lock | None = None
        self.recovery: tuple[RecoveryAction, ...] = ()
        # Steps that background saves of this directory have accepted and not finished:
        # retention must not delete a checkpoint one of them is about to replace.
        self.saving: Counter[int] = Counter()
        # One `save` (or background save) at a time, so that two threads saving on one
        # manager both commit rather than replace each other's attempt.
        self.save_lock = threading.Lock()
        # Step -> the attempt init_tmp_checkpoint handed out and nobody finalized or
        # aborted yet.
        self.live: dict[int, Attempt] = {}
        # Step -> the finalizer committing its attempt in the background.
        self.finalizing: dict[int, Joinable] = {}
        # Step -> why retention must keep it for now, for another reason than a save
        # (a local checkpoint whose replica is not committed yet).
        self.held: dict[int, str] = {}
        # Called (under `mutex`) with each step committed here: a replicator's queue.
        self.on_commit: Callable[[int], None] | None = None

    def open_writer(self) -> None:
        """Take the directory's lock, then recover and index it."""
        storage = self.storage
        _meta.check_metadata(storage, self.location)
        created = []  # the directories make_dirs is about to create, innermost first
        path = trash_dir(self.location)
        while (
            storage.capabilities.directories
            and storage.entry(path) is None
            and parent_of(path) != path
        ):
            created.append(path)
            path = parent_of(path)
        storage.make_dirs(trash_dir(self.location))
        if self.place.durable:
            # A new directory's name is durable only once its parent is synced: without
            # this, a power cut could take the whole checkpoint directory with it.
            for new in reversed(created):
                storage.sync_dir(parent_of(new))
        self.lock = storage.lock(join(self.index.meta, _layout.LOCK_FILE))
        self.index.writable = True
        try:
            _meta.check_metadata(self.storage, self.location)  # as it is now we hold the lock
            self.recovery = self.recover()
        except BaseException:
            self.lock.release()
            self.lock = None
            raise

    def recover(self) -> tuple[RecoveryAction, ...]:
        """Repair what a crash left, then index the directory as it is on disk.

        It runs when the directory is opened for writing, and again whenever another
        manager of this process joins it: the disk may have changed meanwhile (another
        tool, a crash of NeMo RL's manager). An attempt that a save of this process is
        writing is not a leftover, and is left alone.
        """
        with self.mutex, gc_paused():
            ours = {name_of(attempt.path) for attempt in self.live.values()}
            ours |= {name_of(path) for path in self.reaper.pending()}  # being removed
            self.index.load_catalog()  # recovery reads the manifests too
            listed: dict[str, Entry] = {}
            actions = commits.recover(
                replace(self.place, reaper=None),  # done before the directory is used
                keep=ours,
                grace=self.grace,
                cache=self.index.manifests,  # the scan below reuses what recovery read
                listed=listed,
            )
            self.index.scan(None if actions else listed)
            stale = self.index.pins - self.index.records.keys()
            if stale:
                logger.warning("dropping pins of steps that no longer exist: %s", sorted(stale))
                self.index.write_pins(self.index.pins - stale, self.place)
            return tuple(actions)

    def check_writer(self) -> None:
        """Raise `LeaseLostError` if this process is no longer the directory's writer."""
        if self.lock is not None:
            self.lock.check()

    def protected(self, but: int | None = None) -> dict[int, str]:
        """The steps retention must not delete now: saves in progress replace them, or held."""
        protected = dict(self.held)
        protected.update(
            (step, "a save in progress is replacing it")
            for step, count in self.saving.items()
            if count and step != but
        )
        return protected


# Keyed by the storage's canonical name of the directory. `verify` looks here too: it
# must not probe the lock of a directory this process writes.
writers: dict[str, Shared] = {}
writers_mutex = threading.Lock()


def _forget_writers_in_child() -> None:
    # POSIX locks are not inherited by a forked child: it must not think it is a writer.
    writers.clear()
    writers_mutex.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=writers_mutex.acquire,
        after_in_parent=writers_mutex.release,
        after_in_child=_forget_writers_in_child,
    )
