"""Reverse-ETL: push audiences and traits from the published snapshot to email tools.

Entry points (imported lazily so that ``core.config`` can import :mod:`core.settings.activation`):
``run_sync``, ``run_all``, ``erase_persons``.
"""


def run_sync(config, name, dry_run=False, progress=None):
    from activation.sync import run_sync as _run

    return _run(config, name, dry_run=dry_run, progress=progress)


def run_all(config, dry_run=False, progress=None):
    from activation.sync import run_all as _run

    return _run(config, dry_run=dry_run, progress=progress)


def erase_persons(config, person_ids) -> dict:
    """Delete persons from every sync destination they were delivered to and purge them from
    the sync state and sync log (called by the privacy stage)."""
    from activation.sync import erase_persons as _erase

    return _erase(config, person_ids)
