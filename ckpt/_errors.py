"""Exceptions raised by ckpt.

Every error the library raises on purpose derives from `CheckpointError`, and each
specific one also derives from the built-in exception a caller would naturally catch::

    CheckpointError                      (Exception)
    ├── ConfigFileError                  (ValueError)       config file unreadable as YAML
    ├── SerializationError               (ValueError)       info, config or state unstorable,
    │   │                                                       or a state file unreadable
    │   └── ChecksumMismatchError                               a file's bytes fail its hash
    ├── InvalidStepError                 (ValueError)       step is not a non-negative integer
    ├── InvalidCheckpointPathError       (ValueError)       not a temporary dir of this manager
    ├── CheckpointNotFoundError          (LookupError)      no finalized checkpoint at that step
    ├── StateNotFoundError               (FileNotFoundError) no state file where load_state looked
    ├── DeviceUnavailableError           (RuntimeError)     load_state's target device is unusable
    ├── ReadOnlyError                    (PermissionError)  write on a read-only or disabled manager
    ├── CheckpointDirLockedError         (BlockingIOError)  another process is the writer
    ├── LeaseLostError                   (RuntimeError)     this writer's lease on a store ended
    ├── CommitConflictError              (FileExistsError)  another writer committed that step
    ├── SaveInProgressError              (RuntimeError)     another thread is saving that step
    ├── FinalizationError                (RuntimeError)     a background finalization failed
    ├── CollectiveError                  (RuntimeError)     a collective call failed on some rank
    ├── CollectiveTimeoutError           (TimeoutError)     a rank died or did not answer in time
    ├── IncompleteCheckpointError        (RuntimeError)     an expected writer did not report
    ├── ReplicationError                 (RuntimeError)     an upload to the replica kept failing
    ├── StoreUnavailableError            (ConnectionError)  a store did not answer (retries spent)
    └── UnsafeFileError                  (OSError)          a link, FIFO, device or oversized file
                                                                where ckpt reads or writes its own

Invalid configuration values raise pydantic's ``ValidationError`` (itself a
``ValueError``), and failures of the file system propagate as ``OSError``.

Warnings (not errors) derive from `CheckpointWarning`, a ``UserWarning``; the last
three are also logged at WARNING on the ``ckpt`` logger::

    CheckpointWarning                    (UserWarning)
    ├── MissingMetricWarning                                checkpoints lack the ranking metric
    ├── RecoveryWarning                                     recovery changed a directory
    ├── NonFiniteMetricWarning                              a NaN or inf was stored as null
    └── LeaseWaitWarning                                    a restart waits on another lease
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings


class CheckpointError(Exception):
    """Base class of every error ckpt raises on purpose."""


class ConfigFileError(CheckpointError, ValueError):
    """A configuration file could not be read or parsed as YAML."""


class SerializationError(CheckpointError, ValueError):
    """Training info, a run config or a model state holds a value that cannot be stored.

    Raised before anything is written, so no temporary directory or file is left
    behind. `ckpt.torch.load_state` also raises it for a file it did not write.
    """


class ChecksumMismatchError(SerializationError):
    """A file's bytes do not hash to the digest recorded for it: it was damaged.

    ``load_state`` raises it when a state file does not match the digest it ends
    with; nothing is returned then. ``path`` names the file.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class InvalidStepError(CheckpointError, ValueError):
    """A step is not a non-negative integer."""


class InvalidCheckpointPathError(CheckpointError, ValueError):
    """A path given to finalize or abort is not a temporary checkpoint of this manager."""


class CheckpointNotFoundError(CheckpointError, LookupError):
    """No finalized checkpoint exists at the requested step."""


class StateNotFoundError(CheckpointError, FileNotFoundError):
    """`ckpt.torch.load_state` found no state file (or no directory) where it looked."""


class DeviceUnavailableError(CheckpointError, RuntimeError):
    """`ckpt.torch.load_state` was asked to put tensors on a device this process lacks.

    A `RuntimeError`, as ``torch.load`` raises in that case.
    """


class ReadOnlyError(CheckpointError, PermissionError):
    """A write was asked of a manager opened read-only, or with checkpointing disabled."""


class CheckpointDirLockedError(CheckpointError, BlockingIOError):
    """Another process holds the writer lock on the checkpoint directory."""


class LeaseLostError(CheckpointError, RuntimeError):
    """This writer's lease on an object store expired or was taken over.

    A writer on a store without locks holds a lease object that it renews in the
    background; when a renewal fails for longer than the lease lasts (a partition, a
    paused process), another writer may have taken the directory over, so this one
    refuses to commit or delete anything more.

    ``lapsed`` is true when the lease only went unrenewed (the store did not answer):
    it is re-taken by the next call that reaches the store, unless another writer took
    it over meanwhile. False when it was taken over or released: that is for good.
    """

    def __init__(self, message: str, *, lapsed: bool = False) -> None:
        super().__init__(message)
        self.lapsed = lapsed


class CommitConflictError(CheckpointError, FileExistsError):
    """Another writer committed the same step first (or replaced it meanwhile).

    The manifest is created with a conditional write, so of two writers racing to
    commit one step exactly one wins; the loser's attempt is left uncommitted.
    """


class UnsafeFileError(CheckpointError, OSError):
    """A file ckpt reads or writes itself is not a plain file or directory it may use.

    For its own files (``training_info.json``, ``config.yaml``, and the lock, pins and
    trash under ``.ckpt/``) ckpt never follows a symbolic link, never opens a FIFO or a
    device, and never reads more than 64 MiB, so a crafted entry can neither redirect a
    delete out of the checkpoint directory nor hang or exhaust a reader.
    """


class SaveInProgressError(CheckpointError, RuntimeError):
    """Another thread of this process is saving the same step on this directory.

    `CheckpointManager.save` and `CheckpointManager.save_async` wait for each other;
    `CheckpointManager.init_tmp_checkpoint` refuses a step whose temporary directory
    another live thread holds, rather than replace it under that thread.
    """


class CheckpointWarning(UserWarning):
    """Base class of ckpt's warnings: filter them all with one category.

    For example ``warnings.simplefilter("ignore", ckpt.CheckpointWarning)``, or
    ``"error"`` in a test suite that wants none.
    """


class MissingMetricWarning(CheckpointWarning):
    """`CheckpointManager.get_best_checkpoint_path` met checkpoints without the metric.

    They rank below every checkpoint that has it; when none has it, the latest is
    returned. Filter it like any warning, for example
    ``warnings.simplefilter("ignore", ckpt.MissingMetricWarning)``.
    """


class RecoveryWarning(CheckpointWarning):
    """Recovery changed a checkpoint directory: what a crash left was finished or undone.

    A writer's recovery (when a manager opens its directory, and before a save replaces
    an earlier attempt), and the Hugging Face callback's tidying of ``checkpoint-N``
    directories, warn once per change: a temporary removed, an overwrite rolled back, an
    incomplete directory set aside. The same text is logged on the ``ckpt`` logger.
    """


class NonFiniteMetricWarning(CheckpointWarning):
    """A NaN or infinite number in training info was stored as ``null``.

    JSON has no NaN: the checkpoint is saved, and ranks as one without that metric.
    The same text is logged on the ``ckpt`` logger.
    """


class LeaseWaitWarning(CheckpointWarning):
    """A writer found another writer's lease on a store and waits to see if it is live.

    The wait lasts at most ``lease_seconds`` (a restart after a crash waits the whole
    of it); the warning names the holder and when it last renewed, by its own clock.
    The same text is logged on the ``ckpt`` logger.
    """


class CollectiveError(CheckpointError, RuntimeError):
    """A collective call of a distributed manager failed on one or more ranks.

    Every rank raises it, with the same message naming each failed rank and its error
    (on the rank where an error happened, chained to it), so that no rank goes on
    believing a checkpoint was saved that another rank knows was not.

    Attributes:
        ranks: The global ranks that failed, sorted.
    """

    def __init__(self, message: str, *, ranks: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.ranks = ranks


class CollectiveTimeoutError(CheckpointError, TimeoutError):
    """A rank of a distributed manager died, or did not answer within the timeout.

    Raised on the ranks still alive within ``collective_timeout_s`` of the call,
    naming the ranks that did not answer; nothing was committed by that call.

    Attributes:
        ranks: The global ranks that did not answer, sorted.
    """

    def __init__(self, message: str, *, ranks: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.ranks = ranks

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), self.ranks))


def _rebuild(cls: type[CollectiveTimeoutError], message: str, ranks: tuple[int, ...]) -> object:
    return cls(message, ranks=ranks)


class IncompleteCheckpointError(CheckpointError, RuntimeError):
    """A temporary checkpoint lacks a part its writers were expected to report.

    Raised by `CheckpointManager.finalize_checkpoint` (and, chained, by a background
    finalization) when a writer named in ``init_tmp_checkpoint(..., writers=...)``
    has not called `ckpt.mark_written`, or a file it reported is missing or changed
    size. Nothing is published; the temporary checkpoint stays for another try.

    Attributes:
        missing: The writers that did not report, sorted.
    """

    def __init__(self, message: str, *, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing


class ReplicationError(CheckpointError, RuntimeError):
    """A checkpoint's upload to the replica (``replicate.to``) failed every time it was tried.

    The checkpoint stays in the local tier, committed and held from local retention; its
    upload is tried again at the next save and when the directory is next opened.
    """


class StoreUnavailableError(CheckpointError, ConnectionError):
    """An object store could not be reached, or stopped answering, after every retry.

    s3fs and botocore raise their own exceptions for a refused, stalled or cut
    connection (``EndpointConnectionError``, ``ReadTimeoutError``, aiohttp's errors),
    which are not ``OSError``; ckpt raises this one in their place, naming the store's
    URL (credentials hidden) and chained to the original. It is a ``ConnectionError``,
    so an ``except OSError`` that handles a failing disk handles a failing store too.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class FinalizationError(CheckpointError, RuntimeError):
    """A background finalization (`CheckpointManager.begin_finalization`) failed.

    Raised once, by the next `CheckpointManager.finalize_pending`,
    `CheckpointManager.begin_finalization`, `CheckpointManager.shutdown` or ``with``
    exit, chained to the error of the ``wait_fn`` or the commit. A `RuntimeError`
    whose message starts "Background checkpoint finalization failed", as NeMo RL's.
    """


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: Frames a warning looks past: ckpt's own, and the `with` machinery of its context managers.
_SKIPPED = (_PACKAGE, contextlib.__file__)


def warn(category: type[CheckpointWarning], message: str) -> None:
    """Log ``message`` at WARNING on the ``ckpt`` logger and warn it as ``category``.

    The warning points at the first caller outside ckpt, so that Python's default
    filter shows it once per line of the user's code that caused it.
    """
    frame, level = sys._getframe(0), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        frame, level = frame.f_back, level + 1
    logging.getLogger("ckpt").warning("%s", message, stacklevel=level)
    warnings.warn(message, category, stacklevel=level)
