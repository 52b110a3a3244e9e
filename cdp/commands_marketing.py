"""Commands for marketers: `cdp segments`, `cdp segment`, `cdp profile`, `cdp query`, `cdp report`.

All read the published snapshot (paths.published) read-only. Bad input - an unknown segment or
email, SQL that is not a SELECT, nothing published yet - prints one message and exits 2.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path

import click
from rich.table import Table

# Not imported from cdp.cli, which registers these commands (`python -m cdp.cli` would
# import it twice otherwise).
from cdp.cli_common import UserError, config_option, json_option, load_config_or_exit, out  # noqa: E402
from core.snapshots import PublishError, read_manifest
from marketing import published as pub
from marketing.published import MarketingError


def _json_default(v):
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def _print_json(data) -> None:
    out.print_json(json.dumps(data, default=_json_default))


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (dt.datetime,)):
        return v.isoformat(sep=" ", timespec="seconds")
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=_json_default)
    return str(v)


def _table(columns: list[str], rows: list, title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left")
    numeric = [bool(rows) and all(isinstance(r[i], (int, float, decimal.Decimal)) and not isinstance(r[i], bool)
                                  for r in rows if r[i] is not None) and any(r[i] is not None for r in rows)
               for i in range(len(columns))]
    for c, is_num in zip(columns, numeric):
        t.add_column(c, justify="right" if is_num else "left", overflow="fold")
    for r in rows:
        t.add_row(*(_cell(v) for v in r))
    return t


def _published_dir(config_path) -> Path:
    return load_config_or_exit(config_path).published_dir


def _user_errors(fn):
    """MarketingError and the publish library's errors become exit-2 messages."""
    import functools

    import duckdb

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MarketingError, PublishError) as e:
            raise UserError(str(e)) from None
        except duckdb.Error as e:  # e.g. a snapshot file that cannot be opened
            raise UserError(f"reading the published snapshot failed: {str(e).strip().splitlines()[0]}") from None

    return wrapper


# --------------------------------------------------------------------------- segments
@click.group("segments", invoke_without_command=True)
@config_option
@json_option
@click.pass_context
@_user_errors
def segments_command(ctx, config_path, as_json) -> None:
    """Every segment: size, kind, definition, and the change since the previous publish.
    `cdp segments validate` checks the declarative segments file."""
    if ctx.invoked_subcommand:
        return
    info = pub.segments_overview(_published_dir(config_path))
    if as_json:
        _print_json(info)
        return
    since = (f"previous publish {info['previous_run']} ({info['previous_published_at']})"
             if info["previous_run"] else "no previous publish kept")
    rows = []
    for s in info["segments"]:
        change = "" if s["change"] is None else f"{s['change']:+,} (+{s['entered']:,} / -{s['left']:,})"
        rows.append((s["segment"], s["kind"] or "", s["size"], change,
                     s["definition"] or s["description"] or ""))
    out.print(_table(["segment", "kind", "persons", "change (entered / left)", "definition"], rows,
                     title=f"Segments as of {_cell(info['as_of'])}; change since {since}"))
    if not info["catalog_published"]:
        out.print("segment_catalog is not in the published snapshot: kinds and definitions are not shown.")


# --------------------------------------------------------------------------- segment
@click.command("segment")
@click.argument("name")
@config_option
@click.option("--export", "export_path", type=click.Path(dir_okay=False), default=None,
              help="Write the members to FILE.csv or FILE.parquet.")
@click.option("--channel", type=click.Choice(["email", "sms", "none"]), default="email", show_default=True,
              help="Consent applied: 'email' keeps only persons whose consent table row for email_marketing "
                   "is 'granted' and who have an email; 'sms' likewise for sms_marketing and a phone; no consent "
                   "row means no consent. 'none' applies no consent filter: an analysis list, never for sending.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Members to print when not exporting.")
@json_option
@_user_errors
def segment_command(name, config_path, export_path, channel, limit, as_json) -> None:
    """Members of segment NAME with the fields a campaign needs (person_id, names, email, phone,
    consent flags, in-segment since), consent applied per --channel."""
    members = pub.segment_members(_published_dir(config_path), name, None if channel == "none" else channel)
    summary = {
        "segment": members.segment,
        "channel": members.channel,
        "members_in_segment": members.in_segment,
        "excluded_without_consent": members.excluded_no_consent,
        "excluded_without_contact": members.excluded_no_contact,
        "rows": len(members.rows),
        "notes": members.notes,
    }
    if export_path:
        path = pub.write_members(members, Path(export_path))
        summary["export"] = str(path)
    if as_json:
        if not export_path:
            summary["columns"] = members.columns
            summary["members"] = [dict(zip(members.columns, r)) for r in members.rows[:limit]]
        _print_json(summary)
        return
    consent = ("no consent filter (analysis list, not for sending)" if members.channel is None else
               f"{pub.EXPORT_CHANNELS[members.channel]} consent granted and an {pub.CHANNEL_CONTACT[members.channel]}"
               if members.channel == "email" else "sms_marketing consent granted and a phone")
    out.print(f"segment {members.segment}: {members.in_segment:,} members; {len(members.rows):,} with {consent}"
              + (f" ({members.excluded_no_consent:,} without consent, {members.excluded_no_contact:,} without "
                 f"contact)" if members.channel else ""))
    for note in members.notes:
        out.print(f"note: {note}")
    if export_path:
        out.print(f"wrote {len(members.rows):,} rows to {summary['export']}")
    elif limit:
        out.print(_table(members.columns, members.rows[:limit],
                         title=f"first {min(limit, len(members.rows))} of {len(members.rows):,}"))


# --------------------------------------------------------------------------- profile
@click.command("profile")
@config_option
@click.option("--email", default=None, help="The person's best email (customers.email), any case.")
@click.option("--person-id", "person_id", default=None)
@json_option
@_user_errors
def profile_command(config_path, email, person_id, as_json) -> None:
    """One person: golden record, the source records behind it and how each was matched,
    traits, segments, churn score, cart intent, offer, recommendations, consent."""
    info = pub.profile(_published_dir(config_path), email=email, person_id=person_id)
    if as_json:
        _print_json(info)
        return
    sections = info["sections"]
    as_of = next((r.get("as_of") for r in sections.get("customers", []) if r.get("as_of")), None)
    out.print(f"[bold]person {info['person_id']}[/]" + (f" (published data as of {_cell(as_of)})" if as_of else ""),
              markup=True)
    # Shown once above; record_key repeats source|entity|id.
    hidden = {"person_id", "as_of", "record_key"}
    for note in info["notes"]:
        out.print(f"note: {note}")
    for table, rows in sections.items():
        if not rows:
            out.print(f"{table}: no rows for this person")
            continue
        if len(rows) == 1 and table in ("customers", "customer_traits", "churn_scores", "cart_intent",
                                        "next_best_offer"):
            t = Table(title=table, title_justify="left", show_header=False)
            t.add_column("field", style="bold")
            t.add_column("value", overflow="fold")
            for k, v in rows[0].items():
                if k not in hidden:
                    t.add_row(k, _cell(v))
            out.print(t)
        else:
            cols = [c for c in rows[0] if c not in hidden]
            out.print(_table(cols, [tuple(r[c] for c in cols) for r in rows], title=f"{table} ({len(rows)})"))
    if info["not_published"]:
        out.print(f"not in the published snapshot yet: {', '.join(info['not_published'])}")


# --------------------------------------------------------------------------- query
@click.command("query")
@click.argument("sql")
@config_option
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Write the result to FILE.csv.")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True,
              help="Rows to print (the CSV and --json get every row).")
@json_option
@_user_errors
def query_command(sql, config_path, csv_path, limit, as_json) -> None:
    """Ad-hoc SQL (one SELECT) against the published tables, e.g.
    cdp query "SELECT segment, count(*) FROM segment_membership GROUP BY 1".
    The snapshot is opened read-only and anything but a SELECT is refused."""
    columns, rows = pub.run_query(_published_dir(config_path), sql)
    if csv_path:
        import csv

        path = Path(csv_path)
        if not path.parent.exists():
            raise UserError(f"{path.parent}: no such folder for the CSV file")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows([["" if v is None else (_cell(v) if isinstance(v, (list, dict)) else v) for v in r]
                         for r in rows])
        if not as_json:
            out.print(f"wrote {len(rows):,} rows to {path}")
    if as_json:
        _print_json([dict(zip(columns, r)) for r in rows])
    elif not csv_path:
        out.print(_table(columns, rows[:limit]))
        if len(rows) > limit:
            out.print(f"({len(rows):,} rows; first {limit} shown - use --csv FILE or --limit N)")


# --------------------------------------------------------------------------- report
@click.command("report")
@config_option
@click.option("--regenerate", is_flag=True, help="Write the current snapshot's report again.")
@json_option
@_user_errors
def report_command(config_path, regenerate, as_json) -> None:
    """Where the current snapshot's HTML report is (charts; opens without network)."""
    # lazy: loaded when the command runs, not at every `cdp` start-up
    from activation.state import sync_overview
    from marketing.report import report_path, write_report

    published_dir = _published_dir(config_path)
    run_id = read_manifest(published_dir)["current"]
    if run_id is None:
        raise UserError(f"nothing has been published yet under {published_dir}: run `cdp run` first")
    path = report_path(published_dir, run_id)
    if regenerate or not path.exists():
        path = write_report(published_dir, run_id, syncs=sync_overview(load_config_or_exit(config_path).root))
    if as_json:
        _print_json({"run_id": run_id, "report": str(path)})
    else:
        out.print(f"report for run {run_id}: {path}")
        out.print(f"open it in a browser: file://{path.resolve()}")


COMMANDS = [segments_command, segment_command, profile_command, query_command, report_command]
