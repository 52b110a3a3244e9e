"""Reading the YAML files a user edits (cdp.yaml, segments.yaml, a proposed identity section).

Bounded on purpose: a file over ``MAX_YAML_BYTES`` is refused before parsing, and a document
whose aliases (``*name``) would expand past ``MAX_YAML_NODES`` is refused right after
composing, before anything walks it: a few hundred bytes of nested aliases (a "billion
laughs" file) would otherwise expand into millions of nodes and hang validation. Ordinary
aliases, such as those ``yaml.dump`` writes for a repeated value, stay allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 100_000


class YamlFileError(ValueError):
    """The file is too large, expands too far, or is not valid YAML; the message says which and where."""


class _BoundedLoader(yaml.SafeLoader):
    def compose_document(self):
        node = super().compose_document()
        expanded = _expanded_size(node, {})
        if expanded > MAX_YAML_NODES:
            raise YamlFileError(f"its aliases (*name) expand to {expanded:,} values, more than the "
                                f"{MAX_YAML_NODES:,} a config file may hold; write the values out")
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes the document holds once every alias is expanded; an aliased node is counted from
    the memo, so this takes time linear in the file, not in the expansion."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


def load_yaml(path: Path | str) -> Any:
    """Parse one user-edited YAML file; raise YamlFileError naming the file on any problem."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise YamlFileError(f"{path}: {size:,} bytes is more than the {MAX_YAML_BYTES:,} a config file may hold")
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except YamlFileError as e:
        raise YamlFileError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise YamlFileError(f"{path}: not valid YAML: {e}") from None
