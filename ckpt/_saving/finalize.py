"""Asynchronous finalization, as NeMo RL's Megatron and DTensor async saves drive it.

The loop hands over a temporary checkpoint whose files other threads or workers are
still writing, with a ``wait_fn`` that returns once they are done. A thread of its own
waits, commits, and queues retention on a single pruning thread, so neither the wait
nor the deletes block the loop. One finalization is in flight at a time.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for

from ckpt._errors import FinalizationError
from ckpt._exit import Unfinished

logger = logging.getLogger("ckpt")


class Finalizer:
    """One manager's finalization thread and its pruning thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pending = False
        self._prunes: ThreadPoolExecutor | None = None
        self._last_prune: Future[None] | None = None

    @property
    def pending(self) -> bool:
        """Whether a finalization is waiting or committing."""
        return self._pending

    def begin(self, what: str, commit: Callable[[], None], prune: Callable[[], None]) -> None:
        """Wait for the previous finalization, then run this one in the background.

        ``commit`` waits for the writers and publishes; ``prune`` is queued after it.

        Raises:
            FinalizationError: The previous finalization failed; this one is not begun.
        """
        self.wait()
        self._pending = True

        def run() -> None:
            try:
                commit()
            except BaseException as exc:
                logger.error("background finalization of %s failed: %s", what, exc)
                self._error = exc
            else:
                self._queue_prune(prune)
            finally:
                self._pending = False

        self._thread = threading.Thread(target=run, name=f"{self._name}-finalize", daemon=True)
        _live.add(self)
        self._thread.start()

    def _queue_prune(self, prune: Callable[[], None]) -> None:
        if self._prunes is None:
            self._prunes = ThreadPoolExecutor(1, f"{self._name}-prune")
        try:
            # The warning is given inside the task, not by a done-callback: a waiter can
            # wake before callbacks run, and shutdown() must return after it.
            self._last_prune = self._prunes.submit(_pruned, prune)
        except RuntimeError:  # the interpreter is exiting and takes no new threads
            _pruned(prune)

    def join(self, timeout: float | None = None) -> None:
        """Block until the commit in flight is done (or ``timeout``); failures stay for `wait`."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def wait(self) -> None:
        """Block until the commit in flight is done; raise its failure, once.

        Raises:
            FinalizationError: Chained to what failed in the background.
        """
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise FinalizationError(
                f"Background checkpoint finalization failed: {error!r}; that checkpoint "
                f"was not committed (its temporary directory stays until the next save of "
                f"the step or the next writer's recovery)"
            ) from error

    def shutdown(self) -> None:
        """Block until the commit and every queued prune are done.

        Raises:
            FinalizationError: As `wait`; queued prunes are waited for first.
        """
        try:
            self.wait()
        finally:
            last = self._last_prune
            if last is not None:
                wait_for([last])
                self._last_prune = None
            _live.discard(self)


def _pruned(prune: Callable[[], None]) -> None:
    # A prune runs after its commit, off the loop's path: its failure must not undo the
    # commit or stop training, and must not pass in silence either.
    try:
        prune()
    except Exception as error:
        logger.error("background pruning failed: %s", error)
        warnings.warn(
            f"could not prune old checkpoints in the background ({error!r}); the "
            f"checkpoint is committed and training goes on, but checkpoints retention "
            f"would delete stay on disk until a later prune",
            UserWarning,
            stacklevel=2,
        )


_live: Unfinished[Finalizer] = Unfinished("a background finalization", Finalizer.shutdown)
