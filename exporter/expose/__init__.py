"""What is served on /metrics, and how.

``snapshot`` (each query's last good families, rendered once), ``labels`` (the bound on
business label values), ``http`` (the server: connection cap, deadlines, routing) with
``connection`` (one client's protocol), ``responses`` (the answers as bytes), ``accepting``,
``tls`` and ``negotiation`` (formats, encodings), ``health`` (the exporter's own metrics) and
``catalog`` (every metric in one list)."""
