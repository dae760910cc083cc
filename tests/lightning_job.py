"""A tiny Lightning training run with ckpt's `ModelCheckpoint`, for ``test_lightning.py``.

The model is a real ``LightningModule`` (one linear layer, SGD) on a fixed data set; its
validation logs the scripted ``val_loss`` of `VAL` for each epoch, so which checkpoints
top-k keeps is known in advance. Run it as a script (one process, or one rank of a DDP
job that ``test_lightning.py`` starts with the torch.distributed environment set), or
import `fit`::

    python tests/lightning_job.py DIR --epochs N [--top-k K] [--save-last]
        [--ckpt-path last|best] [--ddp] [--report FILE] [--kill-at I --marker FILE]

``--kill-at I`` sends the process SIGKILL right before its ``I``-th file operation under
``DIR`` (as `kill_job.FileOps` sees them: Lightning's writes and renames, ckpt's fsyncs,
commit and prune), after writing that operation to ``--marker``; ``--record FILE``
writes every such operation, with the global step of the save it belongs to. ``--serve`` makes
it a fork server, as ``kill_job.py --serve`` is: Lightning is imported once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
import kill_job

from ckpt.lightning import ModelCheckpoint

#: The val_loss each epoch logs.
VAL = (0.5, 0.3, 0.4, 0.2, 0.6, 0.35)
BATCHES = 4  # optimizer steps per epoch


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", torch.tensor(VAL[self.current_epoch]), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class RecordingIO(TorchCheckpointIO):
    """Lightning's own file writer, remembering every path it was asked to write."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[str] = []

    def save_checkpoint(self, checkpoint: Any, path: Any, storage_options: Any = None) -> None:
        self.saved.append(str(path))
        super().save_checkpoint(checkpoint, path, storage_options)


class StepEvents(pl.Callback):
    """Names each file operation by the global step whose save it belongs to."""

    def __init__(self, ops: kill_job.FileOps) -> None:
        self.ops = ops

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.ops.event = trainer.global_step


def loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(4 * BATCHES, 4, generator=g), torch.randn(4 * BATCHES, 1, generator=g)
    )
    return DataLoader(data, batch_size=4), DataLoader(data, batch_size=8)


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A CPU Trainer without logger, progress bar, summary or sanity check, unless asked."""
    defaults: dict[str, Any] = {
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**defaults, **kwargs})


def fit(
    directory: str | os.PathLike[str],
    epochs: int,
    *,
    top_k: int = 2,
    save_last: bool | None = True,
    ckpt_path: str | None = None,
    ddp: bool = False,
    ops: kill_job.FileOps | None = None,
    **callback: Any,
) -> dict[str, Any]:
    """Train to ``epochs``; what the callback and the trainer ended with."""
    torch.manual_seed(0)
    cb = ModelCheckpoint(
        dirpath=directory, monitor="val_loss", save_top_k=top_k, save_last=save_last, **callback
    )
    built = {"best": cb.best_model_path, "last": cb.last_model_path}
    io = RecordingIO()
    extra: list[pl.Callback] = [StepEvents(ops)] if ops is not None else []
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=[cb, *extra],
        plugins=[io],
        devices=2 if ddp else 1,
        strategy="ddp" if ddp else "auto",
    )
    train, val = loaders()
    trainer.fit(Tiny(), train, val, ckpt_path=ckpt_path)
    return {
        "rank": trainer.global_rank,
        "built": built,
        "ckpt_path": trainer.ckpt_path,
        "global_step": trainer.global_step,
        "best": cb.best_model_path,
        "best_score": None if cb.best_model_score is None else float(cb.best_model_score),
        "last": cb.last_model_path,
        "top": {path: float(score) for path, score in cb.best_k_models.items()},
        "kth": cb.kth_best_model_path,
        "saved": io.saved,
        "weight": trainer.lightning_module.layer.weight.detach().flatten().tolist(),
    }


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=len(VAL))
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--save-last", action="store_true")
    parser.add_argument("--ckpt-path")
    parser.add_argument("--ddp", action="store_true")


def _job(args: argparse.Namespace, ops: kill_job.FileOps | None) -> dict[str, Any]:
    save_last = args.save_last or None
    return fit(
        args.directory,
        args.epochs,
        top_k=args.top_k,
        save_last=save_last,
        ckpt_path=args.ckpt_path,
        ddp=args.ddp,
        ops=ops,
    )


if __name__ == "__main__":
    kill_job.exit_job(kill_job.job_main(sys.argv[1:], _arguments, _job))
