"""Churn, cart-intent and next-best-offer models (scikit-learn) over dbt feature tables."""
