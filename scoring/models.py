"""Model selection, metrics and explanations shared by the churn and cart-intent models.

Candidates are scikit-learn's gradient boosting (HistGradientBoostingClassifier) and a
logistic regression on log-scaled, standardised features; the one with the better validation
ROC AUC wins. Everything is seeded, so the same data gives the same model and scores.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler


def _signed_log1p(x):
    return np.sign(x) * np.log1p(np.abs(x))


class BaseRate:
    """The fallback when the data holds a single outcome (a small or new shop): everyone gets
    the observed rate. Same interface as the scikit-learn models used here."""

    def fit(self, X, y):
        self.rate_ = float(np.mean(y)) if len(y) else 0.0
        return self

    def predict_proba(self, X):
        p = np.full(len(X), self.rate_)
        return np.column_stack([1 - p, p])


def make_model(algorithm: str, seed: int):
    if algorithm == "base_rate":
        return BaseRate()
    if algorithm == "gradient_boosting":
        return HistGradientBoostingClassifier(
            learning_rate=0.05, max_iter=250, max_leaf_nodes=15, min_samples_leaf=40, l2_regularization=1.0,
            early_stopping=True, validation_fraction=0.15, n_iter_no_change=20, random_state=seed)
    if algorithm == "logistic_regression":
        return make_pipeline(FunctionTransformer(_signed_log1p), StandardScaler(),
                             LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    raise ValueError(f"unknown algorithm {algorithm!r}")


def binary_metrics(y_true, p) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision), Brier score, base rate and rows; AUCs are null
    when only one class is present."""
    y_true = np.asarray(y_true, dtype=int)
    p = np.asarray(p, dtype=float)
    both = len(np.unique(y_true)) == 2
    return {
        "roc_auc": float(roc_auc_score(y_true, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y_true, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y_true, p)) if len(y_true) else float("nan"),
        "positive_rate": float(y_true.mean()) if len(y_true) else float("nan"),
        "mean_predicted": float(p.mean()) if len(p) else float("nan"),
        "rows": float(len(y_true)),
    }


def expected_calibration_error(y_true, p, bins: int = 10) -> float:
    """ECE: the mean |predicted - observed| over equal-width probability bins, weighted by rows."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(p, dtype=float)
    if len(y) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        part = which == b
        total += part.sum() * abs(p[part].mean() - y[part].mean())
    return float(total / len(y))


CALIBRATION_FOLDS = 5  # CalibratedClassifierCV's default cv


def calibrator(model, X, y, method: str):
    """The fitted `model` with its probabilities calibrated on (X, y), the model itself left as
    fitted (scikit-learn's FrozenEstimator, or cv='prefit' before 1.6). 'auto' = isotonic from
    1,000 rows (it needs them), sigmoid (Platt) below."""
    from sklearn.calibration import CalibratedClassifierCV

    if isinstance(model, BaseRate) or len(np.unique(y)) < 2:
        return model
    if np.bincount(np.asarray(y, dtype=int)).min() < CALIBRATION_FOLDS:
        # scikit-learn calibrates through 5 stratified folds: with fewer rows of either class
        # (a small project's validation week) there is nothing to calibrate on, so the fitted
        # model's own probabilities stand
        return model
    if method == "auto":
        method = "isotonic" if len(y) >= 1000 else "sigmoid"
    try:
        from sklearn.frozen import FrozenEstimator

        # One calibrator fitted on every row, as cv='prefit' did. The default (ensemble=True)
        # averages five, each fitted on four of five folds taken by position: with rows in data
        # order (churn's) each saw a band of the feature range, and the reported validation
        # ROC AUC on UCI Online Retail fell 0.707 -> 0.598.
        calibrated = CalibratedClassifierCV(FrozenEstimator(model), method=method, ensemble=False)
    except ImportError:  # scikit-learn < 1.6
        calibrated = CalibratedClassifierCV(model, method=method, cv="prefit")
    return calibrated.fit(X, y)


def capped(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """At most `rows` rows, a seeded sample in the frame's order (the same data gives the same
    sample): a model's size, and so the cost of every score, stops growing with the data."""
    if len(frame) <= rows:
        return frame
    return frame.sample(n=rows, random_state=seed).sort_index()


def cross_calibrated(model, x: np.ndarray, y: np.ndarray, half: np.ndarray, method: str) -> np.ndarray:
    """Calibrated probabilities of validation rows measured honestly: each half of the rows
    calibrated on the other half (the deployed calibrator sees all of them)."""
    out = model.predict_proba(x)[:, 1]
    for part in (half, ~half):
        if part.any() and (~part).any() and len(np.unique(y[~part])) == 2:
            out[part] = calibrator(model, x[~part], y[~part], method).predict_proba(x[part])[:, 1]
    return out


def halves(keys: pd.Series) -> np.ndarray:
    """A deterministic split of rows into two halves by a hash of their key."""
    return (pd.util.hash_pandas_object(keys.astype(str), index=False).to_numpy() % 2).astype(bool)


def calibration_table(y_true, p, bins: int = 10) -> list[dict]:
    """Deciles of predicted probability: rows, mean predicted, observed rate per decile."""
    frame = pd.DataFrame({"y": np.asarray(y_true, dtype=float), "p": np.asarray(p, dtype=float)})
    if frame.empty:
        return []
    # Rank first so that ties never make an empty or merged decile.
    frame["bin"] = (frame["p"].rank(method="first") - 1).mul(bins).floordiv(len(frame)).astype(int) + 1
    table = frame.groupby("bin").agg(rows=("y", "size"), predicted=("p", "mean"), observed=("y", "mean")).reset_index()
    return [{"bin": int(r.bin), "rows": int(r.rows), "predicted": float(r.predicted), "observed": float(r.observed)}
            for r in table.itertuples()]


def select_and_fit(train: pd.DataFrame, validate: pd.DataFrame, features: list[str], label: str,
                   algorithms: list[str], seed: int, models: dict | None = None) -> tuple[str, dict[str, dict], np.ndarray]:
    """Fit each candidate on `train`, score `validate`; return the best algorithm by validation
    ROC AUC (ties: the first listed), every candidate's validation metrics, and the best one's
    validation predictions. With a single outcome in `train` nothing can be learnt: 'base_rate'."""
    if train[label].nunique() < 2:
        algorithms = ["base_rate"]
    results, predictions = {}, {}
    for algorithm in algorithms:
        model = make_model(algorithm, seed).fit(train[features].to_numpy(float), train[label].to_numpy(int))
        p = model.predict_proba(validate[features].to_numpy(float))[:, 1]
        results[algorithm] = binary_metrics(validate[label], p)
        predictions[algorithm] = p
        if models is not None:  # the caller keeps the fitted candidates
            models[algorithm] = model
    best = max(algorithms, key=lambda a: (np.nan_to_num(results[a]["roc_auc"], nan=-1.0), -algorithms.index(a)))
    return best, results, predictions[best]


def reasons(model, X: pd.DataFrame, features: list[str], describe, top: int, toward_positive: bool = True,
            groups: dict[str, list[str]] | None = None) -> list[str]:
    """Top reasons per row: for each feature, how much the predicted probability moves when
    the row's value is replaced by the population's median (its contribution against a typical
    person). The features that raise the probability most, worded by `describe(feature, value,
    typical)`, joined with '; '. One-at-a-time, so interactions are not split: it answers "what
    about this person differs from typical and pushes the score up".

    `groups` (lead feature -> features that say the same thing, e.g. days since the last order
    and orders in 30 / 90 days) are replaced together and worded by their lead feature: one-at-a-
    time, correlated features split the credit and the strongest signal (recency) never showed."""
    values = X[features].to_numpy(float)
    base = model.predict_proba(values)[:, 1]
    medians = np.median(values, axis=0) if len(values) else np.zeros(len(features))
    index = {f: j for j, f in enumerate(features)}
    grouped = {f for members in (groups or {}).values() for f in members}
    units = [(lead, [index[m] for m in members if m in index]) for lead, members in (groups or {}).items()]
    units += [(f, [index[f]]) for f in features if f not in grouped]
    contributions = np.zeros((len(values), len(units)))
    for u, (_, columns) in enumerate(units):
        # Only rows that differ from typical on this unit can move (most people have no support
        # ticket, no email click...): predicting just those keeps the cost to what can change.
        differs = (values[:, columns] != medians[columns]).any(axis=1)
        if not differs.any():
            continue
        typical = values[differs]
        typical[:, columns] = medians[columns]
        contributions[differs, u] = base[differs] - model.predict_proba(typical)[:, 1]
    if not toward_positive:
        contributions = -contributions
    order = np.argsort(-contributions, axis=1, kind="stable")[:, :top]
    out = []
    for i in range(len(values)):
        parts = [describe(units[u][0], values[i, index[units[u][0]]], medians[index[units[u][0]]])
                 for u in order[i] if contributions[i, u] > 0.005]
        out.append("; ".join(parts))
    return out


def model_version(name: str, algorithm: str, as_of, frame: pd.DataFrame, features: list[str]) -> str:
    """Readable and reproducible: model, algorithm, as_of date, and a digest of the training data."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame[features], index=False).to_numpy().tobytes()).hexdigest()[:8]
    stamp = pd.Timestamp(as_of) if as_of is not None else pd.NaT
    return f"{name}-{algorithm}-{'unknown' if pd.isna(stamp) else stamp.strftime('%Y%m%d')}-{digest}"
