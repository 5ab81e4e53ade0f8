"""Benchmarks of a real clawfleet fleet (run ``python -m bench.fleet``)."""
