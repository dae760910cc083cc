"""The documentation site: generated pages, the runnable example, and API coverage.

The site itself is built with ``mkdocs build --strict`` in ``.ci/run``; these tests keep
the parts that could drift from the code honest in the fast suite.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import ckpt
import policies
from ckpt import CheckpointConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    return _load("ckpt_docs_hooks", DOCS / "hooks.py")


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return _load("ckpt_docs_custom_policy", DOCS / "examples" / "custom_policy.py")


# --- the generated configuration reference ------------------------------------------


def _table_keys(table: str) -> list[str]:
    """The first-column names of the rows (not the header) of a generated Markdown table."""
    body = table.split("\n", 2)[2]
    return re.findall(r"^\| `([^`]+)` \|", body, flags=re.MULTILINE)


def test_config_table_has_one_row_per_field_in_order(hooks: ModuleType) -> None:
    assert _table_keys(hooks.config_table()) == list(CheckpointConfig.model_fields)


def test_config_table_gives_type_default_and_description(hooks: ModuleType) -> None:
    table = hooks.config_table()
    lines = [line for line in table.splitlines() if line.startswith("| `")]
    rows = dict(zip(_table_keys(table), lines, strict=True))
    assert rows["checkpoint_dir"].split(" | ")[1:3] == ["path or URL", "required"]
    assert rows["keep_top_k"].split(" | ")[1:3] == ["int >= 0 or null", "`null`"]
    assert rows["fsync"].split(" | ")[1:3] == ["bool", "`true`"]
    assert "(#retention-block)" in rows["retention"]
    for name, field in CheckpointConfig.model_fields.items():
        assert " ".join((field.description or "").split()) in rows[name], name


def test_retention_table_mentions_every_kind_and_key(hooks: ModuleType) -> None:
    table = hooks.retention_table()
    schema = CheckpointConfig.model_json_schema()
    union = hooks._retention_union(schema)
    kinds = sorted(union["discriminator"]["mapping"])
    assert sorted(_table_keys(table)) == kinds
    for ref in union["discriminator"]["mapping"].values():
        spec = schema["$defs"][ref.rsplit("/", 1)[-1]]
        for key in spec["properties"]:
            if key != "kind":
                assert f"`{key}`:" in table, (spec["title"], key)


def test_json_schema_block_is_the_models_schema(hooks: ModuleType) -> None:
    block = hooks.json_schema()
    assert block.startswith("```json\n")
    assert block.endswith("\n```")
    assert json.loads(block[len("```json\n") : -len("\n```")]) == (
        CheckpointConfig.model_json_schema()
    )


def test_configuration_page_is_generated_and_keeps_indentation(hooks: ModuleType) -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    for marker in ("config-table", "retention-table", "json-schema"):
        assert f"<!-- ckpt:{marker} -->" in page
    rendered = hooks.render(page)
    assert rendered == page  # written out on the page, as the build writes it
    assert hooks.render(hooks.render("x\n<!-- ckpt:config-table -->\ny\n")).count("| key |") == 1
    for name in CheckpointConfig.model_fields:
        assert f"| `{name}` |" in rendered, name
    # The schema sits in a collapsed admonition: every line of it stays indented.
    assert '    ```json\n    {\n      "$defs"' in rendered


def test_an_unknown_generated_block_fails(hooks: ModuleType) -> None:
    with pytest.raises(ValueError, match="unknown generated block 'config-tabel'"):
        hooks.render("# page\n\n<!-- ckpt:config-tabel -->\n")


# --- the custom policy example --------------------------------------------------------


def test_custom_policy_example_keeps_what_the_page_says(
    example: ModuleType, tmp_path: Path
) -> None:
    directory = tmp_path / "checkpoints"
    with example.run(directory) as manager:
        assert [r.step for r in manager.list_checkpoints()] == [4, 5, 8]
        # Step 3 has the highest reward but is over the KL budget: never "best".
        assert manager.get_best_checkpoint_path() == str(directory / "step_5")
        reasons = {d.step: d.reason for d in manager.plan_retention()}
        assert all(d.keep for d in manager.plan_retention())
    assert "milestone curriculum-1" in reasons[4]
    assert reasons[8] == "latest-1: #1"
    assert {p.name for p in directory.iterdir()} == {".ckpt", "step_4", "step_5", "step_8"}
    assert (directory / "step_5" / "model.bin").read_bytes() == b"weights of step 5"


def test_custom_policy_example_output_is_the_one_on_the_page(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example.main(str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    page = (DOCS / "custom-policies.md").read_text(encoding="utf-8")
    shown = page.split("```text\n", 1)[1].split("```", 1)[0].splitlines()
    assert out[:-1] == shown[:-1]  # the decisions, line for line
    assert out[-1] == f"best: {tmp_path / 'checkpoints' / 'step_5'}"
    assert shown[-1].startswith("best: ")
    assert shown[-1].endswith("/checkpoints/step_5")


def test_custom_policy_example_pure_checks_pass(example: ModuleType) -> None:
    example.check_without_disk()


def test_custom_ranking_is_order_independent_and_puts_bad_values_last(
    example: ModuleType,
) -> None:
    views = [
        policies.CheckpointView(step=1, info={"reward": 0.5, "kl": 0.01}),
        policies.CheckpointView(step=2, info={"reward": float("nan"), "kl": 0.01}),
        policies.CheckpointView(step=3, info={"reward": 0.5, "kl": 0.02}),
        policies.CheckpointView(step=4, info={"reward": 0.9}),
        policies.CheckpointView(step=5, info={"reward": 0.7, "kl": 0.5}),
    ]
    ranking = example.RewardWithinKL(max_kl=0.1)
    order = [v.step for v in ranking.rank(views)]
    assert order == [3, 1, 5, 4, 2]  # ties and unusable values go to the higher step
    assert [v.step for v in ranking.rank(views[::-1])] == order


def test_every_example_section_on_the_page_exists(example: ModuleType) -> None:
    page = (DOCS / "custom-policies.md").read_text(encoding="utf-8")
    source = Path(example.__file__).read_text(encoding="utf-8")
    sections = re.findall(r"<!-- example: docs/examples/custom_policy\.py:(\w+) -->", page)
    assert sections == ["imports", "ranking", "retention", "manager", "run", "pure"]
    for name in sections:
        assert f"# --8<-- [start:{name}]" in source
        assert f"# --8<-- [end:{name}]" in source


# --- API reference coverage -----------------------------------------------------------


def _directives() -> list[str]:
    found = []
    for page in sorted((DOCS / "api").glob("*.md")):
        found += re.findall(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), re.MULTILINE)
    return found


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


def test_every_api_directive_names_an_existing_object() -> None:
    directives = _directives()
    assert directives
    for dotted in directives:
        _resolve(dotted)


@pytest.mark.parametrize("package", [ckpt, policies], ids=lambda p: p.__name__)
def test_every_public_name_has_an_api_entry(package: ModuleType) -> None:
    documented = set(_directives())
    missing = [name for name in package.__all__ if f"{package.__name__}.{name}" not in documented]
    assert not missing, f"add `::: {package.__name__}.NAME` to docs/api/ for {missing}"


@pytest.mark.parametrize(
    "name", ["ckpt.storage", "ckpt.commit", "ckpt.handler", "ckpt.lightning", "ckpt.hf"]
)
def test_every_public_name_of_the_subpackages_has_an_api_entry(name: str) -> None:
    module = importlib.import_module(name)
    documented = set(_directives())
    aliases = {"EntryKind", "CommitKind", "ProtocolChoice"}  # Literal types in signatures
    missing = [
        n
        for n in module.__all__
        if n not in aliases and f"{name}.{n}" not in documented and f"ckpt.{n}" not in documented
    ]
    assert not missing, f"add `::: {name}.NAME` to docs/api/ for {missing}"


def test_every_public_name_of_ckpt_torch_has_an_api_entry() -> None:
    module = pytest.importorskip("ckpt.torch")  # skipped without the torch extra
    documented = set(_directives())
    assert "ckpt.torch" in documented
    missing = [name for name in module.__all__ if f"ckpt.torch.{name}" not in documented]
    assert not missing, f"add `::: ckpt.torch.NAME` to docs/api/torch.md for {missing}"


# --- pages that list what the code defines --------------------------------------------


def test_ci_page_lists_every_problem_code_with_its_severity() -> None:
    from ckpt import PROBLEM_CODES

    in_code = {(severity, code) for code, severity in PROBLEM_CODES.items()}
    page = (DOCS / "ci.md").read_text(encoding="utf-8")
    on_page = {
        (severity, code)
        for code, severity in re.findall(r"^\| `(\w+)` \| (error|warning) \|", page, re.M)
    }
    assert in_code
    assert on_page == in_code


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {
        str(path.relative_to(DOCS))
        for path in DOCS.rglob("*.md")
        if "examples" not in path.relative_to(DOCS).parts
    }
    listed = set(re.findall(r":\s+([\w/.-]+\.md)\s*$", nav, re.MULTILINE))
    assert pages == listed


def test_the_troubleshooting_page_says_what_to_do_about_every_problem_code() -> None:
    from ckpt import PROBLEM_CODES

    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| (error|warning) \| ([^|]+) \| ([^|]+) \|$", page, re.M)
    assert {(code, severity) for code, severity, _, _ in rows} == set(PROBLEM_CODES.items())
    assert all(means.strip() and fix.strip() for _, _, means, fix in rows)


def test_the_readme_is_a_newcomers_page_and_installs_only_from_a_clone() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 160  # the rest lives in docs/
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        text = page.read_text(encoding="utf-8")
        # Not on the package index yet: every install is from the clone, with -e.
        shown = re.findall(r"pip install ([^`\n]*)`?", text)
        # ckpt itself: from the clone (`-e .` or `-e '.[X]'`); "not `pip install
        # ckpt-warden`" may be said, no page may tell a reader to run it.
        ours = [i for i in shown if i.startswith((".", "'.", "-e"))]
        assert all(i.startswith(("-e .", "-e '.[")) for i in ours), (page, ours)
        told = re.findall(r"^\s*(?:\$ )?(?:\S*/)?pip install ['\"]?ckpt.*$", text, re.M)
        assert told == [], (page, told)
    for linked in re.findall(r"\]\((docs/[\w/.-]+\.md)", readme):
        assert (ROOT / linked).is_file(), linked


def test_object_storage_and_multi_process_pages_agree_that_ranks_write_to_s3() -> None:
    storage = (DOCS / "object-storage.md").read_text(encoding="utf-8")
    ranks = (DOCS / "multi-process.md").read_text(encoding="utf-8")
    assert "future work" not in storage.lower()
    assert "s3" in ranks.lower()


@pytest.mark.subprocess
def test_the_nemo_rl_suite_script_runs_a_checkouts_tests_against_ckpt(tmp_path: Path) -> None:
    import subprocess

    script = ROOT / "benchmarks" / "nemo_rl_suite.sh"
    env = {**__import__("os").environ, "PYTHON": sys.executable}
    refused = subprocess.run(
        ["bash", script, tmp_path], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert refused.returncode == 2
    assert "a clone of NVIDIA-NeMo/RL?" in refused.stderr
    # A checkout's test file, as NeMo RL writes it: it imports NeMo RL's module.
    tests = tmp_path / "tests" / "unit" / "utils"
    tests.mkdir(parents=True)
    (tests / "test_checkpoint.py").write_text(
        "import nemo_rl.utils.checkpoint as checkpoint_module\n"
        "from nemo_rl.utils.checkpoint import CheckpointManager\n"
        "import ckpt\n\n"
        "def test_the_shim_is_ckpt(tmp_path):\n"
        "    assert CheckpointManager is ckpt.CheckpointManager\n"
        "    manager = CheckpointManager({'checkpoint_dir': str(tmp_path), 'enabled': True})\n"
        "    assert manager.get_latest_checkpoint_path() is None\n\n"
        "def test_a_private_helper_is_not_there():\n"
        "    assert hasattr(checkpoint_module, '_load_checkpoint_history')\n"
    )
    ran = subprocess.run(
        ["bash", script, tmp_path],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert "1 failed, 1 passed" in ran.stdout, ran.stdout


def test_every_table_of_every_page_has_its_header_rows() -> None:
    """A row stranded after a code block renders as literal `|` text, on GitHub and the site."""
    separator = re.compile(r"^\|( *:?-{3,}:? *\|)+\s*$")
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        lines = page.read_text(encoding="utf-8").splitlines()
        fenced = False
        group: list[int] = []
        for number, line in enumerate([*lines, ""], 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            is_row = not fenced and line.startswith("|")
            if is_row:
                group.append(number)
                continue
            if group and (len(group) < 2 or not separator.match(lines[group[1] - 1])):
                broken.append(f"{page.relative_to(ROOT)}:{group[0]}")
            group = []
    assert broken == []


def test_the_site_home_page_links_every_page_the_readme_does() -> None:
    link = re.compile(r"\]\((?:docs/)?([a-z0-9-]+\.md)[)#]")
    readme = set(link.findall((ROOT / "README.md").read_text(encoding="utf-8")))
    home = set(link.findall((ROOT / "docs" / "index.md").read_text(encoding="utf-8")))
    assert readme - home == set()


def test_the_architecture_page_maps_every_module() -> None:
    import ast

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    mapped = re.findall(r"^\| `([\w.]+)` \| (.*) \|$", text.split("## Module map", 1)[1], re.M)
    found = {}
    for path in sorted([*(ROOT / "ckpt").rglob("*.py"), *(ROOT / "policies").rglob("*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        found[name] = " ".join(doc.split("\n\n")[0].split())
    assert dict(mapped) == found


def test_every_page_reads_whole_without_the_build() -> None:
    """GitHub shows a page as it is: no snippet include, every generated block written out."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ckpt_docs_hooks_whole", DOCS / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        assert "--8<--" not in text, page
        assert hooks.render(text) == text, f"{page}: its generated blocks are stale"


def test_the_sites_tables_keep_a_key_name_on_one_line() -> None:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    (sheet,) = yaml.safe_load(text.split("\nextra_css:", 1)[1].split("\n\n", 1)[0])
    css = (DOCS / sheet).read_text(encoding="utf-8")
    assert "td:first-child code" in css
    assert "white-space: nowrap" in css
