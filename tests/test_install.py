"""Installed for real: the wheel, not the source tree.

Builds the wheel from a copy of the sources, installs it without -e into a fresh virtualenv and,
from a folder outside the repository, loads the Dagster definitions, runs `cdp --help` and runs
a small project end to end. To keep it quick the venv reuses this venv's installed dependencies
through a .pth line (the project itself is installed only from the wheel: a .pth line adds a
folder to sys.path without running that folder's .pth files, so this venv's editable finder is
not installed there).
"""

import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the wheel must never carry: build and run leftovers of a checkout.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                     "target", "logs", "dbt_packages", "demo", "bench_out", ".dagster", "*.duckdb*")


def test_every_package_of_the_source_tree_is_listed_for_the_wheel():
    """pyproject.toml lists the packages (the dbt project is mapped in under its own name, which
    `find` cannot do): a new package folder must be added there."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tops = {p.split(".")[0] for p in listed} - {"tessera_dbt"}
    on_disk = {
        ".".join(d.relative_to(REPO).parts)
        for top in tops for d in [REPO / top, *(REPO / top).rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(f.is_file() for f in d.iterdir())
    }
    assert on_disk == listed - {"tessera_dbt"}
    assert not (REPO / "dbt" / "__init__.py").exists()  # it would shadow dbt-core's `dbt`


def _run(args, cwd, env, timeout=1200) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a wheel build and a whole run from two cold dbt parses: ~6 min alone on 2 cores
def test_wheel_installed_without_editable_loads_definitions_and_runs_a_project(tmp_path):
    # 1. The wheel, built from a copy so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCES)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
         cwd=tmp_path, env=os.environ.copy())
    (wheel,) = (tmp_path / "dist").glob("tessera_cdp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tessera_dbt/dbt_project.yml" in names and "tessera_dbt/profiles.yml" in names
    assert any(n.startswith("tessera_dbt/models/marts/") and n.endswith(".sql") for n in names)
    assert "tessera_dbt/__init__.py" not in names and not any(n.startswith("dbt/") for n in names)
    assert "expectations/gx/great_expectations.yml" in names and "segments/example.yaml" in names

    # 2. A fresh venv with the wheel (not -e), this venv's dependencies through a .pth line.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=os.environ.copy())
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        cwd=tmp_path, env=os.environ.copy()).stdout.strip())
    (purelib / "_deps_from_test_venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], cwd=tmp_path, env=os.environ.copy())
    # dbt's own console script, as installing dbt-core into that venv would write it.
    dbt = venv / "bin" / "dbt"
    dbt.write_text(f"#!{python}\nimport sys\nfrom dbt.cli.main import cli\nsys.exit(cli())\n")
    dbt.chmod(0o755)

    # Outside the repository, nothing pointing back at it.
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CDP_CONFIG", "DAGSTER_HOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin", XDG_CACHE_HOME=str(tmp_path / "cache"),
               DAGSTER_DISABLE_TELEMETRY="1", DBT_SEND_ANONYMOUS_USAGE_STATS="false", GX_ANALYTICS_ENABLED="false")

    # 3. The Dagster definitions load from the installed package, dbt project included.
    probe = _run([str(python), "-c", (
        "import json, dagster_project, dbt\n"
        "from core.dbt_project import dbt_project_dir\n"
        "from dagster_project.definitions import defs\n"
        "repo = defs.get_repository_def()\n"
        "print(json.dumps({'package': dagster_project.__file__, 'dbt_project': str(dbt_project_dir()),\n"
        "                  'dbt_core': list(dbt.__path__), 'assets': len(repo.asset_graph.get_all_asset_keys())}))"
    )], cwd=work, env=env).stdout
    info = json.loads(probe.strip().splitlines()[-1])
    assert Path(info["package"]).is_relative_to(purelib), info
    assert Path(info["dbt_project"]) == purelib / "tessera_dbt", info
    assert all(Path(p).name == "dbt" and "tessera_dbt" not in p for p in info["dbt_core"]), info
    assert info["assets"] > 50
    assert "Usage: cdp" in _run([str(venv / "bin" / "cdp"), "--help"], cwd=work, env=env).stdout

    # 4. A small project end to end with the installed `cdp`.
    cdp = str(venv / "bin" / "cdp")
    _run([cdp, "init", "proj"], cwd=work, env=env)
    config = str(work / "proj" / "cdp.yaml")
    _run([cdp, "generate", "--config", config, "--customers", "300", "--seed", "3"],
         cwd=work, env=env)
    done = subprocess.run([cdp, "run", "--config", config, "--json"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=1800)
    summary = json.loads(done.stdout)
    assert done.returncode == 0 and summary["ok"], (summary["failures"], summary["checks"], done.stderr[-3000:])
    materialized = {m["asset"] for m in summary["materialized"]}
    assert {"publish/snapshot", "marts/customers", "identity/graph"} <= materialized
    assert (work / "proj" / "published" / "tessera.duckdb").exists()  # the published snapshot
    # dbt wrote into the project, never into the installed code.
    assert (work / "proj" / ".dagster" / "dbt_target" / "partial_parse.msgpack").exists()
    assert not (purelib / "tessera_dbt" / "target").exists() and not (purelib / "tessera_dbt" / "logs").exists()
