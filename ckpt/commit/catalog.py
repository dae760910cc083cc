"""A saved copy of the records a writer has read, so that a cold start reads one file.

On an object store each manifest is a request, and on a disk each ``step_N`` is a read
of its ``training_info.json``: a restart beside 100,000 checkpoints would make 100,000
of them. The catalog (``.ckpt/catalog.json``) keeps, for each manifest, the version
(ETag) it had and what a listing's reader needs of it (its attempt, commit time and
training info), and for each ``step_N`` directory the version of its
``training_info.json`` (inode, size and modification time), its commit time and its
training info. It is only a cache: a cold start trusts a manifest's entry only while
the one listing it makes anyway shows that manifest with that same version, and a
``step_N``'s only while its info file still has the version recorded (one ``lstat``,
no read), and reads every other checkpoint itself, so a stale, missing or damaged
catalog costs reads, never correctness. The checkpoints stay the truth.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from ckpt import _layout
from ckpt.commit.manifest import Manifest, manifest_data, manifest_from_data
from ckpt.storage.base import Storage, join

logger = logging.getLogger("ckpt")

_FORMAT = 1
MAX_CATALOG_BYTES = 256 << 20


def catalog_path(directory: str) -> str:
    """Where the catalog of ``directory`` is."""
    return join(directory, _layout.META_DIR, _layout.CATALOG_FILE)


Infos = dict[str, tuple[str, float, Mapping[str, Any]]]
"""``step_N`` -> (its info file's version, its commit time, its training info)."""


def _read(storage: Storage, directory: str) -> Any:
    try:
        return json.loads(storage.read_bytes(catalog_path(directory), limit=MAX_CATALOG_BYTES))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        logger.warning("ignoring the catalog of %s: %s", directory, exc)
        return None


def load_catalog(storage: Storage, directory: str) -> tuple[dict[str, tuple[str, Manifest]], Infos]:
    """What the catalog holds: manifests and ``step_N`` infos by name; empty if none."""
    raw = _read(storage, directory)
    if raw is None:
        return {}, {}
    return _manifests(raw, directory), _infos(raw)


def _infos(raw: Any) -> Infos:
    ours = isinstance(raw, dict) and raw.get("format") == _FORMAT
    entries = raw.get("checkpoints") if ours else None
    if not isinstance(entries, dict):
        return {}
    found: Infos = {}
    for name, item in entries.items():
        if (
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], str)
            and type(item[1]) in (int, float)
            and isinstance(item[2], dict)
            and _layout.STEP.fullmatch(name) is not None
        ):
            found[name] = (item[0], float(item[1]), item[2])
    return found


def _manifests(raw: Any, directory: str) -> dict[str, tuple[str, Manifest]]:
    found: dict[str, tuple[str, Manifest]] = {}
    entries = (
        raw.get("manifests") if isinstance(raw, dict) and raw.get("format") == _FORMAT else None
    )
    if not isinstance(entries, dict):
        logger.warning("ignoring the catalog of %s: not a ckpt catalog", directory)
        return {}
    for name, item in entries.items():
        match = _layout.MANIFEST.fullmatch(name)
        if match is None or not isinstance(item, dict) or not isinstance(item.get("version"), str):
            continue
        try:
            found[name] = (
                item["version"],
                manifest_from_data(item.get("manifest"), int(match.group(1))),
            )
        except ValueError:
            continue  # read that manifest itself
    return found


def save_catalog(
    storage: Storage,
    directory: str,
    manifests: dict[str, tuple[str, Manifest]],
    infos: Infos | None = None,
) -> None:
    """Replace the catalog with ``manifests`` and the ``step_N`` directories' ``infos``.

    The manifests' file lists are left out: a listing does not need them.
    """
    entries = {
        name: {
            "version": version,
            "manifest": manifest_data(
                Manifest(m.step, m.attempt, m.committed_at, (), m.training_info)
            ),
        }
        for name, (version, m) in sorted(manifests.items())
    }
    checkpoints = {
        name: [version, mtime, dict(info)]
        for name, (version, mtime, info) in sorted((infos or {}).items())
    }
    data = json.dumps(
        {"format": _FORMAT, "manifests": entries, "checkpoints": checkpoints},
        separators=(",", ":"),
    )
    # A cache: a power cut that takes it (or leaves it torn) costs a cold start reads,
    # never a wrong answer, so no fsync is spent on it.
    storage.replace_file(catalog_path(directory), data.encode(), durable=False)
