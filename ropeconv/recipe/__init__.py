"""Recipes: a whole release as YAML (schema.py), loaded with overrides and every error at once (load.py),
run as a repeatable, skippable, gated job (run.py), and written back from a command line (save.py)."""
