"""When queries run: the per-query scheduled runs.

``scheduler`` (one APScheduler job per query, skips counted), ``custom`` (queries-file
queries turned into the same collectors as the built-in three) and ``reload`` (a new
configuration applied to the running set as a difference)."""
