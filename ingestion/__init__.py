"""Landing files -> raw.* in DuckDB: contracts, synthetic data generator, loaders, quarantine."""
