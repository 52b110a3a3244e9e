"""Identity resolution: one stable person_id per real person.

raw.* -> ``records`` (normalised identifiers) -> ``rules`` (deterministic edges) +
``splink_model`` (probabilistic pairs) -> ``clustering`` (constrained, every edge's decision
logged) -> ``stable_ids`` -> ``golden``; ``evaluate`` scores it against ground truth and
``plan`` shows what a config change would do. ``pipeline.resolve`` runs it all.

CLI entry points (the click commands live in cdp/cli.py):
``identity.plan.plan_from_files(config_path, proposed_path)`` for ``cdp identity plan`` and
``identity.evaluate.evaluate_config(config)`` for ``cdp evaluate identity --json``;
both return JSON-ready dicts.
"""
