"""Experiments: config validation, stable assignment, the statistics (against published values
and statsmodels), SRM on a broken assignment, the warehouse stage (append-only exposures, looks),
next-best-offer's holdout and a sync's holdout, and a small version of the coverage / A/A bench."""

from __future__ import annotations

import math
from datetime import date, datetime

import duckdb
import numpy as np
import pandas as pd
import pytest

from bench import bench_experiments
from core.config import ConfigError
from core.settings.experiments import Experiment
from experiments import stats
from experiments.analysis import Look, analyse
from experiments.assignment import assign
from experiments.pipeline import run_experiments
from experiments.plan import Baseline, plan
from tests.helpers import make_config

ARMS = [{"name": "holdout", "share": 0.1, "holdout": True}, {"name": "treatment", "share": 0.9}]


def exp(**kw) -> Experiment:
    base = {"name": "t", "arms": ARMS, "start": date(2025, 1, 1)}
    return Experiment.model_validate({**base, **kw})


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad, message", [
    ({"arms": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]}, "shares must add up to 1"),
    ({"population": "churn_high_risk"}, "segment that exists before scoring"),
    ({"control": "nope"}, "control 'nope' is not an arm"),
    ({"metric": "clicks"}, "metric"),
    ({"offers": True, "arms": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]}, "needs a holdout arm"),
    ({"syncs": ["missing"]}, "no sync named 'missing'"),
    ({"arms": [{"name": "a", "share": 1.0}]}, "at least 2"),
])
def test_experiments_are_validated_on_load_with_clear_errors(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message) as err:
        make_config(tmp_path, [], experiments=[{"name": "t", "arms": ARMS, "start": "2025-01-01", **bad}])
    assert "experiments" in str(err.value)


def test_only_one_experiment_drives_offers(tmp_path):
    one = {"arms": ARMS, "start": "2025-01-01", "offers": True}
    with pytest.raises(ConfigError, match="only one experiment can drive next-best-offer"):
        make_config(tmp_path, [], experiments=[{"name": "a", **one}, {"name": "b", **one}])
    cfg = make_config(tmp_path, [], experiments=[{"name": "a", **one}])
    assert cfg.offers_experiment.name == "a" and cfg.offers_experiment.control_arm == "holdout"


# --------------------------------------------------------------------------- assignment
def test_assignment_is_stable_follows_shares_and_reproduces_the_legacy_holdout():
    from scoring.offers import in_holdout

    ids = [f"P{i:07d}" for i in range(20_000)]
    e = exp(name="nbo")
    arms = assign(ids, e)
    assert list(assign(list(reversed(ids)), e)) == list(reversed(arms))  # order of people does not matter
    assert abs((arms == "holdout").mean() - 0.1) < 0.01
    # the same hash as next-best-offer's old holdout: switching to an experiment keeps the same people out
    assert ((arms == "holdout") == in_holdout(ids, "nbo", 0.1)).all()
    assert not (assign(ids, exp(name="other")) == arms).all()  # the experiment's name salts the hash


# --------------------------------------------------------------------------- statistics
def test_lan_demets_obrien_fleming_boundaries_match_the_published_table():
    # Five equally spaced looks, two-sided alpha 0.05 (Reboussin et al., ldbounds; gsDesign sfLDOF)
    got = stats.sequential_boundaries([0.2, 0.4, 0.6, 0.8, 1.0], 0.05)
    assert got == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=2e-3)


def test_newcombe_interval_matches_newcombe_1998():
    # Newcombe (1998), example (a): 56/70 vs 48/80 -> 0.0524 to 0.3339
    lo, hi = stats.newcombe(56, 70, 48, 80)
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)


def test_plan_agrees_with_statsmodels():
    from statsmodels.stats.power import NormalIndPower, zt_ind_solve_power
    from statsmodels.stats.proportion import proportion_effectsize

    base = Baseline("all", 1_000, 0.05, 0.05 * 0.95, 10.0, 0.05)
    got = plan(base, "conversion", 0.1, alpha=0.05, power=0.8)
    want = zt_ind_solve_power(effect_size=proportion_effectsize(0.055, 0.05), alpha=0.05, power=0.8, ratio=1.0)
    assert got["n_control"] == math.ceil(want) and got["n_treatment"] == math.ceil(want)
    # an unequal split and another alpha / power
    got = plan(base, "conversion", 0.2, alpha=0.01, power=0.9, treatment_share=0.9)
    want = NormalIndPower().solve_power(effect_size=proportion_effectsize(0.06, 0.05), alpha=0.01, power=0.9, ratio=9)
    assert got["n_control"] == math.ceil(want) and got["n_treatment"] == math.ceil(want * 9)
    # revenue: Cohen's d from the population's own variance
    base = Baseline("all", 1_000, 20.0, 900.0, 10.0, 0.3)
    got = plan(base, "revenue_per_person", 0.1)
    want = zt_ind_solve_power(effect_size=2.0 / 30.0, alpha=0.05, power=0.8, ratio=1.0)
    assert got["n_control"] == math.ceil(want)
    # duration: the population is short of what is needed, so new arrivals fill it
    assert got["enrolment_days"] == math.ceil((got["persons_needed"] - 1_000) / 10.0)
    assert got["duration_days"] == got["enrolment_days"] + 30


def test_srm_is_detected_when_assignment_is_broken_on_purpose():
    e = exp(name="srm", arms=[{"name": "holdout", "share": 0.5, "holdout": True}, {"name": "treatment", "share": 0.5}])
    ids = np.array([f"P{i:07d}" for i in range(10_000)])
    arms = assign(ids, e)
    rng = np.random.default_rng(1)
    y = rng.random(len(ids)) < 0.1

    def srm(mask):
        frame = pd.DataFrame({"arm": arms[mask], "y": y[mask].astype(float)})
        exposed = frame["arm"].value_counts().to_dict()
        return analyse(e, frame, exposed, [Look(0.5, float(mask.sum()))])[1]

    healthy = srm(np.ones(len(ids), dtype=bool))
    assert not healthy["srm_flag"] and healthy["srm_p_value"] > 0.001
    # broken: a bug drops 8% of the treatment arm's exposures (e.g. a sync that failed for them)
    broken = srm(~((arms == "treatment") & (rng.random(len(ids)) < 0.08)))
    assert broken["srm_flag"] and broken["srm_p_value"] < stats.SRM_ALPHA


def test_known_lift_is_measured_with_interval_posterior_and_mde():
    e = exp(name="lift", arms=[{"name": "holdout", "share": 0.5, "holdout": True}, {"name": "treatment", "share": 0.5}])
    frame = pd.DataFrame({"arm": ["holdout"] * 4000 + ["treatment"] * 4000,
                          "y": [1.0] * 400 + [0.0] * 3600 + [1.0] * 600 + [0.0] * 3400})
    control, arm = analyse(e, frame, {"holdout": 4000, "treatment": 4000}, [Look(1.0, 8000.0)])
    assert control["decision"] == "control" and control["abs_lift"] is None
    assert arm["abs_lift"] == pytest.approx(0.05) and arm["abs_lift_low"] < 0.05 < arm["abs_lift_high"]
    assert arm["rel_lift"] == pytest.approx(0.5) and arm["prob_beats_control"] > 0.999
    assert arm["sequential_significant"] and arm["decision"] == "arm_better"
    assert 0 < arm["mde_absolute"] < 0.05
    # churn: lower is better, so the same numbers read the other way
    churn = analyse(exp(name="lift", metric="churn", arms=e.model_dump()["arms"]), frame,
                    {"holdout": 4000, "treatment": 4000}, [Look(1.0, 8000.0)])[1]
    assert churn["prob_beats_control"] < 0.001 and churn["decision"] == "arm_worse"


# --------------------------------------------------------------------------- coverage and A/A (small bench)
def test_intervals_cover_the_generators_true_lift():
    # 30 simulated experiments: with 95% coverage, 25 or more covered has probability > 0.98
    result = bench_experiments.coverage(30, people=8_000)
    assert result["covered_conversion"] >= 25 and result["covered_revenue"] >= 25


def test_daily_looks_do_not_inflate_aa_false_positives():
    # 30 A/A experiments looked at daily: at a 5% rate, more than 5 flagged has probability < 0.01
    result = bench_experiments.aa(30, people=8_000)
    assert result["aa_flagged"] <= 5
    assert int(result["aa_naive_daily_1_96_flagged"].split("/")[0]) >= result["aa_flagged"]


# --------------------------------------------------------------------------- the warehouse stage
def _warehouse(path):
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA marts; CREATE SCHEMA intermediate")
    ids = [f"P{i:05d}" for i in range(2_000)]
    con.execute("CREATE TABLE marts.customers AS SELECT unnest(?::VARCHAR[]) AS person_id", [ids])
    con.execute("CREATE TABLE intermediate.int_segment_membership AS SELECT 'lifecycle_active' AS segment, "
                "person_id FROM marts.customers WHERE person_id < 'P01000'")
    con.execute("CREATE TABLE intermediate.int_orders (order_key VARCHAR, person_id VARCHAR, ordered_at TIMESTAMP, "
                "order_total DOUBLE)")
    rng = np.random.default_rng(3)
    orders = [(f"O{i}", ids[rng.integers(0, 2000)], datetime(2025, 1, 1 + int(rng.integers(0, 28)),
                                                             12), float(rng.integers(10, 90)))
              for i in range(1_500)]
    con.executemany("INSERT INTO intermediate.int_orders VALUES (?, ?, ?, ?)", orders)
    return con


def test_stage_appends_exposures_once_and_records_looks(tmp_path):
    con = _warehouse(tmp_path / "w.duckdb")
    e = exp(name="active_test", population="lifecycle_active", window_days=7, planned_days=28,
            arms=[{"name": "holdout", "share": 0.5, "holdout": True}, {"name": "treatment", "share": 0.5}])
    before = run_experiments(con, [e], datetime(2024, 12, 31, 23, 59))
    assert before.empty and con.execute("SELECT count(*) FROM experiments.assignments").fetchall()[0][0] == 0

    run_experiments(con, [e], datetime(2025, 1, 1, 23, 59))
    first = con.execute("SELECT person_id, arm, exposed_at FROM experiments.assignments ORDER BY 1").fetchall()
    assert len(first) == 1000  # the segment only
    # the segment grows; the earlier members keep their arm and first exposure time
    con.execute("INSERT INTO intermediate.int_segment_membership VALUES ('lifecycle_active', 'P01500')")
    results = run_experiments(con, [e], datetime(2025, 1, 15, 23, 59))
    again = con.execute("SELECT person_id, arm, exposed_at FROM experiments.assignments ORDER BY 1").fetchall()
    assert [r for r in again if r[0] != "P01500"] == first and len(again) == 1001
    # exposed on Jan 1 with a 7-day window: everyone exposed then is analysed by Jan 15
    assert set(results["arm"]) == {"holdout", "treatment"}
    assert results["n"].sum() == 1000  # the newcomer's window is still open
    treat = results[results["arm"] == "treatment"].iloc[0]
    assert treat["n"] > 0 and treat["looks"] == 1 and not np.isnan(treat["abs_lift"])
    # a re-run at the same as_of is the same look; the next day is another
    run_experiments(con, [e], datetime(2025, 1, 15, 23, 59))
    assert con.execute("SELECT count(DISTINCT looked_at) FROM experiments.looks").fetchall()[0][0] == 1
    nxt = run_experiments(con, [e], datetime(2025, 1, 16, 23, 59))
    assert int(nxt[nxt["arm"] == "treatment"]["looks"].iloc[0]) == 2


def test_offers_take_their_holdout_from_the_experiment_assignment():
    from core.settings.scoring import OffersSettings
    from scoring.offers import experiment_holdout

    arms = pd.DataFrame({"person_id": ["a", "b"], "arm": ["holdout", "treatment"], "holdout": [True, False]})
    held, name, arm = experiment_holdout(["a", "b", "c"], OffersSettings(), "winback", arms)
    assert list(held) == [True, False, False] and name == "winback" and list(arm) == ["holdout", "treatment", None]


def test_a_sync_attached_to_an_experiment_never_sends_its_holdout(tmp_path):
    from activation.state import SyncState, state_path
    from activation.sync import plan_sync

    published = tmp_path / "published"
    published.mkdir()
    con = duckdb.connect(str(published / "tessera.duckdb"))
    con.execute("CREATE TABLE customers AS SELECT * FROM (VALUES ('P1', 'a@x.org'), ('P2', 'b@x.org'), "
                "('P3', 'c@x.org')) t(person_id, email)")
    con.execute("CREATE TABLE experiment_assignments AS SELECT * FROM (VALUES ('exp1', 'P2', 'holdout', true), "
                "('exp1', 'P3', 'treatment', false)) t(experiment, person_id, arm, holdout)")
    con.close()
    sync = {"name": "drop", "source": {"table": "customers"}, "fields": {"email": "email"},
            "destination": {"type": "files", "folder": "drops"}}
    plain = make_config(tmp_path, [], syncs=[sync])
    attached = make_config(tmp_path, [], syncs=[dict(sync)], experiments=[{"name": "exp1", "arms": ARMS, "start": "2025-01-01",
                                                           "syncs": ["drop"]}])
    for cfg, sent in ((plain, {"P1", "P2", "P3"}), (attached, {"P1", "P3"})):
        with SyncState(state_path(cfg.root), read_only=True) as state:
            plan_ = plan_sync(cfg, cfg.syncs[0], state)
        assert {c.person_id for c in plan_.changes if c.action == "upsert"} == sent
