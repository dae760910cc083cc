"""A scripted training job for ``test_kill.py``: it saves, overwrites and prunes, and resumes.

The job saves the events of `EVENTS` in order with a Hybrid top-2 manager (``fsync`` on),
resuming after the newest event found on disk, so a job restarted after a crash finishes
the run. Two of the saves overwrite the step saved just before them, and four checkpoints
are pruned on the way. Every file it writes is a deterministic function of the event, so
a test knows every version of every step.

Modes (``--mode``): ``exchange`` and ``two-renames`` save synchronously with the
`checkpoint` context manager, writing the loop's own payload files (``two-renames`` on
a storage without an atomic exchange); ``async`` saves a small torch state dict (see
`fill_state`) with ``save_async``, up to `ASYNC_IN_FLIGHT` saves in flight behind the
loop, and waits for them only at the end, so every save's file operations happen on the
manager's background thread. The loop changes its tensors in place right after each
``save_async`` returns, as a training loop would. ``finalize`` is NeMo RL's
asynchronous finalization: the loop's files are written by a ``writer`` thread (as
Megatron's async save writes them), and ``begin_finalization(path, wait_fn=writer.join)``
commits on the finalizer's thread and prunes on its pruning thread; the loop then waits
for all of it (``shutdown``) before its next save, so that the operations come in one
order every run.

With ``--record`` (or ``--kill-at``) it watches every file operation made under its
checkpoint directory, on any thread: ``--record`` writes them to a JSON file, as
``(kind, what, event, thread)``, ``--kill-at I`` sends the whole process SIGKILL right
before the ``I``-th one (counting from 0), from whichever thread makes it, after writing
that operation (and, for ``async``, how many saves were in flight) to ``--marker``.
The event of an operation on the main thread is the save the loop is making (``async``:
none while saves are submitted; it must make no file operation then); on the
background thread it is the save being written, which starts with the ``mkdir`` of its
``tmp_step_N`` (saves are written one at a time, in submission order).

How operations are seen (CPython 3.10+):

* audit events (`sys.addaudithook`): ``open`` with a writing or creating flag,
  ``os.mkdir``, ``os.rename`` (also raised by ``os.replace``), ``os.remove``,
  ``os.rmdir``, ``os.truncate`` (also ``os.ftruncate``), and the other path-changing
  ``os`` events should they ever occur. Paths given relative to a ``dir_fd`` (as
  ``shutil.rmtree`` does) or as a descriptor are resolved through ``/proc/self/fd``.
* a profile function (`sys.setprofile`, and `threading.setprofile` for the threads
  started afterwards, such as the manager's background thread) for what raises no audit
  event: each ``write`` call on a file object under the directory (the job writes its
  payload in chunks, unbuffered, so a kill can leave a partial file; ``save_state``
  writes a buffered file opened from a descriptor, resolved through ``/proc/self/fd``),
  ``os.write``/``os.pwrite``, and ``os.fsync`` (on the file most recently opened by the
  same thread, which is how the storage layer and ``save_state`` call it); and the
  ``renameat2`` calls the storage layer makes through ctypes, which raise no audit event:
  they are seen as calls of ``ckpt.storage.local._rename2``, whose flags say whether it is a
  no-replace rename or an exchange.

Names that differ from run to run are normalized: a trash entry's random suffix and a
partial state file's (``.state.ckpt.<hex>.partial``) become ``ID``.

Run it alone::

    python tests/kill_job.py DIR [--mode exchange|two-renames|async|finalize] [--record OPS.json]
        [--kill-at I --marker FILE] [--report FILE]

or as a fork server (``--serve``): it imports everything once, then for each line read
on stdin (a JSON list of the arguments above) forks a child that runs the job with its
output in ``--log``, and answers one JSON line ``{"exit": code}`` where ``code`` is the
child's exit status (``-9`` for SIGKILL). Each child is a new process that has never
opened the directory, like a restarted job, without paying the imports again (torch is
imported by the server on its first ``async`` request).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType
from typing import Any, NoReturn

import ckpt
import ckpt._directory.index
import ckpt.storage.local
from ckpt.commit.reaper import Reaper

# (step, val_loss) of each save, in order. Events 3 and 7 overwrite the step saved just
# before them; retention prunes step 1 at event 2, steps 2 and 4 at event 5, step 3 at 7.
EVENTS: tuple[tuple[int, float], ...] = (
    (1, 0.9),
    (2, 0.5),
    (3, 0.7),
    (3, 0.4),
    (4, 0.8),
    (5, 0.3),
    (6, 0.6),
    (6, 0.35),
)
KEEP_TOP_K = 2
MODEL_CHUNKS = 3
STARTUP = -1  # the event of operations made before the first save
TIDY = len(EVENTS)  # the event of the final remove_old_checkpoints()
WATCHDOG_S = 120
ASYNC_IN_FLIGHT = 3  # max_pending_saves: the saves save_async lets wait behind the loop
MAIN, BACKGROUND = "MainThread", "ckpt-save"  # the threads operations are made on
REAPER = "ckpt-reaper"  # the removal of deleted checkpoints' files
WRITER, FINALIZER = "writer", "ckpt"  # (finalize) the payload's thread; the commit's and prune's


def config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    return {
        "checkpoint_dir": str(directory),
        "metric_name": "val_loss",
        "higher_is_better": False,
        "keep_top_k": KEEP_TOP_K,
        "fsync": True,
        "max_pending_saves": ASYNC_IN_FLIGHT,
    }


def training_info(event: int) -> dict[str, Any]:
    step, loss = EVENTS[event]
    return {"step": step, "val_loss": loss, "event": event}


def run_config(event: int) -> dict[str, Any]:
    return {"job": "kill_job", "event": event}


def payload(event: int) -> dict[str, list[bytes]]:
    """The loop's own files for the save of ``event``, as the chunks they are written in."""

    def chunk(name: str, index: int, size: int) -> bytes:
        return hashlib.sha256(f"{name} {event} {index}".encode()).digest() * (size // 32)

    return {
        "model.bin": [chunk("model", i, 4096) for i in range(MODEL_CHUNKS)],
        "optim/state.bin": [chunk("optim", 0, 1024)],
    }


def new_state() -> dict[str, Any]:
    """The ``async`` loop's state: a few tensors (of three dtypes) and ints."""
    import torch

    return {
        "model": {"weight": torch.zeros(4, 8), "bias": torch.zeros(8, dtype=torch.float64)},
        "optim": {"momentum": torch.zeros(3, 5, dtype=torch.int64), "step": 0},
        "event": 0,
    }


def fill_state(state: dict[str, Any], event: int) -> dict[str, Any]:
    """Set ``state`` in place to the values of the save of ``event``; return it."""
    import torch

    model, optim = state["model"], state["optim"]
    model["weight"].copy_(torch.arange(32.0).reshape(4, 8) * (event + 1) / 7)
    model["bias"].fill_(event - 0.25)
    optim["momentum"].copy_(torch.arange(15).reshape(3, 5) * 1000 + event)
    optim["step"] = EVENTS[event][0]
    state["event"] = event
    return state


def model_state(event: int) -> dict[str, Any]:
    """The state the ``async`` loop saves at ``event``."""
    return fill_state(new_state(), event)


def tree_digest(root: str | os.PathLike[str]) -> dict[str, str]:
    """Every entry under ``root`` by relative path: a file's sha256, ``"dir"`` or ``"link"``.

    The record of the files' digests a commit writes (``.ckpt-files.json``) is left out:
    it is not what the job wrote (the tests check it against the files on their own).
    """
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel == ".ckpt-files.json":
                continue
            if os.path.islink(full):
                out[rel] = "link"
            elif os.path.isdir(full):
                out[rel] = "dir"
            else:
                with open(full, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(out.items()))


class _NoExchange(ckpt.LocalStorage):
    """Local storage on a system without ``renameat2(RENAME_EXCHANGE)``."""

    def exchange(self, a: Path, b: Path) -> bool:
        return False


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {  # audit event -> (kind, index of the path, index of its dir_fd or None)
    "os.mkdir": ("mkdir", 0, 2),
    "os.remove": ("unlink", 0, 1),
    "os.rmdir": ("rmdir", 0, 1),
    "os.truncate": ("truncate", 0, None),
    "os.chmod": ("chmod", 0, 2),
    "os.chown": ("chown", 0, 3),
    "os.utime": ("utime", 0, 3),
    "os.symlink": ("symlink", 1, 2),
    "os.link": ("link", 1, 3),
    "os.setxattr": ("setxattr", 0, None),
    "os.removexattr": ("removexattr", 0, None),
}
_RENAMEAT2_KIND = {1: "rename-noreplace", 2: "exchange"}
_TRASH_ID = re.compile(r"^(\.ckpt/trash/[^/]+)\.[0-9a-f]{12}(?=/|$)")
_PARTIAL_ID = re.compile(r"(^|/)(\.[^/]+\.)[0-9a-f]+(\.partial)$")
_TMP_STEP = re.compile(r"tmp_step_(\d+)")
_PUBLISH = re.compile(r"tmp_step_(\d+) -> step_\1")


def _rename2_code() -> CodeType | None:
    func = getattr(ckpt.storage.local, "_rename2", None)
    return getattr(func, "__code__", None)


class FileOps:
    """Counts the file operations made under ``directory``; kills the process at one."""

    def __init__(
        self, directory: str, *, kill_at: int | None = None, marker: str | None = None
    ) -> None:
        self.roots = sorted({os.path.abspath(directory), os.path.realpath(directory)})
        self.kill_at = kill_at
        self.marker = marker
        self.event: int | None = STARTUP  # of operations on the main thread
        self.ops: list[tuple[str, str, int | None, str]] = []  # (kind, what, event, thread)
        # async: the first event submitted, the next the background thread starts, the one
        # it writes, how many save_async calls returned, and (--record) each save's files
        self.first_event = self.next_event = 0
        self.background_event: int | None = None
        self.accepted = 0
        self.versions: dict[int, dict[str, str]] | None = None
        self.follow_main = False  # (finalize) every thread's operations are the loop's event
        self._local = threading.local()  # busy, last_open: per thread
        self._lock = threading.Lock()
        self._rename2 = _rename2_code()
        self._syscalls: dict[Callable[..., Any], str] = {
            os.fsync: "fsync",
            os.fdatasync: "fsync",
            os.write: "write",
            os.pwrite: "write",
        }

    def start(self) -> None:
        sys.addaudithook(self._audit)
        sys.setprofile(self._profile)
        threading.setprofile(self._profile)  # threads started from now on

    def stop(self) -> None:
        threading.setprofile(None)
        sys.setprofile(None)
        self.kill_at = None  # audit hooks cannot be removed: make this one inert
        self.roots = []  # (and the profile function of threads still running)

    # --- naming -------------------------------------------------------------------

    def _rel(self, path: Any, dir_fd: Any = None) -> str | None:
        """``path`` relative to the directory ("." for itself), or None if outside."""
        try:
            if isinstance(path, int):
                full = os.readlink(f"/proc/self/fd/{path}")
            else:
                full = os.fsdecode(os.fspath(path))
                if not os.path.isabs(full) and isinstance(dir_fd, int) and dir_fd >= 0:
                    full = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), full)
                full = os.path.abspath(full)
        except (OSError, TypeError):
            return None
        for root in self.roots:
            if full == root:
                return "."
            if full.startswith(root + os.sep):
                # trash entries and partial files carry a random suffix: name them the
                # same in every run
                rel = _TRASH_ID.sub(r"\1.ID", full[len(root) + 1 :])
                return _PARTIAL_ID.sub(r"\1\2ID\3", rel)
        return None

    # --- hooks --------------------------------------------------------------------

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        local = self._local
        if getattr(local, "busy", False) or not self.roots:
            return
        local.busy = True
        try:
            if event == "open":
                path, _mode, flags = args
                rel = self._rel(path)
                local.last_open = rel
                if rel is not None and isinstance(flags, int) and flags & _WRITE_FLAGS:
                    self._op("open-write", rel)
            elif event == "os.rename":  # os.rename and os.replace
                src, dst, src_fd, dst_fd = args
                a, b = self._rel(src, src_fd), self._rel(dst, dst_fd)
                if a is not None or b is not None:
                    self._op("rename", f"{a} -> {b}")
            elif event in _PATH_EVENTS:
                kind, at, fd_at = _PATH_EVENTS[event]
                rel = self._rel(args[at], args[fd_at] if fd_at is not None else None)
                if rel is not None:
                    self._op(kind, rel)
        finally:
            local.busy = False

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        local = self._local
        if getattr(local, "busy", False) or not self.roots:
            return
        local.busy = True
        try:
            if event == "call" and frame.f_code is self._rename2:
                src, dst, flags = (frame.f_locals.get(k) for k in ("src", "dst", "flags"))
                a, b = self._rel(src), self._rel(dst)
                if a is not None or b is not None:
                    self._op(_RENAMEAT2_KIND.get(flags, f"renameat2-{flags}"), f"{a} -> {b}")
            elif event == "c_call":
                kind = self._syscalls.get(arg)
                if kind is not None:
                    last_open = getattr(local, "last_open", None)
                    if last_open is not None:
                        self._op(kind, last_open)
                elif getattr(arg, "__name__", None) == "write":
                    # a file opened by name, or from a descriptor (its name is the fd)
                    name = getattr(getattr(arg, "__self__", None), "name", None)
                    named = isinstance(name, (str, os.PathLike)) or type(name) is int
                    rel = self._rel(name) if named else None
                    if rel is not None:
                        self._op("write", rel)
        finally:
            local.busy = False

    def _op(self, kind: str, what: str) -> None:
        current = threading.current_thread()
        main = current is threading.main_thread()
        thread = MAIN if main else current.name.split(" ", 1)[0]
        with self._lock:
            event = self.event
            in_flight = 0
            if not main and not self.follow_main:
                if kind == "mkdir" and _TMP_STEP.fullmatch(what):  # the next save starts
                    self.background_event = self.next_event
                    self.next_event += 1
                    if f"tmp_step_{EVENTS[self.background_event][0]}" != what:
                        # raised into the library's mkdir: the job fails, loudly
                        raise RuntimeError(f"{what} is not the save of the next event")
                event = self.background_event
                if event is not None:  # this save, and those accepted behind it
                    in_flight = max(1, self.first_event + self.accepted - event)
                if self.versions is not None and event is not None and _PUBLISH.fullmatch(what):
                    tmp = Path(self.roots[0]) / what.split(" -> ", 1)[0]
                    self.versions[event] = tree_digest(tmp)  # as it is published
            index = len(self.ops)
            self.ops.append((kind, what, event, thread))
            if index == self.kill_at:
                if self.marker is not None:
                    killed = {"op": [index, kind, what, event, thread], "in_flight": in_flight}
                    fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.write(fd, json.dumps(killed).encode())
                    os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)  # the whole process, from any thread
                time.sleep(5)
                os._exit(70)  # never reached: SIGKILL to oneself is delivered at once


# --- the job ---------------------------------------------------------------------------


def _state(manager: ckpt.CheckpointManager, directory: Path) -> dict[str, Any]:
    trash = directory / ".ckpt" / "trash"
    return {
        "recovery": sorted([a.kind, a.path.name] for a in manager.recovery),
        "entries": sorted(os.listdir(directory)),
        "trash": sorted(os.listdir(trash)) if trash.is_dir() else None,
        "steps": {str(r.step): tree_digest(r.path) for r in manager.list_checkpoints()},
    }


def _wait_for_each_removal() -> None:
    """Make each delete wait for the reaper to remove its files.

    The removals still run on the reaper's thread, where a kill must find them; waiting
    for each keeps every run's operations in one order, so that a kill point names the
    same operation in every run.
    """
    submit = Reaper.submit

    def submit_and_wait(self: Reaper, path: str) -> None:
        submit(self, path)
        self.flush()

    Reaper.submit = submit_and_wait  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    _wait_for_each_removal()
    # The catalog (the index a cold start reads instead of every training_info.json) is
    # saved every 64 commits and at close; every other commit here, so that kills land
    # in its updates and restarts read what they left.
    ckpt._directory.index.CATALOG_EVERY = 2
    if args.mode == "async":
        _import_torch()  # a slow import: made before the hooks are set
    ops: FileOps | None = None
    if args.record is not None or args.kill_at is not None:
        ops = FileOps(str(directory), kill_at=args.kill_at, marker=args.marker)
        ops.start()
    storage = _NoExchange() if args.mode == "two-renames" else None
    manager = ckpt.CheckpointManager(config(directory), storage=storage)
    latest = manager.get_latest_checkpoint_path()
    info = manager.load_training_info(latest)
    start = int(info["event"]) + 1 if info is not None else 0
    report: dict[str, Any] = {"start": start, "resumed": _state(manager, directory)}
    save = {"async": _save_async, "finalize": _finalize}.get(args.mode, _save)
    versions = save(manager, start, ops, record=args.record is not None)
    if ops is not None:
        ops.event = TIDY
    # Recovery does not re-apply retention: a crash after the last save was published but
    # before its prune finished leaves a checkpoint retention would drop, and a restart
    # resumes after that save, so nothing would prune it. A job finishes that prune itself.
    manager.remove_old_checkpoints()
    if ops is not None:
        ops.stop()
    report["final"] = _state(manager, directory)
    manager.close()
    if args.record is not None:
        assert ops is not None
        Path(args.record).write_text(json.dumps({"ops": ops.ops, "versions": versions}))
    if args.report is not None:
        Path(args.report).write_text(json.dumps(report))
    return 0


def _write_payload(path: Path, event: int) -> None:
    for rel, chunks in payload(event).items():
        if "/" in rel:
            (path / rel).parent.mkdir()
        with open(path / rel, "wb", buffering=0) as f:  # one write(2) per chunk
            for data in chunks:
                f.write(data)


def _save(
    manager: ckpt.CheckpointManager, start: int, ops: FileOps | None, *, record: bool
) -> dict[int, dict[str, str]]:
    """Save the events from ``start`` on, writing the payload; (``record``) their files."""
    if ops is not None:
        ops.follow_main = True  # the reaper's removals are the save's that deleted
    versions: dict[int, dict[str, str]] = {}
    for event in range(start, len(EVENTS)):
        if ops is not None:
            ops.event = event
        step, _ = EVENTS[event]
        with manager.checkpoint(step, training_info(event), run_config(event)) as path:
            _write_payload(path, event)
            if record:
                versions[event] = tree_digest(path)
    return versions


def _finalize(
    manager: ckpt.CheckpointManager, start: int, ops: FileOps | None, *, record: bool
) -> dict[int, dict[str, str]]:
    """Save the events from ``start`` on with NeMo RL's asynchronous finalization."""
    if ops is not None:
        ops.follow_main = True
    versions: dict[int, dict[str, str]] = {}
    for event in range(start, len(EVENTS)):
        if ops is not None:
            ops.event = event
        step, _ = EVENTS[event]
        path = manager.init_tmp_checkpoint(step, training_info(event), run_config(event))
        writer = threading.Thread(target=_write_payload, args=(path, event), name=WRITER)
        writer.start()
        manager.begin_finalization(path, wait_fn=writer.join)
        manager.finalize_pending()
        if record:
            versions[event] = tree_digest(Path(manager.checkpoint_dir) / f"step_{step}")
        manager.shutdown()  # its pruning too, before the next save
    return versions


def _save_async(
    manager: ckpt.CheckpointManager, start: int, ops: FileOps | None, *, record: bool
) -> dict[int, dict[str, str]]:
    """Submit the saves from ``start`` on with ``save_async``; wait for them at the end."""
    if ops is not None:
        ops.event = None  # the main thread makes no file operation while saves are submitted
        ops.first_event = ops.next_event = start
        ops.versions = {} if record else None
    state = new_state()
    for event in range(start, len(EVENTS)):
        step, _ = EVENTS[event]
        fill_state(state, event)  # in place, while earlier saves may still be written
        manager.save_async(step, training_info(event), state, run_config=run_config(event))
        if ops is not None:
            ops.accepted += 1
    manager.wait_until_finished()
    return ops.versions if ops is not None and ops.versions is not None else {}


def _import_torch() -> None:
    import ckpt.torch  # noqa: F401 - torch is imported only for the async mode


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?")
    parser.add_argument(
        "--mode", choices=["exchange", "two-renames", "async", "finalize"], default="exchange"
    )
    parser.add_argument("--record", help="write the operations and versions here")
    parser.add_argument("--kill-at", type=int, help="SIGKILL before this operation")
    parser.add_argument("--marker", help="write the operation killed at here")
    parser.add_argument("--report", help="write the state after recovery and at the end")
    parser.add_argument("--log", help="(--serve requests) the child's stdout and stderr")
    parser.add_argument("--serve", action="store_true", help="be a fork server")
    args = parser.parse_args(argv)
    if not args.serve and args.directory is None:
        parser.error("the checkpoint directory is required")
    return args


def child(job: Callable[[], int], log: str | None = None) -> NoReturn:
    """Run ``job`` as a forked child: no stdin, output to ``log``, a watchdog, then exit.

    The exit status is ``job``'s (1 if it raised, with the traceback in the log).
    """
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        if log is not None:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        signal.alarm(WATCHDOG_S)  # a hung job dies of SIGALRM, not of SIGKILL
        code = job()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _child(argv: list[str]) -> None:
    try:
        args = parse(argv)
    except BaseException:  # a forked child must never return into the server's loop
        traceback.print_exc()
        os._exit(1)
    child(lambda: run(args), args.log)


def serve() -> int:
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        argv = json.loads(line)
        if "async" in argv:
            _import_torch()  # once, in the server, for every child
        gc.freeze()  # so that no collection in a child copies the pages of the server's objects
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            _child(argv)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


def exit_job(code: int) -> None:
    """Exit a job script with ``code``; a rank of a torch.distributed job skips shutdown.

    A Trainer's last collective on the default gloo group (Lightning's and the HF
    Trainer's both all_gather at the end of training) is freed by a gloo thread that
    needs the GIL; when that comes while the interpreter shuts down, the thread is
    forced to exit and the process aborts ("terminate called without an active
    exception", 2 runs in 8 under load). The report is written by then.
    """
    import torch.distributed as dist  # here: only the Trainer jobs, which have torch, call it

    if dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def job_main(
    argv: list[str],
    add_arguments: Callable[[argparse.ArgumentParser], None],
    job: Callable[[argparse.Namespace, FileOps | None], dict[str, Any]],
) -> int:
    """The command line of another job script (``lightning_job.py``, ``hf_job.py``).

    Its own arguments (``add_arguments``), and those of this one: the directory,
    ``--report FILE`` (the JSON ``job`` returns), ``--record FILE`` (every file
    operation under the directory), ``--kill-at I --marker FILE``, and ``--serve``: a
    fork server, one child per request line (the argument list; ``--log`` is the
    child's output), as `serve` is. ``job`` gets the `FileOps` watching the directory,
    if any, to name each operation's event.
    """

    def parse_args(given: list[str]) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        parser.add_argument("directory", nargs="?")
        add_arguments(parser)
        for flag in ("--report", "--record", "--marker", "--log"):
            parser.add_argument(flag)
        parser.add_argument("--kill-at", type=int)
        parser.add_argument("--serve", action="store_true")
        return parser.parse_args(given)

    def run_job(args: argparse.Namespace) -> int:
        ops = None
        if args.kill_at is not None or args.record is not None:
            ops = FileOps(args.directory, kill_at=args.kill_at, marker=args.marker)
            ops.event = None
            ops.start()
        report = job(args, ops)
        if args.record is not None and ops is not None:
            Path(args.record).write_text(json.dumps(ops.ops))
        if args.report is not None:
            Path(args.report).write_text(json.dumps(report))
        return 0

    args = parse_args(argv)
    if not args.serve:
        signal.alarm(WATCHDOG_S)
        return run_job(args)
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        request = parse_args(json.loads(line))
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            child(lambda request=request: run_job(request), request.log)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.serve:
        return serve()
    signal.alarm(WATCHDOG_S)
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
