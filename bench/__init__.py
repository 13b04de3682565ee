"""Benchmarks, the soak and the performance report (scripts), and what they share: common.py (databases,
processes, private servers, the result file), reference.py (the reference fold), queries.sql."""
