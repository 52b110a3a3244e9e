"""Recommendations on a schedule (scoring/recommend_store.py), on test_recommend's small shop
(made in DuckDB, no dbt): day 1 fits and saves the model; day 2 lists only persons whose
purchases or views changed (counted), equals every list recomputed from scratch with the saved
model, drops an erased and a merged-away person; the schedule, the settings and a backtest
refit."""

import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from core.settings.scoring import RecommendationsSettings
from scoring import model_store, recommend_store
from scoring.pipeline import run_recommendation_stage
from scoring.recommend import load_interactions
from tests.test_recommend import END, make_shop

DAY1 = pd.Timestamp(END) - pd.Timedelta(days=3)
DAY2 = DAY1 + pd.Timedelta(days=1)
SETTINGS = RecommendationsSettings(list_length=6, max_per_category=3)  # ALS on: its factors are per person too


@pytest.fixture(autouse=True)
def one_thread():
    with threadpool_limits(limits=1):
        yield


def table(con) -> pd.DataFrame:
    return con.execute("SELECT person_id, \"rank\", sku, score, reason, as_of FROM scoring.recommendations "
                       "ORDER BY person_id, \"rank\"").df()


def from_scratch(con, as_of) -> pd.DataFrame:
    """Every person's list with the saved model, all loaded and computed at once."""
    model = model_store.load(con, recommend_store.NAME).deployed
    data = load_interactions(con, as_of, model.fitted_as_of - pd.Timedelta(days=SETTINGS.view_days))
    recs = recommend_store.lists_with_model(model, data, SETTINGS, SETTINGS.list_length, as_of)
    return recs.sort_values(["person_id", "rank"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def days():
    """Day 1, the changes a day brings, day 2; returns (con, day-1 table, day-2 result, expected changed)."""
    con = make_shop(persons=300, seed=4)
    with threadpool_limits(limits=1):
        first = run_recommendation_stage(con, DAY1, SETTINGS)
        assert first.decision.startswith("refitted (no saved model")
        day1 = table(con)
        buyers = {r[0] for r in con.execute("SELECT DISTINCT person_id FROM intermediate.int_order_lines "
                                            "WHERE ordered_at > ? AND ordered_at <= ?", [DAY1, DAY2]).fetchall()}
        assert 3 <= len(buyers) <= 40  # a day's buyers, not everyone
        quiet = sorted(set(day1["person_id"]) - buyers - {"cold1", "cold2"})
        viewer, erased, merged_away, merged_into = quiet[:4]
        # A product view today, a new customer with a first order, an erasure (dbt's rebuild
        # after it removes the person everywhere), a merge (identity moves the records).
        con.execute("INSERT INTO intermediate.int_web_product_events VALUES (?, 'sx1', 'a03', ?, 'product_viewed')",
                    [viewer, DAY2 - pd.Timedelta(hours=2)])
        con.execute("INSERT INTO marts.customers VALUES ('newcomer')")
        con.execute("INSERT INTO intermediate.int_order_lines VALUES ('newcomer', 'onew', 'b01', ?)",
                    [DAY2 - pd.Timedelta(hours=3)])
        for t in ("marts.customers", "intermediate.int_order_lines", "intermediate.int_web_product_events"):
            con.execute(f"DELETE FROM {t} WHERE person_id = ?", [erased])
        con.execute("UPDATE intermediate.int_order_lines SET person_id = ? WHERE person_id = ?",
                    [merged_into, merged_away])
        con.execute("UPDATE intermediate.int_web_product_events SET person_id = ? WHERE person_id = ?",
                    [merged_into, merged_away])
        con.execute("DELETE FROM marts.customers WHERE person_id = ?", [merged_away])
        second = run_recommendation_stage(con, DAY2, SETTINGS)
    expected = buyers | {viewer, "newcomer", merged_into}
    return con, day1, second, expected, {"erased": erased, "merged_away": merged_away}


def test_day_two_lists_only_the_persons_whose_inputs_changed(days):
    con, day1, second, expected, _ = days
    assert second.decision.startswith("saved model of")
    assert second.recomputed == len(expected)
    n = con.execute("SELECT count(*) FROM marts.customers").fetchone()[0]
    assert second.kept == n - len(expected)
    assert second.summary()["recomputed_persons"] == len(expected)
    # Kept lists are the day-1 rows, as_of restamped.
    day2 = table(con)
    quiet = day2[~day2["person_id"].isin(expected)]
    before = day1[day1["person_id"].isin(quiet["person_id"])].assign(as_of=DAY2)
    pd.testing.assert_frame_equal(quiet.reset_index(drop=True), before.reset_index(drop=True), check_dtype=False)


def test_day_two_equals_every_list_from_scratch_with_the_saved_model(days):
    con, _, second, _, _ = days
    day2 = table(con)
    pd.testing.assert_frame_equal(day2, from_scratch(con, DAY2), check_dtype=False)
    assert day2["person_id"].nunique() == con.execute("SELECT count(*) FROM marts.customers").fetchone()[0]


def test_erased_and_merged_away_persons_are_gone(days):
    con, _, _, _, gone = days
    day2 = table(con)
    assert not set(gone.values()) & set(day2["person_id"])
    inputs = con.execute("SELECT person_id FROM scoring.recommendation_inputs").df()["person_id"]
    assert not set(gone.values()) & set(inputs)
    # The fingerprints are keyed by person_id: erasure's warehouse pass deletes them like any scoring row.
    assert "person_id" in [c[0] for c in con.execute("DESCRIBE scoring.recommendation_inputs").fetchall()]


def test_saved_model_holds_no_person(days):
    con, _, _, _, _ = days
    model = model_store.load(con, recommend_store.NAME).deployed
    for value in model.items.values():  # every shop-wide signal is indexed by product
        assert value.shape[-1] == len(model.skus)
    assert model.als_items is None or model.als_items.shape[0] == len(model.skus)


def test_nothing_changed_recomputes_nobody(days):
    con, _, _, _, _ = days
    before = table(con)
    again = run_recommendation_stage(con, DAY2, SETTINGS)
    assert (again.recomputed, again.kept) == (0, len(before["person_id"].unique()))
    pd.testing.assert_frame_equal(table(con), before)


def test_refit_on_schedule_settings_catalog_and_backtest(days):
    con, _, _, _, _ = days
    saved = model_store.load(con, recommend_store.NAME)
    products = con.execute("SELECT sku, category FROM staging.stg_catalog__products "
                           "WHERE NOT non_product ORDER BY sku").df()
    assert recommend_store.refit_reason(saved, products, DAY1 + pd.Timedelta(days=6), SETTINGS) is None
    assert "7 day(s) old" in recommend_store.refit_reason(saved, products, DAY1 + pd.Timedelta(days=7), SETTINGS)
    daily = SETTINGS.model_copy(update={"refit_every_days": 0})
    assert "0 day(s) old" in recommend_store.refit_reason(saved, products, DAY1, daily)
    assert recommend_store.refit_reason(saved, products, DAY1, SETTINGS.model_copy(update={"list_length": 5})) == \
        "its settings changed"
    assert recommend_store.refit_reason(saved, products.iloc[1:], DAY1, SETTINGS) == "the catalog changed"
    assert "fitted after as_of" in recommend_store.refit_reason(saved, products, DAY1 - pd.Timedelta(days=30),
                                                                SETTINGS)
    # The stage refits when the schedule says so, and says why.
    week = run_recommendation_stage(con, DAY1 + pd.Timedelta(days=7), SETTINGS)
    assert week.decision.startswith("refitted (the saved model is 7 day(s) old")
    assert week.recomputed == con.execute("SELECT count(*) FROM marts.customers").fetchone()[0]
    assert model_store.load(con, recommend_store.NAME).fitted_as_of == DAY1 + pd.Timedelta(days=7)


def test_refit_every_days_is_validated():
    with pytest.raises(ValueError):
        RecommendationsSettings(refit_every_days=-1)
    assert RecommendationsSettings().refit_every_days == 7
