"""A torch.distributed job on two CPU processes (gloo over 127.0.0.1) that saves and resumes.

Every rank builds the manager, saves its own part of each checkpoint, and resumes from
the step every rank agrees on. The second half does the same with DTensor state, which
is saved with torch.distributed.checkpoint and loaded back on another world size.

Run it with ``python docs/examples/multi_process.py [DIR]``; the test suite runs it too
(tests/test_distributed.py).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# --8<-- [start:train]
from ckpt import CheckpointManager
from ckpt.torch import load_state


def train(rank: int, world_size: int, directory: str, port: int) -> None:
    """One rank of the job: resume from the agreed checkpoint, train, save its part."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    torch.manual_seed(rank)  # each rank holds a part of its own
    model = torch.nn.Linear(4, 4)
    config = {
        "checkpoint_dir": directory,
        "metric_name": "reward",
        "keep_top_k": 2,
        "collective_timeout_s": 120,  # no rank waits longer than this for another
    }
    with CheckpointManager(config) as manager:  # on every rank: rank 0 coordinates
        start = 0
        latest = manager.get_latest_checkpoint_path()  # the same answer on every rank
        if latest is not None:
            model.load_state_dict(load_state(latest)["model"])  # this rank's own part
            start = manager.load_training_info(latest)["step"]
        for step in range(start + 1, start + 4):
            with torch.no_grad():
                model.weight.add_(0.01)  # a training step
                reward = model.weight.sum().item()
            # Collective: every rank writes and reports its part, then rank 0 commits.
            manager.save(step, {"step": step, "reward": reward}, {"model": model.state_dict()})
    dist.destroy_process_group()
    # --8<-- [end:train]


# --8<-- [start:sharded]
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor import Shard, distribute_tensor  # noqa: E402


def sharded(rank: int, world_size: int, directory: str, port: int) -> None:
    """One rank of a job whose state is a DTensor, sharded across the ranks."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    mesh = init_device_mesh("cpu", (world_size,))
    with CheckpointManager({"checkpoint_dir": directory}) as manager:
        latest = manager.get_latest_checkpoint_path()
        # Laid out as this job wants it; DCP reshards whatever world size saved it.
        weights = distribute_tensor(torch.zeros(8, 4), mesh, [Shard(0)])
        if latest is not None:
            weights = load_state(latest, into={"weights": weights})["weights"]
        step = 1 if latest is None else manager.load_training_info(latest)["step"] + 1
        weights = weights + 1  # a training step, on this rank's shard
        manager.save(step, {"step": step}, {"weights": weights})  # DTensor state: DCP
    dist.destroy_process_group()
    # --8<-- [end:sharded]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(directory: str) -> None:
    """Run the job twice (the second resumes), then the sharded one on 2 and 4 ranks."""
    for _ in range(2):  # a run, then a restarted run that resumes it
        mp.spawn(train, args=(2, directory, _free_port()), nprocs=2)
    print(sorted(os.listdir(directory)))  # ['.ckpt', 'step_5', 'step_6']: the top 2
    sharded_dir = os.path.join(directory, "sharded")
    for world_size in (2, 4):  # saved by 2 ranks, resumed by 4
        mp.spawn(sharded, args=(world_size, sharded_dir, _free_port()), nprocs=world_size)
    print(sorted(os.listdir(sharded_dir)))  # ['.ckpt', 'step_1', 'step_2']


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
