"""The reaper: removes, off the caller's thread, what a delete has already taken from sight.

Every delete is two-phase. Its commit point is one step that takes the checkpoint
out of sight: the rename into ``.ckpt/trash`` (rename protocol), or the removal of the
manifest (manifest protocol). What is left is files no reader can reach, and removing
them is the slow part (on Lustre, Weka or NFS a 100 GB checkpoint takes tens of
seconds). A `Place` with a reaper hands that removal to it; one without removes at
once, as ckpt always did.

The reaper is one daemon thread per directory and process, removing one entry at a
time, in the order given. It is crash-safe because the trash is: whatever it had not
removed when the process died is still in the trash (or is an attempt no manifest
names), and the next writer's recovery removes it. It never races a save or a
fetch-back: what it removes has a unique name nothing else will ever use (a trash entry
``step_N.<token>``, an attempt prefix ``step_N.<token>``). At most `BACKLOG` entries
wait; a delete beyond that waits for room (up to `WAIT_S`, then leaves its entry to
recovery), so a reaper that cannot keep up slows saves down rather than filling the
disk with trash.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time

from ckpt._exit import Unfinished
from ckpt.storage.base import Storage

logger = logging.getLogger("ckpt")

BACKLOG = 4
"""Entries waiting for removal, at most, besides the one being removed."""
BACKGROUND = True
"""Whether removals run on the reaper's thread (tests that crash a process at each of
its storage operations, counted in order, remove on the caller's thread instead)."""
WAIT_S = 600.0
"""How long a delete waits for room in a full backlog, or `Reaper.flush` for the rest."""
EXIT_WAIT_S = 60.0
"""How long a process that exits without closing its manager waits for the reaper."""


class Reaper:
    """Removes entries of one storage on a background thread, one at a time.

    Args:
        storage: Where the entries are.
        name: What the thread is called (the directory, for a reader of a stack dump).

    Attributes:
        threaded: Whether a thread removes what is submitted. Without one (a test that
            interleaves removals with other operations at chosen points), entries wait
            for `step` or `flush`, which remove them on the caller's thread.
    """

    def __init__(self, storage: Storage, name: str = "") -> None:
        self.storage = storage
        self.threaded = True
        self._name = name
        self._todo: collections.deque[str] = collections.deque()
        self._busy: str | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, path: str) -> None:
        """Remove ``path`` (and everything under it) in the background.

        Waits while `BACKLOG` entries are waiting already, up to `WAIT_S`; then the
        entry is left where it is, for the next recovery, and an error is logged.
        """
        if not BACKGROUND:
            self.storage.remove_tree(path)
            return
        with self._changed:
            deadline = time.monotonic() + WAIT_S
            while self.threaded and len(self._todo) >= BACKLOG:
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.error(
                        "the reaper of %s is %d deletes behind; left %s for the next recovery",
                        self._name,
                        len(self._todo),
                        path,
                    )
                    return
                self._changed.wait(left)
            self._todo.append(path)
            if self.threaded and self._thread is None:
                _live.add(self)
                self._thread = threading.Thread(
                    target=self._run, name=f"ckpt-reaper {self._name}"[:60], daemon=True
                )
                self._thread.start()
            self._changed.notify_all()

    def pending(self) -> tuple[str, ...]:
        """The entries not removed yet: the one being removed first."""
        with self._changed:
            busy = () if self._busy is None else (self._busy,)
            return (*busy, *self._todo)

    def step(self) -> bool:
        """Remove the next entry on the caller's thread; whether there was one.

        Raises:
            OSError: If the removal failed (the entry stays for the next recovery).
        """
        with self._changed:
            if not self._todo:
                return False
            path = self._busy = self._todo.popleft()
            self._changed.notify_all()
        try:
            self.storage.remove_tree(path)
        except BaseException as exc:
            logger.error("could not remove %s (left for the next recovery): %s", path, exc)
            raise
        finally:
            with self._changed:
                self._busy = None
                self._changed.notify_all()
        return True

    def flush(self, timeout: float = WAIT_S) -> bool:
        """Wait until every entry submitted so far is removed; whether it was in time."""
        if not self.threaded:
            while self.step():
                pass
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._todo or self._busy is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _finish_at_exit(self) -> None:
        if not self.flush(EXIT_WAIT_S):
            logger.error(
                "the reaper of %s did not finish in %g s at exit; the next writer's recovery "
                "removes what is left",
                self._name,
                EXIT_WAIT_S,
            )

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._todo:
                    self._thread = None
                    _live.discard(self)
                    self._changed.notify_all()
                    return
            # It must live on whatever a removal raises (logged by `step`): the entry
            # waits for the next recovery.
            with contextlib.suppress(BaseException):
                self.step()


# Live reapers with work: an interpreter that exits without `close()` still empties the
# trash it can (what it cannot, the next recovery removes).
_live: Unfinished[Reaper] = Unfinished("the reaper", Reaper._finish_at_exit)
