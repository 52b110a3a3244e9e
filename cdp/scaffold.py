"""``cdp init DIR``: a working folder with a commented ``cdp.yaml`` and its folders."""

from __future__ import annotations

from pathlib import Path

from core.config import load_config
from core.salt import salt_path, write_salt_file
from dagster_project.instance import ensure_dagster_home

# The example segments file `cdp init` writes beside cdp.yaml.
EXAMPLE_SEGMENTS = Path(__file__).resolve().parents[1] / "segments" / "example.yaml"

DEFAULT_CONFIG = """\
# Tessera CDP configuration: the one file you edit.
# Relative paths resolve against the folder holding this file.
# Validate it any time with `cdp status` (errors name the key and say what to fix).
version: 1
project: {project}

# Reference date of a run (YYYY-MM-DD). Empty = now. Set a past date to backtest:
# every stage then sees only data up to that day.
as_of:

# What holds and computes the warehouse: duckdb (one file on this machine; the default) or
# spark (Parquet tables in a Spark catalog, for more data than one machine holds; README
# "Running on Spark"). The spark section is read only with engine: spark.
engine: duckdb
# duckdb: {{dbt_memory_limit_gb: 5}}  # DuckDB memory a dbt build may hold before it spills to disk
spark:
  master: local[2]            # or spark://host:7077, yarn, k8s://https://host:443
  # connect: sc://host:15002  # a Spark Connect server instead of a master URL
  warehouse: warehouse/spark  # or s3a://bucket/tessera, hdfs://...
  catalog: spark_catalog

paths:
  landing: landing            # where source systems drop files
  warehouse: warehouse/tessera.duckdb
  published: published        # published snapshots (what marketers and syncs read)
  dagster_home: .dagster      # Dagster run history, schedules and sensor state
  reports: reports

ingestion:
  # A file whose share of malformed rows is above this is rejected whole (nothing applied).
  max_bad_row_rate: 0.05

# Each source is one system instance. A kind (web, email, pos, support, catalog) may have
# several instances, e.g. two store systems. Each entity gives a glob under paths.landing;
# `columns` maps landed column names onto the contract, `formats` gives strptime formats
# for dates/timestamps that are not ISO 8601. Remove the sources you do not have.
sources:
  - name: web
    kind: web
    entities:
      events: {{path: "web/events_*.jsonl"}}

  - name: email
    kind: email
    entities:
      subscribers: {{path: "email/subscribers*.csv"}}
      events: {{path: "email/events_*.csv"}}

  - name: pos
    kind: pos
    entities:
      transactions: {{path: "pos/transactions_*.csv"}}
      line_items: {{path: "pos/line_items_*.csv"}}
      loyalty_members: {{path: "pos/loyalty_members*.csv"}}

  # A second store system whose loyalty export uses its own headers and date formats.
  - name: pos_outlet
    kind: pos
    entities:
      loyalty_members:
        path: "pos_outlet/members*.csv"
        columns:
          MemberNo: loyalty_id
          FirstName: first_name
          Surname: last_name
          EmailAddress: email
          Mobile: phone
          Street: address_line1
          Town: city
          PostCode: postcode
          DOB: date_of_birth
          JoinedOn: enrolled_at
        formats:
          date_of_birth: "%d/%m/%Y"
          enrolled_at: "%d/%m/%Y %H:%M"
        # A column from another entity's file of this source, matched on a key (lookups), and rows
        # left out, counted in raw.loads.rows_skipped (skip_when); see README "Source contracts":
        # lookups: {{person_key: {{entity: <another entity of this source>, key: MemberNo, column: PersonKey}}}}
        # skip_when: "Status = 'closed'"

  - name: support
    kind: support
    entities:
      tickets: {{path: "support/tickets_*.jsonl"}}

  - name: catalog
    kind: catalog
    entities:
      products: {{path: "catalog/products*.csv"}}

# Identity resolution (README "Identity resolution"): rules per identifier, Splink, survivorship;
# manual merges and splits go to overrides_file (identity_overrides.csv), written by `cdp identity merge|split`.
# The Splink model is saved and reused until splink.retrain_every_days (7; 0 = retrain every run),
# or records grow by splink.retrain_if_records_grow_by (0.25), or its match rate moves by
# splink.retrain_if_match_rate_moves_by (0.25), or the Splink settings change. memory_limit_gb (4)
# bounds the stage's DuckDB memory (Splink's and the warehouse's); past it DuckDB spills to disk.
identity: {{}}
# Rule-based segments marketers define (README "Segments"): one YAML file (`cdp segments validate` checks it).
segments:
  file: segments.yaml
# Models (see README "Churn, cart intent, next-best-offer"): churn.horizon_days (90), risk
# cut points churn.high_risk_at / medium_risk_at; cart_intent.likely_at / unlikely_below;
# refit schedule (both models): refit_every_days (7; 0 = every run), refit_if_auc_drops_by (0.03),
# switch_margin (0.01: the saved algorithm stays unless a challenger beats it by this);
# offers: experiment, holdout_share (0.1), max_emails_per_7_days (3) and the offer catalog.
churn: {{}}
cart_intent: {{}}
offers: {{}}
# Recommendations (scoring/recommend.py; `cdp evaluate recommendations` measures them):
# list_length (10), exclude_bought_within_days (0 = rebuys allowed), max_per_category (4),
# horizon_days (90: the blend learns what predicts purchases in this many days),
# blend_confidence (0.95: the blend is published only if a paired test on held-out buyers says
# it beats the best simple method, buy-again or popularity; else that method is published).
recommendations: {{}}
# Reverse-ETL syncs (README "Activation"), e.g.
#   - name: vip_to_klaviyo
#     source: {{segment: vip}}
#     destination: {{type: klaviyo, api_key_env: KLAVIYO_API_KEY, list_id: YOUR_LIST}}
#     fields: {{first_name: first_name, last_name: last_name}}
#     mode: mirror
#     consent: {{channel: email_marketing}}
#     frequency_cap: {{max: 1, days: 1}}   # optional; counts cdp serve's live nudges too
syncs: []
# Expectations: the gate before publishing (README: "Expectations: the gate and publishing";
# this section was called `quality:` before 0.1). Defaults, all optional:
#   keep_snapshots: 5
#   full_gate_every_days: 7   # between full gates a whole run's gate is the daily one (README)
#   drift: {{max_person_count_change: 0.1, block_emptied_segment: true, max_merge_rate_change: 0.15,
#           max_churn_mean_change: 0.2, max_churn_psi: 0.25}}
#   identity: {{max_cluster_growth: 2.0, max_emails_per_person: 10, max_persons_over_email_limit: 0}}
#   sources: {{max_row_count_drop: 0.4, max_fill_rate_drop: 0.25, max_top_value_share_rise: 0.2,
#             baseline_loads: 7, min_rows: 200}}
expectations: {{}}

# Real time (`cdp serve`, README "Real time"): a Segment-compatible collector, live profiles and
# decisions. Keys live in environment variables named here (write keys for SDKs, read keys for
# apps). Defaults: host 127.0.0.1, port 8787, source web, spool .serve, rotate_seconds 60, e.g.
#   write_keys_env: [TESSERA_WRITE_KEY]
#   read_keys_env: [TESSERA_READ_KEY]
#   cart_abandonment: {{window_seconds: 1800, intent_groups: [on_the_fence], consent_channel: email_marketing,
#                       destination: {{type: webhook, url: "https://example.com/hook", secret_env: HOOK_SECRET}}}}
#     (or destination: {{type: klaviyo, api_key_env: KLAVIYO_KEY, metric: Cart Abandoned, identifier: person_id}})
serve: {{}}

# Erasure (`cdp forget`) keeps salted hashes of an erased person's identifiers so that files
# landed later do not bring them back. The salt is a secret: `cdp init` writes a random one to
# salt_file (owner-only); $CDP_PRIVACY_SALT overrides it. Keep it for the life of the project.
privacy:
  salt_file: .secrets/privacy_salt
  folder: privacy             # erasure requests and reports (hashes only)
"""

def init_project(directory: Path, force: bool = False, project: str | None = None) -> Path:
    directory = directory.resolve()
    cfg_path = directory / "cdp.yaml"
    if cfg_path.exists() and not force:
        raise FileExistsError(f"{cfg_path} already exists; pass --force to overwrite it")
    directory.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(DEFAULT_CONFIG.format(project=project or directory.name or "tessera"))
    config = load_config(cfg_path)  # the template must always validate
    if not config.segments_file.exists():
        config.segments_file.write_text(EXAMPLE_SEGMENTS.read_text(encoding="utf-8"), encoding="utf-8")
    for d in (config.landing_dir, config.warehouse_path.parent, config.published_dir, config.reports_dir):
        d.mkdir(parents=True, exist_ok=True)
    ensure_dagster_home(config.dagster_home, config.engine)
    write_salt_file(salt_path(config))
    return cfg_path
