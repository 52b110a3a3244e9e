"""Every published table and column must be described in dbt.

Published models are the dbt models tagged ``published``. Their real columns come from dbt's
``catalog.json`` (written by ``dbt docs generate``) or straight from a DuckDB file (the
warehouse's ``marts`` schema, or a published snapshot's ``main``); each must have a
non-empty description in ``manifest.json``. With a snapshot, every table in it must also be
a documented published model.

    python -m marketing.table_docs --manifest PROJECT/.dagster/dbt_target/manifest.json --catalog DIR/catalog.json
    python -m marketing.table_docs --manifest PROJECT/.dagster/dbt_target/manifest.json --database published/tessera.duckdb --schema main

Exit status 1 and one line per problem when something is undocumented.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import duckdb

PUBLISHED_TAG = "published"


def published_models(manifest: dict) -> dict[str, dict]:
    """Model name -> manifest node, for models tagged ``published``."""
    found = {}
    for node in manifest["nodes"].values():
        if node.get("resource_type") != "model":
            continue
        tags = set(node.get("tags") or []) | set((node.get("config") or {}).get("tags") or [])
        if PUBLISHED_TAG in tags:
            found[node["name"]] = node
    return found


def columns_from_catalog(catalog: dict, models: dict[str, dict]) -> dict[str, list[str]]:
    by_id = catalog.get("nodes", {})
    return {name: [c["name"] for c in sorted(by_id[node["unique_id"]]["columns"].values(), key=lambda c: c["index"])]
            for name, node in models.items() if node["unique_id"] in by_id}


def columns_from_database(path: Path, schema: str) -> dict[str, list[str]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = ? "
                           "ORDER BY table_name, ordinal_position", [schema]).fetchall()
    finally:
        con.close()
    found: dict[str, list[str]] = {}
    for table, column in rows:
        found.setdefault(table, []).append(column)
    return found


def undocumented(manifest: dict, columns: dict[str, list[str]], require_all_tables: bool = False) -> list[str]:
    """Problems, one line each: a published model (or, with ``require_all_tables``, any table in
    ``columns``) without a description, or one of its real columns without one."""
    models = published_models(manifest)
    problems = []
    names = sorted(columns) if require_all_tables else sorted(set(columns) & set(models))
    for name in sorted(set(models) - set(columns)) if not require_all_tables else []:
        problems.append(f"{name}: published model not built (no columns found); build it before checking")
    for name in names:
        node = models.get(name)
        if node is None:
            problems.append(f"{name}: published table without a dbt model tagged '{PUBLISHED_TAG}' describing it")
            continue
        if not (node.get("description") or "").strip():
            problems.append(f"{name}: the model has no description ({node.get('original_file_path')})")
        described = {c.lower(): (meta.get("description") or "").strip() for c, meta in node.get("columns", {}).items()}
        for column in columns[name]:
            if not described.get(column.lower()):
                problems.append(f"{name}.{column}: column has no description "
                                f"(add it under columns: in {node.get('patch_path', '').split('://')[-1] or 'its YAML'})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--catalog", type=Path, help="catalog.json from `dbt docs generate`")
    source.add_argument("--database", type=Path, help="a DuckDB file: the warehouse or a published snapshot")
    parser.add_argument("--schema", default="main", help="schema of the tables in --database (marts, or main for a snapshot)")
    args = parser.parse_args(argv)
    manifest = json.loads(args.manifest.read_text())
    if args.catalog:
        columns = columns_from_catalog(json.loads(args.catalog.read_text()), published_models(manifest))
        problems = undocumented(manifest, columns)
    else:
        columns = columns_from_database(args.database, args.schema)
        problems = undocumented(manifest, columns, require_all_tables=args.schema == "main")
    for p in problems:
        print(f"undocumented: {p}", file=sys.stderr)
    if not (args.database and args.schema == "main"):
        columns = {t: c for t, c in columns.items() if t in published_models(manifest)}
    checked = sum(len(c) for c in columns.values())
    print(f"{len(columns)} published tables, {checked} columns checked: "
          + (f"{len(problems)} problem(s)" if problems else "every one described"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
