"""The layers of the Architecture page, as the imports show them.

Module-level imports only: an import inside a function (an optional extra loaded on
first use) is not an edge of the layering.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ckpt
import policies

ROOT = Path(ckpt.__file__).parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports at module level (``from a import b`` counts ``a.b``
    when ``a.b`` is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    paths = [*(ROOT / "ckpt").rglob("*.py"), *(ROOT / "policies").rglob("*.py")]
    modules = {_module_name(p): p for p in paths}
    return {name: _imports(path) & modules.keys() - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among submodules, if any (a package's ``__init__`` importing its
    own submodules is how re-exports work, and is not one)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if node.startswith(target + "."):
                continue  # importing from one's own package: its __init__ ran already
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_there_is_no_import_cycle() -> None:
    graph = _graph()
    assert "ckpt._manager" in graph
    assert _cycle(graph) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    ("layer", "may_not_import"),
    [
        ("policies", ("ckpt",)),
        ("ckpt.storage", ("ckpt.commit", "ckpt._manager", "ckpt._index", "ckpt.cli", "ckpt.torch")),
        ("ckpt.commit", ("ckpt._manager", "ckpt._index", "ckpt._retention", "ckpt.cli")),
        ("ckpt.torch", ("ckpt._manager", "ckpt.commit", "ckpt.cli")),
    ],
)
def test_a_layer_never_imports_one_above_it(layer: str, may_not_import: tuple[str, ...]) -> None:
    for module, imported in _graph().items():
        if module == layer or module.startswith(layer + "."):
            above = {m for m in imported if m.startswith(may_not_import)}
            assert not above, f"{module} imports {sorted(above)}"


def test_the_cli_uses_only_the_public_api() -> None:
    for module, imported in _graph().items():
        if module.startswith("ckpt.cli"):
            private = {
                m
                for m in imported
                if any(part.startswith("_") for part in m.split(".")[1:])
                and not m.startswith("ckpt.cli.")
            }
            assert not private, f"{module} imports {sorted(private)}"


@pytest.mark.parametrize("adapter", ["ckpt.lightning", "ckpt.hf", "ckpt._adapter"])
def test_the_trainer_adapters_use_only_the_public_api(adapter: str) -> None:
    graph = _graph()
    assert adapter in graph
    for module, imported in graph.items():
        if module == adapter or module.startswith(adapter + "."):
            private = {
                m
                for m in imported
                if any(part.startswith("_") for part in m.split(".")[1:])
                and not m.startswith((adapter + ".", "ckpt._adapter"))
            }
            assert not private, f"{module} imports {sorted(private)}"


def test_policies_is_pure() -> None:
    assert all(not m.startswith("ckpt") for m in _imports(Path(policies.__file__)))
