"""The product catalog and how people pick products from it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import names
from .textops import S, padded, pick, strings

CATEGORY_NAMES = tuple(c[0] for c in names.CATEGORIES)


def product_count(customers: int) -> int:
    """~300 products for small runs, growing to ~2,000 at 1M customers."""
    return int(np.clip(300 * (max(customers, 1) / 20_000) ** 0.485, 300, 2000))


@dataclass(frozen=True)
class Catalog:
    sku: np.ndarray  # StringDType
    name: np.ndarray
    category: np.ndarray  # index into CATEGORY_NAMES; products are sorted by category
    price_pence: np.ndarray
    margin: np.ndarray
    popularity_cum: np.ndarray  # cumulative popularity, each category summing to 1 in turn
    category_start: np.ndarray  # popularity_cum offset where each category starts

    def __len__(self) -> int:
        return len(self.sku)

    def sample(self, rng: np.random.Generator, category: np.ndarray) -> np.ndarray:
        """One product per row from the given categories, popular products more often."""
        target = self.category_start[category] + rng.random(len(category)) * 0.999999
        return np.searchsorted(self.popularity_cum, target, side="right").clip(0, len(self) - 1)


def build_catalog(rng: np.random.Generator, customers: int) -> Catalog:
    n = product_count(customers)
    n_categories = len(names.CATEGORIES)
    category = np.sort(rng.integers(0, n_categories, n))
    base_price = np.array([c[2] for c in names.CATEGORIES])[category]
    price_pence = (np.round(base_price * rng.lognormal(0, 0.45, n)) * 100 - 1).clip(299).astype(np.int64)
    margin = np.round(rng.uniform(0.15, 0.65, n), 2)

    nouns = strings([noun for _, nouns, _ in names.CATEGORIES for noun in nouns])
    noun_offset = np.cumsum([0] + [len(c[1]) for c in names.CATEGORIES])[:-1]
    noun_count = np.array([len(c[1]) for c in names.CATEGORIES])
    noun = nouns[noun_offset[category] + rng.integers(0, 1 << 30, n) % noun_count[category]]
    adjective = pick(names.PRODUCT_ADJECTIVES, rng.integers(0, len(names.PRODUCT_ADJECTIVES), n))
    colour = pick(names.PRODUCT_COLOURS, rng.integers(0, len(names.PRODUCT_COLOURS), n))
    name = S.add(S.add(S.add(S.add(adjective, " "), noun), " - "), colour)
    sku = padded(rng.permutation(np.arange(10_000, 10_000 + n * 7, 7)), 6, "SKU-")

    # Zipf-like popularity within each category: a few best sellers, a long tail.
    popularity = 1.0 / (rng.permutation(n) % 97 + 1.0) ** 0.9
    totals = np.bincount(category, weights=popularity, minlength=n_categories)
    share = popularity / totals[category]
    popularity_cum = np.cumsum(share)
    category_start = np.concatenate([[0.0], np.cumsum(np.bincount(category, weights=share, minlength=n_categories))])[:-1]
    # Empty categories (tiny catalogs only) would sample a neighbour: acceptable.
    return Catalog(sku, name, category, price_pence, margin, popularity_cum, category_start)
