"""Fault drills: real processes, real faults; each asserts nothing lost, a clear message, recovery."""
