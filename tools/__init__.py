"""Developer tools that generate checked-in files (run them with ``python -m tools.<name>``)."""
