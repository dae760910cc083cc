"""One rank of a torch.distributed job on gloo over 127.0.0.1, for ``test_distributed.py``.

Run as ``python tests/dist_job.py SCENARIO DIR OUT RANK WORLD PORT``: it joins the job,
runs the scenario's function with a manager of ``DIR``, and writes what it saw (or the
error it raised) as JSON to ``OUT/rank<RANK>.json``. Every tensor a rank saves is a
function of the step and the rank, so the test knows what each file must hold.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import ckpt
from ckpt.torch import load_state

TIMEOUT_S = 4.0


def manager(directory: str, *, read_only: bool = False) -> ckpt.CheckpointManager:
    """A manager of ``directory`` (or of the URL and options in env ``CKPT_TEST_STORE``)."""
    store = json.loads(os.environ.get("CKPT_TEST_STORE", "{}"))
    config = {
        "checkpoint_dir": directory,
        **store,
        "metric_name": "reward",
        "keep_top_k": 2,
        "collective_timeout_s": TIMEOUT_S,
    }
    return ckpt.CheckpointManager(config, read_only=read_only)


def state(step: int, rank: int) -> dict[str, Any]:
    return {"w": torch.full((3,), float(100 * rank + step)), "step": step}


def value(loaded: Any) -> float:
    return float(loaded["w"][0])


def lifecycle(directory: str, rank: int, world: int) -> dict[str, Any]:
    """Saves (one an overwrite), top-k pruning, save_async, the two NeMo RL calls, a load."""
    seen: dict[str, Any] = {"saved": []}
    with manager(directory) as m:
        for step, reward in ((1, 0.1), (2, 0.9), (3, 0.5), (3, 0.2), (4, 0.3)):
            path = m.save(step, {"reward": reward}, state(step, rank))
            seen["saved"].append(str(path))
        m.save_async(5, {"reward": 0.95}, state(5, rank))
        m.wait_until_finished()
        with m.checkpoint(6, {"reward": 0.05}) as path:
            (path / f"part-{rank}.txt").write_text(f"rank {rank}")
        seen["latest"] = m.get_latest_checkpoint_path()
        seen["best"] = m.get_best_checkpoint_path()
        seen["steps"] = [r.step for r in m.list_checkpoints()]
        seen["best_value"] = value(load_state(seen["best"]))
    return seen


def anywhere(directory: str, rank: int, world: int) -> dict[str, Any]:
    """Saves (one an overwrite) and pruning on any storage and protocol; each rank reads back."""
    with manager(directory) as m:
        for step, reward in ((1, 0.1), (2, 0.9), (2, 0.8), (3, 0.5), (4, 0.2)):
            m.save(step, {"reward": reward}, state(step, rank))
        best = m.get_best_checkpoint_path()
        latest = m.get_latest_checkpoint_path()
        return {
            "steps": [r.step for r in m.list_checkpoints()],
            "best": best,
            "latest": latest,
            "best_value": value(load_state(best, storage=m._dir.storage)),
            "latest_value": value(load_state(latest, storage=m._dir.storage)),
        }


def resume(directory: str, rank: int, world: int) -> dict[str, Any]:
    """A restarted job: every rank agrees on the latest and loads its own part."""
    with manager(directory) as m:
        latest = m.get_latest_checkpoint_path()
        best = m.get_best_checkpoint_path()
        return {"latest": latest, "best": best, "best_value": value(load_state(best))}


def dcp_save(directory: str, rank: int, world: int) -> dict[str, Any]:
    """DTensor state, sharded on a CPU mesh: saved with DCP, synchronously and async."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    full = torch.arange(48, dtype=torch.float32).reshape(12, 4)
    with manager(directory) as m:
        m.save(1, {"reward": 0.8}, {"w": distribute_tensor(full, mesh, [Shard(0)]), "n": 1})
        m.save_async(2, {"reward": 0.9}, {"w": distribute_tensor(2 * full, mesh, [Shard(0)])})
        m.wait_until_finished()
        m.save(3, {"reward": 0.1}, {"w": torch.full((2,), float(rank))})  # plain, per rank
        return {"steps": [r.step for r in m.list_checkpoints()]}


def dcp_load(directory: str, rank: int, world: int) -> dict[str, Any]:
    """Load what ``dcp_save`` saved on another world size (DCP reshards; plain cannot)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    full = torch.arange(48, dtype=torch.float32).reshape(12, 4)
    seen: dict[str, Any] = {}
    with manager(directory, read_only=True) as m:
        for step, factor in ((1, 1), (2, 2)):
            into = {"w": distribute_tensor(torch.zeros(12, 4), mesh, [Shard(0)])}
            got = load_state(Path(directory) / f"step_{step}", into=into)
            seen[f"step_{step}"] = {
                "equal": bool(torch.equal(got["w"].full_tensor(), factor * full)),
                "local_rows": got["w"].to_local().shape[0],
            }
        try:
            load_state(Path(directory) / "step_3")
        except ValueError as exc:
            seen["plain_error"] = str(exc)
        seen["latest"] = m.get_latest_checkpoint_path()
    return seen


def bad_state(directory: str, rank: int, world: int) -> dict[str, Any]:
    """Rank 1's state cannot be saved: every rank raises, nothing is committed."""
    with manager(directory) as m:
        m.save(1, {"reward": 0.1}, state(1, rank))
        bad = {"w": object()} if rank == 1 else state(2, rank)
        m.save(2, {"reward": 0.2}, bad)
    return {}


def aborted(directory: str, rank: int, world: int) -> dict[str, Any]:
    """Rank 1's block fails inside ``checkpoint()``: rank 0 finalizes, nothing is published."""
    with manager(directory) as m, m.checkpoint(1, {"reward": 0.1}) as path:
        (path / f"part-{rank}.txt").write_text("x")
        if rank == 1:
            raise RuntimeError("rank 1's writer failed")
    return {}


def background(directory: str, rank: int, world: int) -> dict[str, Any]:
    """NeMo RL's asynchronous finalization and save_async, collectively, and their failures.

    Each rank's files of a checkpoint are written by a thread of its own, as Megatron's
    async save writes them; ``begin_finalization`` commits once every rank's ``wait_fn``
    returned. Then rank 1's ``wait_fn`` fails, and then rank 1's background write of a
    ``save_async`` fails: each time every rank raises, and nothing is committed.
    """
    import threading

    from ckpt.torch import _handler

    seen: dict[str, Any] = {}
    with manager(directory) as m:
        path = m.init_tmp_checkpoint(1, {"reward": 0.5})
        writer = threading.Thread(target=(path / f"part-{rank}.bin").write_bytes, args=(b"x",))
        writer.start()
        m.begin_finalization(path, wait_fn=writer.join)
        m.finalize_pending()
        seen["after_finalize"] = [r.step for r in m.list_checkpoints()]

        path = m.init_tmp_checkpoint(2, {"reward": 0.6})

        def fail() -> None:
            if rank == 1:
                raise OSError("rank 1's async writer failed")

        m.begin_finalization(path, wait_fn=fail)
        try:
            m.finalize_pending()
        except ckpt.FinalizationError as exc:
            seen["finalize_error"] = [type(exc.__cause__).__name__, str(exc.__cause__)]

        original = _handler.save_file

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise OSError(28, "No space left on device")

        if rank == 1:
            _handler.save_file = broken  # type: ignore[assignment]
        try:
            m.save_async(3, {"reward": 0.7}, state(3, rank))
            m.wait_until_finished()
        except ckpt.CollectiveError as exc:
            seen["async_error"] = [list(exc.ranks), str(exc)]
        finally:
            _handler.save_file = original  # type: ignore[assignment]
        seen["steps"] = [r.step for r in m.list_checkpoints()]
    return seen


def disagree(directory: str, rank: int, world: int) -> dict[str, Any]:
    """The coordinator's warnings reach every rank; ranks that disagree fail, named; big
    messages travel."""
    import warnings

    seen: dict[str, Any] = {}
    try:
        ckpt.CheckpointManager({"checkpoint_dir": f"{directory}-{rank}"})
    except ckpt.CollectiveError as exc:
        seen["directories"] = [list(exc.ranks), str(exc)]
    with manager(directory) as m:
        m.save(1, {"reward": 0.5}, state(1, rank))
        m.save(2, {}, state(2, rank))  # no metric: the best query warns
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seen["best"] = m.get_best_checkpoint_path()
        seen["warnings"] = [(w.category.__name__, str(w.message)) for w in caught]
        try:  # rank 0 pins, rank 1 unpins: a mismatch, in one round on both
            (m.pin if rank == 0 else m.unpin)(1)
        except ckpt.CollectiveError as exc:
            seen["mismatch"] = [list(exc.ranks), str(exc)]
        seen["pins"] = [r.step for r in m.list_checkpoints() if r.pinned]
        blob = str(rank) * 50_000  # past the 16 KiB first message, both ways
        answer = m._coord.round(
            "big",
            {"blob": blob},
            None,
            lambda messages: {"sizes": [len(x["blob"]) for x in messages], "echo": "e" * 70_000},
        )
        seen["big"] = [answer["sizes"], len(answer["echo"])]
    return seen


def subgroups(directory: str, rank: int, world: int) -> dict[str, Any]:
    """Two managers, one per half of a 4-rank job (``process_group=``), two directories."""
    halves = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    mine = halves[rank // 2]
    config = {"checkpoint_dir": f"{directory}/half{rank // 2}", "collective_timeout_s": TIMEOUT_S}
    seen: dict[str, Any] = {}
    with ckpt.CheckpointManager(config, process_group=mine) as m:
        path = m.save(1, {}, state(1, rank))
        seen["path"] = str(path)
        seen["files"] = sorted(os.listdir(path))
        seen["own"] = value(load_state(path, process_group=mine))
        bad = {"w": object()} if rank == 3 else state(2, rank)
        try:
            m.save(2, {}, bad)
        except ckpt.CollectiveError as exc:
            seen["error"] = [list(exc.ranks), str(exc)]
        seen["steps"] = [r.step for r in m.list_checkpoints()]
    return seen


def dies(directory: str, rank: int, world: int) -> dict[str, Any]:
    """The victim (env VICTIM) dies (or hangs, env HANG) during the second save."""
    victim = int(os.environ["VICTIM"])
    with manager(directory) as m:
        m.save(1, {"reward": 0.1}, state(1, rank))
        if rank == victim:
            if os.environ.get("HANG"):
                time.sleep(4 * TIMEOUT_S)
            os._exit(17)
        started = time.monotonic()
        try:
            m.save(2, {"reward": 0.2}, state(2, rank))
        finally:
            Path(os.environ["OUT"], f"elapsed{rank}").write_text(str(time.monotonic() - started))
    return {}


def lonely(directory: str, rank: int, world: int) -> dict[str, Any]:
    """Only rank 0 builds a manager (rank 1 waits past the timeout, then leaves)."""
    if rank == 1:
        time.sleep(2 * TIMEOUT_S)
        return {}
    started = time.monotonic()
    try:
        manager(directory)
    finally:
        Path(os.environ["OUT"], f"elapsed{rank}").write_text(str(time.monotonic() - started))
    return {}


SCENARIOS = {
    f.__name__: f
    for f in (
        lifecycle,
        anywhere,
        resume,
        dcp_save,
        dcp_load,
        bad_state,
        aborted,
        background,
        disagree,
        subgroups,
        dies,
        lonely,
    )
}


def main(argv: list[str]) -> int:
    scenario, directory, out, rank, world, port = argv
    os.environ["OUT"] = out
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=int(rank),
        world_size=int(world),
        timeout=datetime.timedelta(seconds=60),
    )
    result: dict[str, Any]
    try:
        result = {"ok": SCENARIOS[scenario](directory, int(rank), int(world))}
    except Exception as exc:
        result = {
            "error": type(exc).__name__,
            "message": str(exc),
            "ranks": list(getattr(exc, "ranks", ())),
            "traceback": traceback.format_exc(),
        }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # not destroy_process_group: a dead peer would make it wait


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
