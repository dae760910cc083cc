"""The engine of ``ckpt demo`` (and ``python -m ckpt.demo``).

A simulated RL run saves a checkpoint every step of a noisy reward curve (one
evaluation diverges to NaN, some steps are not evaluated) under hybrid retention: the
3 best by ``val_reward`` plus the latest, and a pinned one. It trains in a child
process (``python -m ckpt.cli._demo``) that kills itself with SIGKILL halfway through
writing a checkpoint, as a preempted or OOM-killed job dies. The parent then checks
the directory, restarts from it as the next job would (recovery cleans up), finishes
the run, and prints the result, with a plot when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

import ckpt
from ckpt import CheckpointManager, verify
from policies import metric_value

METRIC = "val_reward"
STEPS = 40
TOP_K = 3
NAN_STEP = 9  # the evaluation diverges: stored as null, ranks below every real value
PINNED_STEP = 10  # say an evaluation job reads it: never pruned
CRASH_STEP = 27  # the child dies halfway through writing this checkpoint
RUN_CONFIG = {"lr": 1e-6, "algorithm": "grpo", "seed": 0}
PLOT_EXTRA = "pip install -e '.[plot]' in ckpt's clone"


class DemoError(ckpt.CheckpointError, RuntimeError):
    """The demo could not run as planned (its directory is taken, the child misbehaved)."""


def demo_config(checkpoint_dir: Path) -> dict[str, Any]:
    """The checkpointing config of the demo run, as a training script would hold it."""
    return {
        "checkpoint_dir": str(checkpoint_dir),
        "metric_name": METRIC,
        "higher_is_better": True,
        "retention": {"kind": "hybrid", "k": TOP_K},
    }


def step_info(step: int) -> dict[str, float | int]:
    """The training info logged at ``step``.

    Each step draws from its own seed, so the restarted run sees the same curve the
    crashed one would have (as a run restoring its RNG state from a checkpoint does).
    """
    rng = random.Random(1_000_003 * 7 + step)
    trend = 1.0 - math.exp(-step / 12)
    info: dict[str, float | int] = {
        "step": step,
        "train_reward": round(trend + rng.gauss(0, 0.1), 4),
    }
    if step == NAN_STEP:
        info[METRIC] = math.nan
    elif step % 5 != 3:  # validation does not run on every step
        info[METRIC] = round(trend + rng.gauss(0, 0.08), 4)
    return info


def _state(step: int) -> dict[str, bytes]:
    rng = random.Random(step)
    return {"model.bin": rng.randbytes(96 * 1024), "optimizer.bin": rng.randbytes(192 * 1024)}


def train(
    manager: CheckpointManager, start: int, stop: int, *, crash_at: int | None = None
) -> None:
    """Run steps ``start`` to ``stop``, saving each; die mid-save at ``crash_at``."""
    for step in range(start, stop + 1):
        info = step_info(step)
        if step == crash_at:
            _die_mid_save(manager, step, info)
        with manager.checkpoint(step, info, run_config=RUN_CONFIG) as path:
            for name, data in _state(step).items():
                (path / name).write_bytes(data)
        if step == PINNED_STEP:
            manager.pin(step)


def _die_mid_save(manager: CheckpointManager, step: int, info: dict[str, float | int]) -> NoReturn:
    tmp = manager.init_tmp_checkpoint(step, info, RUN_CONFIG)
    model = _state(step)["model.bin"]
    (tmp / "model.bin").write_bytes(model[: len(model) // 2])
    print(f"   [child {os.getpid()}] step {step}: model.bin half written, now SIGKILL", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("SIGKILL cannot be caught")  # pragma: no cover


def _child(argv: Sequence[str]) -> None:
    """The training job: ``python -m ckpt.cli._demo DIR --crash-at STEP``."""
    parser = argparse.ArgumentParser(prog="python -m ckpt.cli._demo")
    parser.add_argument("directory")
    parser.add_argument("--crash-at", type=int, required=True)
    args = parser.parse_args(argv)
    with CheckpointManager(demo_config(Path(args.directory))) as manager:
        print(f"   [child {os.getpid()}] training steps 1-{STEPS}", flush=True)
        train(manager, 1, STEPS, crash_at=args.crash_at)


def _run_child(checkpoint_dir: Path) -> None:
    # The child imports the same ckpt as this process, installed or not.
    source = str(Path(ckpt.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "ckpt.cli._demo", str(checkpoint_dir)]
    command += ["--crash-at", str(CRASH_STEP)]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    sys.stdout.write(done.stdout)
    if done.returncode != -signal.SIGKILL:
        raise DemoError(
            f"the training child exited with status {done.returncode}, not by SIGKILL: "
            f"{done.stderr.strip() or 'no message'}"
        )


def run_demo(workdir: Path) -> None:
    """Run the whole demo in ``workdir``, printing each phase.

    Args:
        workdir: Where to put ``checkpoints/``, the config file and the plot; created
            if missing.

    Raises:
        DemoError: If ``workdir`` already holds a demo run, or the child did not die as
            planned.
    """
    began = time.monotonic()
    checkpoint_dir = workdir / "checkpoints"
    if checkpoint_dir.exists() and any(checkpoint_dir.iterdir()):
        raise DemoError(f"{checkpoint_dir} is not empty; give the demo a new directory")
    workdir.mkdir(parents=True, exist_ok=True)
    config = demo_config(checkpoint_dir)
    config_file = workdir / "checkpointing.yaml"
    config_file.write_text(yaml.safe_dump({"checkpointing": config}, sort_keys=False))
    print(f"ckpt demo: a simulated RL run of {STEPS} steps, a checkpoint every step")
    print(f"  directory: {workdir}")
    print(f"  config:    {config_file.name}: keep the {TOP_K} best by {METRIC} plus the latest")
    print("             (hybrid retention), and step 10 is pinned")

    print(f"\n1. training in a child process; it dies in the middle of saving step {CRASH_STEP}")
    _run_child(checkpoint_dir)
    left = sorted(p.name for p in checkpoint_dir.iterdir() if not p.name.startswith("."))
    print(f"   killed by SIGKILL; on disk: {', '.join(left)}")

    print("\n2. `ckpt check` on the directory after the crash:")
    for problem in verify(checkpoint_dir, config).problems:
        print(f"   {problem.severity} {problem.code}: {problem.message}")
        print(f"     fix: {problem.hint}")

    print("\n3. restart: the next job opens the directory as its writer")
    with CheckpointManager(config) as manager:
        for action in manager.recovery:
            print(f"   recovery: {action.kind}: {action.detail}")
        latest = manager.get_latest_checkpoint_path()
        info = manager.load_training_info(latest)
        start = int(info["step"]) + 1 if info else 1
        print(f"   resuming from {latest}, training steps {start}-{STEPS}")
        train(manager, start, STEPS)
        kept = {r.step for r in manager.list_checkpoints()}
        pinned = {r.step for r in manager.list_checkpoints() if r.pinned}
        with warnings.catch_warnings():  # steps without val_reward are the demo's point
            warnings.simplefilter("ignore", ckpt.MissingMetricWarning)
            best_path = manager.get_best_checkpoint_path()
    best = int(best_path.path.name.removeprefix("step_")) if best_path else None

    print(f"\n4. the result: $ ckpt ls {checkpoint_dir} --config {config_file}")
    from ckpt.cli._listing import list_lines  # noqa: PLC0415 - the child needs no CLI

    for line in list_lines(str(checkpoint_dir), str(config_file)):
        print(f"   {line}")
    pruned = [step for step in range(1, STEPS + 1) if step not in kept]
    print(f"   pruned along the way: {len(pruned)} checkpoints; step {NAN_STEP} (NaN) and the")
    print("   unevaluated steps never counted as good")

    plot_file = workdir / f"{METRIC}.png"
    if plot(plot_file, kept=kept, pinned=pinned, best=best):
        print(f"\nplot: {plot_file}")
    else:
        print(f"\nplot: skipped, matplotlib is not installed; for the plot: {PLOT_EXTRA}")
    print(f"\ndone in {time.monotonic() - began:.1f} s. Try:")
    for command in (
        f"ckpt ls {checkpoint_dir} --config {config_file}",
        f"ckpt best {checkpoint_dir}",  # ranks as the run does: val_reward, higher first
        f"ckpt check {checkpoint_dir} --config {config_file}",
    ):
        print(f"  {command}")


def plot(path: Path, *, kept: set[int], pinned: set[int], best: int | None) -> bool:
    """Draw the metric over steps, marking kept, pruned, pinned and best checkpoints.

    Args:
        path: The PNG to write.
        kept: The steps still on disk.
        pinned: The pinned steps.
        best: The best step, if any.

    Returns:
        ``False`` without writing anything when matplotlib is not installed.
    """
    try:
        figure = draw(kept=kept, pinned=pinned, best=best)
    except ImportError:
        return False
    figure.savefig(path, dpi=100)
    return True


def draw(*, kept: set[int], pinned: set[int], best: int | None) -> Any:
    """The plot of `plot`, as a matplotlib ``Figure``.

    Raises:
        ImportError: If matplotlib is not installed.
    """
    # The object API with the Agg canvas: no GUI, no global pyplot state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    values = {step: metric_value(step_info(step), METRIC) for step in range(1, STEPS + 1)}
    scored = {step: value for step, value in values.items() if value is not None}
    figure = Figure(figsize=(9, 5.4), layout="constrained")
    FigureCanvasAgg(figure)
    # Steps without a value get a strip of their own under the curve: drawn on the value
    # axis at any height, they would read as scores.
    axes, strip = figure.subplots(2, 1, sharex=True, height_ratios=[7, 1])
    axes.plot(list(scored), list(scored.values()), color="0.8", linewidth=1, zorder=1)

    def mark(steps: Sequence[int], **style: Any) -> None:
        points = [step for step in steps if step in scored]
        if points:
            axes.scatter(points, [scored[step] for step in points], **style)

    mark(
        [s for s in scored if s not in kept],
        facecolors="white",
        edgecolors="0.5",
        s=30,
        zorder=2,
        label="pruned",
    )
    mark(sorted(kept), color="tab:green", s=45, zorder=3, label="kept")
    mark(
        sorted(pinned),
        facecolors="none",
        edgecolors="tab:blue",
        s=160,
        linewidths=1.5,
        zorder=4,
        label="pinned",
    )
    if best is not None:
        mark([best], marker="*", color="gold", edgecolors="black", s=300, zorder=5, label="best")
    unscored = [step for step in values if step not in scored]
    strip.scatter(
        unscored,
        [0] * len(unscored),
        marker="x",
        color=["tab:green" if step in kept else "0.5" for step in unscored],
    )
    strip.set_yticks([0], [f"no usable\n{METRIC}"], fontsize="small")
    strip.set_ylim(-1, 1)
    for panel in (axes, strip):
        panel.axvline(CRASH_STEP - 0.5, color="tab:red", linestyle="--", linewidth=1)
    axes.annotate(
        "SIGKILL mid-save,\nrestart + recovery",
        xy=(CRASH_STEP - 0.5, 0),
        xycoords=("data", "axes fraction"),
        xytext=(4, 4),
        textcoords="offset points",
        color="tab:red",
        fontsize="small",
    )
    strip.set_xlabel("step (x: NaN or not evaluated; green if kept)")
    axes.set_ylabel(METRIC)
    axes.set_title(f"ckpt demo: the {TOP_K} best by {METRIC} + the latest, one pinned")
    axes.legend(loc="upper left", fontsize="small")
    return figure


if __name__ == "__main__":
    _child(sys.argv[1:])
