"""Inglenook: a local LLM chat web UI."""

__version__ = "0.1.0"
