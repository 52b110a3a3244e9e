"""Real time (``cdp serve``): a Segment-compatible collector, live profiles and decisions, and
cart-abandonment triggers, beside the nightly batch.

Sits above the stages (it reads ingestion's landing contract through core, activation's
destinations, scoring's settings) and below the command line; no stage imports it.
"""
