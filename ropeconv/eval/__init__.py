"""Evaluation in the target runtime: passkey retrieval (methods.md §14) and perplexity (§15)."""
