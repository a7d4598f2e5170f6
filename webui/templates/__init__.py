"""Prompt templates: rendering in a Jinja2 sandbox, the shipped/user library, per-model choices."""
