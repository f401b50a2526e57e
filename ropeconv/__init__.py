"""ropeconv: extend the context window of pretrained models and export them with exact position metadata."""

__version__ = "0.1.0"
