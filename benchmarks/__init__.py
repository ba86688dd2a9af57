"""Benchmarks and the literal reference implementation they are measured against."""
