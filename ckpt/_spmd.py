"""A distributed manager's collective calls: every rank calls, the coordinator commits.

Each collective call is one or two rounds of `ckpt._group.Channel`: every rank tells
the coordinator (rank 0 of the group) what it did, the coordinator decides, and tells
every rank the outcome, which is the same on every rank: the committed path, or an
error naming each failed rank. Only the coordinator holds the directory's lock, runs
recovery, commits and prunes; the others write their own part of a save and read.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpt import _attempts as attempts
from ckpt._async import import_torch
from ckpt._errors import CheckpointError, CollectiveError
from ckpt._group import Channel, Failure, Group, describe, error_message, failures_error
from ckpt._group import raise_if_error as _raise_if_error
from ckpt._serialize import encode_run_config, encode_training_info
from ckpt.storage import CheckpointPath, location_of, name_of, user_path, walk_files

if TYPE_CHECKING:
    from ckpt._manager import CheckpointManager

Act = Callable[[list[Any]], dict[str, Any]]
logger = logging.getLogger("ckpt")
_NO_STATE = object()


@dataclass(frozen=True)
class Prepared:
    """What a rank made of a collective call's arguments before the first round.

    Attributes:
        info: The encoded training info (empty where ``error`` is set).
        config: The encoded run config, if any.
        error: Why this rank cannot take part (an unstorable value, a bad state).
        sharded: Whether the state holds DTensors (DCP writes it).
        plan: ``ckpt.torch``'s plan of a plain state, made by checking it, so the
            write does not plan it again (``None``: plan what is written).
    """

    info: bytes
    config: bytes | None
    error: Exception | None = None
    sharded: bool = False
    plan: Any = None

    def unplanned(self) -> Prepared:
        """The same, for other tensors than those planned (a snapshot of them)."""
        return Prepared(self.info, self.config, self.error, self.sharded)


def prepare(training_info: Mapping[str, Any], run_config: Any, state: Any = _NO_STATE) -> Prepared:
    """Encode the info and config and check ``state``, keeping this rank's error.

    A rank does not raise here: its error goes into the first round, so that every
    rank raises it.
    """
    try:
        info = encode_training_info(training_info)
        config = encode_run_config(run_config) if run_config is not None else None
        if state is _NO_STATE:
            return Prepared(info, config)
        import_torch()  # for its message naming the extra
        from ckpt.torch._plan import plan_state  # noqa: PLC0415 - torch is an optional extra
        from ckpt.torch._ranks import is_sharded  # noqa: PLC0415

        if is_sharded(state):
            return Prepared(info, config, sharded=True)
        return Prepared(info, config, plan=plan_state(state))
    except Exception as exc:
        return Prepared(b"", None, error=exc)


class Spmd:
    """The collective side of one `CheckpointManager` in a torch.distributed job."""

    def __init__(self, manager: CheckpointManager, group: Group) -> None:
        self.m = manager
        self.group = group
        self.calls = group.channel("calls")  # the caller's thread

    @property
    def coordinator(self) -> bool:
        """Whether this rank commits."""
        return self.group.coordinator

    @property
    def me(self) -> int:
        """This process's global rank."""
        return self.group.ranks[self.group.rank]

    # --- one round trip ---------------------------------------------------------------

    def round(
        self,
        channel: Channel,
        call: str,
        local: Mapping[str, Any],
        error: BaseException | None,
        act: Act,
        *,
        undo: Callable[[], object] | None = None,
    ) -> dict[str, Any]:
        """Gather every rank's ``local`` (or ``error``), let the coordinator ``act``, answer.

        ``call`` names the call and its arguments that must agree on every rank. On
        the coordinator ``act`` runs only if every rank succeeded, with every rank's
        message; what it returns (or raises) is the answer every rank gets. If a rank
        failed, the coordinator runs ``undo`` instead (removing what the call had
        started), before it answers.

        Raises:
            CollectiveError: If any rank failed (on the rank that failed, chained to its
                error), or the ranks made different calls.
            CollectiveTimeoutError: If a rank died or did not answer in time.
        """
        message = {"call": call, **local, "error": describe(error) if error else None}
        messages, failures = channel.gather(message)
        answer: dict[str, Any]
        cause = error
        if self.coordinator:
            failures += [
                Failure(self.group.ranks[src], str(m["error"]))
                for src, m in enumerate(messages)
                if m is not None and m.get("error")
            ]
            failures += [
                Failure(self.group.ranks[src], f"called {m['call']} (rank {self.me}: {call})")
                for src, m in enumerate(messages)
                if m is not None and m["call"] != call and not m.get("error")
            ]
            if failures:
                answer = error_message(failures_error(call, failures))
                if undo is not None:
                    try:
                        undo()
                    except Exception:  # the answer must go out all the same
                        logger.exception("could not undo %s after a rank failed", call)
            else:
                try:
                    answer = act(messages)
                except Exception as exc:
                    cause = exc
                    failure = Failure(self.me, describe(exc))
                    answer = error_message(failures_error(call, [failure]))
            silent = [self.group.ranks.index(f.rank) for f in failures if f.silent]
            channel.broadcast(answer, skip=silent)
        else:
            answer = channel.broadcast(None)
        try:
            _raise_if_error(answer)
        except CheckpointError as raised:
            raise raised from cause
        return answer

    # --- what the manager calls -------------------------------------------------------

    def _path(self, answer: Mapping[str, Any]) -> CheckpointPath:
        storage = self.m._dir.storage
        return user_path(storage, location_of(storage, answer["path"]))

    def join(self, key: str, open_directory: Callable[[], None]) -> None:
        """Construct collectively: every rank names the same directory; rank 0 opens it."""

        def act(messages: list[Any]) -> dict[str, Any]:
            for src, message in enumerate(messages):
                if message["dir"] != key:
                    raise CheckpointError(
                        f"rank {self.group.ranks[src]} opened {message['dir']} and rank "
                        f"{self.me} {key}: every rank of a job must open the same directory"
                    )
            open_directory()
            return {}

        self.round(self.calls, "CheckpointManager()", {"dir": key}, None, act)

    # --- saves ------------------------------------------------------------------------

    def init_tmp(self, step: int, prepared: Prepared, writers: tuple[str, ...]) -> CheckpointPath:
        """`CheckpointManager.init_tmp_checkpoint`, collectively: one path for every rank."""
        m = self.m

        def act(_: list[Any]) -> dict[str, Any]:
            tmp = attempts.start(
                m._dir,
                m._protocol,
                step,
                prepared.info,
                prepared.config,
                durable=m._durable,
                writers=writers,
            )
            return {"path": tmp}

        call = f"init_tmp_checkpoint(step={step})"
        return self._path(self.round(self.calls, call, {}, prepared.error, act))

    def end(self, tmp: str, step: int, *, commit: bool) -> CheckpointPath | None:
        """Finalize (``commit``) or abort an attempt: committed only if every rank finalizes.

        Returns the committed path, or ``None`` where a rank aborted and this one did
        too.

        Raises:
            CollectiveError: On a rank that finalized, if another rank aborted.
        """
        m = self.m
        name = name_of(tmp)

        def act(messages: list[Any]) -> dict[str, Any]:
            aborted = [
                self.group.ranks[src] for src, msg in enumerate(messages) if not msg["commit"]
            ]
            if aborted:
                attempts.abort(m._dir, tmp, step, durable=m._durable)
                return {"aborted": aborted}
            return {"path": m._finalize_here(tmp, step)}

        call = f"finalize or abort {name}"
        answer = self.round(
            self.calls, call, {"commit": commit}, None, act, undo=self._undo(tmp, step)
        )
        if "aborted" in answer:
            if commit:
                ranks = tuple(answer["aborted"])
                raise CollectiveError(
                    f"rank(s) {', '.join(map(str, ranks))} aborted {name}, so no rank "
                    f"committed it (rank {self.me} finalized it)",
                    ranks=ranks,
                )
            return None
        return self._path(answer)

    def finalize(
        self,
        channel: Channel,
        tmp: str,
        step: int,
        wait_fn: Callable[[], object] | None,
        commit: Callable[[object], dict[str, Any]],
    ) -> None:
        """A background finalization's commit, once every rank's ``wait_fn`` returned."""
        error = None
        try:
            if wait_fn is not None:
                wait_fn()
        except Exception as exc:  # this rank's writes failed: no rank commits
            error = exc
        call = f"begin_finalization({name_of(tmp)})"
        self.round(channel, call, {}, error, commit, undo=self._undo(tmp, step))

    def _undo(self, tmp: str, step: int) -> Callable[[], None]:
        """Remove the attempt ``tmp`` (a rank failed: nothing may stay half-saved)."""
        m = self.m
        return lambda: attempts.abort(m._dir, tmp, step, durable=m._durable)

    def save(self, channel: Channel, step: int, prepared: Prepared, state: Any) -> CheckpointPath:
        """`CheckpointManager.save`, collectively: every rank writes its part, rank 0 commits.

        A ``prepared.error`` (this rank could not encode the info or check its state)
        fails the save on every rank, naming it.
        """
        m = self.m
        directory = m._dir
        call = f"save(step={step})"
        lock = directory.save_lock if self.coordinator else contextlib.nullcontext()
        with lock:

            def start(messages: list[Any]) -> dict[str, Any]:
                dcp = [self.group.ranks[src] for src, msg in enumerate(messages) if msg["dcp"]]
                if dcp and len(dcp) != len(messages):
                    raise CheckpointError(
                        f"rank(s) {', '.join(map(str, dcp))} passed state holding DTensors "
                        f"and the others did not: every rank saves the same kind of state"
                    )
                tmp = attempts.start(
                    directory, m._protocol, step, prepared.info, prepared.config, durable=m._durable
                )
                return {"path": tmp}

            local = {"dcp": prepared.sharded}
            tmp = self.round(channel, call, local, prepared.error, start)["path"]
            parts: list[list[Any]] = []
            error = None
            try:
                parts = self._write_part(channel, tmp, state, prepared)
            except Exception as exc:
                error = exc

            def commit(messages: list[Any]) -> dict[str, Any]:
                try:
                    check_parts(self, directory.storage, tmp, messages)
                    return {"path": m._finalize_here(tmp, step)}
                except BaseException:
                    attempts.abort(directory, tmp, step, durable=m._durable)
                    raise

            undo = self._undo(tmp, step)
            answer = self.round(channel, call, {"parts": parts}, error, commit, undo=undo)
        return self._path(answer)

    def _write_part(
        self, channel: Channel, tmp: str, state: Any, prepared: Prepared
    ) -> list[list[Any]]:
        from ckpt.torch import _ranks  # noqa: PLC0415 - torch is an optional extra
        from ckpt.torch._io import save_file  # noqa: PLC0415
        from ckpt.torch._plan import plan_state  # noqa: PLC0415

        storage, durable = self.m._dir.storage, self.m._durable
        if prepared.sharded:
            metadata = _ranks.save_dcp(storage, tmp, state, channel.process_group, fsync=durable)
            if not self.coordinator:
                return []  # DCP's metadata names every rank's files: rank 0 reports them
            files = _ranks.dcp_files(metadata)
            return [[_ranks.DCP_METADATA, 1, False]] + [[n, s, False] for n, s in files.items()]
        name = _ranks.rank_file(self.group.rank, self.group.size)
        plan = prepared.plan if prepared.plan is not None else plan_state(state)
        _, size = save_file(tmp, plan, name, fsync=durable, storage=storage)
        return [[name, size, True]]

    # --- queries and changes ------------------------------------------------------------

    def agree(self, call: str, answer: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """What the coordinator's ``answer`` is, on every rank (one message each way).

        Raises:
            CollectiveError: On every rank, if ``answer`` failed on the coordinator (there,
                chained to its error), or this rank made another call than it.
        """
        message: dict[str, Any] | None = None
        cause: BaseException | None = None
        if self.coordinator:
            try:
                message = {"call": call, **answer()}
            except Exception as exc:
                cause = exc
                failure = Failure(self.me, describe(exc))
                message = {"call": call, **error_message(failures_error(call, [failure]))}
        got = self.calls.broadcast(message)
        try:
            _raise_if_error(got)
        except CheckpointError as raised:
            raise raised from cause
        if got.get("call") != call:
            raise CollectiveError(
                f"rank {self.me} called {call} while the coordinator called {got.get('call')}",
                ranks=(self.me,),
            )
        return dict(got)

    def change(self, call: str, act: Callable[[], object]) -> None:
        """A change only the coordinator makes (a pin, a prune), once every rank asks."""

        def run(_: list[Any]) -> dict[str, Any]:
            act()
            return {}

        self.round(self.calls, call, {}, None, run)


def check_parts(spmd: Spmd, storage: Any, attempt: str, messages: list[Any]) -> None:
    """Check every file the ranks reported against one listing of the attempt.

    Each message carries ``parts``: ``[[name, size, exact], ...]`` (``exact`` false
    for a least size, as DCP's metadata gives).

    Raises:
        CollectiveError: Naming every rank whose file is missing or of another size.
    """
    prefix = attempt.rstrip("/") + "/"
    found = {path.removeprefix(prefix): entry.size for path, entry in walk_files(storage, attempt)}
    failures: list[Failure] = []
    for src, message in enumerate(messages):
        rank = spmd.group.ranks[src]
        for name, size, exact in message.get("parts", ()):
            have = found.get(name)
            if have is None:
                failures.append(Failure(rank, f"wrote {name}, which is not in {attempt}"))
            elif (have != size) if exact else (have < size):
                failures.append(
                    Failure(rank, f"wrote {name} of {size} bytes, and {attempt} has {have}")
                )
    if failures:
        raise failures_error("the check of the ranks' files", failures)
