"""A Lightning run that keeps the 2 best checkpoints by val_loss (plus the latest) with ckpt.

It trains a tiny model for three epochs, then "restarts" (a new Trainer and a new
callback, as a new process would build them) and resumes from the last checkpoint.
Run it with ``python docs/examples/lightning_run.py``; the documentation's test suite
runs it too (tests/test_doc_examples.py).
"""

from __future__ import annotations

# --8<-- [start:run]
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ckpt.lightning import ModelCheckpoint  # was: from lightning.pytorch.callbacks import ...


class Regression(pl.LightningModule):
    """Your model: one linear layer; its validation logs ``val_loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):  # noqa: D102 - Lightning's hooks
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):  # noqa: D102
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.SGD(self.parameters(), lr=0.1)


data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
loaders = DataLoader(data, batch_size=16), DataLoader(data, batch_size=64)


def run(epochs: int, ckpt_path: str | None = None) -> ModelCheckpoint:
    """Train to ``epochs`` with a new Trainer and callback, as a new process would."""
    checkpoints = ModelCheckpoint(
        dirpath="runs/lightning", monitor="val_loss", save_top_k=2, save_last=True
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regression(), *loaders, ckpt_path=ckpt_path)
    return checkpoints


run(epochs=3)
# A restart: a new callback reads best and last from the directory before training.
checkpoints = run(epochs=6, ckpt_path="last")  # resumes after epoch 3's checkpoint
print("best:", checkpoints.best_model_path, float(checkpoints.best_model_score))
print("last:", checkpoints.last_model_path)  # runs/lightning/step_24/epoch=5-step=24.ckpt
# --8<-- [end:run]
