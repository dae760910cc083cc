"""`ModelCheckpoint`: Lightning decides when to save and writes; ckpt commits and keeps."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from weakref import proxy

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from pydantic import BaseModel

from ckpt import CheckpointConfig, CheckpointManager, CheckpointRecord
from ckpt._adapter import RETENTION_KEYS, given_keys, merge
from policies import CheckpointView, decide, metric_value, ranked

#: The training-info key naming Lightning's file inside a checkpoint's directory.
FILE_KEY = "lightning_file"


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's `ModelCheckpoint`, with ckpt committing, ranking and pruning.

    A drop-in replacement: change the import, keep the arguments. Lightning still
    decides *when* to save (``every_n_train_steps``, ``every_n_epochs``,
    ``train_time_interval``, ``save_on_train_epoch_end``, deferring to validation when
    the monitored metric comes from it) and writes its own file through
    ``trainer.save_checkpoint``; ckpt decides *what is kept*. Each save is one ckpt
    checkpoint at step ``trainer.global_step``: the file is written into ckpt's
    temporary directory, fsynced and published atomically as
    ``dirpath/step_N/<filename>.ckpt``, and only then does retention prune.

    What is kept, from Lightning's arguments (``config=`` may give any other policy):

    - ``monitor`` and ``save_top_k=k``: the k best by the metric (``mode``), plus the
      latest with ``save_last=True``; ``save_top_k=-1`` keeps every checkpoint.
    - no ``monitor``: ``save_top_k=1`` keeps the latest, ``-1`` keeps all.
    - ``save_top_k=0``: nothing, or only the latest with ``save_last=True``.

    A save the retention would prune at once is not written at all (Lightning's
    top-k check, made by the run's own ranking). ``best_model_path``,
    ``best_model_score``, ``best_k_models``, ``kth_best_model_path`` and
    ``last_model_path`` are read from the directory when the callback is built (given
    ``dirpath``), at every ``setup`` and after every save, never from the callback
    state saved in a checkpoint, so they stay right across restarts. ``last_model_path``
    is the latest checkpoint whether or not ``save_last`` is set, so
    ``trainer.fit(ckpt_path="last")`` resumes from the newest complete checkpoint and
    ``ckpt_path="best"`` from the best one. Under DDP every decision is taken on rank 0
    and broadcast, and the manager is collective (see the Multi-process page).

    Args:
        dirpath: The checkpoint directory (ckpt's ``checkpoint_dir``; a local path or
            an fsspec URL). ``None``: as in Lightning, the first logger's
            ``<save_dir>/<name>/<version>/checkpoints``, else
            ``<default_root_dir>/checkpoints``.
        filename: The template of Lightning's file name, as in Lightning (default
            ``"{epoch}-{step}"``).
        monitor: The logged metric ranking checkpoints (ckpt's ``metric_name``).
        verbose: Log each save and skip.
        save_last: Also keep the latest checkpoint (``True``). ``"link"`` is refused:
            the latest checkpoint is always known, there is nothing to link.
        save_top_k: How many of the best to keep (see above).
        save_weights_only: Passed to ``trainer.save_checkpoint``.
        mode: ``"min"`` or ``"max"``: the direction of ``monitor``.
        auto_insert_metric_name: As in Lightning, for ``filename``.
        every_n_train_steps: Save every this many optimizer steps.
        train_time_interval: Save at most this often.
        every_n_epochs: Save every this many epochs.
        save_on_train_epoch_end: As in Lightning.
        config: Any other ckpt configuration (a `ckpt.CheckpointConfig`, a mapping of
            its keys, without ``checkpoint_dir`` if ``dirpath`` is given): ``fsync``,
            ``commit_protocol``, ``storage_options``, ``collective_timeout_s``, or a
            ``retention`` block, which replaces ``save_top_k``/``save_last``.

    Raises:
        ValueError: If an argument and ``config`` disagree (``dirpath`` and
            ``checkpoint_dir``, ``monitor`` and ``metric_name``, ``mode`` and
            ``higher_is_better``, ``save_top_k``/``save_last`` and a retention key), or
            ``save_last="link"``.
        lightning.pytorch.utilities.exceptions.MisconfigurationException: For the
            arguments Lightning itself refuses.
        pydantic.ValidationError: If the resulting ckpt config is invalid.
    """

    def __init__(  # noqa: PLR0917 - Lightning's positional order, kept for drop-in use
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | None = None,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        *,
        config: CheckpointConfig | Mapping[str, Any] | BaseModel | None = None,
    ) -> None:
        if save_last not in (None, True, False):
            raise ValueError(
                f"ModelCheckpoint: `save_last` must be True, False or None, got {save_last!r}; "
                "ckpt always knows the latest checkpoint, so there is no last.ckpt to link"
            )
        self._given = given_keys(config)
        self._retention_given = any(self._given.get(key) is not None for key in RETENTION_KEYS)
        if self._retention_given and (save_top_k != 1 or save_last is not None):
            raise ValueError(
                f"ModelCheckpoint: `save_top_k`={save_top_k!r}/`save_last`={save_last!r} and "
                "the config's retention both say what to keep; give one of them"
            )
        if monitor is None and self._given.get("metric_name") is not None:
            monitor = str(self._given["metric_name"])  # its direction is the config's too
            mode = "max" if self._given.get("higher_is_better", True) else "min"
        if dirpath is None and self._given.get("checkpoint_dir") is not None:
            dirpath = self._given["checkpoint_dir"]
        super().__init__(
            dirpath=None if dirpath is None else os.fspath(dirpath),
            filename=filename,
            monitor=monitor,
            verbose=verbose,
            save_last=save_last,
            save_top_k=save_top_k,
            save_weights_only=save_weights_only,
            mode=mode,
            auto_insert_metric_name=auto_insert_metric_name,
            every_n_train_steps=every_n_train_steps,
            train_time_interval=train_time_interval,
            every_n_epochs=every_n_epochs,
            save_on_train_epoch_end=save_on_train_epoch_end,
            enable_version_counter=False,  # one checkpoint per step: nothing to version
        )
        self._manager: CheckpointManager | None = None
        self._warned_missing = False
        #: The ckpt config the arguments make (``None`` until ``dirpath`` is known).
        self.ckpt_config: CheckpointConfig | None = None
        if self.dirpath is not None:
            self.ckpt_config = self._config_for(self.dirpath)  # bad arguments fail here
            self._apply(_read_view(self, self.ckpt_config))

    # --- configuration -------------------------------------------------------------

    def _retention(self) -> dict[str, Any]:
        k, last = self.save_top_k, bool(self.save_last)
        if k == -1:
            return {"kind": "keep_all"}
        if k == 0 or self.monitor is None:  # Lightning allows only 1 here without a monitor
            return {"kind": "latest_n", "n": 1}
        return {"kind": "hybrid" if last else "top_k", "k": k}

    def _config_for(self, dirpath: str | os.PathLike[str]) -> CheckpointConfig:
        path = os.fspath(dirpath)
        derived: dict[str, tuple[str, Any, Any]] = {"checkpoint_dir": ("dirpath", path, path)}
        if self.monitor is not None:
            derived["metric_name"] = ("monitor", self.monitor, self.monitor)
            derived["higher_is_better"] = ("mode", self.mode, self.mode == "max")
        merged = merge("ModelCheckpoint", self._given, derived)
        if not self._retention_given:
            merged["retention"] = self._retention()
        return CheckpointConfig.model_validate(merged)

    @property
    def saves(self) -> bool:
        """Whether this callback saves at all (``save_top_k=0`` without ``save_last`` does not)."""
        return self._retention_given or self.save_top_k != 0 or bool(self.save_last)

    # --- Lightning's hooks ------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Open the directory: a writer when fitting, a reader otherwise."""
        dirpath = self.dirpath if self.dirpath is not None else _default_dirpath(trainer)
        dirpath = trainer.strategy.broadcast(dirpath)
        self.dirpath = dirpath
        self._fs = get_filesystem(dirpath)
        self.ckpt_config = self._config_for(dirpath)
        self._close()
        self._manager = CheckpointManager(self.ckpt_config, read_only=stage != "fit")
        self._refresh(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Close the manager; ``best_model_path`` and the others keep their values."""
        self._close()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Close the manager: a save in flight was aborted or never committed."""
        self._close()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Ignore the saved state: the directory is the truth, read at ``setup``."""

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        # What `fit(ckpt_path="last")` resumes from, asked before `setup` on every rank.
        dirpath = self.dirpath if self.dirpath is not None else _default_dirpath(trainer)
        view = _read_view(self, self._config_for(dirpath))
        return {view["last"]} if view["last"] else set()

    # Lightning's save points call these two in turn; in ckpt one save point is one
    # checkpoint at `global_step`, which retention keeps as a top-k member, the latest, or
    # both.
    def _save_topk_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self.saves:
            self._save(trainer, monitor_candidates, latest=False)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self.save_last:
            self._save(trainer, monitor_candidates, latest=True)

    # --- saving -------------------------------------------------------------------------

    def _save(self, trainer: Trainer, candidates: dict[str, Any], *, latest: bool) -> None:
        step = trainer.global_step
        if self._last_global_step_saved == step and self._last_checkpoint_saved:
            return  # saved at this step already, as a top-k member or the latest
        manager = self._writer()
        self._check_monitor(trainer, candidates)
        plan = self._plan(trainer, manager, step, candidates, latest=latest)
        if plan is None:
            return
        name, info = plan
        tmp = manager.init_tmp_checkpoint(step, info)
        try:
            trainer.save_checkpoint(str(tmp / name), self.save_weights_only)
        except BaseException:
            manager.abort_checkpoint(tmp)
            raise
        manager.finalize_checkpoint(tmp)
        self._last_global_step_saved = step
        if self.monitor is not None:
            self.current_score = candidates.get(self.monitor)
        self._refresh(trainer)
        self._last_checkpoint_saved = self.last_model_path
        if self.verbose:
            rank_zero_info(f"step {step}: committed {self.last_model_path!r}")
        if trainer.is_global_zero:
            for each in trainer.loggers:
                each.after_save_checkpoint(proxy(self))

    def _writer(self) -> CheckpointManager:
        if self._manager is None or self._manager.read_only:
            raise RuntimeError("ModelCheckpoint: saving outside `trainer.fit` (no writer open)")
        return self._manager

    def _check_monitor(self, trainer: Trainer, candidates: Mapping[str, Any]) -> None:
        if self.monitor is None or self.monitor in candidates:
            return
        message = (
            f"ModelCheckpoint(monitor={self.monitor!r}) found no such logged metric among "
            f"{sorted(candidates)}; log it with self.log({self.monitor!r}, value)"
        )
        val_loop = getattr(trainer.fit_loop.epoch_loop, "val_loop", None)
        if getattr(val_loop, "_has_run", False):  # validation ran and did not log it
            raise MisconfigurationException(message)
        if not self._warned_missing:
            self._warned_missing = True
            rank_zero_warn(message + "; until then checkpoints rank below every other")

    def _file_name(self, candidates: Mapping[str, Any]) -> str:
        full = self.format_checkpoint_name(dict(candidates))
        name = os.path.relpath(full, self.dirpath) if self.dirpath else full
        parts = name.split(os.sep)
        if os.path.isabs(name) or any(part in ("", ".", "..") for part in parts):
            raise ValueError(
                f"ModelCheckpoint: `filename`={self.filename!r} gives {name!r}, which is not a "
                "relative path inside the checkpoint"
            )
        return "/".join(parts)

    def _plan(
        self,
        trainer: Trainer,
        manager: CheckpointManager,
        step: int,
        candidates: Mapping[str, Any],
        *,
        latest: bool,
    ) -> tuple[str, dict[str, Any]] | None:
        """The file name and training info of the save at ``step``, or None to skip it.

        Rank 0 decides and every rank follows, so that all of them enter the collective
        commit, or none, with one name (logged metrics may differ from rank to rank).
        """
        plan: tuple[str, dict[str, Any]] | None = None
        if trainer.is_global_zero:
            name = self._file_name(candidates)
            info = _training_info(candidates, name)
            existing = manager.list_checkpoints()
            views: list[CheckpointView] = [r for r in existing if r.step != step]
            views.append(CheckpointView(step=step, info=info))
            keep = latest or next(
                d.keep for d in decide(manager.retention, views) if d.step == step
            )
            if keep:
                plan = (name, info)
            elif self.verbose:
                rank_zero_info(f"step {step}: not saved, ckpt would not keep it")
        shared: tuple[str, dict[str, Any]] | None = trainer.strategy.broadcast(plan, src=0)
        return shared

    # --- the view -------------------------------------------------------------------

    def _refresh(self, trainer: Trainer) -> None:
        view = _view(self, self._manager) if trainer.is_global_zero and self._manager else None
        self._apply(trainer.strategy.broadcast(view, src=0))

    def _apply(self, view: dict[str, Any] | None) -> None:
        if view is None:
            return
        self.best_model_path = view["best"]
        score = view["best_score"]
        self.best_model_score = None if score is None else torch.tensor(score)
        self.last_model_path = view["last"]
        self.best_k_models = {path: torch.tensor(value) for path, value in view["top"].items()}
        self.kth_best_model_path = view["kth"]
        if view["kth"]:
            self.kth_value = self.best_k_models[view["kth"]]

    def _close(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.close()


def _default_dirpath(trainer: Trainer) -> str:
    """Where Lightning's own `ModelCheckpoint` saves when given no ``dirpath``."""
    if trainer.loggers:
        first = trainer.loggers[0]
        save_dir = first.save_dir if first.save_dir is not None else trainer.default_root_dir
        version = first.version if isinstance(first.version, str) else f"version_{first.version}"
        return os.path.join(save_dir, str(first.name), version, "checkpoints")
    return os.path.join(trainer.default_root_dir, "checkpoints")


def _training_info(candidates: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The scalar logged metrics, the epoch and step, and the file's name."""
    info: dict[str, Any] = {}
    for key, logged in candidates.items():
        value = logged
        if isinstance(logged, torch.Tensor):
            if logged.numel() != 1:
                continue
            value = logged.item()
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        # NaN ranks last, as Lightning's inf does; None says so without a warning.
        info[key] = None if isinstance(value, float) and math.isnan(value) else value
    for key in ("epoch", "step"):
        if key in info and info[key] is not None:
            info[key] = int(info[key])
    info[FILE_KEY] = name
    return info


def _file_of(record: CheckpointRecord) -> str:
    """Lightning's file in ``record``; its directory if the info names none inside it."""
    name = record.info.get(FILE_KEY)
    if not isinstance(name, str) or any(p in ("", ".", "..") for p in name.split("/")):
        return str(record.path)  # not saved by this callback, or a crafted name ("/etc/x")
    return str(record.path / name)


def _view(callback: ModelCheckpoint, manager: CheckpointManager) -> dict[str, Any]:
    """best, last and the top k of the directory, as plain values to broadcast.

    A checkpoint a deep check found damaged is never best or last (nor resumed from).
    """
    records = [r for r in manager.list_checkpoints() if not r.damaged]
    best_first = ranked(manager.ranking, records)
    monitor = callback.monitor
    scored = [
        (_file_of(r), value)
        for r in best_first
        if monitor is not None and (value := metric_value(r.info, monitor)) is not None
    ]
    # A retention block of the config keeps no "k" of Lightning's: every scored one counts.
    k = None if callback._retention_given or callback.save_top_k < 0 else callback.save_top_k
    top = dict(scored[:k])
    best = best_first[0] if best_first else None
    best_score = None if best is None or monitor is None else metric_value(best.info, monitor)
    return {
        "best": "" if best is None else _file_of(best),
        "best_score": best_score,
        "last": _file_of(records[-1]) if records else "",
        "top": top,
        "kth": list(top)[-1] if k and len(top) == k else "",
    }


def _read_view(callback: ModelCheckpoint, config: CheckpointConfig) -> dict[str, Any]:
    """The view of a directory read by this process alone, changing nothing."""
    with CheckpointManager(config, read_only=True, process_group=False) as reader:
        return _view(callback, reader)
