"""Command line: one module per command; main.py owns the error contract (one line, exit 2/1)."""
