"""The manifest protocol: files written in place, then a manifest that commits them.

Nothing is ever renamed, so it works where a rename is a copy (object stores). A save
writes its files under a fresh attempt prefix, ``step_N.<token>/``; committing writes
``step_N.manifest.json`` beside it, last, listing every file of the attempt with its
size and SHA-256. The manifest is the commit point: a reader trusts a checkpoint only
through its manifest, and an attempt no manifest names is never a checkpoint.

* A crash before the manifest leaves an attempt nobody names: recovery removes it.
* An overwrite writes a new attempt, then replaces the manifest in one atomic write:
  readers see the old checkpoint or the new one, never a mix. The old attempt, now
  unnamed, is removed after.
* A delete removes the manifest first, so a crash part-way leaves an unnamed attempt,
  never a half-deleted checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ckpt import _layout
from ckpt.commit.base import CommitKind, Committed
from ckpt.storage.base import Storage, join, walk_files

_FORMAT = 1
MAX_MANIFEST_BYTES = 64 << 20


@dataclass(frozen=True)
class ManifestFile:
    """One file a manifest lists: its path under the attempt, size and SHA-256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A decoded ``step_N.manifest.json``."""

    step: int
    attempt: str
    committed_at: float
    files: tuple[ManifestFile, ...]


def encode_manifest(manifest: Manifest) -> bytes:
    """``manifest`` as the JSON file readers decode with `decode_manifest`."""
    data = {
        "format": _FORMAT,
        "step": manifest.step,
        "attempt": manifest.attempt,
        "committed_at": manifest.committed_at,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in manifest.files],
    }
    return (json.dumps(data, indent=1) + "\n").encode()


def decode_manifest(data: bytes, step: int) -> Manifest:
    """The manifest of ``step`` in ``data``; `ValueError` if it is not one ckpt wrote."""
    try:
        raw: Any = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        raise ValueError("not a ckpt manifest (format 1)")
    attempt = raw.get("attempt")
    if not isinstance(attempt, str):
        raise ValueError("it names no attempt")
    parsed = _layout.ATTEMPT.fullmatch(attempt)
    if raw.get("step") != step or parsed is None or int(parsed.group(1)) != step:
        raise ValueError(f"it does not name an attempt of step {step}")
    committed_at = raw.get("committed_at")
    files = raw.get("files")
    if not isinstance(committed_at, (int, float)) or isinstance(committed_at, bool):
        raise ValueError("its committed_at is not a number")
    if not isinstance(files, list):
        raise ValueError("its files are not a list")
    listed = []
    for item in files:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("path"), str)
            or type(item.get("size")) is not int
            or not isinstance(item.get("sha256"), str)
        ):
            raise ValueError(f"a file entry is {str(item)[:100]!r}")
        listed.append(ManifestFile(item["path"], item["size"], item["sha256"]))
    return Manifest(step, attempt, float(committed_at), tuple(listed))


def read_manifest(storage: Storage, directory: str, step: int) -> Manifest:
    """Read and decode the manifest of ``step``.

    Raises:
        ValueError: If it is not a manifest ckpt wrote.
        OSError: If it cannot be read.
    """
    path = join(directory, _layout.manifest_name(step))
    return decode_manifest(storage.read_bytes(path, limit=MAX_MANIFEST_BYTES), step)


def _digest(storage: Storage, path: str) -> str:
    digest = hashlib.sha256()
    with storage.open_read(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def list_attempt(storage: Storage, attempt: str) -> tuple[ManifestFile, ...]:
    """Every file under ``attempt``, with its size and SHA-256, sorted by path."""
    prefix = attempt.rstrip("/") + "/"
    files = [
        ManifestFile(path.removeprefix(prefix), entry.size, _digest(storage, path))
        for path, entry in walk_files(storage, attempt)
    ]
    return tuple(sorted(files, key=lambda f: f.path))


def delete_manifest_checkpoint(
    storage: Storage, directory: str, committed: Committed, *, durable: bool
) -> None:
    """Remove the manifest first (the checkpoint is gone from then on), then its files."""
    assert committed.manifest is not None
    storage.remove_file(committed.manifest)
    if durable:
        storage.sync_dir(directory)
    storage.remove_tree(committed.path)


@dataclass(frozen=True)
class ManifestProtocol:
    """Commit by writing a manifest last: what object stores need, and local disk can use.

    The attempt is ``step_N.<token>`` (a fresh token each time). Committing syncs its
    files, lists them with their sizes and SHA-256 (reading each back once), and
    writes ``step_N.manifest.json`` durably and atomically; an existing checkpoint of
    the step is removed after.
    """

    @property
    def name(self) -> CommitKind:
        """``"manifest"``."""
        return "manifest"

    def prepare(self, storage: Storage, directory: str, step: int) -> str:
        """A fresh attempt prefix, ``step_N.<token>`` (made a directory where there are some)."""
        attempt = join(directory, _layout.attempt_name(step, secrets.token_hex(6)))
        if storage.capabilities.directories:
            storage.make_dir(attempt)
        return attempt

    def attempt_step(self, name: str) -> int | None:
        """N, for ``step_N.<token>``."""
        match = _layout.ATTEMPT.fullmatch(name)
        return int(match.group(1)) if match else None

    def commit(
        self,
        storage: Storage,
        directory: str,
        attempt: str,
        step: int,
        *,
        existing: Committed | None,
        durable: bool,
    ) -> Committed:
        """Sync the attempt's files, then write the manifest; drop what it replaced."""
        if durable:
            storage.sync_tree(attempt)
        manifest = Manifest(
            step,
            attempt.rstrip("/").rsplit("/", 1)[-1],
            time.time(),
            list_attempt(storage, attempt),
        )
        path = join(directory, _layout.manifest_name(step))
        storage.replace_file(path, encode_manifest(manifest), durable=durable)
        entry = storage.entry(path)
        if existing is not None and existing.kind == "manifest" and existing.path != attempt:
            storage.remove_tree(existing.path)  # no manifest names it any more
        return Committed(
            step,
            "manifest",
            attempt,
            entry.version if entry is not None else "",
            manifest.committed_at,
            manifest=path,
        )
