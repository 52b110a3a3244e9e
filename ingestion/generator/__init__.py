"""Synthetic landing data for Tessera: UK-style customers across web, email, POS and support.

``generate(customers, seed, out)`` writes the landing files the pipeline ingests and, in
``out/ground_truth/``, the truth behind them (who is who, churn, future purchases, the mess
applied). Same (customers, seed, as_of) -> byte-identical files.

Modules: names (word lists), timeline (time grid), catalog (products), population (people
and latent behaviour), behaviour (the monthly simulation), identity_mess (corruptions at
stated rates), sources (records as each system holds them), bad_rows (malformed rows),
writers (landing files via DuckDB), ground_truth.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import names, sources
from .bad_rows import BadRowInjector, BadRowRates
from .behaviour import CLICK, simulate_activity, simulate_latent, take
from .catalog import CATEGORY_NAMES, build_catalog
from .ground_truth import write_future, write_mess, write_people, write_record_person
from .identity_mess import MessRates, MessRenderer, usable
from .population import build_population
from .textops import scramble
from .timeline import Timeline
from .writers import (
    OUTLET_COLUMN_MAP,
    OUTLET_FORMATS,
    Landing,
    write_catalog,
    write_email,
    write_outlet,
    write_pos,
    write_support,
    write_web,
)

__all__ = ["generate", "GenerationSummary", "MessRates", "BadRowRates", "OUTLET_COLUMN_MAP", "OUTLET_FORMATS"]


@dataclass(frozen=True)
class GenerationSummary:
    out: Path
    customers: int
    seed: int
    as_of: dt.date
    files: dict[str, int]  # relative path -> good rows written (header excluded, bad rows excluded)
    bad_rows: dict[str, dict[str, int]] = field(default_factory=dict)  # relative path -> kind -> rows
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(self.files.values())

    def rows_of(self, prefix: str) -> int:
        """Rows in files whose relative path starts with prefix, e.g. "web/events"."""
        return sum(n for f, n in self.files.items() if f.startswith(prefix))


def generate(customers: int, seed: int, out: Path, as_of: dt.date | None = None,
             progress: Callable[[str], None] | None = None, clean: bool = False,
             mess_rates: MessRates = MessRates(), bad_row_rates: BadRowRates = BadRowRates(),  # noqa: B008 (frozen)
             ) -> GenerationSummary:
    """Write landing files and ground truth for ``customers`` people under ``out``.

    as_of defaults to today (UTC): history spans as_of - 730 days .. the end of the as_of
    day, and the simulation runs 90 days past it for the future ground truth. ``clean``
    turns off malformed rows (the identity mess stays: it is the point).
    """
    started = time.perf_counter()
    say = progress or (lambda msg: None)
    out = Path(out)
    as_of = as_of or dt.datetime.now(dt.UTC).date()
    timeline = Timeline.for_as_of(as_of)
    streams = np.random.SeedSequence([seed, customers, as_of.toordinal()]).spawn(8)
    rng = {name: np.random.default_rng(s) for name, s in
           zip(("catalog", "people", "latent", "activity", "mess", "sources", "bad_rows", "ids"), streams)}

    catalog = build_catalog(rng["catalog"], customers)
    say(f"catalog: {len(catalog):,} products")
    pop = build_population(rng["people"], customers, timeline, mess_rates)
    say(f"people: {pop.n:,}")
    latent = simulate_latent(rng["latent"], pop, timeline)
    say(f"churn and support: {int((latent.churned_us >= 0).sum()):,} churned, {len(latent.tickets['person']):,} tickets")
    activity = simulate_activity(rng["activity"], pop, catalog, timeline, latent, mess_rates.login_identify)
    say(f"activity: {len(activity.orders['order']):,} orders, {len(activity.web['ts']):,} web events, "
        f"{len(activity.email['ts']):,} email events")

    # Source records with the identity mess.
    mess = MessRenderer(mess_rates, rng["mess"], pop)
    r = rng["sources"]
    devices = sources.device_traits(pop, mess)
    records = {
        "devices": devices,
        "devices_identifiable": usable(devices["email"]) | usable(devices["phone"]),
        "subscribers": sources.subscribers(pop, mess, activity, timeline, r),
        "loyalty": sources.loyalty_members(pop, mess, timeline, outlet=False),
        "outlet": sources.loyalty_members(pop, mess, timeline, outlet=True),
        "tickets": sources.tickets(pop, latent, mess, timeline, r),
    }
    email_used, mobile_used = sources.contacts_in_use(pop, mess, records, activity, timeline)
    records["transactions"] = sources.pos_transactions(pop, activity, mess, mess_rates, timeline, r,
                                                       email_used, mobile_used)
    say("identity mess applied")

    out.mkdir(parents=True, exist_ok=True)
    landing = Landing(out, timeline, say)
    injector = BadRowInjector(bad_row_rates, rng["bad_rows"], enabled=not clean)

    def bad_rows_for(file_set: str):
        def after_write(relative: str, month_label: str, rows: int) -> None:
            injector.append(out / relative, relative, file_set, rows, month_label)
        return after_write

    write_catalog(landing, catalog, CATEGORY_NAMES)

    web = _sorted(activity.web, "ts", rng["ids"])
    email_events = _sorted(activity.email, "ts", rng["ids"])
    activity.web = activity.email = {}  # the sorted copies replace them (memory at 1M customers)
    # Each email click's campaign, by click id (ids are 0..clicks-1), for the landing page's utm_campaign.
    is_click = email_events["kind"] == CLICK
    click_campaign_label = np.full(int(is_click.sum()), "", dtype=object)
    click_campaign_label[email_events["click"][is_click]] = np.asarray(activity.campaign_label, dtype=object)[
        email_events["campaign"][is_click]]
    b = activity.baskets
    in_web = np.isin(b["basket"], np.unique(web["basket"][web["basket"] >= 0]))
    web_baskets = {"basket": b["basket"][in_web], "value": b["subtotal"][in_web] - b["discount"][in_web],
                   "discount": b["discount"][in_web]}
    rows = write_web(landing, web, devices, pop.user_id, catalog, CATEGORY_NAMES, web_baskets, activity.lines,
                     click_campaign_label.astype(str), names.SEARCH_TERMS, names.USER_AGENTS,
                     bad_rows_for("web/events"))
    say(f"web events: {rows:,} rows")
    rows = write_email(landing, records["subscribers"], email_events, activity.campaign_label, catalog, pop.n,
                       bad_rows_for("email/events"))
    say(f"email: {len(records['subscribers']['person']):,} subscribers, {rows:,} events")
    transactions = records["transactions"]
    write_pos(landing, transactions, _line_items(transactions, activity.lines), records["loyalty"], catalog,
              pop.loyalty_id, sources.PAYMENT_METHODS,
              lambda rel, month, n: injector.append(out / rel, rel, rel.rsplit("_", 1)[0], n, month))
    say(f"pos: {landing.rows['pos/loyalty_members.csv']:,} loyalty members, {len(transactions['person']):,} transactions")
    write_outlet(landing, records["outlet"])
    say(f"pos_outlet: {landing.rows['pos_outlet/members.csv']:,} members")
    rows = write_support(landing, records["tickets"], bad_rows_for("support/tickets"))
    say(f"support: {rows:,} tickets")

    write_people(landing, pop, latent)
    write_record_person(landing, pop, records, web, timeline)
    write_future(landing, activity, timeline)
    files = {k: v for k, v in landing.rows.items() if not k.startswith("ground_truth/")}
    seconds = time.perf_counter() - started
    write_mess(out, mess_rates, bad_row_rates, mess.counts, injector.counts, clean,
               {"customers": customers, "seed": seed, "as_of": as_of.isoformat(),
                "rows": {k: landing.rows[k] for k in sorted(landing.rows)}})
    say(f"ground truth written; {sum(files.values()):,} rows in {seconds:.1f}s")
    return GenerationSummary(out, customers, seed, as_of, files, injector.counts, seconds)


def _sorted(table: dict, column: str, rng: np.random.Generator) -> dict:
    """Sort a table by time and give each row a unique random-looking key for its id."""
    order = np.argsort(table[column], kind="stable")
    table = take(table, order)
    table["message_key"] = scramble(np.arange(len(order)), int(rng.integers(1, 1 << 40)))
    return table


def _line_items(transactions: dict, lines: dict) -> dict:
    """The basket lines of each receipt, with the receipt's time for monthly files."""
    start = np.searchsorted(lines["basket"], transactions["basket"], side="left")
    count = np.searchsorted(lines["basket"], transactions["basket"], side="right") - start
    owner = np.repeat(np.arange(len(start)), count)
    line = np.arange(len(owner)) - (np.cumsum(count) - count)[owner] + start[owner]
    return {
        "transaction_number": transactions["transaction_number"][owner],
        "occurred_us": transactions["occurred_us"][owner],
        "line_no": lines["line_no"][line], "product": lines["product"][line], "quantity": lines["quantity"][line],
        "unit_price": lines["unit_price"][line], "discount": lines["discount"][line],
    }
