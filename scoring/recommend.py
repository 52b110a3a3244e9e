"""Recommendations: the top `list_length` products per person, each with the signal behind it.

The one implementation of the recommender: the pipeline runs it as of the run's as_of
(`scoring.recommendations`, published by dbt's `recommendations` mart) and `cdp evaluate
recommendations` runs the same code as of a past cut-off.

1. Candidates per person, every source bounded: the products they bought before (buy-again /
   replenishment, with each product's own repurchase interval), co-purchase neighbours of their
   most recent purchases and co-view neighbours of their recent views (cosine similarity, top
   `neighbours` per product), the top products of their top categories, trending products and
   the 90-day best sellers (a cold start's list; on a thin log the 30-day trend is a handful of
   single sales), and implicit-feedback ALS neighbours for people who bought before, when the
   `implicit` package and the data allow.
2. Features per (person, product) - how often and how long ago they bought it against its
   usual interval, the similarities, category share, trend, the ALS score, the person's order
   count (so new, occasional and loyal customers get their own blend).
3. The blend is a gradient-boosted ranker fitted on a time split of the shop's own orders:
   features as of as_of - horizon, label = bought in the next horizon days. Weights are never
   hand-set for one data set; a shop too small to learn from gets a fixed fallback blend.
4. Lists: non-products (catalog non_product = true) and purchases of the last
   `exclude_bought_within_days` never appear; at most `max_per_category` per category (raised
   when the catalog has too few categories to fill a list); the reason is the personal signal
   whose removal lowers the score most, else `trending`.
5. Published: the blend only if a paired bootstrap over the held-out buyers of its time split
   shows it ahead of the better of buy-again and popularity (HitRate or Recall, at
   `blend_confidence`) and not behind in the other; otherwise that method's lists
   (choose_published, simple_lists). A fixed margin on a few hundred buyers was noise-sized.
   The fixed fallback blend is tested the same way (on every buyer of the split); only a shop
   with no history before the split or under 50 buyers in it, where nothing can be measured,
   gets it untested.

Everything is in sparse matrices and processed in chunks of people, so the cost grows
linearly with customers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from core.settings.scoring import RecommendationsSettings
from scoring.recommend_metrics import (
    als_top,
    buy_again_lists,
    person_outcomes,
    popular_items,
    popularity_lists,
    ranking_metrics,
)

log = logging.getLogger("tessera.scoring")

REASONS = ("buy_again", "replenishment", "bought_together", "viewed_together", "recently_viewed",
           "category_affinity", "similar_customers", "trending")
FEATURES = ["own_orders", "own_days", "own_due", "item_interval", "item_repeat_rate", "co_purchase", "co_view",
            "viewed", "viewed_days", "affinity", "cat_share", "trending", "popularity_90d", "popularity", "als",
            "user_orders", "user_days"]
# Which features carry each personal reason: a reason's weight in a score is how much the score
# drops when these are set to "no such signal".
_FAMILIES = {
    "buy_again": {"own_orders": 0.0, "own_days": np.nan, "own_due": np.nan},
    "bought_together": {"co_purchase": 0.0},
    "viewed_together": {"co_view": 0.0},
    "recently_viewed": {"viewed": 0.0, "viewed_days": np.nan},
    "category_affinity": {"affinity": 0.0, "cat_share": 0.0},
    "similar_customers": {"als": 0.0},
}
# A reason must explain at least this share of the score, else the product is just popular.
_REASON_MIN_SHARE = 0.10
# Per candidate source, per person: bounds that keep the candidate set (and the cost) linear.
TOP_PER_CATEGORY, TOP_CATEGORIES, TRENDING_CANDIDATES, ALS_CANDIDATES, OWN_CANDIDATES = 10, 3, 20, 20, 50
# The best sellers of the last 90 days (ties: of all time), the popularity baseline's own order: on a
# thin log the 30-day trend is a handful of single sales, and a cold start needs these too.
POPULAR_CANDIDATES = 20
NEGATIVES_PER_PERSON = 60
# What the stage may publish instead of the blend when the blend does not beat them (choose_published).
SIMPLE_METHODS = ("buy_again", "popularity")
CHUNK = 20_000


# --------------------------------------------------------------------------- data
@dataclass
class Interactions:
    """Everything up to `until`, ids encoded: persons (customers), products (non_product excluded)."""

    persons: np.ndarray
    products: pd.DataFrame  # sku, category, cat (int code)
    lines: pd.DataFrame  # u, i, order_key, t (datetime64)
    views: pd.DataFrame  # u (-1 = anonymous), i, session_id, t

    @property
    def n_users(self) -> int:
        return len(self.persons)

    @property
    def n_items(self) -> int:
        return len(self.products)


def load_products(con) -> pd.DataFrame:
    """The catalog's products (non-products excluded) in index order: sku, category, cat."""
    products = con.execute("""SELECT sku, coalesce(category, '') AS category FROM staging.stg_catalog__products
                              WHERE NOT coalesce(non_product, false) ORDER BY sku""").df()
    products["cat"] = pd.factorize(products["category"])[0]
    return products


def load_interactions(con, until: pd.Timestamp, view_from: pd.Timestamp,
                      persons: np.ndarray | None = None) -> Interactions:
    """Order lines up to `until` and product views in (view_from, until] from the warehouse.
    `persons` (sorted person ids): only theirs (and no anonymous views), in that order; default
    every customer, in the order of their history (_by_history)."""
    until, view_from = pd.Timestamp(until).to_pydatetime(), pd.Timestamp(view_from).to_pydatetime()
    products = load_products(con)
    everyone = persons is None
    view_join = "LEFT JOIN" if everyone else "JOIN"
    if everyone:
        persons = con.execute("SELECT person_id FROM marts.customers ORDER BY person_id").df()["person_id"].to_numpy()
    con.register("rec_products", products[["sku"]].assign(i=np.arange(len(products))))
    con.register("rec_persons", pd.DataFrame({"person_id": persons, "u": np.arange(len(persons))}))
    try:
        lines = con.execute("""
            SELECT p.u, i.i, l.order_key, min(l.ordered_at) AS t
            FROM intermediate.int_order_lines l
            JOIN rec_persons p ON p.person_id = l.person_id JOIN rec_products i ON i.sku = l.sku
            WHERE l.ordered_at <= ? GROUP BY ALL""", [until]).df()
        views = con.execute(f"""
            SELECT coalesce(p.u, -1) AS u, i.i, v.session_id, max(v.occurred_at) AS t
            FROM intermediate.int_web_product_events v
            JOIN rec_products i ON i.sku = v.sku {view_join} rec_persons p ON p.person_id = v.person_id
            WHERE v.event_name = 'product_viewed' AND v.occurred_at <= ? AND v.occurred_at > ?
            GROUP BY ALL""", [until, view_from]).df()
    finally:
        con.unregister("rec_products")
        con.unregister("rec_persons")
    for frame in (lines, views):
        frame["t"] = pd.to_datetime(frame["t"]).dt.tz_localize(None) if len(frame) else pd.Series(dtype="datetime64[ns]")
        frame["u"] = frame["u"].astype(np.int64)
        frame["i"] = frame["i"].astype(np.int64)
    if everyone:
        persons = _by_history(persons, lines, views)
    return Interactions(persons, products, lines, views)


def _by_history(persons: np.ndarray, lines: pd.DataFrame, views: pd.DataFrame) -> np.ndarray:
    """Renumber the persons (`u` in `lines` and `views`, in place) in the order of a hash of their
    purchases and views, the id breaking ties; returns the persons in that order.

    A fit sees persons by number: ALS's random start is per row, the validation draw is over
    numbers. Numbered in id order, two warehouses with the same data but a few persons named
    differently (a daily project keeps the id that survived a merge, a rebuild mints one) moved
    everyone after them and changed 58% of the lists at 100k. In history order a person's number
    does not depend on anyone's id; persons with the same history are interchangeable."""
    n = len(persons)
    key = np.zeros(n, dtype=np.uint64)
    if len(lines):
        np.add.at(key, lines["u"].to_numpy(), pd.util.hash_pandas_object(
            lines[["i", "order_key", "t"]], index=False).to_numpy())
    known = views[views["u"] >= 0]
    if len(known):
        # (views' hashes times 3, so that a view and a purchase of the same fields differ)
        np.add.at(key, known["u"].to_numpy(), pd.util.hash_pandas_object(
            known[["i", "session_id", "t"]], index=False).to_numpy() * np.uint64(3))
    order = np.lexsort((np.arange(n), key))  # by key, then by the id order the numbers came in
    renumber = np.empty(n, dtype=np.int64)
    renumber[order] = np.arange(n)
    lines["u"] = renumber[lines["u"].to_numpy()]
    if len(known):
        views.loc[views["u"] >= 0, "u"] = renumber[known["u"].to_numpy()]
    return persons[order]


def _days(t: pd.Series, as_of: pd.Timestamp) -> np.ndarray:
    return ((as_of - t).dt.total_seconds().to_numpy() / 86400.0).clip(min=0)


def _csr(rows, cols, values, shape) -> sp.csr_matrix:
    m = sp.coo_matrix((np.asarray(values, dtype=np.float64), (rows, cols)), shape=shape).tocsr()
    m.sum_duplicates()
    return m


def _gather(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    if len(rows) == 0:
        return np.zeros(0)
    return np.asarray(m[rows, cols]).ravel()


def _top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's k largest values (ties: lower column first)."""
    coo = m.tocoo()
    if coo.nnz == 0:
        return m.tocsr()
    order = np.lexsort((coo.col, -coo.data, coo.row))
    rows, cols, vals = coo.row[order], coo.col[order], coo.data[order]
    starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
    rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    keep = rank < k
    return _csr(rows[keep], cols[keep], vals[keep], m.shape)


def item_similarity(baskets: np.ndarray, items: np.ndarray, n_items: int, k: int) -> sp.csr_matrix:
    """Cosine similarity of products' baskets (orders or sessions), top k neighbours each."""
    if len(items) == 0:
        return sp.csr_matrix((n_items, n_items))
    codes = pd.factorize(baskets)[0]
    b = _csr(codes, items, np.ones(len(items)), (codes.max() + 1, n_items))
    b.data[:] = 1.0
    counts = np.asarray(b.sum(axis=0)).ravel()
    c = (b.T @ b).tocoo()
    off = c.row != c.col
    rows, cols = c.row[off], c.col[off]
    sim = c.data[off] / np.sqrt(counts[rows] * counts[cols])
    return _top_per_row(_csr(rows, cols, sim, (n_items, n_items)), k)


# --------------------------------------------------------------------------- state as of a time
@dataclass
class State:
    """The signals as of one time; `features(rows)` turns them into candidate rows."""

    as_of: pd.Timestamp
    data: Interactions
    settings: RecommendationsSettings
    own_count: sp.csr_matrix = None
    own_days: sp.csr_matrix = None  # days since last bought + 1 (0 = never)
    seeds: sp.csr_matrix = None
    view_seeds: sp.csr_matrix = None
    view_count: sp.csr_matrix = None
    view_days: sp.csr_matrix = None  # + 1, like own_days
    s_bought: sp.csr_matrix = None
    s_viewed: sp.csr_matrix = None
    cat_share: sp.csr_matrix = None  # persons x categories
    top_categories: sp.csr_matrix = None  # persons x categories, top TOP_CATEGORIES shares
    category_top_items: sp.csr_matrix = None  # categories x products, category popularity of its top items
    item_interval: np.ndarray = None
    item_repeat_rate: np.ndarray = None
    item_cat_pop: np.ndarray = None
    trending: np.ndarray = None
    popularity: np.ndarray = None
    popularity_90d: np.ndarray = None
    user_orders: np.ndarray = None
    user_days: np.ndarray = None
    als_users: np.ndarray | None = None
    als_items: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


# The State's shop-wide signals (_item_signals, with ALS's item factors apart): what a saved
# recommendation model keeps (scoring/recommend_store.py); the rest of a State is each person's own.
ITEM_FIELDS = ("item_interval", "item_repeat_rate", "item_cat_pop", "trending", "popularity", "popularity_90d",
               "s_bought", "s_viewed", "category_top_items")


def build_state(data: Interactions, as_of: pd.Timestamp, settings: RecommendationsSettings) -> State:
    as_of = pd.Timestamp(as_of)
    s = State(as_of, data, settings)
    lines = data.lines[data.lines["t"] <= as_of]
    views = data.views[(data.views["t"] <= as_of) & (data.views["t"] > as_of - pd.Timedelta(days=settings.view_days))]
    pi = _person_signals(s, lines, views, as_of)
    _item_signals(s, lines, views, pi, as_of)
    if settings.collaborative:
        _fit_als(s)
    return s


def _person_signals(s: State, lines: pd.DataFrame, views: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """What is a person's own: their purchases and views (ages in days before `as_of`, never
    below 0), seeds, category shares, orders. Each person's rows depend on their own history
    only. Returns the (person, product) purchase table the item signals count from."""
    data, settings = s.data, s.settings
    nu, ni = data.n_users, data.n_items
    # Buy-again: distinct orders per (person, product) and days since the last one.
    pi = lines.groupby(["u", "i"], sort=True).agg(n=("order_key", "nunique"), first=("t", "min"), last=("t", "max"))
    pi = pi.reset_index()
    pi["days"] = _days(pi["last"], as_of)
    s.own_count = _csr(pi["u"], pi["i"], pi["n"], (nu, ni))
    s.own_days = _csr(pi["u"], pi["i"], pi["days"] + 1.0, (nu, ni))
    # Seeds: a person's most recently bought products.
    recent_first = pi.sort_values(["u", "days", "i"])
    seed = recent_first[recent_first.groupby("u").cumcount() < settings.seed_items]
    s.seeds = _csr(seed["u"], seed["i"], np.ones(len(seed)), (nu, ni))
    # Views in the view window: the person's own (co-views are an item signal).
    known = views[views["u"] >= 0]
    pv = known.groupby(["u", "i"], sort=True).agg(n=("session_id", "nunique"), last=("t", "max")).reset_index()
    pv["days"] = _days(pv["last"], as_of)
    s.view_count = _csr(pv["u"], pv["i"], pv["n"], (nu, ni))
    s.view_days = _csr(pv["u"], pv["i"], pv["days"] + 1.0, (nu, ni))
    vseed = pv.sort_values(["u", "days", "i"])
    vseed = vseed[vseed.groupby("u").cumcount() < settings.seed_items]
    s.view_seeds = _csr(vseed["u"], vseed["i"], np.ones(len(vseed)), (nu, ni))
    # Category affinity: the person's share of purchases and views per category.
    cats = data.products["cat"].to_numpy()
    n_cats = int(cats.max()) + 1 if ni else 1
    touches = pd.concat([pi[["u", "i"]], pv[["u", "i"]]])
    cat_touch = _csr(touches["u"], cats[touches["i"].to_numpy()], np.ones(len(touches)), (nu, n_cats))
    totals = np.asarray(cat_touch.sum(axis=1)).ravel()
    s.cat_share = sp.diags(1.0 / np.maximum(totals, 1.0)) @ cat_touch
    s.cat_share = s.cat_share.tocsr()
    s.top_categories = _top_per_row(s.cat_share, TOP_CATEGORIES)
    # Person-level: orders and days since the last one (new / occasional / loyal).
    pu = lines.groupby("u").agg(n=("order_key", "nunique"), last=("t", "max"))
    s.user_orders = np.zeros(nu)
    s.user_orders[pu.index.to_numpy()] = pu["n"].to_numpy()
    s.user_days = np.full(nu, np.nan)
    s.user_days[pu.index.to_numpy()] = _days(pu["last"], as_of)
    return pi


def _item_signals(s: State, lines: pd.DataFrame, views: pd.DataFrame, pi: pd.DataFrame, as_of: pd.Timestamp) -> None:
    """What is the shop's, the same for everyone: repurchase intervals, co-purchase and co-view
    neighbours, popularity, trending, the categories' top products (ITEM_FIELDS)."""
    data, settings = s.data, s.settings
    ni = data.n_items
    # Each product's own repurchase interval: the median over repeat buyers of their mean gap.
    repeat = pi[pi["n"] >= 2]
    gap = (repeat["last"] - repeat["first"]).dt.total_seconds() / 86400.0 / (repeat["n"] - 1)
    per_item = pd.DataFrame({"i": repeat["i"], "gap": gap}).groupby("i")["gap"].median()
    overall = float(gap.median()) if len(gap) else float(settings.horizon_days)
    s.item_interval = np.full(ni, overall)
    s.item_interval[per_item.index.to_numpy()] = per_item.to_numpy()
    buyers = np.bincount(pi["i"], minlength=ni).astype(float)
    s.item_repeat_rate = np.bincount(repeat["i"], minlength=ni) / np.maximum(buyers, 1.0)
    s.s_bought = item_similarity(lines["order_key"].to_numpy(), lines["i"].to_numpy(), ni, settings.neighbours)
    # Co-views: anonymous sessions count too.
    s.s_viewed = item_similarity(views["session_id"].to_numpy(), views["i"].to_numpy(), ni, settings.neighbours)
    cats = data.products["cat"].to_numpy()
    n_cats = int(cats.max()) + 1 if ni else 1

    # Popularity: buyers in the trending window, in 90 days, and all time (log-scaled).
    def buyers_within(days):
        part = lines[lines["t"] > as_of - pd.Timedelta(days=days)] if days else lines
        return np.bincount(part.drop_duplicates(["u", "i"])["i"], minlength=ni).astype(float)

    s.trending = np.log1p(buyers_within(settings.trending_days))
    s.popularity_90d = buyers_within(90)
    s.popularity = np.log1p(buyers)
    recent_pop = s.popularity_90d + 0.01 * buyers  # a quiet catalog still has an order
    cat_max = np.zeros(n_cats)
    np.maximum.at(cat_max, cats, recent_pop)
    s.item_cat_pop = recent_pop / np.maximum(cat_max[cats], 1e-9)
    top_in_cat = pd.DataFrame({"c": cats, "i": np.arange(ni), "p": recent_pop}).sort_values(["c", "p", "i"], ascending=[True, False, True])
    top_in_cat = top_in_cat[top_in_cat.groupby("c").cumcount() < TOP_PER_CATEGORY]
    s.category_top_items = _csr(top_in_cat["c"], top_in_cat["i"], s.item_cat_pop[top_in_cat["i"].to_numpy()] + 1e-6,
                                (n_cats, ni))


def _fit_als(s: State) -> None:
    """Implicit-feedback ALS on purchases; skipped (with a note) when `implicit` is missing or
    the data is too small to factorise."""
    if s.own_count.nnz < 50 or s.data.n_items < 10:
        s.notes.append("ALS skipped: fewer than 50 purchases or 10 products")
        return
    try:
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError:  # optional at run time: the blend works without it
        s.notes.append("ALS skipped: the `implicit` package is not installed")
        return
    factors = int(min(64, max(8, s.data.n_items // 4)))
    with threadpool_limits(limits=1, user_api="blas"):  # implicit's own advice: its threads, not BLAS's
        model = AlternatingLeastSquares(factors=factors, regularization=ALS_REGULARIZATION, iterations=15,
                                        random_state=s.settings.seed, num_threads=1)
        model.fit(als_confidence(s.own_count), show_progress=False)
    s.als_users, s.als_items = np.asarray(model.user_factors), np.asarray(model.item_factors)


ALS_REGULARIZATION = 0.05


def als_confidence(own_count: sp.csr_matrix) -> sp.csr_matrix:
    conf = own_count.copy().astype(np.float32)
    conf.data = 1.0 + 10.0 * np.log1p(conf.data)  # confidence grows slowly with repeats
    return conf.tocsr()


def als_user_factors(own_count: sp.csr_matrix, item_factors: np.ndarray) -> np.ndarray:
    """Each person's ALS factors solved against fixed item factors (implicit's exact per-person
    least squares): a person's factors depend on their own purchases and the items only, so a
    saved model scores anyone, in any batch, the same."""
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=item_factors.shape[1], regularization=ALS_REGULARIZATION, num_threads=1)
    model.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        users = model.recalculate_user(np.arange(own_count.shape[0]), als_confidence(own_count))
    return np.asarray(users)


def candidates(s: State, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(person index, product index) pairs for the people `rows`, every source bounded."""
    own = _top_per_row(s.own_count[rows], OWN_CANDIDATES)
    co_bought = _top_per_row(s.seeds[rows] @ s.s_bought, 50)
    co_viewed = _top_per_row(s.view_seeds[rows] @ s.s_viewed, 50)
    viewed = _top_per_row(s.view_count[rows], 20)
    affinity = s.top_categories[rows] @ s.category_top_items
    union = (own != 0).astype(np.int8) + (co_bought != 0) + (co_viewed != 0) + (viewed != 0) + (affinity != 0)
    parts = [union.tocoo()]
    trend = np.argsort(-(s.trending + 1e-6 * s.popularity), kind="stable")[:TRENDING_CANDIDATES]
    popular = popular_items(s)[:POPULAR_CANDIDATES]
    general = np.union1d(trend, popular)  # the same for everyone
    local = np.arange(len(rows))
    parts.append(sp.coo_matrix((np.ones(len(local) * len(general)),
                                (np.repeat(local, len(general)), np.tile(general, len(local)))), shape=union.shape))
    # ALS knows nothing of a person with no purchase (their factors are zero): their ALS "top" would
    # be an arbitrary slice of the catalog.
    warm = local[s.user_orders[rows] > 0]
    if s.als_users is not None and len(warm):
        k = min(ALS_CANDIDATES, s.data.n_items)
        top = als_top(s, rows[warm], k)
        parts.append(sp.coo_matrix((np.ones(top.size), (np.repeat(warm, k), top.ravel())), shape=union.shape))
    merged = sp.csr_matrix(sum(p.tocsr() for p in parts))
    merged.sum_duplicates()
    coo = merged.tocoo()
    order = np.lexsort((coo.col, coo.row))
    return rows[coo.row[order]], coo.col[order].astype(np.int64)


def features(s: State, u: np.ndarray, i: np.ndarray) -> pd.DataFrame:
    own_n = _gather(s.own_count, u, i)
    own_d = _gather(s.own_days, u, i)
    own_days = np.where(own_d > 0, own_d - 1.0, np.nan)
    view_d = _gather(s.view_days, u, i)
    cats = s.data.products["cat"].to_numpy()[i]
    share = _gather(s.cat_share, u, cats)
    f = {
        "own_orders": own_n,
        "own_days": own_days,
        "own_due": own_days / np.maximum(s.item_interval[i], 1.0),
        "item_interval": s.item_interval[i],
        "item_repeat_rate": s.item_repeat_rate[i],
        "co_purchase": _row_dot(s.seeds, s.s_bought, u, i),
        "co_view": _row_dot(s.view_seeds, s.s_viewed, u, i),
        "viewed": _gather(s.view_count, u, i),
        "viewed_days": np.where(view_d > 0, view_d - 1.0, np.nan),
        "affinity": share * s.item_cat_pop[i],
        "cat_share": share,
        "trending": s.trending[i],
        "popularity_90d": np.log1p(s.popularity_90d[i]),
        "popularity": s.popularity[i],
        "als": (np.einsum("ij,ij->i", s.als_users[u], s.als_items[i]) if s.als_users is not None
                else np.zeros(len(u))),
        "user_orders": s.user_orders[u],
        "user_days": s.user_days[u],
    }
    return pd.DataFrame(f, columns=FEATURES).astype(np.float32)


def _row_dot(seeds: sp.csr_matrix, sim: sp.csr_matrix, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """(seeds @ sim)[u, i] for the pairs only, one block of people at a time."""
    out = np.zeros(len(u))
    if len(u) == 0:
        return out
    uniq, inverse = np.unique(u, return_inverse=True)
    block = (seeds[uniq] @ sim).tocsr()
    return _gather(block, inverse, i)


# --------------------------------------------------------------------------- the blend
FALLBACK_WEIGHTS = {"own_orders": 1.0, "co_purchase": 2.0, "co_view": 1.0, "viewed": 0.3, "affinity": 1.0,
                    "trending": 0.2, "popularity_90d": 0.5, "als": 0.5}


class FallbackBlend:
    """Fixed weights for a shop whose history cannot teach a ranker (too few buyers, one outcome)."""

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        score = sum(w * np.log1p(np.nan_to_num(x[f].to_numpy(float)).clip(min=0)) for f, w in FALLBACK_WEIGHTS.items())
        p = 1.0 - np.exp(-score)
        return np.column_stack([1 - p, p])


@dataclass
class Blend:
    model: object
    kind: str  # "ranker" or "fallback"
    training_rows: int = 0
    training_buyers: int = 0
    validation: dict = field(default_factory=dict)  # held-out buyers at the training split
    label_window: tuple[str, str] | None = None
    # What the stage publishes: "tessera" (this blend) or a simple method (SIMPLE_METHODS) that
    # the blend did not beat on the held-out buyers; published_test = choose_published's test.
    published: str = "tessera"
    published_test: dict = field(default_factory=dict)


def bought_between(data: Interactions, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """(u, i) pairs bought in (start, end]."""
    part = data.lines[(data.lines["t"] > start) & (data.lines["t"] <= end)]
    return part[["u", "i"]].drop_duplicates()


def fit_blend(data: Interactions, as_of: pd.Timestamp, settings: RecommendationsSettings, k: int) -> Blend:
    """Fit the ranker on the time split ending at `as_of`: features as of as_of - horizon,
    labels = bought in (as_of - horizon, as_of]; 20% of the buyers held out to measure it."""
    horizon = pd.Timedelta(days=settings.horizon_days)
    split = as_of - horizon
    truth = bought_between(data, split, as_of)
    has_history = data.lines["t"].min() < split if len(data.lines) else False
    buyers = np.unique(truth["u"].to_numpy())
    if not has_history or len(buyers) < 50:
        return Blend(FallbackBlend(), "fallback")
    rng = np.random.default_rng(settings.seed)
    buyers = rng.permutation(buyers)[: settings.training_customers]
    n_val = max(len(buyers) // 5, 1)
    val_users, fit_users = np.sort(buyers[:n_val]), np.sort(buyers[n_val:])
    state = build_state(data, split, settings)
    u, i = candidates(state, fit_users)
    y = _labels(truth, u, i, data.n_items)
    if y.sum() < 20 or y.all():
        # Too few purchases among the candidates to learn from (a log of one-off buyers): the
        # fixed blend, measured like a ranker - on every buyer of the split, none was used to fit
        # it - so that it too is published only if it beats the simple methods.
        blend = Blend(FallbackBlend(), "fallback", label_window=(str(split), str(as_of)))
        val_users = np.sort(buyers)
    else:
        blend = _fit_ranker(state, fit_users, u, i, y, rng, settings)
        blend.label_window = (str(split), str(as_of))
    # Held-out buyers: the blend against the two simplest baselines on the same people.
    lists = recommend_lists(state, blend, val_users, settings, k, with_reasons=False)
    truth_val = truth[truth["u"].isin(val_users)]
    # The simple methods' lists are measured as they would be published (same exclusion and
    # diversity rules), so the comparison is between the lists a customer could actually get.
    method_lists = {"tessera": lists, **{m: simple_lists(state, m, val_users, settings, k, with_reasons=False)
                                         for m in SIMPLE_METHODS}}
    blend.validation = {"buyers": int(len(val_users)), "k": k,
                        **{m: ranking_metrics(x, truth_val, k) for m, x in method_lists.items()}}
    outcomes = {m: person_outcomes(x, truth_val, k) for m, x in method_lists.items()}
    blend.published, blend.published_test = choose_published(blend.validation, outcomes, settings.blend_confidence,
                                                              settings.seed)
    return blend


def _fit_ranker(state: State, fit_users: np.ndarray, u: np.ndarray, i: np.ndarray,
                y: np.ndarray, rng, settings: RecommendationsSettings) -> Blend:
    # Negatives sampled per person: ranking by P(buy) survives uniform negative sampling, and it
    # keeps the fit's cost bounded by training_customers, not by the catalog.
    keep = y | (_rank_in_group(u, rng.random(len(u))) < NEGATIVES_PER_PERSON)
    x = features(state, u[keep], i[keep])
    # A column with no value at all (no product views in a shop without web data) breaks
    # scikit-learn's binning; constant, it is simply never split on, so scoring is unchanged.
    x = x.fillna({c: 0.0 for c in x.columns if x[c].isna().all()})
    model = HistGradientBoostingClassifier(
        learning_rate=0.1, max_iter=200, max_leaf_nodes=31, min_samples_leaf=50, l2_regularization=1.0,
        early_stopping=True, validation_fraction=0.1, n_iter_no_change=15, random_state=settings.seed)
    model.fit(x, y[keep])
    return Blend(model, "ranker", training_rows=int(keep.sum()), training_buyers=len(fit_users))


BOOTSTRAP_DRAWS = 2000


def paired_bootstrap(difference: np.ndarray, confidence: float, seed: int,
                     draws: int = BOOTSTRAP_DRAWS, low_confidence: float | None = None) -> tuple[float, float, float]:
    """Mean of per-person differences and its two one-sided bounds at `confidence` (the
    (1 - confidence) and confidence quantiles of the mean over people resampled with
    replacement): both methods scored on the same people, so who the people are cancels out.
    `low_confidence`: the lower bound's own confidence, when it differs."""
    d = np.asarray(difference, dtype=float)
    if len(d) == 0:
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = np.empty(draws)
    step = max(1, 2_000_000 // len(d))  # bounded memory at any number of buyers
    for start in range(0, draws, step):
        n = min(step, draws - start)
        means[start:start + n] = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    low, high = np.quantile(means, [1.0 - (low_confidence or confidence), confidence])
    return float(d.mean()), float(low), float(high)


def choose_published(validation: dict, outcomes: dict[str, pd.DataFrame], confidence: float,
                     seed: int = 7) -> tuple[str, dict]:
    """"tessera" when, on the held-out buyers, the blend is ahead of the best simple method (by
    HitRate@k, then Recall@k) in HitRate or Recall with the paired bootstrap's lower bound above
    0, and not behind in the other (its upper bound at `confidence` not below 0); otherwise that
    method. Being ahead is looked for in two metrics, so each lower bound is taken at
    1 - (1 - confidence) / 2 (Bonferroni): at `confidence` each, an equal blend would pass one of
    the two up to twice as often as `confidence` says. `outcomes` = person_outcomes per method on
    the same people. Returns the choice and the test (differences and bounds) for the record.
    Only data before the as_of is used."""
    metrics = ("hit_rate", "recall")

    def value(m):
        return tuple(validation[m].get(x, 0.0) for x in metrics)

    best = max(SIMPLE_METHODS, key=value)
    ahead_confidence = 1.0 - (1.0 - confidence) / len(metrics)
    test: dict = {"against": best, "confidence": confidence, "ahead_confidence": ahead_confidence,
                  "draws": BOOTSTRAP_DRAWS, "buyers": int(len(outcomes["tessera"]))}
    ahead, behind = False, False
    for metric, column in (("hit_rate", "hit"), ("recall", "recall")):
        diff = outcomes["tessera"][column] - outcomes[best][column].reindex(outcomes["tessera"].index)
        mean, low, high = paired_bootstrap(diff.to_numpy(), confidence, seed, low_confidence=ahead_confidence)
        test[metric] = {"difference": mean, "low": low, "high": high}
        ahead |= low > 0
        behind |= high < 0
    return ("tessera" if ahead and not behind else best), test


def simple_lists(s: State, method: str, rows: np.ndarray, settings: RecommendationsSettings, k: int,
                 with_reasons: bool = True) -> pd.DataFrame:
    """A simple method's top-k lists (u, rank, i, score[, reason]) under the published lists' rules:
    the exclusion window and the per-category cap. buy_again = own most-bought products (ties: most
    recent), then the 90-day best sellers fill the list; popularity = the best sellers alone.
    score = 1/rank (a simple method has no probability)."""
    cats = s.data.products["cat"].to_numpy()
    # Deep enough that the exclusion window and the category cap still leave k per person.
    cap = category_cap(s, settings, k)
    depth = min(s.data.n_items, k * (1 + k // cap) + OWN_CANDIDATES)
    out = []
    for start in range(0, len(rows), CHUNK):
        part = rows[start:start + CHUNK]
        frame = (buy_again_lists if method == "buy_again" else popularity_lists)(s, part, depth)
        u, i = frame["u"].to_numpy(np.int64), frame["i"].to_numpy(np.int64)
        own_n, own_d = _gather(s.own_count, u, i), _gather(s.own_days, u, i)
        keep = np.ones(len(u), dtype=bool)
        if settings.exclude_bought_within_days > 0:
            keep &= ~((own_d > 0) & (own_d - 1.0 <= settings.exclude_bought_within_days))
        u, i, own_n, own_d = u[keep], i[keep], own_n[keep], own_d[keep]
        order_in_list = np.arange(len(u), dtype=float)  # frame is in list order per person
        keep = _rank_in_group(u * (cats.max() + 1) + cats[i], -order_in_list) < cap
        u, i, own_n, own_d, order_in_list = u[keep], i[keep], own_n[keep], own_d[keep], order_in_list[keep]
        rank = _rank_in_group(u, -order_in_list)
        top = rank < k
        lists = pd.DataFrame({"u": u[top], "rank": rank[top] + 1, "i": i[top], "score": 1.0 / (rank[top] + 1)})
        if with_reasons:
            due = (own_n[top] >= 2) & ((own_d[top] - 1.0) / np.maximum(s.item_interval[i[top]], 1.0) >= 0.8)
            lists["reason"] = np.where(own_n[top] > 0, np.where(due, "replenishment", "buy_again"),
                                       "trending").astype(object)
        out.append(lists)
    if not out:
        return pd.DataFrame(columns=["u", "rank", "i", "score", "reason"])
    return pd.concat(out, ignore_index=True)


def _labels(truth: pd.DataFrame, u: np.ndarray, i: np.ndarray, n_items: int) -> np.ndarray:
    bought = set((truth["u"].to_numpy() * n_items + truth["i"].to_numpy()).tolist())
    keys = u * n_items + i
    return np.fromiter((k in bought for k in keys.tolist()), dtype=bool, count=len(keys))


def _rank_in_group(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """0-based rank of `value` (descending) within each run of equal `group` (any order)."""
    order = np.lexsort((-value, group))
    g = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    rank_sorted = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    out = np.empty(len(g), dtype=np.int64)
    out[order] = rank_sorted
    return out


def category_cap(s: State, settings: RecommendationsSettings, k: int) -> int:
    """Products of one category allowed in a list: max_per_category, raised so that the catalog's
    categories can still fill k slots (a till export has one category, which would cut every
    list to max_per_category products)."""
    n_categories = max(int(s.data.products["cat"].nunique()), 1)
    return max(settings.max_per_category, -(-k // n_categories))


def recommend_lists(s: State, blend: Blend, rows: np.ndarray, settings: RecommendationsSettings, k: int,
                    with_reasons: bool = True) -> pd.DataFrame:
    """Top-k lists (u, rank, i, score[, reason]) for people `rows`, in chunks of people."""
    out = []
    cats = s.data.products["cat"].to_numpy()
    for start in range(0, len(rows), CHUNK):
        u, i = candidates(s, rows[start:start + CHUNK])
        if len(u) == 0:
            continue
        x = features(s, u, i)
        score = blend.model.predict_proba(x)[:, 1]
        eligible = np.ones(len(u), dtype=bool)
        if settings.exclude_bought_within_days > 0:
            days = x["own_days"].to_numpy()
            eligible &= ~(days <= settings.exclude_bought_within_days)  # NaN (never bought) stays eligible
        u, i, score, x = u[eligible], i[eligible], score[eligible], x[eligible]
        # Diversity: greedy down the list, at most max_per_category of one category.
        order = np.lexsort((i, -score, u))
        u, i, score, x = u[order], i[order], score[order], x.iloc[order]
        per_cat = _rank_in_group(u * (cats.max() + 1) + cats[i], -np.arange(len(u), dtype=float))
        keep = per_cat < category_cap(s, settings, k)
        u, i, score, x = u[keep], i[keep], score[keep], x[keep]
        rank = _rank_in_group(u, -np.arange(len(u), dtype=float))
        top = rank < k
        frame = pd.DataFrame({"u": u[top], "rank": rank[top] + 1, "i": i[top], "score": score[top]})
        if with_reasons:
            frame["reason"] = explain(blend, x[top], frame["score"].to_numpy())
        out.append(frame)
    if not out:
        return pd.DataFrame(columns=["u", "rank", "i", "score", "reason"])
    return pd.concat(out, ignore_index=True)


def explain(blend: Blend, x: pd.DataFrame, score: np.ndarray) -> np.ndarray:
    """The personal signal whose removal lowers the score most; `trending` when none explains
    at least _REASON_MIN_SHARE of it. A rebuy that is due by its own interval is `replenishment`."""
    drops = np.zeros((len(x), len(_FAMILIES)))
    for j, absent in enumerate(_FAMILIES.values()):
        changed = x.copy()
        for f, v in absent.items():
            changed[f] = v
        drops[:, j] = score - blend.model.predict_proba(changed)[:, 1]
    names = np.array(list(_FAMILIES))
    best = drops.argmax(axis=1) if len(x) else np.zeros(0, dtype=int)
    reason = np.where(drops[np.arange(len(x)), best] >= _REASON_MIN_SHARE * np.maximum(score, 1e-9), names[best],
                      "trending")
    due = (x["own_orders"].to_numpy() >= 2) & (x["own_due"].to_numpy() >= 0.8)
    return np.where((reason == "buy_again") & due, "replenishment", reason).astype(object)


# --------------------------------------------------------------------------- the stage
@dataclass
class RecommendationsResult:
    recommendations: pd.DataFrame  # person_id, rank, sku, score, reason, as_of
    blend: Blend
    notes: list[str]

    def summary(self) -> dict:
        recs = self.recommendations
        return {"rows": int(len(recs)), "persons": int(recs["person_id"].nunique()) if len(recs) else 0,
                "blend": self.blend.kind, "published": self.blend.published,
                "published_test": self.blend.published_test,
                "training_buyers": self.blend.training_buyers,
                "reasons": {str(k): int(v) for k, v in recs["reason"].value_counts().sort_index().items()},
                "validation": self.blend.validation, "notes": self.notes}


def recommend_as_of(data: Interactions, as_of: pd.Timestamp, settings: RecommendationsSettings,
                    k: int | None = None, rows: np.ndarray | None = None) -> RecommendationsResult:
    """Fit the blend on the split ending at `as_of`, then recommend as of `as_of` (data after it unused)."""
    k = k or settings.list_length
    as_of = pd.Timestamp(as_of)
    blend = fit_blend(data, as_of, settings, k)
    state = build_state(data, as_of, settings)
    rows = np.arange(data.n_users) if rows is None else rows
    recs = published_lists(data, state, blend, rows, settings, k, as_of)
    return RecommendationsResult(recs, blend, state.notes)


def published_lists(data, state, blend, rows, settings, k: int, as_of) -> pd.DataFrame:
    """The published method's lists for ``rows`` as the recommendations table's rows (the
    blend's, or the simple method it fell back to)."""
    if blend.published == "tessera":
        lists = recommend_lists(state, blend, rows, settings, k)
    else:
        lists = simple_lists(state, blend.published, rows, settings, k)
    return pd.DataFrame({
        "person_id": data.persons[lists["u"].to_numpy(int)],
        "rank": lists["rank"].to_numpy(np.int64),
        "sku": data.products["sku"].to_numpy()[lists["i"].to_numpy(int)],
        "score": np.round(lists["score"].to_numpy(float), 6),
        "reason": lists["reason"].to_numpy(object),
        "as_of": pd.Timestamp(as_of),
    })


def run_recommendations(con, as_of, settings: RecommendationsSettings) -> RecommendationsResult:
    as_of = pd.Timestamp(as_of)
    if as_of.tzinfo is not None:
        as_of = as_of.tz_convert("UTC").tz_localize(None)
    view_from = as_of - pd.Timedelta(days=settings.horizon_days + settings.view_days)
    data = load_interactions(con, as_of, view_from)
    return recommend_as_of(data, as_of, settings)
