"""Benchmarks for issue #6 ("Performance at scale"); run with ``python -m benchmarks.run_all``."""
