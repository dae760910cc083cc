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
)
from ckpt._adapter import given_keys, merge
from policies import metric_value

logger = logging.getLogger("ckpt.hf")

#: The training-info key naming the Trainer's directory inside a ckpt checkpoint.
DIR_KEY = "hf_checkpoint"
_CHECKPOINT = re.compile(r"checkpoint-(0|[1-9][0-9]*)")
#: The file the Trainer writes last into ``checkpoint-N``: without it the save was cut short.
_WRITTEN_LAST = "trainer_state.json"


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

    When training starts, a ``checkpoint-N`` in ``output_dir`` whose
    ``trainer_state.json`` (the file the Trainer writes last) is missing, not whole JSON
    or of another step is a save a crash cut short: it is removed. One that is complete
    but was never committed (a Trainer's own, from before ckpt) is left alone, with a
    warning in the log.

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
        if names_itself:
            state.best_model_checkpoint = moved  # the Trainer's own choice, where it now is
        self._sync_best(state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        """Close the manager (the directory lock goes with it)."""
        self._close()

    # --- helpers --------------------------------------------------------------------

    def _config_for(self, args: TrainingArguments) -> CheckpointConfig:
        refused = {
            "save_total_limit": args.save_total_limit is not None,
            "save_on_each_node": bool(args.save_on_each_node),
            "hub_strategy": bool(args.push_to_hub)
            and str(getattr(args.hub_strategy, "value", args.hub_strategy))
            in ("checkpoint", "all_checkpoints"),
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

    def _tidy(self, output_dir: str) -> None:
        """Remove the ``checkpoint-N`` saves a crash cut short; warn of uncommitted others."""
        for entry in self._storage.list_dir(output_dir):
            match = _CHECKPOINT.fullmatch(entry.name)
            if entry.kind != "dir" or match is None:
                continue
            path = os.path.join(output_dir, entry.name)
            if not self._complete(path, int(match.group(1))):
                logger.warning("removing %s: a save interrupted before it was complete", path)
                self._storage.remove_tree(path)
            else:
                logger.warning(
                    "%s was never committed by ckpt (written without this callback, or a "
                    "crash came right after the Trainer wrote it): latest_checkpoint() "
                    "ignores it, and a save of the same step replaces it",
                    path,
                )

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
        state.best_model_checkpoint = os.path.join(best, trainer_dir)
        state.best_metric = value
        state.best_global_step = int(info.get("step", 0))

    def _close(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.close()


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
    """The checkpoints holding a ``checkpoint-N`` of the Trainer's, by step."""
    return [r for r in reader.list_checkpoints() if _trainer_dir(r.info) is not None]


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
        ranked = reader.ranking.rank(_committed_by_callback(reader))
        return _trainer_path(ranked[0] if ranked else None)  # type: ignore[arg-type]
