"""Configuration: what the operator writes down, read once at start and again on reload.

``settings`` (flags and ``TW_EXPORTER_*`` variables, one table of options),
``queries_file`` (custom queries and per-query schedules), ``webconfig`` (the exporter-toolkit
web config, with ``web_tls`` for TLS and certificate rotation, ``basic_auth`` for bcrypt
logins and ``web_fields`` for the error and accessors they share) and ``http_security`` (what
it gives the server), ``strict_yaml`` (both files' YAML, duplicate keys refused), ``secrets``
(the DSN password kept out of logs, errors and ``--help``). Nothing here talks to PostgreSQL."""
