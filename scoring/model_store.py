"""Saved models: a fitted churn or cart-intent model kept in the warehouse (table
scoring.saved_models, one row per model) so that a run between scheduled refits scores people
with it instead of refitting both candidates every run.

A model is refitted when (`refit_reason`): there is none saved, its features or the settings
that shape it (horizon, candidates, calibration, seed...) are not today's,
it is `refit_every_days` old or older (0 = every run), or it has drifted - its ROC AUC on the
newest labelled rows fell by more than `refit_if_auc_drops_by` below the one it had when fitted.
Otherwise the saved model scores, its version stays the same and its algorithm does not flip.

The payload is a pickle written by this stage into the project's own warehouse; it is only
ever read back from there (never from a file someone sent). Beside it, ``compiled`` holds the
deployed model's parameters as JSON (scoring.compiled): what the publish step copies into a
snapshot for ``cdp serve``, so a published file never carries an executable pickle.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd

from core.warehouse import table_exists
from scoring.compiled import to_spec
from scoring.models import binary_metrics

SCHEMA = "scoring"
TABLE = "saved_models"


@dataclass
class SavedModel:
    name: str  # churn | cart_intent
    algorithm: str
    model_version: str
    features: list[str]
    fitted_as_of: pd.Timestamp
    deployed: object  # calibrated: what scores
    raw: object  # uncalibrated: what explains (calibration is monotone)
    validation: dict[str, float]
    candidates: dict[str, dict[str, float]]
    calibration: list[dict]
    training_rows: int
    extra: dict = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if frame.empty:
            return np.zeros(0)
        return self.deployed.predict_proba(frame[self.features].to_numpy(float))[:, 1]


def save(con: duckdb.DuckDBPyConnection, model: SavedModel) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    con.execute(f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.{TABLE} (
                        model VARCHAR PRIMARY KEY, algorithm VARCHAR, model_version VARCHAR,
                        fitted_as_of TIMESTAMP, payload BLOB, compiled VARCHAR)""")
    con.execute(f"ALTER TABLE {SCHEMA}.{TABLE} ADD COLUMN IF NOT EXISTS compiled VARCHAR")
    con.execute(f"DELETE FROM {SCHEMA}.{TABLE} WHERE model = ?", [model.name])
    con.execute(f"INSERT INTO {SCHEMA}.{TABLE} (model, algorithm, model_version, fitted_as_of, payload, compiled) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [model.name, model.algorithm, model.model_version, model.fitted_as_of.to_pydatetime(),
                 pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL), compiled_json(model)])


def backfill_compiled(con: duckdb.DuckDBPyConnection, model: SavedModel) -> None:
    """Give a model saved before ``compiled`` existed its JSON (a reused model is not saved
    again, and the publish step copies only the JSON)."""
    con.execute(f"ALTER TABLE {SCHEMA}.{TABLE} ADD COLUMN IF NOT EXISTS compiled VARCHAR")
    con.execute(f"UPDATE {SCHEMA}.{TABLE} SET compiled = ? WHERE model = ? AND model_version = ? AND compiled IS NULL",
                [compiled_json(model), model.name, model.model_version])


def compiled_json(model: SavedModel) -> str | None:
    """The deployed model's parameters as JSON (scoring.compiled: numbers only, no code), with
    its features in order; None for a kind not compiled. This, not the pickle, is what a
    published snapshot carries for ``cdp serve``."""
    spec = to_spec(model.deployed)
    return None if spec is None else json.dumps({"features": list(model.features), "model": spec})


def load(con: duckdb.DuckDBPyConnection, name: str) -> SavedModel | None:
    """The saved model, or None (never saved, or saved by an incompatible version: refit)."""
    if not table_exists(con, SCHEMA, TABLE):
        return None
    row = con.execute(f"SELECT payload FROM {SCHEMA}.{TABLE} WHERE model = ?", [name]).fetchone()
    if row is None:
        return None
    try:
        model = pickle.loads(row[0])
    except Exception:  # a class that changed since it was saved: refit rather than fail the run
        return None
    return model if isinstance(model, SavedModel) else None


def fitting_settings(settings, *names: str) -> dict:
    """The settings that change what a model learns (a change forces a refit)."""
    return {n: getattr(settings, n) for n in names}


def refit_reason(saved: SavedModel | None, features: list[str], as_of: pd.Timestamp, refit_every_days: int,
                 refit_if_auc_drops_by: float, check: pd.DataFrame | None = None, label: str | None = None,
                 settings: dict | None = None) -> str | None:
    """Why the model must be refitted now, or None to score with the saved one. `check` = the
    newest labelled rows (outcome known at as_of), for the drift test; `settings` =
    fitting_settings(...), kept with the model."""
    if saved is None:
        return "no saved model"
    if list(saved.features) != list(features):
        return "the features changed"
    if settings is not None and saved.extra.get("settings") != settings:
        return "its settings changed"
    age = (pd.Timestamp(as_of) - pd.Timestamp(saved.fitted_as_of)).days
    if age < 0:
        return f"the saved model was fitted after as_of ({saved.fitted_as_of:%Y-%m-%d})"
    if age >= refit_every_days:
        return f"the saved model is {age} day(s) old (refit_every_days {refit_every_days})"
    if check is not None and label is not None and len(check) and check[label].nunique() == 2:
        now = binary_metrics(check[label], saved.predict(check))["roc_auc"]
        then = saved.validation.get("roc_auc", float("nan"))
        if not np.isnan(then) and then - now > refit_if_auc_drops_by:
            return (f"drift: ROC AUC on the newest labelled rows {now:.3f}, {then - now:.3f} below the "
                    f"{then:.3f} at fitting (refit_if_auc_drops_by {refit_if_auc_drops_by})")
    return None
