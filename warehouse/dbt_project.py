"""The dbt project under ``warehouse/dbt``: the parts of it generated from Keel's one definitions.

- ``models/staging/_sources.yml``: the ``lake`` source, one table per :data:`LAKE_TABLES` entry
  with its columns and types (``warehouse/lake_tables.py`` declares each lake table once).
- ``macros/keel_rules.sql``: the business rules of ``warehouse/rules.py`` as the DuckDB macros the
  models call (``keel_membership_is_active(status)``…), created by the project's ``on-run-start``.

- the model tables of ``docs/warehouse.md`` (between its ``<!-- models:KIND -->`` markers): every
  staging, intermediate and mart model with its description, grain and key, from the models'
  ``schema.yml`` entries (what ``dbt docs generate`` publishes), so the guide cannot drift from them;
  and its lake table (``<!-- lake:tables -->``): every lake table's files, export mode and key.

``python -m warehouse.dbt_project`` rewrites all three; ``tests/test_dbt_project.py`` fails when either
differs from what this module generates.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from warehouse import rules
from warehouse.lake_tables import DUCKDB_TYPES, LAKE_TABLES

PROJECT_DIR = Path(__file__).with_name("dbt")
SOURCES_FILE = PROJECT_DIR / "models" / "staging" / "_sources.yml"
RULES_FILE = PROJECT_DIR / "macros" / "keel_rules.sql"
#: The schema of the warehouse file that holds the lake's tables (``source('lake', name)``).
LAKE_SCHEMA = "lake"

_HEADER = "Generated from {origin} by `python -m warehouse.dbt_project`: do not edit."


#: Each export mode of ``warehouse/lake_tables.py`` in words (the sources' descriptions and the guide).
MODE_WORDS = {
    "sequence": "appended by sequence",
    "version": "changed rows by version: a key's latest version is its state",
    "snapshot": "daily snapshots (snapshot_date=…)",
}


def sources_yml() -> str:
    tables = []
    for table in LAKE_TABLES.values():
        kind = MODE_WORDS[table.mode]
        tables.append(
            {
                "name": table.name,
                "description": f"The lake's {table.name} ({kind}); key: {', '.join(table.key)}"
                + ("; may be empty" if table.optional else ""),
                "columns": [{"name": c.name, "data_type": DUCKDB_TYPES[c.kind]} for c in table.columns]
                + [{"name": "filename", "data_type": "VARCHAR"}],
            }
        )
    body = {
        "version": 2,
        "sources": [
            {
                "name": "lake",
                "schema": LAKE_SCHEMA,
                "description": "The Parquet lake (local or s3://), as the build lays it in the file.",
                "tables": tables,
            }
        ],
    }
    return f"# {_HEADER.format(origin='warehouse/lake_tables.py')}\n" + yaml.safe_dump(
        body, sort_keys=False, width=110
    )


def rules_macro() -> str:
    statements = ";\n".join(rule.macro() for rule in rules.RULES)
    return (
        f"{{# {_HEADER.format(origin='warehouse/rules.py')} #}}\n"
        "{% macro keel_rules() -%}\n"
        f"{statements}\n"
        "{%- endmacro %}\n"
    )


GUIDE_FILE = PROJECT_DIR.parents[1] / "docs" / "warehouse.md"
_GUIDE_KINDS = ("staging", "intermediate", "mart")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def model_table(kind: str) -> str:
    from warehouse.models import load_models

    rows = ["| model | what it holds | grain | key |", "|---|---|---|---|"]
    rows += [
        f"| `{m.name}` | {_cell(m.description)} | {_cell(m.grain)} | {', '.join(m.key)} |"
        for m in load_models()
        if m.kind == kind
    ]
    return "\n".join(rows)


def lake_table() -> str:
    """The lake's layout: every table of ``warehouse/lake_tables.py``, where its files are, how it
    is exported and its key."""
    rows = ["| table | files | exported | key |", "|---|---|---|---|"]
    rows += [
        f"| `{t.name}` | `{t.layout}` | {_cell(MODE_WORDS[t.mode])} | {', '.join(t.key)} |"
        for t in LAKE_TABLES.values()
    ]
    return "\n".join(rows)


def _region(text: str, name: str, origin: str, body: str) -> str:
    begin = f"<!-- {name} (generated from {origin} by `python -m warehouse.dbt_project`) -->"
    end = f"<!-- /{name} -->"
    head, found, rest = text.partition(begin)
    if not found:
        raise ValueError(f"{GUIDE_FILE} lacks the marker {begin}")
    _, found, tail = rest.partition(end)
    if not found:
        raise ValueError(f"{GUIDE_FILE} lacks the marker {end}")
    return f"{head}{begin}\n{body}\n{end}{tail}"


def guide_md() -> str:
    """docs/warehouse.md with each ``<!-- models:KIND -->`` region rewritten from the schema.yml
    files, and its ``<!-- lake:tables -->`` region from ``warehouse/lake_tables.py``."""
    text = GUIDE_FILE.read_text()
    for kind in _GUIDE_KINDS:
        text = _region(text, f"models:{kind}", "schema.yml", model_table(kind))
    return _region(text, "lake:tables", "warehouse/lake_tables.py", lake_table())


GENERATED = {SOURCES_FILE: sources_yml, RULES_FILE: rules_macro, GUIDE_FILE: guide_md}


def stale() -> list[Path]:
    """The generated files that differ from what this module generates now."""
    return [p for p, make in GENERATED.items() if not p.is_file() or p.read_text() != make()]


def main() -> None:
    for path, make in GENERATED.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
