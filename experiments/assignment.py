"""Stable assignment: hash(person_id | experiment) -> an arm, by the arms' cumulative shares.

The same person and experiment always land in the same arm, whatever else changes in the config
order of people or runs. It is the hash next-best-offer has always used for its holdout (SHA-256
of 'person_id|experiment', first 60 bits as a uniform number in [0, 1)), so an experiment named
like offers.experiment with the holdout arm listed first holds out exactly the same people."""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from itertools import accumulate

import numpy as np

from core.settings.experiments import Experiment


def uniform(person_id, experiment: str) -> float:
    digest = hashlib.sha256(f"{person_id}|{experiment}".encode()).hexdigest()
    return int(digest[:15], 16) / float(16 ** 15)


def assign(person_ids, experiment: Experiment) -> np.ndarray:
    """The arm of each person (object array of arm names)."""
    edges = list(accumulate(a.share for a in experiment.arms))
    edges[-1] = 1.0 + 1e-12  # shares add up to 1 within rounding: the last arm takes the rest
    names = [a.name for a in experiment.arms]
    return np.array([names[bisect_right(edges, uniform(p, experiment.name))] for p in person_ids], dtype=object)
