"""A single-controller save, as NeMo RL's driver makes one: workers write, the driver commits.

The driver's manager hands out a temporary checkpoint naming the workers that write
into it; each worker process writes its shard and calls `ckpt.mark_written`, which
makes its files durable from the worker itself and reports them. The driver publishes
only once every worker reported, and its files are there.

Run it with ``python docs/examples/single_controller.py [DIR]``; the test suite runs it
too (tests/test_distributed.py).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile

# --8<-- [start:worker]
import ckpt


def worker(checkpoint_path: str, index: int) -> None:
    """In a worker process (a Ray actor, say): write this worker's shard, then report it."""
    name = f"policy/shard-{index}.bin"
    os.makedirs(os.path.join(checkpoint_path, "policy"), exist_ok=True)
    with open(os.path.join(checkpoint_path, name), "wb") as f:
        f.write(b"weights of shard %d" % index)
    ckpt.mark_written(checkpoint_path, f"policy-{index}", [name])  # fsync here, and report
    # --8<-- [end:worker]


# --8<-- [start:driver]
def driver(directory: str, workers: int = 2) -> None:
    """The driver: two steps, each written by ``workers`` processes and committed here."""
    context = multiprocessing.get_context("spawn")
    with ckpt.CheckpointManager({"checkpoint_dir": directory}) as manager:
        for step in (1, 2):
            names = [f"policy-{i}" for i in range(workers)]
            path = manager.init_tmp_checkpoint(step, {"step": step}, writers=names)
            procs = [context.Process(target=worker, args=(str(path), i)) for i in range(workers)]
            for proc in procs:
                proc.start()
            # Committed in the background once the workers are done and all reported;
            # a missing report fails it (IncompleteCheckpointError), publishing nothing.
            manager.begin_finalization(path, wait_fn=lambda procs=procs: [p.join() for p in procs])
        manager.finalize_pending()
        print([record.step for record in manager.list_checkpoints()])  # [1, 2]
    # --8<-- [end:driver]


if __name__ == "__main__":
    driver(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
