"""One code path for one process and many: a `Coordinator` and its local twin.

The manager and the saver never ask whether the job is distributed. They hand a
coordinator what only the directory's writer may do, and what every process
contributes:

* ``round(call, local, error, act, undo=...)``: every process reports ``local`` (or
  the ``error`` that keeps it from taking part); the coordinator runs ``act`` with
  every report, or ``undo`` if a process failed; every process gets the same answer.
* ``agree(call, answer)``: the coordinator's ``answer``, on every process.
* ``change(call, act)``: a change only the coordinator makes, once every process asks.

`Local` (a process alone) just calls: its report is the only one, and an error is
raised as it is. `Collective` (a torch.distributed job) runs each over
`ckpt._collective.group.Channel`: rank 0 of the group decides, and every rank gets its
answer, or a `CollectiveError` naming each rank that failed. This is the shape of
torch.distributed.checkpoint's ``_DistWrapper``, with every wait bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ckpt._collective.group import (
    Channel,
    Failure,
    Group,
    describe,
    error_message,
    failures_error,
    initialized_group,
    raise_if_error,
)
from ckpt._errors import CheckpointError, CollectiveError
from ckpt.handler import Part

Act = Callable[[list[Any]], dict[str, Any]]
logger = logging.getLogger("ckpt")


class Coordinator(Protocol):
    """Where a call's decision is made, and how every process learns it."""

    @property
    def coordinator(self) -> bool:
        """Whether this process decides (holds the lock, commits, prunes)."""
        ...

    @property
    def me(self) -> int:
        """This process's rank in the job, for messages (0 alone)."""
        ...

    @property
    def part(self) -> Part:
        """Which part of a save this process writes."""
        ...

    def rank_of(self, source: int) -> int:
        """The job rank of the process whose report is ``source``-th in a round."""
        ...

    def on(self, role: str) -> Coordinator:
        """The same coordinator over a channel of its own, for another thread."""
        ...

    def round(
        self,
        call: str,
        local: Mapping[str, Any],
        error: BaseException | None,
        act: Act,
        *,
        undo: Callable[[], object] | None = None,
    ) -> dict[str, Any]:
        """Every process reports; the coordinator acts (or undoes); all get its answer."""
        ...

    def agree(self, call: str, answer: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The coordinator's ``answer``, on every process."""
        ...

    def change(self, call: str, act: Callable[[], object]) -> None:
        """Run ``act`` on the coordinator once every process asks for it."""
        ...


def _undo(call: str, undo: Callable[[], object] | None) -> None:
    """Run ``undo`` after ``call`` failed; its own error is logged, never raised over that."""
    if undo is not None:
        try:
            undo()
        except Exception:
            logger.exception("could not undo %s after it failed", call)


class Local:
    """The coordinator of a process alone: every call just runs here."""

    coordinator = True
    me = 0
    part = Part()

    def rank_of(self, source: int) -> int:
        """This process is rank 0 of its own."""
        return source

    def on(self, role: str) -> Local:
        """Alone, one coordinator serves every thread."""
        return self

    def round(
        self,
        call: str,
        local: Mapping[str, Any],
        error: BaseException | None,
        act: Act,
        *,
        undo: Callable[[], object] | None = None,
    ) -> dict[str, Any]:
        """Raise ``error`` (after ``undo``), else ``act`` on this process's report."""
        if error is not None:
            _undo(call, undo)
            raise error
        return act([dict(local)])

    def agree(self, call: str, answer: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``answer()``."""
        return answer()

    def change(self, call: str, act: Callable[[], object]) -> None:
        """``act()``."""
        act()


class Collective:
    """The coordinator of a torch.distributed job: rank 0 of the group decides."""

    def __init__(self, group: Group, channel: Channel | None = None) -> None:
        self.group = group
        self.channel = channel if channel is not None else group.channel("calls")
        self._channels: dict[str, Collective] = {}

    @property
    def coordinator(self) -> bool:
        """Whether this rank commits."""
        return self.group.coordinator

    @property
    def me(self) -> int:
        """This process's global rank."""
        return int(self.group.ranks[self.group.rank])

    @property
    def part(self) -> Part:
        """This rank's place in the group."""
        return Part(self.group.rank, self.group.size, self.channel.process_group)

    def rank_of(self, source: int) -> int:
        """The global rank of the group's member ``source``."""
        return int(self.group.ranks[source])

    def on(self, role: str) -> Collective:
        """A coordinator over the channel ``role`` (made once, on first use)."""
        found = self._channels.get(role)
        if found is None:
            found = self._channels[role] = Collective(self.group, self.group.channel(role))
        return found

    def round(
        self,
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
        channel = self.channel
        message = {"call": call, **local, "error": describe(error) if error else None}
        messages, failures = channel.gather(message)
        answer: dict[str, Any]
        cause = error
        if self.coordinator:
            ranks = self.group.ranks
            failures += [
                Failure(ranks[src], str(m["error"]))
                for src, m in enumerate(messages)
                if m is not None and m.get("error")
            ]
            failures += [
                Failure(ranks[src], f"called {m['call']} (rank {self.me}: {call})")
                for src, m in enumerate(messages)
                if m is not None and m["call"] != call and not m.get("error")
            ]
            if failures:
                answer = error_message(failures_error(call, failures))
                _undo(call, undo)  # the answer must go out all the same
            else:
                try:
                    answer = act(messages)
                except Exception as exc:
                    cause = exc
                    failure = Failure(self.me, describe(exc))
                    answer = error_message(failures_error(call, [failure]))
            silent = [ranks.index(f.rank) for f in failures if f.silent]
            channel.broadcast(answer, skip=silent)
        else:
            answer = channel.broadcast(None)
        try:
            raise_if_error(answer)
        except CheckpointError as raised:
            raise raised from cause
        return answer

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
        got = self.channel.broadcast(message)
        try:
            raise_if_error(got)
        except CheckpointError as raised:
            raise raised from cause
        if got.get("call") != call:
            raise CollectiveError(
                f"rank {self.me} called {call} while the coordinator called {got.get('call')}",
                ranks=(self.me,),
            )
        return {key: value for key, value in got.items() if key != "call"}

    def change(self, call: str, act: Callable[[], object]) -> None:
        """A change only the coordinator makes (a pin, a prune), once every rank asks."""

        def run(_: list[Any]) -> dict[str, Any]:
            act()
            return {}

        self.round(call, {}, None, run)


def coordinator_for(process_group: Any, timeout_s: float) -> Coordinator:
    """`Local` for a process alone, `Collective` over the group a manager works over.

    This is the one place that asks whether the job is distributed.

    Raises:
        TypeError: If ``process_group`` is not a process group, ``None`` or ``False``.
        ValueError: If it is given outside an initialized torch.distributed job.
    """
    group = initialized_group(process_group)
    if group is None:
        return Local()
    return Collective(Group(group, timeout_s))
