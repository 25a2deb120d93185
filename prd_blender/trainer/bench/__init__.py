"""Benchmarks behind ``prd bench``: each prints a table and writes a JSON record."""
