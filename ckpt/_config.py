"""The validated configuration of a checkpoint manager."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ckpt._errors import ConfigFileError


def _count(minimum: int, *, nullable: bool) -> BeforeValidator:
    """A before-validator giving our own message for "an integer >= minimum"."""
    accepted = f"an integer >= {minimum}" + (" or null" if nullable else "")

    def check(value: Any, info: ValidationInfo) -> Any:
        if value is None and nullable:
            return value
        # Integral floats (1e6 from Python or a Hydra override) are accepted as integers.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise PydanticCustomError(
                "ckpt_count",
                "`{field}` must be {accepted}, got {value}",
                {"field": info.field_name, "accepted": accepted, "value": repr(value)},
            )
        return value

    return BeforeValidator(check)


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`? " if close else ""


class _Strict(BaseModel):
    """Rejects unknown keys with a suggestion of the closest valid one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        valid = sorted(cls.model_fields)
        unknown = [key for key in data if key not in cls.model_fields]
        if unknown:
            problems = "; ".join(
                f"unknown key `{key}` (got {data[key]!r}), {_suggest(str(key), valid)}"
                for key in unknown
            )
            raise PydanticCustomError(
                "ckpt_unknown_key",
                "{problems}accepted keys: {accepted}",
                {"problems": problems, "accepted": ", ".join(valid)},
            )
        for name, field in cls.model_fields.items():
            if field.is_required() and name not in data:
                raise PydanticCustomError(
                    "ckpt_missing",
                    "`{field}` is required ({description}), got no `{field}` key",
                    {"field": name, "description": field.description or "no default"},
                )
        return data


RETENTION_KINDS = ("top_k", "hybrid", "latest_n", "every_n_steps", "keep_all", "any_of")


def _check_kind(value: Any) -> Any:
    """Name `kind` and the accepted kinds before pydantic's discriminator does, tersely."""
    if not isinstance(value, Mapping):
        return value
    accepted = ", ".join(RETENTION_KINDS)
    if "kind" not in value:
        typo = difflib.get_close_matches("kind", [str(key) for key in value], n=1, cutoff=0.6)
        hint = f"`{typo[0]}` looks like a typo of `kind`; " if typo else ""
        raise PydanticCustomError(
            "ckpt_kind",
            "`kind` is missing from the retention block (got keys {keys}); {hint}"
            "accepted kinds: {accepted}",
            {"keys": sorted(map(str, value)), "hint": hint, "accepted": accepted},
        )
    kind = value["kind"]
    if kind not in RETENTION_KINDS:
        raise PydanticCustomError(
            "ckpt_kind",
            "`kind` must be one of {accepted}, got {value}; {hint}",
            {
                "accepted": accepted,
                "value": repr(kind),
                "hint": _suggest(str(kind), list(RETENTION_KINDS)),
            },
        )
    return value


def _non_empty(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, list) and not value:
        raise PydanticCustomError(
            "ckpt_empty",
            "`{field}` of an any_of block needs at least 1 retention block, got []",
            {"field": info.field_name},
        )
    return value


class TopKSpec(_Strict):
    """``kind: top_k``: keep the ``k`` best by ``metric_name``, with no latest exemption."""

    kind: Literal["top_k"]
    k: Annotated[int, Field(ge=1), _count(1, nullable=False)]


class HybridSpec(_Strict):
    """``kind: hybrid``: keep the ``k`` best by ``metric_name`` plus the latest step."""

    kind: Literal["hybrid"]
    k: Annotated[int, Field(ge=0), _count(0, nullable=False)]


class LatestNSpec(_Strict):
    """``kind: latest_n``: keep the ``n`` most recent steps."""

    kind: Literal["latest_n"]
    n: Annotated[int, Field(ge=1), _count(1, nullable=False)]


class EveryNStepsSpec(_Strict):
    """``kind: every_n_steps``: keep the steps that are multiples of ``n``."""

    kind: Literal["every_n_steps"]
    n: Annotated[int, Field(ge=1), _count(1, nullable=False)]


class KeepAllSpec(_Strict):
    """``kind: keep_all``: never prune."""

    kind: Literal["keep_all"]


class AnyOfSpec(_Strict):
    """``kind: any_of``: keep what any of ``policies`` keeps."""

    kind: Literal["any_of"]
    policies: Annotated[list[RetentionSpec], Field(min_length=1), BeforeValidator(_non_empty)]


RetentionSpec = Annotated[
    TopKSpec | HybridSpec | LatestNSpec | EveryNStepsSpec | KeepAllSpec | AnyOfSpec,
    Field(discriminator="kind"),
    BeforeValidator(_check_kind),
]
AnyOfSpec.model_rebuild()

_DEADLINE = re.compile(r"^\d{2}:\d{2}:\d{2}:\d{2}$")


def _deadline(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 10:03:15:00 as a base-60 integer.
        raise PydanticCustomError(
            "ckpt_deadline",
            "`checkpoint_must_save_by` must be a string DD:HH:MM:SS, got the number {value} "
            "(YAML reads an unquoted 10:03:15:00 as a number): put the value in quotes",
            {"value": value},
        )
    return value


def _ranks_by_metric(spec: RetentionSpec) -> bool:
    if isinstance(spec, AnyOfSpec):
        return any(_ranks_by_metric(part) for part in spec.policies)
    return isinstance(spec, (TopKSpec, HybridSpec))


class CheckpointConfig(_Strict):
    """The checkpointing section of a run config.

    The seed's keys keep their meaning: with ``keep_top_k`` set, retention keeps the
    ``keep_top_k`` best checkpoints by ``metric_name`` plus the latest one. A
    ``retention`` block selects any built-in policy instead; giving both is an error.
    NeMo RL's other checkpointing keys are accepted so a full NeMo RL config
    validates; ``save_period``, ``ft_save_period`` and ``ft_keep_latest_k`` are used
    as NeMo RL defines them, the others are carried for the training loop and not
    used by the manager.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"title": "ckpt checkpointing config"},
    )

    enabled: bool = Field(
        True,
        description="Whether checkpointing is on. When off the manager only reads: "
        "it takes no lock, creates nothing, and refuses to write.",
    )
    checkpoint_dir: Path = Field(description="Directory holding the step_N checkpoints.")
    metric_name: str | None = Field(
        None,
        min_length=1,
        description="Key in training_info that ranks checkpoints (best checkpoint and "
        "top-k retention). Unset: rank by recency.",
    )
    higher_is_better: bool = Field(
        True, description="Whether a larger metric value is better (reward) or smaller (loss)."
    )
    keep_top_k: Annotated[int | None, Field(ge=0), _count(0, nullable=True)] = Field(
        None,
        description="Keep the k best checkpoints plus the latest one. Unset: keep all "
        "(except that with save_period > 1 and ft_keep_latest_k, steps off the period "
        "are kept only while among the ft_keep_latest_k most recent).",
    )
    retention: RetentionSpec | None = Field(
        None, description="A retention policy by kind; replaces keep_top_k/ft_keep_latest_k."
    )
    save_period: Annotated[int | None, Field(ge=1), _count(1, nullable=True)] = Field(
        None,
        description="Save every this many steps (should_save). With keep_top_k, only "
        "multiples of it compete for the top k, as in NeMo RL.",
    )
    ft_save_period: Annotated[int | None, Field(ge=1), _count(1, nullable=True)] = Field(
        None, description="NeMo RL's fault-tolerance save period; should_save honours it."
    )
    ft_keep_latest_k: Annotated[int | None, Field(ge=0), _count(0, nullable=True)] = Field(
        None, description="Also keep the k most recent checkpoints, whatever their metric."
    )
    fsync: bool = Field(
        True,
        description="fsync files and directories on commit and delete. Turn off only "
        "on storage where durability does not matter (tmpfs, tests).",
    )
    max_pending_saves: Annotated[int, Field(ge=1), _count(1, nullable=False)] = Field(
        1,
        description="How many save_async snapshots may wait to be written. Each is a "
        "host copy of the state, reused from save to save; save_async blocks when all "
        "are in use.",
    )
    # NeMo RL keys carried for the training loop; the manager does not use them.
    checkpoint_must_save_by: Annotated[str | None, BeforeValidator(_deadline)] = Field(
        None, description="NeMo RL: wall-clock deadline DD:HH:MM:SS (not used by ckpt)."
    )
    save_optimizer: bool = Field(True, description="NeMo RL (not used by ckpt).")
    is_async: bool = Field(False, description="NeMo RL (not used by ckpt).")
    model_save_format: str | None = Field(None, description="NeMo RL (not used by ckpt).")
    save_consolidated: bool = Field(False, description="NeMo RL (not used by ckpt).")
    model_cache_dir: str = Field("", description="NeMo RL (not used by ckpt).")
    model_repo_id: str = Field("", description="NeMo RL (not used by ckpt).")
    is_peft: bool = Field(False, description="NeMo RL (not used by ckpt).")
    peft_config: Any = Field(None, description="NeMo RL (not used by ckpt).")
    pretrained_checkpoint: str | None = Field(None, description="NeMo RL (not used by ckpt).")

    @model_validator(mode="after")
    def _consistent(self) -> CheckpointConfig:
        if self.retention is not None:
            shortcuts = [
                name
                for name in ("keep_top_k", "ft_keep_latest_k")
                if getattr(self, name) is not None
            ]
            if shortcuts:
                names = " and ".join(f"`{name}`" for name in shortcuts)
                raise PydanticCustomError(
                    "ckpt_conflict",
                    "{names} and `retention` both set a retention policy; keep one: "
                    "move it into `retention` (kind: hybrid for keep_top_k) or drop `retention`",
                    {"names": names},
                )
            if self.metric_name is None and _ranks_by_metric(self.retention):
                raise PydanticCustomError(
                    "ckpt_missing_metric",
                    "`retention` uses kind top_k or hybrid, which rank by `metric_name`, but "
                    "`metric_name` is not set (got None); set `metric_name` to a key of "
                    "training_info, or use kind latest_n to keep the most recent",
                    {},
                )
        deadline = self.checkpoint_must_save_by
        if deadline is not None and not _DEADLINE.match(deadline):
            raise PydanticCustomError(
                "ckpt_deadline",
                "`checkpoint_must_save_by` must look like DD:HH:MM:SS, got {value}",
                {"value": repr(deadline)},
            )
        return self


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> CheckpointConfig:
    """Validate a checkpointing config from a YAML file or a mapping.

    The file or mapping may hold the checkpointing section itself, or a whole run
    config with a top-level ``checkpointing:`` section (NeMo RL's layout), which is
    then used.

    Args:
        source: A path to a YAML file, or a mapping of config keys.

    Returns:
        The validated config.

    Raises:
        pydantic.ValidationError: If a key is unknown or a value is invalid; the
            message names the field, the value and what is accepted.
        ConfigFileError: If the file is not valid YAML.
        FileNotFoundError: If the file does not exist.
    """
    data = source if isinstance(source, Mapping) else read_config_file(source)
    return CheckpointConfig.model_validate(config_section(data)[0])


def read_config_file(path: str | os.PathLike[str]) -> Any:
    """The parsed contents of a YAML config file.

    Raises:
        ConfigFileError: If the file is not valid YAML.
        OSError: If it cannot be read.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {exc}") from exc


def config_section(data: Any) -> tuple[Any, tuple[str, ...]]:
    """The checkpointing section of ``data``, and the keys leading to it.

    A whole run config (NeMo RL's layout) holds it under ``checkpointing:``; anything
    else is taken as the section itself.
    """
    if isinstance(data, Mapping) and isinstance(data.get("checkpointing"), Mapping):
        return data["checkpointing"], ("checkpointing",)
    return data, ()
