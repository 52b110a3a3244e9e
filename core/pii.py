"""The PII policy: which fields are personal data, and the one masking every sink uses.

**Which fields**: every contract field flagged ``pii`` (``core/contracts.py``), every published
mart's ``pii_columns`` (``core/published.py``), their snake_case forms (dbt staging renames
``anonymousId`` to ``anonymous_id``), a quarantined line (``raw_record``: verbatim source data),
and any column named for an email or a phone. ``is_pii_column`` answers it.

**Masking**:

- ``mask_pii(text, known=None)``: free text with every PII kind recognisable by its shape
  masked (emails ``<email>``, phone numbers ``<phone>``, card tokens ``<card_token>``), and,
  given ``known`` (a ``KnownValues``), the values of PII fields seen in this run (names,
  addresses, loyalty ids of the rows a check sampled; an erased person's identifiers)
  wherever they appear (``<pii>``);
- ``mask_value(value, column)``: one PII value shown as a hint of its shape (``j***@***.uk``,
  ``***23``, ``J***``), for samples of rows;
- ``mask_row(row, known)`` / ``mask_obj(obj)``: a sampled row (PII columns by ``mask_value``,
  the rest by ``mask_pii``) and a run summary (every string by ``mask_pii``).

Sinks: log records (``install_log_masking`` / ``MaskPII``), the gate's and source checks'
samples and details (``expectations/gate.py``), asset-check metadata, sync messages
(``activation/sync.py``), the per-publish report, run summaries (``last_run.json``, ``cdp run
--json``) and erasure's redaction of the stores the project writes (``privacy/stores.py``).

``install_log_masking()`` wraps the logging module's record factory, so every record is masked
when it is created - before any handler sees it: the ``tessera.*`` loggers, Dagster's console
logger, the handler Dagster adds to capture ``tessera`` into each run's event log, and the dbt
progress lines. ``MaskPII`` is the same as a ``logging.Filter``, for handlers configured
elsewhere (the CLI's, or ``python_logs.dagster_handler_config`` in dagster.yaml).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable

from core.contracts import ENTITIES
from core.published import ManifestError, manifest_path, published_tables

# Email-shaped, dotless domains included: an invalid address a destination quotes back
# ("ann@nodomain looks fake") is still personal data. The domain must hold a letter, so a
# metric's name such as "HitRate@10" in a log line is left alone.
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@(?=[A-Za-z0-9.\-]*[A-Za-z])[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*")
# Phone-shaped: digits with spaces, dashes or brackets, optionally +; vetted by _is_phone.
PHONE_CANDIDATE_RE = re.compile(r"(?<![\w.@/:+-])\+?\(?\d[\d ()\-]{7,20}\d(?![\w@])")
DATE_LIKE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A payment processor's card token: a processor prefix and a long opaque id (the generator
# writes ct_ + 16 hex digits; Stripe-style tok_/card_/pm_ ids have the same shape).
CARD_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])(?:ct|tok|card|pm|src)_[A-Za-z0-9]{8,}(?![A-Za-z0-9])")
# Known phone numbers are found in any writing (07700 900123, +44 7700 900123, 447700900123)
# by their last nine digits: what every format of one number shares.
_ANY_PHONE_RE = re.compile(r"(?<!\d)\+?\(?\d[\d ()\-.]{7,22}\d(?!\d)")
_PHONE_TAIL = 9


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


_PII_FIELDS: list[frozenset[str]] = []  # set once the dbt manifest has been read


def pii_fields() -> frozenset[str]:
    """The contracts' PII fields and the published marts' PII columns. Before dbt has parsed
    the project there is no manifest: the contracts' fields stand alone, and the manifest is
    looked for again on the next call."""
    if _PII_FIELDS:
        return _PII_FIELDS[0]
    names = {f.name for e in ENTITIES for f in e.fields if f.pii}
    try:
        # Never parse from here (a logging filter may ask): the manifest a run has made, if any.
        names |= {c for t in published_tables(manifest_path(parse=False)) for c in t.pii_columns}
        found = True
    except ManifestError:
        found = False
    names |= {_snake(n) for n in names}
    fields = frozenset(names | {"raw_record"})
    if found:
        _PII_FIELDS.append(fields)
    return fields


def is_pii_column(name: str) -> bool:
    n = name.lower()
    fields = pii_fields()
    return name in fields or n in fields or "email" in n or "phone" in n


# --------------------------------------------------------------------------- known values
class KnownValues:
    """Values of PII fields seen in a run, masked wherever they appear (case-insensitive, whole
    words; phone numbers in any writing; JSON-escaped forms too, for stores holding JSON)."""

    MIN_LENGTH = 2  # a one-letter "name" would mask every such letter

    def __init__(self, values: Iterable = ()):
        self._values: set[str] = set()
        self._phone_tails: set[str] = set()
        self._pattern: re.Pattern | None = None
        self.add(values)

    def __bool__(self) -> bool:
        return bool(self._values or self._phone_tails)

    def add(self, values) -> None:
        if values is None or isinstance(values, (bool, int, float)):
            return
        if isinstance(values, dict):
            values = values.values()
        elif isinstance(values, str):
            text = values.strip()
            if text[:1] in "{[":  # a JSON field (traits, context): its leaves
                try:
                    return self.add(json.loads(text))
                except ValueError:
                    pass
            if len(text) >= self.MIN_LENGTH:
                self._values |= {text.lower(), json.dumps(text)[1:-1].lower()}
                digits = re.sub(r"\D", "", text)
                if 9 <= len(digits) <= 15 and _is_phone(text):
                    self._phone_tails.add(digits[-_PHONE_TAIL:])
                self._pattern = None
            return
        for v in values:
            self.add(v if isinstance(v, (str, dict, list, tuple)) else (None if v is None else str(v)))

    def add_row(self, row: dict) -> None:
        """The values of a row's PII columns."""
        for column, value in row.items():
            if is_pii_column(column) and value is not None:
                self.add(value if isinstance(value, (str, dict, list)) else str(value))

    def mask(self, text: str, replacement: str = "<pii>") -> str:
        if not text or not self:
            return text
        if self._pattern is None:
            alternatives = "|".join(re.escape(v) for v in sorted(self._values, key=len, reverse=True))
            self._pattern = re.compile(f"(?<![A-Za-z0-9_])(?:{alternatives or '(?!)'})(?![A-Za-z0-9_])", re.I)
        text = self._pattern.sub(replacement, text)
        if self._phone_tails:
            text = _ANY_PHONE_RE.sub(
                lambda m: replacement if re.sub(r"\D", "", m.group(0))[-_PHONE_TAIL:] in self._phone_tails
                else m.group(0), text)
        return text


# --------------------------------------------------------------------------- shapes
def _is_phone(candidate: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    if not 9 <= digits <= 15 or DATE_LIKE_RE.search(candidate):
        return False
    # Written like a phone number (international, national trunk 0, brackets) or a bare
    # run of digits long enough to be one.
    return candidate[0] in "+(0" or candidate.startswith("44") or candidate.isdigit() and digits >= 10


def mask_pii(text: str, known: KnownValues | None = None) -> str:
    """Free text with PII masked: known values first (a known name may hold no shape), then
    emails, card tokens and phone numbers by their shape."""
    if not text:
        return text
    if known:
        text = known.mask(text)
    text = EMAIL_RE.sub("<email>", text)
    text = CARD_TOKEN_RE.sub("<card_token>", text)
    return PHONE_CANDIDATE_RE.sub(lambda m: "<phone>" if _is_phone(m.group(0)) else m.group(0), text)


def mask_value(value, column: str = ""):
    """One PII value for a sample: a hint of its shape, never the value."""
    if value is None:
        return None
    text = str(value)
    if "@" in text and ("email" in column or not column or EMAIL_RE.fullmatch(text.strip())):
        local, _, domain = text.partition("@")
        return f"{local[:1]}***@***{domain[domain.rfind('.'):] if '.' in domain else ''}"
    if "phone" in column:
        return "***" + "".join(ch for ch in text if ch.isdigit())[-2:]
    return text[:1] + "***" if text else text


def _plain(v):
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, (int, float, bool)) or v is None:
        return v
    return str(v)


def mask_row(row: dict, known: KnownValues | None = None) -> dict:
    """A sampled row for a report or check metadata: PII columns as shape hints, every other
    text by ``mask_pii``. ``known`` collects the row's PII values, to mask them elsewhere."""
    if known is not None:
        known.add_row(row)
    out = {}
    for column, value in row.items():
        if is_pii_column(column):
            out[column] = mask_value(value, column)
        else:
            v = _plain(value)
            out[column] = mask_pii(v, known) if isinstance(v, str) else v
    return out


def mask_obj(obj, known: KnownValues | None = None):
    """Every string of a JSON-like object (a run summary) through ``mask_pii``."""
    if isinstance(obj, str):
        return mask_pii(obj, known)
    if isinstance(obj, dict):
        return {k: mask_obj(v, known) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_obj(v, known) for v in obj]
    return obj


# --------------------------------------------------------------------------- logs
def mask_record(record: logging.LogRecord, known: KnownValues | None = None) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: leave it to logging's own error reporting
        return
    masked = mask_pii(message, known)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        record.exc_text = mask_pii(logging.Formatter().formatException(record.exc_info), known)


class MaskPII(logging.Filter):
    """``known``: values seen in this run to mask too (a handler's own, not process-wide)."""

    def __init__(self, name: str = "", known: KnownValues | None = None):
        super().__init__(name)
        self.known = known

    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record, self.known)
        return True


def install_log_masking() -> None:
    """Mask every log record at creation (idempotent; safe to call from every entry point)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_tessera_masks_pii", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        mask_record(record)
        return record

    factory._tessera_masks_pii = True
    logging.setLogRecordFactory(factory)
