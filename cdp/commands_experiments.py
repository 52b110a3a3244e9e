"""`cdp experiment plan` (sample size and duration from the published baseline) and `cdp experiments`
(every configured experiment with its latest lift and interval)."""

from __future__ import annotations

import json

import click
import duckdb

from cdp.cli_common import UserError, config_option, load_config_or_exit, out
from core.settings.experiments import METRICS
from core.snapshots import PublishError, open_current


@click.group("experiment")
def experiment_command() -> None:
    """Plan experiments (cdp.yaml `experiments:` declares them)."""


@experiment_command.command("plan")
@config_option
@click.option("--metric", type=click.Choice(METRICS), required=True)
@click.option("--baseline-from", "population", default="all", show_default=True,
              help="'all' or a segment: whose baseline and variance to plan with.")
@click.option("--effect", type=float, required=True, help="Relative effect to detect: 0.1 = +10% (churn: -10%).")
@click.option("--alpha", type=float, default=0.05, show_default=True)
@click.option("--power", type=float, default=0.8, show_default=True)
@click.option("--window-days", type=int, default=30, show_default=True, help="Outcome window after exposure.")
@click.option("--treatment-share", type=float, default=0.5, show_default=True,
              help="Share of the population in the treatment arm (the rest: control/holdout).")
@click.option("--json", "as_json", is_flag=True)
def plan_command(config_path, metric, population, effect, alpha, power, window_days, treatment_share, as_json) -> None:
    """Persons per arm and days needed to detect EFFECT on METRIC, from the population's own
    baseline and variance in the current published snapshot."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from experiments.plan import PlanError, baseline, plan

    config = load_config_or_exit(config_path)
    try:
        con = open_current(config.published_dir)
    except PublishError as e:
        raise UserError(str(e)) from None
    try:
        result = plan(baseline(con, population, metric, window_days), metric, effect, alpha, power, treatment_share,
                      window_days)
    except (PlanError, duckdb.Error) as e:
        raise UserError(f"cannot plan: {str(e).strip().splitlines()[0]}") from None
    finally:
        con.close()
    if as_json:
        out.print_json(json.dumps(result, default=str))
        return
    out.print(f"population {result['population']}: {result['persons']:,} persons, "
              f"{result['daily_arrivals']:.1f} new per day")
    out.print(f"{metric} baseline {result['baseline']:.4g} -> target {result['target']:.4g} "
              f"(effect size {result['effect_size']:.4f}, alpha {alpha}, power {power})")
    out.print(f"persons per arm: control {result['n_control']:,}, treatment {result['n_treatment']:,} "
              f"(expose {result['persons_needed']:,})")
    if result["duration_days"] is None:
        out.print("duration: not reachable - the population is too small and nobody new arrives")
    else:
        out.print(f"duration: {result['duration_days']} days ({result['enrolment_days']} to enrol + "
                  f"{window_days}-day outcome window)")


@click.command("experiments")
@config_option
@click.option("--json", "as_json", is_flag=True)
def experiments_command(config_path, as_json) -> None:
    """Every experiment in cdp.yaml with its latest lift and 95% interval (published experiment_results)."""
    config = load_config_or_exit(config_path)
    results: list[dict] = []
    try:
        con = open_current(config.published_dir)
    except PublishError:
        con = None  # nothing published yet: the experiments are still listed
    if con is not None:
        try:
            cur = con.execute("SELECT * FROM experiment_results ORDER BY experiment, arm")
            cols = [d[0] for d in cur.description]
            results = [dict(zip(cols, r)) for r in cur.fetchall()]
        except duckdb.Error:
            results = []  # a snapshot from before experiments were published
        finally:
            con.close()
    listed = []
    for e in config.experiments:
        arms = [r for r in results if r["experiment"] == e.name and not r["is_control"]]
        listed.append({"experiment": e.name, "population": e.population, "metric": e.metric, "start": e.start,
                       "control": e.control_arm, "arms": arms})
    if as_json:
        out.print_json(json.dumps(listed, default=str))
        return
    if not listed:
        out.print("no experiments in cdp.yaml (add an `experiments:` list)")
    for item in listed:
        out.print(f"{item['experiment']}: {item['metric']} on {item['population']} since {item['start']}, "
                  f"vs {item['control']}")
        if not item["arms"]:
            out.print("  no results published yet")
        for r in item["arms"]:
            if r["abs_lift"] is None:
                out.print(f"  {r['arm']}: n {r['n']:,} - not enough outcomes yet")
                continue
            srm = "  SRM FLAGGED: assignment broken" if r["srm_flag"] else ""
            out.print(f"  {r['arm']}: n {r['n']:,}, lift {r['abs_lift']:+.4g} [{r['abs_lift_low']:+.4g}, "
                      f"{r['abs_lift_high']:+.4g}], P(beats control) {r['prob_beats_control']:.3f}, "
                      f"{r['decision']}{srm}")
