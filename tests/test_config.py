"""Config validation (`CheckpointConfig`, `load_config`) and `policies_from_config`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

import ckpt
import policies
from ckpt import CheckpointConfig, ConfigFileError, load_config, policies_from_config
from policies import (
    AnyOf,
    ByMetric,
    ByRecency,
    CheckpointView,
    EveryNSteps,
    Hybrid,
    KeepAll,
    LatestN,
    TopK,
    decide,
)

SEED = {
    "enabled": True,
    "checkpoint_dir": "results/grpo",
    "metric_name": "val_reward",
    "higher_is_better": True,
    "keep_top_k": 3,
}

NEMO_RL_SECTION = """\
enabled: true
checkpoint_dir: results/grpo
metric_name: "val:accuracy"
higher_is_better: false
keep_top_k: 3
save_period: 10
ft_save_period: 2
ft_keep_latest_k: 4
checkpoint_must_save_by: "00:03:15:00"
save_optimizer: false
is_async: true
model_save_format: safetensors
save_consolidated: true
model_cache_dir: /cache/hf
model_repo_id: meta-llama/Llama-3.2-1B
is_peft: true
peft_config:
  dim: 8
  alpha: 32
  target_modules: [q_proj, v_proj]
pretrained_checkpoint: /ckpts/base
"""

RETENTION_KINDS = ("top_k", "hybrid", "latest_n", "every_n_steps", "keep_all", "any_of")

BASE: dict[str, Any] = {"checkpoint_dir": "/ckpts"}


def _invalid(data: Any) -> str:
    """Validate ``data``, expect a pydantic ValidationError, return its message."""
    with pytest.raises(pydantic.ValidationError) as info:
        CheckpointConfig.model_validate(data)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- accepted shapes -------------------------------------------------------------------


def test_seed_flat_dict_validates_with_its_meaning() -> None:
    for config in (CheckpointConfig(**SEED), load_config(SEED)):
        assert config.enabled is True
        assert config.checkpoint_dir == Path("results/grpo")
        assert isinstance(config.checkpoint_dir, Path)
        assert config.metric_name == "val_reward"
        assert config.higher_is_better is True
        assert config.keep_top_k == 3
        assert config.retention is None
        assert config.save_period is None
        assert config.ft_keep_latest_k is None


def test_seed_dict_with_null_keep_top_k_and_defaults() -> None:
    config = load_config({"checkpoint_dir": "d", "metric_name": "loss", "keep_top_k": None})
    assert config.keep_top_k is None
    assert config.enabled is True
    assert config.higher_is_better is True
    assert config.fsync is True


def test_config_is_frozen() -> None:
    config = CheckpointConfig(**SEED)
    with pytest.raises(pydantic.ValidationError):
        config.keep_top_k = 5  # type: ignore[misc]
    assert config.keep_top_k == 3


def test_yaml_file_holding_just_the_section(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "ckpt.yaml",
        "enabled: false\ncheckpoint_dir: /runs/a\nmetric_name: loss\n"
        "higher_is_better: false\nkeep_top_k: 2\n",
    )
    for source in (path, str(path)):
        config = load_config(source)
        assert config.enabled is False
        assert config.checkpoint_dir == Path("/runs/a")
        assert config.metric_name == "loss"
        assert config.higher_is_better is False
        assert config.keep_top_k == 2


def test_yaml_file_holding_a_whole_run_config(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "run.yaml",
        "grpo:\n  num_prompts_per_step: 32\n"
        "policy:\n  model_name: Qwen/Qwen2.5-1.5B\n"
        "checkpointing:\n"
        "  enabled: true\n  checkpoint_dir: results/run\n  metric_name: val_reward\n"
        "  higher_is_better: true\n  keep_top_k: 5\n  save_period: 20\n"
        "logger:\n  wandb_enabled: false\n",
    )
    config = load_config(path)
    assert config.checkpoint_dir == Path("results/run")
    assert config.metric_name == "val_reward"
    assert config.keep_top_k == 5
    assert config.save_period == 20


def test_whole_run_config_section_errors_are_reported(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "run.yaml",
        "policy: {model_name: m}\ncheckpointing:\n  checkpoint_dir: d\n  keep_top_k: -2\n",
    )
    with pytest.raises(pydantic.ValidationError, match="`keep_top_k`"):
        load_config(path)


def test_full_nemo_rl_section_from_yaml(tmp_path: Path) -> None:
    for text in (NEMO_RL_SECTION, "checkpointing:\n" + _indent(NEMO_RL_SECTION)):
        config = load_config(_write(tmp_path / "nemo.yaml", text))
        assert config.enabled is True
        assert config.checkpoint_dir == Path("results/grpo")
        assert config.metric_name == "val:accuracy"
        assert config.higher_is_better is False
        assert config.keep_top_k == 3
        assert config.save_period == 10
        assert config.ft_save_period == 2
        assert config.ft_keep_latest_k == 4
        assert config.checkpoint_must_save_by == "00:03:15:00"
        assert config.save_optimizer is False
        assert config.is_async is True
        assert config.model_save_format == "safetensors"
        assert config.save_consolidated is True
        assert config.model_cache_dir == "/cache/hf"
        assert config.model_repo_id == "meta-llama/Llama-3.2-1B"
        assert config.is_peft is True
        assert config.peft_config == {"dim": 8, "alpha": 32, "target_modules": ["q_proj", "v_proj"]}
        assert config.pretrained_checkpoint == "/ckpts/base"


def test_unquoted_deadline_in_yaml_stays_a_string(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "checkpoint_dir: d\ncheckpoint_must_save_by: 00:03:15:00\n")
    assert load_config(path).checkpoint_must_save_by == "00:03:15:00"


def test_full_nemo_rl_section_as_dict_with_nulls() -> None:
    config = load_config(
        {
            **SEED,
            "save_period": 10,
            "ft_save_period": None,
            "ft_keep_latest_k": None,
            "checkpoint_must_save_by": None,
            "save_optimizer": True,
            "is_async": False,
            "model_save_format": None,
            "save_consolidated": False,
            "model_cache_dir": "",
            "model_repo_id": "",
            "is_peft": False,
            "peft_config": None,
            "pretrained_checkpoint": None,
        }
    )
    assert config.save_period == 10
    assert config.checkpoint_must_save_by is None
    assert config.model_save_format is None


def _indent(text: str) -> str:
    return "".join("  " + line + "\n" for line in text.splitlines())


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("keep_top_k", 1e6, 1_000_000),
        ("keep_top_k", 3.0, 3),
        ("keep_top_k", 0.0, 0),
        ("save_period", 10.0, 10),
        ("ft_save_period", 2.0, 2),
        ("ft_keep_latest_k", 4.0, 4),
    ],
)
def test_integral_floats_are_accepted_as_int(field: str, value: float, expected: int) -> None:
    config = load_config({**BASE, field: value})
    got = getattr(config, field)
    assert got == expected
    assert type(got) is int


def test_integral_float_from_yaml_is_accepted_as_int(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path / "c.yaml", "checkpoint_dir: d\nkeep_top_k: 1.0e+6\n"))
    assert config.keep_top_k == 1_000_000
    assert type(config.keep_top_k) is int


def test_retention_integral_float_is_accepted_as_int() -> None:
    config = load_config({**BASE, "retention": {"kind": "latest_n", "n": 3.0}})
    assert policies_from_config(config)[1] == LatestN(3)


# --- validation errors -----------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, -100])
def test_negative_keep_top_k(value: int) -> None:
    message = _invalid({**SEED, "keep_top_k": value})
    assert "`keep_top_k`" in message
    assert f"got {value}" in message
    assert "an integer >= 0 or null" in message


@pytest.mark.parametrize("value", [True, False])
def test_bool_keep_top_k(value: bool) -> None:
    message = _invalid({**SEED, "keep_top_k": value})
    assert "`keep_top_k`" in message
    assert f"got {value}" in message
    assert "an integer >= 0" in message


@pytest.mark.parametrize("value", [1.5, float("nan"), float("inf"), "3"])
def test_non_integral_keep_top_k(value: object) -> None:
    message = _invalid({**SEED, "keep_top_k": value})
    assert "`keep_top_k`" in message
    assert f"got {value!r}" in message
    assert "an integer >= 0" in message


def test_typo_key_suggests_the_right_one() -> None:
    message = _invalid({**BASE, "keep_topk": 3})
    assert "`keep_topk`" in message
    assert "got 3" in message
    assert "did you mean `keep_top_k`?" in message
    assert "accepted keys" not in message  # not all 29 of them
    assert "input_value" not in message


def test_an_unknown_key_with_no_close_match_names_the_three_closest() -> None:
    message = _invalid({**BASE, "zzz": 1})
    (closest,) = [part for part in message.split("; ") if part.startswith("the closest keys: ")]
    assert len(closest.removeprefix("the closest keys: ").split(", ")) == 3


@pytest.mark.parametrize("value", ["no", "yes", "maybe", 0, 1, "true"])
@pytest.mark.parametrize("field", ["higher_is_better", "fsync", "enabled", "protect_best"])
def test_booleans_are_strict(field: str, value: object) -> None:
    message = _invalid({**BASE, field: value})
    assert f"`{field}` must be true or false, got {value!r}" in message
    assert "pydantic" not in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"lease_seconds": "abc"}, "`lease_seconds` must be a number, got 'abc'"),
        ({"lease_seconds": -1}, "`lease_seconds` must be a number > 0"),
        ({"metric_name": 5}, "`metric_name` must be a string, got 5"),
        ({"commit_protocol": "x"}, "`commit_protocol` must be one of 'auto', 'rename' or"),
        ({"storage_options": 3}, "`storage_options` must be a mapping, got 3"),
    ],
)
def test_every_message_is_ckpts_own_naming_field_and_value(
    change: dict[str, object], expected: str
) -> None:
    message = _invalid({**BASE, **change})
    assert expected in message
    assert "errors.pydantic.dev" not in message
    assert "Input should be" not in message


def test_a_run_config_without_a_checkpointing_section_says_so(tmp_path: Path) -> None:
    path = _write(tmp_path / "run.yaml", "policy:\n  model: x\nlogger:\n  wandb: true\n")
    with pytest.raises(ConfigFileError, match="has no `checkpointing:` section"):
        load_config(path)


def test_several_typo_keys_are_all_reported() -> None:
    message = _invalid({**BASE, "metric": "loss", "save_perod": 10})
    assert "`metric`" in message
    assert "`save_perod`" in message
    assert "did you mean `save_period`?" in message


def test_typo_inside_a_retention_block_suggests_the_right_key() -> None:
    message = _invalid({**SEED, "keep_top_k": None, "retention": {"kind": "hybrid", "kk": 3}})
    assert "`kk`" in message
    assert "got 3" in message
    assert "did you mean `k`?" in message
    assert "accepted keys: k, kind" in message  # a small block lists them all


def test_typo_inside_a_nested_retention_block() -> None:
    message = _invalid(
        {
            **BASE,
            "retention": {
                "kind": "any_of",
                "policies": [{"kind": "every_n_steps", "nn": 10}],
            },
        }
    )
    assert "`nn`" in message
    assert "got 10" in message
    assert "did you mean `n`?" in message


def test_typo_of_kind_inside_a_retention_block_suggests_kind() -> None:
    message = _invalid({**BASE, "retention": {"knd": "latest_n", "n": 2}})
    assert "`kind`" in message
    assert "knd" in message
    for kind in RETENTION_KINDS:
        assert kind in message


def test_unknown_retention_kind_lists_accepted_kinds() -> None:
    message = _invalid({**BASE, "retention": {"kind": "lru", "n": 2}})
    assert "lru" in message
    for kind in RETENTION_KINDS:
        assert kind in message
    assert "`kind`" in message


@pytest.mark.parametrize(
    ("spec", "field", "got", "accepted"),
    [
        ({"kind": "top_k", "k": 0}, "k", "got 0", "an integer >= 1"),
        ({"kind": "hybrid", "k": -1}, "k", "got -1", "an integer >= 0"),
        ({"kind": "latest_n", "n": 0}, "n", "got 0", "an integer >= 1"),
        ({"kind": "every_n_steps", "n": True}, "n", "got True", "an integer >= 1"),
    ],
)
def test_bad_counts_inside_retention(
    spec: dict[str, Any], field: str, got: str, accepted: str
) -> None:
    message = _invalid({**BASE, "metric_name": "m", "retention": spec})
    assert f"`{field}`" in message
    assert got in message
    assert accepted in message


def test_keep_top_k_with_retention_names_both() -> None:
    message = _invalid({**SEED, "retention": {"kind": "latest_n", "n": 2}})
    assert "`keep_top_k`" in message
    assert "`retention`" in message
    assert "`ft_keep_latest_k`" not in message


def test_ft_keep_latest_k_with_retention_names_both() -> None:
    message = _invalid({**BASE, "ft_keep_latest_k": 2, "retention": {"kind": "latest_n", "n": 2}})
    assert "`ft_keep_latest_k`" in message
    assert "`retention`" in message
    assert "`keep_top_k`" not in message


def test_all_three_retention_settings_are_named() -> None:
    message = _invalid({**SEED, "ft_keep_latest_k": 1, "retention": {"kind": "keep_all"}})
    assert "`keep_top_k`" in message
    assert "`ft_keep_latest_k`" in message
    assert "`retention`" in message


def test_keep_top_k_zero_still_conflicts_with_retention() -> None:
    message = _invalid({**SEED, "keep_top_k": 0, "retention": {"kind": "keep_all"}})
    assert "`keep_top_k`" in message
    assert "`retention`" in message


@pytest.mark.parametrize(
    "retention",
    [
        {"kind": "top_k", "k": 2},
        {"kind": "hybrid", "k": 2},
        {"kind": "any_of", "policies": [{"kind": "latest_n", "n": 1}, {"kind": "top_k", "k": 1}]},
        {
            "kind": "any_of",
            "policies": [
                {"kind": "keep_all"},
                {"kind": "any_of", "policies": [{"kind": "hybrid", "k": 0}]},
            ],
        },
    ],
)
def test_ranking_retention_without_metric_name(retention: dict[str, Any]) -> None:
    message = _invalid({**BASE, "retention": retention})
    assert "`metric_name`" in message
    assert "`retention`" in message
    assert "got None" in message
    assert "latest_n" in message


@pytest.mark.parametrize(
    "retention",
    [
        {"kind": "latest_n", "n": 3},
        {"kind": "every_n_steps", "n": 5},
        {"kind": "keep_all"},
        {"kind": "any_of", "policies": [{"kind": "latest_n", "n": 1}, {"kind": "keep_all"}]},
    ],
)
def test_non_ranking_retention_needs_no_metric_name(retention: dict[str, Any]) -> None:
    config = load_config({**BASE, "retention": retention})
    assert config.metric_name is None
    assert policies_from_config(config)[0] == ByRecency()


def test_empty_any_of() -> None:
    message = _invalid({**BASE, "retention": {"kind": "any_of", "policies": []}})
    assert "policies" in message
    assert "[]" in message
    assert "at least 1" in message
    assert "`policies`" in message


@pytest.mark.parametrize("value", ["3:15:00", "00:03:15", "0:03:15:00", "aa:bb:cc:dd", ""])
def test_bad_checkpoint_must_save_by(value: str) -> None:
    message = _invalid({**BASE, "checkpoint_must_save_by": value})
    assert "`checkpoint_must_save_by`" in message
    assert f"got {value!r}" in message
    assert "DD:HH:MM:SS" in message


@pytest.mark.parametrize("field", ["save_period", "ft_save_period"])
@pytest.mark.parametrize("value", [0, -10])
def test_save_periods_must_be_positive(field: str, value: int) -> None:
    message = _invalid({**BASE, field: value})
    assert f"`{field}`" in message
    assert f"got {value}" in message
    assert "an integer >= 1 or null" in message


def test_negative_ft_keep_latest_k() -> None:
    message = _invalid({**BASE, "ft_keep_latest_k": -1})
    assert "`ft_keep_latest_k`" in message
    assert "got -1" in message
    assert "an integer >= 0 or null" in message


def test_missing_checkpoint_dir() -> None:
    message = _invalid({"metric_name": "loss", "keep_top_k": 2})
    assert "checkpoint_dir" in message
    assert "required" in message.lower()
    assert "`checkpoint_dir`" in message


def test_empty_metric_name_is_rejected() -> None:
    message = _invalid({**BASE, "metric_name": ""})
    assert "metric_name" in message


def test_non_mapping_config_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError):
        load_config(_write(tmp_path / "list.yaml", "- a\n- b\n"))
    with pytest.raises(pydantic.ValidationError):
        load_config(_write(tmp_path / "empty.yaml", ""))


# --- file errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["checkpoint_dir: [unclosed\n", "a: b: c\n", "key: 'unterminated\n", "\tx: 1\n"]
)
def test_invalid_yaml_is_a_config_file_error(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ckpt.CheckpointError)
    assert not isinstance(info.value, pydantic.ValidationError)
    assert str(path) in str(info.value)


def test_a_yaml_error_names_its_line_column_and_the_line(tmp_path: Path) -> None:
    text = "checkpointing:\n  keep_top_k: 3\n  metric_name: [val_loss\n  enabled: true\n"
    path = _write(tmp_path / "syntax.yaml", text)
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not valid YAML at line 4, column 10: ")
    assert "expected ',' or ']', but got ':'" in message
    assert message.endswith("\n  4 |   enabled: true\n    |          ^")
    assert "object at 0x" not in message


def test_a_yaml_error_quotes_the_line_as_written_with_a_caret(tmp_path: Path) -> None:
    # The stray space before `metric_name` is the whole mistake: the quote must keep it.
    text = "checkpointing:\n  keep_top_k: 3\n   metric_name: val_loss\n"
    path = _write(tmp_path / "indent.yaml", text)
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    line, caret = str(info.value).splitlines()[-2:]
    assert line == "  3 |    metric_name: val_loss"
    assert caret == "    |" + " " * len("    metric_name") + "^"  # under the `:` YAML refused


def test_a_duplicate_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    text = "checkpointing:\n  keep_top_k: 3\n  metric_name: reward\n  keep_top_k: 5\n"
    path = _write(tmp_path / "dup.yaml", text)
    with pytest.raises(
        ConfigFileError, match="gives the key `keep_top_k` twice, on line 2 and line 4"
    ):
        load_config(path)
    # The same key in two different mappings is no duplicate.
    text = "checkpointing:\n  checkpoint_dir: r\n  keep_top_k: 1\nlogger:\n  keep_top_k: 9\n"
    assert load_config(_write(tmp_path / "ok.yaml", text)).keep_top_k == 1


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "nope.yaml"))


# --- JSON schema -----------------------------------------------------------------------


def test_json_schema_has_retention_kinds_and_descriptions() -> None:
    schema = CheckpointConfig.model_json_schema()
    json.dumps(schema)  # serialisable
    assert schema["title"] == "ckpt checkpointing config"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["checkpoint_dir"]
    kinds = {
        definition["properties"]["kind"]["const"]
        for definition in schema["$defs"].values()
        if "kind" in definition.get("properties", {})
    }
    assert kinds == set(RETENTION_KINDS)
    properties = schema["properties"]
    assert set(properties) == set(CheckpointConfig.model_fields)
    for name, field in CheckpointConfig.model_fields.items():
        assert field.description, name
        assert properties[name]["description"] == field.description
    assert "top-k" in properties["metric_name"]["description"]
    assert "DD:HH:MM:SS" in properties["checkpoint_must_save_by"]["description"]
    text = json.dumps(properties["retention"])
    for kind_def in ("TopKSpec", "HybridSpec", "AnyOfSpec", "KeepAllSpec"):
        assert kind_def in text


# --- policies_from_config --------------------------------------------------------------

M = ByMetric("val_reward", True)


@pytest.mark.parametrize(
    ("overrides", "ranking", "policy"),
    [
        ({}, M, Hybrid(3, M)),
        (
            {"higher_is_better": False},
            ByMetric("val_reward", False),
            Hybrid(3, ByMetric("val_reward", False)),
        ),
        ({"keep_top_k": 0}, M, Hybrid(0, M)),
        ({"metric_name": None}, ByRecency(), Hybrid(3, ByRecency())),
        ({"keep_top_k": None}, M, KeepAll()),
        ({"keep_top_k": None, "ft_keep_latest_k": None}, M, KeepAll()),
        # only multiples of save_period compete for the top k, as in NeMo RL
        ({"save_period": 10}, M, Hybrid(3, M, every_n_steps=10)),
        # protect_best: the overall best is kept too
        (
            {"save_period": 10, "protect_best": True},
            M,
            AnyOf((Hybrid(3, M, every_n_steps=10), TopK(1, M))),
        ),
        ({"save_period": 1, "protect_best": True}, M, Hybrid(3, M)),
        ({"save_period": 1}, M, Hybrid(3, M)),
        (
            {"ft_keep_latest_k": 2},
            M,
            AnyOf((Hybrid(3, M), LatestN(2))),
        ),
        (
            {"save_period": 10, "ft_keep_latest_k": 2},
            M,
            AnyOf((Hybrid(3, M, every_n_steps=10), LatestN(2))),
        ),
        (
            {"save_period": 10, "ft_keep_latest_k": 2, "protect_best": True},
            M,
            AnyOf((Hybrid(3, M, every_n_steps=10), TopK(1, M), LatestN(2))),
        ),
        ({"ft_keep_latest_k": 0}, M, Hybrid(3, M)),
        (
            {"keep_top_k": None, "save_period": 10, "ft_keep_latest_k": 2},
            M,
            AnyOf((EveryNSteps(10), LatestN(1), LatestN(2))),
        ),
        # keep_top_k unset and no ft_keep_latest_k: keep all, as in the seed
        ({"keep_top_k": None, "save_period": 10}, M, KeepAll()),
        ({"keep_top_k": None, "ft_keep_latest_k": 2}, M, KeepAll()),
        ({"keep_top_k": None, "save_period": 1, "ft_keep_latest_k": 2}, M, KeepAll()),
        ({"keep_top_k": None, "ft_save_period": 3, "ft_keep_latest_k": 2}, M, KeepAll()),
    ],
)
def test_flat_keys_map_to_policies(
    overrides: dict[str, Any], ranking: policies.Ranking, policy: policies.RetentionPolicy
) -> None:
    config = load_config({**SEED, **overrides})
    assert policies_from_config(config) == (ranking, policy)


@pytest.mark.parametrize(
    ("retention", "policy"),
    [
        ({"kind": "top_k", "k": 2}, TopK(2, M)),
        ({"kind": "hybrid", "k": 4}, Hybrid(4, M)),
        ({"kind": "hybrid", "k": 0}, Hybrid(0, M)),
        ({"kind": "latest_n", "n": 3}, LatestN(3)),
        ({"kind": "every_n_steps", "n": 5}, EveryNSteps(5)),
        ({"kind": "keep_all"}, KeepAll()),
        (
            {
                "kind": "any_of",
                "policies": [
                    {"kind": "top_k", "k": 1},
                    {"kind": "latest_n", "n": 2},
                    {"kind": "any_of", "policies": [{"kind": "every_n_steps", "n": 10}]},
                ],
            },
            AnyOf((TopK(1, M), LatestN(2), AnyOf((EveryNSteps(10),)))),
        ),
    ],
)
def test_each_retention_kind_maps_to_its_class(
    retention: dict[str, Any], policy: policies.RetentionPolicy
) -> None:
    config = load_config({**SEED, "keep_top_k": None, "retention": retention})
    assert policies_from_config(config) == (M, policy)


def test_retention_block_ignores_save_period() -> None:
    config = load_config(
        {**SEED, "keep_top_k": None, "save_period": 10, "retention": {"kind": "hybrid", "k": 2}}
    )
    assert policies_from_config(config)[1] == Hybrid(2, M)


def test_retention_from_yaml(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.yaml",
        "checkpointing:\n  checkpoint_dir: d\n  metric_name: loss\n  higher_is_better: false\n"
        "  retention:\n    kind: any_of\n    policies:\n      - {kind: hybrid, k: 2}\n"
        "      - {kind: latest_n, n: 3}\n",
    )
    loss = ByMetric("loss", False)
    assert policies_from_config(load_config(path)) == (loss, AnyOf((Hybrid(2, loss), LatestN(3))))


OVERRIDE = ByMetric("val_loss", False)


@pytest.mark.parametrize(
    ("overrides", "policy"),
    [
        ({}, Hybrid(3, OVERRIDE)),
        ({"metric_name": None}, Hybrid(3, OVERRIDE)),
        ({"save_period": 10}, Hybrid(3, OVERRIDE, every_n_steps=10)),
        (
            {"save_period": 10, "protect_best": True},
            AnyOf((Hybrid(3, OVERRIDE, every_n_steps=10), TopK(1, OVERRIDE))),
        ),
        ({"ft_keep_latest_k": 2}, AnyOf((Hybrid(3, OVERRIDE), LatestN(2)))),
        ({"keep_top_k": None, "retention": {"kind": "top_k", "k": 2}}, TopK(2, OVERRIDE)),
        ({"keep_top_k": None, "retention": {"kind": "hybrid", "k": 1}}, Hybrid(1, OVERRIDE)),
        (
            {
                "keep_top_k": None,
                "retention": {
                    "kind": "any_of",
                    "policies": [
                        {"kind": "top_k", "k": 1},
                        {"kind": "any_of", "policies": [{"kind": "hybrid", "k": 2}]},
                    ],
                },
            },
            AnyOf((TopK(1, OVERRIDE), AnyOf((Hybrid(2, OVERRIDE),)))),
        ),
    ],
)
def test_ranking_override_replaces_the_ranking(
    overrides: dict[str, Any], policy: policies.RetentionPolicy
) -> None:
    config = load_config({**SEED, **overrides})
    assert policies_from_config(config, ranking=OVERRIDE) == (OVERRIDE, policy)


def test_custom_ranking_object_is_passed_through() -> None:
    class Oldest:
        def rank(self, checkpoints: Any, /) -> list[CheckpointView]:
            return sorted(checkpoints, key=lambda view: view.step)

    oldest = Oldest()
    ranking, policy = policies_from_config(load_config(SEED), ranking=oldest)
    assert ranking is oldest
    assert isinstance(policy, Hybrid)
    assert policy.ranking is oldest
    assert policy.k == 3


# --- NeMo RL semantics on pure views ---------------------------------------------------


def _views(higher_is_better: bool) -> list[CheckpointView]:
    """Steps 1..30; among multiples of 10, step 20 is best; step 17 is best overall."""
    views = []
    for step in range(1, 31):
        distance = abs(step - 20)
        value = -distance if higher_is_better else distance
        if step == 17:
            value = 1000 if higher_is_better else -1000
        views.append(CheckpointView(step, {"val_reward": value}))
    return views


def _kept(policy: policies.RetentionPolicy, views: list[CheckpointView]) -> set[int]:
    decisions = decide(policy, views)
    assert [d.step for d in decisions] == sorted(v.step for v in views)
    for decision in decisions:
        assert decision.reason
    return {d.step for d in decisions if d.keep}


def _nemo_rl_kept(
    views: list[CheckpointView],
    higher_is_better: bool,
    save_period: int,
    keep_top_k: int,
    ft_keep_latest_k: int,
) -> set[int]:
    """NeMo RL's rule, written out independently of ``policies``."""
    periodic = [v for v in views if v.step % save_period == 0]
    sign = -1 if higher_is_better else 1
    best = sorted(periodic, key=lambda v: (sign * v.info["val_reward"], -v.step))
    steps = sorted((v.step for v in views), reverse=True)
    return {v.step for v in best[:keep_top_k]} | set(steps[:ft_keep_latest_k]) | {steps[0]}


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_nemo_rl_semantics_end_to_end(higher_is_better: bool) -> None:
    config = load_config(
        {
            **SEED,
            "higher_is_better": higher_is_better,
            "save_period": 10,
            "keep_top_k": 1,
            "ft_keep_latest_k": 2,
        }
    )
    _, policy = policies_from_config(config)
    views = _views(higher_is_better)
    kept = _kept(policy, views)
    # best multiple of 10 by the metric, plus the 2 most recent, plus the latest: NeMo RL's
    # rule exactly (step 17, the best overall but not a multiple of 10, is not kept)
    assert kept == {20, 29, 30}
    assert kept == _nemo_rl_kept(views, higher_is_better, 10, 1, 2)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_protect_best_also_keeps_the_best_of_all_steps(higher_is_better: bool) -> None:
    config = load_config(
        {
            **SEED,
            "higher_is_better": higher_is_better,
            "save_period": 10,
            "keep_top_k": 1,
            "ft_keep_latest_k": 2,
            "protect_best": True,
        }
    )
    _, policy = policies_from_config(config)
    views = _views(higher_is_better)
    assert _kept(policy, views) == _nemo_rl_kept(views, higher_is_better, 10, 1, 2) | {17}


def test_nemo_rl_semantics_order_does_not_matter() -> None:
    config = load_config({**SEED, "save_period": 10, "keep_top_k": 1, "ft_keep_latest_k": 2})
    _, policy = policies_from_config(config)
    views = _views(True)
    assert _kept(policy, list(reversed(views))) == _kept(policy, views) == {20, 29, 30}


def test_nemo_rl_without_keep_top_k_keeps_periodic_and_latest() -> None:
    config = load_config({**SEED, "keep_top_k": None, "save_period": 10, "ft_keep_latest_k": 2})
    _, policy = policies_from_config(config)
    assert _kept(policy, _views(True)) == {10, 20, 29, 30}


def test_seed_semantics_end_to_end() -> None:
    _, policy = policies_from_config(load_config({**SEED, "keep_top_k": 2}))
    # step 17 then 20 are the two best overall; 30 is kept as the latest
    assert _kept(policy, _views(True)) == {17, 20, 30}


def test_pinned_views_survive_the_built_policy() -> None:
    config = load_config({**SEED, "save_period": 10, "keep_top_k": 1, "ft_keep_latest_k": 2})
    _, policy = policies_from_config(config)
    views = [CheckpointView(v.step, v.info, pinned=v.step == 5) for v in _views(True)]
    assert _kept(policy, views) == {5, 20, 29, 30}


# --- repr round trip -------------------------------------------------------------------

REPR_CONFIGS: list[dict[str, Any]] = [
    SEED,
    {**SEED, "metric_name": None},
    {**SEED, "keep_top_k": None},
    {**SEED, "save_period": 10, "ft_keep_latest_k": 2},
    {**SEED, "keep_top_k": None, "save_period": 10, "ft_keep_latest_k": 2},
    {**SEED, "keep_top_k": None, "retention": {"kind": "top_k", "k": 2}},
    {**SEED, "keep_top_k": None, "retention": {"kind": "hybrid", "k": 0}},
    {**SEED, "keep_top_k": None, "retention": {"kind": "latest_n", "n": 2}},
    {**SEED, "keep_top_k": None, "retention": {"kind": "every_n_steps", "n": 7}},
    {**SEED, "keep_top_k": None, "retention": {"kind": "keep_all"}},
    {
        **SEED,
        "metric_name": "val:acc'uracy",
        "keep_top_k": None,
        "retention": {
            "kind": "any_of",
            "policies": [
                {"kind": "top_k", "k": 1},
                {"kind": "any_of", "policies": [{"kind": "latest_n", "n": 3}]},
            ],
        },
    },
]


@pytest.mark.parametrize("data", REPR_CONFIGS)
def test_repr_of_built_policies_is_valid_python(data: dict[str, Any]) -> None:
    ranking, policy = policies_from_config(load_config(data))
    namespace = vars(policies)
    assert eval(repr(policy), namespace) == policy
    assert eval(repr(ranking), namespace) == ranking
