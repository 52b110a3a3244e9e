"""PII out of logs: email addresses and phone numbers in log messages become ``<email>`` and
``<phone>``.

``install_log_masking()`` wraps the logging module's record factory, so every record is masked
when it is created - before any handler sees it: the ``tessera.*`` loggers, Dagster's console
logger, the handler Dagster adds to capture ``tessera`` into each run's event log, and the dbt
progress lines. ``MaskPII`` is the same as a ``logging.Filter``, for handlers configured
elsewhere (the CLI's, or ``python_logs.dagster_handler_config`` in dagster.yaml).
"""

from __future__ import annotations

import logging
import re

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
# Phone-shaped: digits with spaces, dashes or brackets, optionally +; vetted by _is_phone.
PHONE_CANDIDATE_RE = re.compile(r"(?<![\w.@/:+-])\+?\(?\d[\d ()\-]{7,20}\d(?![\w@])")
DATE_LIKE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _is_phone(candidate: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    if not 9 <= digits <= 15 or DATE_LIKE_RE.search(candidate):
        return False
    # Written like a phone number (international, national trunk 0, brackets) or a bare
    # run of digits long enough to be one.
    return candidate[0] in "+(0" or candidate.startswith("44") or candidate.isdigit() and digits >= 10


def mask_pii(text: str) -> str:
    if not text:
        return text
    text = EMAIL_RE.sub("<email>", text)
    return PHONE_CANDIDATE_RE.sub(lambda m: "<phone>" if _is_phone(m.group(0)) else m.group(0), text)


def mask_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: leave it to logging's own error reporting
        return
    masked = mask_pii(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        record.exc_text = mask_pii(logging.Formatter().formatException(record.exc_info))


class MaskPII(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
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
