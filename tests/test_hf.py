"""`ckpt.hf.CheckpointCallback` on real Hugging Face Trainers (``tests/hf_job.py``).

Every second step is evaluated with a scripted score (`SCORES`, higher is better) and
saved, so what ckpt keeps, and which checkpoint is best, is known in advance.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import ckpt
from ckpt.hf import CheckpointCallback, best_checkpoint, latest_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import hf_job as job
from hf_job import EVERY, KEEP_TOP_K, SCORES
from ranks import run_ranks
from test_kill import ForkServer, fork_server
from trainer_kills import committed_steps, kill_and_resume, points, record

JOB = Path(__file__).with_name("hf_job.py")
STEPS = EVERY * len(SCORES)


def saved_step(i: int) -> int:
    return EVERY * (i + 1)


def kept(upto: int) -> list[int]:
    """What Hybrid top-k keeps of the saves up to step ``upto``: the best k and the latest."""
    saves = range(upto // EVERY)
    best = sorted(saves, key=lambda i: (-SCORES[i], -i))[:KEEP_TOP_K]
    return sorted({saved_step(i) for i in best} | {saved_step(max(saves))})


steps = committed_steps


def trainer_dir(directory: Path, step: int) -> str:
    return str(directory / f"step_{step}" / f"checkpoint-{step}")


def top_level(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("checkpoint-"))


def test_each_checkpoint_is_committed_ranked_and_pruned(tmp_path: Path) -> None:
    report = job.train(tmp_path, STEPS)
    assert steps(tmp_path) == kept(STEPS) == [4, 8, 12]
    assert top_level(tmp_path) == []  # every checkpoint-N moved into its step
    best = saved_step(SCORES.index(max(SCORES)))
    assert report["best_model_checkpoint"] == trainer_dir(tmp_path, best)
    assert report["best_metric"] == max(SCORES)
    # load_best_model_at_end loaded the weights of the checkpoint ckpt kept as best.
    weights = load_file(Path(trainer_dir(tmp_path, best)) / "model.safetensors")
    assert weights["layer.weight"].flatten().tolist() == pytest.approx(report["weight"])
    with ckpt.CheckpointManager({"checkpoint_dir": str(tmp_path)}, read_only=True) as reader:
        info = reader.load_training_info(reader.get_latest_checkpoint_path())
        assert reader.recorded_ranking() == {"metric_name": "eval_score", "higher_is_better": True}
    assert info is not None
    assert (info["step"], info["eval_score"], info["hf_checkpoint"]) == (
        12,
        SCORES[5],
        "checkpoint-12",
    )
    assert isinstance(info["loss"], float)
    assert ckpt.verify(tmp_path).problems == ()
    # Each checkpoint's trainer_state.json names the best so far where ckpt committed it.
    for step in steps(tmp_path):
        state = json.loads((Path(trainer_dir(tmp_path, step)) / "trainer_state.json").read_text())
        best_so_far = saved_step(max(range(step // EVERY), key=lambda i: SCORES[i]))
        assert state["best_model_checkpoint"] == trainer_dir(tmp_path, best_so_far)


def test_resume_from_latest_then_best(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None  # a fresh run: train from scratch
    assert best_checkpoint(tmp_path) is None
    job.train(tmp_path, 6)
    assert latest_checkpoint(tmp_path) == trainer_dir(tmp_path, 6)
    assert best_checkpoint(tmp_path) == trainer_dir(tmp_path, 4)  # 0.7 beats 0.6 and 0.5

    resumed = job.train(tmp_path, STEPS, resume="latest")
    assert (resumed["resumed_from"], resumed["started_at"]) == (trainer_dir(tmp_path, 6), 6)
    assert steps(tmp_path) == kept(STEPS)
    # The best recorded in the resumed trainer_state.json moved; ckpt pointed the Trainer at it.
    assert resumed["best_model_checkpoint"] == trainer_dir(tmp_path, 8)

    again = job.train(tmp_path, STEPS, resume="best")
    assert (again["resumed_from"], again["started_at"]) == (trainer_dir(tmp_path, 8), 8)
    assert steps(tmp_path) == kept(STEPS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"save_total_limit": 2}, "`save_total_limit`=2 is refused: the Trainer would delete"),
        ({"save_on_each_node": True}, "`save_on_each_node`=True is refused"),
        (
            {"metric_for_best_model": "accuracy"},
            "`metric_for_best_model`='accuracy' and the config's `metric_name`='eval_score'",
        ),
    ],
)
def test_arguments_that_would_defeat_ckpt_are_refused_when_the_trainer_is_built(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    args = job.arguments(tmp_path / "out", STEPS, **overrides)
    callback = CheckpointCallback({"metric_name": "eval_score", "keep_top_k": 2})
    with pytest.raises(ValueError, match="CheckpointCallback: ") as error:
        job.trainer(args, [callback])
    assert message in str(error.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_the_hubs_checkpoint_strategies_are_refused(tmp_path: Path) -> None:
    # A Trainer pushing to the hub reaches the network when it is built, so the
    # callback's own event is called with the Trainer's arguments here.
    from transformers import TrainerControl, TrainerState

    args = job.arguments(tmp_path, STEPS, push_to_hub=True, hub_strategy="all_checkpoints")
    with pytest.raises(ValueError, match=r"`hub_strategy`=.* is refused: the hub would upload"):
        CheckpointCallback().on_init_end(args, TrainerState(), TrainerControl())


def test_hyperparameter_search_is_refused_when_training_starts(tmp_path: Path) -> None:
    from transformers import TrainerControl, TrainerState

    state = TrainerState(is_hyper_param_search=True)
    args = job.arguments(tmp_path, STEPS)
    with pytest.raises(ValueError, match="hyperparameter search is not supported"):
        CheckpointCallback().on_train_begin(args, state, TrainerControl())
    assert list(tmp_path.iterdir()) == []


def test_a_save_the_trainer_did_not_write_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    from transformers import TrainerControl, TrainerState

    callback, state = CheckpointCallback(), TrainerState()
    args = job.arguments(tmp_path, STEPS)
    assert callback.manager is None
    callback.on_train_begin(args, state, TrainerControl())
    assert callback.manager is not None
    assert callback.manager.checkpoint_dir == tmp_path
    state.global_step = 3
    with pytest.raises(FileNotFoundError, match=r"saved step 3, but .*checkpoint-3 does not exist"):
        callback.on_save(args, state, TrainerControl())
    callback.on_train_end(args, state, TrainerControl())
    assert callback.manager is None  # closed: the directory's lock went with it
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt"]  # no tmp_step_3 left
    assert steps(tmp_path) == []


def test_the_trainers_own_best_follows_its_checkpoint_when_ckpt_cannot_rank_it(
    tmp_path: Path,
) -> None:
    from transformers import TrainerControl, TrainerState

    callback, state, control = CheckpointCallback(), TrainerState(), TrainerControl()
    args = job.arguments(tmp_path, STEPS)
    callback.on_train_begin(args, state, control)
    written = tmp_path / "checkpoint-2"  # as the Trainer leaves a new best, unevaluated here
    written.mkdir()
    (written / "trainer_state.json").write_text(
        json.dumps({"best_model_checkpoint": str(written), "global_step": 2})
    )
    state.global_step, state.best_model_checkpoint = 2, str(written)
    callback.on_save(args, state, control)
    callback.on_train_end(args, state, control)
    assert state.best_model_checkpoint == trainer_dir(tmp_path, 2)
    saved = json.loads((Path(trainer_dir(tmp_path, 2)) / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == trainer_dir(tmp_path, 2)


@pytest.mark.parametrize("crafted", ["/etc", "../checkpoint-4", "checkpoint-4/.."])
def test_a_crafted_trainer_dir_never_becomes_the_best_or_a_resume_point(
    tmp_path: Path, crafted: str
) -> None:
    from transformers import TrainerControl, TrainerState

    config = {"checkpoint_dir": str(tmp_path)}
    info = {"step": 4, "eval_score": 0.9, "hf_checkpoint": crafted}
    with ckpt.CheckpointManager(config) as manager, manager.checkpoint(4, info):
        pass
    callback, state = CheckpointCallback(), TrainerState()
    callback.on_train_begin(job.arguments(tmp_path, STEPS), state, TrainerControl())
    callback.on_train_end(job.arguments(tmp_path, STEPS), state, TrainerControl())
    assert state.best_model_checkpoint is None
    assert latest_checkpoint(tmp_path) is None
    assert best_checkpoint(tmp_path) is None


@pytest.mark.parametrize("elsewhere", ["other", "memory://run"])
def test_a_checkpoint_dir_that_is_not_output_dir_is_refused(tmp_path: Path, elsewhere: str) -> None:
    config = {"checkpoint_dir": elsewhere if "://" in elsewhere else str(tmp_path / elsewhere)}
    args = job.arguments(tmp_path / "out", STEPS)
    with pytest.raises(ValueError, match=r"`output_dir`=.* and the config's `checkpoint_dir`="):
        job.trainer(args, [CheckpointCallback(config)])
    # The same directory, spelt differently, is the same.
    job.trainer(args, [CheckpointCallback({"checkpoint_dir": f"{tmp_path}/x/../out"})])


def test_only_the_save_ckpt_announced_is_removed_and_strangers_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job.train(tmp_path, 4)
    assert not (tmp_path / ".ckpt" / "hf" / "saving.json").exists()  # gone after each commit
    # What a kill in the middle of the Trainer's save of step 6 leaves: the callback's
    # announcement, written before the Trainer started, and the directory half written.
    (tmp_path / ".ckpt" / "hf" / "saving.json").write_text('{"checkpoint": "checkpoint-6"}')
    half = tmp_path / "checkpoint-6"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    # The user's own: incomplete, or complete but of another step; never ckpt's to delete.
    mine = tmp_path / "checkpoint-500"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"my weights")
    copied = tmp_path / "checkpoint-7"
    copied.mkdir()
    (copied / "trainer_state.json").write_text('{"global_step": 700}')
    stranger = tmp_path / "checkpoint-100"  # a Trainer's own checkpoint, from before ckpt
    stranger.mkdir()
    (stranger / "trainer_state.json").write_text('{"global_step": 100}')
    with caplog.at_level("WARNING", logger="ckpt.hf"), pytest.warns(ckpt.RecoveryWarning) as w:
        job.train(tmp_path, 8, resume="latest")
    # What tidying changed reaches a user who configured no logging, and the log.
    changed = sorted(str(x.message) for x in w if x.category is ckpt.RecoveryWarning)
    assert [text.split(":")[0] for text in changed] == [
        f"moved {mine} to {tmp_path / '.ckpt' / 'hf' / 'set-aside' / 'checkpoint-500'}",
        f"moved {copied} to {tmp_path / '.ckpt' / 'hf' / 'set-aside' / 'checkpoint-7'}",
        f"removed {tmp_path / 'checkpoint-6'}",
    ]
    assert all(text in caplog.text for text in changed)
    assert top_level(tmp_path) == ["checkpoint-100"]
    assert (stranger / "trainer_state.json").read_text() == '{"global_step": 100}'
    aside = tmp_path / ".ckpt" / "hf" / "set-aside"
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-500", "checkpoint-7"]
    assert (aside / "checkpoint-500" / "model.safetensors").read_bytes() == b"my weights"
    assert (aside / "checkpoint-7" / "trainer_state.json").read_text() == '{"global_step": 700}'
    assert "checkpoint-6: a save interrupted" in caplog.text
    assert f"moved {mine} to {aside / 'checkpoint-500'}" in caplog.text
    assert "checkpoint-100 was never committed" in caplog.text
    assert latest_checkpoint(tmp_path) == trainer_dir(tmp_path, 8)
    assert ckpt.verify(tmp_path).problems == ()
    # A second stranger of the same name is set aside beside the first, not over it.
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"again")
    job.train(tmp_path, 10, resume="latest")
    assert (aside / "checkpoint-500.1" / "model.safetensors").read_bytes() == b"again"
    assert (aside / "checkpoint-500" / "model.safetensors").read_bytes() == b"my weights"


@pytest.mark.parametrize("strategy", ["steps", "best"])
def test_the_announcement_names_only_steps_the_trainer_may_save(
    tmp_path: Path, strategy: str
) -> None:
    seen: list[str | None] = []

    class Watch(TrainerCallback):  # runs after ckpt's callback, before the Trainer saves
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            path = tmp_path / ".ckpt" / "hf" / "saving.json"
            seen.append(json.loads(path.read_text())["checkpoint"] if path.exists() else None)

    callback = CheckpointCallback({"keep_top_k": KEEP_TOP_K})
    args = job.arguments(tmp_path, 6, save_strategy=strategy)
    job.trainer(args, [callback, Watch()]).train()
    # Every second step is evaluated, and may be saved: announced at its end, and gone
    # once committed, or once the next step (or the end) shows it was not saved.
    assert seen == [None, "checkpoint-2", None, "checkpoint-4", None, "checkpoint-6"]
    assert not (tmp_path / ".ckpt" / "hf" / "saving.json").exists()
    # Under `best` only a new best is saved: step 6 (0.6 after 0.7) is not.
    assert steps(tmp_path) == ([4, 6] if strategy == "steps" else [2, 4])
    assert top_level(tmp_path) == []


# --- two processes ----------------------------------------------------------------------


@pytest.mark.subprocess
def test_two_ranks_commit_one_checkpoint_per_save_and_agree_on_the_best(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = run_ranks(JOB, tmp_path, str(run), "--steps", "6")
    second = run_ranks(JOB, tmp_path, str(run), "--steps", str(STEPS), "--resume", "latest")
    for ranks in (first, second):
        assert [r["world_size"] for r in ranks] == [2, 2]
        assert ranks[0] == ranks[1]  # the same resume point, best and final weights
    assert (second[0]["resumed_from"], second[0]["started_at"]) == (trainer_dir(run, 6), 6)
    assert second[0]["best_model_checkpoint"] == trainer_dir(run, 8)
    assert steps(run) == kept(STEPS)
    assert top_level(run) == []
    assert ckpt.verify(run).problems == ()


# --- a kill in the middle of a save --------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    with fork_server(JOB, tmp_path_factory.mktemp("server") / "server.log") as served:
        yield served


KILLED_SAVE = 6  # score 0.6: it joins the top 2 and pushes out step 2 (0.5)
RUN_STEPS = 10


@pytest.mark.kill
@pytest.mark.subprocess
def test_a_kill_in_a_save_resumes_from_the_last_complete_checkpoint(
    tmp_path: Path, server: ForkServer
) -> None:
    args = ["--steps", str(RUN_STEPS)]
    clean = tmp_path / "clean"
    recorded, _ = record(server, clean, args)
    ops = [i for i, (_, _, event, _) in enumerate(recorded) if event == KILLED_SAVE]
    kinds = {recorded[i][0] for i in ops}
    assert {"open-write", "write", "fsync", "rename-noreplace"} <= kinds, kinds
    # The Trainer's first operation; its last file (trainer_state.json) created, then written;
    # the move into the attempt, the commit, the move to the trash; the last operation.
    last_file = [i for i in ops if recorded[i][1] == f"checkpoint-{KILLED_SAVE}/trainer_state.json"]
    moves = [i for i in ops if recorded[i][0].startswith("rename")]
    assert len(last_file) == 2, [recorded[i] for i in ops]
    assert len(moves) == 3, [recorded[i] for i in ops]
    for point in points(ops, {ops[0], *last_file, *moves, ops[-1]}):
        run = tmp_path / f"kill{point}"
        killed = kill_and_resume(server, run, args, point, ["--resume", "latest"])
        latest, op = max(killed.survivors), killed.op
        assert killed.report["resumed_from"] == trainer_dir(run, latest), op
        assert latest in (KILLED_SAVE - EVERY, KILLED_SAVE), op
        assert steps(run) == steps(clean) == kept(RUN_STEPS), op
        assert top_level(run) == [], op
        assert not (run / ".ckpt" / "hf" / "set-aside").exists(), op  # removed, as ckpt's own
        assert ckpt.verify(run).problems == (), op
        assert torch.load(Path(trainer_dir(run, RUN_STEPS)) / "rng_state.pth", weights_only=False)


@pytest.mark.parametrize("link", [".ckpt/hf/set-aside", ".ckpt/hf"])
def test_a_link_among_the_callbacks_own_directories_moves_nothing_out(
    tmp_path: Path, link: str
) -> None:
    run, outside = tmp_path / "run", tmp_path / "outside"
    job.train(run, 2)
    outside.mkdir()
    target = run / link
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(outside, target_is_directory=True)
    mine = run / "checkpoint-500"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"my weights")
    with pytest.raises(ckpt.UnsafeFileError, match=rf"{re.escape(str(target))} is not a directory"):
        job.train(run, 4, resume="latest")
    assert (mine / "model.safetensors").read_bytes() == b"my weights"
    assert list(outside.iterdir()) == []


def test_ckpt_ls_of_a_trainer_run_shows_metrics_before_timings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ckpt.cli import main as cli_main

    job.train(tmp_path, 4)
    capsys.readouterr()  # the Trainer's own log lines
    assert cli_main(["ls", str(tmp_path)]) == 0
    header = capsys.readouterr().out.splitlines()[1].split()
    assert header[:2] == ["step", "eval_score"]  # the ranking's metric first
    shown = header[1 : header.index("size")]
    assert shown
    assert not [c for c in shown if c.endswith(("runtime", "_per_second", "flos", "epoch"))]
