"""Ranking metrics and the baselines any data scientist tries first, on the same State as the
recommender (scoring/recommend.py) so that every method sees exactly the same history.

Baselines (each list padded with the 90-day popularity list, so every method fills k slots):
- popularity: most buyers in the 90 days before the cut-off;
- buy_again: the person's own most-bought products (ties: most recent);
- item_item: sum of co-purchase cosine similarities from everything the person bought;
- als: implicit-feedback ALS (the `implicit` package), own products allowed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def ranking_metrics(lists: pd.DataFrame, truth: pd.DataFrame, k: int) -> dict:
    """HitRate, Recall, Precision, NDCG at k over the people in `truth` (u, i pairs bought);
    a person without a list counts as a miss."""
    people = np.unique(truth["u"].to_numpy())
    if len(people) == 0:
        return {"users": 0}
    top = lists[(lists["rank"] <= k) & lists["u"].isin(people)][["u", "rank", "i"]]
    hits = top.merge(truth[["u", "i"]].drop_duplicates(), on=["u", "i"], how="inner")
    n_true = truth.drop_duplicates(["u", "i"]).groupby("u").size().reindex(people).to_numpy(float)
    n_hit = hits.groupby("u").size().reindex(people, fill_value=0).to_numpy(float)
    dcg = (1.0 / np.log2(hits["rank"].to_numpy(float) + 1.0))
    dcg = pd.Series(dcg, index=hits["u"].to_numpy()).groupby(level=0).sum().reindex(people, fill_value=0.0).to_numpy()
    ideal = np.array([np.sum(1.0 / np.log2(np.arange(2, min(int(n), k) + 2))) for n in n_true])
    return {"users": int(len(people)), "hit_rate": float((n_hit > 0).mean()), "recall": float((n_hit / n_true).mean()),
            "precision": float((n_hit / k).mean()), "ndcg": float((dcg / ideal).mean())}


def list_metrics(lists: pd.DataFrame, state, people: np.ndarray, k: int) -> dict:
    """Catalog coverage (share of products recommended to anyone) and novelty (mean
    -log2 of the share of people who bought the recommended product before the cut-off)."""
    top = lists[(lists["rank"] <= k) & lists["u"].isin(people)]
    n_items = state.data.n_items
    buyers = np.expm1(state.popularity)
    share = (buyers + 1.0) / (max(int((state.user_orders > 0).sum()), 1) + 1.0)
    return {"coverage": float(top["i"].nunique() / max(n_items, 1)),
            "novelty": float(np.mean(-np.log2(share[top["i"].to_numpy(int)]))) if len(top) else float("nan")}


def _lists_from_scores(rows: np.ndarray, scores: sp.csr_matrix, fill: np.ndarray, k: int) -> pd.DataFrame:
    """Top-k per person by `scores` (sparse, people x products; 0 = no score), padded with `fill`."""
    out_u, out_i = [], []
    scores = scores.tocsr()
    for r, u in enumerate(rows):
        lo, hi = scores.indptr[r], scores.indptr[r + 1]
        cols, vals = scores.indices[lo:hi], scores.data[lo:hi]
        order = np.lexsort((cols, -vals))[:k]
        chosen = list(cols[order])
        if len(chosen) < k:
            seen = set(chosen)
            chosen += [i for i in fill[: k + len(seen)] if i not in seen][: k - len(chosen)]
        out_u.extend([u] * len(chosen))
        out_i.extend(chosen)
    frame = pd.DataFrame({"u": np.asarray(out_u, dtype=np.int64), "i": np.asarray(out_i, dtype=np.int64)})
    frame["rank"] = frame.groupby("u").cumcount() + 1
    return frame


def popular_items(state) -> np.ndarray:
    return np.lexsort((np.arange(state.data.n_items), -state.popularity, -state.popularity_90d))


def popularity_lists(state, rows: np.ndarray, k: int) -> pd.DataFrame:
    return _lists_from_scores(rows, sp.csr_matrix((len(rows), state.data.n_items)), popular_items(state), k)


def buy_again_lists(state, rows: np.ndarray, k: int) -> pd.DataFrame:
    count = state.own_count[rows].tocsr()
    days = state.own_days[rows].tocsr()
    # Most orders first, then the most recent (own_days is days + 1, aligned with count).
    score = count.copy()
    score.data = count.data + 1.0 / (1.0 + days.data)
    return _lists_from_scores(rows, score, popular_items(state), k)


def item_item_lists(state, rows: np.ndarray, k: int) -> pd.DataFrame:
    bought = state.own_count[rows].tocsr().copy()
    bought.data[:] = 1.0
    return _lists_from_scores(rows, bought @ state.s_bought, popular_items(state), k)


def als_lists(state, rows: np.ndarray, k: int) -> pd.DataFrame | None:
    if state.als_users is None:
        return None
    top = als_top(state, rows, k)
    return pd.DataFrame({"u": np.repeat(rows, k), "i": top.ravel().astype(np.int64),
                         "rank": np.tile(np.arange(1, k + 1), len(rows))})


def als_top(state, rows: np.ndarray, k: int) -> np.ndarray:
    """Each person's k best products by ALS score (implicit's top-k: no dense people x products
    matrix, which dominated the cost at scale)."""
    from implicit.cpu.topk import topk

    ids, _ = topk(np.ascontiguousarray(state.als_items, dtype=np.float32),
                  np.ascontiguousarray(state.als_users[rows], dtype=np.float32), k, num_threads=1)
    return np.asarray(ids, dtype=np.int64)
