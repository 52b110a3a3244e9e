"""Reverse-ETL: push audiences and traits from the published snapshot to email tools.

Entry points: ``run_sync``, ``run_all``, ``erase_persons`` (the privacy stage's way in).
"""

from activation.sync import erase_persons, run_all, run_sync

__all__ = ["erase_persons", "run_all", "run_sync"]
