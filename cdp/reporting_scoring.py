"""The models' part of `cdp run`'s end summary: churn metrics, intent-group sizes, offer counts."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from core.warehouse import table_exists


def print_model_overview(console: Console, con) -> None:
    if table_exists(con, "scoring", "model_metrics"):
        rows = con.execute("""
            SELECT model, algorithm, metric, value FROM scoring.model_metrics
            WHERE dataset = 'validation' AND selected AND bin IS NULL
              AND metric IN ('roc_auc', 'pr_auc', 'brier', 'positive_rate', 'rows')""").fetchall()
        metrics: dict = {}
        for model, algorithm, metric, value in rows:
            metrics.setdefault((model, algorithm), {})[metric] = value
        t = Table(title="Models (time-split validation; `cdp evaluate churn` for ground truth)", title_justify="left")
        for col in ("model", "algorithm", "ROC AUC", "PR AUC", "Brier", "positive rate", "rows"):
            t.add_column(col, justify="left" if col in ("model", "algorithm") else "right", no_wrap=True)
        for (model, algorithm), m in sorted(metrics.items()):
            t.add_row(model, algorithm, *("n/a" if m.get(k) is None else f"{m[k]:.3f}" for k in ("roc_auc", "pr_auc", "brier", "positive_rate")),
                      f"{int(m.get('rows', 0)):,}")
        console.print(t)
    if table_exists(con, "scoring", "churn_predictions"):
        tiers = dict(con.execute("SELECT risk_tier, count(*) FROM scoring.churn_predictions GROUP BY 1").fetchall())
        console.print("Churn risk: " + ", ".join(f"{t} {tiers.get(t, 0):,}" for t in ("high", "medium", "low")))
    if table_exists(con, "scoring", "cart_predictions"):
        groups = dict(con.execute("SELECT intent_group, count(*) FROM scoring.cart_predictions GROUP BY 1").fetchall())
        console.print("Cart intent (open carts): " + ", ".join(
            f"{g} {groups.get(g, 0):,}" for g in ("likely", "on_the_fence", "unlikely")))
    if table_exists(con, "scoring", "offer_decisions"):
        offers = con.execute("SELECT offer, count(*) FROM scoring.offer_decisions GROUP BY 1 ORDER BY 2 DESC").fetchall()
        console.print("Next-best-offer: " + ", ".join(f"{o} {n:,}" for o, n in offers))
