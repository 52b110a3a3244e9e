"""The saved Splink model: kept in the warehouse (``<schema>.splink_models``, one row per trained
model, the newest in use) so that a run between retrainings scores with it instead of training
again (estimating u alone samples millions of pairs, whatever the day added).

A model is retrained when (``retrain_reason``): there is none saved; the settings that shape it
(identity.splink) or the columns the records carry are not the ones it was trained on; it is
``retrain_every_days`` old or older by the run's as_of (0 = every run); the records grew by more
than ``retrain_if_records_grow_by`` since; or, after scoring with it, the share of records in a
proposed pair moved by more than ``retrain_if_match_rate_moves_by`` (relative) from the share at
training (then the run trains and scores again). Every run says which, in its result
(``model_decision``); nothing retrains silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb

from core.settings.identity import IdentitySettings

TABLE = "splink_models"
# the columns of identity.records Splink's recipe is chosen from (splink_model.input_sql)
MODEL_COLUMNS = ("first_name", "last_name", "email_canon", "phone", "address", "postcode", "date_of_birth",
                 "city_display")


@dataclass
class SavedModel:
    model_id: str
    trained_at: datetime
    trained_as_of: datetime
    fingerprint: str
    records: int
    match_rate: float
    model: dict


def ensure_table(con: duckdb.DuckDBPyConnection, schema: str) -> None:
    con.execute(f"""CREATE TABLE IF NOT EXISTS {schema}.{TABLE} (
        model_id VARCHAR PRIMARY KEY, trained_at TIMESTAMPTZ, trained_as_of TIMESTAMPTZ, fingerprint VARCHAR,
        records BIGINT, match_rate DOUBLE, reason VARCHAR, model_json VARCHAR)""")


def fingerprint(con: duckdb.DuckDBPyConnection, settings: IdentitySettings, records: str) -> str:
    """What the model was shaped by: the Splink settings and which columns hold any value."""
    cols = con.sql("SELECT " + ", ".join(f"count({c}) > 0" for c in MODEL_COLUMNS) + f" FROM {records}").fetchall()[0]
    shape = {"splink": settings.splink.model_dump(exclude=_POLICY_FIELDS),
             "columns": [c for c, present in zip(MODEL_COLUMNS, cols) if present]}
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:16]


# the retraining policy itself does not shape a model: changing it retrains nothing
_POLICY_FIELDS = {"retrain_every_days", "retrain_if_records_grow_by", "retrain_if_match_rate_moves_by"}


def latest(con: duckdb.DuckDBPyConnection, schema: str) -> SavedModel | None:
    rows = con.sql(f"""SELECT model_id, trained_at, trained_as_of, fingerprint, records, match_rate, model_json
                       FROM {schema}.{TABLE} ORDER BY trained_at DESC LIMIT 1""").fetchall()
    if not rows:
        return None
    *head, body = rows[0]
    return SavedModel(*head, model=json.loads(body))


def retrain_reason(saved: SavedModel | None, settings: IdentitySettings, fp: str, records: int,
                   as_of: datetime) -> str | None:
    """Why this run trains a new model, or None to score with ``saved``."""
    s = settings.splink
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=timezone.utc)
    if saved is None:
        return "no saved model"
    if saved.fingerprint != fp:
        return "the Splink settings or the columns the records carry changed"
    if as_of < saved.trained_as_of:
        return "the saved model was trained on records after this run's as_of (a backtest)"
    age = (as_of - saved.trained_as_of).total_seconds() / 86400
    if s.retrain_every_days == 0 or age >= s.retrain_every_days:
        return f"scheduled: the model is {age:.1f} days old (retrain_every_days: {s.retrain_every_days})"
    if saved.records and records > saved.records * (1 + s.retrain_if_records_grow_by):
        return (f"the records grew by {records / saved.records - 1:.0%} since training "
                f"(retrain_if_records_grow_by: {s.retrain_if_records_grow_by})")
    return None


def match_rate_moved(saved: SavedModel, rate: float, settings: IdentitySettings) -> str | None:
    """Why a model that scored this run must be retrained: its match rate drifted."""
    bound = settings.splink.retrain_if_match_rate_moves_by
    if saved.match_rate <= 0:
        return None
    moved = abs(rate - saved.match_rate) / saved.match_rate
    if moved > bound:
        return (f"the share of records in a proposed pair moved by {moved:.0%} from {saved.match_rate:.4f} at training "
                f"to {rate:.4f} (retrain_if_match_rate_moves_by: {bound})")
    return None


def save(con: duckdb.DuckDBPyConnection, schema: str, model_id: str, as_of: datetime, fp: str, records: int,
         match_rate: float, reason: str, model: dict) -> None:
    con.execute(f"INSERT INTO {schema}.{TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
        model_id, datetime.now(timezone.utc), as_of, fp, records, match_rate, reason,
        json.dumps(model, default=str)])
