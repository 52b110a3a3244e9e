"""Tessera command line and configuration."""
