"""Candidate runtimes: each loads an artifact from disk in the runtime it is meant for."""
