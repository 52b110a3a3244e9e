"""The names a user gives things in cdp.yaml (sources, syncs, experiments and their arms): one
rule for all, since they become table values, file names and Dagster asset and job names."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

NAME_RE = r"[a-z][a-z0-9_]*"


def snake_name(example: str, what: str = "use") -> object:
    """A `str` field type that accepts lower-case letters, digits and '_', starting with a letter;
    the error shows `example`, a name of the kind the field takes."""

    def check(v: str) -> str:
        if not re.fullmatch(NAME_RE, v):
            raise ValueError(f"{what} lower-case letters, digits and '_' (e.g. {example!r})")
        return v

    return Annotated[str, AfterValidator(check)]
