"""Preemption: the signals that announce a job's kill, and the grace before it.

A scheduler that reclaims a node (Slurm, Kubernetes, a spot or preemptible VM) sends
SIGTERM and kills the job a grace period later. The handler ckpt installs only notes
the signal: a handler runs between two bytecodes of the main thread, which may be
halfway through a step or a save, so nothing is saved from it. The loop learns of it
at its next step boundary (`CheckpointManager.should_save` returns true and
`CheckpointManager.preempted` becomes true there, on every rank at the same step),
and a watchdog thread commits the newest snapshot already taken if no save was
started halfway through the grace (an emergency save).

Handlers are per process and per signal: one is installed for each signal the first
time a manager asks for it, on the main thread only; the handler that was there before
still runs after ours (the interpreter's default actions are not called: they would end
the process, which is what the grace is for). The previous handler is put back when
the last manager that asked for the signal is closed, unless someone replaced ours since.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any

logger = logging.getLogger("ckpt")

# The listeners of each signal ckpt handles, and the handler that was there before ours.
_listeners: dict[int, weakref.WeakSet[Preemption]] = {}
_previous: dict[int, Any] = {}
_mutex = threading.Lock()


def _handle(signum: int, frame: FrameType | None) -> None:
    # Runs on the main thread between two bytecodes: it only records, without locks.
    for listener in list(_listeners.get(signum, ())):
        listener.record(signum)
    previous = _previous.get(signum)
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, frame)


def _install(signum: int, listener: Preemption) -> None:
    with _mutex:
        listeners = _listeners.setdefault(signum, weakref.WeakSet())
        listeners.add(listener)
        if signal.getsignal(signum) is not _handle:
            _previous[signum] = signal.signal(signum, _handle)


def _uninstall(signum: int, listener: Preemption) -> None:
    with _mutex:
        listeners = _listeners.get(signum)
        if listeners is None:
            return
        listeners.discard(listener)
        if listeners or threading.current_thread() is not threading.main_thread():
            return  # off the main thread a handler cannot be changed: ours just chains
        if signal.getsignal(signum) is _handle:
            signal.signal(signum, _previous.pop(signum, signal.SIG_DFL))
        del _listeners[signum]


def check_main_thread() -> None:
    """Refuse to go on off the main thread, where no signal handler can be installed.

    Raises:
        ValueError: Naming ``preemption_signals`` and the thread.
    """
    if threading.current_thread() is not threading.main_thread():
        raise ValueError(
            f"`preemption_signals` needs the manager built on the main thread (signal "
            f"handlers can only be installed there), got thread "
            f"{threading.current_thread().name!r}; build it on the main thread, or "
            f"leave `preemption_signals` empty there"
        )


@dataclass(frozen=True)
class Notice:
    """A preemption signal as this manager received it.

    Attributes:
        signal: Its name (``"SIGTERM"``).
        received_at: When it came, in seconds since the epoch.
        deadline: When the grace runs out, on the `time.monotonic` clock.
    """

    signal: str
    received_at: float
    deadline: float

    def left(self) -> float:
        """Seconds of the grace still left (0 once it ran out)."""
        return max(0.0, self.deadline - time.monotonic())


class Preemption:
    """One manager's preemption signals, what it saw of them, and its watchdog.

    Args:
        signals: The signal names to handle (``"SIGTERM"``), validated by the config.
        grace_s: The time between the signal and the kill.
        emergency: Called on the watchdog thread, with the notice, when no save was
            started by the middle of the grace.
        name: For the watchdog thread's name.

    Raises:
        ValueError: If called off the main thread (only it may install handlers).
    """

    def __init__(
        self,
        signals: Iterable[str],
        grace_s: float,
        emergency: Callable[[Notice], object],
        name: str,
    ) -> None:
        check_main_thread()
        self._signums = tuple(signal.Signals[name_] for name_ in signals)
        self._grace = grace_s
        self._emergency = emergency
        self._notice: Notice | None = None
        self._received = threading.Event()
        self._started = threading.Event()  # a save was started after the notice was seen
        self._closed = False
        self.observed = False  # a step boundary saw the notice (here or on another rank)
        self._watchdog = threading.Thread(
            target=self._watch, name=f"ckpt-preemption {name}", daemon=True
        )
        self._watchdog.start()
        for signum in self._signums:
            _install(signum, self)

    @property
    def notice(self) -> Notice | None:
        """The first preemption signal received, or ``None``."""
        return self._notice

    def record(self, signum: int) -> None:
        """Record a signal (from the handler: no locks, no I/O)."""
        if self._notice is None:
            now = time.monotonic()
            self._notice = Notice(signal.Signals(signum).name, time.time(), now + self._grace)
            self._received.set()

    def observe(self, name: str, received_at: float) -> None:
        """A step boundary saw a signal: this process's, or another rank's (adopted)."""
        if self._notice is None:
            # Another rank's signal: its grace ends when theirs does.
            since = max(0.0, time.time() - received_at)
            self._notice = Notice(name, received_at, time.monotonic() - since + self._grace)
            self._received.set()
        self.observed = True

    def left(self) -> float:
        """Seconds of the grace left; all of it before any signal."""
        return self._grace if self._notice is None else self._notice.left()

    @property
    def saving(self) -> bool:
        """Whether the loop started a save after it saw the notice."""
        return self._started.is_set() and not self._closed

    def start_saving(self) -> None:
        """The loop began its save for the notice: the watchdog has nothing to do."""
        self._started.set()

    def _watch(self) -> None:
        # Woken by the signal or by close; a run that is never preempted waits here for
        # its whole life, hence the long but finite waits.
        while not self._received.wait(3600.0):
            pass
        notice = self._notice
        if self._closed or notice is None:
            return
        halfway = notice.deadline - self._grace / 2
        if self._started.wait(max(0.0, halfway - time.monotonic())) or self._closed:
            return
        try:
            self._emergency(notice)
        except Exception as exc:
            logger.error("the emergency save after %s failed: %s", notice.signal, exc)

    def close(self) -> None:
        """Stop the watchdog (an emergency in progress is let finish) and uninstall."""
        if self._closed:
            return
        self._closed = True
        for signum in self._signums:
            _uninstall(signum, self)
        self._started.set()
        self._received.set()
