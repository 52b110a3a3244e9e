# Tessera CDP. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_CUSTOMERS ?= 5000

# Keep tools quiet and local: no telemetry, Dagster state inside the project.
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export DAGSTER_DISABLE_TELEMETRY := 1

.PHONY: venv demo test test-spark lint bench dev docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/cdp init $(DEMO_DIR)
	$(BIN)/cdp generate --config $(DEMO_DIR)/cdp.yaml --customers $(DEMO_CUSTOMERS) --seed 7
	$(BIN)/cdp run --config $(DEMO_DIR)/cdp.yaml

# Test modules run in parallel, one module per worker at a time (--dist loadfile): each
# module builds its own project, so they share nothing but the CPU. Modules are handed out in
# the order tests/conftest.py collects them (longest first), not xdist's most-tests-first.
TEST_WORKERS ?= auto
# Everything but engine: spark (a JVM and a whole dbt build on local Spark take minutes of their
# own): `make test-spark` runs those, and CI (.ci/run) runs both.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not spark"

# engine: spark's tests alone (tests/test_spark.py, marked `spark`: one local[2] SparkSession,
# Java 17).
test-spark: $(STAMP)
	$(BIN)/python -m pytest -q -m spark tests/test_spark.py

# The layers (core < stages < privacy < Dagster wiring < CLI, no cycles) and the lint rules,
# both configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m bench.run_all $(BENCH_ARGS)

dev: $(STAMP)
	@test -f $(DEMO_DIR)/cdp.yaml || $(MAKE) demo
	CDP_CONFIG=$(abspath $(DEMO_DIR))/cdp.yaml DAGSTER_HOME=$(abspath $(DEMO_DIR))/.dagster $(BIN)/dagster dev -w workspace.yaml

# The dbt docs site of the demo warehouse (a single static page, opens without a server), then
# a check that every published table and column is described.
docs: $(STAMP)
	@test -f $(DEMO_DIR)/cdp.yaml || $(MAKE) demo
	TESSERA_WAREHOUSE=$(abspath $(DEMO_DIR))/warehouse/tessera.duckdb $(BIN)/dbt docs generate --static \
		--project-dir dbt --profiles-dir dbt --target-path $(abspath $(DEMO_DIR))/dbt_docs
	$(BIN)/python -m marketing.table_docs --manifest $(DEMO_DIR)/dbt_docs/manifest.json \
		--catalog $(DEMO_DIR)/dbt_docs/catalog.json
	@echo "dbt docs: $(abspath $(DEMO_DIR))/dbt_docs/static_index.html"

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
