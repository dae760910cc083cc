"""MkDocs hooks: pages generated from the code at build time, so they cannot drift.

A page asks for a generated block with a marker on a line of its own, and holds the
block, written out, up to an end marker (``<!-- /ckpt:NAME -->``), so that the page reads
whole where no hook runs (on GitHub); the build writes the block anew, and a test checks
that the page holds what the build would write:

* ``<!-- ckpt:config-table -->``: the keys of `ckpt.CheckpointConfig`, one row each
  (key, type, default, description), from the model's JSON Schema;
* ``<!-- ckpt:retention-table -->``: the kinds of the ``retention`` block, one row each,
  from the discriminated union in the same schema;
* ``<!-- ckpt:json-schema -->``: the whole JSON Schema of the model.

An unknown marker fails the build. `render` is importable, so tests check the output.
"""

from __future__ import annotations

import json
import re
from typing import Any

MARKER = re.compile(
    r"^(?P<indent>[ \t]*)<!-- ckpt:(?P<name>[a-z-]+) -->[ \t]*$"
    r"(?:\n(?P<held>.*?)^(?P=indent)<!-- /ckpt:(?P=name) -->[ \t]*$)?",
    re.MULTILINE | re.DOTALL,
)
RETENTION_ANCHOR = "retention-block"

Schema = dict[str, Any]


def _schema() -> Schema:
    from ckpt import CheckpointConfig  # noqa: PLC0415 - imported when the build runs

    return CheckpointConfig.model_json_schema()


def _markdown(text: str) -> str:
    """Turn reST literals into Markdown code, make one line and escape table pipes."""
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return " ".join(text.split()).replace("|", r"\|")


def _kind_of(ref: str, schema: Schema) -> str:
    name = ref.rsplit("/", 1)[-1]
    return str(schema["$defs"][name]["properties"]["kind"]["const"])


def _type(node: Schema, schema: Schema) -> str:
    """Say in words what a JSON Schema node accepts."""
    if "discriminator" in node:
        return f"[retention block](#{RETENTION_ANCHOR})"
    for combinator in ("anyOf", "oneOf"):
        if combinator in node:
            parts = [_type(part, schema) for part in node[combinator]]
            return " or ".join(dict.fromkeys(parts))
    if "$ref" in node:
        target = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        if "kind" not in target.get("properties", {}):  # a plain sub-model
            return f"mapping of {', '.join(f'`{key}`' for key in target['properties'])}"
        return f"[`kind: {_kind_of(node['$ref'], schema)}` block](#{RETENTION_ANCHOR})"
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    kind = node.get("type")
    if kind == "integer":
        bounds = [
            f"{op} {node[key]}" for key, op in (("minimum", ">="), ("maximum", "<=")) if key in node
        ]
        return " ".join(["int", *bounds])
    if kind == "string":
        if node.get("format") == "path":
            return "path"
        if node.get("format") == "path-or-url":
            return "path or URL"
        return "non-empty str" if node.get("minLength", 0) >= 1 else "str"
    if kind == "array":
        items = node.get("items", {})
        what = (
            f"[retention blocks](#{RETENTION_ANCHOR})"
            if "discriminator" in items
            else _type(items, schema)
        )
        least = f", at least {node['minItems']}" if "minItems" in node else ""
        return f"list of {what}{least}"
    simple = {"boolean": "bool", "number": "float", "null": "null", "object": "mapping"}
    return simple.get(str(kind), "any")


def _default(name: str, node: Schema, required: list[str]) -> str:
    if name in required:
        return "required"
    if "default" not in node:
        return ""
    return f"`{json.dumps(node['default'])}`"


def config_table(schema: Schema | None = None) -> str:
    """The keys of `ckpt.CheckpointConfig` as a Markdown table."""
    schema = schema if schema is not None else _schema()
    required = schema.get("required", [])
    rows = [
        "| key | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for name, node in schema["properties"].items():
        rows.append(
            f"| `{name}` | {_type(node, schema)} | {_default(name, node, required)} | "
            f"{_markdown(node.get('description', ''))} |"
        )
    return "\n".join(rows)


def _retention_union(schema: Schema) -> Schema:
    for part in schema["properties"]["retention"].get("anyOf", []):
        if "discriminator" in part:
            return dict(part)
    raise ValueError("CheckpointConfig.retention is no longer a discriminated union of kinds")


def retention_table(schema: Schema | None = None) -> str:
    """The kinds of the ``retention`` block as a Markdown table."""
    schema = schema if schema is not None else _schema()
    rows = [
        "| `kind` | other keys | meaning |",
        "| --- | --- | --- |",
    ]
    for option in _retention_union(schema)["oneOf"]:
        name = option["$ref"].rsplit("/", 1)[-1]
        spec = schema["$defs"][name]
        required = spec.get("required", [])
        keys = [
            f"`{key}`: {_type(node, schema)}"
            + ("" if key in required else f" (default {_default(key, node, required)})")
            for key, node in spec["properties"].items()
            if key != "kind"
        ]
        kind = spec["properties"]["kind"]["const"]
        # The docstrings open with "``kind: top_k``: "; the table already says the kind.
        meaning = re.sub(r"^``kind: \w+``:\s*", "", spec.get("description", ""))
        rows.append(f"| `{kind}` | {'; '.join(keys) or 'none'} | {_markdown(meaning)} |")
    return "\n".join(rows)


def json_schema(schema: Schema | None = None) -> str:
    """The JSON Schema of the config as a fenced code block."""
    schema = schema if schema is not None else _schema()
    return "```json\n" + json.dumps(schema, indent=2) + "\n```"


GENERATORS = {
    "config-table": config_table,
    "retention-table": retention_table,
    "json-schema": json_schema,
}


def render(markdown: str) -> str:
    """Replace every generated-block marker in ``markdown``, keeping its indentation.

    Raises:
        ValueError: If a marker names no known generator.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in GENERATORS:
            raise ValueError(f"unknown generated block {name!r}; known: {sorted(GENERATORS)}")
        indent = match.group("indent")
        lines = [indent + line if line else line for line in GENERATORS[name]().split("\n")]
        return "\n".join(
            [f"{indent}<!-- ckpt:{name} -->", *lines, f"{indent}<!-- /ckpt:{name} -->"]
        )

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: render the generated blocks of a page."""
    from mkdocs.exceptions import PluginError  # noqa: PLC0415 - only inside a build

    try:
        return render(markdown)
    except ValueError as exc:
        page = kwargs.get("page")
        where = page.file.src_path if page is not None else "a page"
        raise PluginError(f"{where}: {exc}") from exc
