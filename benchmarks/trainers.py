"""What ckpt's trainer adapters cost a save, next to the trainers' own checkpointing.

Each variant trains the same model (``--mib`` MiB of float32 parameters, SGD) for
``--saves`` steps and saves after every step, in a fresh directory on one disk; the
variants alternate, ``--runs`` times each, and the figure is the median of
``(time of the fit - time of the same fit saving nothing) / saves``: what one save
costs the loop.

* **Lightning**: ``lightning.pytorch.callbacks.ModelCheckpoint`` (``monitor`` with
  ``save_top_k=2, save_last=True``: a top-k file and a ``last.ckpt`` copy per save,
  never fsynced) against ``ckpt.lightning.ModelCheckpoint`` with the same arguments (one
  file per save, fsynced, committed atomically), and the same with ``fsync: false``.
* **Hugging Face**: the Trainer's own ``checkpoint-N`` (``save_total_limit=3``) against
  the Trainer with ``ckpt.hf.CheckpointCallback({"keep_top_k": 2})`` (the same files,
  then moved, fsynced and committed), and the same with ``fsync: false``.

The ratio ckpt / trainer is what durability and the commit add to a save. Run:

    python benchmarks/trainers.py [--mib 64] [--saves 6] [--runs 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import transformers
from lightning.pytorch.callbacks import ModelCheckpoint as LightningCheckpoint
from torch.utils.data import DataLoader, TensorDataset
from transformers import Trainer, TrainingArguments

from ckpt.hf import CheckpointCallback
from ckpt.lightning import ModelCheckpoint

MiB = 2**20


class Wide(pl.LightningModule):
    """``mib`` MiB of parameters in one linear layer; a validation metric per step."""

    def __init__(self, mib: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(mib * MiB // 4 // 1024, 1024, bias=False)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        out = self.layer(x)
        if labels is None:
            return out
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("val_loss", loss)  # logged at every step: every save point has it
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _lightning(mib: int, saves: int, directory: Path, variant: str) -> float:
    model = Wide(mib)
    x = torch.randn(saves * 2, model.layer.in_features)
    data = DataLoader(TensorDataset(x, torch.randn(saves * 2, 1024)), batch_size=2)
    kwargs = {"dirpath": directory, "monitor": "val_loss", "save_top_k": 2, "save_last": True}
    callbacks: list[pl.Callback] = []
    if variant == "lightning":
        callbacks = [LightningCheckpoint(every_n_train_steps=1, **kwargs)]
    elif variant.startswith("ckpt"):
        config = {"fsync": variant == "ckpt"}
        callbacks = [ModelCheckpoint(every_n_train_steps=1, config=config, **kwargs)]
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=callbacks,
        enable_checkpointing=variant != "none",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    return time.perf_counter() - start


class _Data(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int, width: int) -> None:
        self.x, self.y = torch.randn(n, width), torch.randn(n, 1024)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def _hf(mib: int, saves: int, directory: Path, variant: str) -> float:
    model = Wide(mib)
    args: dict[str, Any] = {
        "output_dir": str(directory),
        "max_steps": saves,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "save_strategy": "no" if variant == "none" else "steps",
        "save_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "logging_strategy": "no",
    }
    callbacks = []
    if variant == "hf":
        args["save_total_limit"] = 3
    elif variant.startswith("ckpt"):
        callbacks = [CheckpointCallback({"keep_top_k": 2, "fsync": variant == "ckpt"})]
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=_Data(saves * 2, model.layer.in_features),
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def _measure(
    fit: Callable[[int, int, Path, str], float],
    variants: list[str],
    args: argparse.Namespace,
    base: Path,
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {v: [] for v in variants}
    for run in range(args.runs + 1):  # the first round warms up, untimed
        for variant in variants:
            directory = base / f"{variant}-{run}"
            elapsed = fit(args.mib, args.saves, directory, variant)
            shutil.rmtree(directory, ignore_errors=True)
            if run:
                times[variant].append(elapsed)
    return times


def _print(title: str, times: dict[str, list[float]], saves: int, stock: str) -> None:
    none = statistics.median(times["none"])
    per_save = {v: (statistics.median(t) - none) / saves for v, t in times.items() if v != "none"}
    print(f"{title}: a fit saving nothing takes {none:.3f} s (median)")
    for variant, cost in per_save.items():
        runs = ", ".join(f"{(t - none) / saves * 1e3:.0f}" for t in times[variant])
        print(f"  {variant:>12}: {cost * 1e3:7.1f} ms per save (runs: {runs})")
    for variant in ("ckpt", "ckpt-nofsync"):
        print(f"  {variant} / {stock}: {per_save[variant] / per_save[stock]:.2f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--saves", type=int, default=6)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # the trainers' advice about tiny data loaders
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    base = Path(tempfile.mkdtemp(prefix="ckpt-trainers-", dir=args.dir))
    try:
        print(
            f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"lightning {pl.__version__}, transformers {transformers.__version__}; {base}"
        )
        print(f"model {args.mib} MiB, a save after each of {args.saves} steps, {args.runs} runs")
        variants = ["none", "lightning", "ckpt", "ckpt-nofsync"]
        _print("Lightning", _measure(_lightning, variants, args, base), args.saves, "lightning")
        variants = ["none", "hf", "ckpt", "ckpt-nofsync"]
        _print("Hugging Face", _measure(_hf, variants, args, base), args.saves, "hf")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
