"""`cdp evaluate churn`: the churn and cart-intent models against the generator's ground truth."""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from cdp.cli_common import UserError, load_config_or_exit, out
from core.warehouse import WarehouseBusy


def _evaluated(evaluate: Callable[[], dict], as_json: bool) -> dict | None:
    """Run an evaluation: a busy or missing warehouse, or the evaluation's own "error", is the
    user's message; with --json the result is printed here and None returned (nothing left to print)."""
    try:
        result = evaluate()
    except (WarehouseBusy, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    if "error" in result:
        raise UserError(result["error"])
    if as_json:
        out.print_json(json.dumps(result, default=str))
        return None
    return result


@click.command("churn")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Path to cdp.yaml (default: $CDP_CONFIG or ./cdp.yaml).")
@click.option("--json", "as_json", is_flag=True)
def evaluate_churn(config_path, as_json) -> None:
    """Churn: stored time-split validation metrics and metrics against the future ground truth;
    cart intent: measured 7-day purchase rate per intent group."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from scoring.evaluate import evaluate_config

    result = _evaluated(lambda: evaluate_config(load_config_or_exit(config_path)), as_json)
    if result is None:
        return
    churn, cart = result["churn"], result["cart_intent"]
    val, gt = churn["stored"].get("validation", {}), churn["ground_truth"]
    out.print(f"churn model              {churn['stored'].get('model_version')}")
    for metric in ("roc_auc", "pr_auc", "brier", "positive_rate", "mean_predicted", "ece"):
        out.print(f"  {metric:<22} validation {val.get(metric)}   ground truth {gt.get(metric)}")
    out.print(f"  persons scored / matched {gt.get('persons_scored')} / {gt.get('persons_matched_to_truth')}")
    out.print("cart intent: measured 7-day purchase rate per group")
    for group, g in cart["ground_truth"]["groups"].items():
        out.print(f"  {group:<14} {g['carts']:>7,} carts  {g['purchased_within_7d_rate']}")
    out.print(f"  groups ordered: {cart['ground_truth']['groups_ordered']}")


@click.command("recommendations")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Path to cdp.yaml (default: $CDP_CONFIG or ./cdp.yaml).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--k", "k", type=click.IntRange(1, 100), default=10, show_default=True, help="List length measured.")
@click.option("--cutoff", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="End of the history (end of that day); default: the last order minus the horizon.")
@click.option("--horizon-days", type=click.IntRange(1, 730), default=90, show_default=True,
              help="Truth = what each customer bought in this many days after the cut-off.")
def evaluate_recommendations(config_path, as_json, k, cutoff, horizon_days) -> None:
    """Recommendations on a time split of the warehouse's orders: HitRate, Recall, Precision,
    NDCG at K, coverage and novelty for Tessera and the baselines (popularity, buy-again,
    item-item co-occurrence, implicit ALS) on the same customers."""
    import pandas as pd

    # lazy: loaded when the command runs, not at every `cdp` start-up
    from scoring.recommend_evaluate import evaluate_config, table

    cutoff_ts = pd.Timestamp(cutoff) + pd.Timedelta(hours=23, minutes=59, seconds=59) if cutoff else None
    result = _evaluated(lambda: evaluate_config(load_config_or_exit(config_path), k=k, cutoff=cutoff_ts,
                                                horizon_days=horizon_days), as_json)
    if result is None:
        return
    out.print(f"cut-off {result['cutoff']}, truth: purchases in the next {horizon_days} days; "
              f"{result['customers_evaluated']:,} buyers evaluated ({result['known_customers']:,} known before the "
              f"cut-off), {result['products']:,} products; blend: {result['blend']['kind']}", markup=False)
    blend = result["blend"]
    if blend.get("validation"):
        held_out = ", ".join(f"{m} {r.get('hit_rate')}" for m, r in blend["validation"].items() if isinstance(r, dict))
        out.print(f"published: {blend['published']} (held-out HitRate@{blend['validation']['k']} on "
                  f"{blend['validation']['buyers']:,} buyers before the cut-off: {held_out})", markup=False)
        test = blend.get("published_test") or {}
        if test.get("hit_rate"):
            out.print(f"paired test against {test['against']} at confidence {test['confidence']}: HitRate "
                      f"{test['hit_rate']['difference']:+} [{test['hit_rate']['low']}, {test['hit_rate']['high']}], "
                      f"Recall {test['recall']['difference']:+} [{test['recall']['low']}, {test['recall']['high']}]",
                      markup=False)
    for population in ("all", "known"):
        out.print(f"\n{population} buyers", markup=False)
        out.print(table(result, population), markup=False)
    out.print(f"\nbest baseline: {result['best_baseline']}; Tessera at least as good: "
              f"{result['tessera_at_least_best_baseline']}", markup=False)
