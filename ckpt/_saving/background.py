"""Asynchronous saving: snapshot to host memory in the caller, write in the background.

The caller pays for one copy of its tensors into host buffers that are kept and reused
from one save to the next (a fresh allocation of a large state costs more than the
copy). A single background thread per manager then writes, fsyncs, finalizes and
prunes, in the order the saves were submitted. With ``max_in_flight`` buffer sets, the
caller blocks once that many snapshots are waiting to be written, so memory is bounded.
"""

from __future__ import annotations

import logging
import queue
import threading
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


class AsyncWriter:
    """The background thread of one manager and its pool of snapshot buffers."""

    def __init__(self, name: str, max_in_flight: int) -> None:
        # A slot is a set of snapshot buffers; one is made only when a save needs it, so
        # a generous max_in_flight costs nothing until saves actually pile up.
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._free: list[Buffers] = []
        self._free_mutex = threading.Lock()
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._done = threading.Condition()
        self._pending = 0  # submitted and not finished
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _live.add(self)

    def submit(
        self,
        step: int,
        state: Any,
        snapshot: Callable[[Any, Buffers], Any],
        write: Callable[[Any], None],
    ) -> None:
        """Snapshot ``state`` (blocking while every buffer set is in use), then queue it.

        ``snapshot`` is the state handler's: it copies ``state`` into a buffer set.

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
        self._jobs.put(Job(step, lambda: write(copied), buffers))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.write()
            except BaseException as exc:
                logger.error("background save of step %d failed: %s", job.step, exc)
                with self._done:
                    if self._error is None:
                        self._error = exc
            finally:
                self._release(job.buffers)
                with self._done:
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

    def _drain(self) -> None:
        with self._done:
            self._done.wait_for(lambda: not self._pending)

    def wait(self) -> None:
        """Block until every submitted save is finished, then raise any error."""
        self._drain()
        self.raise_error()

    def stop(self) -> None:
        """Finish every submitted save, stop the thread, then raise any error."""
        try:
            self._drain()
        finally:
            self._jobs.put(None)
            self._thread.join()
            _live.discard(self)
        self.raise_error()


_live: Unfinished[AsyncWriter] = Unfinished("a background save", AsyncWriter.stop)
