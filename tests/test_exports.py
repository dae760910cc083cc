"""The public surface is exactly what we mean to export, sorted and importable."""

from pathlib import Path

import pytest

import ckpt
import policies

CKPT_EXPORTS = [
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

STORAGE_EXPORTS = [
    "MAX_READ_BYTES",
    "Capabilities",
    "CheckpointPath",
    "Entry",
    "EntryKind",
    "FsspecStorage",
    "LocalStorage",
    "Lock",
    "MemoryStorage",
    "PathInput",
    "PathStr",
    "Storage",
    "describe_kind",
    "join",
    "location_of",
    "name_of",
    "open_storage",
    "parent_of",
    "redact_url",
    "refuse_credentials",
    "url_protocol",
    "user_path",
    "walk_files",
]

COMMIT_EXPORTS = [
    "CommitKind",
    "CommitProtocol",
    "Committed",
    "ManifestProtocol",
    "Place",
    "ProtocolChoice",
    "RecoveryAction",
    "RenameProtocol",
    "choose",
]

POLICIES_EXPORTS = [
    "AnyOf",
    "Bounded",
    "ByKey",
    "ByMetric",
    "ByRecency",
    "CheckpointView",
    "Decision",
    "EveryNSteps",
    "Hybrid",
    "KeepAll",
    "KeepNone",
    "LatestN",
    "PerCheckpoint",
    "Ranking",
    "RetentionPolicy",
    "TopK",
    "decide",
    "fixed_key",
    "incremental_parts",
    "metric_value",
    "ranked",
]


def test_trainer_adapter_exports_are_what_we_mean() -> None:
    import ckpt.hf
    import ckpt.lightning

    assert ckpt.lightning.__all__ == ["ModelCheckpoint"]
    assert ckpt.hf.__all__ == ["CheckpointCallback", "best_checkpoint", "latest_checkpoint"]
    for package in (ckpt.lightning, ckpt.hf):
        for name in package.__all__:
            assert getattr(package, name).__module__.startswith(f"{package.__name__}._")


def test_ckpt_exports_are_what_we_mean() -> None:
    assert ckpt.__all__ == CKPT_EXPORTS
    assert all(hasattr(ckpt, name) for name in ckpt.__all__)


def test_subpackage_exports_are_what_we_mean() -> None:
    import ckpt.commit
    import ckpt.handler
    import ckpt.storage

    assert ckpt.storage.__all__ == STORAGE_EXPORTS
    assert ckpt.commit.__all__ == COMMIT_EXPORTS
    assert ckpt.handler.__all__ == ["Part", "StateHandler", "WrittenFile"]
    for package in (ckpt.storage, ckpt.commit, ckpt.handler):
        assert all(hasattr(package, name) for name in package.__all__)
    # The names ckpt re-exports are the subpackages' own objects, not copies.
    assert ckpt.Storage is ckpt.storage.Storage
    assert ckpt.LocalStorage is ckpt.storage.LocalStorage
    assert ckpt.RecoveryAction is ckpt.commit.RecoveryAction


def test_policies_exports_are_what_we_mean() -> None:
    assert policies.__all__ == POLICIES_EXPORTS
    assert all(hasattr(policies, name) for name in policies.__all__)


def test_public_names_live_in_private_modules_but_say_their_package() -> None:
    for package in (ckpt, policies):
        for name in package.__all__:
            if name.isupper():
                continue  # a constant: its value has no module of its own
            module = getattr(getattr(package, name), "__module__", package.__name__)
            assert module.startswith(f"{package.__name__}."), (name, module)


def test_every_error_derives_from_checkpoint_error_and_a_builtin() -> None:
    builtins = {
        "ConfigFileError": ValueError,
        "SerializationError": ValueError,
        "ChecksumMismatchError": ValueError,
        "InvalidStepError": ValueError,
        "InvalidCheckpointPathError": ValueError,
        "CheckpointNotFoundError": LookupError,
        "ReadOnlyError": PermissionError,
        "CheckpointDirLockedError": BlockingIOError,
        "StateNotFoundError": FileNotFoundError,
        "DeviceUnavailableError": RuntimeError,
    }
    for name, builtin in builtins.items():
        error = getattr(ckpt, name)
        assert issubclass(error, ckpt.CheckpointError)
        assert issubclass(error, builtin)
        assert name in ckpt._errors.__doc__


def test_every_warning_is_a_checkpoint_warning_named_in_the_hierarchy() -> None:
    names = [n for n in CKPT_EXPORTS if n.endswith("Warning")]
    assert names == [
        "CheckpointWarning",
        "LeaseWaitWarning",
        "MissingMetricWarning",
        "NonFiniteMetricWarning",
        "RecoveryWarning",
    ]
    for name in names:
        assert issubclass(getattr(ckpt, name), ckpt.CheckpointWarning)
        assert issubclass(getattr(ckpt, name), UserWarning)
        assert not issubclass(getattr(ckpt, name), ckpt.CheckpointError)
        assert name in ckpt._errors.__doc__


def test_both_packages_ship_py_typed() -> None:
    from importlib.resources import files

    assert files("ckpt").joinpath("py.typed").is_file()
    assert files("policies").joinpath("py.typed").is_file()


@pytest.mark.subprocess
def test_core_works_without_torch(tmp_path: Path) -> None:
    """torch is an optional extra: blocking its import must not break a save."""
    import subprocess
    import sys

    script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
from ckpt import CheckpointManager
with CheckpointManager({{"checkpoint_dir": {str(tmp_path)!r}, "keep_top_k": 1}}) as m:
    with m.checkpoint(3, {{"loss": np.float32(0.5)}}) as path:
        (path / "w").write_bytes(b"1")
    print(m.get_latest_checkpoint_path())
    for save in (m.save, m.save_async):
        try:
            save(4, {{}}, {{}})
        except ImportError as exc:
            print(exc)
    from ckpt.handler import StateHandler
    print(isinstance(object(), StateHandler))  # the seam itself imports no torch
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    hint = "saving model state needs torch: pip install -e '.[torch]' in ckpt's clone"
    assert result.stdout.splitlines() == [str(tmp_path / "step_3"), hint, hint, "False"]
    assert not (tmp_path / "step_4").exists()


def test_the_path_type_the_manager_returns_prints_its_public_home(tmp_path: Path) -> None:
    import pickle

    from ckpt.storage import PathStr

    assert repr(PathStr) == "<class 'ckpt.storage.PathStr'>"
    with ckpt.CheckpointManager({"checkpoint_dir": str(tmp_path), "fsync": False}) as manager:
        with manager.checkpoint(1, {}):
            pass
        latest = manager.get_latest_checkpoint_path()
    assert type(latest) is PathStr
    assert pickle.loads(pickle.dumps(latest)) == latest
