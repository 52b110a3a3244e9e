"""The secret salt of identifier hashes: $CDP_PRIVACY_SALT, else the config's ``privacy.salt_file``.

A hash without a secret salt could be reversed by hashing every plausible email or phone
number; with one, the kept hashes say nothing to someone who does not hold the salt.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SALT_ENV = "CDP_PRIVACY_SALT"
MIN_SALT_LENGTH = 16


class SaltMissing(RuntimeError):
    """No salt configured: erasure cannot hash identifiers."""


def salt_path(config) -> Path:
    return config.resolve(config.privacy.salt_file)


def load_salt(config) -> str:
    value = os.environ.get(SALT_ENV)
    source = f"${SALT_ENV}"
    if not value:
        path = salt_path(config)
        if not path.is_file():
            raise SaltMissing(
                f"no privacy salt: set ${SALT_ENV} to a long random secret, or create {path} "
                f"(`cdp init` writes one; or: python -c 'import secrets; print(secrets.token_hex(32))' > {path} "
                f"&& chmod 600 {path}). The path is privacy.salt_file in cdp.yaml. Use the same salt for the life "
                f"of the project."
            )
        value = path.read_text().strip()
        source = str(path)
    if len(value) < MIN_SALT_LENGTH:
        raise SaltMissing(f"the privacy salt from {source} is shorter than {MIN_SALT_LENGTH} characters; "
                          f"use a long random secret (e.g. 64 hex characters)")
    return value


def write_salt_file(path: Path) -> bool:
    """Create a new random salt file readable by its owner only; never overwrite one."""
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return True
