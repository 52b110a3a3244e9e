"""Where the dbt project is: the one place that resolves it.

The project is the repository's top-level ``dbt/`` folder, shipped in the distribution as the
package data of ``tessera_dbt`` (pyproject.toml maps that name onto ``dbt/``), so it is found
the same way in a checkout, an editable install and a wheel. ``tessera_dbt`` has no
``__init__.py`` (one in ``dbt/`` would shadow dbt-core's ``dbt``), which makes it a namespace
package: ``importlib.resources`` then gives a multiplexed path, and the project folder is
read off a file inside it.
"""

from __future__ import annotations

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
