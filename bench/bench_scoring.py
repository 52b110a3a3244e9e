"""Benchmark: CPU of the churn and cart-intent models at 100k and 1M customers - a run that
refits (both candidates fitted, calibrated, scored, explained) and a scheduled run in between
(the saved model scores and explains) - on feature frames made here in the shapes dbt's
int_churn_features / int_cart_features have, and of the recommendations stage (blend fitted,
lists and reasons for every customer; the buy-again fallback's lists too) on an order and
view log made here (cost only: quality figures are bench_recommendations' and
bench_real_shops'). One thread, as in the pipeline.

    .venv/bin/python -m bench.bench_scoring [CUSTOMERS ...]      (default 100000 1000000)
    .venv/bin/python -m bench.bench_scoring --profile 200000     (cProfile of one refit run)
    .venv/bin/python -m bench.bench_scoring --profile-scheduled 200000   (... of a scheduled run)
    .venv/bin/python -m bench.bench_scoring --recommendations 100000     (recommendations only)
    .venv/bin/python -m bench.bench_scoring --models 200000 1000000      (churn and cart only)

On the generator about half the customers are recent buyers (scored for churn) and 3% have
an open cart; the frames here keep those shares.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import pandas as pd

BUYER_SHARE = 0.5
CART_SHARE = 0.03
CART_WEEKS = 12


def churn_frame(customers: int, seed: int = 1) -> pd.DataFrame:
    from scoring.churn import FEATURES, LABEL

    rng = np.random.default_rng(seed)
    n = int(customers * BUYER_SHARE)
    frames = []
    for k, snap in enumerate(("train", "validate", "score")):
        f = pd.DataFrame({c: rng.poisson(2, n).astype(np.float64) for c in FEATURES})
        f["days_since_last_order"] = rng.exponential(90, n)
        f["revenue_365d"] = rng.gamma(2, 60, n)
        logit = -1.2 + 0.018 * f["days_since_last_order"] - 0.2 * f["orders_365d"] + 0.1 * f["bad_tickets_90d"]
        f[LABEL] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
        f["person_id"] = [f"p{k}_{i:08d}" for i in range(n)]
        f["snapshot"] = snap
        f["cutoff_at"] = pd.Timestamp("2025-06-30") - pd.Timedelta(days=90 * (2 - k))
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def cart_frame(customers: int, seed: int = 2) -> pd.DataFrame:
    from scoring.cart import FEATURES, LABEL

    rng = np.random.default_rng(seed)
    n = max(int(customers * CART_SHARE), 50)
    frames = []
    for w in range(CART_WEEKS + 1):
        f = pd.DataFrame({c: rng.poisson(1, n).astype(np.float64) for c in FEATURES})
        f["hours_since_added"] = rng.exponential(72, n)
        f["checkout_started"] = (rng.random(n) < 0.3).astype(float)
        logit = -2.5 + 1.5 * f["checkout_started"] - 0.01 * f["hours_since_added"] + 0.3 * f["orders_365d"]
        f[LABEL] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
        f["cart_id"] = [f"c{w}_{i:08d}" for i in range(n)]
        f["person_id"] = [f"p{w}_{i:08d}" for i in range(n)]
        f["cutoff_at"] = pd.Timestamp("2025-06-30") - pd.Timedelta(days=7 * (CART_WEEKS - w))
        f["last_added_at"] = f["cutoff_at"] - pd.to_timedelta(f["hours_since_added"], "h")
        f["snapshot"] = "score" if w == CART_WEEKS else "history"
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


PRODUCTS, CATEGORIES, ORDERS_PER_BUYER, ITEMS_PER_ORDER, HISTORY_DAYS = 3000, 30, 3.0, 2, 730
VIEWER_SHARE, VIEWS_PER_VIEWER = 0.3, 6
AS_OF = pd.Timestamp("2025-06-30")


def interactions(customers: int, seed: int = 3):
    """An order log and a product-view log for `customers` people: half buy (about 3 orders of
    2 products, mostly in a favourite category, with rebuys), 30% view products in the last 180
    days. Only the cost is measured, so the shapes matter, not the realism."""
    from scoring.recommend import Interactions

    rng = np.random.default_rng(seed)
    buyers = rng.permutation(customers)[: int(customers * BUYER_SHARE)]
    orders_each = 1 + rng.poisson(ORDERS_PER_BUYER - 1, len(buyers))
    order_u = np.repeat(buyers, orders_each)
    order_t = AS_OF - pd.to_timedelta(rng.uniform(0, HISTORY_DAYS, len(order_u)), "D")
    line_order = np.repeat(np.arange(len(order_u)), ITEMS_PER_ORDER)
    favourite = rng.integers(0, CATEGORIES, customers)
    per_cat = PRODUCTS // CATEGORIES
    u = order_u[line_order]
    # Own category most of the time, a few popular products (skewed) within it.
    cat = np.where(rng.random(len(u)) < 0.8, favourite[u], rng.integers(0, CATEGORIES, len(u)))
    item = cat * per_cat + np.minimum(rng.zipf(1.6, len(u)) - 1, per_cat - 1)
    lines = pd.DataFrame({"u": u.astype(np.int64), "i": item.astype(np.int64), "order_key": line_order,
                          "t": order_t[line_order]}).drop_duplicates(["order_key", "i"])
    viewers = rng.permutation(customers)[: int(customers * VIEWER_SHARE)]
    vu = np.repeat(viewers, VIEWS_PER_VIEWER)
    vcat = np.where(rng.random(len(vu)) < 0.8, favourite[vu], rng.integers(0, CATEGORIES, len(vu)))
    views = pd.DataFrame({"u": vu.astype(np.int64),
                          "i": (vcat * per_cat + np.minimum(rng.zipf(1.6, len(vu)) - 1, per_cat - 1)).astype(np.int64),
                          "session_id": np.repeat(np.arange(len(viewers) * 2), VIEWS_PER_VIEWER // 2),
                          "t": AS_OF - pd.to_timedelta(rng.uniform(0, 180, len(vu)), "D")})
    products = pd.DataFrame({"sku": [f"s{i:05d}" for i in range(PRODUCTS)],
                             "category": [f"c{i // per_cat}" for i in range(PRODUCTS)]})
    products["cat"] = pd.factorize(products["category"])[0]
    persons = np.array([f"p{i:08d}" for i in range(customers)], dtype=object)
    return Interactions(persons, products, lines, views)


def measure_recommendations(customers: int) -> dict:
    """The stage as the pipeline runs it (recommend_as_of: blend fitted on a bounded sample of
    buyers, lists and reasons for everyone), and buy-again's lists for everyone (what the stage
    publishes when the blend does not beat it)."""
    from threadpoolctl import threadpool_limits

    from core.settings.scoring import RecommendationsSettings
    from scoring import recommend

    data = interactions(customers)
    settings = RecommendationsSettings()
    out = {"customers": customers, "order_lines": int(len(data.lines)), "views": int(len(data.views))}
    with threadpool_limits(limits=1):
        c0, t0 = _cpu(), time.perf_counter()
        result = recommend.recommend_as_of(data, AS_OF, settings)
        out["recommendations_cpu_s"] = round(_cpu() - c0, 1)
        out["recommendations_wall_s"] = round(time.perf_counter() - t0, 1)
        out["recommendations_rows"] = int(len(result.recommendations))
        out["recommendations_published"] = result.blend.published
        state = recommend.build_state(data, AS_OF, settings)
        c0 = _cpu()
        fallback = recommend.simple_lists(state, "buy_again", np.arange(data.n_users), settings,
                                          settings.list_length)
        out["buy_again_lists_cpu_s"] = round(_cpu() - c0, 1)
        out["buy_again_lists_rows"] = int(len(fallback))
    # The process's peak so far: one size per process (`--recommendations N`) for a figure of that size.
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(customers: int) -> dict:
    from threadpoolctl import threadpool_limits

    from core.settings.scoring import CartIntentSettings, ChurnSettings
    from scoring import cart, churn

    churn_features, cart_features = churn_frame(customers), cart_frame(customers)
    gaps = np.array([6.0, 20.0, 40.0])
    out = {"customers": customers, "churn_rows": int(len(churn_features)), "cart_rows": int(len(cart_features))}
    with threadpool_limits(limits=1):
        for label, fn in (
                ("churn_refit", lambda saved: churn.train_and_score(churn_features, ChurnSettings(), saved=saved)),
                ("cart_refit", lambda saved: cart.train_and_score(cart_features, gaps, CartIntentSettings(), saved=saved))):
            c0, t0 = _cpu(), time.perf_counter()
            result = fn(None)
            out[f"{label}_cpu_s"] = round(_cpu() - c0, 1)
            out[f"{label}_wall_s"] = round(time.perf_counter() - t0, 1)
            out[f"{label}_algorithm"] = result.algorithm
            raw = result.model.raw
            if hasattr(raw, "n_iter_"):  # boosting rounds early stopping kept
                out[f"{label}_boosting_rounds"] = int(raw.n_iter_)
            scheduled = label.replace("refit", "scheduled")
            c0, t0 = _cpu(), time.perf_counter()
            again = fn(result.model)
            assert not again.refitted
            out[f"{scheduled}_cpu_s"] = round(_cpu() - c0, 1)
            out[f"{scheduled}_wall_s"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def profile_scheduled(customers: int) -> None:
    import cProfile
    import pstats

    from threadpoolctl import threadpool_limits

    from core.settings.scoring import ChurnSettings
    from scoring import churn

    features = churn_frame(customers)
    with threadpool_limits(limits=1):
        saved = churn.train_and_score(features, ChurnSettings()).model
        prof = cProfile.Profile()
        prof.enable()
        churn.train_and_score(features, ChurnSettings(), saved=saved)
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def profile(customers: int) -> None:
    import cProfile
    import pstats

    from threadpoolctl import threadpool_limits

    from core.settings.scoring import ChurnSettings
    from scoring import churn

    features = churn_frame(customers)
    with threadpool_limits(limits=1):
        prof = cProfile.Profile()
        prof.enable()
        churn.train_and_score(features, ChurnSettings())
        prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


def main(customers: int = 1_000_000, sizes: tuple[int, ...] | None = None, recommendations: bool = True,
         models: bool = True) -> dict:
    """`make bench` passes its customer count: measured at a tenth of it and at it."""
    sizes = sizes or (max(customers // 10, 1_000), customers)
    results = {}
    for n in sizes:
        results[n] = {**(measure(n) if models else {}), **(measure_recommendations(n) if recommendations else {})}
        print(json.dumps(results[n]), file=sys.stderr, flush=True)  # a long run's figures as they come
    first, last = sizes[0], sizes[-1]
    ratios = {"customers_ratio": round(last / first, 2)}
    for key in ("churn_refit_cpu_s", "churn_scheduled_cpu_s", "cart_refit_cpu_s", "cart_scheduled_cpu_s",
                "recommendations_cpu_s", "buy_again_lists_cpu_s"):
        if key in results[last]:
            ratios[key.replace("_cpu_s", "_cpu_ratio")] = round(results[last][key] / max(results[first][key], 1e-9), 2)
    return {"sizes": results, "ratios": ratios}


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--profile":
        profile(int(args[1]) if len(args) > 1 else 200_000)
    elif args and args[0] == "--profile-scheduled":
        profile_scheduled(int(args[1]) if len(args) > 1 else 200_000)
    elif args and args[0] in ("--recommendations", "--models"):
        only_models = args[0] == "--models"
        print(json.dumps(main(sizes=tuple(int(a) for a in args[1:]) or (100_000, 1_000_000),
                              recommendations=not only_models, models=only_models), indent=2))
    else:
        print(json.dumps(main(sizes=tuple(int(a) for a in args) or (100_000, 1_000_000)), indent=2))
