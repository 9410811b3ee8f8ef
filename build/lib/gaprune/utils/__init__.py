"""Shared plumbing with no gaprune dependencies: one-line errors, registries, atomic I/O and the
safe torch reader, run logging, plots."""
