"""The README is documentation: it must keep up with the code it describes.

Fast and warehouse-free. Each test reads a fact from where the code keeps it and checks that
README.md states it:

- every README section the `cdp init` config template points readers to exists as a heading
  (and so does every section the README itself refers to with see "...");
- every `cdp` command and subcommand appears as `cdp <name>`;
- every published table (the dbt models tagged `published`) is in the table catalogue;
- the user documentation names no file outside the repository (DESIGN.md, ../shared).
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from cdp.cli import main as cdp_main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DBT_MODELS = ROOT / "dbt" / "models"
# Markdown a user reads; none may point outside the repository.
USER_DOCS = [README, ROOT / "dbt" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Files that are not in the repository and must not be referred to.
OUTSIDE_FILES = ("DESIGN.md", "../shared")
# How the config template cites a README section: `see README "Segments"`, `README: "Segments"`.
README_CITATION = re.compile(r'README:?\s*"([^"]+)"')
# The header row of the README's table catalogue ("For marketers").
CATALOGUE_HEADER = re.compile(r"^\|\s*table\s*\|\s*one row per\s*\|")


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _headings(markdown: str) -> set[str]:
    """Heading texts (any level), outside fenced code blocks."""
    headings, fenced = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not fenced:
            headings.add(m.group(1))
    return headings


# --------------------------------------------------------------------------- cdp init's template
def _init_template(tmp_path: Path) -> str:
    """The commented cdp.yaml that `cdp init` writes (through the command itself, so the test
    follows the template wherever it lives)."""
    result = CliRunner().invoke(cdp_main, ["init", str(tmp_path / "shop")])
    assert result.exit_code == 0, f"`cdp init` failed, so its template cannot be checked:\n{result.output}"
    return (tmp_path / "shop" / "cdp.yaml").read_text(encoding="utf-8")


def test_every_readme_section_the_config_template_cites_exists(tmp_path):
    template = _init_template(tmp_path)
    cited = sorted(set(README_CITATION.findall(template)))
    assert cited, ('the cdp.yaml that `cdp init` writes cites no README section in the form README "Section" '
                   "any more: update README_CITATION in tests/test_docs.py to how it cites sections now")
    headings = _headings(_readme())
    missing = [name for name in cited if name not in headings]
    assert not missing, (
        f"the cdp.yaml that `cdp init` writes sends readers to README section(s) {missing}, but README.md "
        f"has no heading with exactly that text: add the section to README.md, or fix the citation in the "
        f"config template (cdp init)")


def test_the_readmes_own_section_references_resolve():
    readme = " ".join(_readme().split())  # a reference may wrap across lines
    cited = sorted(set(re.findall(r'see "([^"]+)"', readme)))
    headings = _headings(_readme())
    missing = [name for name in cited if name not in headings]
    assert not missing, (
        f'README.md says see "..." for {missing}, but has no heading with exactly that text: '
        f"fix the reference or the heading")


# --------------------------------------------------------------------------- commands
def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        path = (*prefix, name)
        paths.append(path)
        if isinstance(command, click.Group):
            paths += _command_paths(command, path)
    return paths


def test_every_cdp_command_appears_in_the_readme():
    paths = _command_paths(cdp_main)
    assert len(paths) > 10, f"walking cdp.cli.main found only {paths}: is the command group still cdp.cli.main?"
    readme = _readme()
    missing = [" ".join(("cdp", *p)) for p in paths
               if not re.search(r"(?<![\w-])cdp " + re.escape(" ".join(p)) + r"(?![\w-])", readme)]
    assert not missing, (
        f"README.md never mentions these commands: {missing}. Document each where a user would look for "
        f"it (usage, with its options), written as `cdp <command>`")


# --------------------------------------------------------------------------- published tables
def _tags(value) -> set[str]:
    if value is None:
        return set()
    return {value} if isinstance(value, str) else set(value)


def published_models() -> set[str]:
    """dbt models tagged `published`: in this project the tag sits in each model's YAML
    (`config: {tags: [...]}`); a `tags=[...]` in the model's SQL config() is read too."""
    names: set[str] = set()
    for path in sorted(DBT_MODELS.rglob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for model in doc.get("models") or []:
            tags = _tags(model.get("tags")) | _tags((model.get("config") or {}).get("tags"))
            if "published" in tags:
                names.add(model["name"])
    sql_tags = re.compile(r"config\((?:[^()]|\([^()]*\))*?tags\s*=\s*\[([^\]]*)\]", re.S)
    for path in sorted(DBT_MODELS.rglob("*.sql")):
        for m in sql_tags.finditer(path.read_text(encoding="utf-8")):
            if "published" in re.findall(r"['\"]([^'\"]+)['\"]", m.group(1)):
                names.add(path.stem)
    return names


def _catalogue(readme: str) -> set[str]:
    """The first column of the README's table catalogue (`| table | one row per | ... |`)."""
    lines = readme.splitlines()
    start = next((i for i, line in enumerate(lines) if CATALOGUE_HEADER.match(line)), None)
    if start is None:
        return set()
    names = set()
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        names.update(re.findall(r"`([a-z0-9_]+)`", line.split("|")[1]))
    return names


def test_every_published_table_is_in_the_readme_catalogue():
    published = published_models()
    assert len(published) >= 10, (
        f"found only {sorted(published)} tagged `published` under dbt/models: if the tag moved (e.g. to "
        f"dbt_project.yml), teach published_models() in tests/test_docs.py where to read it")
    catalogue = _catalogue(_readme())
    assert catalogue, ("README.md has no table catalogue: add the table of published tables under "
                       "\"For marketers\", with the header `| table | one row per | what it tells |`")
    missing = sorted(published - catalogue)
    assert not missing, (
        f"published tables missing from the README's table catalogue (\"For marketers\"): {missing}; "
        f"add a row for each (one row per what, what it tells)")
    unknown = sorted(catalogue - published)
    assert not unknown, (
        f"the README's table catalogue lists {unknown}, which no dbt model tagged `published` builds: "
        f"remove the row, or tag the model `published` if it is meant to be in the snapshot")


# --------------------------------------------------------------------------- self-contained
@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_name_no_file_outside_the_repository(doc):
    text = doc.read_text(encoding="utf-8")
    found = [name for name in OUTSIDE_FILES if name in text]
    assert not found, (
        f"{doc.relative_to(ROOT)} refers to {found}, which are not in this repository: the documentation "
        f"must stand alone, so state what is needed in the text itself")
