"""`ckpt.storage` is the only code of ckpt that touches a file system.

The test reads every module of the ``ckpt`` package outside ``ckpt/storage/`` and fails
on any call that does file I/O directly: ``open``, the file functions of ``os`` and
``os.path``, ``shutil``, ``tempfile``, ``io.open``/``io.FileIO``, ``fcntl``, and the
I/O methods of ``pathlib.Path`` (``read_bytes``, ``mkdir``, ``exists``...). Pure path
arithmetic (``os.path.join``, ``abspath``, ``Path / name``) is fine: it touches nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ckpt

PACKAGE = Path(ckpt.__file__).parent

# os and os.path functions that read or change a file system.
OS_IO = {
    "open", "scandir", "listdir", "lstat", "stat", "rename", "replace", "unlink", "remove",
    "mkdir", "makedirs", "rmdir", "removedirs", "fsync", "fdatasync", "walk", "fwalk",
    "truncate", "ftruncate", "link", "symlink", "readlink", "chmod", "chown", "utime",
    "mkfifo", "mknod", "read", "write", "pread", "pwrite", "close", "dup2", "sendfile",
    "statvfs", "access",
}  # fmt: skip
OS_PATH_IO = {
    "exists", "lexists", "isdir", "isfile", "islink", "ismount", "getsize", "getmtime",
    "getatime", "getctime", "realpath", "samefile",
}  # fmt: skip
MODULES_IO = {"shutil", "tempfile", "fcntl"}
IO_IO = {"open", "FileIO", "open_code"}
PATH_IO = {
    "read_bytes", "read_text", "write_bytes", "write_text", "open", "mkdir", "rmdir",
    "unlink", "rename", "replace", "touch", "exists", "is_dir", "is_file", "is_symlink",
    "iterdir", "glob", "rglob", "stat", "lstat", "resolve", "readlink", "symlink_to",
    "chmod", "samefile", "expanduser", "hardlink_to",
}  # fmt: skip

# The few places outside the storage that may do I/O, each for a reason of its own.
ALLOWED = {
    # The demo plays a user's training loop, whose files are its own, and a user's
    # scratch directory; it is an example, not the library.
    "cli/_demo.py": {"*"},
    # The CLI's demo command creates the demo's scratch directory for it.
    "cli/_commands.py": {"tempfile.mkdtemp"},
    # A CLI that prints nothing redirects its stdout to the null device.
    "cli/__init__.py": {"os.open", "os.dup2"},
    # str.replace on a retention decision's reason, for the listing's short `why` column.
    "cli/_listing.py": {"reason.replace"},
}


def _calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Every call in ``tree`` that does file I/O, as (line, dotted name)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            found.append((node.lineno, "open"))
        elif isinstance(func, ast.Attribute):
            owner = ast.unparse(func.value)
            name = func.attr
            if (
                (owner == "os" and name in OS_IO)
                or (owner in ("os.path", "posixpath") and name in OS_PATH_IO)
                or (owner in MODULES_IO)
                or (owner == "io" and name in IO_IO)
                or (name in PATH_IO and owner not in ("os", "os.path", "io", "self.storage"))
            ):
                found.append((node.lineno, f"{owner}.{name}"))
    return found


def _modules() -> list[Path]:
    return sorted(
        path for path in PACKAGE.rglob("*.py") if path.relative_to(PACKAGE).parts[0] != "storage"
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_the_storage_touches_a_file_system(path: Path) -> None:
    rel = path.relative_to(PACKAGE).as_posix()
    allowed = ALLOWED.get(rel, set())
    if "*" in allowed:
        return
    tree = ast.parse(path.read_text(), str(path))
    # A storage's own methods have these names too: only calls on something else count.
    direct = [
        (line, name)
        for line, name in _calls(tree)
        if name not in allowed and not _on_a_storage(name)
    ]
    assert direct == [], f"{rel} does file I/O itself instead of through ckpt.storage"


def _on_a_storage(name: str) -> bool:
    owner = name.rsplit(".", 1)[0]
    return owner.endswith(("storage", "self.inner", "self._storage"))


def test_the_check_finds_what_it_looks_for() -> None:
    source = (
        "import os, shutil\nfrom pathlib import Path\n"
        "open('x')\nos.scandir('.')\nos.path.exists('x')\nshutil.rmtree('d')\n"
        "Path('x').read_bytes()\n(Path('a') / 'b').mkdir()\nstorage.read_bytes('x')\n"
        "os.path.join('a', 'b')\nos.getpid()\n"
    )
    names = [name for _, name in _calls(ast.parse(source)) if not _on_a_storage(name)]
    assert names == [
        "open",
        "os.scandir",
        "os.path.exists",
        "shutil.rmtree",
        "Path('x').read_bytes",
        "Path('a') / 'b'.mkdir",
    ]
