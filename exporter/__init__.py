"""tw-exporter: Prometheus metrics for a Twitter-like platform's PostgreSQL database."""

__version__ = "0.1.0"
