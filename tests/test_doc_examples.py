"""Every Python block of the README and the docs runs, page by page, as a reader would.

The blocks of one page run in order in one namespace, in a fresh working directory, as
a reader pasting them into one session would. They may use what a reader's own
training script has and the docs do not define: `USER_OBJECTS` builds those (a real
torch model and optimizer, a training step, a run config and its YAML file). A block
that defines ``test_*`` functions is a test a reader would put in their suite: each is
called, with a ``tmp_path`` if it takes one. A block marked
``<!-- example: docs/examples/FILE.py:SECTION -->`` is written out on the page (so that
it reads whole on GitHub) and must be exactly that section of the runnable example
file, which its own tests run.

The YAML blocks of checkpointing configs are validated the same way.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import ckpt

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "docs" / "api").glob("*.md")),
]
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
_EXAMPLE = re.compile(r"<!-- example: (?P<file>[^\s:]+):(?P<section>[\w-]+) -->\n[ \t]*\Z")

# What the docs call the reader's own: the run's config, shared by run.yaml.
RUN_CONFIG = {
    "checkpoint_dir": "results/run1",
    "metric_name": "val_loss",
    "higher_is_better": False,
    "keep_top_k": 3,
    "save_period": 100,
}


def blocks(page: Path, lang: str) -> list[tuple[int, str]]:
    """``(line, code)`` of each ``lang`` block of ``page``, dedented, snippets resolved."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        if match["lang"] != lang:
            continue
        code = textwrap.dedent(match["body"])
        line = text[: match.start()].count("\n") + 1
        example = _EXAMPLE.search(text[: match.start()][-300:])
        source = _section(ROOT / example["file"], example["section"]) if example else code
        if source.rstrip() != code.rstrip():
            assert example is not None
            raise ValueError(
                f"{page.name}:{line}: the block differs from {example['file']}, section "
                f"{example['section']}: copy the section onto the page again"
            )
        if "--8<--" in code:
            raise ValueError(f"{page.name}:{line}: a snippet include, which GitHub shows raw")
        found.append((line, code))
    return found


def _section(path: Path, name: str) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(f"# --8<-- [start:{name}]\n") + len(f"# --8<-- [start:{name}]\n")
    return text[start : text.index(f"# --8<-- [end:{name}]")]


def _train_one_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> float:
    """One real step of regression on random data; the loss, as a float."""
    inputs = torch.randn(8, 4)
    loss = torch.nn.functional.mse_loss(model(inputs), inputs.sum(dim=1, keepdim=True))
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad()
    return loss.item() if not loss.requires_grad else loss.detach().item()


def _user_objects() -> dict[str, Any]:
    """The names the docs take from the reader's own script, and the files it has."""
    Path("run.yaml").write_text(yaml.safe_dump({"checkpointing": RUN_CONFIG}))
    Path("configs").mkdir()
    smoke = {**RUN_CONFIG, "checkpoint_dir": "results/smoke", "save_period": None}
    Path("configs/smoke.yaml").write_text(yaml.safe_dump({"checkpointing": smoke}))
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def run_training(steps: int, checkpoint_dir: Path) -> None:
        """A reader's training loop: its smoke config, a save at every step."""
        config = {
            **ckpt.load_config("configs/smoke.yaml").model_dump(),
            "checkpoint_dir": checkpoint_dir,
        }
        with ckpt.CheckpointManager(config) as manager:
            for step in range(1, steps + 1):
                loss = _train_one_step(model, optimizer)
                manager.save(step, {"step": step, "val_loss": loss}, {"model": model.state_dict()})

    def train(manager: ckpt.CheckpointManager) -> None:
        for step in range(3):
            loss = _train_one_step(model, optimizer)
            manager.save(step, {"step": step, "val_loss": loss}, {"model": model.state_dict()})

    step = 200
    loss = _train_one_step(model, optimizer)
    return {
        "model": model,
        "optimizer": optimizer,
        "train_one_step": _train_one_step,
        "run_training": run_training,
        "train": train,
        "config": dict(RUN_CONFIG),
        "manager": ckpt.CheckpointManager(RUN_CONFIG),
        "step": step,
        "start": 0,
        "steps": 300,
        "loss": loss,
        "reward": -loss,
        "info": {"step": step, "val_loss": loss},
        "cfg": {"lr": 0.01},
        "state": {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
    }


@pytest.fixture
def managers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ckpt.CheckpointManager]]:
    """Every manager the examples open, closed at the end (examples rebind `manager`)."""
    made: list[ckpt.CheckpointManager] = []
    original = ckpt.CheckpointManager.__init__

    def init(self: ckpt.CheckpointManager, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(ckpt.CheckpointManager, "__init__", init)
    yield made
    for manager in reversed(made):
        manager.close()


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_the_python_blocks_of_a_page_run(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    managers: list[ckpt.CheckpointManager],
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = _user_objects()
    for line, code in blocks(page, "python"):
        where = f"{page.relative_to(ROOT)}, the block at line {line}"
        before = {name for name in namespace if name.startswith("test_")}
        exec(compile(code, where, "exec"), namespace)
        for name, function in list(namespace.items()):
            if name.startswith("test_") and name not in before and callable(function):
                wants = inspect.signature(function).parameters
                kwargs = {"tmp_path": tmp_path / name} if "tmp_path" in wants else {}
                function(**kwargs)
    assert managers or page.name in {"custom-policies.md"}


def test_every_block_is_found_and_a_signature_is_not_passed_off_as_code() -> None:
    total = sum(len(blocks(page, "python")) for page in PAGES)
    assert total >= 25
    for page in PAGES:
        for line, code in blocks(page, "python"):
            compile(code, f"{page.name}:{line}", "exec")  # a syntax error fails here first


def _config_blocks() -> Iterator[tuple[str, dict[str, Any]]]:
    for page in PAGES:
        for line, code in blocks(page, "yaml"):
            where = f"{page.name}:{line}"
            if code.startswith("retention: {"):  # alternatives, one per line or block
                for n, part in enumerate(re.split(r"\n(?=retention:)", code)):
                    yield f"{where}#{n}", yaml.safe_load(part)
            else:
                data = yaml.safe_load(code)
                if isinstance(data, dict) and "checkpointing" in data:
                    yield where, data


@pytest.mark.parametrize(("where", "data"), list(_config_blocks()), ids=lambda v: str(v)[:30])
def test_the_config_blocks_validate(where: str, data: dict[str, Any]) -> None:
    section = data.get("checkpointing", data)
    config = ckpt.load_config({"checkpoint_dir": "results/run1", "metric_name": "m", **section})
    ckpt.policies_from_config(config)


_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def test_the_readme_shows_what_the_demo_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ckpt.cli import _demo

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = readme.split("<!-- demo-output:", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    workdir = tmp_path / "demo"
    _demo.run_demo(workdir)
    printed = capsys.readouterr().out.replace(str(workdir), "/tmp/ckpt-demo-a1b2c3d4")
    printed_lines = _TIME.sub("<time>", printed).splitlines()
    for line in _TIME.sub("<time>", shown).splitlines():
        assert line in printed_lines


def test_the_error_shown_for_a_typo_is_the_real_one() -> None:
    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    shown = next(line.strip() for line in page.splitlines() if "unknown key `keep_topk`" in line)
    with pytest.raises(ValueError, match="unknown key") as caught:
        ckpt.load_config({"checkpoint_dir": "results/run1", "keep_topk": 3})
    assert caught.value.errors()[0]["msg"].startswith(shown.removesuffix(" ..."))  # type: ignore[attr-defined]
