"""What is served on /metrics, and how.

``snapshot`` (each query's last good families, rendered once), ``labels`` (the bound on
business label values), ``http`` and ``negotiation`` (the server, formats, encodings),
``health`` (the exporter's own metrics) and ``catalog`` (every metric in one list)."""
