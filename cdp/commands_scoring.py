"""`cdp evaluate churn`: the churn and cart-intent models against the generator's ground truth."""

from __future__ import annotations

import json

import click

from cdp.cli_common import UserError, load_config_or_exit, out
from core.warehouse import WarehouseBusy


@click.command("churn")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Path to cdp.yaml (default: $CDP_CONFIG or ./cdp.yaml).")
@click.option("--json", "as_json", is_flag=True)
def evaluate_churn(config_path, as_json) -> None:
    """Churn: stored time-split validation metrics and metrics against the future ground truth;
    cart intent: measured 7-day purchase rate per intent group."""
    from scoring.evaluate import evaluate_config

    try:
        result = evaluate_config(load_config_or_exit(config_path))
    except (WarehouseBusy, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    if "error" in result:
        raise UserError(result["error"])
    if as_json:
        out.print_json(json.dumps(result, default=str))
        return
    churn, cart = result["churn"], result["cart_intent"]
    val, gt = churn["stored"].get("validation", {}), churn["ground_truth"]
    out.print(f"churn model              {churn['stored'].get('model_version')}")
    for metric in ("roc_auc", "pr_auc", "brier", "positive_rate"):
        out.print(f"  {metric:<22} validation {val.get(metric)}   ground truth {gt.get(metric)}")
    out.print(f"  persons scored / matched {gt.get('persons_scored')} / {gt.get('persons_matched_to_truth')}")
    out.print("cart intent: measured 7-day purchase rate per group")
    for group, g in cart["ground_truth"]["groups"].items():
        out.print(f"  {group:<14} {g['carts']:>7,} carts  {g['purchased_within_7d_rate']}")
    out.print(f"  groups ordered: {cart['ground_truth']['groups_ordered']}")
