"""The messages the ranks of a distributed job exchange, each wait bounded by a timeout.

A collective save needs two things torch.distributed's collectives do not give: every
wait ends within ``collective_timeout_s`` (a gloo collective waits as long as its group's
timeout, an NCCL one may wait forever), and a rank that died or hangs is *named* on the
others. So the ranks talk point to point, over gloo groups of their own (CPU, loopback or
the job's network; created beside whatever backend the job trains with): the
coordinator receives each rank's message with a deadline, and knows exactly which ranks
did not answer; every other rank waits for the coordinator's answer with the same bound.

One `Channel` serves one thread (the caller's, the background saver's, the
finalizer's), so that messages of two threads never meet on one connection. Each round
has its own tag: a late answer to a round that timed out is never taken for the next.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ckpt._errors import CollectiveError, CollectiveTimeoutError

_LENGTH_BYTES = 8
_CHUNK = 16 << 10  # the first (usually only) message of each rank in a round


def initialized_group(process_group: Any) -> Any:
    """The process group a manager works over, or ``None`` for a single process.

    ``None`` means the default group of an initialized torch.distributed job with more
    than one rank; ``False`` means this process alone, whatever the job.
    """
    if process_group is False:
        return None
    dist = sys.modules.get("torch.distributed")
    if dist is None:  # torch.distributed never imported: it cannot be initialized
        if process_group is not None:
            raise TypeError(f"`process_group` must be a torch ProcessGroup, got {process_group!r}")
        return None
    if not dist.is_available() or not dist.is_initialized():
        if process_group is not None:
            raise ValueError(
                "`process_group` was given, but torch.distributed is not initialized "
                "(call torch.distributed.init_process_group first)"
            )
        return None
    group = dist.group.WORLD if process_group is None else process_group
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"`process_group` must be a torch.distributed ProcessGroup, None (the default "
            f"group) or False (this process alone), got {process_group!r}"
        )
    if dist.get_world_size(group) == 1 and process_group is None:
        return None
    return group


@dataclass(frozen=True)
class Failure:
    """Why one rank's part of a round failed."""

    rank: int
    error: str  # "Type: message"
    timed_out: bool = False  # it died or did not answer (else: it reported an error)
    silent: bool = False  # it did not answer within the timeout


def describe(error: BaseException) -> str:
    """``error`` as a rank reports it: its type's name and its message."""
    return f"{type(error).__name__}: {error}"


class Group:
    """The ranks of one manager's process group, and their channels.

    Attributes:
        rank: This process's rank in the group (0 is the coordinator).
        size: The number of ranks.
        ranks: The global rank of each group rank (messages name global ranks).
    """

    def __init__(self, process_group: Any, timeout_s: float) -> None:
        import torch.distributed as dist  # noqa: PLC0415 - only in a distributed job

        self._dist = dist
        self._group = process_group
        self.rank: int = dist.get_rank(process_group)
        self.size: int = dist.get_world_size(process_group)
        self.ranks: tuple[int, ...] = tuple(dist.get_process_group_ranks(process_group))
        self.timeout_s = timeout_s
        self._channels: dict[str, Channel] = {}
        self._mutex = threading.Lock()

    @property
    def coordinator(self) -> bool:
        """Whether this rank coordinates (it holds the directory's lock)."""
        return self.rank == 0

    def channel(self, role: str) -> Channel:
        """The channel of ``role``, created (collectively: on every rank) on first use."""
        with self._mutex:
            channel = self._channels.get(role)
            if channel is None:
                groups = self.new_group(), self.new_group(), self.new_group()
                channel = self._channels[role] = Channel(self, *groups)
            return channel

    def new_group(self) -> Any:
        """A gloo group of the same ranks whose own collectives time out as ours do."""
        try:
            return self._dist.new_group(
                list(self.ranks),
                backend="gloo",
                timeout=datetime.timedelta(seconds=self.timeout_s),
                use_local_synchronization=True,
            )
        except RuntimeError as exc:  # the store's barrier timed out: some rank never came
            raise CollectiveTimeoutError(
                f"rank {self.ranks[self.rank]}: not every rank of {list(self.ranks)} "
                f"created its checkpoint manager within {self.timeout_s:g} s "
                f"(`collective_timeout_s`); every rank must, or pass process_group=False "
                f"for a manager of this process alone ({exc})",
                ranks=(),
            ) from exc


class Channel:
    """Rounds of messages between the coordinator and every other rank, on one thread."""

    def __init__(self, group: Group, gather: Any, answer: Any, work: Any) -> None:
        import torch  # noqa: PLC0415 - only in a distributed job

        self._torch = torch
        self._dist = group._dist
        self.group = group
        # gloo closes every connection of a group once one wait on it times out: the
        # answers go over a group of their own, so that the coordinator can still tell
        # everyone which rank timed out; and the writers' own collectives (DCP's) have
        # a third, so that a timeout there leaves the report and the answer to travel.
        self._gather = gather
        self._answer = answer
        self.process_group = work
        self.broken: str | None = None  # why a group of this channel is closed
        self._answers_closed = False
        self._round = 0
        # A receive that timed out still owns its buffer until gloo lets it go: keep both
        # alive, so a late message lands in memory nobody else uses.
        self._orphans: list[Any] = []

    # --- point to point -------------------------------------------------------------

    def _tags(self) -> tuple[int, int]:
        self._round = (self._round + 1) % (1 << 28)
        return 2 * self._round, 2 * self._round + 1

    def _isend(self, pg: Any, dst: int, data: bytes, tags: tuple[int, int]) -> list[Any]:
        torch = self._torch
        framed = len(data).to_bytes(_LENGTH_BYTES, "little") + data
        head = torch.frombuffer(bytearray(framed[:_CHUNK]), dtype=torch.uint8)
        works = [(self._dist.isend(head, self.group.ranks[dst], pg, tags[0]), head)]
        if len(framed) > _CHUNK:  # rare: most messages are a few hundred bytes
            rest = torch.frombuffer(bytearray(framed[_CHUNK:]), dtype=torch.uint8)
            works.append((self._dist.isend(rest, self.group.ranks[dst], pg, tags[1]), rest))
        return works

    def _complete(self, works: list[Any], deadline: float, pg: Any) -> None:
        for work, buffer in works:
            self._wait(work, deadline, buffer, pg)

    def _post(self, pg: Any, src: int, tags: tuple[int, int]) -> tuple[Any, Any, Any]:
        # A buffer as large as any usual message: what a rank sent lands here even if
        # it dies before the coordinator gets round to waiting on it.
        head = self._torch.zeros(_CHUNK, dtype=self._torch.uint8)
        return self._dist.irecv(head, self.group.ranks[src], pg, tags[0]), head, pg

    def _finish_recv(
        self, src: int, posted: tuple[Any, Any, Any], tags: tuple[int, int], deadline: float
    ) -> bytes:
        work, head, pg = posted
        self._wait(work, deadline, head, pg)
        data: bytes = head.numpy().tobytes()
        size = int.from_bytes(data[:_LENGTH_BYTES], "little")
        if size <= 0 or size > (1 << 31):
            raise RuntimeError(f"a message of {size} bytes is not one of ckpt's")
        if size + _LENGTH_BYTES <= _CHUNK:
            return data[_LENGTH_BYTES : _LENGTH_BYTES + size]
        rest = self._torch.empty(size + _LENGTH_BYTES - _CHUNK, dtype=self._torch.uint8)
        work = self._dist.irecv(rest, self.group.ranks[src], pg, tags[1])
        self._wait(work, deadline, rest, pg)
        tail: bytes = rest.numpy().tobytes()
        return data[_LENGTH_BYTES:] + tail

    def _wait(self, work: Any, deadline: float, buffers: Any, pg: Any = None) -> None:
        left = max(deadline - time.monotonic(), 0.001)
        try:
            work.wait(datetime.timedelta(seconds=left))
        except BaseException as exc:
            self._orphans.append((work, buffers))
            if _timed_out(exc):
                self.broken = str(exc).strip().rsplit("] ", 1)[-1][:200]
                self._answers_closed = self._answers_closed or pg is self._answer
            raise

    # --- rounds ---------------------------------------------------------------------

    def gather(self, message: Mapping[str, Any]) -> tuple[list[Any], list[Failure]]:
        """Send ``message`` to the coordinator; there, receive every rank's.

        Returns:
            On the coordinator, each rank's message (``None`` for a rank that failed)
            and the failures (ranks that died, hung past the timeout, or sent garbage).
            On the other ranks, ``([], [])``.

        Raises:
            CollectiveTimeoutError: On a rank other than the coordinator, if the
                coordinator is gone or did not take the message within the timeout.
        """
        group = self.group
        self._check()
        tags = self._tags()
        deadline = time.monotonic() + group.timeout_s
        data = json.dumps(message).encode()
        if not group.coordinator:
            try:
                self._complete(self._isend(self._gather, 0, data, tags), deadline, self._gather)
            except RuntimeError as exc:
                raise self._lost_coordinator(exc) from exc
            return [], []
        messages: list[Any] = [None] * group.size
        messages[0] = message
        failures: list[Failure] = []
        posted: dict[int, tuple[Any, Any, Any]] = {}
        for src in range(1, group.size):
            try:  # a rank that died already fails the posting itself
                posted[src] = self._post(self._gather, src, tags)
            except RuntimeError as exc:
                failures.append(self._failure(src, exc))
        for src, receive in posted.items():
            try:
                messages[src] = json.loads(self._finish_recv(src, receive, tags, deadline))
            except (RuntimeError, ValueError) as exc:
                failures.append(self._failure(src, exc))
        return messages, failures

    def broadcast(self, message: Mapping[str, Any] | None, skip: Sequence[int] = ()) -> Any:
        """Send the coordinator's ``message`` to every rank; elsewhere, receive it.

        ``skip`` names the group ranks that did not answer in time: they learn by their
        own timeout. A send to a rank that died is left, as that rank is past helping.

        Raises:
            CollectiveTimeoutError: On a rank other than the coordinator, if no answer
                came within twice the timeout (the coordinator waits up to the timeout
                for the slowest rank before it answers).
        """
        group = self.group
        if self._answers_closed:
            self._check()
        tags = self._tags()
        deadline = time.monotonic() + group.timeout_s
        if group.coordinator:
            data = json.dumps(message).encode()
            sends = []
            for dst in range(1, group.size):
                if dst not in skip:
                    with contextlib.suppress(RuntimeError):
                        sends.append(self._isend(self._answer, dst, data, tags))
            for works in sends:
                with contextlib.suppress(RuntimeError):  # it died: it is past helping
                    self._complete(works, deadline, self._answer)
            return message
        # The coordinator may itself wait the whole timeout for the slowest rank before
        # it answers: wait for its answer twice as long, so that it names that rank.
        answer_deadline = deadline + group.timeout_s
        try:
            posted = self._post(self._answer, 0, tags)
            return json.loads(self._finish_recv(0, posted, tags, answer_deadline))
        except (RuntimeError, ValueError) as exc:
            raise self._lost_coordinator(exc, 2 * group.timeout_s) from exc

    def _check(self) -> None:
        if self.broken is not None:
            raise CollectiveError(
                f"rank {self.group.ranks[self.group.rank]}: an earlier collective call of "
                f"this manager timed out ({self.broken}), and gloo then closes its "
                f"connections: the ranks can no longer exchange messages; restart the job",
                ranks=(),
            )

    def _failure(self, src: int, exc: BaseException, waited: float | None = None) -> Failure:
        rank = self.group.ranks[src]
        text = str(exc)
        if _timed_out(exc):
            waited = self.group.timeout_s if waited is None else waited
            return Failure(
                rank,
                f"did not answer within {waited:g} s (`collective_timeout_s`)",
                timed_out=True,
                silent=True,
            )
        # gloo's message: "[file:line] Read error [address]: Connection reset by peer. ..."
        first = text.strip().split(". ", 1)[0].rsplit("] ", 1)[-1] or type(exc).__name__
        return Failure(rank, f"is gone ({first[:200]})", timed_out=True)

    def _lost_coordinator(
        self, exc: BaseException, waited: float | None = None
    ) -> CollectiveTimeoutError:
        failure = self._failure(0, exc, waited)
        me = self.group.ranks[self.group.rank]
        return CollectiveTimeoutError(
            f"rank {me}: the coordinator, rank {failure.rank}, {failure.error}",
            ranks=(failure.rank,),
        )


def _timed_out(exc: BaseException) -> bool:
    text = str(exc)
    return "Timed out" in text or "timed out" in text


def failures_error(
    what: str, failures: Sequence[Failure]
) -> CollectiveError | CollectiveTimeoutError:
    """The error every rank raises when ``failures`` happened during ``what``."""
    ranks = tuple(sorted(f.rank for f in failures))
    lines = "; ".join(f"rank {f.rank} {f.error}" for f in sorted(failures, key=lambda f: f.rank))
    cls = CollectiveTimeoutError if all(f.timed_out for f in failures) else CollectiveError
    return cls(f"{what} failed on rank(s) {', '.join(map(str, ranks))}: {lines}", ranks=ranks)


def error_message(error: CollectiveError | CollectiveTimeoutError) -> dict[str, Any]:
    """``error`` as the coordinator broadcasts it."""
    return {
        "error": str(error),
        "ranks": list(error.ranks),
        "timeout": isinstance(error, CollectiveTimeoutError),
    }


def raise_if_error(answer: Any) -> None:
    """Raise the error a broadcast answer carries, as the coordinator raised it."""
    if isinstance(answer, dict) and "error" in answer:
        cls = CollectiveTimeoutError if answer.get("timeout") else CollectiveError
        raise cls(answer["error"], ranks=tuple(answer.get("ranks", ())))
