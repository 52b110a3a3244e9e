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


def _per_person(lists: pd.DataFrame, truth: pd.DataFrame, k: int):
    """People in `truth` (sorted), and per person: products hit in the top k, products bought,
    discounted gain of the hits."""
    people = np.unique(truth["u"].to_numpy())
    top = lists[(lists["rank"] <= k) & lists["u"].isin(people)][["u", "rank", "i"]]
    hits = top.merge(truth[["u", "i"]].drop_duplicates(), on=["u", "i"], how="inner")
    n_true = truth.drop_duplicates(["u", "i"]).groupby("u").size().reindex(people).to_numpy(float)
    n_hit = hits.groupby("u").size().reindex(people, fill_value=0).to_numpy(float)
    dcg = (1.0 / np.log2(hits["rank"].to_numpy(float) + 1.0))
    dcg = pd.Series(dcg, index=hits["u"].to_numpy()).groupby(level=0).sum().reindex(people, fill_value=0.0).to_numpy()
    return people, n_hit, n_true, dcg


def ranking_metrics(lists: pd.DataFrame, truth: pd.DataFrame, k: int) -> dict:
    """HitRate, Recall, Precision, NDCG at k over the people in `truth` (u, i pairs bought);
    a person without a list counts as a miss."""
    people, n_hit, n_true, dcg = _per_person(lists, truth, k)
    if len(people) == 0:
        return {"users": 0}
    ideal = np.array([np.sum(1.0 / np.log2(np.arange(2, min(int(n), k) + 2))) for n in n_true])
    return {"users": int(len(people)), "hit_rate": float((n_hit > 0).mean()), "recall": float((n_hit / n_true).mean()),
            "precision": float((n_hit / k).mean()), "ndcg": float((dcg / ideal).mean())}


def person_outcomes(lists: pd.DataFrame, truth: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per person in `truth` (index u, sorted): hit (1 if any of the top k was bought) and
    recall - the terms whose means are ranking_metrics' hit_rate and recall, for paired tests."""
    people, n_hit, n_true, _ = _per_person(lists, truth, k)
    return pd.DataFrame({"hit": (n_hit > 0).astype(float), "recall": n_hit / n_true}, index=people)


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
    """Top-k per person by `scores` (sparse, people x products; 0 = no score; ties: lower product
    id first), padded with `fill` (in its order, skipping what the person already has).

    Whole arrays, no loop over people: this builds every baseline's and every fallback's lists,
    and a per-person python loop cost ~60 us a person (a minute at 1M customers)."""
    scores = scores.tocsr()
    n = len(rows)
    r = np.repeat(np.arange(n, dtype=np.int64), np.diff(scores.indptr))
    cols, vals = scores.indices.astype(np.int64), scores.data.astype(float)
    # Scored products: within each person, best score first (ties: product id), the first k.
    order = np.lexsort((cols, -vals, r))
    r, cols = r[order], cols[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r)  # position within the person's run
    r, cols, rank = r[rank < k], cols[rank < k], rank[rank < k]
    scored = np.bincount(r, minlength=n)
    # Padding, after the scored: a person with n scored needs k - n more, and the first k fill
    # products hold at least that many they do not have yet. taken[person, j]: fill[j] scored.
    pad = np.asarray(fill[:k], dtype=np.int64)
    position = np.full(int(max(cols.max(initial=-1), pad.max(initial=-1))) + 1, -1)
    position[pad] = np.arange(len(pad))
    taken = np.zeros((n, len(pad)), dtype=bool)
    in_fill = position[cols] >= 0
    taken[r[in_fill], position[cols[in_fill]]] = True
    fresh_rank = scored[:, None] + np.cumsum(~taken, axis=1) - 1  # 0-based rank each fresh one would take
    use = ~taken & (fresh_rank < k)
    pad_r, pad_j = np.nonzero(use)
    all_r = np.concatenate([r, pad_r])
    all_rank = np.concatenate([rank, fresh_rank[pad_r, pad_j]])
    order = np.argsort(all_r * (k + 1) + all_rank, kind="stable")
    return pd.DataFrame({"u": np.asarray(rows, dtype=np.int64)[all_r[order]],
                         "i": np.concatenate([cols, pad[pad_j]])[order], "rank": all_rank[order] + 1})


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
