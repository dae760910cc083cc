"""ckpt: a crash-safe checkpoint manager for training loops.

Create, commit, rank, prune and find checkpoints; never lose or half-publish one.
The pure ranking and retention policies live in the sibling package ``policies``.
"""

import logging

from ckpt._collective.reports import mark_written
from ckpt._config.resolve import policies_from_config
from ckpt._config.schema import (
    CheckpointConfig,
    PretrainedCheckpoint,
    explain_config_error,
    load_config,
    read_config_section,
)
from ckpt._directory.records import CheckpointRecord, Overview, PreemptionRecord
from ckpt._errors import (
    CheckpointDirLockedError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointWarning,
    ChecksumMismatchError,
    CollectiveError,
    CollectiveTimeoutError,
    CommitConflictError,
    ConfigFileError,
    DeviceUnavailableError,
    FinalizationError,
    IncompleteCheckpointError,
    InvalidCheckpointPathError,
    InvalidStepError,
    LeaseLostError,
    LeaseWaitWarning,
    MissingMetricWarning,
    NonFiniteMetricWarning,
    ReadOnlyError,
    RecoveryWarning,
    ReplicationError,
    SaveInProgressError,
    SerializationError,
    StateNotFoundError,
    StoreUnavailableError,
    UnsafeFileError,
)
from ckpt._manager import CheckpointManager
from ckpt._verify import PROBLEM_CODES, Problem, VerifyReport, verify
from ckpt.commit.base import RecoveryAction
from ckpt.storage import Entry, LocalStorage, Lock, Storage

logging.getLogger("ckpt").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "PROBLEM_CODES",
    "CheckpointConfig",
    "CheckpointDirLockedError",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointRecord",
    "CheckpointWarning",
    "ChecksumMismatchError",
    "CollectiveError",
    "CollectiveTimeoutError",
    "CommitConflictError",
    "ConfigFileError",
    "DeviceUnavailableError",
    "Entry",
    "FinalizationError",
    "IncompleteCheckpointError",
    "InvalidCheckpointPathError",
    "InvalidStepError",
    "LeaseLostError",
    "LeaseWaitWarning",
    "LocalStorage",
    "Lock",
    "MissingMetricWarning",
    "NonFiniteMetricWarning",
    "Overview",
    "PreemptionRecord",
    "PretrainedCheckpoint",
    "Problem",
    "ReadOnlyError",
    "RecoveryAction",
    "RecoveryWarning",
    "ReplicationError",
    "SaveInProgressError",
    "SerializationError",
    "StateNotFoundError",
    "Storage",
    "StoreUnavailableError",
    "UnsafeFileError",
    "VerifyReport",
    "explain_config_error",
    "load_config",
    "mark_written",
    "policies_from_config",
    "read_config_section",
    "verify",
]
