"""Commit protocols: how a finished save becomes a checkpoint no crash can half-publish.

Two protocols, chosen from what the storage can do (`choose`):

* `RenameProtocol` (``"rename"``): a ``tmp_step_N`` directory, synced and renamed to
  ``step_N``. It needs atomic renames and directories; it is the default on local
  disk, and the layout NeMo RL's manager uses.
* `ManifestProtocol` (``"manifest"``): files written in place under ``step_N.<token>``,
  then ``step_N.manifest.json`` written last as the commit point. It needs neither
  renames nor directories: object stores use it, and local disk can.

Reading, deleting and recovery (`ckpt.commit.directory`) know both.
"""

from __future__ import annotations

from typing import Literal

from ckpt.commit.base import CommitKind, CommitProtocol, Committed, Place, RecoveryAction
from ckpt.commit.manifest import ManifestProtocol
from ckpt.commit.rename import RenameProtocol
from ckpt.storage.base import Capabilities

ProtocolChoice = Literal["auto", "rename", "manifest"]


def choose(choice: ProtocolChoice, capabilities: Capabilities) -> CommitProtocol:
    """The protocol ``choice`` names; ``"auto"``: rename where the storage can, else manifest.

    Raises:
        ValueError: If ``"rename"`` is asked of a storage without atomic renames or
            directories.
    """
    can_rename = capabilities.atomic_rename and capabilities.directories
    if choice == "manifest" or (choice == "auto" and not can_rename):
        return ManifestProtocol()
    if not can_rename:
        raise ValueError(
            "`commit_protocol: rename` needs a storage with atomic renames and directories; "
            "use `manifest` (or `auto`) here"
        )
    return RenameProtocol()


__all__ = [
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
