"""SIGKILL a real training job right before each of its file operations, restart it, check.

The job (``kill_job.py``) runs in its own process: it saves eight checkpoints with a
Hybrid top-2 manager, overwriting a step twice and pruning four checkpoints on the way,
and resumes from what it finds on disk. It runs in three modes: ``exchange`` and
``two-renames`` save synchronously, writing the loop's own files (an overwrite by an
atomic exchange, or by two renames); ``async`` saves a small torch state dict with
``save_async``, several saves in flight behind the loop, waiting for them only at the
end, so every save's file operations (the state file's partial write, its fsync and
rename, the publish and the prune) happen on the manager's background thread.

A fault-free run enumerates every file operation the job makes under its checkpoint
directory, on any thread (see the job's docstring for how). Then, for each kill point
``i``, a fresh directory gets a job killed with SIGKILL right before operation ``i``
(from the background thread, for a background operation: the whole process dies, with
the saves queued behind that one lost), and a restarted job that must finish the run.
Every operation that changes the directory's names (mkdir, the renames and the
exchange, unlink, rmdir, truncate) is a kill point; of the rest (opening for write,
writing a piece, fsync), every third is: a kill before the next piece of the same file
leaves what the neighbouring points already show (a SIGKILL loses no page cache, so a
kill before an fsync leaves what one after it would). Set ``CKPT_KILL_EXHAUSTIVE=1`` to
kill before every operation. The invariants:

* right after the kill, a read-only manager lists only complete checkpoints, each
  byte-identical to a version the job committed for that step, none missing that was
  committed and not about to be pruned (an overwrite without an atomic exchange may
  leave the old copy as ``old_step_N``, which recovery puts back);
* right after the restart's recovery, before it saves anything: the same, with no step
  missing at all, no ``tmp_step_*``, ``old_step_*`` or trash entries left, and it
  resumes at the interrupted save or the one after it;
* after the restarted run: exactly the steps Hybrid top-2 keeps, each byte-identical to
  the last version written for it, latest and best as expected, nothing else on disk;
* ``async``, after the kill and at the end: every ``step_N`` on disk holds a complete
  ``state.ckpt`` and no partial one, and `ckpt.torch.load_state` reads back the tensors
  of a committed version of that step. A restarted job resumes after the newest
  committed save, so it redoes the saves the kill lost (submitted, not committed).

Kill and restart processes are forked from a fork server that has done the imports
once (a fresh interpreter costs ~0.4 s, ~2 s with torch for ``async``; ~1300 of them
would take many minutes on 2 cores); the fault-free run is also made in a fresh
interpreter and must make the same operations. Run alone with ``pytest -m kill -s -n 0`` to
see the report, one line per mode.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import os
import queue
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import xxhash

import ckpt

pytestmark = [pytest.mark.subprocess, pytest.mark.kill]

JOB = Path(__file__).with_name("kill_job.py")
_spec = importlib.util.spec_from_file_location("kill_job", JOB)
assert _spec is not None
assert _spec.loader is not None
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)

WORKERS = 2
RUN_TIMEOUT_S = 150  # the job's own watchdog (SIGALRM) fires at 120 s

Listing = dict[int, dict[str, str]]  # step -> tree digest
MODES = ["exchange", "two-renames", pytest.param("async", marks=pytest.mark.torch), "finalize"]


# --- what the job should leave ---------------------------------------------------------


def kept_after(event: int) -> dict[int, int]:
    """Step -> the event whose version it holds, after the saves up to ``event`` (Hybrid)."""
    kept: dict[int, int] = {}
    for e in range(min(event, len(job.EVENTS) - 1) + 1):
        step, _ = job.EVENTS[e]
        kept[step] = e
        by_loss = sorted(kept, key=lambda s: (job.EVENTS[kept[s]][1], -s))
        keep = set(by_loss[: job.KEEP_TOP_K]) | {max(kept)}
        kept = {s: v for s, v in kept.items() if s in keep}
    return kept


FINAL = {5: 5, 6: 7}  # step 5 (val_loss 0.3) is best, step 6 (its second version) latest


def test_the_plan_overwrites_and_prunes() -> None:
    assert kept_after(len(job.EVENTS)) == FINAL
    steps = [step for step, _ in job.EVENTS]
    assert steps == sorted(steps)  # the job resumes after the newest event on disk
    assert len(steps) - len(set(steps)) == 2  # two overwrites
    pruned = {s for e in range(len(steps)) for s in kept_after(e - 1) if s not in kept_after(e)}
    assert pruned == {1, 2, 3, 4}
    # with saves in flight, retention keeps a step that a pending save will overwrite; no
    # step is pruned before a later save of it, so kept_after() holds for async saves too
    for e in range(len(steps)):
        doomed = kept_after(e - 1).keys() - kept_after(e).keys()
        assert not doomed & set(steps[e + 1 :])


# --- running the job -------------------------------------------------------------------


class ForkServer:
    """One ``kill_job.py --serve`` process: runs jobs one at a time, gives their status."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def ask(self, request: Any) -> dict[str, Any]:
        """Send one JSON line, and wait (at most `RUN_TIMEOUT_S`) for the one answering it."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], RUN_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"the fork server gave no answer to {request}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, argv: list[str]) -> int:
        """Run the job once; its exit status."""
        return int(self.ask(argv)["exit"])


@contextmanager
def fork_server(script: Path, log: Path) -> Iterator[ForkServer]:
    """``script --serve`` (its errors in ``log``); it exits at the end of its input."""
    with (
        open(log, "w") as errors,
        subprocess.Popen(
            [sys.executable, str(script), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        ) as proc,
    ):
        assert proc.stdin is not None
        try:
            yield ForkServer(proc)
        finally:
            proc.stdin.close()


@contextmanager
def fork_servers(n: int, logs: Path) -> Iterator[queue.Queue[ForkServer]]:
    servers: queue.Queue[ForkServer] = queue.Queue()
    with ExitStack() as stack:
        for i in range(n):
            servers.put(stack.enter_context(fork_server(JOB, logs / f"server_{i}.log")))
        yield servers


def job_args(directory: Path, mode: str, *extra: str | Path) -> list[str]:
    return [str(directory), "--mode", mode, *map(str, extra)]


# --- checks ----------------------------------------------------------------------------


def tree(path: Path) -> dict[str, str]:
    """A committed checkpoint's files by path (as the job recorded them when it wrote them).

    The record the commit wrote (``.ckpt-files.json``) is not among them: it must list
    exactly the other files, with their digests, or ``"!record"`` says what is wrong.
    """
    digest: dict[str, str] = job.tree_digest(path)
    if not (path / ".ckpt-files.json").is_file():
        digest["!record"] = "missing"
        return digest
    listed = json.loads((path / ".ckpt-files.json").read_text())["files"]
    files = sorted(rel for rel, kind in digest.items() if kind not in ("dir", "link"))
    if sorted(f["path"] for f in listed) != files or any(
        xxhash.xxh3_128_hexdigest((path / f["path"]).read_bytes()) != f["xxh3_128"] for f in listed
    ):
        digest["!record"] = f"does not list these files as they are: {listed}"
    return digest


def read_only_listing(directory: Path) -> Listing:
    with ckpt.CheckpointManager(job.config(directory), read_only=True) as reader:
        return {r.step: tree(r.path) for r in reader.list_checkpoints()}


def same_state(a: Any, b: Any) -> bool:
    """Whether two states are equal: the same structure, tensors of equal dtype and values."""
    import torch

    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and (a.dtype, a.shape) == (b.dtype, b.shape)
            and bool(torch.equal(a, b))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same_state(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def check_states(
    directory: Path, allowed: Mapping[int, Iterable[int | None]], mode: str = "async"
) -> list[str]:
    """(async) Problems of the state file of every ``step_N`` on disk, listed or not.

    Each must hold a complete ``state.ckpt`` and no partial one, whose tensors are those
    of one of the ``allowed`` events of that step. Other modes save no state file.
    """
    if mode != "async":
        return []
    from ckpt.torch import load_state

    problems = []
    for name in sorted(os.listdir(directory) if directory.is_dir() else []):
        match = re.fullmatch(r"step_(\d+)", name)
        if match is None:
            continue
        partial = [f for f in sorted(os.listdir(directory / name)) if f.endswith(".partial")]
        if partial:
            problems.append(f"{name} holds a partial state file: {partial}")
        try:
            state = load_state(directory / name)
        except Exception as exc:
            problems.append(f"{name} has no complete state file: {exc!r}")
            continue
        events = sorted({e for e in allowed.get(int(match[1]), ()) if e is not None})
        if not any(same_state(state, job.model_state(e)) for e in events):
            problems.append(
                f"{name}'s state is that of none of its events {events} "
                f"(it says event {state.get('event') if isinstance(state, dict) else None})"
            )
    return problems


def check_listing(
    listing: Listing,
    before: dict[int, int],
    after: dict[int, int],
    versions: dict[int, dict[str, str]],
    *,
    may_miss: frozenset[int] = frozenset(),
) -> list[str]:
    """Problems of ``listing`` taken while the job went from ``before`` to ``after``."""
    problems = []
    for step, digest in sorted(listing.items()):
        allowed = sorted({v for v in (before.get(step), after.get(step)) if v is not None})
        if not allowed:
            problems.append(f"step_{step} is listed but was not committed at this point")
        elif all(digest != versions[v] for v in allowed):
            problems.append(
                f"step_{step} matches none of its versions (events {allowed}): "
                f"half-written or mixed: {sorted(digest)}"
            )
    for step in sorted(before.keys() & after.keys()):
        if step not in listing and step not in may_miss:
            problems.append(f"step_{step} (kept before and after this save) is missing")
    return problems


@dataclass
class Outcome:
    index: int
    op: list[Any]
    problems: list[str] = field(default_factory=list)
    recovery: list[str] = field(default_factory=list)
    overwrite_seen: str = ""  # for a kill inside an overwrite: "old" or "new" copy listed
    in_flight: int = 0  # (async) saves submitted and not committed at the kill


def check_point(
    server: ForkServer,
    index: int,
    op: list[Any],
    *,
    root: Path,
    mode: str,
    versions: dict[int, dict[str, str]],
) -> Outcome:
    """Kill the job right before operation ``index`` (``op``), restart it, check it all."""
    _, _, event, _ = op
    out = Outcome(index, op)
    directory = root / f"kill_{index:03d}"
    marker, report = root / f"kill_{index:03d}.op", root / f"kill_{index:03d}.json"
    before, after = kept_after(event - 1), kept_after(event)

    # 1. the job, killed right before operation `index`
    log = root / f"kill_{index:03d}.log"
    status = server.run(
        job_args(directory, mode, "--kill-at", index, "--marker", marker, "--log", log)
    )
    if status != -signal.SIGKILL:
        out.problems.append(f"the job exited with {status}, not -SIGKILL: {log.read_text()}")
        return out
    killed = json.loads(marker.read_text()) if marker.exists() else {}
    if killed.get("op") != [index, *op]:
        out.problems.append(f"killed at {killed.get('op')}, not at the enumerated operation")
        return out
    out.in_flight = killed["in_flight"]

    # 2. what a reader sees before anyone recovers
    seen = read_only_listing(directory)
    may_miss = set()
    for step in before.keys() & after.keys() - seen.keys():
        old = directory / f"old_step_{step}"
        if mode != "exchange" and old.is_dir() and tree(old) == versions[before[step]]:
            may_miss.add(step)  # between the two renames of an overwrite: recovery undoes it
    out.problems += [
        f"after the kill: {p}"
        for p in check_listing(seen, before, after, versions, may_miss=frozenset(may_miss))
    ]
    allowed = {s: (before.get(s), after.get(s)) for s in before.keys() | after.keys()}
    out.problems += [f"after the kill: {p}" for p in check_states(directory, allowed, mode)]
    step, _ = job.EVENTS[event] if 0 <= event < len(job.EVENTS) else (None, None)
    if step in before and step in after and step in seen:
        out.overwrite_seen = "new" if seen[step] == versions[after[step]] else "old"

    # 3. the restarted job, which must finish the run
    log = root / f"restart_{index:03d}.log"
    status = server.run(job_args(directory, mode, "--report", report, "--log", log))
    if status != 0:
        out.problems.append(f"the restarted job exited with {status}: {log.read_text()}")
        return out
    resumed = json.loads(report.read_text())["resumed"]
    out.recovery = sorted({action for action, _ in resumed["recovery"]})
    listing = {int(s): d for s, d in resumed["steps"].items()}
    out.problems += [
        f"after recovery: {p}" for p in check_listing(listing, before, after, versions)
    ]
    for s in seen.keys() - listing.keys():
        out.problems.append(f"recovery removed step_{s}, which was complete")
    for s in seen.keys() & listing.keys():
        if seen[s] != listing[s]:
            out.problems.append(f"recovery changed step_{s}")
    expected_entries = sorted([".ckpt"] + [f"step_{s}" for s in listing])
    if resumed["entries"] != expected_entries or resumed["trash"] != []:
        out.problems.append(
            f"after recovery: leftovers: {resumed['entries']}, trash {resumed['trash']}"
        )
    start = json.loads(report.read_text())["start"]
    allowed_starts = {min(max(event, 0), len(job.EVENTS)), min(event + 1, len(job.EVENTS))}
    if start not in allowed_starts:
        out.problems.append(f"resumed at event {start}, expected one of {allowed_starts}")

    # 4. the finished run
    out.problems += check_final(directory, versions)
    final = {s: (v,) for s, v in FINAL.items()}
    out.problems += [f"at the end: {p}" for p in check_states(directory, final, mode)]
    return out


def check_final(directory: Path, versions: dict[int, dict[str, str]]) -> list[str]:
    problems = []
    entries = sorted(os.listdir(directory))
    if entries != [".ckpt"] + [f"step_{s}" for s in sorted(FINAL)]:
        problems.append(f"at the end: entries {entries}")
    meta = directory / ".ckpt"
    own = sorted(set(os.listdir(meta)) - {"catalog.json"})  # the catalog: once it was saved
    if own != ["lock", "ranking.json", "trash"] or os.listdir(meta / "trash"):
        problems.append(f"at the end: .ckpt holds {sorted(map(str, meta.rglob('*')))}")
    with ckpt.CheckpointManager(job.config(directory), read_only=True) as reader:
        listing = {r.step: tree(r.path) for r in reader.list_checkpoints()}
        if listing != {s: versions[v] for s, v in FINAL.items()}:
            problems.append(f"at the end: steps {sorted(listing)} or their files differ")
        for record in reader.list_checkpoints():  # what the catalog gave is what is on disk
            on_disk = json.loads((Path(record.path) / "training_info.json").read_text())
            if dict(record.info) != on_disk:
                problems.append(f"at the end: step {record.step}'s info is {dict(record.info)}")
        if reader.get_latest_checkpoint_path() != str(directory / "step_6"):
            problems.append(f"at the end: latest is {reader.get_latest_checkpoint_path()}")
        if reader.get_best_checkpoint_path() != str(directory / "step_5"):
            problems.append(f"at the end: best is {reader.get_best_checkpoint_path()}")
        info = reader.load_training_info(reader.get_latest_checkpoint_path())
        if info != job.training_info(7):
            problems.append(f"at the end: the latest training info is {info}")
    return problems


# --- the test --------------------------------------------------------------------------

# Operations whose kill can leave a directory's names in a state no other point shows,
# and those whose kill leaves what a neighbouring point shows (see the module docstring).
NAMESPACE = {"mkdir", "rename", "rename-noreplace", "exchange", "unlink", "rmdir", "truncate"}
DATA = {"open-write", "write", "fsync"}


def kill_points(ops: list[list[Any]]) -> list[int]:
    """Every namespace operation and every third data one (all: ``CKPT_KILL_EXHAUSTIVE=1``)."""
    unknown = {kind for kind, _, _, _ in ops} - NAMESPACE - DATA
    assert not unknown, f"operations of no known kind, to sort into NAMESPACE or DATA: {unknown}"
    if os.environ.get("CKPT_KILL_EXHAUSTIVE"):
        return list(range(len(ops)))
    data = [i for i, (kind, _, _, _) in enumerate(ops) if kind in DATA]
    names = [i for i, (kind, _, _, _) in enumerate(ops) if kind in NAMESPACE]
    return sorted(names + data[::3])


def record(directory: Path, mode: str, out: Path) -> tuple[list[list[Any]], dict[int, Any]]:
    """A fault-free run in a fresh interpreter: the operations and the versions written."""
    result = subprocess.run(
        [sys.executable, str(JOB), *job_args(directory, mode, "--record", out)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    return data["ops"], {int(e): d for e, d in data["versions"].items()}


def check_enumeration(ops: list[list[Any]], mode: str) -> None:
    """The enumeration saw what any implementation must do here, so the test cannot pass
    vacuously: the job's own payload writes (async: the state file's, on the background
    thread), and at least one rename to publish each save."""
    kinds = collections.Counter(kind for kind, _, _, _ in ops)
    saves = n = len(job.EVENTS)
    assert kinds["mkdir"] >= saves
    if mode == "async":
        assert kinds["open-write"] >= 2 * saves  # training_info.json and the state file
        assert kinds["write"] >= 5 * saves  # training_info.json, the state file's pieces
        assert kinds["fsync"] >= 2 * saves
        assert kinds["rename"] >= saves  # the state file's, to its final name
        assert kinds["rename"] + kinds["rename-noreplace"] + kinds["exchange"] >= 2 * saves
        check_async_ops(ops)
    else:
        assert kinds["open-write"] >= 3 * saves  # training_info.json and the two payload files
        assert kinds["write"] >= (job.MODEL_CHUNKS + 2) * saves
        assert kinds["fsync"] >= saves
        assert kinds["rename"] + kinds["rename-noreplace"] + kinds["exchange"] >= saves
        assert (kinds["exchange"] >= 2) == (mode in ("exchange", "finalize"))
        if mode == "finalize":
            check_finalize_ops(ops)
        else:
            assert {thread for _, _, _, thread in ops} == {job.MAIN, job.REAPER}
    assert kinds["unlink"] >= 1
    assert kinds["rmdir"] >= 1
    # the catalog's updates are among the kill points: written aside, then renamed over
    assert any(kind == "rename" and what.endswith(".ckpt/catalog.json") for kind, what, _, _ in ops)
    # Deletes are off the save's path: every deleted checkpoint's file is removed on the
    # reaper's thread (recovery, at the start, removes what a crash left on its own).
    removals = {
        thread
        for kind, what, e, thread in ops
        if kind in ("unlink", "rmdir") and what.startswith(".ckpt/trash/") and e >= 0
    }
    assert removals == {job.REAPER}
    assert {event for _, _, event, _ in ops} == set(range(-1, n))
    assert len(ops) >= 150


def check_finalize_ops(ops: list[list[Any]]) -> None:
    """The payload is written on the writer thread; the commit and the prune are made on
    the finalizer's threads, after the payload, never on the loop's."""
    for event, (step, _) in enumerate(job.EVENTS):
        mine = [(kind, what, thread) for kind, what, e, thread in ops if e == event]
        writes = [i for i, (k, w, t) in enumerate(mine) if k == "write" and "model.bin" in w]
        assert writes, (event, mine)
        assert {mine[i][2] for i in writes} == {job.WRITER}
        publish = [i for i, (_, w, _) in enumerate(mine) if w == f"tmp_step_{step} -> step_{step}"]
        if not publish:  # an overwrite: an exchange of the two names
            publish = [i for i, (k, _, _) in enumerate(mine) if k == "exchange"]
        assert len(publish) == 1, (event, mine)
        assert mine[publish[0]][2] == job.FINALIZER
        assert max(writes) < publish[0]
    pruned = {thread for _, what, e, thread in ops if what.startswith(".ckpt/trash/") and e >= 0}
    assert pruned == {job.REAPER}
    trashed = {thread for kind, what, _, thread in ops if "-> .ckpt/trash" in what}
    assert job.FINALIZER in trashed


def check_async_ops(ops: list[list[Any]]) -> None:
    """Every save's operations, the state file's included, are on the background thread."""
    assert {thread for _, _, e, thread in ops if e in (job.STARTUP, job.TIDY)} == {job.MAIN}
    for event, (step, _) in enumerate(job.EVENTS):
        assert {thread for _, _, e, thread in ops if e == event} - {job.REAPER} == {job.BACKGROUND}
        mine = [(kind, what) for kind, what, e, _ in ops if e == event]
        # the state file: written under a temporary name, fsynced, renamed, then published
        partial = f"tmp_step_{step}/.state.ckpt.partial"
        state = [
            ("open-write", partial),
            ("write", partial),
            ("fsync", partial),
            ("rename", f"{partial} -> tmp_step_{step}/state.ckpt"),
        ]
        assert all(op in mine for op in state), (event, mine)
        assert sum(op == ("write", partial) for op in mine) >= 4  # the header, each tensor
        publish = [
            i for i, (_, what) in enumerate(mine) if what == f"tmp_step_{step} -> step_{step}"
        ]
        assert len(publish) == 1, (event, mine)
        positions = [mine.index(op) for op in state] + publish
        assert positions == sorted(positions), (event, mine)


def check_versions(directory: Path, versions: dict[int, dict[str, str]], mode: str) -> None:
    """The fault-free run's directory, and the versions it recorded are what the job meant
    to write (async: what `save_state` writes for the event's state)."""
    assert check_final(directory, versions) == []
    assert sorted(versions) == list(range(len(job.EVENTS)))
    if mode != "async":
        for event, digest in versions.items():
            for rel, chunks in job.payload(event).items():
                assert digest[rel] == hashlib.sha256(b"".join(chunks)).hexdigest()
        return
    from ckpt.torch import save_state

    assert check_states(directory, {s: (v,) for s, v in FINAL.items()}) == []
    for event, digest in versions.items():
        assert sorted(digest) == ["config.yaml", "state.ckpt", "training_info.json"]
        expected = save_state(directory / ".ckpt", job.model_state(event), fsync=False)
        assert digest["state.ckpt"] == hashlib.sha256(expected.read_bytes()).hexdigest()
        expected.unlink()


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_before_every_file_operation(tmp_path: Path, mode: str) -> None:
    if mode == "async":
        pytest.importorskip("torch")
    ops, versions = record(tmp_path / "fault_free", mode, tmp_path / "ops.json")
    exchanges = not any("old_step_" in what for _, what, _, _ in ops)
    if mode == "exchange" and not exchanges:
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported on this file system")
    check_enumeration(ops, mode)
    check_versions(tmp_path / "fault_free", versions, mode)

    with fork_servers(WORKERS, tmp_path) as servers:
        # a forked job makes exactly the operations of a fresh interpreter
        server = servers.get()
        out = tmp_path / "ops_forked.json"
        status = server.run(job_args(tmp_path / "forked", mode, "--record", out))
        assert status == 0
        assert json.loads(out.read_text())["ops"] == ops
        servers.put(server)

        def point(index: int) -> Outcome:
            server = servers.get()
            try:
                return check_point(
                    server, index, ops[index], root=tmp_path, mode=mode, versions=versions
                )
            finally:
                servers.put(server)

        points = kill_points(ops)
        with ThreadPoolExecutor(WORKERS) as pool:
            outcomes = list(pool.map(point, points))

    failed = [o for o in outcomes if o.problems]
    kinds = collections.Counter(kind for kind, _, _, _ in ops)
    recoveries = collections.Counter(kind for o in outcomes for kind in o.recovery)
    seen = collections.Counter(o.overwrite_seen for o in outcomes if o.overwrite_seen)
    threads = collections.Counter(o.op[3] for o in outcomes)
    in_flight = collections.Counter(o.in_flight for o in outcomes if o.op[3] == job.BACKGROUND)
    summary = (
        f"kill points tried: {len(outcomes)} of {len(ops)} operations, "
        f"passed: {len(outcomes) - len(failed)} "
        f"({mode}; operations: {dict(sorted(kinds.items()))}; killed on thread: "
        f"{dict(threads)}; recovery actions on restart: {dict(sorted(recoveries.items()))}; "
        f"overwritten step seen after the kill: {dict(seen)}"
        + (f"; saves in flight at the kill: {dict(sorted(in_flight.items()))}" if in_flight else "")
        + ")"
    )
    print(summary)
    details = "\n".join(f"  #{o.index} before {o.op}: {'; '.join(o.problems)}" for o in failed)
    assert not failed, f"{summary}\n{details}"

    # the kill points hit the windows that matter
    assert seen["old"] > 0
    assert seen["new"] > 0
    expected = {"removed_temporary", "finished_delete"}
    if not exchanges:
        expected |= {"rolled_back_overwrite", "removed_displaced"}
    assert expected <= recoveries.keys()
    if mode == "async":
        # killed from the background thread, often with saves queued behind the one it wrote
        background = threads[job.BACKGROUND]
        assert sum(op[3] == job.BACKGROUND for op in ops) >= 20 * len(job.EVENTS)
        # every save was killed on the background thread, mid-state-file and before its rename
        for event in range(len(job.EVENTS)):
            kinds_killed = {o.op[0] for o in outcomes if o.op[2:] == [event, job.BACKGROUND]}
            assert {"write", "rename"} <= kinds_killed, (event, kinds_killed)
        assert sum(c for k, c in in_flight.items() if k >= 2) >= background // 4
