"""The recommender (scoring/recommend.py) and its evaluation (scoring/recommend_evaluate.py) on a
small shop made here in DuckDB - the four tables the recommender reads, no dbt needed.

The shop: every person has a favourite category and two staple products they rebuy about every
30 days, plus one-off purchases in their category; postage (a non-product) is on most orders
and is the best seller. So buy-again is a strong baseline, popularity is fooled by postage, and
a recommender that cannot rebuy or that recommends postage loses.
"""

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest

from core.config import ConfigError, config_from_dict
from core.settings.scoring import RecommendationsSettings
from scoring.recommend import REASONS, choose_published, run_recommendations
from scoring.recommend_evaluate import evaluate_recommendations
from scoring.recommend_metrics import ranking_metrics

END = dt.datetime(2026, 6, 30, 12)


def make_shop(persons: int = 400, seed: int = 3, rebuys: bool = True) -> duckdb.DuckDBPyConnection:
    """`rebuys=False`: nobody buys a product twice (each order is a product new to the person,
    own category first, then the next one), so buy-again cannot hit and a blend can."""
    rng = np.random.default_rng(seed)
    cats = ["a", "b", "c", "d"]
    skus = [f"{c}{n:02d}" for c in cats for n in range(12)]
    products = pd.DataFrame({"sku": skus + ["SHIP"], "category": [s[0] for s in skus] + ["fees"],
                             "non_product": [False] * len(skus) + [True]})
    lines, views = [], []
    for p in range(persons):
        cat = cats[p % 4]
        own = [s for s in skus if s[0] == cat]
        staples = list(rng.choice(own, 2, replace=False))
        nxt = [s for s in skus if s[0] == cats[(p + 1) % 4]]
        new_items = list(rng.permutation(own)) + list(rng.permutation(nxt))
        t = END - dt.timedelta(days=int(rng.integers(300, 500)))
        order = 0
        interval = rng.uniform(20, 40)
        while t < END:
            if rebuys:
                basket = [staples[order % 2]] + ([str(rng.choice(own))] if rng.random() < 0.5 else [])
            else:
                basket = [new_items[order % len(new_items)]]
            basket += ["SHIP"] if rng.random() < 0.9 else []
            for sku in dict.fromkeys(basket):
                lines.append((f"p{p}", f"o{p}_{order}", sku, t))
            if rng.random() < 0.5:
                for sku in rng.choice(own, 2, replace=False):
                    views.append((f"p{p}", f"s{p}_{order}", str(sku), t - dt.timedelta(hours=1)))
            order += 1
            t += dt.timedelta(days=float(rng.normal(interval, 4)))
    con = duckdb.connect()
    for schema in ("intermediate", "staging", "marts"):
        con.execute(f"CREATE SCHEMA {schema}")
    con.register("p", products)
    con.execute("CREATE TABLE staging.stg_catalog__products AS SELECT * FROM p")
    con.register("l", pd.DataFrame(lines, columns=["person_id", "order_key", "sku", "ordered_at"]))
    con.execute("CREATE TABLE intermediate.int_order_lines AS SELECT * FROM l")
    con.register("v", pd.DataFrame(views, columns=["person_id", "session_id", "sku", "occurred_at"]))
    con.execute("CREATE TABLE intermediate.int_web_product_events AS SELECT *, 'product_viewed' AS event_name FROM v")
    # Two customers with no history at all: a cold start.
    con.execute("""CREATE TABLE marts.customers AS SELECT DISTINCT person_id FROM intermediate.int_order_lines
                   UNION ALL SELECT 'cold1' UNION ALL SELECT 'cold2'""")
    return con


@pytest.fixture(scope="module")
def shop():
    return make_shop()


def test_ranking_metrics_by_hand():
    lists = pd.DataFrame({"u": [0, 0, 1, 1], "rank": [1, 2, 1, 2], "i": [5, 6, 7, 8]})
    truth = pd.DataFrame({"u": [0, 1, 1], "i": [6, 1, 2]})
    m = ranking_metrics(lists, truth, 2)
    assert m["users"] == 2 and m["hit_rate"] == 0.5
    assert m["recall"] == pytest.approx(0.5 * 1.0)  # person 0 found 1 of 1, person 1 none of 2
    assert m["precision"] == pytest.approx(0.25)
    assert m["ndcg"] == pytest.approx(0.5 * (1 / np.log2(3)))


def test_lists_respect_length_non_products_diversity_and_reasons(shop):
    settings = RecommendationsSettings(list_length=6, max_per_category=3, collaborative=False)
    result = run_recommendations(shop, pd.Timestamp(END), settings)
    recs = result.recommendations
    assert result.blend.kind == "ranker"
    assert list(recs.columns) == ["person_id", "rank", "sku", "score", "reason", "as_of"]
    assert recs.groupby("person_id").size().max() == 6
    assert recs["person_id"].nunique() == shop.execute("SELECT count(*) FROM marts.customers").fetchone()[0]
    assert "SHIP" not in set(recs["sku"])  # the best seller, but not a product
    assert (recs.assign(c=recs["sku"].str[0]).groupby(["person_id", "c"]).size() <= 3).all()
    assert set(recs["reason"]) <= set(REASONS)
    # Staples are rebought: they come back, explained as buy_again or replenishment.
    assert {"buy_again", "replenishment"} & set(recs["reason"])
    # Scores never increase down a list; cold starts get the same trending list.
    ordered = recs.sort_values(["person_id", "rank"])
    assert (ordered.groupby("person_id")["score"].diff().dropna() <= 1e-9).all()
    cold = recs[recs["person_id"].isin(["cold1", "cold2"])]
    assert set(cold["reason"]) == {"trending"}
    assert list(cold[cold["person_id"] == "cold1"]["sku"]) == list(cold[cold["person_id"] == "cold2"]["sku"])


def test_exclusion_window_is_a_setting(shop):
    settings = RecommendationsSettings(list_length=5, exclude_bought_within_days=60, collaborative=False)
    recs = run_recommendations(shop, pd.Timestamp(END), settings).recommendations
    recent = shop.execute("""SELECT DISTINCT person_id, sku FROM intermediate.int_order_lines
                             WHERE ordered_at > ?::TIMESTAMP - INTERVAL 60 DAY""", [END]).df()
    assert recs.merge(recent, on=["person_id", "sku"]).empty


def test_evaluation_time_split_beats_baselines_on_a_repeat_purchase_shop(shop):
    cutoff = pd.Timestamp(END) - pd.Timedelta(days=60)
    # Every person here buys in one category only, so the diversity cap is lifted (k = 5): this
    # measures the blend, not the cost of diversity.
    result = evaluate_recommendations(shop, RecommendationsSettings(max_per_category=5), k=5, cutoff=cutoff,
                                      horizon_days=60)
    methods = result["methods"]
    assert set(methods) == {"tessera", "popularity", "buy_again", "item_item", "als"}
    assert result["customers_evaluated"] > 300
    for name in methods:
        assert {"hit_rate", "recall", "precision", "ndcg", "coverage", "novelty"} <= set(methods[name]["all"])
    # Popularity recommends the same few products to everyone; buy-again is the one to beat.
    assert methods["buy_again"]["all"]["hit_rate"] > methods["popularity"]["all"]["hit_rate"]
    # Buy-again is close to perfect on this shop by construction: the blend must match it (within
    # 0.01, for BLAS differences) and beat the rest.
    tessera = methods["tessera"]["all"]
    for metric in ("hit_rate", "recall"):
        assert tessera[metric] >= max(m["all"][metric] for m in methods.values()) - 0.01, result
        assert tessera[metric] > methods["item_item"]["all"][metric] + 0.1
    # Nothing after the cut-off leaked into the blend's training labels.
    assert pd.Timestamp(result["blend"]["label_window"][1]) <= cutoff


def test_settings_are_validated(tmp_path):
    config = config_from_dict({"recommendations": {"list_length": 12, "exclude_bought_within_days": 30}}, tmp_path)
    assert config.recommendations.list_length == 12
    with pytest.raises(ConfigError, match="recommendations.list_lenght"):
        config_from_dict({"recommendations": {"list_lenght": 12}}, tmp_path)
    with pytest.raises(ConfigError, match="list_length"):
        config_from_dict({"recommendations": {"list_length": 0}}, tmp_path)
    with pytest.raises(ConfigError, match="blend_confidence"):
        config_from_dict({"recommendations": {"blend_confidence": 1.0}}, tmp_path)
    # The replaced margin setting says what replaced it.
    with pytest.raises(ConfigError, match="blend_must_beat_by was replaced by blend_confidence"):
        config_from_dict({"recommendations": {"blend_must_beat_by": 0.01}}, tmp_path)


def test_a_shop_without_web_views_fits_its_ranker():
    # A till export alone (no web data): every view feature is empty; the ranker still fits
    # (scikit-learn's binning failed on an all-missing column, found on UCI Online Retail).
    con = make_shop(persons=200, seed=4)
    con.execute("DELETE FROM intermediate.int_web_product_events")
    # ... and no categories (one for the whole catalog): the diversity cap must not cut every list
    # to max_per_category products (it did on UCI Online Retail).
    con.execute("UPDATE staging.stg_catalog__products SET category = 'all' WHERE NOT non_product")
    result = run_recommendations(con, pd.Timestamp(END), RecommendationsSettings())
    assert result.blend.kind == "ranker"
    assert result.recommendations["person_id"].nunique() == 202
    assert (result.recommendations.groupby("person_id").size() == 10).all()


def _held_out(rng, buyers: int, rates: dict[str, float], recall_scale: dict[str, float] | None = None):
    """Per-person outcomes (hit, recall) of methods on the same buyers, and their means."""
    shared = rng.random(buyers)  # the same people: easy buyers are easy for every method
    outcomes = {}
    for m, rate in rates.items():
        hit = ((shared + rng.random(buyers)) / 2 < rate).astype(float)
        outcomes[m] = pd.DataFrame({"hit": hit, "recall": hit * (recall_scale or {}).get(m, 0.3)})
    validation = {"buyers": buyers, "k": 10, **{m: {"hit_rate": o["hit"].mean(), "recall": o["recall"].mean()}
                                                for m, o in outcomes.items()}}
    return validation, outcomes


def test_the_blend_is_published_only_when_a_paired_test_says_it_beats_the_simple_methods():
    rng = np.random.default_rng(11)
    # Clearly ahead on the same 300 buyers: published, with the test recorded.
    validation, outcomes = _held_out(rng, 300, {"tessera": 0.6, "buy_again": 0.35, "popularity": 0.3})
    published, test = choose_published(validation, outcomes, 0.95)
    assert published == "tessera" and test["against"] == "buy_again"
    assert test["hit_rate"]["low"] > 0 and test["buyers"] == 300
    # Far ahead in HitRate but clearly behind in Recall: not published.
    validation, outcomes = _held_out(rng, 300, {"tessera": 0.6, "buy_again": 0.35, "popularity": 0.3},
                                     {"tessera": 0.05, "buy_again": 0.3})
    assert choose_published(validation, outcomes, 0.95)[0] == "buy_again"
    # HitRate saturated for both: Recall decides.
    validation, outcomes = _held_out(rng, 300, {"tessera": 1.01, "buy_again": 1.01, "popularity": 0.3},
                                     {"tessera": 0.4, "buy_again": 0.2})
    published, test = choose_published(validation, outcomes, 0.95)
    assert published == "tessera" and test["hit_rate"]["difference"] == 0
    # A lead of 0.02 HitRate is noise on 300 buyers (the old fixed 0.01 margin published it) but
    # real on 20,000: the decision follows the evidence, not the size of the lead.
    rates = {"tessera": 0.37, "buy_again": 0.35, "popularity": 0.3}
    published, test = choose_published(*_held_out(np.random.default_rng(4), 300, rates), 0.95)
    assert published == "buy_again" and test["hit_rate"]["difference"] >= 0.01
    assert choose_published(*_held_out(np.random.default_rng(4), 20_000, rates), 0.95)[0] == "tessera"


def test_the_published_method_does_not_change_on_noise():
    # Blend and buy-again equally good: per-person hits drawn alike on 300 buyers, 40 times. The
    # old rule (ahead by 0.01 HitRate) published the blend on 14 of these draws; the paired test
    # at 0.95 on 2 (about 1 in 20 expected).
    published = [choose_published(*_held_out(np.random.default_rng(seed), 300, {
        "tessera": 0.3, "buy_again": 0.3, "popularity": 0.2}), 0.95, seed)[0] for seed in range(40)]
    assert published.count("tessera") <= 5, published


def test_a_shop_where_buy_again_wins_publishes_buy_again(shop):
    # Staples rebought every month: buy-again is near perfect and the blend cannot beat it.
    settings = RecommendationsSettings(list_length=5, exclude_bought_within_days=10,
                                       collaborative=False)
    result = run_recommendations(shop, pd.Timestamp(END), settings)
    val = result.blend.validation
    assert result.blend.published == "buy_again", val
    assert val["buy_again"]["hit_rate"] > val["popularity"]["hit_rate"] + 0.3
    assert result.summary()["published"] == "buy_again"
    recs = result.recommendations
    # Buy-again's lists, under the same rules: own products first, nothing bought in the last
    # 10 days, best sellers only to fill; cold starts get the best sellers.
    bought = shop.execute("""SELECT person_id, sku, max(ordered_at) AS last FROM intermediate.int_order_lines
                             GROUP BY ALL""").df()
    merged = recs.merge(bought, on=["person_id", "sku"], how="left")
    assert (merged["last"].isna() | (merged["last"] < pd.Timestamp(END) - pd.Timedelta(days=10))).all()
    assert set(merged.loc[merged["last"].notna(), "reason"]) <= {"buy_again", "replenishment"}
    assert set(merged.loc[merged["last"].isna(), "reason"]) == {"trending"}
    assert recs.groupby("person_id").size().max() == 5 and "SHIP" not in set(recs["sku"])
    assert set(recs[recs["person_id"] == "cold1"]["reason"]) == {"trending"}


def test_a_shop_where_the_blend_wins_keeps_the_blend():
    con = make_shop(persons=200, seed=5, rebuys=False)
    result = run_recommendations(con, pd.Timestamp(END), RecommendationsSettings(collaborative=False))
    val = result.blend.validation
    assert result.blend.published == "tessera", val
    assert val["tessera"]["hit_rate"] > max(val["buy_again"]["hit_rate"], val["popularity"]["hit_rate"]) + 0.01
    assert result.recommendations["person_id"].nunique() == 202


def one_off_shop(persons: int = 1000, products: int = 1500, seed: int = 10) -> duckdb.DuckDBPyConnection:
    """A marketplace log like Olist's: every buyer orders once, one product from a long, flat
    catalog (a product sells a few times a quarter at most), no web data, one category."""
    rng = np.random.default_rng(seed)
    skus = rng.permutation(np.array([f"q{n:04d}" for n in range(products)]))  # sku order says nothing
    weight = 1.0 / np.arange(1, products + 1) ** 0.6
    item = rng.choice(products, persons, p=weight / weight.sum())
    lines = pd.DataFrame({"person_id": [f"p{n}" for n in range(persons)], "order_key": [f"o{n}" for n in range(persons)],
                          "sku": skus[item],
                          "ordered_at": [END - dt.timedelta(days=float(d)) for d in rng.uniform(0, 540, persons)]})
    con = duckdb.connect()
    for schema in ("intermediate", "staging", "marts"):
        con.execute(f"CREATE SCHEMA {schema}")
    con.register("p", pd.DataFrame({"sku": skus, "category": "all", "non_product": False}))
    con.execute("CREATE TABLE staging.stg_catalog__products AS SELECT * FROM p")
    con.register("l", lines)
    con.execute("CREATE TABLE intermediate.int_order_lines AS SELECT * FROM l")
    con.execute("""CREATE TABLE intermediate.int_web_product_events (person_id VARCHAR, session_id VARCHAR,
                   sku VARCHAR, occurred_at TIMESTAMP, event_name VARCHAR)""")
    con.execute("CREATE TABLE marts.customers AS SELECT DISTINCT person_id FROM intermediate.int_order_lines")
    return con


def test_cold_buyers_of_a_one_off_shop_get_at_least_the_best_sellers():
    # Olist's excerpt: every buyer of the next 90 days was new, and Tessera hit none where the best
    # sellers hit 3 in 208. Its lists came from the fixed blend (too few repeat purchases to learn
    # from), published untested, whose cold start was the 30-day trend: on a thin log, a handful of
    # single sales. Now the 90-day best sellers are candidates, and the fixed blend is held to the
    # same paired test as the ranker: here it does not beat buy-again, so buy-again is published.
    from scoring.recommend import SIMPLE_METHODS, build_state, candidates, load_interactions
    from scoring.recommend_metrics import popular_items

    con = one_off_shop()
    result = evaluate_recommendations(con, RecommendationsSettings(), k=10)
    assert result["known_customers"] == 0 and result["customers_evaluated"] > 150
    blend = result["blend"]
    assert blend["kind"] == "fallback" and blend["published"] in SIMPLE_METHODS
    assert blend["published_test"]["buyers"] > 100 and blend["validation"]["tessera"]["users"] > 100
    methods = result["methods"]
    for metric in ("hit_rate", "recall"):
        assert methods["tessera"]["all"][metric] >= max(m["all"][metric] for m in methods.values()), result
    # Everyone's candidates (a cold start's too) hold the best sellers of the last 90 days.
    cutoff = pd.Timestamp(result["cutoff"])
    state = build_state(load_interactions(con, cutoff, cutoff), cutoff, RecommendationsSettings(collaborative=False))
    _, items = candidates(state, np.array([0]))
    assert set(popular_items(state)[:10]) <= set(items)


def test_the_same_data_under_other_person_ids_gives_everyone_the_same_list():
    """Two warehouses with the same data can name a few persons differently (a daily project keeps
    the id that survived a merge, a rebuild mints one). Numbered in id order, a renamed person
    moved everyone after them in ALS's rows and the validation draw, and 58% of the lists changed
    at 100k; numbered by their history, nobody else's list moves."""
    settings = RecommendationsSettings(list_length=6)  # collaborative: ALS and the ranker both fit
    shop = make_shop(persons=300, seed=4, rebuys=False)
    before = run_recommendations(shop, pd.Timestamp(END), settings).recommendations
    renamed = {"p1": "p_zz1", "p17": "p000"}  # one to the end of the id order, one to its start
    for table in ("intermediate.int_order_lines", "intermediate.int_web_product_events", "marts.customers"):
        for old, new in renamed.items():
            shop.execute(f"UPDATE {table} SET person_id = ? WHERE person_id = ?", [new, old])
    after = run_recommendations(shop, pd.Timestamp(END), settings).recommendations
    after["person_id"] = after["person_id"].replace({new: old for old, new in renamed.items()})
    key = ["person_id", "rank"]
    before, after = (f.sort_values(key).reset_index(drop=True)[[*key, "sku", "reason"]] for f in (before, after))
    assert len(before) > 1500
    pd.testing.assert_frame_equal(before, after)
