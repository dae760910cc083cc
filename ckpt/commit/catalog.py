"""A saved copy of the manifests a writer has read, so that a cold start reads one object.

On an object store each manifest is a request: a restart beside 1,000 checkpoints
would make 1,000 of them. The catalog (``.ckpt/catalog.json``) keeps, for each
manifest, the version (ETag) it had and what a listing's reader needs of it (its
attempt, commit time and training info). It is only a cache: a cold start trusts an
entry only while the listing shows the manifest with that same version, and reads
every other manifest itself, so a stale, missing or damaged catalog costs requests,
never correctness. The manifests stay the truth.
"""

from __future__ import annotations

import json
import logging
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


def load_catalog(storage: Storage, directory: str) -> dict[str, tuple[str, Manifest]]:
    """The manifests the catalog holds, by name, with the version each had; ``{}`` if none."""
    try:
        raw: Any = json.loads(storage.read_bytes(catalog_path(directory), limit=MAX_CATALOG_BYTES))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        logger.warning("ignoring the catalog of %s: %s", directory, exc)
        return {}
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
    storage: Storage, directory: str, manifests: dict[str, tuple[str, Manifest]]
) -> None:
    """Replace the catalog with ``manifests`` (their file lists are left out: not needed)."""
    entries = {
        name: {
            "version": version,
            "manifest": manifest_data(
                Manifest(m.step, m.attempt, m.committed_at, (), m.training_info)
            ),
        }
        for name, (version, m) in sorted(manifests.items())
    }
    data = json.dumps({"format": _FORMAT, "manifests": entries}, separators=(",", ":"))
    storage.replace_file(catalog_path(directory), data.encode(), durable=True)
