"""The state seam: a save through a handler of the user's own (no torch), and a custom
retention policy that declares its shape and so is applied per save, not over all."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt.handler import Part, StateHandler, WrittenFile
from ckpt.storage import Storage, join
from policies import Bounded, ByMetric, CheckpointView, PerCheckpoint, incremental_parts

Make = Callable[..., ckpt.CheckpointManager]


@dataclass(frozen=True)
class JsonHandler:
    """A whole state as one JSON file: a format that is not ckpt's and needs no torch."""

    name: str = "state.json"

    def is_sharded(self, state: Any, /) -> bool:
        return False

    def plan(self, state: Any, /) -> bytes:
        try:
            return json.dumps(state, sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ckpt.SerializationError(f"not a JSON state: {exc}") from exc

    def write_part(
        self, storage: Storage, attempt: str, state: Any, plan: Any, part: Part, /, *, fsync: bool
    ) -> list[WrittenFile]:
        data = plan if plan is not None else self.plan(state)
        name = self.name if part.group is None else f"state.{part.rank}-of-{part.size}.json"
        with storage.open_write(join(attempt, name), durable=fsync) as f:
            f.write(data)
        return [WrittenFile(name, len(data))]

    def snapshot(self, state: Any, buffers: dict[Any, Any], /) -> Any:
        return copy.deepcopy(state)

    def load(self, storage: Storage, checkpoint: str, /, **options: Any) -> Any:
        return json.loads(storage.read_bytes(join(checkpoint, self.name)))


class _Failing(JsonHandler):
    def write_part(self, *args: Any, **kwargs: Any) -> list[WrittenFile]:
        raise OSError(28, "No space left on device")


def test_a_handler_of_ones_own_is_a_state_handler() -> None:
    assert isinstance(JsonHandler(), StateHandler)
    assert not isinstance(object(), StateHandler)


def test_save_and_save_async_write_through_the_handler(make_manager: Make, ckpt_dir: Path) -> None:
    handler = JsonHandler()
    manager = make_manager(keep_top_k=2, metric_name="reward")
    path = manager.save(1, {"reward": 0.1}, {"weights": [1, 2, 3]}, handler=handler)
    assert sorted(p.name for p in Path(path).iterdir()) == [
        ".ckpt-files.json",
        "state.json",
        "training_info.json",
    ]
    state = {"weights": [4, 5, 6], "step": 2}
    manager.save_async(2, {"reward": 0.9}, state, handler=handler)
    state["weights"].append(7)  # after save_async returned: not in the checkpoint
    manager.save_async(3, {"reward": 0.5}, {"weights": []}, handler=handler)
    manager.wait_until_finished()
    storage = ckpt.LocalStorage()
    latest = manager.get_latest_checkpoint_path()
    best = manager.get_best_checkpoint_path()
    assert latest is not None
    assert best is not None
    assert handler.load(storage, str(best)) == {"weights": [4, 5, 6], "step": 2}
    assert handler.load(storage, str(latest)) == {"weights": []}
    assert [r.step for r in manager.list_checkpoints()] == [2, 3]  # retention ran as usual


def test_a_state_the_handler_refuses_writes_nothing(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager()
    for save in (manager.save, manager.save_async):
        with pytest.raises(ckpt.SerializationError, match="not a JSON state"):
            save(1, {}, {"w": object()}, handler=JsonHandler())
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [".ckpt"]


def test_a_failed_write_removes_the_attempt(make_manager: Make, ckpt_dir: Path) -> None:
    manager = make_manager()
    with pytest.raises(OSError, match="No space left"):
        manager.save(1, {}, {"w": 1}, handler=_Failing())
    manager.save_async(2, {}, {"w": 1}, handler=_Failing())
    with pytest.raises(OSError, match="No space left"):
        manager.wait_until_finished()
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [".ckpt"]
    assert manager.list_checkpoints() == []


def test_a_handler_saves_with_torch_blocked(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_handler import JsonHandler
        import ckpt
        with ckpt.CheckpointManager({{"checkpoint_dir": {str(tmp_path)!r}}}) as m:
            path = m.save(1, {{}}, {{"w": [1.5]}}, handler=JsonHandler())
            print(JsonHandler().load(ckpt.LocalStorage(), str(path)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["{'w': [1.5]}"]


# --- a custom policy that declares its shape --------------------------------------------


@dataclass(frozen=True)
class BestWithinBudget:
    """Keep the ``k`` best by reward among checkpoints within a KL budget; count the work."""

    k: int
    max_kl: float
    calls: list[int]

    def _key(self, view: CheckpointView, /) -> tuple[int, float, int]:
        within = view.info.get("kl", 0.0) <= self.max_kl
        return (0 if within else 1, -float(view.info["reward"]), -view.step)

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
        self.calls.append(len(checkpoints))
        ranked = sorted(checkpoints, key=self._key)[: self.k]
        return {view.step: f"top-{self.k} within KL {self.max_kl}" for view in ranked}

    def incremental(self) -> tuple[PerCheckpoint | Bounded, ...]:
        return (Bounded(self.k, self._key),)


@dataclass(frozen=True)
class Undeclared(BestWithinBudget):
    """The same policy without a shape of its own: decided over every checkpoint."""

    def keep(self, checkpoints: Sequence[CheckpointView], /) -> dict[int, str]:
        return super().keep(checkpoints)


def _run(make_manager: Make, where: Path, policy: BestWithinBudget, saves: int) -> list[int]:
    manager = make_manager(retention=policy, checkpoint_dir=str(where))
    for step in range(1, saves + 1):
        kl = 0.5 if step % 4 == 0 else 0.05  # every fourth checkpoint is over budget
        with manager.checkpoint(step, {"reward": float(step % 7), "kl": kl}):
            pass
    return [r.step for r in manager.list_checkpoints()]


def test_a_custom_policy_with_a_shape_is_applied_per_save(
    make_manager: Make, tmp_path: Path
) -> None:
    declared = BestWithinBudget(3, 0.1, [])
    assert incremental_parts(declared) is not None
    assert incremental_parts(Undeclared(3, 0.1, [])) is None  # keep() changed, no shape
    kept = _run(make_manager, tmp_path / "declared", declared, 40)
    # Only the first save (one checkpoint) was decided in full; every later one went
    # through the heap its shape declares, and keep() never saw the history again.
    assert declared.calls == [1]
    undeclared = Undeclared(3, 0.1, [])
    # Decided in full, the same policy keeps the same checkpoints, ranking every time
    # the k it kept and the new one.
    assert _run(make_manager, tmp_path / "undeclared", undeclared, 40) == kept
    assert len(undeclared.calls) == 40
    assert max(undeclared.calls) == 4
    by_key = sorted(range(1, 41), key=lambda s: (0 if s % 4 else 1, -float(s % 7), -s))
    assert kept == sorted(by_key[:3])


def test_the_built_in_rankings_declare_their_key() -> None:
    config = {
        "checkpoint_dir": "x",
        "metric_name": "reward",
        "retention": {"kind": "top_k", "k": 2},
    }
    _, policy = ckpt.policies_from_config(ckpt.load_config(config))
    parts = incremental_parts(policy)
    assert parts is not None
    (part,) = parts
    assert isinstance(part, Bounded)
    assert part.k == 2
    view = CheckpointView(step=3, info={"reward": 1.0})
    assert part.key(view) == ByMetric("reward").key(view)
