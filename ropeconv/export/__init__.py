"""Exporters: each turns the streamed tensors plus the plan into one output format."""
