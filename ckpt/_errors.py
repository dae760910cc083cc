"""Exceptions raised by ckpt.

Every error the library raises on purpose derives from `CheckpointError`, and each
specific one also derives from the built-in exception a caller would naturally catch::

    CheckpointError                      (Exception)
    ├── ConfigFileError                  (ValueError)       config file unreadable as YAML
    ├── SerializationError               (ValueError)       training info/run config unstorable
    ├── InvalidStepError                 (ValueError)       step is not a non-negative integer
    ├── InvalidCheckpointPathError       (ValueError)       not a temporary dir of this manager
    ├── CheckpointNotFoundError          (LookupError)      no finalized checkpoint at that step
    ├── ReadOnlyError                    (PermissionError)  write on a read-only or disabled manager
    └── CheckpointDirLockedError         (BlockingIOError)  another process is the writer

Invalid configuration values raise pydantic's ``ValidationError`` (itself a
``ValueError``), and failures of the file system propagate as ``OSError``.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of every error ckpt raises on purpose."""


class ConfigFileError(CheckpointError, ValueError):
    """A configuration file could not be read or parsed as YAML."""


class SerializationError(CheckpointError, ValueError):
    """Training info or a run config holds a value that cannot be stored.

    Raised before anything is written, so no temporary directory is left behind.
    """


class InvalidStepError(CheckpointError, ValueError):
    """A step is not a non-negative integer."""


class InvalidCheckpointPathError(CheckpointError, ValueError):
    """A path given to finalize or abort is not a temporary checkpoint of this manager."""


class CheckpointNotFoundError(CheckpointError, LookupError):
    """No finalized checkpoint exists at the requested step."""


class ReadOnlyError(CheckpointError, PermissionError):
    """A write was asked of a manager opened read-only, or with checkpointing disabled."""


class CheckpointDirLockedError(CheckpointError, BlockingIOError):
    """Another process holds the writer lock on the checkpoint directory."""
