"""Benchmark: recommendations and churn on real shops' transaction logs, through the same CLI
and evaluation code as bench_recommendations (the generator bench): each log is landed in a
scratch project with `cdp.yaml` alone (an invoice-lines export, README "Exports as they come"),
`cdp run` with `as_of` = the log's last day - 90 days (every stage sees history only), then

- `cdp evaluate recommendations --json`: a time split of that history (truth = next 90 days),
  Tessera next to popularity, buy-again, item-item and implicit ALS on the same customers;
- `cdp evaluate churn --json`: the deployed churn model's probabilities at as_of against what
  each customer really did in the 90 days after as_of (the part of the log never landed,
  written as the evaluation's ground-truth files), beside the model's stored validation.

    .venv/bin/python -m bench.bench_real_shops            (all data sets)
    .venv/bin/python -m bench.bench_real_shops cdnow      (one)

Third-party data stays out of the repository: each file is read from ~/.cache/tessera-bench/
(TESSERA_BENCH_CACHE), downloaded once from the pinned GitHub commit below when missing.
The full UCI "Online Retail" / "Online Retail II" files could not be found in a public
repository snapshot (Git LFS pointers and 20k-52k-line excerpts only); the retailer here is a
40,000-line sample of UCI Online Retail spread over its whole year (7.4% of its 541,909 lines),
so its figures are those of a thinned log (fewer items per customer), not of the full shop.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from bench.common import OUT, ROOT

CACHE = Path(os.environ.get("TESSERA_BENCH_CACHE", Path.home() / ".cache" / "tessera-bench"))
HORIZON_DAYS = 90
UCI_HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]


@dataclass(frozen=True)
class DataSet:
    name: str
    repo: str
    commit: str
    path: str
    sha256: str
    about: str
    recommendations: bool  # False: no product codes (churn only)

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.path.replace(' ', '%20')}"

    @property
    def cached(self) -> Path:
        return CACHE / self.name / Path(self.path).name


DATASETS = {
    "online_retail_sample": DataSet(
        "online_retail_sample", "moatazsaad/Market-Basket-Analysis", "2e55484a3f4e8a4139755677848c89c453814568",
        "Online Retail.xlsx", "15bc6da6f18695caadc82662aec27457b94a7c52d43c7ab661cafad7b9c1c441",
        "UCI Online Retail (UK gift-ware, many wholesalers), 40,000 of its 541,909 invoice lines, "
        "2010-12-01 to 2011-12-09", recommendations=True),
    "cdnow": DataSet(
        "cdnow", "xiaobeicheng/User-consumption-data", "2f8455a8d957ada702ab36498bdc535f373d0f5e",
        "CDNOW_master.txt", "56c5dd5ed54f30e73e602b8bdddcb8081bf28b4f4d2593fa46b641792bc0df54",
        "CDNOW master (Fader & Hardie): all 69,659 purchases of the 23,570 customers of the 1997 Q1 "
        "cohort over 18 months; this copy's years read 2021-2022 for 1997-1998; no product codes",
        recommendations=False),
}


def fetch(data: DataSet) -> Path:
    import hashlib

    if not data.cached.exists():
        data.cached.parent.mkdir(parents=True, exist_ok=True)
        print(f"  downloading {data.url}", flush=True)
        urllib.request.urlretrieve(data.url, data.cached)
    digest = hashlib.sha256(data.cached.read_bytes()).hexdigest()
    if digest != data.sha256:
        raise RuntimeError(f"{data.cached}: sha256 {digest} is not the pinned {data.sha256} "
                           f"({data.repo}@{data.commit}:{data.path}); delete it to download again")
    return data.cached


# --------------------------------------------------------------------------- readers
def _xlsx_rows(path: Path):
    """Rows of the first sheet of an .xlsx with inline or shared strings (the standard library
    only: no spreadsheet package for one bench file). Dates stay Excel serial numbers."""
    ns = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
    with zipfile.ZipFile(path) as z:
        shared = []
        if "xl/sharedStrings.xml" in z.namelist():
            for si in ElementTree.fromstring(z.read("xl/sharedStrings.xml")).iter(f"{ns}si"):
                shared.append("".join(t.text or "" for t in si.iter(f"{ns}t")))
        with z.open("xl/worksheets/sheet1.xml") as sheet:
            for _, row in ElementTree.iterparse(sheet):
                if row.tag != f"{ns}row":
                    continue
                out = {}
                for c in row.iter(f"{ns}c"):
                    col = re.match(r"[A-Z]+", c.get("r")).group(0)
                    if c.get("t") == "inlineStr":
                        out[col] = "".join(t.text or "" for t in c.iter(f"{ns}t"))
                    else:
                        v = c.find(f"{ns}v")
                        out[col] = None if v is None else (shared[int(v.text)] if c.get("t") == "s" else v.text)
                yield out
                row.clear()


def _excel_time(serial: str) -> dt.datetime:
    return dt.datetime(1899, 12, 30) + dt.timedelta(days=float(serial))


def uci_lines(path: Path) -> list[dict]:
    rows = _xlsx_rows(path)
    header = next(rows)
    cols = {name: col for col, name in header.items()}
    lines = []
    for r in rows:
        line = {name: r.get(cols[name]) for name in UCI_HEADER}
        line["InvoiceDate"] = _excel_time(line["InvoiceDate"])
        lines.append(line)
    return lines


def cdnow_lines(path: Path) -> list[dict]:
    """One invoice line per purchase record: customer, day, CDs bought, dollars."""
    lines = []
    for n, raw in enumerate(path.read_text().splitlines()):
        if not raw.strip():
            continue
        customer, day, quantity, amount = raw.split()
        quantity = int(quantity)
        lines.append({"InvoiceNo": f"CD{n:06d}", "StockCode": "CD", "Description": "CDs",
                      "Quantity": quantity, "InvoiceDate": dt.datetime.strptime(day, "%Y%m%d") + dt.timedelta(hours=12),
                      "UnitPrice": round(float(amount) / quantity, 4) if quantity else 0.0,
                      "CustomerID": str(int(customer)), "Country": "United States"})
    return lines


READERS = {"online_retail_sample": uci_lines, "cdnow": cdnow_lines}


def non_product(sku: str) -> bool:
    # UCI Online Retail's goods are 5-digit codes (with a variant letter); POST, DOT, M, C2,
    # BANK CHARGES, AMAZONFEE... are postage, fees and adjustments.
    return not re.match(r"^\d{5}", sku)


# --------------------------------------------------------------------------- the project
def _cdp(*args: str) -> str:
    cdp = str(Path(sys.executable).parent / "cdp")
    proc = subprocess.run([cdp, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    if proc.returncode != 0:
        raise RuntimeError(f"cdp {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def _source_config() -> dict:
    return {"name": "shop", "kind": "pos", "entities": {
        "transactions": {"path": "pos/invoice_lines*.csv", "rows": "lines",
                         "columns": {"InvoiceNo": "transaction_id", "InvoiceDate": "occurred_at"},
                         "expressions": {"loyalty_id": "cast_integer(CustomerID)", "total": "Quantity * UnitPrice"}},
        "line_items": {"path": "pos/invoice_lines*.csv", "number_lines": True,
                       "columns": {"InvoiceNo": "transaction_id", "StockCode": "sku", "Quantity": "quantity",
                                   "UnitPrice": "unit_price"}},
        "loyalty_members": {"path": "pos/invoice_lines*.csv", "rows": "lines",
                            "expressions": {"loyalty_id": "cast_integer(CustomerID)", "city": "trim(Country)"}}}}


def prepare(data: DataSet) -> tuple[Path, dict]:
    """A scratch project with the log's history landed and the future written as ground truth."""
    import yaml

    lines = READERS[data.name](fetch(data))
    last = max(x["InvoiceDate"] for x in lines)
    as_of = (last - dt.timedelta(days=HORIZON_DAYS)).date()
    end_of_as_of = dt.datetime.combine(as_of, dt.time(23, 59, 59))
    proj = OUT / f"real_{data.name}"
    cfg = proj / "cdp.yaml"
    info = {"data_set": data.about, "source": f"{data.repo}@{data.commit}:{data.path}", "lines": len(lines),
            "first_day": str(min(x["InvoiceDate"] for x in lines).date()), "last_day": str(last.date()),
            "as_of": str(as_of)}
    if (proj / ".built").exists():
        return cfg, info
    shutil.rmtree(proj, ignore_errors=True)  # a half-built project from a failed run
    _cdp("init", str(proj))
    settings = yaml.safe_load(cfg.read_text())
    settings.update({"as_of": str(as_of), "ingestion": {**(settings.get("ingestion") or {}),
                                                        "earliest_date": "1990-01-01"},
                     "sources": [_source_config(), {"name": "catalog", "kind": "catalog",
                                                    "entities": {"products": {"path": "catalog/products*.csv"}}}]})
    cfg.write_text(yaml.safe_dump(settings, sort_keys=False))
    landing = proj / "landing"
    history = [x for x in lines if x["InvoiceDate"] <= end_of_as_of]
    (landing / "pos").mkdir(parents=True, exist_ok=True)
    with open(landing / "pos" / "invoice_lines_all.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(UCI_HEADER)
        for x in history:
            w.writerow([x[c] if c != "InvoiceDate" else x[c].strftime("%Y-%m-%d %H:%M:%S") for c in UCI_HEADER])
    products: dict[str, tuple[str, float]] = {}
    for x in history:
        products.setdefault(str(x["StockCode"]).strip(), ((x["Description"] or "").strip(), float(x["UnitPrice"] or 0)))
    (landing / "catalog").mkdir(parents=True, exist_ok=True)
    with open(landing / "catalog" / "products.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "name", "category", "price", "non_product"])
        for sku, (name, price) in sorted(products.items()):
            # The log has no categories: every product is in one, so category affinity and the
            # per-category cap cannot help or hurt any method.
            w.writerow([sku, name or sku, "all", abs(price), str(non_product(sku)).lower()])
    t0 = time.perf_counter()
    _cdp("run", "--config", str(cfg))
    info["run_s"] = round(time.perf_counter() - t0, 1)
    # Ground truth for `cdp evaluate churn`, written after the run (the pipeline never reads
    # it; identity would take a ground_truth folder for the generator's): each loyalty member
    # record is its own customer, and what they bought after as_of. No web data, no open carts.
    truth = landing / "ground_truth"
    truth.mkdir(parents=True, exist_ok=True)
    customers = sorted({str(int(float(x["CustomerID"]))) for x in history if x["CustomerID"]})
    with open(truth / "record_person.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "entity", "record_id", "person_id"])
        # person ids with a letter: `cdp evaluate churn` reads them back with pandas, which would
        # make numbers of digits-only ids and match none of them
        w.writerows(["shop", "loyalty_members", c, f"c{c}"] for c in customers)
    with open(truth / "future_purchases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["person_id", "occurred_at"])
        w.writerows([f"c{int(float(x['CustomerID']))}", x["InvoiceDate"].strftime("%Y-%m-%d %H:%M:%S")] for x in lines
                    if x["CustomerID"] and x["InvoiceDate"] > end_of_as_of and float(x["Quantity"]) > 0)
    (truth / "open_carts.csv").write_text("cart_id,purchased_within_7d\n")
    (proj / ".built").write_text("ok")
    return cfg, info


def churn_baselines(cfg: Path) -> dict:
    """The baselines a data scientist tries first, on the same rows as the model: days since the
    last order alone, and a logistic regression on all churn features (scikit-learn's, as the
    candidate in scoring/models.py, uncalibrated), both fitted on the `train` snapshot. Each
    measured on the validation rows and against the same future truth as the model: ROC AUC,
    ECE, mean predicted against observed."""
    import pandas as pd

    from core.config import load_config
    from core.warehouse import open_warehouse
    from scoring.churn import FEATURES, LABEL
    from scoring.evaluate import _person_truth_map
    from scoring.models import binary_metrics, expected_calibration_error, make_model

    config = load_config(cfg)
    truth_dir = config.landing_dir / "ground_truth"
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        rows = con.execute("SELECT * FROM intermediate.int_churn_features").df()
        mapping = _person_truth_map(con, truth_dir)
    rows[FEATURES] = rows[FEATURES].astype(float).fillna(0.0)  # as scoring/churn.py does
    train, validate = rows[rows["snapshot"] == "train"], rows[rows["snapshot"] == "validate"]
    future = pd.read_csv(truth_dir / "future_purchases.csv", dtype=str)
    score = rows[rows["snapshot"] == "score"].merge(mapping, on="person_id")
    churned = (~score["true_id"].isin(set(future["person_id"]))).astype(int)
    out: dict = {}
    if train[LABEL].nunique() < 2:
        return {"baselines": "no labelled train snapshot"}
    for name, columns in (("recency_alone", ["days_since_last_order"]), ("logistic_regression", FEATURES)):
        model = make_model("logistic_regression", 7).fit(train[columns].to_numpy(float), train[LABEL].to_numpy(int))
        result = {}
        for where, frame, y in (("validation", validate, validate[LABEL]), ("future_90d", score, churned)):
            p = model.predict_proba(frame[columns].to_numpy(float))[:, 1]
            m = binary_metrics(y, p)
            result[where] = {"roc_auc": round(m["roc_auc"], 4), "ece": round(expected_calibration_error(y, p), 4),
                             "mean_predicted": round(m["mean_predicted"], 4),
                             "observed": round(m["positive_rate"], 4)}
        out[name] = result
    return out


def run(data: DataSet) -> dict:
    cfg, info = prepare(data)
    out = dict(info)
    if data.recommendations:
        recs = json.loads(_cdp("evaluate", "recommendations", "--config", str(cfg), "--json"))
        if "error" in recs:
            out["recommendations"] = recs
        else:
            out["recommendations"] = {
                "cutoff": recs["cutoff"], "buyers_evaluated": recs["customers_evaluated"],
                "known_buyers": recs["known_customers"], "products": recs["products"], "blend": recs["blend"],
                **{f"{m}": {"hr@10": r["all"]["hit_rate"], "recall@10": r["all"]["recall"],
                            "hr@10_known": r["known"]["hit_rate"], "recall@10_known": r["known"]["recall"]}
                   for m, r in recs["methods"].items()},
                "tessera_at_least_best_baseline": recs["tessera_at_least_best_baseline"]}
    churn = json.loads(_cdp("evaluate", "churn", "--config", str(cfg), "--json"))
    churn = churn.get("churn", churn)
    gt, stored = churn.get("ground_truth", {}), churn.get("stored", {})
    out["churn"] = {
        "algorithm": stored.get("algorithm"),
        "future_90d": {k: gt.get(k) for k in ("roc_auc", "pr_auc", "ece", "mean_predicted", "positive_rate",
                                               "persons_scored", "persons_matched_to_truth")},
        "validation": {k: stored.get("validation", {}).get(k) for k in ("roc_auc", "ece", "mean_predicted",
                                                                        "positive_rate")},
        "baselines": churn_baselines(cfg)}
    return out


def main(customers: int | None = None, names: list[str] | None = None) -> dict:
    """`make bench` passes its customer count, which a real log does not have: ignored."""
    return {name: run(DATASETS[name]) for name in (names or list(DATASETS))}


if __name__ == "__main__":
    print(json.dumps(main(names=sys.argv[1:] or None), indent=2, default=str))
