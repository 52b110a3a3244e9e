"""Reading the YAML files a user edits (cdp.yaml, segments.yaml, a proposed identity section).

Bounded on purpose: a file over ``MAX_YAML_BYTES`` is refused before parsing, and YAML
aliases (``*name``) are refused while composing, so a few hundred bytes of nested aliases
(a "billion laughs" file) cannot expand into millions of nodes and hang a run. Anchors alone
are harmless and allowed; a config never needs an alias (write the value out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_YAML_BYTES = 1_000_000


class YamlFileError(ValueError):
    """The file is too large, uses aliases, or is not valid YAML; the message says which and where."""


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlFileError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                f"allowed; write the value out instead")
        return super().compose_node(parent, index)


def load_yaml(path: Path | str) -> Any:
    """Parse one user-edited YAML file; raise YamlFileError naming the file on any problem."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise YamlFileError(f"{path}: {size:,} bytes is more than the {MAX_YAML_BYTES:,} a config file may hold")
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except YamlFileError as e:
        raise YamlFileError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise YamlFileError(f"{path}: not valid YAML: {e}") from None
