"""The one place where config fields become ranking and retention objects."""

from __future__ import annotations

from ckpt._config.schema import CheckpointConfig, LatestNSpec
from policies import (
    AnyOf,
    ByMetric,
    ByRecency,
    EveryNSteps,
    Hybrid,
    KeepAll,
    LatestN,
    Ranking,
    RetentionPolicy,
    TopK,
)


def local_tier(config: CheckpointConfig) -> CheckpointConfig | None:
    """The config of the local tier when ``replicate:`` is set; ``None`` without it.

    The local tier keeps its ``keep_local`` newest checkpoints (``kind: latest_n``), and
    a checkpoint whose replica is not committed yet besides, whatever that says; the
    config's own retention governs the replica. `policies_from_config` of the result
    is the local tier's retention, and it is what the local tier's
    ``.ckpt/ranking.json`` records, so that ``ckpt ls`` shows what is kept there.
    """
    if config.replicate is None:
        return None
    keep = LatestNSpec(kind="latest_n", n=config.replicate.keep_local)
    return config.model_copy(
        update={"retention": keep, "keep_top_k": None, "ft_keep_latest_k": None}
    )


def policies_from_config(
    config: CheckpointConfig, *, ranking: Ranking | None = None
) -> tuple[Ranking, RetentionPolicy]:
    """Build the ranking and retention policy a config describes.

    ``metric_name`` gives `ByMetric` (unset: `ByRecency`). A ``retention`` block maps
    kind by kind onto the built-ins. Without one, NeMo RL's flat keys apply as NeMo RL
    defines them, a union: ``keep_top_k`` is `Hybrid` (top-k plus the latest step),
    where only multiples of ``save_period`` compete for the top k; without it, every
    multiple of ``save_period`` is kept; ``ft_keep_latest_k`` adds the k most recent;
    neither set keeps everything. ``protect_best`` also keeps the best of all steps.
    A ``ranking`` given here replaces the one ``metric_name`` describes, in retention
    too.
    """
    if ranking is None:
        ranking = (
            ByMetric(config.metric_name, config.higher_is_better)
            if config.metric_name is not None
            else ByRecency()
        )
    if config.retention is not None:
        return ranking, config.retention.build(ranking)
    if config.keep_top_k is None and config.ft_keep_latest_k is None:
        return ranking, KeepAll()
    periodic = config.save_period if config.save_period and config.save_period > 1 else None
    parts: list[RetentionPolicy] = []
    if config.keep_top_k is not None:
        parts.append(Hybrid(config.keep_top_k, ranking, periodic))
        if periodic is not None and config.keep_top_k > 0 and config.protect_best:
            # "Best" ranks every step; keep it so it is never pruned by a worse save.
            parts.append(TopK(1, ranking))
    elif periodic is not None:
        parts += [EveryNSteps(periodic), LatestN(1)]
    else:
        return ranking, KeepAll()
    if config.ft_keep_latest_k:
        parts.append(LatestN(config.ft_keep_latest_k))
    return ranking, parts[0] if len(parts) == 1 else AnyOf(tuple(parts))
