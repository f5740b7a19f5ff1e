"""The database: how a query reaches PostgreSQL.

``database`` (the asyncpg pool and the one way a query is run, with its timeouts and
failure reasons), ``keepalive`` (TCP keepalive on its sockets) and ``leader`` (the HA
leader lease, on a connection of its own)."""
