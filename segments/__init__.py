"""Declarative segments: marketers' rule-based segments from one YAML file.

``model`` parses and validates the file, ``compiler`` turns each segment into a parameterised
SQL query, ``evaluator`` runs them against the warehouse and writes ``segments.*``.
"""
