"""`CheckpointCallback`: the Trainer writes ``checkpoint-N``; ckpt commits, ranks and prunes it."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ckpt import (
    CheckpointConfig,
    CheckpointManager,
    CheckpointRecord,
    LocalStorage,
    MissingMetricWarning,
    RecoveryWarning,
    UnsafeFileError,
)
from ckpt._adapter import given_keys, merge
from policies import metric_value, ranked

logger = logging.getLogger("ckpt.hf")


def _recovered(text: str) -> None:
    """Tell what tidying changed: on the logger, and to a user who configured none."""
    logger.warning("%s", text)
    warnings.warn(text, RecoveryWarning, stacklevel=3)


#: The training-info key naming the Trainer's directory inside a ckpt checkpoint.
DIR_KEY = "hf_checkpoint"
_CHECKPOINT = re.compile(r"checkpoint-(0|[1-9][0-9]*)")
#: The file the Trainer writes last into ``checkpoint-N``: without it the save was cut short.
_WRITTEN_LAST = "trainer_state.json"
#: The callback's own corner of ckpt's bookkeeping directory.
_OWN_DIR = os.path.join(".ckpt", "hf")
#: Names the ``checkpoint-N`` the Trainer may be about to write; written before it starts.
_SAVING = "saving.json"
#: Where a ``checkpoint-N`` that is not ckpt's to delete is moved, out of the Trainer's way.
_SET_ASIDE = "set-aside"


class CheckpointCallback(TrainerCallback):
    """Make every ``checkpoint-N`` of a Hugging Face `Trainer` a committed ckpt checkpoint.

    Add it to the Trainer (``callbacks=[CheckpointCallback(config)]``); the Trainer
    keeps saving when ``save_strategy`` says. Right after each save the callback moves
    ``output_dir/checkpoint-N`` into ckpt's temporary directory (one rename), fsyncs
    every file and publishes it atomically as ``output_dir/step_N/checkpoint-N``, with
    the step's logged metrics as its training info; ckpt's retention then prunes.
    ``state.best_model_checkpoint`` is set to ckpt's best, so ``load_best_model_at_end``
    loads what ckpt kept. Resume with
    ``trainer.train(resume_from_checkpoint=ckpt.hf.latest_checkpoint(output_dir))``.

    The ranking is the Trainer's own ``metric_for_best_model`` (with its ``eval_``
    prefix) and ``greater_is_better`` when they are set; what is kept is the config's
    (``keep_top_k: 3``, a ``retention`` block; unset keeps every checkpoint, as the
    Trainer does without ``save_total_limit``).

    ckpt deletes nothing it did not write. Before each save the Trainer may make, the
    callback records (in ``output_dir/.ckpt/hf/saving.json``, fsynced) which
    ``checkpoint-N`` it is about to write. When training starts, a ``checkpoint-N`` in
    ``output_dir`` whose ``trainer_state.json`` (the file the Trainer writes last) is
    missing, not whole JSON or of another step is incomplete: if the record names it,
    it is the save a crash cut short and is removed; otherwise it is not ckpt's, and is
    moved, whole, to ``output_dir/.ckpt/hf/set-aside/`` with a warning (the Trainer
    would otherwise write into it). One that is complete but was never committed (a
    Trainer's own, from before ckpt) is left where it is, with a warning in the log.

    Args:
        config: The ckpt config (a `ckpt.CheckpointConfig` or a mapping of its keys).
            ``checkpoint_dir`` may be left out: it is the Trainer's ``output_dir``,
            and must be that directory if given.

    Raises:
        ValueError: When the Trainer is built or starts training, if
            ``save_total_limit`` is set (the Trainer would delete checkpoints behind
            ckpt's back), ``save_on_each_node`` is set, the hub's checkpoint strategies
            push a ``checkpoint-N`` this callback moves, or the config disagrees with
            the Trainer's arguments (``checkpoint_dir`` and ``output_dir``,
            ``metric_name`` and ``metric_for_best_model``, ``higher_is_better`` and
            ``greater_is_better``): ``checkpoint_dir`` is the local ``output_dir`` the
            Trainer writes to. Also when training starts under
            ``trainer.hyperparameter_search``, whose trials save elsewhere.
    """

    def __init__(
        self, config: CheckpointConfig | Mapping[str, Any] | BaseModel | None = None
    ) -> None:
        self._given = given_keys(config)
        #: The ckpt config, once the Trainer's arguments are known.
        self.ckpt_config: CheckpointConfig | None = None
        self._manager: CheckpointManager | None = None
        self._storage = LocalStorage()
        #: The step ``saving.json`` names, while it exists.
        self._marked: int | None = None

    @property
    def manager(self) -> CheckpointManager | None:
        """The manager while training runs (``None`` before and after)."""
        return self._manager

    # --- the Trainer's events -------------------------------------------------------

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        """Refuse, when the Trainer is built, arguments that would defeat ckpt."""
        self.ckpt_config = self._config_for(args)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        """Open the directory as its writer and remove saves a crash cut short."""
        if state.is_hyper_param_search:
            raise ValueError(
                "CheckpointCallback: hyperparameter search is not supported: its trials "
                "save under output_dir/run-*, outside the directory ckpt commits"
            )
        self.ckpt_config = self._config_for(args)
        self._close()
        self._manager = CheckpointManager(self.ckpt_config)
        if state.is_world_process_zero:
            self._tidy(_output_dir(args))
        self._sync_best(state)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        """Forget a save the last step announced but did not make (a ``best`` not reached)."""
        if self._marked is not None:
            self._unmark(args)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        """Record the ``checkpoint-N`` the Trainer may write next, before it writes."""
        self._announce(args, state, control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        """As `on_step_end`: an epoch strategy saves after this."""
        self._announce(args, state, control)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        """As `on_step_end`, for a callback that asks for a save when it sees the logs."""
        self._announce(args, state, control)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        """As `on_step_end`, for a callback that asks for a save after an evaluation."""
        self._announce(args, state, control)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        """Commit the ``checkpoint-N`` the Trainer has just written as step N."""
        manager = self._writer()
        step = state.global_step
        name = f"checkpoint-{step}"
        tmp = manager.init_tmp_checkpoint(step, _training_info(state, name))
        written = os.path.join(_output_dir(args), name)
        # Where it will be: the attempt itself, or the step_N it is renamed to.
        committed = tmp if not tmp.name.startswith("tmp_") else tmp.parent / f"step_{step}"
        moved = str(committed / name)
        # A new best of the Trainer's names itself where the Trainer wrote it, in the state
        # and in the trainer_state.json it has just saved from it.
        recorded = state.best_model_checkpoint
        names_itself = recorded is not None and os.path.abspath(recorded) == written
        try:
            if state.is_world_process_zero:  # every rank has written its part by now
                if self._storage.entry(written) is None:
                    raise FileNotFoundError(
                        f"CheckpointCallback: the Trainer saved step {step}, but {written} "
                        "does not exist; a Trainer that saves elsewhere cannot be committed"
                    )
                self._storage.rename(written, str(tmp / name))
                if names_itself:  # as the Trainer spelt it: relative if its output_dir was
                    spelt = moved if os.path.isabs(str(recorded)) else os.path.relpath(moved)
                    self._repoint_best(str(tmp / name / _WRITTEN_LAST), spelt)
        except BaseException:
            manager.abort_checkpoint(tmp)
            raise
        manager.finalize_checkpoint(tmp)
        if self._marked is not None:
            self._unmark(args)
        if names_itself:
            state.best_model_checkpoint = moved  # the Trainer's own choice, where it now is
        self._sync_best(state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        """Close the manager (the directory lock goes with it)."""
        if self._marked is not None:
            self._unmark(args)  # a save announced for the last step that did not happen
        self._close()

    # --- helpers --------------------------------------------------------------------

    def _config_for(self, args: TrainingArguments) -> CheckpointConfig:
        refused = {
            "save_total_limit": args.save_total_limit is not None,
            "save_on_each_node": bool(args.save_on_each_node),
            "hub_strategy": bool(args.push_to_hub)
            and _strategy(args.hub_strategy) in ("checkpoint", "all_checkpoints"),
        }
        why = {
            "save_total_limit": "the Trainer would delete checkpoints behind ckpt's back; "
            "say what to keep in the ckpt config instead (`keep_top_k`, or a `retention` "
            "block such as {kind: latest_n, n: 3})",
            "save_on_each_node": "ckpt commits one shared directory; every node must see "
            "output_dir",
            "hub_strategy": "the hub would upload checkpoint-N while ckpt moves it; use "
            "hub_strategy='every_save' or 'end'",
        }
        for field, bad in refused.items():
            if bad:
                raise ValueError(
                    f"CheckpointCallback: `{field}`={getattr(args, field)!r} is refused: "
                    f"{why[field]}"
                )
        output_dir = _output_dir(args)
        derived: dict[str, tuple[str, Any, Any]] = {
            "checkpoint_dir": ("output_dir", output_dir, output_dir)
        }
        if args.metric_for_best_model is not None:
            metric = str(args.metric_for_best_model)
            name = metric if metric.startswith("eval_") else f"eval_{metric}"
            derived["metric_name"] = ("metric_for_best_model", metric, name)
            if args.greater_is_better is not None:
                better = bool(args.greater_is_better)
                derived["higher_is_better"] = ("greater_is_better", better, better)
        return CheckpointConfig.model_validate(merge("CheckpointCallback", self._given, derived))

    def _writer(self) -> CheckpointManager:
        if self._manager is None:
            raise RuntimeError("CheckpointCallback: a save outside trainer.train(), no writer open")

        return self._manager

    def _own_dir(self, output_dir: str, *below: str) -> str:
        """``output_dir/.ckpt/hf`` (and ``below`` it), made where missing.

        Every level is checked, not only the last: a link at ``.ckpt``, ``.ckpt/hf`` or
        ``set-aside`` would send the records, or the checkpoints set aside, out of
        ``output_dir``.

        Raises:
            UnsafeFileError: Naming the first level that is not a plain directory.
        """
        self._storage.make_dirs(output_dir)
        path = output_dir
        for part in (*_OWN_DIR.split(os.sep), *below):
            path = os.path.join(path, part)
            found = self._storage.entry(path)
            if found is None:
                self._storage.make_dir(path)
                found = self._storage.entry(path)
            if found is None or found.kind != "dir":
                raise UnsafeFileError(
                    f"CheckpointCallback: {path} is not a directory (a link, or a file), "
                    "where the callback keeps its records; nothing was moved: move it away"
                )
        return path

    def _announce(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl
    ) -> None:
        """Write ``saving.json`` naming ``checkpoint-N`` if the Trainer may save step N now."""
        step = state.global_step
        # The `best` strategy decides to save after evaluating, with no event in between.
        may_save = control.should_save or (
            control.should_evaluate and _strategy(args.save_strategy) == "best"
        )
        if not may_save or self._marked == step or not state.is_world_process_zero:
            return
        record = json.dumps({"checkpoint": f"checkpoint-{step}"}).encode()
        self._storage.replace_file(
            os.path.join(self._own_dir(_output_dir(args)), _SAVING), record, durable=True
        )
        self._marked = step

    def _unmark(self, args: TrainingArguments) -> None:
        self._marked = None
        path = os.path.join(_output_dir(args), _OWN_DIR, _SAVING)
        if self._storage.entry(path) is not None:
            self._storage.remove_file(path)

    def _announced(self, output_dir: str) -> str | None:
        """The ``checkpoint-N`` the last run's ``saving.json`` names, if it names one."""
        for level in (_layout_meta(output_dir), os.path.join(output_dir, _OWN_DIR)):
            own = self._storage.entry(level)
            if own is None or own.kind != "dir":
                return None  # never a record read through a link
        path = os.path.join(output_dir, _OWN_DIR, _SAVING)
        found = self._storage.entry(path)
        if found is None or found.kind != "file":
            return None
        try:
            name = json.loads(self._storage.read_bytes(path)).get("checkpoint")
        except (OSError, ValueError, AttributeError):
            return None  # torn by a crash while written: it names nothing
        return name if isinstance(name, str) and _CHECKPOINT.fullmatch(name) else None

    def _tidy(self, output_dir: str) -> None:
        """Remove the save a crash cut short; move other incomplete ones aside; warn of all."""
        announced = self._announced(output_dir)
        for entry in self._storage.list_dir(output_dir):
            match = _CHECKPOINT.fullmatch(entry.name)
            if entry.kind != "dir" or match is None:
                continue
            path = os.path.join(output_dir, entry.name)
            if self._complete(path, int(match.group(1))):
                logger.warning(
                    "%s was never committed by ckpt (written without this callback, or a "
                    "crash came right after the Trainer wrote it): latest_checkpoint() "
                    "ignores it, and a save of the same step replaces it",
                    path,
                )
            elif entry.name == announced:
                self._storage.remove_tree(path)
                _recovered(f"removed {path}: a save interrupted before it was complete")
            else:
                aside = self._set_aside(output_dir, entry.name)
                _recovered(
                    f"moved {path} to {aside}: it is incomplete (no whole {_WRITTEN_LAST} of "
                    f"its step) and ckpt did not write it, so it is not ckpt's to delete, and "
                    f"the Trainer would write into it",
                )
        if announced is not None:
            self._storage.remove_file(os.path.join(output_dir, _OWN_DIR, _SAVING))

    def _set_aside(self, output_dir: str, name: str) -> str:
        """Move ``output_dir/name`` under ``.ckpt/hf/set-aside/`` (a fresh name); say where."""
        aside = self._own_dir(output_dir, _SET_ASIDE)
        taken = {e.name for e in self._storage.list_dir(aside)}
        target, n = name, 1
        while target in taken:  # an earlier run set aside one of the same name
            target, n = f"{name}.{n}", n + 1
        self._storage.rename(os.path.join(output_dir, name), os.path.join(aside, target))
        return os.path.join(aside, target)

    def _complete(self, path: str, step: int) -> bool:
        """Whether the Trainer finished ``path``: its last file is whole and names ``step``."""
        state = os.path.join(path, _WRITTEN_LAST)
        if self._storage.entry(state) is None:
            return False
        try:
            written = json.loads(self._storage.read_bytes(state))
        except (OSError, ValueError):
            return False
        return isinstance(written, dict) and written.get("global_step") == step

    def _repoint_best(self, path: str, best: str) -> None:
        """Set ``best_model_checkpoint`` in the ``trainer_state.json`` at ``path`` to ``best``.

        So that a Trainer resuming from the checkpoint finds its best (it forgets one
        whose directory is gone). The file is rewritten as the Trainer writes it.
        """
        written = json.loads(self._storage.read_bytes(path))
        written["best_model_checkpoint"] = best
        text = json.dumps(written, indent=2, sort_keys=True) + "\n"
        self._storage.replace_file(path, text.encode(), durable=False)  # the commit fsyncs

    def _sync_best(self, state: TrainerState) -> None:
        """Point the Trainer's best checkpoint at ckpt's (every rank gets rank 0's answer)."""
        manager = self._writer()
        name = getattr(manager.ranking, "name", None)
        if name is None:
            return  # ranked by recency: the Trainer tracks no best either
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingMetricWarning)  # steps without evaluation
            best = manager.get_best_checkpoint_path()
        if best is None:
            return
        info = manager.load_training_info(best) or {}
        value = metric_value(info, name)
        trainer_dir = _trainer_dir(info)
        if value is None or trainer_dir is None:
            return  # not the Trainer's (a crafted name must not point the Trainer elsewhere)
        state.best_model_checkpoint = os.path.join(str(best), trainer_dir)
        state.best_metric = value
        state.best_global_step = int(info.get("step", 0))

    def _close(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.close()


def _strategy(value: object) -> str:
    """A Trainer strategy's name, whether an enum (``SaveStrategy.BEST``) or a string."""
    return str(getattr(value, "value", value))


def _layout_meta(output_dir: str) -> str:
    """``output_dir/.ckpt``: the first level of the callback's own directory."""
    return os.path.join(output_dir, _OWN_DIR.split(os.sep)[0])


def _output_dir(args: TrainingArguments) -> str:
    if args.output_dir is None:
        raise ValueError("CheckpointCallback: the Trainer's `output_dir` is None; set it")
    return os.path.abspath(args.output_dir)


def _training_info(state: TrainerState, name: str) -> dict[str, Any]:
    """What the Trainer logged at this step (losses, evaluation metrics), and the epoch."""
    step = state.global_step
    info: dict[str, Any] = {}
    for entry in state.log_history:
        if entry.get("step") != step:
            continue
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            info[key] = None if isinstance(value, float) and math.isnan(value) else value
    info["step"] = step
    if state.epoch is not None:
        info["epoch"] = float(state.epoch)
    info[DIR_KEY] = name
    return info


def _trainer_dir(info: Mapping[str, Any]) -> str | None:
    """The ``checkpoint-N`` a checkpoint's training info names, if it names one."""
    name = info.get(DIR_KEY)
    return name if isinstance(name, str) and _CHECKPOINT.fullmatch(name) else None


def _reader(output_dir: str | os.PathLike[str]) -> CheckpointManager:
    """A manager that only reads, ranking as the run recorded (no lock, no recovery)."""
    config: dict[str, Any] = {"checkpoint_dir": os.path.abspath(output_dir)}
    with CheckpointManager(config, read_only=True, process_group=False) as probe:
        recorded = probe.recorded_ranking() or {}
    if recorded.get("metric_name") is not None:
        config["metric_name"] = recorded["metric_name"]
        config["higher_is_better"] = bool(recorded.get("higher_is_better", True))
    return CheckpointManager(config, read_only=True, process_group=False)


def _committed_by_callback(reader: CheckpointManager) -> list[CheckpointRecord]:
    """The checkpoints holding a ``checkpoint-N`` of the Trainer's, by step.

    A checkpoint a deep check found damaged (``ckpt check --deep``) is left out: it is
    never the latest or the best to resume from.
    """
    return [
        r for r in reader.list_checkpoints() if _trainer_dir(r.info) is not None and not r.damaged
    ]


def _trainer_path(record: CheckpointRecord | None) -> str | None:
    name = None if record is None else _trainer_dir(record.info)
    return None if record is None or name is None else str(record.path / name)


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest committed ``checkpoint-N``, for ``trainer.train(resume_from_checkpoint=...)``.

    Unlike ``transformers.trainer_utils.get_last_checkpoint``, it never returns a save
    a crash cut short: only what `CheckpointCallback` committed counts. It reads the
    directory and changes nothing (no lock, no recovery), so every rank of a
    distributed job may call it before training starts.

    Args:
        output_dir: The Trainer's ``output_dir`` (the callback's ``checkpoint_dir``).

    Returns:
        ``output_dir/step_N/checkpoint-N`` of the highest committed step, or ``None``
        if there is none (a fresh run: pass ``None`` to start from scratch).
    """
    with _reader(output_dir) as reader:
        ours = _committed_by_callback(reader)
        return _trainer_path(ours[-1] if ours else None)


def best_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The best committed ``checkpoint-N`` by the run's own ranking, like `latest_checkpoint`.

    The ranking is the one the run recorded (``metric_for_best_model`` and
    ``greater_is_better``, or the config's ``metric_name``); a run without a metric
    ranks by recency, so this is then the latest.

    Args:
        output_dir: The Trainer's ``output_dir`` (the callback's ``checkpoint_dir``).

    Returns:
        ``output_dir/step_N/checkpoint-N`` of the best committed step, or ``None``.

    Warns:
        ckpt.MissingMetricWarning: If some checkpoints lack the metric (they rank last).
    """
    with _reader(output_dir) as reader:
        best_first = ranked(reader.ranking, _committed_by_callback(reader))
        return _trainer_path(best_first[0] if best_first else None)
