"""The ``privacy:`` section of cdp.yaml."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class PrivacySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    salt_file: Path = Field(
        default=Path(".secrets/privacy_salt"),
        description="File holding the secret salt for identifier hashes (written by `cdp init`, mode 0600). "
                    "$CDP_PRIVACY_SALT, when set, is used instead. Never change it: hashes made with another "
                    "salt no longer match, and erased persons would come back with their files.",
    )
    folder: Path = Field(
        default=Path("privacy"),
        description="Erasure requests (requests/) and erasure reports (reports/); hashes only, no PII.",
    )
