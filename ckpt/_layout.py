"""Names on disk: what is a checkpoint, a temporary, a displaced or a trashed entry."""

from __future__ import annotations

import re

STEP = re.compile(r"step_(0|[1-9][0-9]*)")
TMP = re.compile(r"tmp_step_(0|[1-9][0-9]*)")
OLD = re.compile(r"old_step_(0|[1-9][0-9]*)")

INFO_FILE = "training_info.json"
CONFIG_FILE = "config.yaml"
META_DIR = ".ckpt"  # our own bookkeeping: lock, pins, ranking, trash
LOCK_FILE = "lock"
PINS_FILE = "pins.json"
RANKING_FILE = "ranking.json"  # the run's ranking, for readers given no config
CATALOG_FILE = "catalog.json"  # on object stores: the manifests read, for cold starts
TRASH_DIR = "trash"
DAMAGE_FILE = "damaged.json"  # checkpoints a deep check found damaged: never best or latest
PREEMPTION_FILE = "preemption.json"  # the last preemption signal and what was saved for it
REPLICATION_FILE = "replication.json"  # which local checkpoints have a committed replica
# Under the rename protocol, the checkpoint's record of its files' sizes and digests,
# written into the attempt last, before the rename publishes it (manifests hold theirs).
FILES_RECORD = ".ckpt-files.json"
# ckpt.torch's state files start with this, and (format 2 on) end with the XXH3-128
# digest of every byte before it: a check needs no torch to read it.
STATE_MAGIC = b"\x89CKPTST\n"
STATE_TRAILER = 16


def plain_relative(path: object) -> bool:
    """Whether a record's ``path`` is a plain relative path (``a/b.bin``) inside its checkpoint.

    Refused: absolute paths, ``.``/``..`` or empty components, backslashes and NULs: a
    name a record holds is data to check, never a place to write to.
    """
    if not isinstance(path, str) or not path or path.startswith("/"):
        return False
    if "\\" in path or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def step_name(step: int) -> str:
    return f"step_{step}"


def tmp_name(step: int) -> str:
    return f"tmp_step_{step}"


def old_name(step: int) -> str:
    return f"old_step_{step}"


def parse(pattern: re.Pattern[str], name: str) -> int | None:
    """The step in ``name`` if it matches ``pattern`` exactly (no leading zeros)."""
    match = pattern.fullmatch(name)
    return int(match.group(1)) if match else None


# The manifest protocol: a checkpoint's files live under an attempt prefix, and the
# manifest beside it, written last, is its commit point.
ATTEMPT = re.compile(r"step_(0|[1-9][0-9]*)\.([0-9a-f]{12})")
MANIFEST = re.compile(r"step_(0|[1-9][0-9]*)\.manifest\.json")


def manifest_name(step: int) -> str:
    return f"step_{step}.manifest.json"


def attempt_name(step: int, token: str) -> str:
    return f"step_{step}.{token}"
