"""Privacy: erasure requests (`cdp forget`) and the redaction of every store the project writes,
subject access (`cdp export-subject`), the salted hashes that keep erased persons out. The PII
policy and its masking live in ``core/pii.py``."""
