"""Asynchronous saving: snapshot to host memory in the caller, write in the background.

The caller pays for one copy of its tensors into host buffers that are kept and reused
from one save to the next (a fresh allocation of a large state costs more than the
copy). A single background thread per manager then writes, fsyncs, finalizes and
prunes, in the order the saves were submitted. With ``max_in_flight`` buffer sets, the
caller blocks once that many snapshots are waiting to be written, so memory is bounded.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ckpt._exit import Unfinished

logger = logging.getLogger("ckpt")

Buffers = dict[Any, Any]


@dataclass
class Job:
    """One save waiting for the background thread."""

    step: int
    write: Callable[[], None]
    buffers: Buffers
    skip: Callable[[], None]


class AsyncWriter:
    """The background thread of one manager and its pool of snapshot buffers."""

    def __init__(self, name: str, max_in_flight: int) -> None:
        # A slot is a set of snapshot buffers; one is made only when a save needs it, so
        # a generous max_in_flight costs nothing until saves actually pile up.
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._free: list[Buffers] = []
        self._free_mutex = threading.Lock()
        self._done = threading.Condition()
        self._jobs: deque[Job | None] = deque()  # guarded by _done
        self._pending = 0  # submitted and not finished
        self._error: BaseException | None = None
        self.committed: int | None = None  # the step of the newest save written
        self._writing: int | None = None  # the step being written
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _live.add(self)

    def submit(
        self,
        step: int,
        state: Any,
        snapshot: Callable[[Any, Buffers], Any],
        write: Callable[[Any], None],
        skip: Callable[[], None],
    ) -> None:
        """Snapshot ``state`` (blocking while every buffer set is in use), then queue it.

        ``snapshot`` is the state handler's: it copies ``state`` into a buffer set.
        ``skip`` is called instead of ``write`` if `keep_newest` drops the save.

        Raises:
            Exception: The first background error not raised yet; nothing is queued.
        """
        self._slots.acquire()
        with self._free_mutex:
            buffers = self._free.pop() if self._free else {}
        try:
            # Waiting for buffers may have let an earlier save fail: raise it, in place of
            # submitting this one.
            self.raise_error()
            copied = snapshot(state, buffers)
        except BaseException:
            self._release(buffers)
            raise
        with self._done:
            self._pending += 1
            self._jobs.append(Job(step, lambda: write(copied), buffers, skip))
            self._done.notify_all()

    def _run(self) -> None:
        while True:
            with self._done:
                while not self._jobs:
                    self._done.wait(3600.0)  # idle between saves, for as long as it takes
                job = self._jobs.popleft()
                self._writing = None if job is None else job.step
            if job is None:
                return
            try:
                job.write()
                with self._done:
                    self.committed = job.step
            except BaseException as exc:
                logger.error("background save of step %d failed: %s", job.step, exc)
                with self._done:
                    if self._error is None:
                        self._error = exc
            finally:
                self._release(job.buffers)
                with self._done:
                    self._writing = None
                    self._pending -= 1
                    self._done.notify_all()

    def _release(self, buffers: Buffers) -> None:
        with self._free_mutex:
            self._free.append(buffers)
        self._slots.release()

    def raise_error(self) -> None:
        """Raise the first background error not raised yet, if any."""
        with self._done:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def drain(self, timeout: float | None = None) -> bool:
        """Block until every submitted save is finished (errors stay); whether they are."""
        with self._done:
            return self._done.wait_for(lambda: not self._pending, timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted save is finished, then raise any error.

        Returns whether they finished (``False``: ``timeout`` seconds passed first).
        """
        done = self.drain(timeout)
        self.raise_error()
        return done

    def keep_newest(self) -> tuple[int, ...]:
        """Drop the saves still queued except the newest (a preemption's emergency).

        The save being written is not interrupted. Returns the dropped steps.
        """
        with self._done:
            queued = [job for job in self._jobs if job is not None]
            dropped = queued[:-1]
            for job in dropped:
                self._jobs.remove(job)
        for job in dropped:
            try:
                job.skip()
            finally:
                self._release(job.buffers)
                with self._done:
                    self._pending -= 1
                    self._done.notify_all()
        return tuple(job.step for job in dropped)

    @property
    def newest(self) -> int | None:
        """The step of the newest save submitted and not written yet, or ``None``."""
        with self._done:
            queued = [job.step for job in self._jobs if job is not None]
            return queued[-1] if queued else self._writing

    def stop(self) -> None:
        """Finish every submitted save, stop the thread, then raise any error."""
        try:
            self.drain()
        finally:
            with self._done:
                self._jobs.append(None)
                self._done.notify_all()
            self._thread.join()
            _live.discard(self)
        self.raise_error()


_live: Unfinished[AsyncWriter] = Unfinished("a background save", AsyncWriter.stop)
