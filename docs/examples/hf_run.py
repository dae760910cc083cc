"""A Hugging Face Trainer run whose checkpoints ckpt commits, ranks and prunes.

It trains a tiny model for 6 steps, evaluating and saving every 2, keeping the 2 best
by eval_loss plus the latest; then a second Trainer (as a restarted job would build
it) resumes from the latest committed checkpoint and trains to step 10. Run it with
``python docs/examples/hf_run.py``; the documentation's test suite runs it too
(tests/test_doc_examples.py).
"""

from __future__ import annotations

# --8<-- [start:run]
import torch
from transformers import Trainer, TrainingArguments

from ckpt.hf import CheckpointCallback, latest_checkpoint


class Regression(torch.nn.Module):
    """Your model: one linear layer, returning its loss as Trainer models do."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def forward(self, x, labels=None):  # noqa: D102
        out = self.layer(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


data = [{"x": torch.randn(4), "labels": torch.randn(1)} for _ in range(64)]


def run(max_steps: int) -> Trainer:
    """Train to ``max_steps`` with a new Trainer, resuming from ckpt's latest."""
    args = TrainingArguments(
        output_dir="runs/hf",
        max_steps=max_steps,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        metric_for_best_model="loss",  # ckpt ranks by eval_loss, lower is better
        load_best_model_at_end=True,  # loads the best checkpoint ckpt kept
        # no save_total_limit: ckpt decides what is kept
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=Regression(),
        args=args,
        train_dataset=data,
        eval_dataset=data[:16],
        callbacks=[CheckpointCallback({"keep_top_k": 2})],
    )
    # None on a fresh run; never a checkpoint a crash cut short.
    trainer.train(resume_from_checkpoint=latest_checkpoint("runs/hf"))
    return trainer


run(max_steps=6)
trainer = run(max_steps=10)  # a restart: resumes from runs/hf/step_6/checkpoint-6
print("best:", trainer.state.best_model_checkpoint, trainer.state.best_metric)
print("latest:", latest_checkpoint("runs/hf"))  # runs/hf/step_10/checkpoint-10
# --8<-- [end:run]
