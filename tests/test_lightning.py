"""`ckpt.lightning.ModelCheckpoint` on real Lightning Trainers (``tests/lightning_job.py``).

The tiny model's validation logs the val_loss of `VAL` for each epoch, so what top-k
keeps is known; where Lightning's own `ModelCheckpoint` makes the same decision, the
two are run side by side and must agree.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

import ckpt
from ckpt.lightning import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).parent))
import lightning_job as job
from lightning_job import BATCHES, VAL
from ranks import run_ranks
from test_kill import ForkServer, fork_server
from trainer_kills import committed_steps, kill_and_resume, points, record

JOB = Path(__file__).with_name("lightning_job.py")


def step_of(epoch: int, per_epoch: int = BATCHES) -> int:
    return (epoch + 1) * per_epoch


def file_of(directory: Path, epoch: int, per_epoch: int = BATCHES) -> str:
    step = step_of(epoch, per_epoch)
    return str(directory / f"step_{step}" / f"epoch={epoch}-step={step}.ckpt")


steps = committed_steps


def top_k_epochs(k: int, upto: int) -> set[int]:
    ranked = sorted(range(upto), key=lambda e: (VAL[e], -e))
    return set(ranked[:k])


# --- what is kept, next to Lightning's own callback --------------------------------------


def stock_fit(
    directory: Path, epochs: int, **kwargs: Any
) -> tuple[LightningModelCheckpoint, list[str]]:
    torch.manual_seed(0)
    cb = LightningModelCheckpoint(dirpath=directory, monitor="val_loss", **kwargs)
    io = job.RecordingIO()
    trainer = job.quiet_trainer(
        max_epochs=epochs,
        callbacks=[cb],
        plugins=[io],
    )
    trainer.fit(job.Tiny(), *job.loaders())
    return cb, io.saved


@pytest.mark.parametrize("save_last", [True, False])
def test_top_k_agrees_with_lightning_and_writes_only_what_it_keeps(
    tmp_path: Path, save_last: bool
) -> None:
    ours = job.fit(tmp_path / "ours", len(VAL), top_k=2, save_last=save_last)
    stock, stock_saved = stock_fit(tmp_path / "stock", len(VAL), save_top_k=2, save_last=save_last)

    name = os.path.basename
    assert {name(p) for p in ours["top"]} == {name(p) for p in stock.best_k_models}
    assert name(ours["best"]) == name(stock.best_model_path)
    assert ours["best_score"] == pytest.approx(float(stock.best_model_score))  # type: ignore[arg-type]
    kept = top_k_epochs(2, len(VAL))
    assert ours["best"] == file_of(tmp_path / "ours", min(kept, key=lambda e: VAL[e]))
    latest = len(VAL) - 1
    assert steps(tmp_path / "ours") == sorted(
        step_of(e) for e in kept | ({latest} if save_last else set())
    )
    assert ours["last"] == file_of(tmp_path / "ours", latest if save_last else max(kept))
    # Without save_last, a save top-k would drop at once is never written, as in Lightning.
    stock_top = [name(p) for p in stock_saved if name(p) != "last.ckpt"]
    if save_last:
        assert len(ours["saved"]) == len(VAL)  # one file per save point; last is one of them
    else:
        assert [name(p) for p in ours["saved"]] == stock_top
    # Every file went through ckpt's temporary directory and is a loadable checkpoint.
    assert all("/tmp_step_" in p for p in ours["saved"])
    loaded = torch.load(ours["best"], weights_only=False)
    assert loaded["global_step"] == int(Path(ours["best"]).parent.name.split("_")[1])


def test_no_monitor_keeps_the_latest_save_of_every_n_train_steps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3)
    trainer = job.quiet_trainer(
        max_epochs=2,
        callbacks=[cb],
        limit_val_batches=0,
    )
    trainer.fit(job.Tiny(), job.loaders()[0])
    assert steps(tmp_path) == [6]
    assert cb.best_model_path == cb.last_model_path == str(tmp_path / "step_6/epoch=1-step=6.ckpt")
    assert cb.best_model_score is None
    assert repr(cb.ckpt_config.retention) == "LatestNSpec(kind='latest_n', n=1)"  # type: ignore[union-attr]


def test_a_time_interval_and_weights_only_reach_lightning(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(0), save_weights_only=True)
    io = job.RecordingIO()
    trainer = job.quiet_trainer(max_epochs=1, callbacks=[cb], plugins=[io], limit_val_batches=0)
    trainer.fit(job.Tiny(), job.loaders()[0])
    assert len(io.saved) == BATCHES  # an interval of 0 saves after every batch
    assert steps(tmp_path) == [BATCHES]  # and the latest is kept
    loaded = torch.load(cb.last_model_path, weights_only=False)
    assert "state_dict" in loaded
    assert "optimizer_states" not in loaded


# --- restarts -------------------------------------------------------------------------


def test_a_restart_resumes_from_last_then_best_and_keeps_exactly_top_k(tmp_path: Path) -> None:
    first = job.fit(tmp_path, 3)
    assert steps(tmp_path) == [step_of(1), step_of(2)]  # 0.3 and 0.4; 0.5 pruned
    # Resuming a run that has finished trains nothing, and saves nothing again.
    finished = job.fit(tmp_path, 3, ckpt_path="last")
    assert (finished["ckpt_path"], finished["saved"]) == (first["last"], [])

    second = job.fit(tmp_path, len(VAL), ckpt_path="last")
    # A new callback knows best and last before training, from the directory alone.
    assert second["built"] == {"best": first["best"], "last": first["last"]}
    assert second["ckpt_path"] == file_of(tmp_path, 2)
    # Lightning's own top-k kept more than k after a resume (#5173, #11379); ckpt keeps k + latest.
    kept = top_k_epochs(2, len(VAL)) | {len(VAL) - 1}
    assert steps(tmp_path) == sorted(step_of(e) for e in kept)
    assert second["best"] == file_of(tmp_path, 3)
    assert second["best_score"] == pytest.approx(0.2)

    third = job.fit(tmp_path, len(VAL), ckpt_path="best")
    assert third["ckpt_path"] == file_of(tmp_path, 3)
    assert third["global_step"] == step_of(len(VAL) - 1)  # epochs 4 and 5 trained again
    assert steps(tmp_path) == sorted(step_of(e) for e in kept)


def test_files_in_dirpath_that_ckpt_did_not_write_survive_training(tmp_path: Path) -> None:
    """Lightning's own checkpoints, a user's files, a user's directory under ckpt's names."""
    first = step_of(0)  # the first step ckpt saves
    tmp = f"tmp_step_{first}"
    mine = {
        "epoch=9-step=90.ckpt": b"lightning's own",
        "last.ckpt": b"an old last",
        "notes/readme.txt": b"mine",
        f"{tmp}/weights.pt": b"mine",  # under the name of ckpt's temporary for that step
        "step_999/weights.pt": b"mine",  # a step_N that is not a checkpoint
    }
    for name, data in mine.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ckpt.CheckpointError, match=f"cannot save step {first}: {tmp} holds files"):
        job.fit(tmp_path, 3)  # refused, rather than replacing the user's directory
    assert (tmp_path / tmp / "weights.pt").read_bytes() == b"mine"
    shutil.rmtree(tmp_path / tmp)
    del mine[f"{tmp}/weights.pt"]
    job.fit(tmp_path, len(VAL) - 1)
    job.fit(tmp_path, len(VAL), ckpt_path="last")  # a restart, and pruning meanwhile
    assert {name: (tmp_path / name).read_bytes() for name in mine} == mine
    kept = top_k_epochs(2, len(VAL)) | {len(VAL) - 1}
    assert steps(tmp_path) == sorted(step_of(e) for e in kept)


def test_with_a_retention_block_every_scored_checkpoint_is_among_the_top(tmp_path: Path) -> None:
    config = {"retention": {"kind": "keep_all"}}
    ended = job.fit(tmp_path, 3, top_k=1, save_last=None, config=config)
    assert set(ended["top"]) == {file_of(tmp_path, e) for e in range(3)}
    assert ended["kth"] == ""  # no k of Lightning's to be the k-th of
    assert ended["best"] == file_of(tmp_path, 1)


def test_keeping_only_the_latest_still_scores_it(tmp_path: Path) -> None:
    ended = job.fit(tmp_path, 3, top_k=0, save_last=True)
    assert steps(tmp_path) == [step_of(2)]
    assert (ended["best"], ended["best_score"]) == (file_of(tmp_path, 2), pytest.approx(0.4))
    assert ended["top"] == {}


def test_state_is_read_from_the_directory_not_from_the_saved_callback_state(tmp_path: Path) -> None:
    job.fit(tmp_path, 3)
    shutil.rmtree(tmp_path / f"step_{step_of(1)}")  # the best, removed behind the run's back
    resumed = job.fit(tmp_path, 4, ckpt_path="last")
    # Lightning would restore best_model_path and best_k_models from the checkpoint's copy.
    assert resumed["built"]["best"] == file_of(tmp_path, 2)
    assert file_of(tmp_path, 1) not in resumed["top"]
    assert resumed["best"] == file_of(tmp_path, 3)
    assert set(resumed["top"]) == {file_of(tmp_path, 3), file_of(tmp_path, 2)}


@pytest.mark.parametrize("crafted", ["/etc/passwd", "../../elsewhere.ckpt", "a//b.ckpt", 7])
def test_a_crafted_file_name_in_a_checkpoint_never_points_outside_it(
    tmp_path: Path, crafted: Any
) -> None:
    config = {"checkpoint_dir": str(tmp_path)}
    with (
        ckpt.CheckpointManager(config) as manager,
        manager.checkpoint(4, {"lightning_file": crafted, "val_loss": 0.1}),
    ):
        pass
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss")
    assert cb.best_model_path == cb.last_model_path == str(tmp_path / "step_4")
    assert list(cb.best_k_models) == [str(tmp_path / "step_4")]


def test_validate_and_test_load_the_best(tmp_path: Path) -> None:
    job.fit(tmp_path, 4)
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    trainer = job.quiet_trainer(callbacks=[cb])
    trainer.validate(job.Tiny(), job.loaders()[1], ckpt_path="best")
    assert trainer.ckpt_path == file_of(tmp_path, 3)
    assert steps(tmp_path) == [step_of(1), step_of(3)]  # a read-only stage changes nothing


def test_without_dirpath_the_directory_is_lightnings_default(tmp_path: Path) -> None:
    cb = ModelCheckpoint(monitor="val_loss")
    assert cb.ckpt_config is None  # not known before the trainer is
    trainer = job.quiet_trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        callbacks=[cb],
    )
    trainer.fit(job.Tiny(), *job.loaders())
    assert steps(tmp_path / "checkpoints") == [step_of(1)]
    assert cb.best_model_path == file_of(tmp_path / "checkpoints", 1)


def test_the_lightning_hooks_it_overrides_exist_and_lightning_calls_them() -> None:
    # The callback relies on three of Lightning's private methods: a rename must fail here.
    import inspect

    from lightning.pytorch.trainer.connectors import checkpoint_connector

    for name in ("_save_topk_checkpoint", "_save_last_checkpoint", "_find_last_checkpoints"):
        assert callable(getattr(LightningModelCheckpoint, name, None)), name
        assert getattr(ModelCheckpoint, name) is not getattr(LightningModelCheckpoint, name)
    for hook in ("on_train_batch_end", "on_train_epoch_end", "on_validation_end"):
        source = inspect.getsource(getattr(LightningModelCheckpoint, hook))
        assert "self._save_topk_checkpoint(" in source, hook
        assert "self._save_last_checkpoint(" in source, hook
    connector = inspect.getsource(checkpoint_connector)
    assert "._find_last_checkpoints(" in connector


# --- arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "retention"),
    [
        ({"monitor": "val_loss", "save_top_k": 3}, "TopKSpec(kind='top_k', k=3)"),
        (
            {"monitor": "val_loss", "save_top_k": 3, "save_last": True},
            "HybridSpec(kind='hybrid', k=3)",
        ),
        ({"monitor": "val_loss", "save_top_k": -1}, "KeepAllSpec(kind='keep_all')"),
        ({"save_top_k": -1}, "KeepAllSpec(kind='keep_all')"),
        ({}, "LatestNSpec(kind='latest_n', n=1)"),
        ({"save_top_k": 0, "save_last": True}, "LatestNSpec(kind='latest_n', n=1)"),
    ],
)
def test_lightning_arguments_become_a_retention_policy(
    tmp_path: Path, kwargs: dict[str, Any], retention: str
) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, **kwargs)
    assert cb.ckpt_config is not None
    assert repr(cb.ckpt_config.retention) == retention
    assert cb.ckpt_config.metric_name == kwargs.get("monitor")


@pytest.mark.parametrize("kind", ["dict", "CheckpointConfig"])
def test_config_gives_what_the_arguments_do_not(tmp_path: Path, kind: str) -> None:
    config: Any = {
        "checkpoint_dir": str(tmp_path),
        "metric_name": "val_acc",
        "higher_is_better": True,
        "retention": {"kind": "latest_n", "n": 4},
        "fsync": False,
    }
    if kind == "CheckpointConfig":
        config = ckpt.CheckpointConfig(**config)
    cb = ModelCheckpoint(config=config)
    assert cb.dirpath == str(tmp_path)
    assert (cb.monitor, cb.mode) == ("val_acc", "max")
    assert cb.ckpt_config is not None
    assert repr(cb.ckpt_config.retention) == "LatestNSpec(kind='latest_n', n=4)"
    assert cb.ckpt_config.fsync is False
    assert cb.saves


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dirpath": "elsewhere"}, "`dirpath`='elsewhere' and the config's `checkpoint_dir`="),
        ({"monitor": "val_acc"}, "`monitor`='val_acc' and the config's `metric_name`='val_loss'"),
        (
            {"mode": "max", "monitor": "val_loss"},
            "`mode`='max' and the config's `higher_is_better`=False",
        ),
        (
            {"save_top_k": 3, "config_retention": True},
            "the config's retention both say what to keep",
        ),
        ({"save_last": "link"}, "`save_last` must be True, False or None, got 'link'"),
    ],
)
def test_arguments_that_disagree_with_the_config_are_refused(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    config: dict[str, Any] = {
        "checkpoint_dir": str(tmp_path),
        "metric_name": "val_loss",
        "higher_is_better": False,
    }
    if kwargs.pop("config_retention", False):
        config["keep_top_k"] = 2
    if "dirpath" in kwargs:
        kwargs["dirpath"] = str(tmp_path / kwargs["dirpath"])
        message = message.replace("'elsewhere'", repr(kwargs["dirpath"]))
    with pytest.raises(ValueError, match="ModelCheckpoint: ") as error:
        ModelCheckpoint(config=config, **kwargs)
    assert message in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_config_of_another_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"`config` must be a CheckpointConfig, .* got int"):
        ModelCheckpoint(dirpath=tmp_path, config=42)  # type: ignore[arg-type]


def test_lightning_still_refuses_what_it_refuses(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="save_top_k=3, monitor=None"):
        ModelCheckpoint(dirpath=tmp_path, save_top_k=3)
    with pytest.raises(MisconfigurationException, match="mutually exclusive"):
        ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, train_time_interval=timedelta(1))


def _fit_monitoring(directory: Path, monitor: str, *, validate: bool) -> ModelCheckpoint:
    cb = ModelCheckpoint(dirpath=directory, monitor=monitor, save_top_k=2)
    trainer = job.quiet_trainer(
        max_epochs=2,
        callbacks=[cb],
        limit_val_batches=None if validate else 0,
    )
    trainer.fit(job.Tiny(), *job.loaders())
    return cb


def test_a_monitor_validation_never_logs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"monitor='val_acc'\) found no such"):
        _fit_monitoring(tmp_path, "val_acc", validate=True)
    assert steps(tmp_path) == []


def test_a_monitor_not_logged_yet_warns_once_and_ranks_last(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="found no such logged metric") as caught:
        cb = _fit_monitoring(tmp_path, "val_loss", validate=False)
    assert sum("found no such logged metric" in str(w.message) for w in caught) == 1
    assert steps(tmp_path) == [step_of(0), step_of(1)]  # two slots, both without the metric
    assert cb.best_model_score is None
    assert cb.best_k_models == {}
    assert cb.best_model_path == file_of(tmp_path, 1)  # without the metric: the latest


def test_a_filename_leaving_the_checkpoint_is_refused(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path / "run", filename="../{epoch}")
    trainer = job.quiet_trainer(
        max_epochs=1,
        callbacks=[cb],
        limit_val_batches=0,
    )
    with pytest.raises(ValueError, match="not a relative path inside the checkpoint"):
        trainer.fit(job.Tiny(), job.loaders()[0])
    assert steps(tmp_path / "run") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# --- two DDP processes ------------------------------------------------------------------


def run_ddp(directory: Path, out: Path, *argv: str) -> list[dict[str, Any]]:
    return run_ranks(JOB, out, str(directory), "--ddp", *argv)


@pytest.mark.subprocess
def test_two_ddp_ranks_save_one_checkpoint_and_agree(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    first = run_ddp(directory, tmp_path, "--epochs", "3", "--save-last")
    second = run_ddp(
        directory, tmp_path, "--epochs", str(len(VAL)), "--save-last", "--ckpt-path", "last"
    )
    for ranks in (first, second):
        a, b = ({k: v for k, v in r.items() if k not in ("rank", "saved")} for r in ranks)
        assert a == b  # the same view on both ranks, decided on rank 0
    per_epoch = BATCHES // 2  # each rank trains on half the batches
    assert second[0]["ckpt_path"] == file_of(directory, 2, per_epoch)
    kept = top_k_epochs(2, len(VAL)) | {len(VAL) - 1}
    assert steps(directory) == sorted(step_of(e, per_epoch) for e in kept)
    assert second[0]["best"] == file_of(directory, 3, per_epoch)
    assert ckpt.verify(directory).problems == ()
    # Lightning writes the file on rank 0 only, into the attempt both ranks were given.
    assert [os.path.basename(os.path.dirname(p)) for p in second[0]["saved"]] == [
        f"tmp_step_{step_of(e, per_epoch)}" for e in range(3, len(VAL))
    ]
    assert second[1]["saved"] == []


# --- a kill in the middle of a save --------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    with fork_server(JOB, tmp_path_factory.mktemp("server") / "server.log") as served:
        yield served


KILLED_SAVE = step_of(2)  # val_loss 0.4 enters the top 2 and pushes out epoch 0 (0.5)
EPOCHS = 5


@pytest.mark.kill
@pytest.mark.subprocess
def test_a_kill_in_a_save_resumes_from_the_last_complete_checkpoint(
    tmp_path: Path, server: ForkServer
) -> None:
    args = ["--epochs", str(EPOCHS), "--save-last"]
    clean = tmp_path / "clean"
    recorded, expected = record(server, clean, args)
    ops = [i for i, (_, _, event, _) in enumerate(recorded) if event == KILLED_SAVE]
    renames = [i for i in ops if recorded[i][0].startswith("rename")]
    # Lightning's file appearing, the commit, the move to the trash: and the first and last.
    assert len(renames) == 3, [recorded[i] for i in ops]
    for point in points(ops, {ops[0], *renames, ops[-1]}):
        run = tmp_path / f"kill{point}"
        killed = kill_and_resume(server, run, args, point, ["--ckpt-path", "last"])
        latest, op = max(killed.survivors), killed.op
        assert killed.report["ckpt_path"] == file_of(run, latest // BATCHES - 1), op
        assert latest in (KILLED_SAVE - BATCHES, KILLED_SAVE), op
        assert steps(run) == steps(clean), op
        ended = (killed.report["best"], killed.report["last"])
        assert ended == tuple(expected[k].replace(str(clean), str(run)) for k in ("best", "last"))
        assert ckpt.verify(run).problems == (), op


# --- on object storage --------------------------------------------------------------------


def test_a_run_on_s3_commits_resumes_and_prunes_there(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lightning writes its file with fsspec's defaults, ckpt with the same environment.
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    url = f"s3://{bucket}/runs/lit"
    first = job.fit(url, 3)
    assert first["best"].startswith(f"{url}/step_8.")  # an attempt, named by its manifest
    resumed = job.fit(url, len(VAL), ckpt_path="last")
    assert resumed["ckpt_path"] == first["last"]
    with ckpt.CheckpointManager({"checkpoint_dir": url}, read_only=True) as reader:
        records = reader.list_checkpoints()
    kept = top_k_epochs(2, len(VAL)) | {len(VAL) - 1}
    assert [r.step for r in records] == sorted(step_of(e) for e in kept)
    assert resumed["best"] == str(records[1].path / "epoch=3-step=16.ckpt")
    keys = s3_server.keys(bucket)
    files = sorted(k.rsplit("/", 1)[-1] for k in keys if k.endswith(".ckpt"))
    assert files == sorted(os.path.basename(file_of(Path(), e)) for e in kept)
    loaded = torch.load(
        io.BytesIO(keys[resumed["best"][len(f"s3://{bucket}/") :]]), weights_only=False
    )
    assert loaded["global_step"] == step_of(3)
