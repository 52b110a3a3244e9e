"""Scoring at scale (issue #19): the baselines' and fallbacks' top-k lists are built with whole
arrays (recommend_metrics._lists_from_scores) and must equal the plain per-person definition;
churn and cart intent share one definition of their saved-model settings."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from core.config import ConfigError, config_from_dict
from scoring.recommend_metrics import _lists_from_scores


def _per_person_lists(rows, scores, fill, k):
    """The definition: each person's best k scored products (ties: lower product id), then
    `fill` in order, skipping what the person already has."""
    out = []
    scores = scores.tocsr()
    for r, u in enumerate(rows):
        row = scores.getrow(r)
        ranked = sorted(zip(row.indices.tolist(), row.data.tolist()), key=lambda x: (-x[1], x[0]))[:k]
        chosen = [i for i, _ in ranked]
        chosen += [i for i in fill if i not in chosen][: k - len(chosen)]
        out += [(u, i, rank + 1) for rank, i in enumerate(chosen)]
    return pd.DataFrame(out, columns=["u", "i", "rank"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_lists_equal_the_per_person_definition(seed):
    rng = np.random.default_rng(seed)
    people, items, k = 300, 40, 10
    # Sparse and dense rows, ties (integer scores), people with nothing scored, and a fill list
    # that overlaps what people have.
    scores = sp.random(people, items, density=0.15, random_state=seed, format="csr")
    scores.data = np.ceil(scores.data * 4)
    scores = (sp.diags((np.arange(people) >= 20).astype(float)) @ scores).tocsr()  # 20 people: nothing
    scores.eliminate_zeros()
    rows = rng.permutation(1000)[:people]
    fill = rng.permutation(items)
    got = _lists_from_scores(rows, scores, fill, k)
    want = _per_person_lists(rows, scores, fill, k)
    pd.testing.assert_frame_equal(got.sort_values(["u", "rank"]).reset_index(drop=True)[["u", "i", "rank"]],
                                  want.sort_values(["u", "rank"]).reset_index(drop=True), check_dtype=False)
    # A fill list shorter than k: lists are as long as what exists.
    short = _lists_from_scores(rows[:5], sp.csr_matrix((5, items)), fill[:3], k)
    assert short.groupby("u").size().tolist() == [3] * 5


def test_churn_and_cart_intent_share_the_saved_model_settings(tmp_path):
    config = config_from_dict({"churn": {"refit_every_days": 3, "max_training_rows": 5000},
                               "cart_intent": {"switch_margin": 0.02}}, tmp_path)
    assert config.churn.refit_every_days == 3 and config.churn.max_training_rows == 5000
    assert config.cart_intent.switch_margin == 0.02 and config.cart_intent.refit_every_days == 7
    for section in ("churn", "cart_intent"):
        with pytest.raises(ConfigError, match=f"{section}.refit_every_days"):
            config_from_dict({section: {"refit_every_days": -1}}, tmp_path)
        with pytest.raises(ConfigError, match=f"{section}.max_training_rows"):
            config_from_dict({section: {"max_training_rows": 10}}, tmp_path)
