"""The core layer: what every stage shares. It imports no stage (import-linter enforces it)."""
