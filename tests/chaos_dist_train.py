"""A small two-rank training job for ckpt-chaos, the outside crash-consistency tester.

Every rank trains its own tiny model (seeded by its rank), saves collectively every
step with a top-2 manager, and on start resumes from the step every rank agrees on,
printing ``resumed from step N``. At the end rank 0 gathers every rank's weights into
``OUT/final.bin``, which must be the same bytes whatever crash came before. Run::

    ckpt-chaos run --ranks 2 --crash-rank 0 --step-regex "resumed from step (\\d+)" \\
        --result-file "{out}/final.bin" -- python tests/chaos_dist_train.py {out}

(``--crash-rank 1`` crashes the other rank). It is not part of the test suite: the
suite's own kill test across ranks is ``tests/test_kill_dist.py``.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import kill_job

import ckpt
from ckpt.torch import load_state

STEPS = 8


def main(out: str) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    torch.manual_seed(rank)
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = {
        "checkpoint_dir": os.path.join(out, "ckpts"),
        "metric_name": "loss",
        "higher_is_better": False,
        "keep_top_k": 2,
        "collective_timeout_s": 20,
    }
    with ckpt.CheckpointManager(config) as manager:
        latest = manager.get_latest_checkpoint_path()
        start = 0
        if latest is not None:
            saved = load_state(latest)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            start = int(manager.load_training_info(latest)["step"])
        if rank == 0:
            print(f"resumed from step {start}", flush=True)
        data = torch.Generator().manual_seed(1234 + rank)
        for step in range(1, STEPS + 1):
            inputs = torch.randn(16, 8, generator=data)  # drawn every step: a resume replays
            if step <= start:
                continue
            loss = torch.nn.functional.mse_loss(model(inputs), inputs.flip(1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            manager.save(step, {"step": step, "loss": loss.item()}, state)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(weights) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, weights)
    if rank == 0:
        Path(out, "final.bin").write_bytes(torch.cat(gathered).numpy().tobytes())


if __name__ == "__main__":
    main(sys.argv[1])
    # Not destroy_process_group and the interpreter's shutdown: the last all_gather's gloo
    # thread can abort the process then (ckpt-chaos saw it once in 17 resumes).
    kill_job.exit_job(0)
