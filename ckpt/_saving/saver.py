"""One save, read top to bottom, the same for one process and many.

`Saver.save` is the whole sequence: start the attempt, write this process's part of
the state, check what every process reported, commit, apply retention. Each step that
only the directory's writer takes runs in a `Coordinator` round, so a process alone
and a rank of a torch.distributed job run the same lines: alone, a round just calls.
`save_async` runs the same `save` on its background thread, from a snapshot.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ckpt._collective.coordinator import Coordinator, Local
from ckpt._config.serialize import encode_run_config, encode_training_info
from ckpt._directory.directory import Directory
from ckpt._errors import CheckpointError, CollectiveError
from ckpt._saving.background import AsyncWriter
from ckpt._saving.finalize import Finalizer
from ckpt.handler import StateHandler, WrittenFile
from ckpt.storage import name_of

_NO_STATE = object()


@dataclass(frozen=True)
class Prepared:
    """What a process made of a save's arguments before the first round.

    Attributes:
        info: The encoded training info (empty where ``error`` is set).
        config: The encoded run config, if any.
        error: Why this process cannot take part (an unstorable value, a bad state).
        sharded: Whether the state is sharded (every rank writes a share of one).
        plan: The handler's plan of the state, made by checking it, so the write does
            not plan it again (``None``: plan what is written).
    """

    info: bytes
    config: bytes | None
    error: Exception | None = None
    sharded: bool = False
    plan: Any = None

    def unplanned(self) -> Prepared:
        """The same, for other values than those planned (a snapshot of them)."""
        return replace(self, plan=None)


def prepare(
    training_info: Mapping[str, Any],
    run_config: Any,
    state: Any = _NO_STATE,
    handler: StateHandler | None = None,
) -> Prepared:
    """Encode the info and config and check ``state``, keeping this process's error.

    Nothing is raised here: the error goes into the first round, so that every rank
    of a job raises it (alone, the round raises it as it is).
    """
    try:
        info = encode_training_info(training_info)
        config = encode_run_config(run_config) if run_config is not None else None
        if state is _NO_STATE or handler is None:
            return Prepared(info, config)
        if handler.is_sharded(state):
            return Prepared(info, config, sharded=True)
        return Prepared(info, config, plan=handler.plan(state))
    except Exception as exc:
        return Prepared(b"", None, error=exc)


def default_handler() -> StateHandler:
    """``ckpt.torch.TorchHandler``, with a message naming the extra without torch."""
    try:
        import torch  # noqa: F401, PLC0415 - torch is an optional extra
    except ImportError as exc:
        raise ImportError(
            "saving model state needs torch: pip install -e '.[torch]' in ckpt's clone"
        ) from exc
    from ckpt.torch import TorchHandler  # noqa: PLC0415 - imports torch

    handler: StateHandler = TorchHandler()
    return handler


def _files(message: Mapping[str, Any]) -> list[WrittenFile]:
    return [WrittenFile(*part) for part in message.get("parts", ())]


class Saver:
    """The saves of one manager: its directory, how its processes agree, its threads.

    Args:
        directory: The directory saves go to.
        coordinator: How this manager's processes agree.
        name: The directory's name, for the background threads' names.
        max_pending_saves: How many `save_async` snapshots may wait to be written.
    """

    def __init__(
        self, directory: Directory, coordinator: Coordinator, name: str, max_pending_saves: int
    ) -> None:
        self.directory = directory
        self.coordinator = coordinator
        self._name = name
        self._max_pending = max_pending_saves
        self._async: AsyncWriter | None = None
        self._finalizer: Finalizer | None = None

    # --- the background threads ---------------------------------------------------------

    @property
    def finalizing(self) -> bool:
        """Whether a `begin_finalization` is still waiting or committing."""
        return self._finalizer is not None and self._finalizer.pending

    def finalize_pending(self) -> None:
        """Block until the finalization in flight is committed; raise its error once."""
        if self._finalizer is not None:
            self._finalizer.wait()

    def shutdown(self) -> None:
        """Block until the finalization in flight is committed and pruned."""
        if self._finalizer is not None:
            self._finalizer.shutdown()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every `save_async` is committed; raise the first error once.

        Returns whether they were (``False``: ``timeout`` seconds passed first).
        """
        return self._async is None or self._async.wait(timeout)

    def flush(self, timeout: float, *, raise_errors: bool = True) -> bool:
        """Wait up to ``timeout`` seconds for every background save and finalization.

        Returns whether all were done in time. With ``raise_errors``, a background
        error not raised yet is raised (as `wait` and `finalize_pending` do); without,
        it is left for the loop's next call.
        """
        deadline = time.monotonic() + timeout
        finalizer = self._finalizer
        if finalizer is not None:
            finalizer.join(timeout)
            if finalizer.pending:
                return False
            if raise_errors:
                finalizer.wait()
        if self._async is None:
            return True
        left = max(0.0, deadline - time.monotonic())
        return self._async.wait(left) if raise_errors else self._async.drain(left)

    def keep_newest(self) -> tuple[int, ...]:
        """Drop the `save_async` snapshots still queued but the newest; the dropped steps.

        A process alone only: the ranks of a job write each save together, so none may
        drop one the others write.
        """
        if self._async is None or not isinstance(self.coordinator, Local):
            return ()
        return self._async.keep_newest()

    @property
    def newest_async(self) -> int | None:
        """The step of the newest `save_async` not written yet, or ``None``."""
        return None if self._async is None else self._async.newest

    @property
    def committed_async(self) -> int | None:
        """The step of the newest `save_async` committed, or ``None``."""
        return None if self._async is None else self._async.committed

    def close(self) -> None:
        """`shutdown`, then finish every `save_async` and stop its thread."""
        try:
            self.shutdown()
        finally:
            if self._async is not None:
                self._async.stop()

    def begin_finalization(self, tmp: str, step: int, wait_fn: Callable[[], object] | None) -> None:
        """Commit ``tmp`` in the background once every process's ``wait_fn`` returned.

        If a ``wait_fn`` failed anywhere, the attempt is removed and nothing commits.
        Retention then runs on the finalizer's pruning thread (on the writer only).

        Raises:
            FinalizationError: The previous finalization failed; this one is not begun.
        """
        directory = self.directory
        shared = directory.shared
        finalizer = self._finalizer
        if finalizer is None:
            finalizer = self._finalizer = Finalizer(f"ckpt {self._name}")
        finalizer.wait()
        with shared.mutex:
            shared.saving[step] += 1
            shared.finalizing[step] = finalizer
        coordinator = self.coordinator.on("finalize")  # made here: every rank's caller makes it

        def act(_: list[Any]) -> dict[str, Any]:
            with shared.mutex:
                directory.commit(tmp, step)
                directory.retention.forget_frontier()  # retention decides over all, below
            return {}

        def commit() -> None:
            try:
                error = None
                try:
                    if wait_fn is not None:
                        wait_fn()
                except Exception as exc:  # this process's writes failed: nothing commits
                    error = exc
                call = f"begin_finalization({name_of(tmp)})"
                coordinator.round(call, {}, error, act, undo=self._undo(tmp, step))
            except BaseException:
                directory.forget(step)  # not ours to keep: a joining manager may clean it
                raise
            finally:
                with shared.mutex:
                    shared.saving[step] -= 1
                    shared.finalizing.pop(step, None)

        def prune() -> None:
            if not directory.reader:  # the writer prunes
                directory.prune_all()

        finalizer.begin(str(tmp), commit, prune)

    def save_async(self, step: int, prepared: Prepared, state: Any, handler: StateHandler) -> None:
        """Snapshot ``state`` now; `save` it on the background thread, in submission order.

        A process's error in ``prepared`` is raised on every process now, before anything
        is queued.
        """
        self.coordinator.round(f"save_async(step={step})", {}, prepared.error, lambda _: {})
        prepared = prepared.unplanned()  # the snapshot holds other tensors: planned when written
        if self._async is None:
            self._async = AsyncWriter(f"ckpt-save {self._name}", self._max_pending)
        coordinator = self.coordinator.on("async")  # made here: every rank's caller makes it
        shared = self.directory.shared

        def write(snapshot: Any) -> None:
            try:
                self.save(coordinator, step, prepared, snapshot, handler)
            finally:
                skip()

        def skip() -> None:
            with shared.mutex:
                shared.saving[step] -= 1

        with shared.mutex:
            shared.saving[step] += 1
        try:
            self._async.submit(step, state, handler.snapshot, write, skip)
        except BaseException:
            with shared.mutex:
                shared.saving[step] -= 1
            raise

    # --- one save -----------------------------------------------------------------------

    def start(self, step: int, prepared: Prepared, writers: tuple[str, ...] = ()) -> str:
        """`CheckpointManager.init_tmp_checkpoint`: one attempt, the same on every process."""

        def act(_: list[Any]) -> dict[str, Any]:
            return {"path": self.directory.start(step, prepared.info, prepared.config, writers)}

        call = f"init_tmp_checkpoint(step={step})"
        return str(self.coordinator.round(call, {}, prepared.error, act)["path"])

    def end(self, tmp: str, step: int, *, commit: bool) -> str | None:
        """Finalize (``commit``) or abort an attempt: committed only if every process finalizes.

        Returns the committed location, or ``None`` where it was aborted.

        Raises:
            CollectiveError: On a rank that finalized, if another rank aborted.
        """
        coordinator, directory, name = self.coordinator, self.directory, name_of(tmp)

        def act(messages: list[Any]) -> dict[str, Any]:
            aborted = [src for src, message in enumerate(messages) if not message["commit"]]
            if aborted:
                directory.abort(tmp, step)
                return {"aborted": [coordinator.rank_of(src) for src in aborted]}
            return {"path": directory.finalize(tmp, step)}

        undo = self._undo(tmp, step)
        call = f"finalize or abort {name}"
        answer = coordinator.round(call, {"commit": commit}, None, act, undo=undo)
        if "aborted" not in answer:
            return str(answer["path"])
        if commit:
            ranks = tuple(answer["aborted"])
            raise CollectiveError(
                f"rank(s) {', '.join(map(str, ranks))} aborted {name}, so no rank "
                f"committed it (rank {coordinator.me} finalized it)",
                ranks=ranks,
            )
        return None

    def _undo(self, tmp: str, step: int) -> Callable[[], None]:
        """Remove the attempt ``tmp`` (a process failed: nothing may stay half-saved)."""
        return lambda: self.directory.abort(tmp, step)

    def save(
        self,
        coordinator: Coordinator,
        step: int,
        prepared: Prepared,
        state: Any,
        handler: StateHandler,
    ) -> str:
        """Save ``state`` as ``step``: every process writes its part, the writer commits.

        ``coordinator`` is the saver's own, or its channel for the background thread.
        A ``prepared.error`` (a process could not encode the info or check its state)
        fails the save everywhere, naming it. Returns the committed location.
        """
        directory, call = self.directory, f"save(step={step})"
        lock = directory.shared.save_lock if coordinator.coordinator else contextlib.nullcontext()
        with lock:

            def start(messages: list[Any]) -> dict[str, Any]:
                sharded = [src for src, message in enumerate(messages) if message["sharded"]]
                if sharded and len(sharded) != len(messages):
                    ranks = ", ".join(str(coordinator.rank_of(src)) for src in sharded)
                    raise CheckpointError(
                        f"rank(s) {ranks} passed state holding DTensors "
                        f"and the others did not: every rank saves the same kind of state"
                    )
                return {"path": directory.start(step, prepared.info, prepared.config)}

            local = {"sharded": prepared.sharded}
            tmp = coordinator.round(call, local, prepared.error, start)["path"]
            written: list[list[Any]] = []
            error = None
            try:
                files = handler.write_part(
                    directory.storage,
                    tmp,
                    state,
                    prepared.plan,
                    coordinator.part,
                    fsync=directory.place.durable,
                )
                written = [[file.name, file.size, file.exact, file.digest] for file in files]
            except Exception as exc:
                error = exc
            except BaseException:  # interrupted: nothing may stay half-saved
                if coordinator.coordinator:
                    directory.abort(tmp, step)
                raise

            def commit(messages: list[Any]) -> dict[str, Any]:
                try:
                    parts = [
                        (coordinator.rank_of(src), _files(m)) for src, m in enumerate(messages)
                    ]
                    directory.check_parts(tmp, parts)
                    digests = {f.name: f.digest for _, fs in parts for f in fs if f.digest}
                    return {"path": directory.finalize(tmp, step, digests)}
                except BaseException:
                    directory.abort(tmp, step)
                    raise

            undo = self._undo(tmp, step)
            answer = coordinator.round(call, {"parts": written}, error, commit, undo=undo)
        return str(answer["path"])
