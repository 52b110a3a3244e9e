"""The one-page quality report of a gate run: which checks ran, which failed, sample failing
rows with personal data masked. Written as Markdown (readable in a terminal or on GitHub) and
as a self-contained HTML page, under ``<paths.reports>/quality/``; ``latest.md`` / ``latest.html``
are copies of the newest. GX Data Docs (every suite and validation) sit beside it."""

from __future__ import annotations

import html
import os
from pathlib import Path

from core.config import Config


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(result) -> str:
    verdict = "PASSED" if result.passed else "FAILED — publish blocked"
    lines = [
        f"# Quality gate {result.gate_id}: {verdict}",
        "",
        f"- checked at: {result.checked_at} (Dagster run {result.dagster_run_id or 'none'}), {result.seconds:.1f}s",
        f"- tables checked: {', '.join(result.tables) or 'none'}",
    ]
    if result.skipped_tables:
        lines.append(f"- registered but not built yet (skipped, not published): {', '.join(result.skipped_tables)}")
    if result.accept_drift:
        lines.append("- drift accepted deliberately (`--accept-drift`)")
    if result.data_docs:
        lines.append(f"- GX Data Docs: {result.data_docs}")
    failed = [c for c in result.checks if not c.passed]
    lines += ["", f"## Failed checks ({len(failed)})", ""]
    if not failed:
        lines.append("None.")
    for c in failed:
        state = "accepted drift" if c.accepted else ("BLOCKING" if c.blocking else "warning")
        lines += [f"### {c.check} on {c.table} ({state})", "", c.detail or "", ""]
        if c.sample:
            cols = list(c.sample[0])
            lines.append("| " + " | ".join(cols) + " |")
            lines.append("|" + "---|" * len(cols))
            for row in c.sample:
                lines.append("| " + " | ".join(_cell(row.get(k)) for k in cols) + " |")
            lines.append("")
    lines += ["## Every check", "", "| table | check | kind | result | blocking | observed |", "|---|---|---|---|---|---|"]
    for c in result.checks:
        state = "pass" if c.passed else ("accepted" if c.accepted else "FAIL")
        observed = ", ".join(f"{k}={v}" for k, v in c.observed.items() if k != "columns")
        lines.append(f"| {c.table} | {c.check} | {c.kind} | {state} | {'yes' if c.blocking else 'no'} | {_cell(observed)[:200]} |")
    return "\n".join(lines) + "\n"


def render_html(result, markdown: str) -> str:
    # Self-contained: the Markdown in a <pre>, plus a coloured verdict. No network needed.
    colour = "#1a7f37" if result.passed else "#cf222e"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Quality gate {html.escape(result.gate_id)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}"
        "pre{white-space:pre-wrap;font-size:0.9em}</style></head><body>"
        f"<h1 style='color:{colour}'>Quality gate {html.escape(result.gate_id)}: "
        f"{'passed' if result.passed else 'failed, publish blocked'}</h1>"
        f"<pre>{html.escape(markdown)}</pre></body></html>"
    )


def write_report(config: Config, result) -> Path:
    out = config.reports_dir / "quality"
    out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(result)
    path = out / f"{result.gate_id}.md"
    path.write_text(md)
    (out / f"{result.gate_id}.html").write_text(render_html(result, md))
    for name, text in (("latest.md", md), ("latest.html", render_html(result, md))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return path
