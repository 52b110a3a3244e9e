"""Privacy: erasure requests (`cdp forget`), subject access (`cdp export-subject`), the salted
hashes that keep erased persons out, and PII masking in logs."""
