"""`make bench`: every benchmark, with its figures printed and saved to bench_out/results.json.

    python -m bench.run_all [--customers N] [--only generator,ingestion,identity] [--customer-list-rows N]
"""

from __future__ import annotations

import argparse
import importlib
import json
import time

from bench.common import OUT

BENCHES = ["generator", "ingestion", "identity", "marts", "gate", "activation", "experiments", "recommendations",
           "real_shops", "olist", "scoring", "serve", "pipeline", "identity_incremental",
           "identity_customer_list", "spark"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--only", default=",".join(BENCHES))
    ap.add_argument("--customer-list-rows", type=int, default=100_000,
                    help="rows of the identity customer-list bench (Tessera vs bare Splink); 1000000 for the 1M run")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in [b for b in args.only.split(",") if b]:
        try:
            module = importlib.import_module(f"bench.bench_{name}")
        except ModuleNotFoundError:
            print(f"== {name}: not built yet, skipped")
            continue
        n = args.customers
        if name == "identity":  # sized to ~1.27M identity records at the default 1M customers
            n = max(1_000, round(n * module.SHARE_OF_RUN_ALL_CUSTOMERS))
        if name == "identity_incremental":  # the daily identity bench is sized at 100k, 30 days
            n = min(n, 100_000)
        if name == "identity_customer_list":  # its own size: 100k rows take minutes, 1M about an hour
            n = args.customer_list_rows
        print(f"== {name} ({n:,} customers)", flush=True)
        t0 = time.perf_counter()
        results[name] = module.main(n)
        results[name]["bench_wall_s"] = round(time.perf_counter() - t0, 1)
        for k, v in results[name].items():
            print(f"   {k:<28} {v}")
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"figures saved to {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
