"""Where the dbt project is: the one place that resolves it.

The project is the repository's top-level ``dbt/`` folder, shipped in the distribution as the
package data of ``tessera_dbt`` (pyproject.toml maps that name onto ``dbt/``), so it is found
the same way in a checkout, an editable install and a wheel. ``tessera_dbt`` has no
``__init__.py`` (one in ``dbt/`` would shadow dbt-core's ``dbt``), which makes it a namespace
package: ``importlib.resources`` then gives a multiplexed path, and the project folder is
read off a file inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from functools import cache
from importlib import resources, util
from pathlib import Path

DBT_PACKAGE = "tessera_dbt"
# dbt reads the warehouse file from this dbt var (profiles.yml); Tessera passes it with
# --vars on every invocation. By hand, the TESSERA_WAREHOUSE environment variable also works.
WAREHOUSE_VAR = "tessera_warehouse"


@cache
def dbt_project_dir() -> Path:
    """The dbt project folder (holds dbt_project.yml and profiles.yml)."""
    try:
        marker = resources.files(DBT_PACKAGE).joinpath("dbt_project.yml")
    except NotADirectoryError:
        # Python 3.11 with setuptools' editable install: the namespace path holds the editable
        # finder's placeholder entry, which importlib.resources rejects. Same answer, read off
        # the package's search locations.
        spec = util.find_spec(DBT_PACKAGE)
        locations = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
        marker = next((p / "dbt_project.yml" for p in locations if (p / "dbt_project.yml").is_file()),
                      Path(DBT_PACKAGE, "dbt_project.yml"))
    if not isinstance(marker, Path) or not marker.is_file():
        # A zipped install: dbt needs the project on disk.
        raise FileNotFoundError(f"the dbt project ({DBT_PACKAGE}/dbt_project.yml) is not on the file system: {marker}")
    return marker.parent


# dbt from this interpreter's environment: `cdp` is often run as .venv/bin/cdp, without the
# venv's bin/ on PATH.
DBT_EXECUTABLE = str(Path(sys.executable).parent / "dbt") if (Path(sys.executable).parent / "dbt").exists() else "dbt"


def cache_target_dir() -> Path:
    """Where the installed dbt project is parsed when no Tessera project is at hand (a code
    location loaded without $CDP_CONFIG, `cdp run`, the marketer commands): a per-user cache
    folder per installed dbt project, so two installs never share a manifest. The manifest
    depends only on the dbt code, so every project of one install can read it."""
    key = hashlib.sha1(str(dbt_project_dir()).encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for root in (base, Path(tempfile.gettempdir())):
        folder = root / "tessera" / f"dbt_target-{key}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        except OSError:
            continue
    raise OSError(f"no writable folder for dbt's parse of {dbt_project_dir()}")


def manifest_is_stale(manifest: Path) -> bool:
    """Missing, or older than any file of the dbt project."""
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    project = dbt_project_dir()
    sources = [project / "dbt_project.yml", project / "profiles.yml"]
    for folder in ("models", "macros", "tests", "snapshots", "seeds"):
        sources.extend(p for p in (project / folder).rglob("*") if p.is_file())
    return any(p.stat().st_mtime > built for p in sources if p.exists())


def project_digest() -> str:
    """A digest of the dbt project's model, macro and project files: an incremental table built by
    other code than this must be rebuilt (dagster_project/defs/dbt_marts.py passes --full-refresh)."""
    project = dbt_project_dir()
    h = hashlib.sha256()
    files = [project / "dbt_project.yml"]
    for folder in ("models", "macros"):
        files.extend(sorted(p for p in (project / folder).rglob("*") if p.is_file()))
    for path in files:
        if path.exists():
            h.update(str(path.relative_to(project)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def built_with_file(state_dir: Path, op_name: str) -> Path:
    """Where a selection's last good build records the dbt project digest it was built with."""
    return Path(state_dir) / f"built_with-{op_name}.txt"


def needs_full_refresh(state_dir: Path, op_name: str) -> bool:
    """Incremental models (event staging) keep rows staged by earlier code: when the dbt project
    changed since this selection's last good build, or no build is recorded, rebuild them whole.
    (`segment_membership_history` is `full_refresh: false`: history is never wiped.)"""
    built = built_with_file(state_dir, op_name)
    return not built.exists() or built.read_text().strip() != project_digest()


def tests_passed_file(state_dir: Path, op_name: str) -> Path:
    """Where a selection's last build records, once every one of its data tests passed, the dbt
    project digest it was built with; removed when a build starts (dagster_project/defs/dbt_marts.py)."""
    return Path(state_dir) / f"tests_passed-{op_name}.txt"


def may_scope_tests(state_dir: Path, op_name: str) -> bool:
    """Whether a build of the selection may test only the rows it rewrote (dbt/macros/test_scope.sql):
    its last build passed every data test, with the dbt project of now. Every row it did not
    rewrite was then in a table that passed."""
    passed = tests_passed_file(state_dir, op_name)
    return passed.exists() and passed.read_text().strip() == project_digest() and not needs_full_refresh(state_dir, op_name)


def installed_manifest() -> Path:
    """The installed dbt project's manifest in the cache folder, parsed first when it is missing
    or stale (`dbt parse` never opens the placeholder warehouse it is given)."""
    target = cache_target_dir()
    manifest = target / "manifest.json"
    if manifest_is_stale(manifest):
        scratch = target / f".parse-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        project = dbt_project_dir()
        try:
            subprocess.run(
                [DBT_EXECUTABLE, "parse", "--quiet", "--project-dir", str(project), "--profiles-dir", str(project),
                 "--target-path", str(scratch), "--vars", json.dumps({WAREHOUSE_VAR: str(target / "parse_only.duckdb")})],
                check=True, capture_output=True, text=True,
                env={**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
            )
            os.replace(scratch / "manifest.json", manifest)  # atomic: another process may read it
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"`dbt parse` of {project} failed: {(e.stdout or '')[-2000:]}") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return manifest
