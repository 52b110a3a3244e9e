"""Benchmarks (`make bench`): big runs that print their figures, kept out of the timed tests."""
