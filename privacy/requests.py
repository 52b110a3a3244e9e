"""Erasure requests: `cdp forget` writes one small JSON file of salted hashes under
``<privacy.folder>/requests/``; the next run's ``privacy/erasure`` asset applies it and moves it
to ``requests/done/``. Files, not a warehouse table, so that a request can be recorded while a
run holds the warehouse's write lock."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from core.identifiers import key_hash, request_keys
from core.salt import load_salt


@dataclass(frozen=True)
class ErasureRequest:
    request_id: str
    requested_at: str
    identifier_kind: str
    hashes: tuple[tuple[str, str], ...]  # (kind, hash)
    path: Path


def privacy_dir(config) -> Path:
    return config.resolve(config.privacy.folder)


def requests_dir(config) -> Path:
    return privacy_dir(config) / "requests"


def reports_dir(config) -> Path:
    return privacy_dir(config) / "reports"


def phone_region(config) -> str:
    return config.identity.default_phone_region


def record_request(config, kind: str, value: str) -> ErasureRequest:
    """Write an erasure request holding only salted hashes of the identifier."""
    salt = load_salt(config)
    keys = request_keys(kind, value, phone_region(config))
    now = datetime.now(timezone.utc)
    request_id = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    hashes = tuple((k, key_hash(salt, k, v)) for k, v in keys)
    body = {"request_id": request_id, "requested_at": now.isoformat(timespec="seconds"),
            "identifier_kind": kind, "hashes": [{"kind": k, "hash": h} for k, h in hashes]}
    folder = requests_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{request_id}.json"
    tmp = folder / f".{request_id}.json.tmp"
    tmp.write_text(json.dumps(body, indent=2))
    os.replace(tmp, path)
    return ErasureRequest(request_id, body["requested_at"], kind, hashes, path)


def pending_requests(config) -> list[ErasureRequest]:
    folder = requests_dir(config)
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            body = json.loads(path.read_text())
            out.append(ErasureRequest(body["request_id"], body["requested_at"], body["identifier_kind"],
                                      tuple((h["kind"], h["hash"]) for h in body["hashes"]), path))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a valid erasure request ({e}); fix or remove the file") from None
    return out


def mark_done(request: ErasureRequest) -> None:
    done = request.path.parent / "done"
    done.mkdir(exist_ok=True)
    os.replace(request.path, done / request.path.name)
