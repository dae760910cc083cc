"""A tiny Hugging Face `Trainer` run with ckpt's `CheckpointCallback`, for ``test_hf.py``.

The model is a real ``torch.nn.Module`` (one linear layer) trained by the real
``transformers.Trainer``; every `EVERY` steps it is evaluated and saved, and the
evaluation's ``score`` is the scripted value of `SCORES` for that step (higher is
better), so what ckpt keeps is known in advance. Run it as a script or import `train`::

    python tests/hf_job.py DIR --steps N [--resume latest|best]
        [--report FILE] [--record FILE] [--kill-at I --marker FILE]

``--kill-at``, ``--record`` and ``--serve`` are those of ``lightning_job.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).parent))
import kill_job

from ckpt.hf import CheckpointCallback, best_checkpoint, latest_checkpoint

EVERY = 2  # steps between evaluations and saves
#: The score of the evaluation at step EVERY * (i + 1).
SCORES = (0.5, 0.7, 0.6, 0.9, 0.4, 0.65)
KEEP_TOP_K = 2


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        out = self.layer(x)
        loss = nn.functional.mse_loss(out, labels) if labels is not None else None
        return {"loss": loss, "logits": out}


class Data(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class Observe(TrainerCallback):
    """Where training started, and (``ops``) the step each file operation belongs to."""

    def __init__(self, ops: kill_job.FileOps | None) -> None:
        self.ops = ops
        self.started_at: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.started_at = state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.ops is not None:
            self.ops.event = state.global_step


def arguments(
    output_dir: str | os.PathLike[str], steps: int, **overrides: Any
) -> TrainingArguments:
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": steps,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.05,
        "save_strategy": "steps",
        "save_steps": EVERY,
        "eval_strategy": "steps",
        "eval_steps": EVERY,
        "metric_for_best_model": "score",
        "greater_is_better": True,
        "load_best_model_at_end": True,
        "logging_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    values.update(overrides)
    return TrainingArguments(**values)


def trainer(args: TrainingArguments, callbacks: list[TrainerCallback]) -> Trainer:
    holder: dict[str, Trainer] = {}

    def score(_: Any) -> dict[str, float]:
        return {"score": SCORES[holder["trainer"].state.global_step // EVERY - 1]}

    torch.manual_seed(0)  # the model's first weights: the Trainer seeds only after they exist
    built = Trainer(
        model=Tiny(),
        args=args,
        train_dataset=Data(64),
        eval_dataset=Data(8),
        compute_metrics=score,
        callbacks=callbacks,
    )
    holder["trainer"] = built
    return built


def train(
    output_dir: str | os.PathLike[str],
    steps: int,
    *,
    resume: str | None = None,
    ops: kill_job.FileOps | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train to ``steps`` (resuming from ckpt's latest or best); what the run ended with."""
    callback = CheckpointCallback(config if config is not None else {"keep_top_k": KEEP_TOP_K})
    observe = Observe(ops)
    run = trainer(arguments(output_dir, steps), [callback, observe])
    start = {"latest": latest_checkpoint, "best": best_checkpoint, None: lambda _: None}[resume]
    resume_from = start(output_dir)
    run.train(resume_from_checkpoint=resume_from)
    return {
        "world_size": run.args.world_size,
        "resumed_from": resume_from,
        "started_at": observe.started_at,
        "global_step": run.state.global_step,
        "best_model_checkpoint": run.state.best_model_checkpoint,
        "best_metric": run.state.best_metric,
        "weight": run.model.layer.weight.detach().flatten().tolist(),
    }


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=EVERY * len(SCORES))
    parser.add_argument("--resume", choices=["latest", "best"])


def _job(args: argparse.Namespace, ops: kill_job.FileOps | None) -> dict[str, Any]:
    return train(args.directory, args.steps, resume=args.resume, ops=ops)


if __name__ == "__main__":
    kill_job.exit_job(kill_job.job_main(sys.argv[1:], _arguments, _job))
