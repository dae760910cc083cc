"""The manifest protocol: files written in place, then a manifest that commits them.

Nothing is ever renamed, so it works where a rename is a copy (object stores). A save
writes its files under a fresh attempt prefix, ``step_N.<token>/``; committing writes
``step_N.manifest.json`` beside it, last, listing every file of the attempt with its
size and XXH3-128 digest (and, on a store whose versions name contents, its ETag), and
the training info, and ending with the digest of its own contents. The manifest is the
commit point: a reader trusts a checkpoint only through its manifest, and an attempt
no manifest names is never a checkpoint.

* The first commit of a step creates the manifest exclusively (``If-None-Match: *``
  on S3): of two writers racing for one step, one wins and the other gets
  `CommitConflictError`. An overwrite replaces it only if it is still the version
  this writer indexed (``If-Match``), where the storage can make that condition.

* A crash before the manifest leaves an attempt nobody names: recovery removes it.
* An overwrite writes a new attempt, then replaces the manifest in one atomic write:
  readers see the old checkpoint or the new one, never a mix. The old attempt, now
  unnamed, is removed after.
* A delete removes the manifest first, so a crash part-way leaves an unnamed attempt,
  never a half-deleted checkpoint.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ckpt import _layout
from ckpt._errors import CommitConflictError
from ckpt.commit.base import CommitKind, Committed, Place
from ckpt.storage import _digest
from ckpt.storage.base import ConditionalStorage, Entry, Storage, describe_kind, join

logger = logging.getLogger("ckpt")
_FORMAT = 1
MAX_MANIFEST_BYTES = 64 << 20


@dataclass(frozen=True)
class ManifestFile:
    """One file a checkpoint's record lists: its path under the attempt, size and hashes.

    ckpt records ``xxh3_128`` for every file, and the ETag too where the storage's
    file versions name contents (``capabilities.content_versions``). Manifests written
    before ckpt hashed with XXH3 hold ``sha256`` or only an ETag; at least one is set.
    """

    path: str
    size: int
    sha256: str | None = None
    etag: str | None = None
    xxh3_128: str | None = None


@dataclass(frozen=True)
class Manifest:
    """A decoded ``step_N.manifest.json``."""

    step: int
    attempt: str
    committed_at: float
    files: tuple[ManifestFile, ...]
    training_info: bytes | None = None  # the attempt's training_info.json, as written


def self_digest(data: Mapping[str, Any]) -> str:
    """The digest a record's JSON ``data`` ends with: of its other fields, canonically."""
    fields = {key: value for key, value in data.items() if key != "digest"}
    return _digest.digest_of(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())


def check_self_digest(raw: Any) -> None:
    """Raise `ValueError` if the record ``raw`` holds a ``digest`` its fields do not hash to.

    One flipped byte anywhere in a manifest (a size, a digest, a metric in its training
    info) is caught here, where JSON still parses.
    """
    if isinstance(raw, dict) and "digest" in raw and raw["digest"] != self_digest(raw):
        raise ValueError("its contents do not hash to the digest it ends with (damaged)")


def encode_manifest(manifest: Manifest) -> bytes:
    """``manifest`` as the JSON file readers decode with `decode_manifest`."""
    data = manifest_data(manifest)
    data["digest"] = self_digest(data)
    return json.dumps(data, indent=1).encode()  # no final newline: a cut one would pass


def manifest_data(manifest: Manifest) -> dict[str, Any]:
    """``manifest`` as JSON-ready data (what its file holds)."""
    data: dict[str, Any] = {
        "format": _FORMAT,
        "step": manifest.step,
        "attempt": manifest.attempt,
        "committed_at": manifest.committed_at,
        "files": [encode_file(f) for f in manifest.files],
    }
    if manifest.training_info is not None:
        data["training_info"] = manifest.training_info.decode()
    return data


_HASHES = ("xxh3_128", "sha256", "etag")


def encode_file(f: ManifestFile) -> dict[str, Any]:
    """One file's entry in a record, with the hashes it has."""
    found: dict[str, Any] = {"path": f.path, "size": f.size}
    for key in _HASHES:
        if getattr(f, key) is not None:
            found[key] = getattr(f, key)
    return found


def decode_file(item: Any) -> ManifestFile:
    """One file's entry of a record; `ValueError` if it is not one `encode_file` gives."""
    if (
        not isinstance(item, dict)
        or not isinstance(item.get("path"), str)
        or type(item.get("size")) is not int
        or not any(isinstance(item.get(key), str) for key in _HASHES)
        or any(not isinstance(item.get(key, ""), str) for key in _HASHES)
    ):
        raise ValueError(f"a file entry is {str(item)[:100]!r}")
    return ManifestFile(
        item["path"], item["size"], item.get("sha256"), item.get("etag"), item.get("xxh3_128")
    )


def decode_manifest(data: bytes, step: int) -> Manifest:
    """The manifest of ``step`` in ``data``; `ValueError` if it is not one ckpt wrote."""
    try:
        raw: Any = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    check_self_digest(raw)
    return manifest_from_data(raw, step)


def manifest_from_data(raw: Any, step: int) -> Manifest:
    """The manifest of ``step`` that `manifest_data` gave; `ValueError` if it is not one."""
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
    info = raw.get("training_info")
    if info is not None and not isinstance(info, str):
        raise ValueError("its training_info is not a string")
    listed = [decode_file(item) for item in files]
    return Manifest(
        step,
        attempt,
        float(committed_at),
        tuple(listed),
        info.encode() if info is not None else None,
    )


def read_manifest(storage: Storage, directory: str, step: int) -> Manifest:
    """Read and decode the manifest of ``step``.

    Raises:
        ValueError: If it is not a manifest ckpt wrote.
        OSError: If it cannot be read.
    """
    path = join(directory, _layout.manifest_name(step))
    return decode_manifest(storage.read_bytes(path, limit=MAX_MANIFEST_BYTES), step)


def _attempt_files(storage: Storage, attempt: str) -> list[tuple[str, Entry]]:
    """The files of an attempt, by path under it, sorted; what is not a file is named.

    A checkpoint is its files' bytes, recorded and replicated. A symbolic link (a
    dataset linked in, say: pruning never follows it), a FIFO or an empty directory
    holds no bytes of the checkpoint's own: none is in the record, none is verified or
    replicated, and a warning at the commit names each, since a replica or a copy
    fetched back will not have it.
    """
    prefix = attempt.rstrip("/") + "/"
    files: list[tuple[str, Entry]] = []
    skipped: list[str] = []
    pending = [attempt]
    while pending:
        directory = pending.pop()
        entries = storage.list_dir(directory)
        if not entries and directory != attempt:
            skipped.append(f"{directory.removeprefix(prefix)} (an empty directory)")
        for entry in entries:
            full = join(directory, entry.name)
            relative = full.removeprefix(prefix)
            if entry.kind == "dir":
                pending.append(full)
            elif entry.kind == "file":
                if relative != _layout.FILES_RECORD:
                    files.append((relative, entry))
            else:
                skipped.append(f"{relative} (a {describe_kind(entry.kind)})")
    if skipped:
        logger.warning(
            "%s: %s %s no part of the checkpoint's record (a checkpoint is its files' "
            "bytes): never verified, and a replica or a copy fetched back will not have "
            "%s; write the file itself there to keep it",
            attempt,
            ", ".join(sorted(skipped)[:5]),
            "are" if len(skipped) > 1 else "is",
            "them" if len(skipped) > 1 else "it",
        )
    return sorted(files)


def list_attempt(
    storage: Storage, attempt: str, known: Mapping[str, str] | None = None
) -> tuple[ManifestFile, ...]:
    """Every file under ``attempt``, with its size and digest (and ETag), sorted by path.

    A digest this process remembers from writing the file, or one in ``known`` (by path
    under the attempt, as the process that wrote it reported), is taken as it is;
    every other file is read once to hash it. The record of the rename protocol
    (`_layout.FILES_RECORD`) is not listed: it is what the list goes into.
    """
    listed = _attempt_files(storage, attempt)
    digests = _digest.file_digests(storage, attempt, listed, dict(known or {}))
    by_version = storage.capabilities.content_versions
    return tuple(
        ManifestFile(
            path,
            entry.size,
            etag=entry.version if by_version else None,
            xxh3_128=digests[path],
        )
        for path, entry in listed
    )


_RECORD_FORMAT = 1


def encode_files_record(files: tuple[ManifestFile, ...]) -> bytes:
    """The rename protocol's record of a checkpoint's files (`_layout.FILES_RECORD`)."""
    data: dict[str, Any] = {
        "format": _RECORD_FORMAT,
        "files": [encode_file(f) for f in files],
    }
    data["digest"] = self_digest(data)
    # Compact, and no final newline: a cut one would pass unseen.
    return json.dumps(data, separators=(",", ":")).encode()


def read_files_record(storage: Storage, checkpoint: str) -> tuple[ManifestFile, ...] | None:
    """The files a ``step_N`` directory's record lists; ``None`` if it has no record.

    A checkpoint committed before ckpt recorded digests (or by NeMo RL's manager) has
    none.

    Raises:
        ValueError: If the record is damaged or not one ckpt wrote.
        OSError: If it cannot be read.
    """
    try:
        data = storage.read_bytes(join(checkpoint, _layout.FILES_RECORD), limit=MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        return None
    return decode_files_record(data)


def decode_files_record(data: bytes) -> tuple[ManifestFile, ...]:
    """The files a ``.ckpt-files.json`` lists; `ValueError` if it is not one ckpt wrote."""
    try:
        raw: Any = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != _RECORD_FORMAT or "digest" not in raw:
        raise ValueError(f"not a ckpt record of files (format {_RECORD_FORMAT})")
    check_self_digest(raw)
    files = raw.get("files")
    if not isinstance(files, list):
        raise ValueError("its files are not a list")
    return tuple(decode_file(item) for item in files)


def _record_bytes(storage: Storage, committed: Committed) -> bytes | None:
    """The bytes of a committed checkpoint's record (its manifest, or its files record)."""
    if committed.kind == "manifest":
        assert committed.manifest is not None
        return storage.read_bytes(committed.manifest, limit=MAX_MANIFEST_BYTES)
    try:
        path = join(committed.path, _layout.FILES_RECORD)
        return storage.read_bytes(path, limit=MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        return None


def record_digest(storage: Storage, committed: Committed) -> str | None:
    """The digest a committed checkpoint's record ends with; ``None`` without a record.

    It names the checkpoint as committed, whatever happens to its directory's identity.

    Raises:
        ValueError: If the record is damaged or not one ckpt wrote.
        OSError: If it cannot be read.
    """
    data = _record_bytes(storage, committed)
    if data is None:
        return None
    try:
        raw: Any = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    check_self_digest(raw)
    digest = raw.get("digest") if isinstance(raw, dict) else None
    return digest if isinstance(digest, str) else None


def recorded_files(storage: Storage, committed: Committed) -> dict[str, ManifestFile] | None:
    """The files a committed checkpoint's record lists, by path; ``None`` without a record.

    The manifest's list for the manifest protocol, ``.ckpt-files.json`` for a
    ``step_N`` directory (absent in checkpoints older ckpt or NeMo RL committed).

    Raises:
        ValueError: If the record is damaged or not one ckpt wrote.
        OSError: If it cannot be read.
    """
    data = _record_bytes(storage, committed)
    if data is None:
        return None
    if committed.kind == "manifest":
        files = decode_manifest(data, committed.step).files
    else:
        files = decode_files_record(data)
    return {f.path: f for f in files}


def remove_manifest(storage: Storage, path: str, version: str) -> bool:
    """Remove the manifest ``path`` if it is still ``version``; whether it is gone.

    The condition is the store's own where it can make one (S3's ``If-Match``), so a
    manifest another writer replaced meanwhile stays; elsewhere (or with no version
    known) the lock keeps other writers out and the manifest is removed.
    """
    caps = storage.capabilities
    if version and caps.conditional_replace and isinstance(storage, ConditionalStorage):
        return storage.remove_if(path, version) or storage.entry(path) is None
    storage.remove_file(path)
    return True


def delete_manifest_checkpoint(place: Place, committed: Committed) -> None:
    """Remove the manifest first (the checkpoint is gone from then on), then its files.

    The manifest is removed only if it is still the version this writer indexed (see
    `remove_manifest`): one another writer replaced meanwhile stays, and so does the
    attempt it names.

    Raises:
        CommitConflictError: If the manifest changed since it was indexed.
    """
    assert committed.manifest is not None
    storage = place.storage
    if not remove_manifest(storage, committed.manifest, committed.version):
        raise CommitConflictError(
            f"did not delete step {committed.step}: {committed.manifest} changed "
            f"since this writer indexed it (another writer replaced it)"
        )
    place.sync()
    place.reap(committed.path)  # no manifest names it now: nothing reads it


def _conflict(path: str, step: int) -> CommitConflictError:
    return CommitConflictError(
        f"cannot commit step {step}: another writer committed it first ({path} changed "
        f"since this writer looked); this attempt stays uncommitted, and recovery "
        f"removes it"
    )


def _publish(place: Place, path: str, data: bytes, step: int, existing: Committed | None) -> None:
    """Write the manifest: created if the step is new, replaced if it is still ``existing``."""
    storage = place.storage
    caps = storage.capabilities
    manifest = existing is not None and existing.kind == "manifest"
    if not manifest and caps.exclusive_create and not caps.locking:
        # No lock keeps other writers out (an object store): create it only if none did.
        try:
            storage.write_bytes(path, data)
        except FileExistsError:
            raise _conflict(path, step) from None
        return
    if manifest and caps.conditional_replace and isinstance(storage, ConditionalStorage):
        assert existing is not None
        if not storage.replace_if(path, data, existing.version):
            raise _conflict(path, step)
        return
    storage.replace_file(path, data, durable=place.durable)


@dataclass(frozen=True)
class ManifestProtocol:
    """Commit by writing a manifest last: what object stores need, and local disk can use.

    The attempt is ``step_N.<token>`` (a fresh token each time). Committing syncs its
    files, lists them with their sizes and SHA-256 (reading each back once), and
    writes ``step_N.manifest.json`` durably and atomically; an existing checkpoint of
    the step is removed after. Files ckpt wrote itself are not read back: their
    digests were computed as they were written.
    """

    @property
    def name(self) -> CommitKind:
        """``"manifest"``."""
        return "manifest"

    def prepare(self, place: Place, step: int) -> str:
        """A fresh attempt prefix, ``step_N.<token>`` (made a directory where there are some)."""
        attempt = join(place.directory, _layout.attempt_name(step, secrets.token_hex(6)))
        if place.storage.capabilities.directories:
            place.storage.make_dir(attempt)
        return attempt

    def attempt_step(self, name: str) -> int | None:
        """N, for ``step_N.<token>``."""
        match = _layout.ATTEMPT.fullmatch(name)
        return int(match.group(1)) if match else None

    def commit(
        self,
        place: Place,
        attempt: str,
        step: int,
        *,
        existing: Committed | None,
        training_info: bytes | None = None,
        digests: Mapping[str, str] | None = None,
    ) -> Committed:
        """Sync the attempt's files, then write the manifest; drop what it replaced."""
        storage = place.storage
        if place.durable:
            storage.sync_tree(attempt)
        files = list_attempt(storage, attempt, digests)
        info = training_info
        if info is None:
            info = storage.read_bytes(join(attempt, _layout.INFO_FILE))
        manifest = Manifest(step, attempt.rstrip("/").rsplit("/", 1)[-1], time.time(), files, info)
        path = join(place.directory, _layout.manifest_name(step))
        _publish(place, path, encode_manifest(manifest), step, existing)
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
            training_info=info,
        )
