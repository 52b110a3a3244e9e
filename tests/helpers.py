"""Helpers shared by test modules (a plain module: test modules never import each other)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from core.config import Config, config_from_dict
from core.dbt_project import dbt_project_dir

DBT_DIR = dbt_project_dir()
DBT = str(Path(sys.executable).parent / "dbt")


def make_config(root: Path, sources: list[dict], **extra) -> Config:
    (root / "landing").mkdir(parents=True, exist_ok=True)
    return config_from_dict({"sources": sources, **extra}, root)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def web_line(i: int, **overrides) -> str:
    """One Segment-shaped web event as a JSON line; `None` overrides drop the field."""
    rec = {
        "messageId": f"m{i}",
        "type": "track",
        "event": "product_viewed",
        "anonymousId": f"a{i % 7}",
        "properties": {"product_id": f"S{i % 5}", "price": 9.5},
        "context": {"page": {"url": f"https://shop.example/p/{i}"}},
        "timestamp": f"2025-03-01T10:{i % 60:02d}:00.000Z",
    }
    rec.update(overrides)
    return json.dumps({k: v for k, v in rec.items() if v is not None})


def build_identity_from_ground_truth(con, ground_truth: Path) -> None:
    """identity.graph / golden / changes in the agreed shape, taken from the generator's ground
    truth. FOR TESTS OF THE MARTS ONLY - a perfect identity, never the project's identity stage.

    Records follow identity's grain: receipts are records only when they carry an email or
    phone (receipts with only a loyalty id belong to the member's person); records the ground
    truth marks unidentifiable are left out."""
    rp, people = ground_truth / "record_person.csv", ground_truth / "people.csv"
    con.execute("CREATE SCHEMA IF NOT EXISTS identity")
    con.execute(f"""
        CREATE OR REPLACE TABLE identity.graph AS
        SELECT source || ':' || entity || ':' || record_id AS record_key, source, entity,
               record_id AS source_record_id, person_id,
               'ground_truth' AS match_method, 1.0 AS match_probability
        FROM read_csv('{rp}', all_varchar = true) AS gt
        WHERE identifiable = 'true'
          AND (entity <> 'transactions' OR EXISTS (
                SELECT 1 FROM raw.pos_transactions t
                WHERE t._source = gt.source AND t.transaction_id = gt.record_id
                  AND (t.email IS NOT NULL OR t.phone IS NOT NULL)))
        -- The generator's random loyalty ids can collide at scale: one person per record.
        QUALIFY row_number() OVER (PARTITION BY source, entity, record_id ORDER BY person_id) = 1""")
    con.execute(f"""
        CREATE OR REPLACE TABLE identity.golden AS
        SELECT person_id,
               first_name, 'ground_truth' AS first_name_source,
               last_name, 'ground_truth' AS last_name_source,
               primary_email AS email, 'ground_truth' AS email_source,
               mobile AS phone, 'ground_truth' AS phone_source,
               street AS address_line1, 'ground_truth' AS address_line1_source,
               city, 'ground_truth' AS city_source,
               postcode, 'ground_truth' AS postcode_source,
               CAST(date_of_birth AS DATE) AS date_of_birth, 'ground_truth' AS date_of_birth_source
        FROM read_csv('{people}', all_varchar = true)
        WHERE person_id IN (SELECT person_id FROM identity.graph)""")
    con.execute("""
        CREATE OR REPLACE TABLE identity.changes AS
        SELECT 'fixture' AS run_id, person_id, 'new' AS change, CAST(NULL AS VARCHAR) AS other_person_id,
               TIMESTAMPTZ '2024-01-01 00:00:00+00' AS changed_at
        FROM identity.golden""")


def dbt(args: list[str], warehouse: Path, target: Path, project_dir: Path = DBT_DIR) -> subprocess.CompletedProcess:
    """Plain `dbt` on a project's warehouse, its target/ and logs kept in `target`."""
    env = {**os.environ, "TESSERA_WAREHOUSE": str(warehouse), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    done = subprocess.run(
        [DBT, *args, "--project-dir", str(project_dir), "--profiles-dir", str(project_dir),
         "--target-path", str(target), "--log-path", str(target)],
        env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return done
