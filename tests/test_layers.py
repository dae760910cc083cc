"""The layers of the Architecture page, as the imports show them.

Every import counts: at module level, under ``if TYPE_CHECKING:``, and inside a
function (an optional extra loaded on first use is still a dependency, and a cycle
through one is still a cycle).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import ckpt

ROOT = Path(ckpt.__file__).parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Bottom to top: a module may import its own layer and the layers below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("policies", ("policies",)),
    (
        "base",
        (
            "ckpt._errors",
            "ckpt._text",
            "ckpt._exit",
            "ckpt._layout",
            "ckpt._unpickle",
            "ckpt._preemption",
        ),
    ),
    ("storage", ("ckpt.storage",)),
    ("handler", ("ckpt.handler",)),
    ("commit", ("ckpt.commit",)),
    ("config", ("ckpt._config",)),
    ("torch", ("ckpt.torch",)),
    ("collective", ("ckpt._collective",)),
    ("directory", ("ckpt._directory",)),
    ("saving", ("ckpt._saving",)),
    ("replication", ("ckpt._replication",)),
    ("verify", ("ckpt._verify", "ckpt._resume")),
    ("manager", ("ckpt._manager",)),
    ("api", ("ckpt",)),
    ("adapters", ("ckpt._adapter", "ckpt.hf", "ckpt.lightning")),
    ("cli", ("ckpt.cli", "ckpt.demo", "ckpt.__main__")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    paths = [*(ROOT / "ckpt").rglob("*.py"), *(ROOT / "policies").rglob("*.py")]
    return {_module_name(p): p for p in paths}


def _imports(source: str, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``source`` imports, wherever the import is.

    ``from a import b`` counts ``a.b`` where that is a module, and ``a`` otherwise.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= names & known
            if names - known:
                found.add(node.module)
    return found & known


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path.read_text(), known) - {name} for name, path in modules.items()}


def _layer(module: str) -> int | None:
    """The index in `LAYERS` of the longest prefix that places ``module``."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[1]
            ):
                best = (index, len(prefix))
    return None if best is None else best[0]


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


def _layer_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Which layer imports which, from the real imports."""
    edges = set()
    for module, imported in graph.items():
        source = _layer(module)
        for target in imported:
            into = _layer(target)
            if source is not None and into is not None and source != into:
                edges.add((LAYERS[source][0], LAYERS[into][0]))
    return edges


def test_every_import_is_read_type_checking_and_function_level_too() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import a\n"
        "if TYPE_CHECKING:\n"
        "    from b import Thing\n"
        "def f():\n"
        "    from c import d\n"
        "    import e.f\n"
    )
    known = {"a", "b", "c", "c.d", "e.f", "unused"}
    assert _imports(source, known) == {"a", "b", "c.d", "e.f"}


def test_there_is_no_import_cycle() -> None:
    graph = _graph()
    assert "ckpt._manager" in graph
    assert _cycle(graph) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_is_placed_in_a_layer() -> None:
    unplaced = sorted(module for module in _graph() if _layer(module) is None)
    assert not unplaced


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a module into a layer above its own."""
    found = []
    for module, imported in sorted(graph.items()):
        layer = _layer(module)
        for target in sorted(imported):
            into = _layer(target)
            if layer is not None and into is not None and into > layer:
                found.append(f"{module} ({LAYERS[layer][0]}) imports {target} ({LAYERS[into][0]})")
    return found


def test_a_layer_never_imports_one_above_it() -> None:
    assert _upward(_graph()) == []


def test_the_layer_check_finds_an_upward_import() -> None:
    graph = {"ckpt.storage.local": {"ckpt._manager"}, "ckpt._manager": {"ckpt.storage"}}
    assert _upward(graph) == ["ckpt.storage.local (storage) imports ckpt._manager (manager)"]
    assert _layer_edges(graph) == {("storage", "manager"), ("manager", "storage")}


def _diagram() -> tuple[set[str], set[tuple[str, str]]]:
    text = ARCHITECTURE.read_text()
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    nodes = set(re.findall(r"^\s*(\w+)\[", block, re.MULTILINE))
    edges = set(re.findall(r"^\s*(\w+) --> (\w+)\s*$", block, re.MULTILINE))
    return nodes, edges


def test_the_architecture_diagram_is_the_real_imports() -> None:
    nodes, edges = _diagram()
    assert nodes == {name for name, _ in LAYERS}
    real = {(a, b) for a, b in _layer_edges(_graph()) if b != "base"}  # every layer may
    assert sorted(real - edges) == [], "imports the diagram does not draw"
    assert sorted(edges - real) == [], "arrows no import makes"


def test_the_architecture_table_places_every_layer() -> None:
    table = ARCHITECTURE.read_text().split("| layer |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines()[2:]]
    first_column = {name for row in rows for name in re.findall(r"`([\w.]+)`", row)}
    assert first_column == {prefix for _, prefixes in LAYERS for prefix in prefixes}


# Each package built on the public API, and the private modules it may use: its own.
PUBLIC_ONLY = {
    "ckpt.cli": ("ckpt.cli",),
    "ckpt.demo": (),
    "ckpt._adapter": ("ckpt._adapter",),
    "ckpt.hf": ("ckpt.hf", "ckpt._adapter"),
    "ckpt.lightning": ("ckpt.lightning", "ckpt._adapter"),
}


@pytest.mark.parametrize("package", sorted(PUBLIC_ONLY))
def test_the_cli_and_the_adapters_use_only_the_public_api(package: str) -> None:
    graph = _graph()
    assert package in graph
    own = PUBLIC_ONLY[package]
    for module, imported in graph.items():
        if module == package or module.startswith(package + "."):
            private = {
                m
                for m in imported
                if any(part.startswith("_") for part in m.split(".")[1:])
                and not any(m == mine or m.startswith(mine + ".") for mine in own)
            }
            assert not private, f"{module} imports {sorted(private)}"


def test_only_ckpt_torch_imports_its_private_modules() -> None:
    for module, imported in _graph().items():
        if not module.startswith("ckpt.torch"):
            private = {m for m in imported if m.startswith("ckpt.torch._")}
            assert not private, f"{module} imports {sorted(private)}"


def test_the_state_seam_needs_no_torch() -> None:
    source = (ROOT / "ckpt" / "handler.py").read_text()
    assert not any(
        m.split(".")[0] == "torch" for m in _imports(source, {"torch", "torch.nn", "numpy"})
    )


def test_policies_is_pure() -> None:
    for module, imported in _graph().items():
        if module.startswith("policies"):
            assert not {m for m in imported if m.startswith("ckpt")}, module
