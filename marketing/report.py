"""The per-publish report: one self-contained HTML file of charts, written beside the snapshot
(``snapshots/<run_id>.report.html``).

Charts are plotly figures. plotly.js is embedded in the page (no network needed to open it),
and each figure's JSON sits in its own ``<script type="application/json" id="chart-NAME">``
element, rendered by a few lines of inline JS - so a test (or a curious reader) can take the
data straight out of the file. A chart whose table is not in the snapshot says so instead.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from core.pii import mask_pii
from core.snapshots import PublishError, open_snapshot, read_manifest, snapshot_file
from marketing.published import expected_tables, tables

# The charts, in page order: (name, title).
CHARTS = (
    ("segment_sizes", "Segment sizes across the last publishes"),
    ("churn_distribution", "Churn probability by risk tier"),
    ("records_per_person", "Identity: source records per person"),
    ("match_methods", "Identity: how source records were matched"),
    ("largest_clusters", "Identity: the largest persons (most source records)"),
    ("intent_groups", "Cart intent groups"),
    ("offers", "Next-best-offer: offers chosen"),
    ("experiments", "Experiments: lift against control (95% interval)"),
    ("quality_gate", "Quality gate results"),
    ("syncs", "Syncs: state of each"),
)
# Publishes shown in the segment-size trend.
TREND_PUBLISHES = 8
INTENT_ORDER = ("likely", "on_the_fence", "unlikely")
TIER_ORDER = ("low", "medium", "high")
COLOURS = {"low": "#4c9f70", "medium": "#e0a030", "high": "#d0473e", "passed": "#4c9f70", "failed": "#d0473e",
           "treated": "#4a6fd0", "holdout": "#9a9a9a"}


@dataclass
class Chart:
    name: str
    title: str
    figure: go.Figure | None = None
    note: str = ""  # why there is no figure, or what to read into it
    rows: list[dict] = field(default_factory=list)  # a small table under the chart


def report_path(published_dir: Path, run_id: str) -> Path:
    return snapshot_file(published_dir, run_id).with_suffix(".report.html")


def _layout(fig: go.Figure, **kw) -> go.Figure:
    fig.update_layout(template="plotly_white", height=kw.pop("height", 380),
                      margin=kw.pop("margin", dict(l=60, r=20, t=30, b=60)), **kw)
    return fig


# --------------------------------------------------------------------------- the charts
def _segment_sizes(published_dir: Path, manifest: dict, run_id: str) -> Chart:
    chart = Chart("segment_sizes", dict(CHARTS)["segment_sizes"])
    ids = [h["run_id"] for h in manifest["history"]]
    start = ids.index(run_id) if run_id in ids else 0
    runs = [h for h in manifest["history"][start:start + TREND_PUBLISHES]
            if snapshot_file(published_dir, h["run_id"]).exists()][::-1]  # oldest first
    sizes: dict[str, dict[str, int]] = {}
    labels = []
    for h in runs:
        con = open_snapshot(snapshot_file(published_dir, h["run_id"]))
        try:
            if "segment_membership" not in tables(con):
                continue
            counts = con.execute("SELECT segment, count(*) FROM segment_membership GROUP BY 1").fetchall()
        finally:
            con.close()
        label = f"{h['run_id']}<br>{h['published_at'][:16]}"
        labels.append(label)
        for segment, n in counts:
            sizes.setdefault(segment, {})[label] = n
    if not sizes:
        chart.note = "segment_membership is not in the published snapshots."
        return chart
    fig = go.Figure()
    for segment in sorted(sizes, key=lambda s: -sizes[s].get(labels[-1], 0)):
        fig.add_trace(go.Scatter(x=labels, y=[sizes[segment].get(lb, 0) for lb in labels], name=segment,
                                 mode="lines+markers"))
    chart.figure = _layout(fig, yaxis_title="persons", height=460)
    chart.note = f"{len(labels)} kept publish(es), oldest first."
    return chart


def _missing(name: str, table: str) -> Chart:
    return Chart(name, dict(CHARTS)[name], note=f"{table} is not in this published snapshot.")


def _churn(con, have) -> Chart:
    if "churn_scores" not in have:
        return _missing("churn_distribution", "churn_scores")
    rows = con.execute(
        """SELECT coalesce(CAST(risk_tier AS VARCHAR), 'unknown') AS tier,
                  least(floor(churn_probability * 20), 19) / 20 + 0.025 AS bin, count(*)
           FROM churn_scores WHERE churn_probability IS NOT NULL GROUP BY ALL ORDER BY 1, 2""").fetchall()
    fig = go.Figure()
    found = list(dict.fromkeys(r[0] for r in rows))
    for tier in [t for t in TIER_ORDER if t in found] + [t for t in found if t not in TIER_ORDER]:
        pts = [(b, n) for t, b, n in rows if t == tier]
        fig.add_trace(go.Bar(x=[float(b) for b, _ in pts], y=[n for _, n in pts], name=tier, width=0.05,
                             marker_color=COLOURS.get(tier)))
    chart = Chart("churn_distribution", dict(CHARTS)["churn_distribution"])
    chart.figure = _layout(fig, barmode="stack", xaxis_title="churn probability (bins of 0.05)",
                           yaxis_title="persons", xaxis_range=[0, 1])
    return chart


def _identity(con, have) -> list[Chart]:
    if "identity_graph" not in have:
        return [_missing(n, "identity_graph") for n in ("records_per_person", "match_methods", "largest_clusters")]
    per_person = con.execute(
        """SELECT least(n, 20) AS records, count(*) AS persons
           FROM (SELECT person_id, count(*) AS n FROM identity_graph GROUP BY 1) GROUP BY 1 ORDER BY 1""").fetchall()
    a = Chart("records_per_person", dict(CHARTS)["records_per_person"])
    a.figure = _layout(go.Figure(go.Bar(x=[r for r, _ in per_person], y=[n for _, n in per_person],
                                        name="persons")),
                       xaxis_title="source records per person (20 = 20 or more)", yaxis_title="persons")
    methods = con.execute(
        "SELECT coalesce(match_method, 'unknown'), count(*) FROM identity_graph GROUP BY 1 ORDER BY 2 DESC").fetchall()
    b = Chart("match_methods", dict(CHARTS)["match_methods"])
    b.figure = _layout(go.Figure(go.Bar(x=[m for m, _ in methods], y=[n for _, n in methods], name="records")),
                       yaxis_title="source records")
    largest = con.execute(
        """SELECT person_id, count(*) AS records, count(DISTINCT source) AS sources
           FROM identity_graph GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10""").fetchall()
    c = Chart("largest_clusters", dict(CHARTS)["largest_clusters"])
    c.figure = _layout(go.Figure(go.Bar(y=[p for p, _, _ in largest][::-1], x=[n for _, n, _ in largest][::-1],
                                        orientation="h", name="records")),
                       xaxis_title="source records", margin=dict(l=200, r=20, t=30, b=60))
    c.note = "Look a person up with `cdp profile --person-id ID` to see every record and how it was matched."
    return [a, b, c]


def _intent(con, have) -> Chart:
    if "cart_intent" not in have:
        return _missing("intent_groups", "cart_intent")
    rows = dict(con.execute("SELECT coalesce(intent_group, 'unknown'), count(*) FROM cart_intent GROUP BY 1").fetchall())
    order = [g for g in INTENT_ORDER if g in rows] + sorted(g for g in rows if g not in INTENT_ORDER)
    chart = Chart("intent_groups", dict(CHARTS)["intent_groups"])
    chart.figure = _layout(go.Figure(go.Bar(x=order, y=[rows[g] for g in order], name="persons with an open cart")),
                           yaxis_title="persons with an open cart")
    return chart


def _offers(con, have) -> Chart:
    if "next_best_offer" not in have:
        return _missing("offers", "next_best_offer")
    holdout = "holdout" in have["next_best_offer"]
    rows = con.execute(
        f"""SELECT coalesce(CAST(offer AS VARCHAR), 'none') AS offer,
                   {"coalesce(CAST(holdout AS BOOLEAN), false)" if holdout else "false"} AS holdout, count(*)
            FROM next_best_offer GROUP BY ALL ORDER BY 3 DESC""").fetchall()
    fig = go.Figure()
    for flag, name in ((False, "treated"), (True, "holdout")):
        pts = [(o, n) for o, h, n in rows if bool(h) == flag]
        if pts:
            fig.add_trace(go.Bar(x=[o for o, _ in pts], y=[n for _, n in pts], name=name,
                                 marker_color=COLOURS[name]))
    chart = Chart("offers", dict(CHARTS)["offers"])
    chart.figure = _layout(fig, barmode="stack", yaxis_title="persons")
    return chart


def _experiments(con, have) -> Chart:
    chart = Chart("experiments", dict(CHARTS)["experiments"])
    if "experiment_results" not in have:
        return _missing("experiments", "experiment_results")
    rows = con.execute("""SELECT experiment, arm, metric, n, outcome_mean, abs_lift, abs_lift_low, abs_lift_high,
                                 rel_lift, prob_beats_control, decision, srm_flag
                          FROM experiment_results WHERE NOT is_control ORDER BY experiment, arm""").fetchall()
    if not rows:
        chart.note = "No experiment has analysed anyone yet (cdp.yaml experiments:, outcome windows still open)."
        return chart
    labels = [f"{r[0]} / {r[1]}" for r in rows]
    lifts = [r[5] for r in rows]
    fig = go.Figure(go.Bar(x=labels, y=lifts, marker_color=COLOURS["treated"], error_y=dict(
        type="data", symmetric=False, array=[(hi - v) if None not in (hi, v) else 0 for v, hi in zip(lifts, [r[7] for r in rows])],
        arrayminus=[(v - lo) if None not in (lo, v) else 0 for v, lo in zip(lifts, [r[6] for r in rows])])))
    chart.figure = _layout(fig, yaxis_title="absolute lift vs control")
    chart.note = ("Decisions use O'Brien-Fleming alpha spending over the planned duration, so daily looks keep the "
                  "false-positive rate; a flagged sample-ratio mismatch means the assignment is broken.")

    def fmt(v, pct=False):
        return "" if v is None else (f"{v:+.1%}" if pct else f"{v:.4g}")
    chart.rows = [{"experiment": r[0], "arm": r[1], "metric": r[2], "n": r[3], "mean": fmt(r[4]),
                   "lift": f"{fmt(r[5])} [{fmt(r[6])}, {fmt(r[7])}]", "relative": fmt(r[8], pct=True),
                   "P(beats control)": fmt(r[9]), "decision": r[10], "SRM": "FLAGGED" if r[11] else "ok"}
                  for r in rows]
    return chart


def gate_checks(gate: dict | None) -> list[dict]:
    """The gate result recorded with a publish, as rows {check, table, severity, passed}.
    Accepts a list under 'checks' or 'results' (items naming the check by 'check' or 'name'),
    or a mapping of check name -> bool or result dict."""
    if not gate:
        return []
    items = gate.get("checks", gate.get("results"))
    if items is None:
        items = [{"check": k, **(v if isinstance(v, dict) else {"passed": v})}
                 for k, v in gate.items() if isinstance(v, (bool, dict))]
    elif isinstance(items, dict):
        items = [{"check": k, **(v if isinstance(v, dict) else {"passed": v})} for k, v in items.items()]
    elif not isinstance(items, list):  # a summary holding only a count of checks
        items = []
    rows = []
    for item in items:
        if not isinstance(item, dict):
            continue
        passed = item.get("passed")
        if passed is None and "status" in item:
            passed = str(item["status"]).lower() in ("passed", "pass", "success", "ok")
        rows.append({
            "check": str(item.get("check") or item.get("name") or "?"),
            "table": str(item.get("table") or item.get("asset") or ""),
            "severity": str(item.get("severity") or ""),
            "passed": bool(passed),
        })
    return rows


def _quality(entry: dict | None, quality: list[dict] | None) -> Chart:
    chart = Chart("quality_gate", dict(CHARTS)["quality_gate"])
    checks = quality if quality is not None else gate_checks((entry or {}).get("gate"))
    if not checks:
        chart.note = "This publish recorded no quality-gate results."
        return chart
    severities = sorted({c.get("severity") or "-" for c in checks})
    fig = go.Figure()
    for outcome in (True, False):
        fig.add_trace(go.Bar(x=severities, y=[sum(1 for c in checks if bool(c["passed"]) == outcome
                                                   and (c.get("severity") or "-") == s) for s in severities],
                             name="passed" if outcome else "failed",
                             marker_color=COLOURS["passed" if outcome else "failed"]))
    chart.figure = _layout(fig, barmode="stack", xaxis_title="severity", yaxis_title="checks")
    failed = [c for c in checks if not c["passed"]]
    chart.note = f"{len(checks) - len(failed)} of {len(checks)} checks passed."
    chart.rows = failed
    return chart


def _syncs(syncs: list[dict] | None) -> Chart:
    chart = Chart("syncs", dict(CHARTS)["syncs"])
    if not syncs:
        chart.note = "No sync state was given to this report (no syncs configured or none has run yet)."
        return chart
    names = [str(s.get("sync") or s.get("name")) for s in syncs]
    numeric = sorted({k for s in syncs for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    fig = go.Figure()
    for k in numeric:
        fig.add_trace(go.Bar(x=names, y=[s.get(k, 0) or 0 for s in syncs], name=k))
    chart.figure = _layout(fig, barmode="group", yaxis_title="rows")
    chart.rows = [{k: v for k, v in s.items()} for s in syncs]
    return chart


# --------------------------------------------------------------------------- the page
def build_charts(published_dir: Path, run_id: str, syncs: list[dict] | None = None,
                 quality: list[dict] | None = None) -> tuple[list[Chart], dict]:
    manifest = read_manifest(published_dir)
    entry = next((h for h in manifest["history"] if h["run_id"] == run_id), None)
    path = snapshot_file(published_dir, run_id)
    if not path.exists():
        raise PublishError(f"{path}: no kept snapshot for run {run_id}")
    con = open_snapshot(path)
    try:
        have = tables(con)
        charts = [_segment_sizes(published_dir, manifest, run_id), _churn(con, have), *_identity(con, have),
                  _intent(con, have), _offers(con, have), _experiments(con, have), _quality(entry, quality), _syncs(syncs)]
        as_of = None
        for t in ("customers", "segment_membership", *have):
            if t in have and "as_of" in have[t]:
                as_of = con.execute(f'SELECT max(as_of) FROM "{t}"').fetchall()[0][0]
                break
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0] for t in sorted(have)}
    finally:
        con.close()
    info = {"run_id": run_id, "published_at": (entry or {}).get("published_at"), "as_of": as_of,
            "tables": counts, "missing": [t for t in expected_tables() if t not in have]}
    return charts, info


def _figure_json(fig: go.Figure) -> str:
    # "</" inside a <script> element would end it; "<\/" is the same string in JSON.
    return fig.to_json().replace("</", "<\\/")


def _rows_html(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    # cells may quote a sync's or a check's message: masked by the PII policy
    body = "".join("<tr>" + "".join(f"<td>{html.escape(mask_pii(str(r.get(c, ''))))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(charts: list[Chart], info: dict) -> str:
    e = html.escape
    sections = []
    for c in charts:
        wide = " wide" if c.name == "segment_sizes" else ""
        parts = [f'<section id="{c.name}" class="card{wide}"><h2>{e(c.title)}</h2>']
        if c.figure is not None:
            parts.append(f'<div class="chart" id="plot-{c.name}"></div>'
                         f'<script type="application/json" id="chart-{c.name}">{_figure_json(c.figure)}</script>')
        if c.note:
            parts.append(f'<p class="{"note" if c.figure is not None else "missing"}">{e(c.note)}</p>')
        parts.append(_rows_html(c.rows))
        sections.append("".join(parts) + "</section>")
    tables_html = _rows_html([{"table": t, "rows": f"{n:,}"} for t, n in info["tables"].items()])
    missing = (f'<p class="missing">Not in this snapshot: {e(", ".join(info["missing"]))}.</p>'
               if info["missing"] else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Tessera CDP - publish {e(info['run_id'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1400px; color: #222; padding: 0 1rem; }}
main {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 0 2rem; }}
.wide {{ grid-column: 1 / -1; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.1rem; margin-top: 1.5rem; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }}
td, th {{ border: 1px solid #ddd; padding: 2px 8px; text-align: left; }}
.missing {{ color: #8a5a00; background: #fff6e0; padding: 0.5rem; }} .note {{ color: #555; }}
</style>
<script>{get_plotlyjs()}</script>
</head><body>
<h1>Tessera CDP - published snapshot {e(info['run_id'])}</h1>
<p>Published {e(str(info['published_at']))}; data as of {e(str(info['as_of']))}.</p>
{missing}
<details><summary>Published tables and row counts</summary>{tables_html}</details>
<main>{''.join(sections)}</main>
<script>
document.querySelectorAll('script[type="application/json"][id^="chart-"]').forEach(function (el) {{
  var fig = JSON.parse(el.textContent);
  var target = document.getElementById('plot-' + el.id.slice(6));
  Plotly.newPlot(target, fig.data, fig.layout, {{displaylogo: false, responsive: true}});
}});
</script>
</body></html>
"""


def write_report(published_dir: Path, run_id: str | None = None, *, syncs: list[dict] | None = None,
                 quality: list[dict] | None = None) -> Path:
    """Write the report of publish ``run_id`` (default: the current one) beside its snapshot and
    return its path. ``syncs``: one dict per sync ({"sync": name, "status": ..., "sent": n, ...};
    numeric fields are charted); ``quality``: gate check rows overriding the manifest's gate
    result ({check, table, severity, passed}). Reports of snapshots no longer kept are removed."""
    published_dir = Path(published_dir)
    run_id = run_id or read_manifest(published_dir)["current"]
    if run_id is None:
        raise PublishError(f"nothing has been published yet under {published_dir}")
    charts, info = build_charts(published_dir, run_id, syncs=syncs, quality=quality)
    path = report_path(published_dir, run_id)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(render_html(charts, info), encoding="utf-8")
    tmp.replace(path)
    for old in path.parent.glob("*.report.html"):
        if not old.with_name(old.name.replace(".report.html", ".duckdb")).exists():
            old.unlink(missing_ok=True)
    return path
