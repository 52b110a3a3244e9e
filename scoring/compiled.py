"""A fitted model turned into plain arrays that score one row in microseconds.

scikit-learn's ``predict_proba`` on a single row costs from a few to hundreds of milliseconds
(input validation, and an OpenMP pool for the boosted trees that spins on a shared machine's
cores). A live decision scores one session per request, so :func:`compile_model` reads the
fitted parameters once - the trees of a HistGradientBoostingClassifier, the scaler and
coefficients of the logistic-regression pipeline, the isotonic or sigmoid calibration - and
:meth:`CompiledModel.probability` evaluates them with numpy. It computes what the model
computes (a test compares the two on many rows); a model of a kind it does not know is scored
by the model itself (slow, still right).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Score = Callable[[np.ndarray], float]


def _expit(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def _trees(model) -> Score:
    """HistGradientBoostingClassifier (binary): baseline + the sum of each tree's leaf, as a
    logit. All trees walked together, one level per step."""
    nodes = [tree[0].nodes for tree in model._predictors]
    offsets = np.cumsum([0] + [len(n) for n in nodes[:-1]])
    flat = np.concatenate(nodes)
    shift = np.repeat(offsets, [len(n) for n in nodes])
    index = np.arange(len(flat))
    leaf = flat["is_leaf"].astype(bool)
    feature = np.where(leaf, 0, flat["feature_idx"]).astype(np.intp)
    threshold = flat["num_threshold"].astype(float)
    # child[node, went_right]; a leaf is its own child, so every walk can take `depth` steps
    child = np.column_stack([np.where(leaf, index, flat["left"].astype(np.intp) + shift),
                             np.where(leaf, index, flat["right"].astype(np.intp) + shift)])
    value = flat["value"].astype(float)
    depth = int(flat["depth"].max())
    baseline = float(np.ravel(model._baseline_prediction)[0])
    roots = offsets.astype(np.intp)

    def logit(x: np.ndarray) -> float:
        # no NaN reaches here: features are filled with 0 as in training (missing values never
        # go down the trees' missing-value branches)
        at = roots
        for _ in range(depth):
            at = child[at, (x[feature[at]] > threshold[at]).view(np.int8)]
        return baseline + float(value[at].sum())

    return logit


def _linear(pipeline) -> Score:
    """The logistic-regression pipeline (transform, StandardScaler, LogisticRegression) as a logit."""
    *steps, lr = [s for _, s in pipeline.steps]
    transforms = []
    for step in steps:
        name = type(step).__name__
        if name == "FunctionTransformer":
            transforms.append(step.func)
        elif name == "StandardScaler":
            mean = step.mean_ if step.with_mean else 0.0
            scale = step.scale_ if step.with_std else 1.0
            transforms.append(lambda x, m=mean, s=scale: (x - m) / s)
        else:
            raise TypeError(name)
    coef, intercept = lr.coef_[0].astype(float), float(lr.intercept_[0])

    def logit(x: np.ndarray) -> float:
        z = x.reshape(1, -1)
        for t in transforms:
            z = t(z)
        return float(np.asarray(z).ravel() @ coef + intercept)

    return logit


def _raw(model) -> Score | None:
    """The model's logit (its decision_function), or None for a kind not compiled here."""
    name = type(model).__name__
    if name == "HistGradientBoostingClassifier" and getattr(model, "n_trees_per_iteration_", 1) == 1:
        return _trees(model)
    if name == "Pipeline" and type(model.steps[-1][1]).__name__ == "LogisticRegression":
        return _linear(model)
    return None


def _calibration(calibrator) -> Callable[[float], float] | None:
    name = type(calibrator).__name__
    if name == "IsotonicRegression":
        xs, ys = calibrator.X_thresholds_.astype(float), calibrator.y_thresholds_.astype(float)
        clip = calibrator.out_of_bounds == "clip"
        return lambda f: float(np.interp(np.clip(f, xs[0], xs[-1]) if clip else f, xs, ys))
    if name == "_SigmoidCalibration":
        a, b = float(calibrator.a_), float(calibrator.b_)
        return lambda f: _expit(-(a * f + b))
    return None


def _calibrated(model) -> Score | None:
    """CalibratedClassifierCV over a compiled kind: the mean of its calibrated classifiers."""
    parts = []
    for cc in model.calibrated_classifiers_:
        inner = cc.estimator
        inner = getattr(inner, "estimator", inner) if type(inner).__name__ == "FrozenEstimator" else inner
        raw = _raw(inner)
        cal = _calibration(cc.calibrators[0]) if len(cc.calibrators) == 1 else None
        if raw is None or cal is None:
            return None
        parts.append((raw, cal))

    def probability(x: np.ndarray) -> float:
        total = 0.0
        for raw, cal in parts:
            p = min(max(cal(raw(x)), 0.0), 1.0)  # scikit-learn clips a binary calibrated probability to [0, 1]
            total += p
        return total / len(parts)

    return probability


class CompiledModel:
    """``probability(row)``: the model's probability of the positive class for one row (the
    model's features, in order)."""

    def __init__(self, model):
        self.model = model
        self.compiled = True
        name = type(model).__name__
        score: Score | None = None
        if name == "CalibratedClassifierCV":
            score = _calibrated(model)
        elif name == "BaseRate":
            rate = float(model.predict_proba(np.zeros((1, 1)))[0, 1])
            score = lambda x: rate  # noqa: E731
        else:
            raw = _raw(model)
            if raw is not None:
                score = lambda x: _expit(raw(x))  # noqa: E731
        if score is None:  # a kind not compiled: the model itself scores
            self.compiled = False
            score = lambda x: float(model.predict_proba(x.reshape(1, -1))[0, 1])  # noqa: E731
        self._score = score

    def probability(self, row) -> float:
        x = np.asarray(row, dtype=float)
        return self._score(np.where(np.isnan(x), 0.0, x))


def compile_model(model) -> CompiledModel:
    return CompiledModel(model)
