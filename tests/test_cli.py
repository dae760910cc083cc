"""The ``ckpt`` command line, run as a real subprocess on real directories."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

import ckpt
from ckpt import cli as _cli
from ckpt._records import describe_steps
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
    header = lines[1].split()
    assert header == ["step", "loss", "val_reward", "size", "committed", "pinned"]
    rows = {int(line.split()[0]): line.split() for line in lines[2:8]}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert rows[2][-1] == "pinned"
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
    assert ckpt_cli("prune", run_dir).returncode == 2  # --config is required


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
