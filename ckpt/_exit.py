"""Background work a process finishes before it exits, and forgets when it forks."""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger("ckpt")

T = TypeVar("T")


class Unfinished(Generic[T]):
    """The live objects of one kind whose work must be finished at interpreter exit.

    Their threads are daemons, so a loop that never closes its manager cannot hang the
    interpreter; what they accepted is still finished, by ``finish``, before the
    process exits. A forked child has none of the parent's threads, so it forgets them:
    waiting for them at its exit would never end.
    """

    def __init__(self, what: str, finish: Callable[[T], None]) -> None:
        self._what = what
        self._finish = finish
        self._live: weakref.WeakSet[T] = weakref.WeakSet()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._live.clear)
        atexit.register(self.finish_all)

    def add(self, item: T) -> None:
        self._live.add(item)

    def discard(self, item: T) -> None:
        self._live.discard(item)

    def finish_all(self) -> None:
        """Finish each live object's work (run at exit), logging failures."""
        for item in list(self._live):
            try:
                self._finish(item)
            except BaseException as exc:
                logger.error("%s failed at exit: %s", self._what, exc)
