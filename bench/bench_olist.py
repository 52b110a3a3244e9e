"""Benchmark: a real marketplace's order export (Olist, Brazil) landed with `cdp.yaml` alone.

The Olist Brazilian e-commerce data set (Kaggle `olistbr/brazilian-ecommerce`, CC BY-NC-SA 4.0)
is an order system's export: orders, order items, payments, customers, reviews, products. This
bench copies its files unchanged into a scratch project's landing folder, maps them onto the POS
contract with `columns:`, `expressions:`, `lookups:` and `skip_when:` only (printed below,
`OLIST_SOURCE`), runs `cdp run`
the way a user would, and prints what landed, what was quarantined and why, the persons, the
published tables, the run's wall and CPU seconds, and `cdp evaluate recommendations --json`.

    .venv/bin/python -m bench.bench_olist

The data: the full files are 9-18 MB each and could not be had in this sandbox (see
docs/benchmarks.md). What is used is a complete, consistent excerpt committed by
sergeishaikin/de_practicum_demo: the first 1,000 orders of the real `olist_orders_dataset.csv`
(2016-10 to 2018-08) with every one of their customers (1,000), order items (1,149) and payments
(1,041); every join holds. It has no reviews or products. Each of its customers has one order,
so it says whether the export lands and publishes, not how good recommendations are on Olist.
Third-party data stays out of the repository: the files are read from
~/.cache/tessera-bench/olist/ (TESSERA_BENCH_CACHE), downloaded once from the pinned commit.

Mapped (config only): orders -> pos.transactions (order_id, order_purchase_timestamp, the
person key customer_unique_id looked up in the customers file by customer_id; no total in the
file: the receipt is worth its lines; canceled/unavailable orders skipped), order items ->
pos.line_items (order_item_id is the line number, product_id the sku, price the unit price,
quantity 1 by expression; lines of canceled/unavailable orders skipped, their status looked up
in the orders file), customers -> pos.loyalty_members (customer_unique_id; city, zip prefix).
Not mapped, and why: see NOT_MAPPED.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.common import OUT, ROOT

CACHE = Path(os.environ.get("TESSERA_BENCH_CACHE", Path.home() / ".cache" / "tessera-bench")) / "olist"
REPO, COMMIT = "sergeishaikin/de_practicum_demo", "33316ece98221e3d082533898520c78134723b62"
FILES = {  # landed name -> sha256 of data/raw/<name> at COMMIT
    "olist_orders_dataset.csv": "7c8397dd7adf2e14c6bd5c0a2a04572584b98dbde72555252abd4e62f2906f82",
    "olist_order_items_dataset.csv": "787223e6fba82aa1ac49bc160b7a441ed30e4945f8df49f1e300401072c9b2b8",
    "olist_customers_dataset.csv": "8ade9c8dce6581ce51e3350fea44f05caf6d3a22760f9872351b497cb399423c",
    "olist_order_payments_dataset.csv": "855b3c68f3e4f83a139557bf0c347f232a5f45ce81b665eae77e530d7b2eccfc",
}
AS_OF = "2018-08-27"  # the excerpt's last purchase day: all of its history is before as_of

# Orders that never became sales (Olist's order_status) are left out, and counted, by skip_when;
# their item lines too, by looking the order's status up in the orders file.
NOT_SOLD = "order_status = 'canceled' or order_status = 'unavailable'"
OLIST_SOURCE = {
    "name": "olist", "kind": "pos", "entities": {
        "transactions": {
            "path": "olist/olist_orders_dataset*.csv",
            "columns": {"order_id": "transaction_id", "order_purchase_timestamp": "occurred_at",
                        "customer_unique_id": "loyalty_id"},
            # the person key is only in the customers file; each order names its per-order customer_id
            "lookups": {"customer_unique_id": {"entity": "loyalty_members", "key": "customer_id",
                                               "column": "customer_unique_id"}},
            "skip_when": NOT_SOLD},
        "line_items": {
            "path": "olist/olist_order_items_dataset*.csv",
            "columns": {"order_id": "transaction_id", "order_item_id": "line_no", "product_id": "sku",
                        "price": "unit_price"},
            "expressions": {"quantity": "1"},
            "lookups": {"order_status": {"entity": "transactions", "key": "order_id", "column": "order_status"}},
            "skip_when": NOT_SOLD},
        "loyalty_members": {
            "path": "olist/olist_customers_dataset*.csv",
            "columns": {"customer_unique_id": "loyalty_id", "customer_city": "city",
                        "customer_zip_code_prefix": "postcode"}},
    },
}

# Recommendations read the catalog (a product not in it is never recommended). Olist's products file
# has neither name nor price, and the excerpt has no products file: the order lines are the
# catalog (sku, price; a line's product id stands for its name, one category for all).
OLIST_CATALOG = {
    "name": "olist_catalog", "kind": "catalog", "entities": {
        "products": {
            "path": "olist/olist_order_items_dataset*.csv",
            "columns": {"product_id": "sku", "price": "price"},
            "expressions": {"name": "product_id", "category": "'all'"}},
    },
}

NOT_MAPPED = {
    "freight_value, payments": "the receipt total is the sum of item prices; freight is not a product line, and "
                               "payment_value (items + freight) has a row per instalment: the order's amount is a "
                               "sum over rows, which a lookup (one value per key) does not take",
    "products (catalog)": "not in the excerpt; Olist's products also have no name or price, which the catalog "
                          "contract requires (the price is on the order line): the catalog is mapped from the "
                          "order lines, with one category for all",
    "reviews (support)": "not in the excerpt; a review names an order, not a requester, so as a support ticket it "
                         "would reach no person",
}


def fetch() -> Path:
    for name, sha in FILES.items():
        path = CACHE / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            url = f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/data/raw/{name}"
            print(f"  downloading {url}", flush=True)
            urllib.request.urlretrieve(url, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != sha:
            raise RuntimeError(f"{path}: sha256 {digest} is not the pinned {sha} ({REPO}@{COMMIT}:data/raw/{name}); "
                               "delete it to download again")
    return CACHE


def _cdp(*args: str) -> str:
    cdp = str(Path(sys.executable).parent / "cdp")
    proc = subprocess.run([cdp, *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    if proc.returncode != 0:
        raise RuntimeError(f"cdp {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def prepare() -> Path:
    """A scratch project (`cdp init`) with the Olist source as its only source and the files landed."""
    import yaml

    data = fetch()
    proj = OUT / "real_olist"
    shutil.rmtree(proj, ignore_errors=True)
    _cdp("init", str(proj))
    cfg = proj / "cdp.yaml"
    settings = yaml.safe_load(cfg.read_text())
    settings.update({"as_of": AS_OF, "sources": [OLIST_SOURCE, OLIST_CATALOG]})
    cfg.write_text(yaml.safe_dump(settings, sort_keys=False))
    landing = proj / "landing" / "olist"
    landing.mkdir(parents=True, exist_ok=True)
    for name in FILES:  # as exported: no file is edited; payments are not mapped (NOT_MAPPED), so not landed
        if name != "olist_order_payments_dataset.csv":
            shutil.copy(data / name, landing / name)
    return cfg


def figures(cfg: Path) -> dict:
    from core.config import load_config
    from core.snapshots import CURRENT, read_manifest
    from core.warehouse import open_warehouse

    config = load_config(cfg)
    out: dict = {}
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        out["files"] = {f"{t} ({Path(f).name})": {"status": s, "rows_loaded": n, "rows_quarantined": q,
                                                   "rows_skipped": k}
                        for t, f, s, n, q, k in con.execute("""
                            SELECT table_name, file, status, rows_loaded, rows_quarantined, rows_skipped FROM raw.loads
                            ORDER BY table_name""").fetchall()}
        out["quarantined_by_reason"] = {f"{t}.{f or '-'}: {r}": n for t, r, f, n in con.execute("""
            SELECT table_name, reason, field, count(*) FROM raw.quarantine GROUP BY ALL ORDER BY 4 DESC""").fetchall()}
    manifest = read_manifest(config.published_dir)
    current = next(h for h in manifest["history"] if h["run_id"] == manifest["current"])
    out["snapshot_as_of"] = current.get("as_of")
    out["published_tables"] = current["tables"]
    import duckdb

    with duckdb.connect(str(config.published_dir / CURRENT), read_only=True) as snap:
        out["persons"] = snap.execute("SELECT count(*) FROM customers").fetchone()[0]
        out["persons_with_orders"], out["orders"], out["revenue"] = snap.execute(
            "SELECT count(*) FILTER (WHERE order_count > 0), sum(order_count), round(sum(revenue), 2) "
            "FROM customer_traits").fetchone()
    return out


def main(customers: int | None = None) -> dict:
    """`make bench` passes its customer count, which a real export does not have: ignored."""
    cfg = prepare()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    _cdp("run", "--config", str(cfg))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"data": f"{REPO}@{COMMIT}:data/raw/ ({', '.join(FILES)})", "as_of": AS_OF,
           "run_wall_s": round(wall, 1),
           "run_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
           **figures(cfg)}
    recs = json.loads(_cdp("evaluate", "recommendations", "--config", str(cfg), "--json"))
    out["recommendations"] = recs if "error" in recs else {
        "cutoff": recs["cutoff"], "buyers_evaluated": recs["customers_evaluated"],
        "known_buyers": recs["known_customers"], "products": recs["products"],
        "blend": recs["blend"]["kind"], "published": recs["blend"]["published"],
        "published_test": recs["blend"]["published_test"],
        **{m: {"hr@10": r["all"]["hit_rate"], "recall@10": r["all"]["recall"]} for m, r in recs["methods"].items()},
        "tessera_at_least_best_baseline": recs["tessera_at_least_best_baseline"]}
    out["not_mapped"] = NOT_MAPPED
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=str))
