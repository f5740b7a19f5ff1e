"""The commands beside ``run``.

``check`` (is this database ready: ``check_queries`` for the queries file, ``advice`` for
index use), ``demo`` (``embedded`` PostgreSQL and the synthetic ``dataset``),
``sample_data`` (``schema_file``'s tables and moving data in the user's database) and
``extras`` (which pip extra a command needs)."""
