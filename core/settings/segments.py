"""The `segments:` section of cdp.yaml: where the marketers' segments file is."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SEGMENTS_FILE = Path("segments.yaml")


class SegmentsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path = Field(
        default=DEFAULT_SEGMENTS_FILE,
        description="The declarative segments file, relative to cdp.yaml's folder. A missing file means "
                    "no declarative segments.",
    )
