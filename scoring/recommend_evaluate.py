"""`cdp evaluate recommendations`: Tessera's recommendations against simple baselines on a time
split of the warehouse's own orders - history up to the cut-off, truth = what each customer
bought in the next `horizon_days`. Needs no ground truth, so it runs on any shop's data.

Tessera's lists are computed by the recommender itself (scoring/recommend.py) as of the
cut-off: its blend is fitted on the split ending at the cut-off, so nothing after the cut-off
is seen. People evaluated: customers who bought anything in the horizon; `known` = those who
had bought before the cut-off too (a cold start gets trending products from every method).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from core.settings.scoring import RecommendationsSettings
from core.warehouse import open_warehouse
from scoring.recommend import bought_between, build_state, load_interactions, recommend_as_of
from scoring.recommend_metrics import (
    als_lists,
    buy_again_lists,
    item_item_lists,
    list_metrics,
    popularity_lists,
    ranking_metrics,
)

METHODS = ("tessera", "popularity", "buy_again", "item_item", "als")


def _round(value):
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def last_order_time(con) -> pd.Timestamp | None:
    value = con.execute("SELECT max(ordered_at) FROM intermediate.int_order_lines WHERE person_id IS NOT NULL").fetchone()[0]
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts


def evaluate_recommendations(con, settings: RecommendationsSettings, k: int = 10, cutoff=None,
                             horizon_days: int = 90) -> dict:
    started = time.perf_counter()
    last = last_order_time(con)
    if last is None:
        return {"error": "no orders in the warehouse: run the pipeline first (`cdp run`)"}
    if cutoff is None:
        cutoff = (last - pd.Timedelta(days=horizon_days)).normalize() + pd.Timedelta(hours=23, minutes=59, seconds=59)
    cutoff = pd.Timestamp(cutoff)
    end = cutoff + pd.Timedelta(days=horizon_days)
    data = load_interactions(con, end, cutoff - pd.Timedelta(days=settings.horizon_days + settings.view_days))
    truth = bought_between(data, cutoff, end)
    if truth.empty:
        return {"error": f"no orders after the cut-off {cutoff:%Y-%m-%d}: choose an earlier --cutoff"}
    people = np.unique(truth["u"].to_numpy())
    state = build_state(data, cutoff, settings)
    known = people[state.user_orders[people] > 0]

    tessera = recommend_as_of(data, cutoff, settings, k=k, rows=people)
    sku_index = pd.Series(np.arange(data.n_items), index=data.products["sku"].to_numpy())
    person_index = pd.Series(np.arange(data.n_users), index=data.persons)
    lists = {"tessera": pd.DataFrame({"u": person_index[tessera.recommendations["person_id"]].to_numpy(),
                                      "i": sku_index[tessera.recommendations["sku"]].to_numpy(),
                                      "rank": tessera.recommendations["rank"].to_numpy()}),
             "popularity": popularity_lists(state, people, k),
             "buy_again": buy_again_lists(state, people, k),
             "item_item": item_item_lists(state, people, k)}
    als = als_lists(state, people, k)
    if als is not None:
        lists["als"] = als
    results = {}
    for name, frame in lists.items():
        results[name] = {"all": {**ranking_metrics(frame, truth, k), **list_metrics(frame, state, people, k)},
                         "known": {**ranking_metrics(frame, truth[truth["u"].isin(known)], k),
                                   **list_metrics(frame, state, known, k)}}
    baselines = [m for m in results if m != "tessera"]
    best = {metric: max(baselines, key=lambda m: results[m]["all"][metric]) for metric in ("hit_rate", "recall")}
    wins = {metric: results["tessera"]["all"][metric] >= results[best[metric]]["all"][metric]
            for metric in ("hit_rate", "recall")}
    return _round({
        "k": k, "cutoff": str(cutoff), "horizon_days": horizon_days, "truth_end": str(end),
        "customers_evaluated": int(len(people)), "known_customers": int(len(known)),
        "products": int(data.n_items),
        "settings": {"list_length": settings.list_length,
                     "exclude_bought_within_days": settings.exclude_bought_within_days,
                     "max_per_category": settings.max_per_category},
        "blend": {"kind": tessera.blend.kind, "published": tessera.blend.published,
                  "published_test": tessera.blend.published_test,
                  "training_buyers": tessera.blend.training_buyers,
                  "label_window": tessera.blend.label_window, "validation": tessera.blend.validation},
        "notes": state.notes,
        "methods": results,
        "best_baseline": best,
        "tessera_at_least_best_baseline": wins,
        "seconds": time.perf_counter() - started,
    })


def evaluate_config(config, k: int = 10, cutoff=None, horizon_days: int = 90) -> dict:
    from threadpoolctl import threadpool_limits

    with open_warehouse(config.warehouse_path, read_only=True) as con, threadpool_limits(limits=1):
        return evaluate_recommendations(con, config.recommendations, k=k, cutoff=cutoff, horizon_days=horizon_days)


def table(result: dict, population: str = "all") -> str:
    """The markdown table the README and the bench print."""
    k = result["k"]
    lines = [f"| method | HitRate@{k} | Recall@{k} | Precision@{k} | NDCG@{k} | coverage | novelty |",
             "|---|---|---|---|---|---|---|"]
    for name, m in result["methods"].items():
        r = m[population]
        lines.append(f"| {name} | {r.get('hit_rate')} | {r.get('recall')} | {r.get('precision')} | {r.get('ndcg')} "
                     f"| {r.get('coverage')} | {r.get('novelty')} |")
    return "\n".join(lines)
