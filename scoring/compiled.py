"""A fitted model turned into plain arrays that score one row in microseconds, and that can be
stored as JSON (no pickle) for a reader that must not run code from a file.

scikit-learn's ``predict_proba`` on a single row costs from a few to hundreds of milliseconds
(input validation, and an OpenMP pool for the boosted trees that spins on a shared machine's
cores). A live decision scores one session per request, so :func:`to_spec` reads the fitted
parameters once - the trees of a HistGradientBoostingClassifier, the scaler and coefficients of
the logistic-regression pipeline, the isotonic or sigmoid calibration - into a JSON-able dict
of numbers, and :func:`from_spec` evaluates them with numpy. It computes what the model
computes (a test compares the two on many rows); a model of a kind it does not know has no
spec, and :func:`compile_model` then scores with the model itself (slow, still right).

The spec is what the scoring stage stores beside its saved model (scoring.model_store) and the
publish step copies into the snapshot for ``cdp serve``: the published snapshot holds numbers,
never an executable pickle.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scoring.models import _signed_log1p

Score = Callable[[np.ndarray], float]
SPEC_VERSION = 1


def _expit(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


# the element-wise functions a FunctionTransformer may apply, by name (scoring.models)
FUNCTIONS = {"_signed_log1p": _signed_log1p, "log1p": np.log1p}


# ---------------------------------------------------------------------- fitted model -> spec
def _trees_spec(model) -> dict:
    """HistGradientBoostingClassifier (binary): baseline + the sum of each tree's leaf, as a
    logit; all trees flattened into one node table."""
    nodes = [tree[0].nodes for tree in model._predictors]
    offsets = np.cumsum([0] + [len(n) for n in nodes[:-1]])
    flat = np.concatenate(nodes)
    shift = np.repeat(offsets, [len(n) for n in nodes])
    index = np.arange(len(flat))
    leaf = flat["is_leaf"].astype(bool)
    # child[node, went_right]; a leaf is its own child, so every walk can take `depth` steps
    return {"kind": "trees",
            "feature": np.where(leaf, 0, flat["feature_idx"]).astype(int).tolist(),
            "threshold": np.where(leaf, 0.0, flat["num_threshold"].astype(float)).tolist(),
            "left": np.where(leaf, index, flat["left"].astype(np.intp) + shift).astype(int).tolist(),
            "right": np.where(leaf, index, flat["right"].astype(np.intp) + shift).astype(int).tolist(),
            "value": flat["value"].astype(float).tolist(),
            "depth": int(flat["depth"].max()),
            "baseline": float(np.ravel(model._baseline_prediction)[0]),
            "roots": offsets.astype(int).tolist()}


def _linear_spec(pipeline) -> dict | None:
    """The logistic-regression pipeline (transform, StandardScaler, LogisticRegression) as a logit."""
    *steps, lr = [s for _, s in pipeline.steps]
    transforms = []
    for step in steps:
        name = type(step).__name__
        if name == "FunctionTransformer":
            fn = getattr(step.func, "__name__", None)
            if fn not in FUNCTIONS or step.inverse_func is not None or step.kw_args:
                return None
            transforms.append({"function": fn})
        elif name == "StandardScaler":
            mean = np.asarray(step.mean_ if step.with_mean else 0.0, dtype=float)
            scale = np.asarray(step.scale_ if step.with_std else 1.0, dtype=float)
            transforms.append({"scale": {"mean": np.ravel(mean).tolist(), "scale": np.ravel(scale).tolist()}})
        else:
            return None
    return {"kind": "linear", "transforms": transforms, "coef": lr.coef_[0].astype(float).tolist(),
            "intercept": float(lr.intercept_[0])}


def _raw_spec(model) -> dict | None:
    """The model's logit (its decision_function), or None for a kind not compiled here."""
    name = type(model).__name__
    if name == "HistGradientBoostingClassifier" and getattr(model, "n_trees_per_iteration_", 1) == 1:
        return _trees_spec(model)
    if name == "Pipeline" and type(model.steps[-1][1]).__name__ == "LogisticRegression":
        return _linear_spec(model)
    return None


def _calibration_spec(calibrator) -> dict | None:
    name = type(calibrator).__name__
    if name == "IsotonicRegression":
        return {"kind": "isotonic", "x": calibrator.X_thresholds_.astype(float).tolist(),
                "y": calibrator.y_thresholds_.astype(float).tolist(), "clip": calibrator.out_of_bounds == "clip"}
    if name == "_SigmoidCalibration":
        return {"kind": "sigmoid", "a": float(calibrator.a_), "b": float(calibrator.b_)}
    return None


def to_spec(model) -> dict | None:
    """The fitted model as a JSON-able dict of numbers, or None for a kind not compiled here."""
    name = type(model).__name__
    spec: dict | None
    if name == "CalibratedClassifierCV":
        parts = []
        for cc in model.calibrated_classifiers_:
            inner = cc.estimator
            inner = getattr(inner, "estimator", inner) if type(inner).__name__ == "FrozenEstimator" else inner
            raw = _raw_spec(inner)
            cal = _calibration_spec(cc.calibrators[0]) if len(cc.calibrators) == 1 else None
            if raw is None or cal is None:
                return None
            parts.append({"raw": raw, "calibration": cal})
        spec = {"kind": "calibrated", "parts": parts}
    elif name == "BaseRate":
        spec = {"kind": "constant", "probability": float(model.predict_proba(np.zeros((1, 1)))[0, 1])}
    else:
        raw = _raw_spec(model)
        spec = None if raw is None else {"kind": "logistic", "raw": raw}
    return None if spec is None else {"spec_version": SPEC_VERSION, **spec}


# ---------------------------------------------------------------------- spec -> scorer
def _trees(s: dict) -> Score:
    feature = np.asarray(s["feature"], dtype=np.intp)
    threshold = np.asarray(s["threshold"], dtype=float)
    child = np.column_stack([np.asarray(s["left"], dtype=np.intp), np.asarray(s["right"], dtype=np.intp)])
    value = np.asarray(s["value"], dtype=float)
    depth, baseline = int(s["depth"]), float(s["baseline"])
    roots = np.asarray(s["roots"], dtype=np.intp)

    def logit(x: np.ndarray) -> float:
        # no NaN reaches here: features are filled with 0 as in training (missing values never
        # go down the trees' missing-value branches)
        at = roots
        for _ in range(depth):
            at = child[at, (x[feature[at]] > threshold[at]).view(np.int8)]
        return baseline + float(value[at].sum())

    return logit


def _linear(s: dict) -> Score:
    transforms = []
    for t in s["transforms"]:
        if "function" in t:
            transforms.append(FUNCTIONS[t["function"]])
        else:
            mean, scale = np.asarray(t["scale"]["mean"], dtype=float), np.asarray(t["scale"]["scale"], dtype=float)
            transforms.append(lambda x, m=mean, sc=scale: (x - m) / sc)
    coef, intercept = np.asarray(s["coef"], dtype=float), float(s["intercept"])

    def logit(x: np.ndarray) -> float:
        z = x.reshape(1, -1)
        for t in transforms:
            z = t(z)
        return float(np.asarray(z).ravel() @ coef + intercept)

    return logit


def _raw(s: dict) -> Score:
    return {"trees": _trees, "linear": _linear}[s["kind"]](s)


def _calibration(s: dict) -> Callable[[float], float]:
    if s["kind"] == "isotonic":
        xs, ys, clip = np.asarray(s["x"], dtype=float), np.asarray(s["y"], dtype=float), bool(s["clip"])
        return lambda f: float(np.interp(np.clip(f, xs[0], xs[-1]) if clip else f, xs, ys))
    a, b = float(s["a"]), float(s["b"])
    return lambda f: _expit(-(a * f + b))


def from_spec(spec: dict) -> Score:
    """The probability of the positive class for one row (NaN-free), from :func:`to_spec`'s dict."""
    if spec.get("spec_version") != SPEC_VERSION:
        raise ValueError(f"compiled model spec version {spec.get('spec_version')!r} is not {SPEC_VERSION}")
    kind = spec["kind"]
    if kind == "constant":
        rate = float(spec["probability"])
        return lambda x: rate
    if kind == "logistic":
        raw = _raw(spec["raw"])
        return lambda x: _expit(raw(x))
    if kind == "calibrated":
        parts = [(_raw(p["raw"]), _calibration(p["calibration"])) for p in spec["parts"]]

        def probability(x: np.ndarray) -> float:
            total = 0.0
            for raw, cal in parts:
                total += min(max(cal(raw(x)), 0.0), 1.0)  # scikit-learn clips a binary calibrated probability to [0, 1]
            return total / len(parts)

        return probability
    raise ValueError(f"unknown compiled model kind {kind!r}")


class CompiledModel:
    """``probability(row)``: the model's probability of the positive class for one row (the
    model's features, in order). From a fitted model, or from its spec alone (``model`` None)."""

    def __init__(self, model=None, spec: dict | None = None):
        self.model = model
        self.spec = spec if spec is not None else (to_spec(model) if model is not None else None)
        self.compiled = self.spec is not None
        if self.spec is not None:
            self._score = from_spec(self.spec)
        elif model is not None:  # a kind not compiled: the model itself scores
            self._score = lambda x: float(model.predict_proba(x.reshape(1, -1))[0, 1])
        else:
            raise ValueError("a compiled model needs a fitted model or its spec")

    def probability(self, row) -> float:
        x = np.asarray(row, dtype=float)
        return self._score(np.where(np.isnan(x), 0.0, x))


def compile_model(model) -> CompiledModel:
    return CompiledModel(model)
