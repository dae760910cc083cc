"""Every storage backend agrees with every other on what ckpt asks of it.

A Hypothesis state machine applies the same operations to `LocalStorage` (in a
temporary directory) and `MemoryStorage`, and checks after each that both answered
alike (the same result, or the same kind of error) and hold the same tree. An object
store backend joins the comparison by being added to `BACKENDS`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ckpt import UnsafeFileError
from ckpt.storage import LocalStorage, MemoryStorage, join, walk_files

# A few names, one level deep: enough for collisions, replacements and moves.
NAMES = ["a", "b", "c", "a/x", "b/x", "a/x/y"]
paths = st.sampled_from(NAMES)
data = st.binary(max_size=16)


def _exchange_works() -> bool:
    root = tempfile.mkdtemp()
    try:
        os.mkdir(join(root, "p"))
        os.mkdir(join(root, "q"))
        return LocalStorage().exchange(join(root, "p"), join(root, "q"))
    finally:
        shutil.rmtree(root)


EXCHANGE = _exchange_works()


def _outcome(call: Any) -> object:
    """What a call gave: its result, or the kind of error it raised."""
    try:
        return ("ok", call())
    except UnsafeFileError:
        return ("error", "UnsafeFileError")
    except OSError as exc:
        return ("error", type(exc).__name__)


class StorageAgreement(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = os.path.realpath(tempfile.mkdtemp(prefix="ckpt-agree-"))
        self.backends = [
            (LocalStorage(), join(self.tmp, "root")),
            (MemoryStorage(exchange=EXCHANGE), "/root"),
        ]
        for storage, root in self.backends:
            storage.make_dirs(root)

    def _each(self, operation: Any) -> None:
        outcomes = [_outcome(lambda s=s, r=r: operation(s, r)) for s, r in self.backends]
        assert all(o == outcomes[0] for o in outcomes), outcomes

    @rule(path=paths, content=data)
    def write_bytes(self, path: str, content: bytes) -> None:
        self._each(lambda s, r: s.write_bytes(join(r, path), content))

    @rule(path=paths, content=data, durable=st.booleans())
    def replace_file(self, path: str, content: bytes, durable: bool) -> None:
        self._each(lambda s, r: s.replace_file(join(r, path), content, durable=durable))

    @rule(path=paths, content=data)
    def open_write(self, path: str, content: bytes) -> None:
        def write(s: Any, r: str) -> None:
            with s.open_write(join(r, path), durable=False) as f:
                f.write(content)

        self._each(write)

    @rule(path=paths)
    def make_dir(self, path: str) -> None:
        self._each(lambda s, r: s.make_dir(join(r, path)))

    @rule(path=paths)
    def make_dirs(self, path: str) -> None:
        self._each(lambda s, r: s.make_dirs(join(r, path)))

    @rule(src=paths, dst=paths)
    def rename(self, src: str, dst: str) -> None:
        self._each(lambda s, r: s.rename(join(r, src), join(r, dst)))

    @rule(a=paths, b=paths)
    def exchange(self, a: str, b: str) -> None:
        # Swapping a directory with something inside it is no operation ckpt makes.
        nested = a.startswith(b + "/") or b.startswith(a + "/")
        if a != b and not nested:
            self._each(lambda s, r: s.exchange(join(r, a), join(r, b)))

    @rule(path=paths)
    def remove_file(self, path: str) -> None:
        self._each(lambda s, r: s.remove_file(join(r, path)))

    @rule(path=paths)
    def remove_tree(self, path: str) -> None:
        self._each(lambda s, r: s.remove_tree(join(r, path)))

    @rule(path=paths)
    def read(self, path: str) -> None:
        self._each(lambda s, r: s.read_bytes(join(r, path)))

        def stream(s: Any, r: str) -> bytes:
            with s.open_read(join(r, path)) as f:
                return bytes(f.read())

        self._each(stream)

    @rule(path=paths)
    def describe(self, path: str) -> None:
        def entry(s: Any, r: str) -> object:
            found = s.entry(join(r, path))
            return None if found is None else (found.name, found.kind, found.size)

        self._each(entry)
        self._each(lambda s, r: sorted((e.name, e.kind, e.size) for e in s.list_dir(join(r, path))))

    @invariant()
    def same_tree(self) -> None:
        def tree(s: Any, r: str) -> dict[str, bytes]:
            prefix = r + "/"
            return {p.removeprefix(prefix): s.read_bytes(p) for p, _ in walk_files(s, r)}

        def dirs(s: Any, r: str) -> list[str]:
            found, pending = [], [r]
            while pending:
                here = pending.pop()
                for e in s.list_dir(here):
                    if e.kind == "dir":
                        found.append(join(here, e.name).removeprefix(r + "/"))
                        pending.append(join(here, e.name))
            return sorted(found)

        self._each(tree)
        self._each(dirs)

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


StorageAgreement.TestCase.settings = settings(settings.default)
TestStorageAgreement = StorageAgreement.TestCase
