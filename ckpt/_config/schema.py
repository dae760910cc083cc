"""The validated configuration of a checkpoint manager."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import signal
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ckpt._errors import ConfigFileError
from ckpt._text import short_repr
from ckpt.storage import redact_url, refuse_credentials, url_protocol
from ckpt.storage._open import same_place
from ckpt.storage.local import read_named_file
from policies import AnyOf, EveryNSteps, Hybrid, KeepAll, LatestN, Ranking, RetentionPolicy, TopK


def _count(minimum: int, *, nullable: bool, maximum: int | None = None) -> BeforeValidator:
    """A before-validator giving our own message for "an integer >= minimum"."""
    accepted = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum else "")
    accepted += " or null" if nullable else ""

    def check(value: Any, info: ValidationInfo) -> Any:
        if value is None and nullable:
            return value
        # Integral floats (1e6 from Python or a Hydra override) are accepted as integers.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            raise PydanticCustomError(
                "ckpt_count",
                "`{field}` must be {accepted}, got {value}",
                {"field": info.field_name, "accepted": accepted, "value": short_repr(value)},
            )
        return value

    return BeforeValidator(check)


def _flag(value: Any, info: ValidationInfo) -> Any:
    """Refuse anything but true, false (and null where allowed): "no" is not a boolean."""
    if value is None or isinstance(value, bool):
        return value  # None: pydantic refuses it where the field is not optional
    raise PydanticCustomError(
        "ckpt_bool",
        "`{field}` must be true or false, got {value}",
        {"field": info.field_name, "value": short_repr(value)},
    )


Flag = Annotated[bool, BeforeValidator(_flag)]
"""A config boolean: YAML's true/false only, never "no", "yes", 0 or 1."""


# What each kind of value pydantic refuses should have been, in a user's words.
_EXPECTED = {
    "float_parsing": "a number",
    "float_type": "a number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _reworded(item: Any) -> Any:
    """One of pydantic's errors as ckpt says it: the field, what it takes, what came."""
    if str(item["type"]).startswith("ckpt_"):
        return {"type": PydanticCustomError(item["type"], item["msg"]), "loc": item["loc"]}
    field = ".".join(str(part) for part in item["loc"] if part not in RETENTION_KINDS)
    ctx = item.get("ctx") or {}
    if item["type"] == "literal_error":
        expected = f"one of {ctx.get('expected', '')}"
    elif item["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
        limit = next(iter(ctx.values()), "")
        expected = f"a number {sign.get(item['type'], '<=')} {limit}"
    else:
        expected = _EXPECTED.get(item["type"], item["msg"][:1].lower() + item["msg"][1:])
    got = "nothing" if "input" not in item else short_repr(item["input"])
    return {
        "type": PydanticCustomError(
            "ckpt_" + str(item["type"]),
            "`{field}` must be {expected}, got {value}",
            {"field": field or "config", "expected": expected, "value": redact_url(got)},
        ),
        "loc": item["loc"],
    }


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) and len(key) <= 40 else short_repr(key, 40)


# A block with at most this many keys lists them all in an unknown key's message.
_LISTED_KEYS = 6


def _close(name: str, valid: list[str], n: int = 1) -> list[str]:
    """The ``n`` valid names closest to ``name``: only close ones for one, any for more."""
    return difflib.get_close_matches(name[:100], valid, n=n, cutoff=0.6 if n == 1 else 0.0)


def _suggest(name: str, valid: list[str]) -> str:
    """``", did you mean `x`?"`` for the closest valid name, or nothing."""
    close = _close(name, valid)
    return f", did you mean `{close[0]}`?" if close else ""


class _Strict(BaseModel):
    """Rejects unknown keys with a suggestion of the closest valid one."""

    # A value can hold a secret (credentials in a URL): messages show ckpt's own words.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        valid = sorted(cls.model_fields)
        unknown = [key for key in data if key not in cls.model_fields]
        if unknown:
            problems = "; ".join(
                f"unknown key `{_key_text(key)}` (got "
                f"{short_repr(data[key])}){_suggest(str(key), valid)}"
                for key in unknown[:5]
            )
            if len(unknown) > 5:
                problems += f"; and {len(unknown) - 5} more unknown keys"
            if len(valid) <= _LISTED_KEYS:
                problems += f"; accepted keys: {', '.join(valid)}"
            elif not any(_close(str(key), valid) for key in unknown[:5]):
                problems += f"; the closest keys: {', '.join(_close(str(unknown[0]), valid, 3))}"
            raise PydanticCustomError("ckpt_unknown_key", "{problems}", {"problems": problems})
        for name, field in cls.model_fields.items():
            if field.is_required() and name not in data:
                raise PydanticCustomError(
                    "ckpt_missing",
                    "`{field}` is required ({description}), got no `{field}` key",
                    {"field": name, "description": field.description or "no default"},
                )
        return data


def _kinds() -> tuple[str, ...]:
    """The ``kind`` of each spec of `RetentionSpec`, in its order."""
    union = typing.get_args(RetentionSpec)[0]
    return tuple(
        typing.get_args(spec.model_fields["kind"].annotation)[0] for spec in typing.get_args(union)
    )


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
            {"keys": short_repr(sorted(map(str, value))), "hint": hint, "accepted": accepted},
        )
    kind = value["kind"]
    if kind not in RETENTION_KINDS:
        raise PydanticCustomError(
            "ckpt_kind",
            "`kind` must be one of {accepted}, got {value}{hint}",
            {
                "accepted": accepted,
                "value": short_repr(kind),
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

    def build(self, ranking: Ranking) -> RetentionPolicy:
        """`policies.TopK`."""
        return TopK(self.k, ranking)


class HybridSpec(_Strict):
    """``kind: hybrid``: keep the ``k`` best by ``metric_name`` plus the latest step."""

    kind: Literal["hybrid"]
    k: Annotated[int, Field(ge=0), _count(0, nullable=False)]

    def build(self, ranking: Ranking) -> RetentionPolicy:
        """`policies.Hybrid`."""
        return Hybrid(self.k, ranking)


class LatestNSpec(_Strict):
    """``kind: latest_n``: keep the ``n`` most recent steps."""

    kind: Literal["latest_n"]
    n: Annotated[int, Field(ge=1), _count(1, nullable=False)]

    def build(self, ranking: Ranking) -> RetentionPolicy:
        """`policies.LatestN`."""
        return LatestN(self.n)


class EveryNStepsSpec(_Strict):
    """``kind: every_n_steps``: keep the steps that are multiples of ``n``."""

    kind: Literal["every_n_steps"]
    n: Annotated[int, Field(ge=1), _count(1, nullable=False)]

    def build(self, ranking: Ranking) -> RetentionPolicy:
        """`policies.EveryNSteps`."""
        return EveryNSteps(self.n)


class KeepAllSpec(_Strict):
    """``kind: keep_all``: never prune."""

    kind: Literal["keep_all"]

    def build(self, ranking: Ranking) -> RetentionPolicy:
        """`policies.KeepAll`."""
        return KeepAll()


class AnyOfSpec(_Strict):
    """``kind: any_of``: keep what any of ``policies`` keeps."""

    kind: Literal["any_of"]
    policies: Annotated[list[RetentionSpec], Field(min_length=1), BeforeValidator(_non_empty)]

    def build(self, ranking: Ranking) -> RetentionPolicy:
        """`policies.AnyOf` of each block's policy."""
        return AnyOf(tuple(part.build(ranking) for part in self.policies))


# Each kind is its spec class above (its fields and the policy it builds) and its place
# in this union; the accepted kinds are read from it.
RetentionSpec = Annotated[
    TopKSpec | HybridSpec | LatestNSpec | EveryNStepsSpec | KeepAllSpec | AnyOfSpec,
    Field(discriminator="kind"),
    BeforeValidator(_check_kind),
]
AnyOfSpec.model_rebuild()
RETENTION_KINDS = _kinds()

_DEADLINE = re.compile(r"^\d{2}:\d{2}:\d{2}:\d{2}$")


def _deadline(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 10:03:15:00 as a base-60 integer.
        raise PydanticCustomError(
            "ckpt_deadline",
            "`checkpoint_must_save_by` must be a string DD:HH:MM:SS, got the number {value} "
            "(YAML reads an unquoted 10:03:15:00 as a number): put the value in quotes",
            {"value": short_repr(value)},
        )
    return value


# Signals a handler can never catch, or that mean something else to the interpreter.
_UNCATCHABLE = {"SIGKILL", "SIGSTOP"}


def _signal_names(value: Any) -> Any:
    """Signal names (``SIGTERM``, ``TERM``, ``sigusr1``) as ``SIGTERM``, each once."""
    if not isinstance(value, (list, tuple)):
        return value  # pydantic says what a list is
    known = sorted(s.name for s in signal.Signals if not s.name.startswith("SIG_"))
    names: list[str] = []
    for item in value:
        text = item.upper() if isinstance(item, str) else ""
        name = text if text.startswith("SIG") else "SIG" + text
        if name not in known or name in _UNCATCHABLE:
            why = (
                f"{name} cannot be caught by any process"
                if name in _UNCATCHABLE
                else "not a signal of this platform"
            )
            raise PydanticCustomError(
                "ckpt_signal",
                "`preemption_signals` must list signal names such as SIGTERM or SIGUSR1, "
                "got {value} ({why})",
                {"value": short_repr(item), "why": why},
            )
        if name not in names:
            names.append(name)
    return names


def _checkpoint_url(value: Any, protocol: str, rest: str, field: str) -> str:
    """A URL ``checkpoint_dir`` on a store: kept as a string, refused at a bucket's root."""
    key = rest.strip("/")
    if ("/" not in key and protocol != "memory") or not key:
        raise PydanticCustomError(
            "ckpt_checkpoint_dir",
            "`{field}` must name the run's own prefix, got {value}, which is the "
            "root of a bucket: a writer there would take every step_N in it for its own "
            "and prune it; use a prefix of the run, such as {example}",
            {
                "field": field,
                "value": short_repr(value),
                "example": f"{protocol}://{key or 'bucket'}/runs/run1",
            },
        )
    return f"{protocol}://{rest.rstrip('/')}"


def _checkpoint_dir(value: Any, info: ValidationInfo) -> Any:
    """Refuse the paths where a writer would prune directories that are not the run's."""
    # The same rules hold for `checkpoint_dir` and for the replica, `replicate.to`.
    field = "checkpoint_dir" if info.field_name == "checkpoint_dir" else "replicate.to"
    if not isinstance(value, (str, os.PathLike)):
        return value  # pydantic says what a path is
    text = os.fspath(value)
    if isinstance(value, str):
        protocol = url_protocol(value)
        try:
            refuse_credentials(value)
        except ValueError as exc:
            raise PydanticCustomError("ckpt_checkpoint_dir", str(exc)) from None
        if protocol is not None:
            return _checkpoint_url(value, protocol, value.split("://", 1)[1], field)
        if value.lower().startswith(("file://", "local://")):
            text = value.split("://", 1)[1]  # local disk, spelt as a URL: its guarantees
    if isinstance(text, bytes) or not text.strip():
        raise PydanticCustomError(
            "ckpt_checkpoint_dir",
            "`{field}` must name the run's own directory, got {value}: an empty path "
            "would mean the current directory, and a writer prunes every step_N "
            "directory it finds there; give a path such as results/run1",
            {"field": field, "value": short_repr(value)},
        )
    absolute = os.path.abspath(text)
    roots = {os.path.abspath(os.sep): "the file system's root"}
    with contextlib.suppress(RuntimeError, KeyError):  # no home directory known
        roots.setdefault(os.path.abspath(Path.home()), "your home directory")
    if absolute in roots:
        raise PydanticCustomError(
            "ckpt_checkpoint_dir",
            "`{field}` must name the run's own directory, got {value}, which is "
            "{what}: a writer there would take every step_N directory in it for its own "
            "and prune it; use a directory of the run, such as {example}",
            {
                "field": field,
                "value": short_repr(value),
                "what": roots[absolute],
                "example": os.path.join(absolute, "runs", "run1"),
            },
        )
    return Path(text)


CheckpointPlace = Annotated[
    Path | str,
    BeforeValidator(_checkpoint_dir),
    WithJsonSchema({"type": "string", "format": "path-or-url"}),
]
"""A directory of checkpoints: a `Path`, or a URL of an fsspec store kept as a string."""


_MAX_DEPTH = 32


def _depth_error(where: str) -> PydanticCustomError:
    return PydanticCustomError(
        "ckpt_too_deep",
        "the config is nested more than {limit} levels deep (at {where}); a checkpointing "
        "config is a few levels deep: look for a runaway any_of or a pasted structure",
        {"limit": _MAX_DEPTH, "where": where},
    )


def _check_depth(data: Any) -> None:
    """Refuse input nested deeper than `_MAX_DEPTH`, before anything recurses into it."""
    pending: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    seen: set[int] = set()  # shared or circular containers are walked once
    while pending:
        value, where = pending.pop()
        if not isinstance(value, (Mapping, list, tuple)) or id(value) in seen:
            continue
        if len(where) > _MAX_DEPTH:
            parts = [_key_text(key) for key in (*where[:4], "...", *where[-2:])]
            raise _depth_error(".".join(parts))
        seen.add(id(value))
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        pending.extend((item, (*where, key)) for key, item in items)


def _ranks_by_metric(spec: RetentionSpec) -> bool:
    if isinstance(spec, AnyOfSpec):
        return any(_ranks_by_metric(part) for part in spec.policies)
    return isinstance(spec, (TopKSpec, HybridSpec))


class ReplicateSpec(_Strict):
    """``replicate:``: a second tier that every committed checkpoint is copied to.

    Saves commit to ``checkpoint_dir`` (a fast local disk) and return; a background
    thread uploads each committed checkpoint to ``to`` and commits it there. Retention
    governs the replica; the local tier keeps the ``keep_local`` newest checkpoints,
    and never drops one before its replica is committed.
    """

    to: CheckpointPlace = Field(
        description="Where the replica goes: anything checkpoint_dir takes (a path, or "
        "a URL such as s3://bucket/runs/run1), but not checkpoint_dir itself."
    )
    keep_local: Annotated[int, Field(ge=1), _count(1, nullable=False)] = Field(
        2, description="How many of the newest checkpoints stay in checkpoint_dir."
    )
    storage_options: dict[str, Any] | None = Field(
        None,
        repr=False,  # it may hold credentials: never in a repr or a log line
        description="For a URL `to`: options for its fsspec file system, as "
        "checkpoint_dir's storage_options are.",
    )


class PretrainedCheckpoint(BaseModel):
    """NeMo RL's ``pretrained_checkpoint``: a Megatron checkpoint to take initial weights from.

    Other keys are kept, as NeMo RL keeps them.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    path: str = Field(description="The checkpoint: an iteration directory or a root of them.")
    format: Literal["megatron_bridge", "megatron_lm"] = Field(
        description="megatron_bridge (written by NeMo RL) or megatron_lm (upstream)."
    )


class CheckpointConfig(_Strict):
    """The checkpointing section of a run config.

    NeMo RL's keys keep their meaning: with ``keep_top_k`` set, retention keeps the
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
        hide_input_in_errors=True,
        json_schema_extra={"title": "ckpt checkpointing config"},
    )

    enabled: Flag = Field(
        True,
        description="Whether checkpointing is on. When off the manager only reads: "
        "it takes no lock, creates nothing, and refuses to write.",
    )
    checkpoint_dir: CheckpointPlace = Field(
        description="Directory holding the step_N checkpoints: the run's own directory "
        "(not empty, not / and not the home directory, where a writer would take every "
        "step_N for its own). A URL (s3://bucket/run, gs://..., memory://...) puts them "
        "on that fsspec store, kept as a string; a plain path is a Path."
    )
    storage_options: dict[str, Any] | None = Field(
        None,
        repr=False,  # it may hold credentials: never in a repr or a log line
        description="For a URL checkpoint_dir: options for its fsspec file system "
        "(credentials, client_kwargs with an endpoint_url...), as pandas and Lightning "
        "take them. Unset: the file system reads the environment (AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID...).",
    )
    lease_seconds: Annotated[float, Field(gt=0, le=86400)] = Field(
        30.0,
        description="On a store without locks (S3): how long the writer's lease lasts "
        "unrenewed. It is renewed every third of this; a crashed writer blocks a restart "
        "for at most this long.",
    )
    attempt_grace_seconds: Annotated[float, Field(ge=0)] = Field(
        600.0,
        description="On a store without locks: how old an uncommitted attempt "
        "(step_N.<token>/) must be before recovery removes it, so that a save another "
        "process is still writing is never taken for a crash's leftover.",
    )
    collective_timeout_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        300.0,
        description="In a distributed job: how long a rank waits for the others in one "
        "collective call (a save, a commit, a query) before it raises "
        "CollectiveTimeoutError naming the ranks that did not answer.",
    )
    metric_name: str | None = Field(
        None,
        min_length=1,
        description="Key in training_info that ranks checkpoints (best checkpoint and "
        "top-k retention). Unset: rank by recency.",
    )
    higher_is_better: Flag = Field(
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
    fsync: Flag = Field(
        True,
        description="fsync files and directories on commit and delete. Turn off only "
        "on storage where durability does not matter (tmpfs, tests).",
    )
    max_pending_saves: Annotated[
        int, Field(ge=1, le=1024), _count(1, nullable=False, maximum=1024)
    ] = Field(
        1,
        description="How many save_async snapshots may wait to be written. Each is a "
        "host copy of the state, reused from save to save; save_async blocks when all "
        "are in use.",
    )
    commit_protocol: Literal["auto", "rename", "manifest"] = Field(
        "auto",
        description="How a save is committed: `rename` (a tmp_step_N directory renamed "
        "to step_N, the layout NeMo RL uses), `manifest` (files written under "
        "step_N.<token>, then step_N.manifest.json written last), or `auto`: rename "
        "where the storage can rename atomically, else manifest.",
    )
    preemption_signals: Annotated[list[str], BeforeValidator(_signal_names)] = Field(
        default_factory=list,
        description="Signals that announce a preemption (SIGTERM from Slurm, Kubernetes or "
        "a spot reclaim): on one, the manager sets `preempted` at the next should_save, "
        "which then returns true, and finishes pending saves within preemption_grace_s. "
        "Empty (the default): ckpt installs no signal handler.",
    )
    preemption_grace_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        30.0,
        description="How long the job has between a preemption signal and its kill (30 s "
        "for Kubernetes and Slurm's default; 120 s for a spot reclaim). If no save was "
        "started halfway through it, the newest save_async snapshot is committed at once.",
    )
    replicate: ReplicateSpec | None = Field(
        None,
        description="A second tier: each committed checkpoint is uploaded in the "
        "background to replicate.to and committed there (see the Replication page). "
        "Unset: checkpoint_dir is the only copy.",
    )
    # NeMo RL keys carried for the training loop; the manager does not use them.
    checkpoint_must_save_by: Annotated[str | None, BeforeValidator(_deadline)] = Field(
        None, description="NeMo RL: wall-clock deadline DD:HH:MM:SS (not used by ckpt)."
    )
    save_optimizer: Flag = Field(True, description="NeMo RL (not used by ckpt).")
    is_async: Flag = Field(False, description="NeMo RL (not used by ckpt).")
    model_save_format: str | None = Field(None, description="NeMo RL (not used by ckpt).")
    save_consolidated: Flag = Field(False, description="NeMo RL (not used by ckpt).")
    model_cache_dir: str = Field("", description="NeMo RL (not used by ckpt).")
    model_repo_id: str = Field("", description="NeMo RL (not used by ckpt).")
    is_peft: Flag = Field(False, description="NeMo RL (not used by ckpt).")
    peft_config: Any = Field(None, description="NeMo RL (not used by ckpt).")
    pretrained_checkpoint: PretrainedCheckpoint | str | None = Field(
        None,
        description="NeMo RL: initial weights from a Megatron checkpoint, as {path, format} "
        "(a plain path, the older form, is accepted too); not used by ckpt.",
    )
    save_data_plane: Flag = Field(
        False, description="NeMo RL: include the data plane in checkpoints (not used by ckpt)."
    )
    load_replay_buffer: Flag | None = Field(
        None,
        description="NeMo RL: restore the replay buffer on resume; unset and true both "
        "restore, only false opts out (not used by ckpt).",
    )
    protect_best: Flag = Field(
        False,
        description="With keep_top_k and save_period > 1, also keep the best checkpoint of "
        "all steps, not only of the save_period multiples, so get_best_checkpoint_path "
        "never names one the next save prunes. Off: NeMo RL's rule exactly.",
    )

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        _check_depth(data)
        return data

    @model_validator(mode="wrap")
    @classmethod
    def _in_our_words(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        """Every message names its field and the value received, in ckpt's words."""
        try:
            return handler(data)
        except ValidationError as error:
            raise ValidationError.from_exception_data(
                error.title,
                [_reworded(item) for item in error.errors(include_url=False)],
                hide_input=True,
            ) from None

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
        replicate = self.replicate
        if replicate is not None and same_place(replicate.to, self.checkpoint_dir):
            raise PydanticCustomError(
                "ckpt_replicate",
                "`replicate.to` must be a place apart from `checkpoint_dir` ({dir}), got "
                "{value}, the same place or one inside the other: the replica is a second "
                "copy, somewhere else (an s3:// prefix, another disk)",
                {
                    "value": short_repr(str(replicate.to)),
                    "dir": short_repr(str(self.checkpoint_dir)),
                },
            )
        deadline = self.checkpoint_must_save_by
        if deadline is not None and not _DEADLINE.match(deadline):
            raise PydanticCustomError(
                "ckpt_deadline",
                "`checkpoint_must_save_by` must look like DD:HH:MM:SS, got {value}",
                {"value": short_repr(deadline)},
            )
        return self


def as_config(config: Any) -> CheckpointConfig:
    """A `CheckpointConfig` from one, a mapping, or a pydantic model of the same keys.

    A pydantic model (NeMo RL's ``CheckpointingConfig``, say) is dumped with its extra
    keys and validated here like a mapping.

    Raises:
        pydantic.ValidationError: If the keys do not validate.
        TypeError: If ``config`` is none of these.
    """
    if isinstance(config, CheckpointConfig):
        return config
    if isinstance(config, Mapping):
        return CheckpointConfig.model_validate(config)
    if isinstance(config, BaseModel):
        return CheckpointConfig.model_validate(config.model_dump())
    raise TypeError(
        f"the config must be a CheckpointConfig, a mapping of config keys or a pydantic "
        f"model of them (NeMo RL's CheckpointingConfig), got {type(config).__name__}"
    )


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
        ConfigFileError: If the file is not UTF-8 YAML, or is too large or too deeply
            nested (or expands too far through aliases) to be a checkpointing config.
        FileNotFoundError: If the file does not exist.
    """
    data = source if isinstance(source, Mapping) else read_config_file(source)
    section, where = config_section(data)
    if not isinstance(source, Mapping) and isinstance(section, Mapping):
        _check_section(section, where, source)
    return CheckpointConfig.model_validate(section)


def _check_section(data: Mapping[str, Any], where: tuple[str, ...], path: Any) -> None:
    """Refuse a run config that has no ``checkpointing:`` section, saying so."""
    if where or not data or any(key in CheckpointConfig.model_fields for key in data):
        return
    keys = ", ".join(f"`{_key_text(key)}`" for key in list(data)[:3])
    raise ConfigFileError(
        f"{os.fspath(path)} has no `checkpointing:` section, and none of its keys "
        f"({keys}{', ...' if len(data) > 3 else ''}) is a checkpointing key: give "
        f"the section itself, or a run config with a `checkpointing:` key"
    )


def read_config_file(path: str | os.PathLike[str]) -> Any:
    """The parsed contents of a YAML config file.

    Raises:
        ConfigFileError: If the file is not UTF-8 YAML, is over 16 MiB, nests more than
            32 levels, or expands through aliases to more than 100,000 values.
        OSError: If it cannot be read.
    """
    data = read_named_file(path, limit=_MAX_FILE)
    if len(data) > _MAX_FILE:
        raise ConfigFileError(
            f"{path} is larger than {_MAX_FILE >> 20} MiB; a checkpointing config is a few "
            f"lines (is it the right file?)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            f"{path} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); save "
            f"it as UTF-8"
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, path)
        _check_duplicate_keys(node, path)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise ConfigFileError(_yaml_error(path, text, exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {short_repr(exc, 600)}") from exc
    except RecursionError:
        raise ConfigFileError(f"{path} is nested too deeply to be a checkpointing config") from None
    finally:
        loader.dispose()


_MAX_FILE = 16 << 20
_MAX_VALUES = 100_000


def _check_expansion(root: yaml.Node, path: str | os.PathLike[str]) -> None:
    """Refuse YAML whose aliases expand to more than `_MAX_VALUES` values, or nest deeply.

    An alias is shared, not copied, when loaded, but every message or check that walks
    the result pays for it expanded: a few hundred bytes of nested aliases (an "alias
    bomb") expand to billions of values.
    """
    sizes: dict[int, int] = {}  # expanded size of each node already walked
    open_nodes: set[int] = set()
    pending: list[tuple[yaml.Node, bool, int]] = [(root, False, 0)]
    while pending:
        node, done, depth = pending.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > _MAX_VALUES:
                raise ConfigFileError(
                    f"{path} expands to more than {_MAX_VALUES:,} values through YAML "
                    f"aliases (an alias bomb?); a checkpointing config has a few dozen"
                )
            continue
        if key in open_nodes:
            raise ConfigFileError(f"{path} holds a YAML alias that refers to itself")
        if depth > _MAX_DEPTH:
            raise ConfigFileError(
                f"{path} is nested more than {_MAX_DEPTH} levels deep; a checkpointing "
                f"config is a few levels deep"
            )
        open_nodes.add(key)
        pending.append((node, True, depth))
        pending.extend((child, False, depth + 1) for child in children if id(child) not in sizes)


def _yaml_error(path: str | os.PathLike[str], text: str, error: yaml.MarkedYAMLError) -> str:
    """PyYAML's complaint as a person reads it: where, what, and the line with a caret."""
    mark = error.problem_mark or error.context_mark
    what = "; ".join(part for part in (error.context, error.problem) if part) or "a syntax error"
    if mark is None:
        return f"{path} is not valid YAML: {what}"
    lines = text.splitlines() or [""]
    # As written, leading spaces and all: a stray space can be the whole mistake.
    shown = lines[min(mark.line, len(lines) - 1)].rstrip()[:200].expandtabs(1)
    number = str(mark.line + 1)
    gutter = " " * len(number)
    return (
        f"{path} is not valid YAML at line {mark.line + 1}, column {mark.column + 1}: "
        f"{what}:\n  {number} | {shown}\n  {gutter} | {' ' * min(mark.column, 200)}^"
    )


def _check_duplicate_keys(root: yaml.Node, path: str | os.PathLike[str]) -> None:
    """Refuse a mapping that gives a key twice: YAML would keep the second silently."""
    seen_nodes: set[int] = set()
    pending = [root]
    while pending:
        node = pending.pop()
        if id(node) in seen_nodes:
            continue  # an alias: walked already
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue
                line = key.start_mark.line + 1
                if key.value in first:
                    raise ConfigFileError(
                        f"{path} gives the key `{key.value[:80]}` twice, on line "
                        f"{first[key.value]} and line {line}; YAML would keep only the "
                        f"second: remove one"
                    )
                first[key.value] = line
        pending.extend(_children(node))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def config_section(data: Any) -> tuple[Any, tuple[str, ...]]:
    """The checkpointing section of ``data``, and the keys leading to it.

    A whole run config (NeMo RL's layout) holds it under ``checkpointing:``; anything
    else is taken as the section itself.
    """
    if isinstance(data, Mapping) and isinstance(data.get("checkpointing"), Mapping):
        return data["checkpointing"], ("checkpointing",)
    return data, ()


def read_config_section(
    path: str | os.PathLike[str],
) -> tuple[Mapping[str, Any], tuple[str, ...]]:
    """The checkpointing keys of a YAML file, and the keys that lead to them.

    For a whole NeMo RL run config the keys are its ``checkpointing:`` block, and the
    keys leading there are ``("checkpointing",)``; any other file is the block itself.
    Tools use the second value to say where in the file an invalid key is (see
    `explain_config_error`).

    Raises:
        ConfigFileError: If the file is not UTF-8 YAML (see `load_config`), or its
            checkpointing block is not a mapping.
        OSError: If it cannot be read.
    """
    data, where = config_section(read_config_file(path))
    if not isinstance(data, Mapping):
        raise ConfigFileError(
            f"{os.fspath(path)} holds {type(data).__name__}, not a mapping of config keys"
        )
    _check_section(data, where, path)
    return data, where


def explain_config_error(error: ValidationError, source: str, where: tuple[str, ...] = ()) -> str:
    """A validation error of a config as lines for a person: one per invalid key.

    Args:
        error: What validating the config raised.
        source: What the config came from (a file name), for the first line.
        where: The keys leading to the checkpointing block in ``source``, as
            `read_config_section` returns them.
    """
    lines = [f"{source} is not a valid checkpointing config:"]
    for item in error.errors(include_url=False):
        loc = ""
        for part in (*where, *item["loc"]):
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part not in RETENTION_KINDS:  # pydantic's tag of a retention block
                loc += f".{part}" if loc else str(part)
        lines.append(f"  {loc}: {item['msg']}" if loc else f"  {item['msg']}")
    return "\n".join(lines)
