"""The ``ckpt`` command line, run as a real subprocess on real directories."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import cli as _cli
from ckpt._directory.records import describe_steps
from ckpt.cli._output import _Progress
from tests.conftest import snapshot_tree

# val_reward by step: 3 has none, 5 diverged; the best is 4, the worst usable 1.
REWARDS: dict[int, float | None] = {1: 0.1, 2: 0.5, 3: None, 4: 0.9, 5: math.nan, 6: 0.3}
CONFIG = """\
checkpointing:  # a whole run config, as NeMo RL writes it
  checkpoint_dir: /somewhere/else  # the command's DIR replaces it
  metric_name: val_reward
  keep_top_k: 2
"""


def ckpt_cli(*args: str | Path, script: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the command line in a child, as a user would; never raises on failure."""
    console = Path(sys.executable).parent / "ckpt"
    command = [str(console)] if script and console.exists() else [sys.executable, "-m", "ckpt"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ckpt: error: ")
    return lines[0]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Six checkpoints written by a real manager (keep-all), step 2 pinned."""
    directory = tmp_path / "run"
    with ckpt.CheckpointManager({"checkpoint_dir": str(directory), "fsync": False}) as manager:
        for step, reward in REWARDS.items():
            info: dict[str, float] = {"step": step, "loss": 1.0 / step}
            if reward is not None:
                info["val_reward"] = reward
            with manager.checkpoint(step, info) as path:
                (path / "model.bin").write_bytes(b"w" * 10_000)
        manager.pin(2)
    return directory


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG)
    return path


def step_path(directory: Path, step: int) -> str:
    return str(directory / f"step_{step}")


# --- ls ---------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_ls_lists_every_checkpoint_and_the_metrics_found(run_dir: Path) -> None:
    result = ckpt_cli("ls", run_dir)
    assert result.returncode == 0
    assert result.stderr == ""  # piped: no progress bar
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{run_dir}: 6 checkpoints")
    # The run recorded how it retains: without --config, the listing says so.
    assert lines[0].endswith("; retention KeepAll() (recorded by the run); ranking ByRecency()")
    header = lines[1].split()
    assert header == [
        "step",
        "loss",
        "val_reward",
        "size",
        "committed",
        "pinned",
        *["retention", "why"],
    ]
    rows = {int(line.split()[0]): line.split() for line in lines[2:8]}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert [step for step, row in rows.items() if "pinned" in row] == [2]
    assert rows[4][2] == "0.9"
    assert rows[5][2] == "-"  # NaN was stored as null
    assert f"latest:  {step_path(run_dir, 6)}" in lines
    assert "metrics: loss (6 of 6), val_reward (4 of 6)" in lines


@pytest.mark.subprocess
def test_ls_json_with_a_config_says_what_retention_keeps_and_why(
    run_dir: Path, config_file: Path
) -> None:
    result = ckpt_cli("ls", run_dir, "--config", config_file, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    by_step = {c["step"]: c for c in data["checkpoints"]}
    assert {s for s, c in by_step.items() if c["keep"]} == {2, 4, 6}
    assert "pinned" in by_step[2]["reason"]
    assert "top-2" in by_step[4]["reason"]
    assert "latest step" in by_step[6]["reason"]
    assert by_step[1]["reason"].startswith("not kept by Hybrid")
    assert [c["pinned"] for c in data["checkpoints"]] == [False, True, False, False, False, False]
    assert all(c["size_bytes"] >= 10_000 for c in data["checkpoints"])
    assert datetime.fromisoformat(by_step[1]["committed_at"]).tzinfo is not None
    assert by_step[5]["info"] == {"step": 5, "loss": 0.2, "val_reward": None}
    assert data["best"] == step_path(run_dir, 4)
    assert data["latest"] == step_path(run_dir, 6)
    assert data["metrics"] == {"val_reward": 4, "loss": 6}
    assert data["directory"] == str(run_dir)


# --- best and latest --------------------------------------------------------------------


@pytest.mark.subprocess
def test_best_and_latest_print_just_a_path(run_dir: Path) -> None:
    best = ckpt_cli("best", run_dir, "--metric", "val_reward", "--max")
    assert (best.returncode, best.stdout, best.stderr) == (0, step_path(run_dir, 4) + "\n", "")
    lowest = ckpt_cli("best", run_dir, "--metric", "val_reward", "--min")
    assert (lowest.returncode, lowest.stdout) == (0, step_path(run_dir, 1) + "\n")
    latest = ckpt_cli("latest", run_dir, script=True)  # the installed console script
    assert (latest.returncode, latest.stderr) == (0, "")
    assert latest.stdout == step_path(run_dir, 6) + "\n"


@pytest.mark.subprocess
def test_best_and_latest_print_nothing_and_fail_when_there_is_none(
    run_dir: Path, tmp_path: Path
) -> None:
    typo = ckpt_cli("best", run_dir, "--metric", "val_rewrd", "--max")
    assert typo.returncode == 1
    assert "no checkpoint" in one_error_line(typo)
    assert "val_reward" in typo.stderr  # the metrics that do exist
    (tmp_path / "empty").mkdir()
    empty = ckpt_cli("latest", tmp_path / "empty")
    assert empty.returncode == 1
    assert "no checkpoints" in one_error_line(empty)


@pytest.fixture
def loss_run(tmp_path: Path) -> Path:
    """A run ranked by val_loss, lower is better: step 2 is its best, step 3 its worst."""
    directory = tmp_path / "loss-run"
    config = {"checkpoint_dir": str(directory), "metric_name": "val_loss"}
    with ckpt.CheckpointManager({**config, "higher_is_better": False, "fsync": False}) as manager:
        for step, loss in {1: 0.5, 2: 0.1, 3: 0.9}.items():
            with manager.checkpoint(step, {"val_loss": loss}):
                pass
    return directory


def test_best_without_flags_ranks_the_way_the_run_does(
    loss_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli.main(["best", str(loss_run)]) == 0
    assert _cli.main(["best", str(loss_run), "--metric", "val_loss"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [step_path(loss_run, 2)] * 2
    assert out.err == ""
    assert _cli.main(["ls", str(loss_run)]) == 0
    assert f"best:    {step_path(loss_run, 2)} (val_loss 0.1)" in capsys.readouterr().out


def test_best_asking_for_the_opposite_direction_warns(
    loss_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli.main(["best", str(loss_run), "--metric", "val_loss", "--max"]) == 0
    out = capsys.readouterr()
    assert out.out == step_path(loss_run, 3) + "\n"
    assert "ckpt: warning:" in out.err
    assert "ranks `val_loss` lower is better" in out.err


def test_best_needs_a_direction_the_run_did_not_record(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:  # run_dir ranks by recency: no metric
        _cli.main(["best", str(run_dir), "--metric", "val_reward"])
    assert exited.value.code == 2
    assert "say --max (higher is better) or --min" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        _cli.main(["best", str(run_dir)])
    assert exited.value.code == 2
    assert "records no ranking of its own" in capsys.readouterr().err


def test_best_with_a_misspelt_metric_names_the_closest_recorded_ones_first(
    run_dir: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before any question of direction: the name itself is what is wrong.
    for extra in ([], ["--max"], ["--config", str(config_file)]):
        assert _cli.main(["best", str(run_dir), "--metric", "val_rewrd", *extra]) == 1
        err = capsys.readouterr().err
        assert err == (
            f"ckpt: error: no checkpoint in {run_dir} records `val_rewrd`; the closest "
            f"recorded metrics: `val_reward`, `loss`\n"
        ), err
    assert _cli.main(["best", str(run_dir), "--metric", "los", "--min"]) == 1
    assert "the closest recorded metrics: `loss`, `val_reward`" in capsys.readouterr().err


def test_check_refuses_an_unknown_code_to_ignore(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _cli.main(["check", str(run_dir), "--ignore", "bogus_code"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus_code'" in err
    assert "missing_metric" in err


# --- check ------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_check_passes_a_clean_directory(run_dir: Path) -> None:
    result = ckpt_cli("check", run_dir)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines() == [
        f"{run_dir}: 6 checkpoints (steps 1-6)",
        "ok: no problems",
    ]


@pytest.mark.subprocess
def test_check_fails_on_crash_damage_and_says_what_to_do(run_dir: Path) -> None:
    (run_dir / "tmp_step_7").mkdir()  # a save that never finished
    (run_dir / "step_3").rename(run_dir / "old_step_3")  # an overwrite cut in the middle
    before = snapshot_tree(run_dir)
    human = ckpt_cli("check", run_dir)
    assert human.returncode == 1
    assert "2 problems: 1 error, 1 warning" in human.stdout
    assert "error    interrupted_overwrite  old_step_3" in human.stdout
    assert "warning  leftover_temporary     tmp_step_7" in human.stdout
    assert human.stdout.count("fix: ") == 2
    machine = ckpt_cli("check", run_dir, "--json")
    assert machine.returncode == 1
    data = json.loads(machine.stdout)
    assert data["ok"] is False
    assert data["steps"] == [1, 2, 4, 5, 6]
    assert [(p["severity"], p["code"]) for p in data["problems"]] == [
        ("error", "interrupted_overwrite"),
        ("warning", "leftover_temporary"),
    ]
    assert all(p["hint"] for p in data["problems"])
    assert snapshot_tree(run_dir) == before  # checking changes nothing


@pytest.mark.subprocess
def test_check_counts_warnings_of_the_config_unless_ignored(
    run_dir: Path, config_file: Path
) -> None:
    strict = ckpt_cli("check", run_dir, "--config", config_file, "--json")
    assert strict.returncode == 1
    codes = {(p["code"], Path(p["path"]).name) for p in json.loads(strict.stdout)["problems"]}
    assert codes == {
        ("should_be_pruned", "step_1"),
        ("should_be_pruned", "step_3"),
        ("should_be_pruned", "step_5"),
        ("missing_metric", "step_3"),
        ("missing_metric", "step_5"),
    }
    ignoring = ckpt_cli(
        "check", run_dir, "--config", config_file, "--ignore", "should_be_pruned",
        "--ignore", "missing_metric",
    )  # fmt: skip
    assert ignoring.returncode == 0
    assert "ok: no problems (5 ignored)" in ignoring.stdout


# --- prune ------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_prune_dry_run_says_what_would_go_and_changes_nothing(
    run_dir: Path, config_file: Path
) -> None:
    before = snapshot_tree(run_dir)
    result = ckpt_cli("prune", run_dir, "--config", config_file, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["dry_run"] is True
    assert [p["step"] for p in data["pruned"]] == [1, 3, 5]
    assert all(p["reason"].startswith("not kept by") for p in data["pruned"])
    assert all(p["size_bytes"] >= 10_000 for p in data["pruned"])
    assert [k["step"] for k in data["kept"]] == [2, 4, 6]
    assert snapshot_tree(run_dir) == before


@pytest.mark.subprocess
def test_prune_deletes_what_retention_does_not_keep(run_dir: Path, config_file: Path) -> None:
    result = ckpt_cli("prune", run_dir, "--config", config_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"pruned 3 of 6 checkpoints in {run_dir}")
    assert sorted(p.name for p in run_dir.iterdir()) == [".ckpt", "step_2", "step_4", "step_6"]


# --- pin and unpin ----------------------------------------------------------------------


@pytest.mark.subprocess
def test_pin_and_unpin_change_what_is_protected(run_dir: Path) -> None:
    pinned = ckpt_cli("pin", run_dir, "4")
    assert (pinned.returncode, pinned.stdout) == (0, f"pinned step 4: {step_path(run_dir, 4)}\n")
    unpinned = ckpt_cli("unpin", run_dir, "2")
    assert unpinned.returncode == 0
    assert json.loads((run_dir / ".ckpt" / "pins.json").read_text()) == {"pinned": [4]}
    missing = ckpt_cli("pin", run_dir, "99")
    assert missing.returncode == 1
    assert "no finalized checkpoint at step 99" in one_error_line(missing)


@pytest.mark.subprocess
def test_pin_leaves_a_directory_without_checkpoints_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    result = ckpt_cli("pin", tmp_path, "1")  # a mistyped DIR
    assert result.returncode == 1
    assert f"cannot pin step 1: {tmp_path} holds no checkpoints" in one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no .ckpt/ created


@pytest.mark.subprocess
def test_pin_fails_in_one_line_while_another_process_writes(run_dir: Path) -> None:
    with ckpt.CheckpointManager({"checkpoint_dir": str(run_dir), "fsync": False}):
        result = ckpt_cli("pin", run_dir, "4")
    assert result.returncode == 1
    assert "cannot pin step 4: another process" in one_error_line(result)
    assert json.loads((run_dir / ".ckpt" / "pins.json").read_text()) == {"pinned": [2]}


# --- config -----------------------------------------------------------------------------


@pytest.mark.subprocess
def test_config_validate_accepts_a_good_file_and_names_each_bad_field(
    config_file: Path, tmp_path: Path
) -> None:
    good = ckpt_cli("config", "validate", config_file)
    assert good.returncode == 0
    assert good.stdout.splitlines()[0] == f"{config_file}: valid"
    ranking = "ByMetric(name='val_reward', higher_is_better=True)"
    retention = f"Hybrid(k=2, ranking={ranking}, every_n_steps=None)"
    assert f"retention: {retention}" in good.stdout  # the repr, as everywhere: valid Python
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(
        "checkpointing:\n  checkpoint_dir: x\n  retention: {kind: latest_n, n: 0}\n"
        "  metric_nme: loss\n"
    )
    bad = ckpt_cli("config", "validate", bad_file)
    assert bad.returncode == 1
    assert bad.stdout == ""
    lines = bad.stderr.splitlines()
    assert lines[0] == f"ckpt: error: {bad_file} is not a valid checkpointing config:"
    assert "did you mean `metric_name`?" in lines[1]
    assert "Traceback" not in bad.stderr


@pytest.mark.subprocess
def test_config_schema_is_the_json_schema_of_the_config() -> None:
    result = ckpt_cli("config", "schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["required"] == ["checkpoint_dir"]
    assert {"keep_top_k", "retention", "metric_name"} <= set(schema["properties"])


# --- errors and usage -------------------------------------------------------------------


@pytest.mark.subprocess
def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    plain = ckpt_cli("ls", tmp_path / "nope")
    assert plain.returncode == 1
    assert one_error_line(plain) == f"ckpt: error: {tmp_path / 'nope'} does not exist"
    for debug in (
        ckpt_cli("ls", tmp_path / "nope", "--debug"),
        ckpt_cli("--debug", "ls", tmp_path / "nope"),
    ):
        assert debug.returncode == 1
        assert "Traceback" in debug.stderr
        assert "CliError" in debug.stderr


@pytest.mark.subprocess
def test_usage_errors_exit_with_2(run_dir: Path) -> None:
    assert ckpt_cli().returncode == 2
    negative = ckpt_cli("pin", run_dir, "-1")
    assert negative.returncode == 2
    assert "non-negative integer" in negative.stderr
    _as_an_older_writer_left_it(run_dir)
    refused = ckpt_cli("prune", run_dir)
    assert refused.returncode == 2  # nothing says what to keep: --config is required
    assert "give --config CFG: " in refused.stderr
    assert "records no retention of its own" in refused.stderr


def _as_an_older_writer_left_it(directory: Path) -> None:
    """Drop the retention from the run's record, as a writer before ckpt recorded it."""
    record = directory / ".ckpt" / "ranking.json"
    recorded = json.loads(record.read_text())
    del recorded["retention"]
    record.write_text(json.dumps(recorded))


@pytest.mark.subprocess
def test_ls_and_prune_without_a_config_follow_the_retention_the_run_recorded(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "run"
    config = {"checkpoint_dir": str(directory), "metric_name": "val_loss", "fsync": False}
    ranked = {**config, "higher_is_better": False, "keep_top_k": 2}
    with ckpt.CheckpointManager(ranked) as manager:
        # Each pinned as it is committed, so that retention leaves them all for now.
        for step, loss in {1: 0.5, 2: 0.1, 3: 0.9, 4: 0.3, 5: 0.7, 6: 0.8}.items():
            with manager.checkpoint(step, {"val_loss": loss}):
                pass
            manager.pin(step)
        for step in range(1, 7):
            manager.unpin(step)
        planned = {d.step: d for d in manager.plan_retention()}
    listing = ckpt_cli("ls", directory, "--json")
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    assert data["schema"] == 2
    assert data["retention"] == repr(manager.retention)
    assert data["retention_source"] == "recorded by the run"
    assert data["ranking"] == "ByMetric(name='val_loss', higher_is_better=False)"
    decisions = {c["step"]: (c["keep"], c["reason"]) for c in data["checkpoints"]}
    assert decisions == {s: (d.keep, d.reason) for s, d in planned.items()}
    # The text says the same, naming the ranking once: rows say `top-2 #1`.
    text = ckpt_cli("ls", directory)
    first, *rest = text.stdout.splitlines()
    # (Hybrid's repr names its ranking: it is not repeated after it.)
    assert first.endswith(f"; retention {manager.retention!r} (recorded by the run)")
    assert "ByMetric(name='val_loss', higher_is_better=False)" in repr(manager.retention)
    rows = {int(line.split()[0]): line for line in rest if line.split()[0].isdigit()}
    assert rows[2].split()[-3:] == ["keep", "top-2", "#1"]
    assert rows[4].split()[-3:] == ["keep", "top-2", "#2"]
    assert rows[1].split()[-3:] == ["prune", "not", "kept"]
    assert all(len(line) < 110 for line in rest), rest
    # prune follows it too, dry run first; only then is anything deleted.
    dry = ckpt_cli("prune", directory, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    would = [p["step"] for p in json.loads(dry.stdout)["pruned"]]
    assert would == [s for s, d in planned.items() if not d.keep] == [1, 3, 5]
    assert sorted(p.name for p in directory.glob("step_*")) == [f"step_{s}" for s in range(1, 7)]
    assert ckpt_cli("prune", directory).returncode == 0
    assert sorted(p.name for p in directory.glob("step_*")) == ["step_2", "step_4", "step_6"]


def test_a_recorded_retention_no_config_accepts_is_ignored_with_a_warning(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = run_dir / ".ckpt" / "ranking.json"
    recorded = json.loads(record.read_text())
    recorded["retention"]["config"]["keep_top_k"] = -1
    record.write_text(json.dumps(recorded))
    assert _cli.main(["ls", str(run_dir)]) == 0
    out = capsys.readouterr()
    assert "retention unknown (no --config, and the run recorded none)" in out.out
    assert "ckpt: warning: ignoring the run's recorded retention: " in out.err
    assert "`keep_top_k`" in out.err
    with pytest.raises(SystemExit) as exited:  # nothing trusted: prune will not guess
        _cli.main(["prune", str(run_dir), "--dry-run"])
    assert exited.value.code == 2
    assert list(run_dir.glob("step_*"))


@pytest.mark.subprocess
def test_ls_json_without_a_config_or_a_record_says_null_where_nothing_is_known(
    run_dir: Path,
) -> None:
    _as_an_older_writer_left_it(run_dir)
    data = json.loads(ckpt_cli("ls", run_dir, "--json").stdout)
    assert (data["retention"], data["retention_source"], data["ranking"]) == (None, None, None)
    assert {(c["keep"], c["reason"]) for c in data["checkpoints"]} == {(None, None)}
    text = ckpt_cli("ls", run_dir).stdout.splitlines()
    assert text[0].endswith("; retention unknown (no --config, and the run recorded none)")
    assert text[1].split()[-1] == "pinned"  # no retention column: nothing to say there


# --- demo -------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_demo_crashes_recovers_summarizes_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = ckpt_cli("demo", tmp_path / "demo", script=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    checkpoints = tmp_path / "demo" / "checkpoints"
    assert "step 27: model.bin half written, now SIGKILL" in out
    assert "tmp_step_27" in out
    assert "leftover_temporary" in out  # what `ckpt check` says after the crash
    assert "recovery: removed_temporary: removed tmp_step_27" in out
    assert f"best:    {checkpoints / 'step_34'}" in out
    assert "pinned  keep" in out  # step 10 in the summary table
    png = tmp_path / "demo" / "val_reward.png"
    assert f"plot: {png}" in out
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    names = {p.name for p in checkpoints.iterdir()}
    assert names == {".ckpt", "step_10", "step_34", "step_36", "step_40"}
    assert result.stderr == ""


@pytest.mark.subprocess
def test_demo_without_matplotlib_says_how_to_get_the_plot(tmp_path: Path) -> None:
    # What `python -m ckpt.demo DIR` runs, with matplotlib made unimportable first.
    code = (
        "import sys; sys.modules['matplotlib'] = None; from ckpt.demo import main; "
        "raise SystemExit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pip install -e '.[plot]' in ckpt's clone" in result.stdout
    assert not (tmp_path / "demo" / "val_reward.png").exists()
    assert (tmp_path / "demo" / "checkpoints" / "step_40").is_dir()


# --- pieces, in process -----------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_and_clears_itself() -> None:
    terminal = _Terminal()
    with _Progress("sizes", 2, stream=terminal, delay=0) as bar:
        bar.advance()
        bar.advance()
    text = terminal.getvalue()
    assert "sizes [" in text
    assert "] 0/2" in text
    assert text.endswith("\r\x1b[K")


def test_progress_stays_quiet_when_piped() -> None:
    piped = io.StringIO()
    with _Progress("sizes", 2, stream=piped, delay=0) as bar:
        bar.advance(2)
    with _Progress("checking", stream=piped):
        pass
    assert piped.getvalue() == ""


def test_steps_are_described_as_runs() -> None:
    assert describe_steps([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
    many = describe_steps(list(range(0, 40, 2)))
    assert many.startswith("0, 2, 4")
    assert many.endswith("... (20 in all)")


@pytest.mark.parametrize("damage", ["unreadable info", "file missing from a manifest"])
def test_latest_and_best_never_answer_with_a_damaged_checkpoint_nor_skip_one_silently(
    tmp_path: Path, damage: str
) -> None:
    directory = tmp_path / "run"
    protocol = "manifest" if damage.startswith("file") else "rename"
    config = {"checkpoint_dir": str(directory), "fsync": False, "commit_protocol": protocol}
    with ckpt.CheckpointManager(config) as manager:
        for step, reward in [(1, 0.1), (2, 0.9)]:
            with manager.checkpoint(step, {"val_reward": reward}) as path:
                (path / "model.bin").write_bytes(b"w" * 100)
        first, newest = (Path(str(r.path)) for r in manager.list_checkpoints())
    assert ckpt_cli("latest", directory).returncode == 0
    if damage == "unreadable info":
        (newest / "training_info.json").write_text("{not json")
    else:
        (newest / "model.bin").unlink()
    for command in (("latest", directory), ("best", directory, "--metric", "val_reward", "--max")):
        result = ckpt_cli(*command)
        last = result.stderr.splitlines()[-1]
        assert "step 2" in last, result.stderr
        assert "damaged" in last, result.stderr
        assert "ckpt check" in last, result.stderr
        if damage == "unreadable info":  # the ranking skipped it: the intact answer, warned
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == str(first)
            assert last.startswith("ckpt: warning: ")
        else:  # the answer itself is damaged: no path a shell could resume from
            assert result.returncode == 1
            assert result.stdout == ""
            assert last.startswith("ckpt: error: ")


def test_prune_dry_run_gives_the_latest_steps_reason_once(tmp_path: Path, capsys: Any) -> None:
    run = tmp_path / "run"
    config = {"checkpoint_dir": str(run), "fsync": False, "metric_name": "loss"}
    with ckpt.CheckpointManager({**config, "higher_is_better": False, "keep_top_k": 1}) as m:
        for step, loss in ((1, 0.1), (2, 0.5), (3, 0.9)):
            with m.checkpoint(step, {"loss": loss}):
                pass
    assert _cli.main(["prune", str(run), "--dry-run", "--json"]) == 0
    kept = {k["step"]: k["reason"] for k in json.loads(capsys.readouterr().out)["kept"]}
    assert kept[3] == "latest step (exempt from top-k)"
    assert _cli.main(["ls", str(run)]) == 0
    assert " on disk; " in capsys.readouterr().out.splitlines()[0]


def test_check_fails_on_errors_only_when_asked(tmp_path: Path, capsys: Any) -> None:
    run = tmp_path / "run"
    with ckpt.CheckpointManager({"checkpoint_dir": str(run), "fsync": False}) as manager:
        with manager.checkpoint(1, {}):
            pass
        manager.init_tmp_checkpoint(2, {})  # a crash's leftover: a warning
    assert _cli.main(["check", str(run)]) == 1
    assert _cli.main(["check", str(run), "--fail-on", "error"]) == 0
    assert "leftover_temporary" in capsys.readouterr().out  # still printed
    assert _cli.main(["check", str(run), "--fail-on", "error", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["schema"], report["fail_on"]) == (1, "error")
    assert [p["code"] for p in report["problems"]] == ["leftover_temporary"]
    (run / "step_1" / "training_info.json").write_text("{")  # damage: an error
    assert _cli.main(["check", str(run), "--fail-on", "error"]) == 1
    capsys.readouterr()


class _Reversed:
    """A ranking of the run's own: the lowest step is best."""

    def rank(self, checkpoints: Any) -> Any:
        return sorted(checkpoints, key=lambda c: c.step)

    def __repr__(self) -> str:
        return "LowestStepFirst()"


def test_ls_and_best_name_a_custom_ranking_from_the_record(tmp_path: Path, capsys: Any) -> None:
    run = tmp_path / "run"
    config = {"checkpoint_dir": str(run), "fsync": False}
    with ckpt.CheckpointManager(config, ranking=_Reversed()) as manager:
        for step in (1, 2):
            with manager.checkpoint(step, {}):
                pass
    assert _cli.main(["ls", str(run)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "the run ranks by LowestStepFirst(), an object of its own (recorded)" in first
    with pytest.raises(SystemExit):
        _cli.main(["best", str(run)])
    assert "ranks by LowestStepFirst(), an object of the run's own" in capsys.readouterr().err
