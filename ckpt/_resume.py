"""Where the weights and the optimizer state of a NeMo RL checkpoint are, for a resume."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

from ckpt._unpickle import load_dcp_metadata, load_weights_only
from ckpt.storage.local import LocalStorage, exists

MEGATRON_EXTRA = "pip install -e '.[megatron]' in ckpt's clone"
_ITERATION = "iter_0000000"  # the one iteration NeMo RL's Megatron workers write
_CHAINED = re.compile(r"^chained_\d+\.")  # prefixes of a ChainedOptimizer's sub-optimizers


def resume_paths(
    last_checkpoint_path: str | os.PathLike[str] | None, model_component: str
) -> tuple[Path | None, Path | None]:
    """See `CheckpointManager.get_resume_paths`."""
    if not last_checkpoint_path:
        return None, None
    component = Path(last_checkpoint_path) / model_component
    weights, optimizer = component / "weights", component / "optimizer"
    if exists(optimizer):  # DTensor: the optimizer has a directory of its own
        return weights, optimizer
    iteration = weights / _ITERATION
    megatron = exists(iteration / "common.pt") or exists(iteration / "metadata.json")
    # Megatron: the optimizer state lives inside the weights' checkpoint, if at all;
    # `optimizer` is then only the signal that there is some to load.
    if megatron and _megatron_has_optimizer(iteration):
        return weights, optimizer
    warnings.warn(
        f"Optimizer state not found under {component}: no {optimizer.name}/ directory "
        f"(DTensor) and no optimizer state inside {weights} (Megatron); the optimizer "
        f"starts fresh",
        UserWarning,
        stacklevel=3,
    )
    return weights, None


def _megatron_has_optimizer(iteration: Path) -> bool:
    # megatron-core's own readers unpickle `.metadata` (DCP) and would run what a crafted
    # file names: ckpt reads both files itself, with megatron's safe classes admitted
    # (importing megatron.core registers them) and nothing else.
    _megatron_dist_checkpointing(iteration)
    storage = LocalStorage()
    common = iteration / "common.pt"
    if exists(common):
        with storage.open_read(str(common), follow_links=True) as f:
            found = load_weights_only(f, str(common), map_location="cpu")
        if isinstance(found, dict) and "optimizer" in found:
            return True  # saved with the common state (older Megatron checkpoints)
    metadata = iteration / ".metadata"
    if not exists(iteration / "metadata.json") or not exists(metadata):
        return False
    # torch_dist checkpoints shard optimizer tensors apart from the common state; what
    # was stored says more than the run config's intent.
    with storage.open_read(str(metadata), follow_links=True) as f:
        keys = load_dcp_metadata(f, str(metadata)).state_dict_metadata
    return any(_is_optimizer_key(str(key)) for key in keys)


def _is_optimizer_key(key: str) -> bool:
    key = _CHAINED.sub("", key)
    return key == "optimizer" or key.startswith(("optimizer.", "optimizer/"))


def _megatron_dist_checkpointing(iteration: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # Its import tells of optional kernels it lacks; not the caller's business here.
            warnings.simplefilter("ignore")
            from megatron.core import dist_checkpointing  # noqa: PLC0415
            from megatron.core.dist_checkpointing import serialization  # noqa: PLC0415, F401
    except ImportError as exc:
        raise ImportError(
            f"{iteration} is a Megatron checkpoint; telling whether it holds optimizer "
            f"state needs megatron-core: {MEGATRON_EXTRA}"
        ) from exc
    return dist_checkpointing
