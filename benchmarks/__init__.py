"""Benchmarks: each script prints the machine, package versions and a table. See docs/benchmarks.md."""
